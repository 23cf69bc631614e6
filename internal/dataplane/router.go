package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
)

// router is the data plane's core, independent of any HTTP engine: it
// resolves a request to a function, takes a slot on one of its endpoints
// (waiting in the function's queue when none is free) and gives it back. An
// engine drives one request through it as
//
//	fn, name, rest, viaPath := rt.resolve(host, path)
//	var c call
//	rt.begin(fn, &c)        // counts the arrival
//	defer rt.end(&c)        // frees the slot, counts the departure
//	err := rt.acquire(ctx, &c)
//	... forward to c.ep.addr ...
//
// and maps a *reqError to its own wire format. Nothing here imports net/http.
//
// Lock order: router.wmu → function.mu → scaleSet.mu, activeSet.mu. The
// warm path takes no lock at all: a table lookup, an atomic pointer load, a
// CAS on an endpoint's counter, and atomic adds on the function's load meter.
type router struct {
	table      table
	policy     policy
	queueLimit int
	base       time.Time // origin of the load meters' clock (monotonic)
	log        *slog.Logger
	cut        atomic.Bool // shutdown's grace is over: nothing waits any more

	epoch atomic.Uint64 // of the route updates applied; grows only

	wmu        sync.Mutex        // serialises route updates
	tombstones map[string]uint64 // functions deleted in this epoch -> version (wmu)
	deadTTL    time.Duration     // how long evict keeps a sandbox out (tests shorten it)

	scale  scaleSet
	active activeSet
}

func newRouter(pol policy, queueLimit int, log *slog.Logger) *router {
	return &router{
		policy:     pol,
		queueLimit: queueLimit,
		base:       time.Now(),
		log:        log,
		tombstones: make(map[string]uint64),
		scale:      scaleSet{kick: make(chan struct{}, 1)},
		deadTTL:    deadTTL,
	}
}

// reqError is a request the data plane answers itself. status is an HTTP
// status code (the engine's business how to send it), body the whole body.
type reqError struct {
	status int
	body   string
}

func (e *reqError) Error() string { return strings.TrimSuffix(e.body, "\n") }

// statusClientClosed marks a request whose client went away: nothing is
// sent (nginx's 499).
const statusClientClosed = 499

var errClientGone = &reqError{statusClientClosed, "client closed request\n"}

func errNotFound(name string) *reqError {
	return &reqError{404, fmt.Sprintf("function %q not found\n", name)}
}

func errDeleted(name string) *reqError {
	return &reqError{404, fmt.Sprintf("function %q deleted\n", name)}
}

func errQueueFull(name string, n int) *reqError {
	return &reqError{503, fmt.Sprintf("function %q: queue full (%d waiting)\n", name, n)}
}

func errStartFailed(name, reason string) *reqError {
	return &reqError{502, fmt.Sprintf("function %q failed to start: %s\n", name, reason)}
}

func errNoSandbox(name string, d time.Duration) *reqError {
	return &reqError{504, fmt.Sprintf("function %q: waited %s for a sandbox, none became available\n", name, d)}
}

func errShuttingDown(name string) *reqError {
	return &reqError{503, fmt.Sprintf("function %q: data plane shutting down\n", name)}
}

// waitError says why a wait bounded by ctx ended.
func waitError(ctx context.Context, name string, timeout time.Duration) *reqError {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errNoSandbox(name, timeout)
	}
	return errClientGone
}

// hostName strips the port from a Host header value.
func hostName(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host[i:], ']') < 0 {
		return host[:i]
	}
	return host
}

// resolve finds the function a request is for: Host NAME (port ignored,
// case folded) when NAME is a known function, else path /fn/NAME/rest. It
// returns the function or nil, the name it looked up last (for a 404), and,
// for path routing, the path to forward ("/" when nothing follows the name).
func (rt *router) resolve(host, path string) (fn *function, name, rest string, viaPath bool) {
	name = hostName(host)
	if name != "" {
		if fn = rt.table.lookup(name); fn != nil {
			return fn, name, "", false
		}
	}
	if p, ok := strings.CutPrefix(path, "/fn/"); ok {
		n, r := p, "/"
		if i := strings.IndexByte(p, '/'); i >= 0 {
			n, r = p[:i], p[i:]
		}
		return rt.table.lookup(n), n, r, true
	}
	return nil, name, "", false
}

