package loadgen

import (
	"math"
	"testing"
	"time"
)

func TestGeoMean(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{{[]float64{1, 4, 16}, 4}, {[]float64{2, 8}, 4}, {[]float64{3}, 3}, {nil, 0}, {[]float64{1, 1, 1, 1}, 1}} {
		if got := GeoMean(tc.xs); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("GeoMean(%v) = %g, want %g", tc.xs, got, tc.want)
		}
	}
}

func TestLatencyQuantiles(t *testing.T) {
	q := LatencyQuantiles([]time.Duration{4, 1, 3, 2})
	if q.N != 4 || q.Min != 1 || q.Max != 4 || q.P50 != 2 || q.P99 != 4 || q.Mean != 2 {
		t.Errorf("%+v", q)
	}
}

// rec builds a successful record: latency and execution time in ms.
func rec(fn string, start, lat, exec float64) Record {
	d := func(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }
	return Record{Function: fn, Scheduled: d(start), Start: d(start), Latency: d(lat), Exec: d(exec), ExecKnown: true,
		Requested: d(exec), Status: 200, Temp: Warm}
}

func TestSummarize(t *testing.T) {
	recs := []Record{
		rec("a", 0, 20, 10),   // slowdown 2
		rec("a", 100, 80, 10), // 8: a's geometric mean 4
		rec("b", 200, 30, 30), // 1
		rec("b", 300, 30, 30), // 1: b's 1
		rec("c", 400, 90, 10), // 9
		{Function: "a", Start: 500 * time.Millisecond, Scheduled: 500 * time.Millisecond, Latency: 5 * time.Millisecond,
			Status: 503, Err: "http 503"},
		{Function: "a", Start: 600 * time.Millisecond, Scheduled: 600 * time.Millisecond, Latency: time.Millisecond,
			Err: "timeout"},
		{Function: "a", Start: 700 * time.Millisecond, Scheduled: 700 * time.Millisecond, Latency: time.Millisecond,
			Err: "timeout"},
	}
	recs[2].Temp = Cold
	// One cold invocation of a function that reports no execution time.
	recs = append(recs, Record{Function: "d", Start: 800 * time.Millisecond, Scheduled: 800 * time.Millisecond,
		Latency: 200 * time.Millisecond, Status: 200, Temp: Cold})
	// The warm-up: counted in the schedule, nowhere else.
	warm := rec("a", 0, 5000, 1)
	warm.Warmup, warm.Err = true, "timeout"
	recs = append(recs, warm)

	s := Summarize(&Result{Title: "t", OpenLoop: true, Planned: 10, PlannedPerSecond: []int{10}, Records: recs})
	if s.Issued != 10 || s.Measured != 9 || s.Warmup != 1 || s.OK != 6 {
		t.Fatalf("issued %d measured %d warm-up %d ok %d; want 10 9 1 6", s.Issued, s.Measured, s.Warmup, s.OK)
	}
	if len(s.Errors) != 2 || s.Errors["timeout"] != 2 || s.Errors["http 503"] != 1 {
		t.Errorf("errors %v", s.Errors)
	}
	// Window: first measured start 0 to the last answer, d at 800+200 ms.
	if s.Window != time.Second || math.Abs(s.Throughput-6) > 1e-9 {
		t.Errorf("window %v throughput %g; want 1s, 6/s", s.Window, s.Throughput)
	}
	if s.Cold != 2 || math.Abs(s.ColdShare-2.0/9) > 1e-9 {
		t.Errorf("cold %d share %g", s.Cold, s.ColdShare)
	}
	// End to end over the 6 successes: 20 30 30 80 90 200.
	if s.E2E.N != 6 || s.E2E.P50 != 30*time.Millisecond || s.E2E.P99 != 200*time.Millisecond {
		t.Errorf("e2e %+v", s.E2E)
	}
	// Scheduling over the 5 with an execution time: 10 70 0 0 80.
	if s.Sched.N != 5 || s.Sched.P50 != 10*time.Millisecond || s.Sched.Max != 80*time.Millisecond || s.Sched.Min != 0 {
		t.Errorf("scheduling %+v", s.Sched)
	}
	want := map[string]float64{"a": 4, "b": 1, "c": 9}
	if len(s.Slowdown) != 3 {
		t.Fatalf("slowdown %+v", s.Slowdown)
	}
	for _, f := range s.Slowdown {
		if math.Abs(f.GeoMean-want[f.Function]) > 1e-9 {
			t.Errorf("%s slowdown %g, want %g", f.Function, f.GeoMean, want[f.Function])
		}
	}
	if math.Abs(s.SlowdownP50-4) > 1e-9 || math.Abs(s.SlowdownP99-9) > 1e-9 {
		t.Errorf("slowdown across functions p50 %g p99 %g, want 4, 9", s.SlowdownP50, s.SlowdownP99)
	}
	if s.Behind || s.MaxLateness != 0 {
		t.Errorf("behind %v, max lateness %v", s.Behind, s.MaxLateness)
	}
	if got := s.Seconds[0]; got.Planned != 10 || got.Issued != 10 || got.OK != 5 || got.Errors != 3 || got.Cold != 1 {
		t.Errorf("second 0 %+v", got) // d's answer lands in second 1
	}
	if got := s.Seconds[1]; got.OK != 1 || got.Cold != 1 {
		t.Errorf("second 1 %+v", got)
	}
	if got := Slowdowns(recs); len(got) != 5 || got[0] != 1 || got[4] != 9 {
		t.Errorf("per-invocation slowdowns %v", got)
	}
}

func TestSummarizeBehind(t *testing.T) {
	late := rec("a", 0, 1, 1)
	late.Start = 50 * time.Millisecond
	s := Summarize(&Result{OpenLoop: true, Planned: 2, PlannedPerSecond: []int{2}, Records: []Record{late, rec("a", 10, 1, 1)}})
	if !s.Behind || s.MaxLateness != 50*time.Millisecond {
		t.Errorf("behind %v max lateness %v; want true 50ms", s.Behind, s.MaxLateness)
	}
	// Requests never sent count as falling behind too.
	s = Summarize(&Result{OpenLoop: true, Planned: 3, Records: []Record{rec("a", 0, 1, 1)}})
	if !s.Behind {
		t.Error("1 of 3 sent: not behind")
	}
	// A closed loop has no schedule.
	s = Summarize(&Result{Records: []Record{late}})
	if s.Behind || s.MaxLateness != 0 {
		t.Errorf("closed loop: behind %v lateness %v", s.Behind, s.MaxLateness)
	}
}

func TestSlowdownNeedsRequestedWork(t *testing.T) {
	// "empty" invocations ask for nothing: their microseconds of execution
	// give no slowdown.
	r := rec("a", 0, 1, 0.002)
	r.Requested = 0
	s := Summarize(&Result{Records: []Record{r}})
	if len(s.Slowdown) != 0 || s.Sched.N != 1 {
		t.Errorf("slowdown %+v, scheduling n %d", s.Slowdown, s.Sched.N)
	}
}
