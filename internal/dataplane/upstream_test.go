package dataplane

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// blockingDialer is a dialer whose dials wait until released, counting how
// many are in flight at once.
type blockingDialer struct {
	release chan struct{}
	cur     atomic.Int32
	max     atomic.Int32
	dials   atomic.Int32

	mu    sync.Mutex
	peers []net.Conn
}

func newBlockingDialer(t *testing.T) *blockingDialer {
	d := &blockingDialer{release: make(chan struct{}, 1000)}
	t.Cleanup(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, c := range d.peers {
			c.Close()
		}
	})
	return d
}

func (d *blockingDialer) dial(_ net.Dialer, _ string) (net.Conn, error) {
	d.dials.Add(1)
	n := d.cur.Add(1)
	for {
		m := d.max.Load()
		if n <= m || d.max.CompareAndSwap(m, n) {
			break
		}
	}
	<-d.release
	d.cur.Add(-1)
	a, b := net.Pipe()
	d.mu.Lock()
	d.peers = append(d.peers, a, b)
	d.mu.Unlock()
	return a, nil
}

func (p *upPool) counts() (out, dialing, waiters int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out, p.dialing, len(p.waiters)
}

// A burst of requests to one address dials at most maxDials at a time; the
// others wait for a slot and dial in turn.
func TestUpstreamDialCap(t *testing.T) {
	d := newBlockingDialer(t)
	u := &upstreams{dialer: d.dial}
	const n = 3 * maxDials
	conns := make(chan *upConn, n)
	deadline := time.Now().Add(10 * time.Second).UnixNano()
	for range n {
		go func() {
			uc, err := u.get("a", time.Now().UnixNano(), deadline)
			if err != nil {
				t.Error(err)
			}
			conns <- uc
		}()
	}
	p := u.pool("a")
	eventually(t, 5*time.Second, "the dial slots taken and the rest waiting", func() bool {
		_, dialing, waiters := p.counts()
		return dialing == maxDials && waiters == n-maxDials
	})
	for range n {
		d.release <- struct{}{}
	}
	// Nothing is given back before all have one: every request dials, in
	// turn.
	held := make([]*upConn, 0, n)
	for range n {
		if uc := <-conns; uc != nil {
			held = append(held, uc)
		}
	}
	for _, uc := range held {
		uc.put(time.Now().UnixNano())
	}
	if m := d.max.Load(); m != maxDials {
		t.Fatalf("%d dials in flight at once, want at most (and here exactly) %d", m, maxDials)
	}
	if got := d.dials.Load(); got != n {
		t.Fatalf("%d dials for %d requests that never gave a connection back in time", got, n)
	}
	if out, dialing, waiters := p.counts(); out != 0 || dialing != 0 || waiters != 0 {
		t.Fatalf("after all came back: out %d, dialing %d, waiters %d; want 0, 0, 0", out, dialing, waiters)
	}
}

// A connection put back while requests wait goes straight to the first of
// them, with no dial.
func TestUpstreamHandOff(t *testing.T) {
	d := newBlockingDialer(t)
	u := &upstreams{dialer: d.dial}
	deadline := time.Now().Add(10 * time.Second).UnixNano()
	got := make(chan *upConn, 2*maxDials)
	get := func() {
		uc, err := u.get("a", time.Now().UnixNano(), deadline)
		if err != nil {
			t.Error(err)
		}
		got <- uc
	}
	for range maxDials {
		go get()
	}
	p := u.pool("a")
	eventually(t, 5*time.Second, "every dial slot taken", func() bool { _, dialing, _ := p.counts(); return dialing == maxDials })
	go get() // waits
	eventually(t, 5*time.Second, "a waiter", func() bool { _, _, w := p.counts(); return w == 1 })
	d.release <- struct{}{}
	first := <-got // its dial's slot went to the waiter, which dials now
	eventually(t, 5*time.Second, "the waiter dialling in the freed slot", func() bool {
		_, dialing, w := p.counts()
		return w == 0 && dialing == maxDials && d.dials.Load() == maxDials+1
	})
	go get() // waits again
	eventually(t, 5*time.Second, "a second waiter", func() bool { _, _, w := p.counts(); return w == 1 })
	first.put(time.Now().UnixNano())
	second := <-got
	if second != first {
		t.Fatalf("the waiter got another connection than the one put back")
	}
	second.put(time.Now().UnixNano())
	if n := d.dials.Load(); n != maxDials+1 {
		t.Fatalf("%d dials: the connection put back was not handed over", n)
	}
	close(d.release)
	for range maxDials {
		(<-got).put(time.Now().UnixNano())
	}
	if out, dialing, waiters := p.counts(); out != 0 || dialing != 0 || waiters != 0 {
		t.Fatalf("after all came back: out %d, dialing %d, waiters %d; want 0, 0, 0", out, dialing, waiters)
	}
}

