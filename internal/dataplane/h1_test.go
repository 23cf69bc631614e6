package dataplane

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of the HTTP/1.1 engine's own behaviour: framing, connection
// handling, streaming, failures of either side. Many speak raw HTTP over a
// socket, to send what net/http's client would not.

// rawUpstream serves every connection with handle; its cleanup closes the
// connections and waits for the handlers.
func rawUpstream(t testing.TB, handle func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(c, bufio.NewReader(c))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// readHeadLines reads a request head and returns it.
func readHeadLines(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		line, err := br.ReadString('\n')
		sb.WriteString(line)
		if err != nil {
			return sb.String(), err
		}
		if line == "\r\n" || line == "\n" {
			return sb.String(), nil
		}
	}
}

// rawConn is a client connection to the data plane.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, d *DataPlane) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		rc.t.Fatal(err)
	}
}

// response reads one response (for a request with method) and its body.
func (rc *rawConn) response(method string) (*http.Response, string) {
	rc.t.Helper()
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	if err != nil {
		rc.t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

// closed says whether the data plane closed the connection (nothing more
// to read).
func (rc *rawConn) closed() bool {
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := rc.br.ReadByte()
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset by peer") }

func TestChunkedRequestBody(t *testing.T) {
	t.Parallel()
	var te atomic.Value
	_, addr := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		te.Store(strings.Join(r.TransferEncoding, ","))
		echo(w, r)
	})
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	c := newClient(t)

	req, _ := http.NewRequest("POST", "http://"+d.Addr()+"/", hideLen{strings.NewReader(strings.Repeat("x", 100000))})
	req.Host = "echo"
	if r := do(c, req); r.status != 200 || !strings.Contains(r.body, "body=100000") {
		t.Fatalf("chunked POST: %d %q %v", r.status, r.body, r.err)
	}
	if te.Load() != "chunked" {
		t.Errorf("upstream saw Transfer-Encoding %q, want chunked", te.Load())
	}

	// Chunk extensions, upper-case sizes and a trailer; then the connection
	// serves another request.
	rc := dialRaw(t, d)
	rc.send("POST /x HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n")
	if resp, body := rc.response("POST"); resp.StatusCode != 200 || !strings.Contains(body, "body=15") {
		t.Errorf("raw chunked POST: %d %q", resp.StatusCode, body)
	}
	rc.send("GET /y HTTP/1.1\r\nHost: echo\r\n\r\n")
	if resp, body := rc.response("GET"); resp.StatusCode != 200 || !strings.HasPrefix(body, "GET echo /y ") {
		t.Errorf("next request: %d %q", resp.StatusCode, body)
	}
}

func TestChunkedResponseStreams(t *testing.T) {
	t.Parallel()
	next := make(chan struct{})
	_, addr := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part1")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-time.After(5 * time.Second):
		}
		io.WriteString(w, "part2")
	})
	cp := newFakeCP(t, route("stream", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	c := newClient(t)

	req, _ := http.NewRequest("GET", "http://"+d.Addr()+"/", nil)
	req.Host = "stream"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("Transfer-Encoding %v, want chunked", resp.TransferEncoding)
	}
	// The first part arrives while the function still runs.
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "part1" {
		t.Fatalf("first part: %q %v", buf, err)
	}
	close(next)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "part2" {
		t.Errorf("rest: %q %v", rest, err)
	}
}

func TestLargeBodiesStream(t *testing.T) {
	t.Parallel()
	// The function echoes while it reads: a proxy that sent the whole body
	// before reading the answer would deadlock once the socket buffers fill.
	// (net/http's HTTP/1 server discards an unread body once the handler
	// answers, unless told the handler is full duplex.)
	_, addr := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		if r.ContentLength >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(r.ContentLength, 10))
		}
		io.Copy(w, r.Body)
	})
	cp := newFakeCP(t, route("echo", 1, 10, 20000, ep("s1", addr)))
	d := startDP(t, cp, func(c *Config) { c.MaxBodyBytes = 64 << 20 })
	c := newClient(t)
	payload := make([]byte, 16<<20)
	rand.Read(payload)
	for _, chunked := range []bool{false, true} {
		var body io.Reader = bytes.NewReader(payload)
		if chunked {
			body = hideLen{body}
		}
		req, _ := http.NewRequest("POST", "http://"+d.Addr()+"/", body)
		req.Host = "echo"
		r := do(c, req)
		if r.err != nil || r.status != 200 || r.body != string(payload) {
			t.Errorf("chunked=%v: %d, %d bytes back, equal %v, %v", chunked, r.status, len(r.body), r.body == string(payload), r.err)
		}
	}
}

