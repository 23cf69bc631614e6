package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

var allIATs = []IAT{Exponential, Uniform, Equidistant}

func TestParseIAT(t *testing.T) {
	for _, d := range allIATs {
		if got, err := ParseIAT(d.String()); err != nil || got != d {
			t.Errorf("ParseIAT(%q) = %v, %v", d, got, err)
		}
	}
	if _, err := ParseIAT("poisson"); err == nil {
		t.Error("ParseIAT(poisson): no error")
	}
}

func TestArrivalsCountExactAndInSpan(t *testing.T) {
	t.Parallel()
	for _, d := range allIATs {
		for _, n := range []int{0, 1, 2, 7, 60, 1000, 5030} {
			rng := rand.New(rand.NewPCG(1, uint64(n)))
			got := Arrivals(rng, d, n, time.Minute)
			if len(got) != n {
				t.Fatalf("%s n=%d: %d arrivals", d, n, len(got))
			}
			if !slices.IsSorted(got) {
				t.Fatalf("%s n=%d: not sorted", d, n)
			}
			for _, at := range got {
				if at < 0 || at >= time.Minute {
					t.Fatalf("%s n=%d: arrival %v outside [0, 1m)", d, n, at)
				}
			}
		}
	}
}

func TestArrivalsEquidistantGapsEqual(t *testing.T) {
	got := Arrivals(rand.New(rand.NewPCG(3, 4)), Equidistant, 6, time.Minute)
	for i := 1; i < len(got); i++ {
		if gap := got[i] - got[i-1]; (gap - 10*time.Second).Abs() > time.Microsecond {
			t.Fatalf("gap %d = %v, want 10s (arrivals %v)", i, gap, got)
		}
	}
	// The circle closes: the last gap runs round to the first arrival.
	if gap := got[0] + time.Minute - got[5]; (gap - 10*time.Second).Abs() > time.Microsecond {
		t.Fatalf("wrap-around gap %v, want 10s", gap)
	}
}

func TestArrivalsExponentialLooksPoisson(t *testing.T) {
	// Conditioned on n, a Poisson process's arrivals are uniform over the
	// span: about a quarter fall in each quarter minute.
	got := Arrivals(rand.New(rand.NewPCG(9, 9)), Exponential, 40000, time.Minute)
	var q [4]int
	for _, at := range got {
		q[at/(15*time.Second)]++
	}
	for i, n := range q {
		if math.Abs(float64(n)-10000) > 500 {
			t.Errorf("quarter %d holds %d of 40000 arrivals", i, n)
		}
	}
}

// collect reads a whole schedule.
func collect(s Schedule) []Invocation {
	var out []Invocation
	for inv := range s.All() {
		out = append(out, inv)
	}
	return out
}