// call is one request's passage through the router.
type call struct {
	fn      *function
	ep      *endpoint     // the slot held, if any
	arrived time.Time     // when begin was called
	timeout time.Duration // the function's, when acquire was called
	queued  bool          // went through the wait queue
	cold    bool          // served by an endpoint that appeared after arrival
	retry   controlplanev1.RetryPolicy
	resent  int // times sent again after a sandbox died under it
}

// maxResends bounds sending one request to another sandbox after the one
// it was sent to died: a request that kills every sandbox it reaches must
// not take down the whole function.
const maxResends = 2

// The resend policy, the same in both engines:
//   - a request whose dial failed (nothing sent) goes to another sandbox, and
//     the one that refused leaves routing at once;
//   - a request a sandbox took and dropped without answering goes to
//     another only if mayResend allows it and its body was held (none, or
//     at most maxHeldBody read whole before routing); a fresh connection
//     dropped takes the sandbox out of routing;
//   - at most maxResends times, and never past the function's timeout.
// A kept-alive connection that fails may only have been closed by its
// sandbox: the HTTP/1.1 engine then tries fresh connections to the same
// sandbox (maxRetries, then 502); net/http does the same for the h2c
// engine where it can, and what it gives up on moves to another slot
// without taking the sandbox out of routing. A sandbox taken out of
// routing comes back after deadTTL if the control plane still lists it.

// maxHeldBody is the largest request body the engines read whole before
// routing: before the request counts as load or takes a slot, within the
// function's timeout (else 408), so that a client slow to send it keeps no
// sandbox busy, and so that the request can be sent again if the sandbox
// dies under it (when the retry policy allows). Larger bodies (and those of
// unknown length) are streamed while the request holds its slot and are
// never resent.
const maxHeldBody = 64 << 10

// mayResend says whether a request that reached a sandbox which died
// without answering may go to another, by the function's retry policy.
// (A request that was never sent, because the dial failed, always may.)
func mayResend(policy controlplanev1.RetryPolicy, idempotent bool) bool {
	switch policy {
	case controlplanev1.RetryPolicy_RETRY_POLICY_ALWAYS:
		return true
	case controlplanev1.RetryPolicy_RETRY_POLICY_NEVER:
		return false
	}
	return idempotent
}