func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"no colon", "GET / HTTP/1.1\r\nHost echo\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : echo\r\n\r\n", 400},
		{"no target", "GET HTTP/1.1\r\nHost: echo\r\n\r\n", 400},
		{"bad method", "G(T / HTTP/1.1\r\nHost: echo\r\n\r\n", 400},
		{"bad version", "GET / HTTQ/1.1\r\nHost: echo\r\n\r\n", 400},
		{"HTTP/2 in text", "GET / HTTP/2.0\r\nHost: echo\r\n\r\n", 505},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: echo\r\nHost: echo\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: echo\r\nX-A: 1\r\n 2\r\n\r\n", 400},
		{"CR in value", "GET / HTTP/1.1\r\nHost: echo\r\nX-A: 1\r2\r\n\r\n", 400},
		{"bad Content-Length", "POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 1x\r\n\r\n", 400},
		{"two Content-Lengths", "POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
		{"length and chunked", "POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"gzip coding", "POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"chunked HTTP/1.0", "POST / HTTP/1.0\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400},
		{"bad chunk end", "POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n", 400},
		{"expectation", "GET / HTTP/1.1\r\nHost: echo\r\nExpect: teapot\r\n\r\n", 417},
		{"CONNECT", "CONNECT echo:80 HTTP/1.1\r\nHost: echo\r\n\r\n", 501},
		{"head too large", "GET / HTTP/1.1\r\nHost: echo\r\nX-Big: " + strings.Repeat("b", 2<<20) + "\r\n\r\n", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, d)
			go io.WriteString(rc.c, tc.req) // the head too large is not read to its end
			resp, _ := rc.response("GET")
			if resp.StatusCode != tc.status || !resp.Close {
				t.Errorf("status %d close %v, want %d and close", resp.StatusCode, resp.Close, tc.status)
			}
			if !rc.closed() {
				t.Error("connection left open")
			}
		})
	}
}

func TestUpstreamBreaksMidAnswer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, answer string }{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nxyz\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := readHeadLines(br); err == nil {
					io.WriteString(c, tc.answer)
				}
			})
			cp := newFakeCP(t, route("f", 1, 10, 5000, ep("s1", addr)))
			d := startDP(t, cp, nil)
			rc := dialRaw(t, d)
			rc.send("GET / HTTP/1.1\r\nHost: f\r\n\r\n")
			// Whatever arrived, it is not a whole answer, and the
			// connection ends.
			resp, err := http.ReadResponse(rc.br, nil)
			if err == nil {
				b, err := io.ReadAll(resp.Body)
				if err == nil {
					t.Fatalf("a truncated answer looked whole: %d %q", resp.StatusCode, b)
				}
			}
			if !rc.closed() {
				t.Error("connection left open")
			}
			eventually(t, 5*time.Second, "slot released", func() bool { s, _ := d.Stats("f"); return s.Endpoints[0].InFlight == 0 })
		})
	}
}

func TestH2CSplitPreface(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 100, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		return &splitWriter{Conn: c}, err
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for i := 0; i < 3; i++ { // the same connection after the first
		req, _ := http.NewRequest("GET", "http://"+d.Addr()+"/split", nil)
		req.Host = "echo"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 || !strings.HasPrefix(string(b), "GET echo /split ") {
			t.Errorf("h2c: %s %d %q", resp.Proto, resp.StatusCode, b)
		}
	}
}

// splitWriter sends its first write in two parts with a pause between, so
// the preface arrives in pieces.
type splitWriter struct {
	net.Conn
	once sync.Once
}

func (w *splitWriter) Write(p []byte) (int, error) {
	split := false
	w.once.Do(func() { split = len(p) > 5 })
	if !split {
		return w.Conn.Write(p)
	}
	n, err := w.Conn.Write(p[:5])
	if err != nil {
		return n, err
	}
	time.Sleep(20 * time.Millisecond)
	m, err := w.Conn.Write(p[5:])
	return n + m, err
}

