package dataplane

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
)

// ErrStaleEpoch is returned by ApplyRoutes for an update it dropped because
// of its epoch.
var ErrStaleEpoch = errors.New("stale route update")

// DefaultTimeout bounds a request when its route says timeout_ms 0.
const DefaultTimeout = 5 * time.Minute

// applyRoutes applies one RouteUpdate; see DataPlane.ApplyRoutes for the
// rules.
func (rt *router) applyRoutes(u *controlplanev1.RouteUpdate) error {
	rt.wmu.Lock()
	defer rt.wmu.Unlock()
	cur := rt.epoch.Load()
	switch {
	case u.GetEpoch() < cur:
		return fmt.Errorf("%w: epoch %d, session holds %d", ErrStaleEpoch, u.GetEpoch(), cur)
	case !u.GetFull() && u.GetEpoch() != cur:
		return fmt.Errorf("%w: incremental update for epoch %d, session holds %d", ErrStaleEpoch, u.GetEpoch(), cur)
	}
	now := time.Now()
	txn := tableTxn{t: &rt.table}
	var changed, removed []*function
	if u.GetFull() {
		clear(rt.tombstones)
		listed := make(map[string]struct{}, len(u.GetFunctions()))
		for _, fr := range u.GetFunctions() {
			if fr.GetDeleted() {
				continue // absent, as far as a snapshot goes
			}
			listed[fr.GetName()] = struct{}{}
			changed = append(changed, rt.upsert(&txn, fr, now))
		}
		rt.table.each(func(fn *function) {
			if _, ok := listed[fn.name]; !ok {
				txn.del(fn.name)
				removed = append(removed, fn)
			}
		})
	} else {
		for _, fr := range u.GetFunctions() {
			name := fr.GetName()
			fn := txn.get(name)
			held, known := rt.tombstones[name]
			if fn != nil {
				held, known = fn.state.Load().version, true
			}
			if known && fr.GetVersion() <= held {
				continue // older than (or the same as) what we hold
			}
			if fr.GetDeleted() {
				rt.tombstones[name] = fr.GetVersion()
				if fn != nil {
					txn.del(name)
					removed = append(removed, fn)
				}
				continue
			}
			delete(rt.tombstones, name)
			changed = append(changed, rt.upsert(&txn, fr, now))
		}
	}
	txn.commit()
	if u.GetFull() {
		// After the table: whoever sees the new epoch sees its routes.
		rt.epoch.Store(u.GetEpoch())
	}
	for _, fn := range removed {
		rt.retire(fn)
	}
	for _, fn := range changed {
		rt.settle(fn)
	}
	return nil
}

// upsert installs fr's route, creating the function if it is new. Endpoints
// that stay (same sandbox id and address) keep their identity and in-flight
// counters.
func (rt *router) upsert(txn *tableTxn, fr *controlplanev1.FunctionRoute, now time.Time) *function {
	fn := txn.get(fr.GetName())
	if fn == nil {
		fn = newFunction(fr.GetName())
		fn.state.Store(newRouteState(fr, nil, nil, now))
		txn.put(fn)
		return fn
	}
	old := fn.state.Load()
	fn.state.Store(newRouteState(fr, old.eps, old.dead, now))
	return fn
}

// deadTTL is how long a sandbox the data plane found dead stays out of its
// routing while the control plane still lists it: long enough for the
// worker's report (or its missed heartbeats) to reach the control plane.
const deadTTL = 5 * time.Second

func newRouteState(fr *controlplanev1.FunctionRoute, old []*endpoint, dead []deadMark, now time.Time) *routeState {
	st := &routeState{
		version:     fr.GetVersion(),
		generation:  fr.GetGeneration(),
		concurrency: max(fr.GetConcurrency(), 1),
		timeout:     time.Duration(fr.GetTimeoutMs()) * time.Millisecond,
		err:         fr.GetError(),
		retry:       fr.GetRetry(),
	}
	if st.timeout <= 0 {
		st.timeout = DefaultTimeout
	}
	var withheld []*endpoint // by st.dead's index: what the last route listed
	for _, d := range dead {
		if now.Before(d.until) {
			st.dead = append(st.dead, deadMark{id: d.id, until: d.until}) // ep: if this route lists it
			withheld = append(withheld, d.ep)
		}
	}
	var byID map[string]*endpoint
	if len(old) > 8 {
		byID = make(map[string]*endpoint, len(old))
		for _, ep := range old {
			byID[ep.id] = ep
		}
	}
	find := func(id string) *endpoint {
		if byID != nil {
			return byID[id]
		}
		for _, ep := range old {
			if ep.id == id {
				return ep
			}
		}
		return nil
	}
	st.eps = make([]*endpoint, 0, len(fr.GetEndpoints()))
	for _, e := range fr.GetEndpoints() {
		ep := find(e.GetSandboxId())
		d := slices.IndexFunc(st.dead, func(m deadMark) bool { return m.id == e.GetSandboxId() })
		if d >= 0 {
			ep = withheld[d]
		}
		if ep == nil || ep.addr != e.GetAddress() {
			ep = &endpoint{
				id:           e.GetSandboxId(),
				addr:         e.GetAddress(),
				worker:       e.GetWorkerId(),
				createMicros: e.GetCreateMicros(),
				added:        now,
			}
		}
		if d >= 0 {
			st.dead[d].ep = ep // withheld until the mark expires
			continue
		}
		st.eps = append(st.eps, ep)
	}
	return st
}

