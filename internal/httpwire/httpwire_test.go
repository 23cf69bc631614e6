package httpwire

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestEqualFold(t *testing.T) {
	for _, tc := range []struct {
		b, lower string
		want     bool
	}{
		{"Content-Length", "content-length", true},
		{"CHUNKED", "chunked", true},
		{"chunked ", "chunked", false},
		{"chunkes", "chunked", false},
		{"", "", true},
		{"Requested_CPU", "requested_cpu", true}, // '_' is a token byte too
		{"keep\ralive", "keep-alive", false},
	} {
		if got := EqualFold([]byte(tc.b), tc.lower); got != tc.want {
			t.Errorf("EqualFold(%q, %q) = %v", tc.b, tc.lower, got)
		}
	}
}

// slowReader hands out one byte per read, as a connection delivering the
// preface in pieces would.
type slowReader struct{ s string }

func (r *slowReader) Read(p []byte) (int, error) {
	if r.s == "" {
		return 0, io.EOF
	}
	p[0], r.s = r.s[0], r.s[1:]
	return 1, nil
}

func TestStartsH2(t *testing.T) {
	for _, tc := range []struct {
		in      string
		h2, err bool
	}{
		{H2Preface + "more", true, false},
		{"GET / HTTP/1.1\r\n\r\n", false, false},
		{"PRI * HTTP/1.1\r\n\r\n", false, false},
		{"PRI * HTTP/2.0", false, true}, // the connection ends inside the preface
	} {
		br := bufio.NewReader(&slowReader{tc.in})
		h2, err := StartsH2(br)
		if h2 != tc.h2 || (err != nil) != tc.err {
			t.Errorf("%q: h2 %v, err %v", tc.in, h2, err)
		}
		// Nothing is consumed.
		if rest, _ := io.ReadAll(br); string(rest) != tc.in {
			t.Errorf("%q: %q left to read", tc.in, rest)
		}
	}
}

// The client reads the whole answer although the server left some of what
// it sent unread (a plain Close would reset the connection then).
func TestLingerClose(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(net.Conn)
		clean bool
	}{
		{"linger", func(c net.Conn) { LingerClose(c, time.Second, 1<<20) }, true},
		{"plain close", func(c net.Conn) { c.Close() }, false}, // shows the test can fail
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			sent := make(chan struct{})
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				<-sent // the client's bytes are in c's receive buffer, unread
				c.Write([]byte("answer"))
				tc.close(c)
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte(strings.Repeat("x", 32<<10))); err != nil { // fits in the buffers
				t.Fatal(err)
			}
			close(sent)
			got, err := io.ReadAll(c)
			if clean := string(got) == "answer" && err == nil; clean != tc.clean {
				t.Errorf("read %q, %v; want a clean answer: %v", got, err, tc.clean)
			}
		})
	}
}