func TestHTTP10Clients(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	_, streaming := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "a")
		w.(http.Flusher).Flush() // unknown length: chunked from the function
		io.WriteString(w, "b")
	})
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)), route("stream", 1, 10, 5000, ep("s2", streaming)))
	d := startDP(t, cp, nil)

	// No Host, path routing; the connection closes after the answer.
	rc := dialRaw(t, d)
	rc.send("GET /fn/echo/x HTTP/1.0\r\n\r\n")
	resp, body := rc.response("GET")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "GET echo /x ") {
		t.Errorf("HTTP/1.0: %d %q", resp.StatusCode, body)
	}
	if !rc.closed() {
		t.Error("HTTP/1.0 connection left open")
	}

	// Keep-alive asked for: kept, said so.
	rc = dialRaw(t, d)
	for i := 0; i < 2; i++ {
		rc.send("GET /fn/echo/k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		resp, body := rc.response("GET")
		if resp.StatusCode != 200 || resp.Header.Get("Connection") != "keep-alive" || !strings.HasPrefix(body, "GET echo /k ") {
			t.Errorf("keep-alive %d: %d %v %q", i, resp.StatusCode, resp.Header, body)
		}
	}

	// A chunked answer reaches an HTTP/1.0 client unframed, ended by the
	// close.
	rc = dialRaw(t, d)
	rc.send("GET / HTTP/1.0\r\nHost: stream\r\nConnection: keep-alive\r\n\r\n")
	resp, body = rc.response("GET")
	if resp.StatusCode != 200 || body != "ab" || len(resp.TransferEncoding) != 0 || resp.ContentLength != -1 {
		t.Errorf("streamed to HTTP/1.0: %d %v %q", resp.StatusCode, resp.TransferEncoding, body)
	}
	if !rc.closed() {
		t.Error("connection left open after a close-delimited answer")
	}
}

func TestConnectionCloseAndPipelining(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)

	// Four requests in one write, one with a body; answers in order.
	rc := dialRaw(t, d)
	rc.send("GET /1 HTTP/1.1\r\nHost: echo\r\n\r\n" +
		"POST /2 HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\n\r\nabc" +
		"GET /3 HTTP/1.1\r\nHost: nosuch\r\n\r\n" +
		"GET /4 HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
	for _, want := range []struct {
		method string
		status int
		body   string
	}{
		{"GET", 200, "GET echo /1 body=0"},
		{"POST", 200, "POST echo /2 body=3"},
		{"GET", 404, "function \"nosuch\" not found"},
		{"GET", 200, "GET echo /4 body=0"},
	} {
		resp, body := rc.response(want.method)
		if resp.StatusCode != want.status || !strings.HasPrefix(body, want.body) {
			t.Errorf("%s: %d %q, want %d %q", want.body, resp.StatusCode, body, want.status, want.body)
		}
		if last := want.body == "GET echo /4 body=0"; resp.Close != last {
			t.Errorf("%s: Connection: close = %v", want.body, resp.Close)
		}
	}
	if !rc.closed() {
		t.Error("connection left open after Connection: close")
	}
}

func TestExpectContinue(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)

	rc := dialRaw(t, d)
	rc.send("POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	line, err := rc.br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("interim answer %q %v", line, err)
	}
	if line, _ := rc.br.ReadString('\n'); line != "\r\n" {
		t.Fatalf("interim answer continues with %q", line)
	}
	rc.send("hello")
	if resp, body := rc.response("POST"); resp.StatusCode != 200 || !strings.HasPrefix(body, "POST echo / body=5") {
		t.Errorf("after 100 Continue: %d %q", resp.StatusCode, body)
	}

	// Refused before the body: no 100 Continue, and the connection ends.
	rc = dialRaw(t, d)
	rc.send("POST / HTTP/1.1\r\nHost: nosuch\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	if resp, _ := rc.response("POST"); resp.StatusCode != 404 || !resp.Close {
		t.Errorf("refused: %d close=%v", resp.StatusCode, resp.Close)
	}
	if !rc.closed() {
		t.Error("connection left open with a body unread")
	}
}