func TestTraceScheduleCountsPerMinuteExact(t *testing.T) {
	t.Parallel()
	tr, err := ReadTrace(traceDir(t, "azure_100"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range allIATs {
		s, err := NewTraceSchedule(tr, TraceOptions{WarmupMinutes: 2, Minutes: 8, IAT: d, Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][]int{}
		var prev time.Duration
		n, warm := 0, 0
		for inv := range s.All() {
			if inv.At < prev {
				t.Fatalf("%s: invocations out of order", d)
			}
			prev = inv.At
			if got[inv.Function] == nil {
				got[inv.Function] = make([]int, 10)
			}
			got[inv.Function][inv.At/time.Minute]++
			n++
			if inv.Warmup != (inv.At < 2*time.Minute) {
				t.Fatalf("%s: invocation at %v warm-up %v", d, inv.At, inv.Warmup)
			}
			if inv.Warmup {
				warm++
			}
		}
		want, wantWarm := 0, 0
		for _, f := range tr.Functions {
			for m := range 10 {
				if c := got[f.Name]; (c == nil && f.PerMinute[m] != 0) || (c != nil && c[m] != f.PerMinute[m]) {
					t.Fatalf("%s: %s minute %d: %v sent, trace says %d", d, f.Name, m, c, f.PerMinute[m])
				}
				want += f.PerMinute[m]
				if m < 2 {
					wantWarm += f.PerMinute[m]
				}
			}
		}
		if n != want || s.Planned() != want || warm != wantWarm {
			t.Errorf("%s: %d yielded (%d warm-up), %d planned; want %d (%d)", d, n, warm, s.Planned(), want, wantWarm)
		}
		if s.Length() != 10*time.Minute {
			t.Errorf("length %v", s.Length())
		}
	}
}

func TestTraceScheduleSeeded(t *testing.T) {
	t.Parallel()
	tr := parseSynth(t)
	plan := func(seed uint64, d IAT) []Invocation {
		s, err := NewTraceSchedule(tr, TraceOptions{IAT: d, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		return collect(s)
	}
	for _, d := range allIATs {
		a, b, c := plan(42, d), plan(42, d), plan(43, d)
		if len(a) != 11 || !slices.Equal(a, b) {
			t.Fatalf("%s: same seed, different plans:\n%v\n%v", d, a, b)
		}
		if slices.Equal(a, c) {
			t.Fatalf("%s: seeds 42 and 43 gave the same plan", d)
		}
		// Minute by minute equals the whole.
		s, _ := NewTraceSchedule(tr, TraceOptions{IAT: d, Seed: 42})
		var byMinute []Invocation
		for m := range 3 {
			byMinute = append(byMinute, s.Minute(m)...)
		}
		if !slices.Equal(a, byMinute) {
			t.Fatalf("%s: Minute() differs from All()", d)
		}
	}
}

func TestTraceScheduleSamplesWithinPercentiles(t *testing.T) {
	tr := parseSynth(t)
	s, err := NewTraceSchedule(tr, TraceOptions{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	for inv := range s.All() {
		switch inv.Function {
		case "trace-0-aaaaaaaa": // durations 1..9 ms, memory 90..120
			if inv.Exec < time.Millisecond || inv.Exec > 9*time.Millisecond || inv.MemoryMiB < 90 || inv.MemoryMiB > 120 {
				t.Errorf("%+v outside the percentiles", inv)
			}
		case "trace-1-bbbb": // durations 0..200 ms (clamped up to 1 ms), memory 9..12
			if inv.Exec < MinExec || inv.Exec > 200*time.Millisecond || inv.MemoryMiB < 9 || inv.MemoryMiB > 12 {
				t.Errorf("%+v outside the percentiles", inv)
			}
		default:
			t.Errorf("unexpected function %s", inv.Function)
		}
	}
	if fns := s.Functions(); len(fns) != 2 {
		t.Errorf("%d functions invoked, want 2", len(fns))
	}
}

func TestTraceScheduleOptions(t *testing.T) {
	tr := parseSynth(t) // 3 minutes
	for _, o := range []TraceOptions{{WarmupMinutes: 3}, {Minutes: 4}, {WarmupMinutes: 2, Minutes: 2}, {Minutes: -1}} {
		if _, err := NewTraceSchedule(tr, o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	s, err := NewTraceSchedule(tr, TraceOptions{WarmupMinutes: 1})
	if err != nil || s.Options().Minutes != 2 {
		t.Fatalf("warm-up 1 of 3: %v, minutes %d", err, s.Options().Minutes)
	}
	s, _ = NewTraceSchedule(tr, TraceOptions{Minutes: 1})
	if fns := s.Functions(); len(fns) != 2 || s.Planned() != 4 {
		t.Errorf("minute 0: %d functions, %d planned; want 2, 4", len(fns), s.Planned())
	}
}

func TestSampleBetween(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	d := DurationStats{P0: 10, P1: 10, P25: 20, P50: 30, P75: 40, P99: 50, P100: 50}
	var below30 int
	for range 10000 {
		v := d.Sample(rng)
		if v < 10*time.Millisecond || v > 50*time.Millisecond {
			t.Fatalf("sample %v outside [10ms, 50ms]", v)
		}
		if v < 30*time.Millisecond {
			below30++
		}
	}
	if below30 < 4700 || below30 > 5300 {
		t.Errorf("%d of 10000 below the median", below30)
	}
	if got := (DurationStats{P0: 1e9, P100: 1e9}).Sample(rng); got != MaxExec {
		t.Errorf("huge durations give %v, want %v", got, MaxExec)
	}
	// Percentiles out of order cannot give values below an earlier one.
	if got := (DurationStats{P0: 5, P1: 5, P25: 5, P50: 1, P75: 1, P99: 1, P100: 1}).Sample(rng); got != 5*time.Millisecond {
		t.Errorf("non-monotone percentiles give %v, want 5ms", got)
	}
	if got := (MemoryStats{}).Sample(rng); got != 1 {
		t.Errorf("zero memory gives %d MiB, want 1", got)
	}
}

func TestRateSchedule(t *testing.T) {
	s := &RateSchedule{Rate: 4, Duration: 2500 * time.Millisecond, Functions: []string{"a", "b", "c"}, Exec: time.Millisecond}
	got := collect(s)
	if s.Planned() != 10 || len(got) != 10 {
		t.Fatalf("planned %d, yielded %d; want 10", s.Planned(), len(got))
	}
	for k, inv := range got {
		if inv.At != time.Duration(k)*250*time.Millisecond || inv.Function != s.Functions[k%3] || inv.Exec != time.Millisecond {
			t.Errorf("invocation %d = %+v", k, inv)
		}
	}
	if n := (&RateSchedule{Rate: 1000, Duration: time.Second, Functions: []string{"a"}}).Planned(); n != 1000 {
		t.Errorf("1000/s for 1s plans %d", n)
	}
	if pps := PlannedPerSecond(s); !slices.Equal(pps, []int{4, 4, 2}) {
		t.Errorf("planned per second %v, want [4 4 2]", pps)
	}
}
