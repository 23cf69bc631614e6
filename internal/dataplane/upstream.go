package dataplane

import (
	"bufio"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Connections to sandboxes, for the HTTP/1.1 engine: per sandbox address
// (several endpoints may share one, as the fake runtime's do), a stack of
// idle keep-alive connections. The most recently used is taken first, so a
// small hot set serves steady traffic and the rest age out. A connection idle
// for more than upstreamCheckAfter is checked for a close from the sandbox
// (a non-blocking peek) before it is used, so requests are not sent into
// connections a function's server has timed out; the reaper closes those
// idle past upstreamIdleTimeout or closed by the peer.

const (
	upstreamIdleTimeout = 90 * time.Second
	upstreamCheckAfter  = time.Second
	upstreamMaxIdle     = 4096 // per address
	upstreamDialTimeout = time.Second
	upstreamBufSize     = 4 << 10
	// upstreamPoolTTL is how long the reaper keeps an empty pool.
	upstreamPoolTTL = 5 * time.Minute
)

// sockState is what a non-blocking peek at a socket found.
type sockState uint8

const (
	sockIdle   sockState = iota // open, nothing to read
	sockData                    // open, bytes waiting
	sockClosed                  // the peer closed it, or it failed
)

type upstreams struct {
	pools sync.Map // address → *upPool
	// dialer dials a sandbox (net.Dialer.Dial; tests replace it).
	dialer func(d net.Dialer, addr string) (net.Conn, error)
	polled bool // connections get a poller (the engine busy-polls)

	reapScratch []*upConn // the reaper's (one goroutine)
}

type upPool struct {
	addr string

	mu      sync.Mutex
	idle    []*upConn     // oldest first
	out     int           // connections handed out (or being dialled)
	dialing int           // dials in flight (at most maxDials)
	waiters []chan handed // requests waiting for a connection or a dial slot, first first
	lastPut int64         // unix ns
	dead    bool          // dropped from the map: connections coming back are closed
}

// upConn is one keep-alive connection to a sandbox, owned by one request at
// a time.
type upConn struct {
	c      net.Conn
	rc     syscall.RawConn // nil if the conn does not offer one
	poll   *poller         // nil without busy-polling
	br     *bufio.Reader
	bw     *bufio.Writer
	pool   *upPool
	idleAt int64 // unix ns it was put back
	reused bool  // served a request before this one
	rdl    int64 // read deadline set (unix ns), see setReadDeadline
	wdl    int64
	resp   response
	big    []byte // a response head too large for br
}

func (u *upstreams) pool(addr string) *upPool {
	if p, ok := u.pools.Load(addr); ok {
		return p.(*upPool)
	}
	p, _ := u.pools.LoadOrStore(addr, &upPool{addr: addr})
	return p.(*upPool)
}

// get returns an idle connection to addr or dials one; deadline (unix ns)
// bounds the dial and the wait for one. now is the caller's clock (unix ns).
// At most maxDials dials to one address are in flight: beyond that the
// request waits for a connection coming back or a dial slot, so that a
// burst of requests released to one sandbox at once (the queue of a cold
// start, a high-concurrency function) reuses connections as they come back
// instead of dialling as many as there are requests at the same instant.
func (u *upstreams) get(addr string, now, deadline int64) (*upConn, error) {
	for {
		p := u.pool(addr)
		p.mu.Lock()
		if p.dead {
			p.mu.Unlock()
			continue // the reaper just dropped it; a new one is in the map
		}
		n := len(p.idle)
		if n == 0 {
			if p.dialing < maxDials {
				p.dialing++
				p.out++
				p.mu.Unlock()
				return u.dial(p, deadline)
			}
			return u.wait(p, deadline)
		}
		p.out++
		uc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if now-uc.idleAt > int64(upstreamCheckAfter) && peek(uc.rc) != sockIdle {
			uc.discard()
			continue
		}
		uc.reused = true
		return uc, nil
	}
}

// maxDials bounds the dials in flight to one address (see get).
const maxDials = 8

// wait queues for a connection another request puts back, or for a dial
// slot, until deadline. p.mu held; wait releases it.
func (u *upstreams) wait(p *upPool, deadline int64) (*upConn, error) {
	ch := make(chan handed, 1)
	p.waiters = append(p.waiters, ch)
	p.mu.Unlock()
	t := time.NewTimer(time.Until(time.Unix(0, deadline)))
	defer t.Stop()
	var h handed
	select {
	case h = <-ch:
	case <-t.C:
		p.mu.Lock()
		if i := slices.Index(p.waiters, ch); i >= 0 {
			p.waiters = slices.Delete(p.waiters, i, i+1)
			p.mu.Unlock()
			return nil, os.ErrDeadlineExceeded
		}
		p.mu.Unlock()
		// Handed something as the timer fired: give it back.
		switch h = <-ch; {
		case h.uc != nil:
			h.uc.put(time.Now().UnixNano())
		case h.err == nil:
			p.mu.Lock()
			p.out-- // no dial after all
			p.mu.Unlock()
			p.dialDone()
		}
		return nil, os.ErrDeadlineExceeded
	}
	switch {
	case h.err != nil:
		return nil, h.err
	case h.uc == nil: // a dial slot, and p.out counts this request
		return u.dial(p, deadline)
	}
	h.uc.reused = true
	return h.uc, nil
}

// handed is what a waiter gets: a connection, a dial slot (neither field),
// or the error a dial to the address just failed with.
type handed struct {
	uc  *upConn
	err error
}

// handOff gives what a request frees (a connection, or a dial slot when uc
// is nil) to the first waiter, and says whether there was one. p.mu held.
func (p *upPool) handOff(uc *upConn) bool {
	if len(p.waiters) == 0 {
		return false
	}
	ch := p.waiters[0]
	p.waiters[0] = nil
	p.waiters = p.waiters[1:]
	ch <- handed{uc: uc}
	return true
}

// dialDone frees a dial slot: the first waiter takes it (counted in p.out
// from now, for its dial), or it is free again.
func (p *upPool) dialDone() {
	p.mu.Lock()
	if len(p.waiters) > 0 {
		p.out++
		p.handOff(nil)
	} else {
		p.dialing--
	}
	p.mu.Unlock()
}

func (u *upstreams) dial(p *upPool, deadline int64) (*upConn, error) {
	d := net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 30 * time.Second, Deadline: time.Unix(0, deadline)}
	var c net.Conn
	var err error
	if u.dialer != nil {
		c, err = u.dialer(d, p.addr)
	} else {
		c, err = d.Dial("tcp", p.addr)
	}
	if err != nil {
		// The address refuses (or does not answer): those waiting to dial
		// it fail now too, rather than each dialling it in turn.
		p.mu.Lock()
		p.out--
		p.dialing--
		waiters := p.waiters
		p.waiters = nil
		p.mu.Unlock()
		for _, ch := range waiters {
			ch <- handed{err: err}
		}
		return nil, err
	}
	p.dialDone()
	uc := &upConn{
		c:    c,
		pool: p,
		br:   bufio.NewReaderSize(c, upstreamBufSize),
		bw:   bufio.NewWriterSize(c, upstreamBufSize),
	}
	if sc, ok := c.(syscall.Conn); ok {
		uc.rc, _ = sc.SyscallConn()
		if u.polled {
			uc.poll = newPoller(uc.rc)
		}
	}
	return uc, nil
}

