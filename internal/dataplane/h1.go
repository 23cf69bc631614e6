package dataplane

import (
	"bufio"
	"context"
	"errors"
	"github.com/batonfaas/baton/internal/httpwire"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The HTTP/1.1 engine: the front door's own server loop on raw
// connections. It owns the listener; a connection that starts with the
// HTTP/2 preface is handed to net/http's h2c server (proxy.go) through a
// connListener, every other one is served here, one goroutine per
// connection doing everything for one request after another:
//
//	read the head (in place in the connection's reader) → resolve, take a
//	slot (router) → take a keep-alive connection to the sandbox → write the
//	head (and a body already received) in one write → read the answer's
//	head → write ours and relay the body → give back the connection, then
//	the slot.
//
// Request and response bodies stream in both directions; a request body
// that has not fully arrived is sent by a second goroutine while the first
// reads the answer, so a function answering before it has read everything
// cannot deadlock the exchange. Nothing is allocated per request in steady
// state: buffers belong to connections, deadlines are moved only when they
// fall out of a tolerance window (setReadDeadline), and the Server-Timing and
// Date headers are appended in place.
//
// A client that goes away while its request waits (queue, function) is
// noticed by the sweeper, which looks at the sockets of requests older than
// goneCheckAfter with a non-blocking peek: it cancels the wait or closes the
// sandbox connection, and the slot is released at once.

const (
	// clientIdleTimeout bounds an idle keep-alive connection and the
	// reading of a request head (net/http's IdleTimeout here before).
	clientIdleTimeout = 2 * time.Minute
	clientIdleTol     = 30 * time.Second
	// errorWriteTimeout bounds writing an answer the data plane makes
	// itself.
	errorWriteTimeout = 10 * time.Second
	sweepInterval     = 100 * time.Millisecond
	goneCheckAfter    = 100 * time.Millisecond // first look at a request's client
	goneCheckMax      = 2 * time.Second        // longest between two looks
	reapEvery         = 50                     // sweeps between two reaps of idle sandbox connections (5 s)
	// lingerTime and lingerBytes bound the reading and discarding of what a
	// client still sends after an answer that ends its connection early
	// (413, 400), so it reads the answer instead of getting a reset.
	lingerTime     = 500 * time.Millisecond
	lingerBytes    = 256 << 10
	clientBufSize  = 4 << 10
	maxLeadingCRLF = 4 // stray line ends tolerated before a request line
)

// Connection states, for shutdown: idle connections are closed at once,
// active ones after their answer.
const (
	connIdle int32 = iota
	connActive
	connClosed
)

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, clientBufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, clientBufSize) }}
	heldPool   = sync.Pool{New: func() any { b := make([]byte, 0, maxHeldBody); return &b }}
)

type h1Engine struct {
	rt      *router
	maxBody int64
	up      upstreams

	ln         net.Listener
	h2         *connListener // h2c connections go there
	acceptDone chan struct{}
	sweepStop  chan struct{}
	sweepDone  chan struct{}

	active atomic.Int64 // requests being handled
	// Busy-polling (see spin): the budget, the moving average of active
	// at request starts (×256), whether a connection is polling.
	busyPoll time.Duration
	inFlight atomic.Int64
	spinning atomic.Bool
	shutting atomic.Bool

	mu    sync.Mutex
	conns map[*h1Conn]struct{}
	wg    sync.WaitGroup // connection goroutines and their body pumps
}

func newH1Engine(rt *router, maxBody int64, busyPoll time.Duration) *h1Engine {
	return &h1Engine{rt: rt, maxBody: maxBody, conns: make(map[*h1Conn]struct{}), busyPoll: busyPoll,
		up: upstreams{polled: busyPoll > 0}}
}

