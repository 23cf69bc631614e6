package dataplane

import (
	"sync"
	"sync/atomic"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
)

// Load accounting for the reports to the control plane.
//
// A function's level is in_flight + queued: the requests for it inside the
// data plane. The report's concurrency is the exact time integral of the
// level over the interval divided by the interval. With events (δ = ±1 at
// time t_e), the integral from T0 to T1 is
//
//	∫ level dt = L1·T1 − L0·T0 − Σ δ·t_e
//
// so the request path only has to keep the level and Σ δ·t_e, and keeps both
// in ONE int64 updated by ONE atomic add per change: the high 40 bits hold
// Σ δ·t_e (t in µs since the router started) and the low 24 bits the level
// (which is never negative and below 2^24). One atomic load gives the
// reporter a consistent pair. The sum wraps, which is harmless: the integral
// is computed modulo 2^40 µs, and the true integral over one interval is far
// below that (2^39 µs·requests is 10,000 requests held for 55 s).

const (
	levelBits = 24
	levelMask = 1<<levelBits - 1
)

type loadMeter struct {
	x        atomic.Int64  // Σ δ·t_µs << levelBits | level
	arrivals atomic.Uint64 // since the last sample
}

func (m *loadMeter) arrive(tus int64) {
	m.arrivals.Add(1)
	m.x.Add(tus<<levelBits + 1)
}

func (m *loadMeter) depart(tus int64) { m.x.Add(-(tus<<levelBits + 1)) }

func (m *loadMeter) level() int64 { return m.x.Load() & levelMask }

// reportState is what the reporter remembers of a function between samples.
type reportState struct {
	l0, t0, w0 int64 // level, time and Σ δ·t at the last sample
	nonZero    bool  // the last report of it was not all zero
	drop       bool  // leaving the active set (removeIdle)
}

// sample returns the level now (t1, µs), the integral of the level since the
// last sample in µs·requests, and the arrivals since then.
func (m *loadMeter) sample(rs *reportState, t1 int64) (level, area int64, arrivals uint64) {
	x := m.x.Load()
	arrivals = m.arrivals.Swap(0)
	level = x & levelMask
	w := x >> levelBits
	area = level*t1 - rs.l0*rs.t0 - (w - rs.w0)
	area = area << levelBits >> levelBits // reduce modulo 2^40, signed
	if area < 0 {
		area = 0
	}
	rs.l0, rs.t0, rs.w0 = level, t1, w
	return level, area, arrivals
}

// activeSet holds the functions the reporter looks at: those with load
// since they were last reported idle. A request adds its function when it is
// not in the set (one atomic load per request otherwise), so thousands of
// idle functions cost the reporter nothing.
type activeSet struct {
	mu   sync.Mutex
	list []*function
}

func (a *activeSet) add(fn *function) {
	if !fn.reporting.CompareAndSwap(false, true) {
		return
	}
	a.mu.Lock()
	a.list = append(a.list, fn)
	a.mu.Unlock()
}

func (a *activeSet) snapshot(buf []*function) []*function {
	a.mu.Lock()
	buf = append(buf[:0], a.list...)
	a.mu.Unlock()
	return buf
}

// reporter turns the meters into LoadReports. One goroutine at a time uses
// it (the session's sender).
type reporter struct {
	rt      *router
	last    int64 // µs of the previous collect (or reset)
	scratch []*function
	idle    []*function
}

// reset starts a new reporting period at t (µs), forgetting what
// accumulated before (while no session was up, say).
func (r *reporter) reset(t int64) {
	r.scratch = r.rt.active.snapshot(r.scratch)
	for _, fn := range r.scratch {
		fn.load.sample(&fn.rep, t)
	}
	r.last = t
}

// collect returns the load of every function that had some since the last
// collect, and once more (all zero) for those whose load dropped to zero;
// those then leave the active set.
func (r *reporter) collect(t int64) (loads []*controlplanev1.FunctionLoad, intervalMicros int64) {
	dt := t - r.last
	if dt <= 0 {
		dt = 1
	}
	r.last = t
	r.scratch = r.rt.active.snapshot(r.scratch)
	r.idle = r.idle[:0]
	for _, fn := range r.scratch {
		level, area, arrivals := fn.load.sample(&fn.rep, t)
		queued := min(int64(fn.queued.Load()), level)
		nonZero := level != 0 || arrivals != 0 || area != 0
		if nonZero || fn.rep.nonZero {
			loads = append(loads, &controlplanev1.FunctionLoad{
				Function:    fn.name,
				InFlight:    int32(level - queued),
				Queued:      int32(queued),
				Arrivals:    arrivals,
				Concurrency: float64(area) / float64(dt),
			})
		}
		fn.rep.nonZero = nonZero
		if !nonZero {
			r.idle = append(r.idle, fn)
		}
	}
	if len(r.idle) > 0 {
		r.removeIdle()
	}
	return loads, dt
}

// removeIdle takes r.idle out of the active set. A request that arrives
// meanwhile either finds its function out of the set and adds it back, or
// found it still in (and so bumped its counters before the flag was
// cleared), and then the check at the end puts it back.
func (r *reporter) removeIdle() {
	a := &r.rt.active
	for _, fn := range r.idle {
		fn.rep.drop = true
	}
	a.mu.Lock()
	keep := a.list[:0]
	for _, fn := range a.list {
		if !fn.rep.drop {
			keep = append(keep, fn)
		}
	}
	clear(a.list[len(keep):])
	a.list = keep
	a.mu.Unlock()
	for _, fn := range r.idle {
		fn.rep.drop = false
		fn.reporting.Store(false)
		if fn.load.arrivals.Load() != 0 || fn.load.level() != 0 {
			a.add(fn)
		}
	}
}