// evict takes ep out of fn's routing because it was found dead: a dial was
// refused, or a fresh connection dropped with nothing answered. The control
// plane learns of the death from the worker (or its silence) and sends a
// route without it; until then, for deadTTL at most, this data plane stops
// sending requests there. Requests holding a slot on ep finish as they can.
func (rt *router) evict(fn *function, ep *endpoint) {
	rt.wmu.Lock()
	st := fn.state.Load()
	i := slices.Index(st.eps, ep)
	if i < 0 {
		rt.wmu.Unlock()
		return
	}
	next := *st
	next.eps = slices.Delete(slices.Clone(st.eps), i, i+1)
	next.dead = append(slices.Clone(st.dead), deadMark{id: ep.id, until: time.Now().Add(rt.deadTTL), ep: ep})
	fn.state.Store(&next)
	rt.wmu.Unlock()
	time.AfterFunc(rt.deadTTL, func() { rt.revive(fn, ep.id) })
	rt.log.Warn("sandbox unreachable: taken out of routing until the control plane confirms",
		"function", fn.name, "sandbox", ep.id, "address", ep.addr, "worker", ep.worker)
}

// revive ends the mark of sandbox id once it has expired: if the control
// plane still lists the sandbox, it was alive after all (a request that
// dropped its connection, a refusal that passed), and it serves again.
func (rt *router) revive(fn *function, id string) {
	rt.wmu.Lock()
	st := fn.state.Load()
	i := slices.IndexFunc(st.dead, func(d deadMark) bool { return d.id == id })
	if i < 0 || time.Now().Before(st.dead[i].until) { // gone with an update, or marked again
		rt.wmu.Unlock()
		return
	}
	next := *st
	ep := st.dead[i].ep
	next.dead = slices.Delete(slices.Clone(st.dead), i, i+1)
	if ep != nil && rt.table.get(fn.name) == fn { // not deleted since
		next.eps = append(slices.Clone(st.eps), ep)
	}
	fn.state.Store(&next)
	rt.wmu.Unlock()
	if ep != nil {
		rt.log.Info("sandbox back in routing: the control plane still lists it", "function", fn.name, "sandbox", id)
		rt.settle(fn)
	}
}

// settle serves or fails fn's waiters after its route changed.
func (rt *router) settle(fn *function) {
	fn.mu.Lock()
	if st := fn.state.Load(); len(st.eps) == 0 && st.err != "" {
		rt.failLocked(fn, errStartFailed(fn.name, st.err))
	} else {
		rt.dispatchLocked(fn)
	}
	fn.mu.Unlock()
}

// retire ends a deleted function (already out of the table): its waiters,
// and requests that looked it up just before, get 404. Requests in flight
// finish.
func (rt *router) retire(fn *function) {
	st := *fn.state.Load()
	st.eps = nil
	fn.state.Store(&st)
	fn.mu.Lock()
	fn.gone = errDeleted(fn.name)
	rt.failLocked(fn, fn.gone)
	fn.mu.Unlock()
}

// FunctionStats is a snapshot of one function in the routing table.
type FunctionStats struct {
	Name        string
	Version     uint64
	Generation  uint64
	Concurrency int           // slots per endpoint
	Timeout     time.Duration // bound on a request's life
	Error       string        // why its sandboxes fail to start, if they do
	InFlight    int           // requests in the data plane not waiting (forwarding)
	Queued      int           // requests waiting for a slot
	Endpoints   []EndpointStats
}

// EndpointStats is a snapshot of one endpoint.
type EndpointStats struct {
	SandboxID    string
	Address      string
	WorkerID     string
	CreateMicros int64
	InFlight     int
}

func (fn *function) stats() FunctionStats {
	st := fn.state.Load()
	level := int(fn.load.level())
	queued := int(fn.queued.Load())
	s := FunctionStats{
		Name:        fn.name,
		Version:     st.version,
		Generation:  st.generation,
		Concurrency: int(st.concurrency),
		Timeout:     st.timeout,
		Error:       st.err,
		InFlight:    max(level-queued, 0),
		Queued:      queued,
		Endpoints:   make([]EndpointStats, 0, len(st.eps)),
	}
	for _, ep := range st.eps {
		s.Endpoints = append(s.Endpoints, EndpointStats{
			SandboxID:    ep.id,
			Address:      ep.addr,
			WorkerID:     ep.worker,
			CreateMicros: ep.createMicros,
			InFlight:     int(ep.inflight.Load()),
		})
	}
	return s
}

func (rt *router) functions() []FunctionStats {
	var out []FunctionStats
	rt.table.each(func(fn *function) { out = append(out, fn.stats()) })
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (rt *router) stats(name string) (FunctionStats, bool) {
	fn := rt.table.lookup(name)
	if fn == nil {
		return FunctionStats{}, false
	}
	return fn.stats(), true
}
