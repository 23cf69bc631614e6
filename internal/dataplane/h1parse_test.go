package dataplane

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// parseReq reads and parses one request head from s.
func parseReq(t *testing.T, s string) (*request, *bufio.Reader, error) {
	t.Helper()
	br := bufio.NewReaderSize(strings.NewReader(s), 64)
	var big []byte
	r := &request{}
	head, inBuf, err := readHead(br, &big, &r.fields)
	if err != nil {
		return r, br, err
	}
	r.head, r.inBuf = head, inBuf
	if pe := r.parse(); pe != nil {
		return r, br, pe
	}
	return r, br, nil
}

func TestParseRequest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in                string
		method, host, path, qry string
		fwdTarget               string
		length                  int64
		chunked, close, expect  bool
		idempotent              bool
		kept                    string // forwarded fields, as written
	}{
		{name: "simple", in: "GET /a/b?x=1 HTTP/1.1\r\nHost: f:8080\r\nX-A: 1\r\n\r\n",
			method: "GET", host: "f:8080", path: "/a/b", qry: "?x=1", fwdTarget: "/a/b?x=1", length: -1, idempotent: true,
			kept: "X-A: 1\r\n"},
		{name: "bare LF, spaces", in: "POST / HTTP/1.1\nhost:   f  \nContent-Length:  3 \nX-B:\tv\t\n\nabc",
			method: "POST", host: "f", path: "/", fwdTarget: "/", length: 3, kept: "X-B: v\r\n"},
		{name: "HTTP/1.0 closes", in: "GET / HTTP/1.0\r\n\r\n",
			method: "GET", path: "/", fwdTarget: "/", length: -1, close: true, idempotent: true},
		{name: "HTTP/1.0 keep-alive", in: "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
			method: "GET", path: "/", fwdTarget: "/", length: -1, idempotent: true},
		{name: "close, and fields named by Connection dropped",
			in:     "GET / HTTP/1.1\r\nHost: f\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: x\r\nX-Kept: 2\r\n\r\n",
			method: "GET", host: "f", path: "/", fwdTarget: "/", length: -1, close: true, idempotent: true,
			kept: "X-Kept: 2\r\n"},
		{name: "chunked, expect", in: "PUT /u HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: Chunked\r\nExpect: 100-Continue\r\n\r\n",
			method: "PUT", host: "f", path: "/u", fwdTarget: "/u", length: -1, chunked: true, expect: true},
		{name: "idempotency key", in: "POST / HTTP/1.1\r\nHost: f\r\nIdempotency-Key: k\r\n\r\n",
			method: "POST", host: "f", path: "/", fwdTarget: "/", length: -1, idempotent: true, kept: "Idempotency-Key: k\r\n"},
		{name: "absolute form", in: "GET http://fn:80/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
			method: "GET", host: "fn:80", path: "/p", qry: "?q", fwdTarget: "/p?q", length: -1, idempotent: true},
		{name: "absolute form, no path", in: "GET HTTP://fn?q HTTP/1.1\r\nHost: fn\r\n\r\n",
			method: "GET", host: "fn", path: "", qry: "?q", fwdTarget: "/?q", length: -1, idempotent: true},
		{name: "asterisk", in: "OPTIONS * HTTP/1.1\r\nHost: f\r\n\r\n",
			method: "OPTIONS", host: "f", path: "*", fwdTarget: "*", length: -1, idempotent: true},
		{name: "same length twice", in: "POST / HTTP/1.1\r\nHost: f\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab",
			method: "POST", host: "f", path: "/", fwdTarget: "/", length: 2},
		{name: "large head", in: "GET / HTTP/1.1\r\nHost: f\r\nX-Big: " + strings.Repeat("v", 300) + "\r\n\r\n",
			method: "GET", host: "f", path: "/", fwdTarget: "/", length: -1, idempotent: true,
			kept: "X-Big: " + strings.Repeat("v", 300) + "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _, err := parseReq(t, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			var fwd bytes.Buffer
			bw := bufio.NewWriter(&fwd)
			writeFields(bw, r.head, r.fields)
			bw.Flush()
			target := string(r.target)
			if r.slash {
				target = "/" + target
			}
			if string(r.method) != tc.method || string(r.host) != tc.host || string(r.path) != tc.path ||
				string(r.query) != tc.qry || target != tc.fwdTarget || r.contentLength != tc.length ||
				r.chunked != tc.chunked || r.close != tc.close || r.expect100 != tc.expect ||
				r.idempotent != tc.idempotent || fwd.String() != tc.kept {
				t.Errorf("got method %q host %q path %q query %q target %q length %d chunked %v close %v expect %v idempotent %v kept %q",
					r.method, r.host, r.path, r.query, target, r.contentLength, r.chunked, r.close, r.expect100, r.idempotent, fwd.String())
			}
		})
	}
}

func TestParseRequestErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want *protoError
	}{
		{"GET / HTTP/1.1\r\nHost f\r\n\r\n", errBadField},
		{"GET / HTTP/1.1\r\n: v\r\n\r\n", errBadField},
		{"GET / HTTP/1.1\r\nHo\"st: f\r\n\r\n", errBadField},
		{"GET / HTTP/1.1\r\nHost: f\r\n folded\r\n\r\n", errObsFold},
		{"GET / HTTP/1.1\r\nHost: f\x00\r\n\r\n", errFieldValue},
		{"GET /\x01 HTTP/1.1\r\nHost: f\r\n\r\n", errBadStartLine},
		{"GET / HTTP/1.1 x\r\nHost: f\r\n\r\n", errBadStartLine},
		{"GET / HTTP/3\r\nHost: f\r\n\r\n", errBadStartLine},
		{"GET / HTTP/3.0\r\nHost: f\r\n\r\n", errBadVersion},
		{"GET / HTTP/1.1\r\n\r\n", errNoHost},
		{"POST / HTTP/1.1\r\nHost: f\r\nContent-Length: -1\r\n\r\n", errBadLength},
		{"POST / HTTP/1.1\r\nHost: f\r\nContent-Length: 1, 1\r\n\r\n", errBadLength},
		{"POST / HTTP/1.1\r\nHost: f\r\nContent-Length: 99999999999999999999\r\n\r\n", errBadLength},
		{"POST / HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", errBadCoding},
		{"POST / HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: identity\r\n\r\n", errBadCoding},
	} {
		_, _, err := parseReq(t, tc.in)
		if err != tc.want {
			t.Errorf("%q: %v, want %v", tc.in, err, tc.want)
		}
	}
}

func TestReadHeadIncomplete(t *testing.T) {
	t.Parallel()
	_, _, err := parseReq(t, "GET / HTTP/1.1\r\nHost: f\r\n")
	if !errors.Is(err, io.EOF) {
		t.Errorf("truncated head: %v", err)
	}
	// Larger than the reader's buffer and than the limit.
	_, _, err = parseReq(t, "GET / HTTP/1.1\r\nX: "+strings.Repeat("x", maxHeadBytes)+"\r\n\r\n")
	if err != errHeadTooLarge {
		t.Errorf("huge head: %v", err)
	}
	// What follows the head stays in the reader.
	r, br, err := parseReq(t, "GET / HTTP/1.1\r\nHost: f\r\n\r\nGET /next")
	if err != nil {
		t.Fatal(err)
	}
	if r.inBuf {
		br.Discard(len(r.head))
	}
	if rest, _ := io.ReadAll(br); string(rest) != "GET /next" {
		t.Errorf("after the head: %q", rest)
	}
}

