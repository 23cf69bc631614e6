package dataplane

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
)

func endpoints(loads ...int32) []*endpoint {
	eps := make([]*endpoint, len(loads))
	for i, l := range loads {
		eps[i] = &endpoint{id: string(rune('a' + i))}
		eps[i].inflight.Store(l)
	}
	return eps
}

func TestBalancers(t *testing.T) {
	t.Parallel()
	rr, _ := policyByName(BalancerRoundRobin)
	rnd, _ := policyByName(BalancerRandom)
	least, _ := policyByName(BalancerLeastInFlight)
	p2c, _ := policyByName(BalancerPowerOfTwo)
	for _, tc := range []struct {
		name  string
		pol   policy
		loads []int32
		limit int32
		picks int
		want  []int   // expected picks per endpoint; -1 entry at the end counts "none"
		tol   float64 // relative tolerance for random policies
	}{
		{"rr/even", rr, []int32{0, 0, 0}, 10, 300, []int{100, 100, 100}, 0},
		{"rr/skips full", rr, []int32{10, 0, 0}, 10, 300, []int{0, 200, 100}, 0},
		{"rr/all full", rr, []int32{1, 1}, 1, 10, []int{0, 0, 10}, 0},
		{"rr/none", rr, nil, 1, 5, []int{5}, 0},
		{"random/even", rnd, []int32{0, 0, 0, 0}, 10, 40000, []int{10000, 10000, 10000, 10000}, 0.05},
		{"random/skips full", rnd, []int32{0, 3, 0, 3}, 3, 40000, []int{20000, 0, 20000, 0}, 0.05},
		{"random/all full", rnd, []int32{3, 3}, 3, 10, []int{0, 0, 10}, 0},
		{"least/min", least, []int32{3, 1, 2}, 5, 10, []int{0, 10, 0}, 0},
		{"least/skips full", least, []int32{3, 5, 2}, 5, 10, []int{0, 0, 10}, 0},
		{"least/ties rotate", least, []int32{2, 2, 2}, 5, 300, []int{100, 100, 100}, 0},
		{"least/all full", least, []int32{5, 5}, 5, 10, []int{0, 0, 10}, 0},
		{"p2c/even", p2c, []int32{0, 0, 0, 0}, 10, 40000, []int{10000, 10000, 10000, 10000}, 0.05},
		{"p2c/fewer in flight", p2c, []int32{5, 1}, 10, 100, []int{0, 100}, 0},
		// ep 0 wins whenever drawn (half the pairs); the rest split evenly.
		{"p2c/pairs", p2c, []int32{0, 4, 4, 4}, 10, 60000, []int{30000, 10000, 10000, 10000}, 0.05},
		{"p2c/falls back when both full", p2c, []int32{10, 10, 2}, 10, 100, []int{0, 0, 100}, 0},
		{"p2c/single", p2c, []int32{0}, 1, 10, []int{10}, 0},
		{"p2c/all full", p2c, []int32{1, 1, 1}, 1, 10, []int{0, 0, 0, 10}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eps := endpoints(tc.loads...)
			src := rand.New(rand.NewPCG(1, 2))
			got := make([]int, len(eps)+1)
			for i := 0; i < tc.picks; i++ {
				k := tc.pol.pick(eps, tc.limit, uint64(i), src)
				if k < 0 {
					k = len(eps)
				}
				got[k]++
			}
			if len(tc.want) == len(eps) {
				tc.want = append(tc.want, 0)
			}
			for i := range got {
				if d := math.Abs(float64(got[i] - tc.want[i])); d > tc.tol*float64(tc.picks) {
					t.Fatalf("picks per endpoint (last: none) = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func testRouter(t testing.TB, bal string, queueLimit int) *router {
	t.Helper()
	pol, err := policyByName(bal)
	if err != nil {
		t.Fatal(err)
	}
	return newRouter(pol, queueLimit, discard())
}

func upd(epoch uint64, full bool, fns ...*controlplanev1.FunctionRoute) *controlplanev1.RouteUpdate {
	return &controlplanev1.RouteUpdate{Epoch: epoch, Full: full, Functions: fns}
}

func TestApplyRoutesEpochsAndVersions(t *testing.T) {
	t.Parallel()
	rt := testRouter(t, BalancerRoundRobin, 10)
	deleted := func(name string, v uint64) *controlplanev1.FunctionRoute {
		return &controlplanev1.FunctionRoute{Name: name, Version: v, Deleted: true}
	}
	steps := []struct {
		name  string
		u     *controlplanev1.RouteUpdate
		stale bool
		want  map[string]int // function -> concurrency
	}{
		{"snapshot", upd(5, true, route("f", 3, 2, 0)), false, map[string]int{"f": 2}},
		{"older snapshot", upd(4, true), true, map[string]int{"f": 2}},
		{"incremental, older epoch", upd(4, false, route("f", 9, 9, 0)), true, map[string]int{"f": 2}},
		{"incremental, newer epoch", upd(6, false, route("f", 9, 9, 0)), true, map[string]int{"f": 2}},
		{"older version", upd(5, false, route("f", 2, 9, 0)), false, map[string]int{"f": 2}},
		{"same version", upd(5, false, route("f", 3, 9, 0)), false, map[string]int{"f": 2}},
		{"newer version", upd(5, false, route("f", 4, 4, 0)), false, map[string]int{"f": 4}},
		{"new function", upd(5, false, route("g", 1, 1, 0)), false, map[string]int{"f": 4, "g": 1}},
		{"delete", upd(5, false, deleted("f", 5)), false, map[string]int{"g": 1}},
		{"older than the deletion", upd(5, false, route("f", 4, 4, 0)), false, map[string]int{"g": 1}},
		{"recreated", upd(5, false, route("f", 6, 6, 0)), false, map[string]int{"f": 6, "g": 1}},
		{"snapshot without f", upd(6, true, route("g", 1, 1, 0)), false, map[string]int{"g": 1}},
		{"snapshot installs any version", upd(7, true, route("g", 0, 3, 0), route("h", 0, 1, 0)), false, map[string]int{"g": 3, "h": 1}},
	}
	for _, s := range steps {
		err := rt.applyRoutes(s.u)
		if s.stale != errors.Is(err, ErrStaleEpoch) {
			t.Fatalf("%s: err = %v, stale = %v", s.name, err, s.stale)
		}
		got := map[string]int{}
		for _, f := range rt.functions() {
			got[f.Name] = f.Concurrency
		}
		if len(got) != len(s.want) {
			t.Fatalf("%s: functions %v, want %v", s.name, got, s.want)
		}
		for k, v := range s.want {
			if got[k] != v {
				t.Fatalf("%s: functions %v, want %v", s.name, got, s.want)
			}
		}
	}
	if e := rt.epoch.Load(); e != 7 {
		t.Errorf("epoch %d, want 7", e)
	}
	if s, _ := rt.stats("g"); s.Timeout != DefaultTimeout {
		t.Errorf("timeout_ms 0 gives %v, want %v", s.Timeout, DefaultTimeout)
	}
}

func TestEndpointsKeepCountersAcrossUpdates(t *testing.T) {
	t.Parallel()
	rt := testRouter(t, BalancerRoundRobin, 10)
	rt.applyRoutes(upd(1, true, route("f", 1, 1, 1000, ep("s1", "127.0.0.1:1"))))
	fn, _, _, _ := rt.resolve("f", "/")
	var c call
	rt.begin(fn, &c)
	if err := rt.acquire(context.Background(), &c); err != nil || c.ep.id != "s1" {
		t.Fatalf("acquire: %v", err)
	}
	rt.applyRoutes(upd(1, false, route("f", 2, 1, 1000, ep("s1", "127.0.0.1:1"), ep("s2", "127.0.0.1:2"))))
	s, _ := rt.stats("f")
	if s.Endpoints[0].InFlight != 1 || s.Endpoints[1].InFlight != 0 {
		t.Fatalf("endpoints after update: %+v", s.Endpoints)
	}
	// s1 is full, so the next request goes to s2.
	var c2 call
	rt.begin(fn, &c2)
	if err := rt.acquire(context.Background(), &c2); err != nil || c2.ep.id != "s2" {
		t.Fatalf("second acquire: %v %+v", err, c2.ep)
	}
	rt.end(&c)
	rt.end(&c2)
	// A sandbox whose address changed is a new endpoint.
	rt.applyRoutes(upd(1, false, route("f", 3, 1, 1000, ep("s1", "127.0.0.1:3"))))
	if s, _ := rt.stats("F"); s.Endpoints[0].Address != "127.0.0.1:3" || s.InFlight != 0 {
		t.Fatalf("after address change: %+v", s)
	}
}

func TestQueueFIFO(t *testing.T) {
	t.Parallel()
	rt := testRouter(t, BalancerRoundRobin, 10)
	rt.applyRoutes(upd(1, true, route("f", 1, 1, 10000, ep("s1", "127.0.0.1:1"))))
	fn := rt.table.get("f")
	var holder call
	rt.begin(fn, &holder)
	if err := rt.acquire(context.Background(), &holder); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := 1; i <= 3; i++ {
		wg.Go(func() {
			var c call
			rt.begin(fn, &c)
			defer rt.end(&c)
			if err := rt.acquire(context.Background(), &c); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
		})
		for fn.queued.Load() != int32(i) {
			time.Sleep(time.Millisecond)
		}
	}
	if !fn.scaleDirty.Load() {
		t.Error("no scale request queued")
	}
	rt.end(&holder)
	wg.Wait()
	if len(order) != 3 || order[0] != 1 || order[1] != 2 || order[2] != 3 {
		t.Errorf("served in order %v, want [1 2 3]", order)
	}
	if fn.queued.Load() != 0 || fn.load.level() != 0 || fn.state.Load().eps[0].inflight.Load() != 0 {
		t.Errorf("counters not back to zero")
	}
}

func TestNewEndpointServesWaiters(t *testing.T) {
	t.Parallel()
	rt := testRouter(t, BalancerLeastInFlight, 10)
	rt.applyRoutes(upd(1, true, route("f", 1, 2, 10000)))
	fn := rt.table.get("f")
	results := make(chan *call, 3)
	for i := 0; i < 3; i++ {
		go func() {
			c := new(call)
			rt.begin(fn, c)
			if err := rt.acquire(context.Background(), c); err != nil {
				t.Error(err)
			}
			results <- c
		}()
	}
	for fn.queued.Load() != 3 {
		time.Sleep(time.Millisecond)
	}
	rt.applyRoutes(upd(1, false, route("f", 2, 2, 10000, ep("s1", "127.0.0.1:1"), ep("s2", "127.0.0.1:2"))))
	for i := 0; i < 3; i++ {
		c := <-results
		if !c.queued || !c.cold {
			t.Errorf("waiter served by a new endpoint: queued %v cold %v", c.queued, c.cold)
		}
		rt.end(c)
	}
}

func TestLoadMeter(t *testing.T) {
	t.Parallel()
	for _, base := range []int64{0, 1 << 45, math.MaxInt64 / 2} { // late clocks make the sum wrap
		var m loadMeter
		rs := reportState{t0: base, l0: 0}
		// level: 1 from 0, 2 from 10, 1 from 30, 0 from 35; sample at 40.
		m.arrive(base + 0)
		m.arrive(base + 10)
		m.depart(base + 30)
		m.depart(base + 35)
		level, area, arrivals := m.sample(&rs, base+40)
		if level != 0 || area != 35+20 || arrivals != 2 {
			t.Errorf("base %d: level %d area %d arrivals %d, want 0 55 2", base, level, area, arrivals)
		}
		// One request held across the next interval.
		m.arrive(base + 50)
		level, area, arrivals = m.sample(&rs, base+60)
		if level != 1 || area != 10 || arrivals != 1 {
			t.Errorf("base %d: level %d area %d arrivals %d, want 1 10 1", base, level, area, arrivals)
		}
		level, area, arrivals = m.sample(&rs, base+160)
		if level != 1 || area != 100 || arrivals != 0 {
			t.Errorf("base %d: level %d area %d arrivals %d, want 1 100 0", base, level, area, arrivals)
		}
	}
}

func TestReporterActiveSet(t *testing.T) {
	t.Parallel()
	rt := testRouter(t, BalancerRoundRobin, 10)
	rt.applyRoutes(upd(1, true, route("f", 1, 1, 1000, ep("s1", "127.0.0.1:1")), route("idle", 1, 1, 1000)))
	fn := rt.table.get("f")
	rep := &reporter{rt: rt}
	rep.reset(0)
	var c call
	rt.begin(fn, &c)
	rt.acquire(context.Background(), &c)
	now := rt.micros(time.Now())
	loads, _ := rep.collect(now)
	if len(loads) != 1 || loads[0].Function != "f" || loads[0].InFlight != 1 || loads[0].Arrivals != 1 {
		t.Fatalf("first report: %v", loads)
	}
	time.Sleep(2 * time.Millisecond)
	rt.end(&c)
	loads, _ = rep.collect(now + 100000)
	if len(loads) != 1 || loads[0].InFlight != 0 || loads[0].Concurrency == 0 {
		t.Fatalf("report after it finished: %v", loads)
	}
	loads, _ = rep.collect(now + 200000)
	if len(loads) != 1 || loads[0].Concurrency != 0 || loads[0].Arrivals != 0 {
		t.Fatalf("zero report: %v", loads)
	}
	if loads, _ = rep.collect(now + 300000); len(loads) != 0 || fn.reporting.Load() || len(rt.active.list) != 0 {
		t.Fatalf("after the zero report: %v, active %d", loads, len(rt.active.list))
	}
	rt.begin(fn, &c)
	rt.end(&c)
	if loads, _ = rep.collect(now + 400000); len(loads) != 1 || loads[0].Arrivals != 1 {
		t.Fatalf("back in the active set: %v", loads)
	}
}

func TestWarmPathDoesNotAllocate(t *testing.T) {
	rt := testRouter(t, BalancerRoundRobin, 10)
	rt.applyRoutes(upd(1, true, route("f", 1, 4, 1000, ep("s1", "a:1"), ep("s2", "a:2"))))
	ctx := context.Background()
	for _, host := range []string{"f", "F:8080"} {
		allocs := testing.AllocsPerRun(1000, func() {
			fn, _, _, _ := rt.resolve(host, "/")
			var c call
			rt.begin(fn, &c)
			if err := rt.acquire(ctx, &c); err != nil {
				t.Fatal(err)
			}
			rt.end(&c)
		})
		if allocs != 0 {
			t.Errorf("host %q: %v allocs per request, want 0", host, allocs)
		}
	}
}
