package fake

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/workload"
)

// rawConn is a client connection to a fresh Server.
func rawConn(t testing.TB) (*Server, net.Conn, *bufio.Reader) {
	t.Helper()
	s, err := NewServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return s, c, bufio.NewReader(c)
}

func readAnswer(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading an answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading an answer's body: %v", err)
	}
	return resp, string(b)
}

func function(t *testing.T, body string) string {
	t.Helper()
	var w workload.Response
	if err := json.Unmarshal([]byte(body), &w); err != nil || w.Status != "OK" || w.MachineName != "fake" {
		t.Fatalf("answer %q: %+v, %v", body, w, err)
	}
	return w.Function
}

// One connection carries requests one after another and pipelined, with
// bodies of both framings, an interim 100 Continue, a 400 that keeps the
// connection, and the health check.
func TestServerKeepAlive(t *testing.T) {
	_, c, br := rawConn(t)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: f\r\nWorkload: empty\r\nFunction: one\r\n\r\n")
	if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 200 || function(t, body) != "one" ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("first: %d %q", resp.StatusCode, body)
	}
	// Pipelined: a Content-Length body, then a chunked one with a trailer.
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: f\r\nworkload: empty\r\nfunction: two\r\nContent-Length: 5\r\n\r\nhello"+
		"POST /x?y=1 HTTP/1.1\r\nHost: f\r\nworkload: empty\r\nfunction: three\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n")
	for _, want := range []string{"two", "three"} {
		if resp, body := readAnswer(t, br, "POST"); resp.StatusCode != 200 || function(t, body) != want {
			t.Fatalf("pipelined %s: %d %q", want, resp.StatusCode, body)
		}
	}
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: f\r\nworkload: empty\r\nfunction: four\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("before the body: %q, %v; want 100 Continue", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "abc")
	if resp, body := readAnswer(t, br, "POST"); resp.StatusCode != 200 || function(t, body) != "four" {
		t.Fatalf("after 100 Continue: %d %q", resp.StatusCode, body)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: f\r\nworkload: sleep\r\nrequested_cpu: soon\r\n\r\n")
	if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 400 || !strings.Contains(body, "requested_cpu") {
		t.Fatalf("bad requested_cpu: %d %q", resp.StatusCode, body)
	}
	io.WriteString(c, "HEAD /health HTTP/1.1\r\nHost: f\r\n\r\nGET /health HTTP/1.1\r\nHost: f\r\n\r\n")
	if resp, body := readAnswer(t, br, "HEAD"); resp.StatusCode != 200 || body != "" || resp.ContentLength != 2 {
		t.Fatalf("HEAD /health: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}
	if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("GET /health: %d %q", resp.StatusCode, body)
	}
	// A sleep takes its time; the connection is still good after it.
	start := time.Now()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: f\r\nworkload: sleep\r\nrequested_cpu: 30\r\nfunction: five\r\n\r\n")
	if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 200 || function(t, body) != "five" {
		t.Fatalf("sleep: %d %q", resp.StatusCode, body)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("a 30 ms sleep answered after %s", d)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: f\r\nworkload: empty\r\nfunction: six\r\n\r\n")
	if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 200 || function(t, body) != "six" {
		t.Fatalf("after the sleep: %d %q", resp.StatusCode, body)
	}
}

// Requests that end their connection: HTTP/1.0 without keep-alive,
// Connection: close, and malformed ones (answered first).
func TestServerCloses(t *testing.T) {
	for name, tc := range map[string]struct {
		req    string
		status int
	}{
		"http/1.0":           {"GET / HTTP/1.0\r\nworkload: empty\r\n\r\n", 200},
		"connection close":   {"GET / HTTP/1.1\r\nHost: f\r\nworkload: empty\r\nConnection: close\r\n\r\n", 200},
		"bad request line":   {"NONSENSE\r\n\r\n", 400},
		"bad version":        {"GET / HTTP/2.5\r\n\r\n", 505},
		"bad header":         {"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400},
		"bad content-length": {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
		"gzip body":          {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		"long header":        {"GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 5000) + "\r\n\r\n", 431},
		"bad chunk":          {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
	} {
		t.Run(name, func(t *testing.T) {
			_, c, br := rawConn(t)
			io.WriteString(c, tc.req)
			resp, _ := readAnswer(t, br, "GET")
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if !resp.Close {
				t.Errorf("the answer does not say the connection closes")
			}
			if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("after the answer: %d bytes, %v; want the connection closed", n, err)
			}
		})
	}
}

// eventually fails the test with msg unless cond holds within d.
func eventually(t *testing.T, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// conns returns how many connections s holds.
func conns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// A client that goes away during a sleep ends it, as with net/http: the
// connection is dropped long before the sleep would have ended.
func TestServerSleepEndsWhenClientLeaves(t *testing.T) {
	s, c, _ := rawConn(t)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: f\r\nworkload: sleep\r\nrequested_cpu: 5000\r\n\r\n")
	eventually(t, 2*time.Second, func() bool { return conns(s) == 1 }, "the server did not take the connection")
	time.Sleep(50 * time.Millisecond) // into the sleep
	c.Close()
	eventually(t, 2*time.Second, func() bool { return conns(s) == 0 },
		"the server still holds the connection 2 s after its client left a 5 s sleep")
}

// Close returns promptly with sleeps in flight, over HTTP/1.1 and h2c (their
// connections close, which ends them), and leaves no goroutine behind.
func TestServerCloseEndsSleeps(t *testing.T) {
	before := runtime.NumGoroutine()
	s, err := NewServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: f\r\nworkload: sleep\r\nrequested_cpu: 10000\r\n\r\n")

	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protocols}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.Addr()+"/", nil)
	req.Header.Set("workload", "sleep")
	req.Header.Set("requested_cpu", "10000")
	h2done := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		h2done <- err
	}()
	eventually(t, 2*time.Second, func() bool { return conns(s) == 2 }, "the server did not take both connections")
	time.Sleep(100 * time.Millisecond) // into the sleeps

	start := time.Now()
	s.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %s with 10 s sleeps in flight, want under 1 s", d)
	}
	// Close waited for the server's goroutines: none is left, even for a
	// moment.
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, g := range strings.Split(stacks, "\n\n") {
		if strings.Contains(g, "fake.(*Server)") || strings.Contains(g, "fake.watchGone") || strings.Contains(g, "internal/workload.") {
			t.Errorf("a goroutine of the server outlived Close:\n%s", g)
		}
	}
	if err := <-h2done; err == nil {
		t.Error("the h2c sleep was answered after Close")
	}
	c.Close()
	tr.CloseIdleConnections()
	eventually(t, 2*time.Second, func() bool { return runtime.NumGoroutine() <= before },
		fmt.Sprintf("%d goroutines 2 s after Close, %d before the server", runtime.NumGoroutine(), before))
}

// BenchmarkServer: keep-alive `workload: empty` requests on one connection,
// the fake runtime's cost per answered request (allocs/op counts both
// sides; the client here allocates nothing).
func BenchmarkServer(b *testing.B) {
	_, c, br := rawConn(b)
	c.SetDeadline(time.Time{})
	req := []byte("GET / HTTP/1.1\r\nHost: f\r\nWorkload: empty\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		n := -1
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			if len(line) == 2 {
				break
			}
			if v, ok := strings.CutPrefix(string(line), "Content-Length: "); ok { // no allocation: compared, not kept
				n, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if n < 0 {
			b.Fatal("answer without Content-Length")
		}
		br.Discard(n)
	}
}
