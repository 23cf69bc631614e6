// Package httpwire holds the few HTTP/1.1 wire-level pieces that both of
// Baton's hand-written HTTP/1.1 loops need: the data plane's engine and the
// fake runtime's function server.
package httpwire

import (
	"bufio"
	"io"
	"net"
	"time"
)

// EqualFold reports whether b equals lower, a lower-case ASCII string,
// ignoring the case of b's ASCII letters.
func EqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// H2Preface starts every HTTP/2 connection with prior knowledge (h2c).
const H2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// StartsH2 peeks at br until it can tell whether the connection starts
// with the HTTP/2 preface, reading no more than it needs to; err is set if
// the connection failed before that.
func StartsH2(br *bufio.Reader) (bool, error) {
	for {
		b, _ := br.Peek(br.Buffered())
		k := min(len(b), len(H2Preface))
		if string(b[:k]) != H2Preface[:k] {
			return false, nil
		}
		if k == len(H2Preface) {
			return true, nil
		}
		if _, err := br.Peek(k + 1); err != nil {
			return false, err
		}
	}
}

// LingerClose closes c after an answer to a request that was not read to
// its end (an error answer): it shuts the write side, then reads and drops
// what the client still sends, for at most d and n bytes, so that the
// client reads the answer instead of a reset.
func LingerClose(c net.Conn, d time.Duration, n int64) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		c.SetReadDeadline(time.Now().Add(d))
		io.CopyN(io.Discard, c, n)
	}
	c.Close()
}
