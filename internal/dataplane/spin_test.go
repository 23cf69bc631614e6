//go:build unix

package dataplane

import (
	"net"
	"testing"
	"time"
)

// tcpPair is a connected loopback pair: the raw side's RawConn, and the
// peer that writes into it.
func tcpPair(t *testing.T) (net.Conn, *poller, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return c, newPoller(rc), peer
}

func TestPollerWait(t *testing.T) {
	c, p, peer := tcpPair(t)
	t0 := time.Now()
	if p.wait(20 * time.Millisecond) {
		t.Fatal("nothing was sent, yet the poll said readable")
	}
	if d := time.Since(t0); d < 20*time.Millisecond {
		t.Fatalf("gave up after %s, before its 20ms budget", d)
	}

	go func() {
		time.Sleep(5 * time.Millisecond)
		peer.Write([]byte("x"))
	}()
	t0 = time.Now()
	if !p.wait(10 * time.Second) {
		t.Fatal("a byte was sent, yet the poll said nothing came")
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("the poll saw the byte only after %s", d)
	}
	// The byte is still there for the reader.
	b := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := c.Read(b); n != 1 || b[0] != 'x' {
		t.Fatalf("read after the poll: %q, %v", b[:n], err)
	}

	peer.Close()
	if !p.wait(10 * time.Second) {
		t.Fatal("the peer closed, yet the poll kept waiting")
	}
	c.Close()
	if !p.wait(10 * time.Second) {
		t.Fatal("the connection is closed, yet the poll kept waiting")
	}
}

// spinTime is how long e.spin keeps an idle socket.
func spinTime(e *h1Engine, p *poller, active int64) time.Duration {
	t0 := time.Now()
	e.spin(p, active)
	return time.Since(t0)
}

// Connections poll only when the data plane is nearly idle, one at a
// time.
func TestSpinOnlyWhenIdle(t *testing.T) {
	_, p, _ := tcpPair(t)
	const budget = 300 * time.Millisecond
	e := newH1Engine(nil, 0, budget)
	if d := spinTime(e, p, 0); d < budget {
		t.Fatalf("idle engine polled for %s, want its budget %s", d, budget)
	}
	for name, set := range map[string]func(*h1Engine){
		"busy on average":          func(e *h1Engine) { e.inFlight.Store(16 << 8) },
		"more active than allowed": func(e *h1Engine) { e.active.Store(2) },
		"another one polling":      func(e *h1Engine) { e.spinning.Store(true) },
		"no budget":                func(e *h1Engine) { e.busyPoll = 0 },
	} {
		e := newH1Engine(nil, 0, budget)
		set(e)
		if d := spinTime(e, p, 1); d >= budget/2 {
			t.Errorf("%s: polled for %s, want no polling", name, d)
		}
	}
	// The average follows the requests in flight.
	for range 32 {
		e.noteStart()
	}
	if avg := e.inFlight.Load(); avg <= spinIdleMax {
		t.Fatalf("32 requests in flight: average %d (×256), want above %d", avg, spinIdleMax)
	}
}