// start serves ln in the background; h2c connections go to h2.
func (e *h1Engine) start(ln net.Listener, h2 *connListener) {
	e.ln, e.h2 = ln, h2
	e.acceptDone = make(chan struct{})
	e.sweepStop, e.sweepDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(e.acceptDone)
		e.acceptLoop()
	}()
	go func() {
		defer close(e.sweepDone)
		e.sweepLoop()
	}()
}

func (e *h1Engine) acceptLoop() {
	var delay time.Duration
	for {
		c, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, an aborted handshake...: back off and
			// go on, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		hc := &h1Conn{e: e, c: c}
		if sc, ok := c.(syscall.Conn); ok {
			hc.rc, _ = sc.SyscallConn()
			if e.busyPoll > 0 {
				hc.poll = newPoller(hc.rc)
			}
		}
		e.mu.Lock()
		e.conns[hc] = struct{}{}
		e.mu.Unlock()
		e.wg.Go(hc.serve)
	}
}

// sweepLoop notices clients gone while their request waits, and reaps idle
// sandbox connections.
func (e *h1Engine) sweepLoop() {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	var cand []*h1Conn
	for n := 1; ; n++ {
		select {
		case <-e.sweepStop:
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		e.mu.Lock()
		for hc := range e.conns {
			s := hc.since.Load()
			if s == 0 {
				continue
			}
			if hc.sweepSince != s { // a new request
				hc.sweepSince, hc.sweepNext = s, s+int64(goneCheckAfter)
			}
			if now >= hc.sweepNext {
				// Look again after a quarter of the request's age: a
				// client gone is noticed within about that, and many
				// long requests cost few peeks.
				hc.sweepNext = now + int64(min(max(time.Duration(now-s)/4, goneCheckAfter), goneCheckMax))
				cand = append(cand, hc)
			}
		}
		e.mu.Unlock()
		for _, hc := range cand {
			if peek(hc.rc) == sockClosed {
				hc.abort()
			}
		}
		clear(cand)
		cand = cand[:0]
		if n%reapEvery == 0 {
			e.up.reap(now)
		}
	}
}

// shutdown stops accepting and closes idle connections until none is left
// or ctx is done; it says whether every connection ended.
func (e *h1Engine) shutdown(ctx context.Context) bool {
	e.shutting.Store(true)
	e.ln.Close()
	<-e.acceptDone
	delay := time.Millisecond
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		e.mu.Lock()
		for hc := range e.conns {
			if hc.state.CompareAndSwap(connIdle, connClosed) {
				hc.c.Close()
			}
		}
		n := len(e.conns)
		e.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
		t.Reset(delay)
	}
}

// closeAll cuts off every connection, and the sandbox connections of their
// requests.
func (e *h1Engine) closeAll() {
	e.mu.Lock()
	for hc := range e.conns {
		hc.state.Store(connClosed)
		hc.c.Close()
		if uc := hc.upc.Swap(nil); uc != nil {
			uc.c.Close()
		}
	}
	e.mu.Unlock()
}

// wait waits for every goroutine of the engine; call after shutdown (and
// closeAll if it failed).
func (e *h1Engine) wait() {
	close(e.sweepStop)
	<-e.sweepDone
	e.wg.Wait()
	e.up.closeIdle()
}

func (e *h1Engine) forget(hc *h1Conn) {
	e.mu.Lock()
	delete(e.conns, hc)
	e.mu.Unlock()
}

// connListener is a net.Listener fed by the engine: the h2c connections it
// hands to net/http's server.
type connListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