func TestClientGoneReleasesSlot(t *testing.T) {
	t.Parallel()
	cancelled := make(chan struct{})
	_, addr := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(10 * time.Second):
		}
	})
	cp := newFakeCP(t, route("f", 1, 1, 60000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	rc := dialRaw(t, d)
	rc.send("GET / HTTP/1.1\r\nHost: f\r\n\r\n")
	eventually(t, 5*time.Second, "in flight", func() bool { s, _ := d.Stats("f"); return s.Endpoints[0].InFlight == 1 })
	rc.c.Close()
	eventually(t, 5*time.Second, "slot released", func() bool { s, _ := d.Stats("f"); return s.Endpoints[0].InFlight == 0 && s.InFlight == 0 })
	select {
	case <-cancelled: // the function's connection was closed too
	case <-time.After(5 * time.Second):
		t.Error("the function's request was not cancelled")
	}
	// The slot serves the next request.
	_, addr2 := sandbox(t, echo)
	cp.put(route("f", 2, 1, 60000, ep("s1", addr2)))
	eventually(t, 5*time.Second, "new route", func() bool { s, _ := d.Stats("f"); return s.Version == 2 })
	if r := get(t, newClient(t), d, "f", "/"); r.status != 200 {
		t.Errorf("next request: %d %q", r.status, r.body)
	}
}

func TestResponseHeaders(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Connection", "X-Up-Hop")
		h.Set("X-Up-Hop", "1")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("X-Baton-Cold-Start", "bogus")
		h.Set("Server-Timing", "fn;dur=1")
		h.Set("X-Kept", "yes")
		w.WriteHeader(201)
		io.WriteString(w, "made")
	})
	cp := newFakeCP(t, route("f", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	r := get(t, newClient(t), d, "f", "/")
	if r.status != 201 || r.body != "made" {
		t.Fatalf("%d %q", r.status, r.body)
	}
	h := r.header
	if h.Get("X-Up-Hop") != "" || h.Get("Keep-Alive") != "" || h.Get("X-Kept") != "yes" {
		t.Errorf("hop-by-hop fields passed or others dropped: %v", h)
	}
	if v := h.Values(headerColdStart); len(v) != 1 || v[0] != "false" {
		t.Errorf("%s = %v", headerColdStart, v)
	}
	if v := h.Values(headerServerTiming); len(v) != 2 || v[0] != "fn;dur=1" || !strings.HasPrefix(v[1], "queue;dur=") {
		t.Errorf("Server-Timing = %v, want the function's then ours", v)
	}
	if h.Get("Date") == "" {
		t.Error("no Date")
	}

	// HEAD: the length of what GET would send, no body.
	req, _ := http.NewRequest("HEAD", "http://"+d.Addr()+"/", nil)
	req.Host = "f"
	if r := do(newClient(t), req); r.status != 201 || r.body != "" || r.header.Get("Content-Length") != "4" {
		t.Errorf("HEAD: %d %q %v", r.status, r.body, r.header)
	}
}

func TestStaleUpstreamConnections(t *testing.T) {
	t.Parallel()
	// A sandbox that closes each connection after one answer without
	// saying so: the pooled connection is dead when it is next used.
	var served atomic.Int32
	addr := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readHeadLines(br); err == nil {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n%02d", served.Add(1)%100)
		}
	})
	// And one that times out idle connections, as many servers do.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(echo))
	srv.Config.IdleTimeout = 100 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	idling := srv.Listener.Addr().String()
	cp := newFakeCP(t, route("f", 1, 10, 5000, ep("s1", addr)), route("g", 1, 10, 5000, ep("s2", idling)))
	d := startDP(t, cp, nil)
	c := newClient(t)
	for i := 0; i < 5; i++ {
		if r := get(t, c, d, "f", "/"); r.status != 200 {
			t.Fatalf("GET %d: %d %q", i, r.status, r.body)
		}
	}

	// A connection idle for longer than upstreamCheckAfter is checked
	// before use, so even a request that cannot be sent twice gets
	// through after the sandbox closed it.
	post := func() result {
		req, _ := http.NewRequest("POST", "http://"+d.Addr()+"/", strings.NewReader("abc"))
		req.Host = "g"
		return do(c, req)
	}
	if r := post(); r.status != 200 {
		t.Fatalf("first POST: %d %q", r.status, r.body)
	}
	time.Sleep(upstreamCheckAfter + 200*time.Millisecond)
	if r := post(); r.status != 200 || !strings.Contains(r.body, "body=3") {
		t.Errorf("POST after the sandbox closed the idle connection: %d %q", r.status, r.body)
	}
}