// put gives back a connection whose exchange ended cleanly.
func (uc *upConn) put(now int64) {
	uc.idleAt = now
	p := uc.pool
	p.mu.Lock()
	p.lastPut = now
	if p.handOff(uc) { // it stays counted in p.out, for the waiter
		p.mu.Unlock()
		return
	}
	p.out--
	if p.dead || len(p.idle) >= upstreamMaxIdle {
		p.mu.Unlock()
		uc.c.Close()
		return
	}
	p.idle = append(p.idle, uc)
	p.mu.Unlock()
}

// discard closes a connection handed out by get.
func (uc *upConn) discard() {
	uc.c.Close()
	p := uc.pool
	p.mu.Lock()
	p.out--
	p.mu.Unlock()
}

// reap closes idle connections that are too old or that their sandbox
// closed, and drops pools unused for upstreamPoolTTL.
func (u *upstreams) reap(now int64) {
	u.pools.Range(func(k, v any) bool {
		p := v.(*upPool)
		p.mu.Lock()
		i := 0
		for i < len(p.idle) && now-p.idle[i].idleAt > int64(upstreamCheckAfter) {
			i++
		}
		old := append(u.reapScratch[:0], p.idle[:i]...)
		n := copy(p.idle, p.idle[i:])
		clear(p.idle[n:])
		p.idle = p.idle[:n]
		if len(old) == 0 && n == 0 && p.out == 0 && now-p.lastPut > int64(upstreamPoolTTL) {
			p.dead = true
			u.pools.CompareAndDelete(k, p)
		}
		p.mu.Unlock()

		keep := old[:0]
		for _, uc := range old {
			if now-uc.idleAt > int64(upstreamIdleTimeout) || peek(uc.rc) != sockIdle {
				uc.c.Close()
				continue
			}
			keep = append(keep, uc)
		}
		if len(keep) > 0 {
			p.mu.Lock()
			if p.dead {
				for _, uc := range keep {
					uc.c.Close()
				}
			} else {
				p.idle = slices.Insert(p.idle, 0, keep...) // still the oldest
			}
			p.mu.Unlock()
		}
		clear(old)
		u.reapScratch = old[:0]
		return true
	})
}

// drop closes the idle connections to addr: its sandbox died.
func (u *upstreams) drop(addr string) {
	if v, ok := u.pools.Load(addr); ok {
		v.(*upPool).closeIdle(false)
	}
}

// closeIdle closes every idle connection; those in use are closed when
// they come back.
func (u *upstreams) closeIdle() {
	u.pools.Range(func(k, v any) bool {
		v.(*upPool).closeIdle(true)
		u.pools.CompareAndDelete(k, v)
		return true
	})
}

// closeIdle closes p's idle connections; retire also closes those in use
// when they come back (p is being dropped from the map).
func (p *upPool) closeIdle(retire bool) {
	p.mu.Lock()
	p.dead = p.dead || retire
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, uc := range idle {
		uc.c.Close()
	}
}