// safeMethod says whether a request with method m may be sent twice by
// itself (RFC 9110 §9.2.2; PUT and DELETE are idempotent too, but a
// function may not implement them so). An Idempotency-Key header makes any
// request so; both engines apply that.
func safeMethod(m string) bool {
	switch m {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// reroute moves c off its endpoint, which was found dead, and takes a slot
// on another, waiting for one (bounded by ctx) like a new request: the
// control plane replaces the sandbox if none is left. ep is taken out of
// this data plane's routing at once.
func (rt *router) reroute(ctx context.Context, c *call) *reqError {
	if rt.cut.Load() {
		return errShuttingDown(c.fn.name) // the failure was the cut-off's
	}
	rt.evict(c.fn, c.ep)
	return rt.resend(ctx, c)
}

// resend moves c off its endpoint to another like reroute, without taking
// the endpoint out of routing.
func (rt *router) resend(ctx context.Context, c *call) *reqError {
	dead := c.ep
	c.ep = nil
	rt.release(c.fn, dead)
	c.resent++
	c.cold = false
	return rt.acquire(ctx, c)
}

// micros is the load meters' clock: µs since the router was made.
func (rt *router) micros(t time.Time) int64 { return int64(t.Sub(rt.base) / time.Microsecond) }

// begin counts a request's arrival at fn.
func (rt *router) begin(fn *function, c *call) {
	c.fn = fn
	c.arrived = time.Now()
	fn.load.arrive(rt.micros(c.arrived))
	if !fn.reporting.Load() {
		rt.active.add(fn)
	}
}

// end frees the slot c holds and counts its departure. Call it once per
// begin, whatever happened in between.
func (rt *router) end(c *call) { rt.endAt(c, time.Now()) }

// endAt is end for an engine that has read the clock already.
func (rt *router) endAt(c *call, now time.Time) {
	if c.ep != nil {
		rt.release(c.fn, c.ep)
		c.ep = nil
	}
	c.fn.load.depart(rt.micros(now))
}

// acquire takes a slot for c on one of its function's endpoints, waiting in
// the queue (bounded by ctx) when none is free.
func (rt *router) acquire(ctx context.Context, c *call) *reqError {
	if rt.acquireNow(c) {
		return nil
	}
	return rt.wait(ctx, c)
}

// acquireNow is acquire's fast path, for an engine that makes a context only
// when a request has to wait: it takes a free slot when nobody waits (a
// freed slot belongs to the queue's head, not to whoever arrives next), and
// says whether it did. It sets c.timeout either way.
func (rt *router) acquireNow(c *call) bool {
	fn := c.fn
	st := fn.state.Load()
	c.timeout, c.retry = st.timeout, st.retry
	if fn.queued.Load() == 0 {
		if ep := rt.pick(fn, st); ep != nil {
			c.ep = ep
			return true
		}
	}
	return false
}

// wait queues c and waits for a slot to be handed to it.
//
// The rule for a function whose sandboxes fail to start: while its route
// carries an error and it has no endpoint at all, every waiting request and
// every new one is answered 502 with that error. As soon as an update brings
// an endpoint or clears the error, requests queue again (and a ScaleRequest
// goes out) as usual.
func (rt *router) wait(ctx context.Context, c *call) *reqError {
	fn := c.fn
	fn.mu.Lock()
	if fn.gone != nil {
		err := fn.gone
		fn.mu.Unlock()
		return err
	}
	if rt.cut.Load() {
		fn.mu.Unlock()
		return errShuttingDown(fn.name)
	}
	st := fn.state.Load()
	if len(st.eps) == 0 && st.err != "" {
		fn.mu.Unlock()
		return errStartFailed(fn.name, st.err)
	}
	if fn.q.n >= rt.queueLimit {
		n := fn.q.n
		fn.mu.Unlock()
		return errQueueFull(fn.name, n)
	}
	w := getWaiter()
	fn.q.push(w)
	// Publish the queue length before trying for a slot: a release that
	// decrements a counter after our try reads a non-zero queued and
	// dispatches, so no slot is freed unseen.
	fn.queued.Store(int32(fn.q.n))
	rt.dispatchLocked(fn)
	if w.queued && (fn.scaleMark == 0 || fn.q.n >= 2*fn.scaleMark) {
		// At most one ScaleRequest outstanding per function until the
		// queue empties or doubles.
		fn.scaleMark = fn.q.n
		rt.scale.mark(fn)
	}
	fn.mu.Unlock()
	c.queued = true

	select {
	case res := <-w.ch:
		putWaiter(w)
		return c.granted(res)
	case <-ctx.Done():
	}
	fn.mu.Lock()
	if w.queued {
		fn.q.remove(w)
		fn.queued.Store(int32(fn.q.n))
		if fn.q.n == 0 {
			fn.scaleMark = 0
		}
		fn.mu.Unlock()
		putWaiter(w)
		return waitError(ctx, fn.name, c.timeout)
	}
	fn.mu.Unlock()
	// Served (or failed) while we were giving up: the result is in w.ch.
	res := <-w.ch
	putWaiter(w)
	if res.ep != nil {
		rt.release(fn, res.ep)
	}
	if res.err != nil {
		return res.err
	}
	return waitError(ctx, fn.name, c.timeout)
}

func (c *call) granted(res waitResult) *reqError {
	if res.err != nil {
		return res.err
	}
	c.ep = res.ep
	c.cold = res.ep.added.After(c.arrived)
	return nil
}

// pick takes a slot by the balancing policy, or returns nil when every
// endpoint is full.
func (rt *router) pick(fn *function, st *routeState) *endpoint {
	eps := st.eps
	if len(eps) == 0 {
		return nil
	}
	limit := st.concurrency
	for try := 0; try < 3; try++ {
		var seq uint64
		if rt.policy.usesSeq {
			seq = fn.rr.Add(1) - 1
		}
		i := rt.policy.pick(eps, limit, seq, globalRand{})
		if i < 0 {
			return nil
		}
		if eps[i].tryAcquire(limit) {
			return eps[i]
		}
	}
	// Lost the race for the chosen slot three times: take any free one.
	for _, ep := range eps {
		if ep.tryAcquire(limit) {
			return ep
		}
	}
	return nil
}

// release gives a slot back; if requests wait, the head one gets a slot.
func (rt *router) release(fn *function, ep *endpoint) {
	ep.inflight.Add(-1)
	if fn.queued.Load() != 0 {
		fn.mu.Lock()
		rt.dispatchLocked(fn)
		fn.mu.Unlock()
	}
}

// dispatchLocked hands free slots to waiters, head first. fn.mu is held.
func (rt *router) dispatchLocked(fn *function) {
	for fn.q.head != nil {
		ep := rt.pick(fn, fn.state.Load())
		if ep == nil {
			break
		}
		w := fn.q.pop()
		w.ch <- waitResult{ep: ep}
	}
	fn.queued.Store(int32(fn.q.n))
	if fn.q.n == 0 {
		fn.scaleMark = 0
	}
}

// failLocked answers every waiter with err. fn.mu is held.
func (rt *router) failLocked(fn *function, err *reqError) {
	for w := fn.q.pop(); w != nil; w = fn.q.pop() {
		w.ch <- waitResult{err: err}
	}
	fn.queued.Store(0)
	fn.scaleMark = 0
}

// failAllWaiters answers every waiting request of every function with a 503
// (the data plane is going away).
func (rt *router) failAllWaiters() {
	rt.cut.Store(true)
	rt.table.each(func(fn *function) {
		fn.mu.Lock()
		if fn.q.n > 0 {
			rt.failLocked(fn, errShuttingDown(fn.name))
		}
		fn.mu.Unlock()
	})
}

// scaleSet is the set of functions that need a ScaleRequest sent: the
// request path marks a function (a CAS, and a short lock the first time) and
// the session's sender drains the set, so a request never waits on the
// stream.
type scaleSet struct {
	mu    sync.Mutex
	dirty []*function
	kick  chan struct{} // capacity 1: "the set is not empty"
}

func (s *scaleSet) mark(fn *function) {
	if !fn.scaleDirty.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	s.dirty = append(s.dirty, fn)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// take moves the set into buf and empties it.
func (s *scaleSet) take(buf []*function) []*function {
	s.mu.Lock()
	buf = append(buf[:0], s.dirty...)
	clear(s.dirty)
	s.dirty = s.dirty[:0]
	s.mu.Unlock()
	for _, fn := range buf {
		fn.scaleDirty.Store(false)
	}
	return buf
}

// markWaiting queues a ScaleRequest for every function with waiting
// requests: a new session must hear about them even if the last one did.
func (rt *router) markWaiting() {
	rt.table.each(func(fn *function) {
		if fn.queued.Load() > 0 {
			rt.scale.mark(fn)
		}
	})
}

// workerIDs lists the workers that the table routes to, each once: a new
// control-plane leader waits for them to reconnect before it sends this
// data plane a snapshot (see DataPlaneHello.workers).
func (rt *router) workerIDs() []string {
	seen := map[string]struct{}{}
	var ids []string
	rt.table.each(func(fn *function) {
		for _, ep := range fn.state.Load().eps {
			if _, ok := seen[ep.worker]; !ok && ep.worker != "" {
				seen[ep.worker] = struct{}{}
				ids = append(ids, ep.worker)
			}
		}
	})
	return ids
}