func TestParseResponse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in            string
		status        int
		length        int64
		chunked, clos bool
		kept          string
		bad           bool
	}{
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n", status: 200, length: 5, kept: "X-A: 1\r\n"},
		{in: "HTTP/1.1 204\r\n\r\n", status: 204, length: -1},
		{in: "HTTP/1.0 200 OK\r\n\r\n", status: 200, length: -1, clos: true},
		{in: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", status: 200, length: 0},
		{in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n", status: 200, length: -1, chunked: true},
		{in: "HTTP/1.1 200 OK\r\nConnection: close, X-H\r\nX-H: 1\r\nKeep-Alive: 1\r\nX-Baton-Cold-Start: x\r\nDate: d\r\n\r\n",
			status: 200, length: -1, clos: true, kept: "Date: d\r\n"},
		{in: "HTTP/1.1 2000 OK\r\n\r\n", bad: true},
		{in: "HTTP/1.1 20x OK\r\n\r\n", bad: true},
		{in: "HTTP/2 200 OK\r\n\r\n", bad: true},
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", bad: true},
	} {
		br := bufio.NewReader(strings.NewReader(tc.in))
		var big []byte
		r := &response{}
		head, _, err := readHead(br, &big, &r.fields)
		if err == nil {
			r.head = head
			err = r.parse()
		}
		if tc.bad {
			if err == nil {
				t.Errorf("%q: parsed", tc.in)
			}
			continue
		}
		var fwd bytes.Buffer
		bw := bufio.NewWriter(&fwd)
		writeFields(bw, r.head, r.fields)
		bw.Flush()
		if err != nil || r.status != tc.status || r.contentLength != tc.length || r.chunked != tc.chunked ||
			r.close != tc.clos || fwd.String() != tc.kept {
			t.Errorf("%q: %v status %d length %d chunked %v close %v kept %q", tc.in, err, r.status,
				r.contentLength, r.chunked, r.close, fwd.String())
		}
	}
}

func TestRelayChunked(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in     string
		limit        int64
		raw, rechunk string
		err          error
		rest         string // left in the source after the body
	}{
		{name: "simple", in: "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT", limit: -1,
			raw: "hello world", rechunk: "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", rest: "NEXT"},
		{name: "extensions, trailers, LF", in: "5 ; a=b\nhello\n0;x\nT: 1\nU: 2\n\n", limit: -1,
			raw: "hello", rechunk: "5\r\nhello\r\n0\r\n\r\n"},
		{name: "upper-case hex", in: "A\r\n0123456789\r\n0\r\n\r\n", limit: -1, raw: "0123456789", rechunk: "a\r\n0123456789\r\n0\r\n\r\n"},
		{name: "at the limit", in: "5\r\nhello\r\n0\r\n\r\n", limit: 5, raw: "hello", rechunk: "5\r\nhello\r\n0\r\n\r\n"},
		{name: "over the limit", in: "5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n", limit: 5, err: errBodyTooLarge},
		{name: "bad size", in: "x\r\nhello\r\n0\r\n\r\n", limit: -1, err: errBadChunk},
		{name: "empty size", in: "\r\nhello\r\n0\r\n\r\n", limit: -1, err: errBadChunk},
		{name: "size overflow", in: "1000000000000000\r\n", limit: -1, err: errBadChunk},
		{name: "data longer than size", in: "3\r\nhello\r\n0\r\n\r\n", limit: -1, err: errBadChunk},
		{name: "truncated data", in: "5\r\nhel", limit: -1, err: errShortBody},
		{name: "no last chunk", in: "5\r\nhello\r\n", limit: -1, err: errShortBody},
		{name: "truncated trailers", in: "0\r\nT: 1\r\n", limit: -1, err: errShortBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, rechunk := range []bool{false, true} {
				src := bufio.NewReaderSize(strings.NewReader(tc.in), 16)
				var out bytes.Buffer
				dst := bufio.NewWriterSize(&out, 16)
				rerr, werr := relayChunked(dst, src, rechunk, tc.limit)
				dst.Flush()
				if werr != nil || !errors.Is(rerr, tc.err) {
					t.Fatalf("rechunk=%v: rerr %v werr %v, want %v", rechunk, rerr, werr, tc.err)
				}
				if tc.err != nil {
					continue
				}
				want := tc.raw
				if rechunk {
					want = tc.rechunk
				}
				rest, _ := io.ReadAll(src)
				if out.String() != want || string(rest) != tc.rest {
					t.Errorf("rechunk=%v: %q, rest %q; want %q, rest %q", rechunk, out.String(), rest, want, tc.rest)
				}
			}
		})
	}
}

func TestRelay(t *testing.T) {
	t.Parallel()
	payload := strings.Repeat("0123456789abcdef", 10000) // larger than the pooled buffer
	for _, n := range []int{0, 1, 100, len(payload)} {
		src := bufio.NewReaderSize(strings.NewReader(payload+"REST"), 64)
		var out bytes.Buffer
		dst := bufio.NewWriterSize(&out, 64)
		rerr, werr := relay(dst, src, int64(n))
		dst.Flush()
		rest, _ := io.ReadAll(src)
		if rerr != nil || werr != nil || out.String() != payload[:n] || !strings.HasSuffix(string(rest), "REST") {
			t.Errorf("n=%d: %v %v, %d bytes out", n, rerr, werr, out.Len())
		}
	}
	src := bufio.NewReaderSize(strings.NewReader("short"), 64)
	dst := bufio.NewWriter(io.Discard)
	if rerr, _ := relay(dst, src, 10); rerr != errShortBody {
		t.Errorf("short body: %v", rerr)
	}
	// A source ended by its close, chunked on the way.
	src = bufio.NewReaderSize(strings.NewReader("0123456789abcdefXYZ"), 16) // bufio's smallest
	var out bytes.Buffer
	dst = bufio.NewWriterSize(&out, 64)
	if rerr, werr := relayToEOF(dst, src, true); rerr != nil || werr != nil {
		t.Fatal(rerr, werr)
	}
	dst.Flush()
	if out.String() != "10\r\n0123456789abcdef\r\n3\r\nXYZ\r\n0\r\n\r\n" {
		t.Errorf("to EOF, chunked: %q", out.String())
	}
}

func TestWriteRequestHead(t *testing.T) {
	t.Parallel()
	r, _, err := parseReq(t, "POST /fn/echo/a?b=1 HTTP/1.0\nHost: x\nX-LF: 1\r\nX-CRLF: 2\r\nConnection: keep-alive\nContent-Length: 0\n\n")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	writeRequestHead(bw, r, "echo", "/a", true)
	bw.Flush()
	want := "POST /a?b=1 HTTP/1.1\r\nHost: echo\r\nX-LF: 1\r\nX-CRLF: 2\r\nContent-Length: 0\r\n\r\n"
	if out.String() != want {
		t.Errorf("got %q\nwant %q", out.String(), want)
	}
}