// A request that waits past its deadline gives up with a deadline error and
// leaves the pool's counts as they were.
func TestUpstreamWaitDeadline(t *testing.T) {
	d := newBlockingDialer(t)
	u := &upstreams{dialer: d.dial}
	long := time.Now().Add(10 * time.Second).UnixNano()
	got := make(chan *upConn, maxDials)
	for range maxDials {
		go func() {
			uc, err := u.get("a", time.Now().UnixNano(), long)
			if err != nil {
				t.Error(err)
			}
			got <- uc
		}()
	}
	p := u.pool("a")
	eventually(t, 5*time.Second, "every dial slot taken", func() bool { _, dialing, _ := p.counts(); return dialing == maxDials })
	start := time.Now()
	uc, err := u.get("a", time.Now().UnixNano(), time.Now().Add(50*time.Millisecond).UnixNano())
	if uc != nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past its deadline: %v, %v; want a deadline error", uc, err)
	}
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Fatalf("gave up after %s, before its deadline", el)
	}
	if _, _, w := p.counts(); w != 0 {
		t.Fatalf("%d waiters left after the only one gave up", w)
	}
	close(d.release)
	for range maxDials {
		(<-got).put(time.Now().UnixNano())
	}
	if out, dialing, waiters := p.counts(); out != 0 || dialing != 0 || waiters != 0 {
		t.Fatalf("after all came back: out %d, dialing %d, waiters %d; want 0, 0, 0", out, dialing, waiters)
	}
}

// A dial that fails fails the requests waiting to dial the same address at
// once, with its error: they do not each dial it in turn.
func TestUpstreamDialFailureFailsWaiters(t *testing.T) {
	release := make(chan struct{})
	var dials atomic.Int32
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	u := &upstreams{dialer: func(net.Dialer, string) (net.Conn, error) {
		dials.Add(1)
		<-release
		return nil, refused
	}}
	const n = 3 * maxDials
	errs := make(chan error, n)
	deadline := time.Now().Add(10 * time.Second).UnixNano()
	for range n {
		go func() {
			_, err := u.get("a", time.Now().UnixNano(), deadline)
			errs <- err
		}()
	}
	p := u.pool("a")
	eventually(t, 5*time.Second, "the dial slots taken and the rest waiting", func() bool {
		_, dialing, waiters := p.counts()
		return dialing == maxDials && waiters == n-maxDials
	})
	close(release)
	for range n {
		if err := <-errs; !isDialError(err) {
			t.Errorf("got %v, want the dial's error", err)
		}
	}
	if got := dials.Load(); got != maxDials {
		t.Errorf("%d dials, want %d: the waiters dialled the failing address again", got, maxDials)
	}
	if out, dialing, waiters := p.counts(); out != 0 || dialing != 0 || waiters != 0 {
		t.Errorf("after the failures: out %d, dialing %d, waiting %d; want 0 0 0", out, dialing, waiters)
	}
}