func (l *connListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

// prefixConn replays bytes already read from a connection.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// h1Conn is one client connection.
type h1Conn struct {
	e    *h1Engine
	c    net.Conn
	rc   syscall.RawConn
	poll *poller // nil without busy-polling
	br   *bufio.Reader
	bw   *bufio.Writer

	// Shared with the sweeper and shutdown.
	state  atomic.Int32
	since  atomic.Int64                       // unix ns the current request arrived; 0 between requests
	gone   atomic.Bool                        // the client went away
	upc    atomic.Pointer[upConn]             // the sandbox connection in use
	cancel atomic.Pointer[context.CancelFunc] // the queue wait's

	// The sweeper's (under e.mu).
	sweepSince, sweepNext int64

	// The connection's goroutine's.
	req      request
	call     call
	big      []byte  // a request head too large for br
	rdl, wdl int64   // deadlines set (unix ns), see setReadDeadline
	now      int64   // unix ns at the end of the last request
	pend     int     // bytes of the request (head, buffered body) still in br
	bodyOff  int     // where the request body starts in br (after a head still there)
	unread   bool    // the request body was not (fully) read: close after the answer
	linger   bool    // close with httpwire.LingerClose (so does unread)
	streamed bool    // the request body went to a pump: it cannot be sent again
	held     *[]byte // the request body read whole (holdBody), from heldPool
	pump     *pump   // the request body's sender, if one runs
}

// serve runs the connection.
func (hc *h1Conn) serve() {
	hc.br = readerPool.Get().(*bufio.Reader)
	hc.br.Reset(hc.c)
	hc.bw = writerPool.Get().(*bufio.Writer)
	hc.bw.Reset(hc.c)
	hc.now = time.Now().UnixNano()
	keep, h2 := hc.first()
	if h2 {
		hc.release()
		return
	}
	for keep {
		keep = hc.handle()
		if keep {
			keep = hc.next()
		}
	}
	hc.close()
}

// first waits for the connection's first bytes and hands an HTTP/2 one to
// the h2c server.
func (hc *h1Conn) first() (keep, h2 bool) {
	hc.state.Store(connIdle)
	setReadDeadline(hc.c, &hc.rdl, hc.now+int64(clientIdleTimeout), int64(clientIdleTol))
	if _, err := hc.br.Peek(1); err != nil || !hc.state.CompareAndSwap(connIdle, connActive) {
		return false, false
	}
	switch h2, err := httpwire.StartsH2(hc.br); {
	case err != nil:
		return false, false
	case !h2:
		return hc.next(), false
	}
	b, _ := hc.br.Peek(hc.br.Buffered())
	pc := &prefixConn{Conn: hc.c, pre: append([]byte(nil), b...)}
	hc.c.SetReadDeadline(time.Time{})
	hc.e.forget(hc)
	if !hc.e.h2.push(pc) {
		hc.c.Close()
	}
	return false, true
}

// next waits for the next request's first byte.
func (hc *h1Conn) next() bool {
	for skipped := 0; ; skipped++ {
		if hc.br.Buffered() == 0 {
			if !hc.state.CompareAndSwap(connActive, connIdle) || hc.e.shutting.Load() {
				return false
			}
			setReadDeadline(hc.c, &hc.rdl, hc.now+int64(clientIdleTimeout), int64(clientIdleTol))
			hc.e.spin(hc.poll, 0) // the client's next request
			if _, err := hc.br.Peek(1); err != nil || !hc.state.CompareAndSwap(connIdle, connActive) {
				return false
			}
		}
		b, _ := hc.br.Peek(1)
		if (b[0] != '\r' && b[0] != '\n') || skipped == maxLeadingCRLF {
			return true
		}
		hc.br.Discard(1)
	}
}

// abort ends the current request of a client that went away: its queue
// wait or its sandbox connection.
func (hc *h1Conn) abort() {
	hc.gone.Store(true)
	if f := hc.cancel.Load(); f != nil {
		(*f)()
	}
	if uc := hc.upc.Swap(nil); uc != nil {
		uc.c.Close()
	}
}

// own records uc as the sandbox connection in use, so abort and closeAll
// can close it; false if the client is gone already.
func (hc *h1Conn) own(uc *upConn) bool {
	hc.upc.Store(uc)
	if hc.gone.Load() {
		hc.upc.CompareAndSwap(uc, nil)
		return false
	}
	return true
}

// disown ends that; false if uc was closed meanwhile (abort, closeAll).
func (hc *h1Conn) disown(uc *upConn) bool { return hc.upc.CompareAndSwap(uc, nil) }

// close ends the connection.
func (hc *h1Conn) close() {
	hc.e.forget(hc)
	hc.state.Store(connClosed)
	if (hc.linger || hc.unread) && !hc.gone.Load() {
		httpwire.LingerClose(hc.c, lingerTime, lingerBytes)
	} else {
		hc.c.Close()
	}
	hc.release()
}

// release gives the buffers back.
func (hc *h1Conn) release() {
	hc.br.Reset(nil)
	readerPool.Put(hc.br)
	hc.bw.Reset(nil)
	writerPool.Put(hc.bw)
	hc.br, hc.bw = nil, nil
	if cap(hc.big) > 64<<10 {
		hc.big = nil
	}
}

// setReadDeadline and setWriteDeadline keep a connection's deadline within
// [want, want+tol] (unix ns), moving it only when it falls outside: under
// steady traffic a connection's deadline moves once per tol instead of once
// per request (each move costs a runtime timer update). *set remembers the
// deadline set.
func setReadDeadline(c net.Conn, set *int64, want, tol int64) error {
	if d := *set; d >= want && d <= want+tol {
		return nil
	}
	*set = want + tol
	return c.SetReadDeadline(time.Unix(0, want+tol))
}

func setWriteDeadline(c net.Conn, set *int64, want, tol int64) error {
	if d := *set; d >= want && d <= want+tol {
		return nil
	}
	*set = want + tol
	return c.SetWriteDeadline(time.Unix(0, want+tol))
}

// tolerance is how late a request bounded by timeout may be cut off.
func tolerance(timeout time.Duration) int64 {
	return int64(min(max(timeout/16, time.Millisecond), time.Second))
}

// b2s views b as a string without copying; b must not change while the
// string is in use.
func b2s(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// spinIdleMax is the moving average of requests in flight (×256) under
// which connections busy-poll: 1.5, a single client at a time. Above it the
// CPUs are better left to the sandboxes and the clients.
const spinIdleMax = 384

// noteStart counts a request in and updates the moving average of
// requests in flight (an approximate one: concurrent updates may be lost).
func (e *h1Engine) noteStart() {
	a := e.active.Add(1)
	if e.busyPoll > 0 {
		avg := e.inFlight.Load()
		e.inFlight.Store(avg + (a<<8-avg)/8)
	}
}

// spin busy-polls a socket the caller is about to read from, for at most
// the engine's budget, when the data plane is otherwise idle: on average
// few requests in flight, at most active now (counting the caller's), no
// other connection polling. On a lightly loaded machine it spares the
// wake-up of a sleeping thread (tens of microseconds on a virtual machine)
// when the bytes come; the caller then reads as usual.
func (e *h1Engine) spin(p *poller, active int64) {
	if e.busyPoll <= 0 || p == nil || e.inFlight.Load() > spinIdleMax || e.active.Load() > active ||
		!e.spinning.CompareAndSwap(false, true) {
		return
	}
	p.wait(e.busyPoll)
	e.spinning.Store(false)
}

// poller busy-polls one socket. It is made once per connection, so that
// polling allocates nothing.
type poller struct {
	rc    syscall.RawConn
	end   time.Time
	ready bool
	fn    func(fd uintptr) // p.poll
}

func newPoller(rc syscall.RawConn) *poller {
	if rc == nil {
		return nil
	}
	p := &poller{rc: rc}
	p.fn = p.poll
	return p
}

// wait polls the socket until a read would not block or budget has passed,
// and says whether a read would now return at once.
func (p *poller) wait(budget time.Duration) bool {
	p.end, p.ready = time.Now().Add(budget), false
	if p.rc.Control(p.fn) != nil {
		return true // closed: a read fails at once
	}
	return p.ready
}

func (p *poller) poll(fd uintptr) { p.ready = spinFD(fd, p.end) }