func TestShutdownClosesIdleConnections(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)))
	d, err := New(Config{Listen: "127.0.0.1:0", ControlPlane: cp.addr, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	eventually(t, 5*time.Second, "snapshot", func() bool { return d.Epoch() > 0 })
	rc := dialRaw(t, d)
	rc.send("GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	silent := dialRaw(t, d) // connected, never sent anything
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("shutdown with only idle connections took %v", el)
	}
	if !rc.closed() || !silent.closed() {
		t.Error("idle connection left open")
	}
}

// TestWarmPathAllocs proves that a warm request allocates nothing in the
// data plane: the client and the sandbox are raw sockets that allocate
// nothing either, so testing.AllocsPerRun (which counts the whole process)
// sees only the data plane. Not parallel for the same reason.
func TestWarmPathAllocs(t *testing.T) {
	answer := []byte("HTTP/1.1 200 OK\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
	addr := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if !skipHead(br) {
				return
			}
			if _, err := c.Write(answer); err != nil {
				return
			}
		}
	})
	cp := newFakeCP(t, route("f", 1, 100, 5000, ep("s1", addr)))
	d := startDP(t, cp, func(c *Config) { c.ReportInterval = time.Hour })
	for _, tc := range []struct{ name, req string }{
		{"GET", "GET /x?y=1 HTTP/1.1\r\nHost: f\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"},
		{"POST", "POST /fn/f/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"work\":true}"},
	} {
		c, err := net.Dial("tcp", d.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req := []byte(tc.req)
		var failed error
		roundTrip := func() {
			if _, err := c.Write(req); err != nil {
				failed = err
				return
			}
			n, ok := readRawAnswer(br)
			if !ok || n != 5 {
				failed = errors.New("bad answer")
			}
		}
		for i := 0; i < 200; i++ { // warm up: pools, connections, the Date line
			roundTrip()
		}
		// testing.AllocsPerRun rounds down; count exactly. The process's
		// other goroutines (gRPC, timers) may allocate a little meanwhile.
		const runs = 5000
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		m0 := ms.Mallocs
		for i := 0; i < runs; i++ {
			roundTrip()
		}
		runtime.ReadMemStats(&ms)
		perReq := float64(ms.Mallocs-m0) / runs
		t.Logf("%s: %.4f allocations per request", tc.name, perReq)
		if perReq > 0.01 || failed != nil {
			t.Errorf("%s: %.4f allocations per request (%v)", tc.name, perReq, failed)
		}
	}
}

// skipHead reads a message head without allocating.
func skipHead(br *bufio.Reader) bool {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return false
		}
		if len(line) <= 2 {
			return true
		}
	}
}

// readRawAnswer reads an answer with a Content-Length without allocating
// and returns the length.
func readRawAnswer(br *bufio.Reader) (int, bool) {
	n := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, false
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			l, _ := parseLength(bytes.TrimSpace(v))
			n = int(l)
		}
	}
	if n < 0 {
		return 0, false
	}
	_, err := br.Discard(n)
	return n, err == nil
}

func TestRetryWithBufferedBody(t *testing.T) {
	t.Parallel()
	// Answers one request per connection with its body, then closes
	// without saying so.
	var conns atomic.Int32
	addr := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		conns.Add(1)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		b, _ := io.ReadAll(req.Body)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
	})
	cp := newFakeCP(t, route("f", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	rc := dialRaw(t, d)
	for i, body := range []string{"abc", "defg", "hijkl"} {
		rc.send(fmt.Sprintf("POST / HTTP/1.1\r\nHost: f\r\nIdempotency-Key: k%d\r\nContent-Length: %d\r\n\r\n%s", i, len(body), body))
		if resp, got := rc.response("POST"); resp.StatusCode != 200 || got != body {
			t.Errorf("request %d: %d %q, want %q", i, resp.StatusCode, got, body)
		}
	}
	if n := conns.Load(); n < 3 {
		t.Errorf("%d sandbox connections for 3 requests", n)
	}
}

// A sandbox that drops the connection while the client's body is still
// coming is a failed forward (502) at once, not a wait for the rest of the
// body until the function's timeout (504). The body is chunked, so it is
// streamed (a body of known length up to maxHeldBody would be read whole
// before routing).
func TestSandboxDropsDuringBody(t *testing.T) {
	t.Parallel()
	addr := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := readHeadLines(br); err != nil {
			return
		}
		br.Read(make([]byte, 10))
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0) // a reset
		c.Close()
	})
	cp := newFakeCP(t, route("f", 1, 10, 8000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	rc := dialRaw(t, d)
	rc.send("POST / HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n") // the rest never comes
	resp, body := rc.response("POST")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d %q, want 502 for a sandbox that dropped the request", resp.StatusCode, body)
	}
	if !rc.closed() {
		t.Fatal("the connection stays open with the request's body unread")
	}
}
