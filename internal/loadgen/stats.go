package loadgen

import (
	"math"
	"slices"
	"sort"
	"time"

	"github.com/batonfaas/baton/internal/stats"
)

// GeoMean returns the geometric mean of xs, which must be positive; 0 for
// an empty sample.
func GeoMean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range xs {
		s += math.Log(x)
	}
	return math.Exp(s / float64(len(xs)))
}

// Quantiles describe a sample of latencies.
type Quantiles struct {
	N                             int
	P50, P90, P99, P999, Max, Min time.Duration
	Mean                          time.Duration
}

// LatencyQuantiles sorts d in place and describes it.
func LatencyQuantiles(d []time.Duration) Quantiles {
	if len(d) == 0 {
		return Quantiles{}
	}
	slices.Sort(d)
	var sum float64
	for _, x := range d {
		sum += float64(x)
	}
	return Quantiles{N: len(d), P50: stats.Percentile(d, 50), P90: stats.Percentile(d, 90), P99: stats.Percentile(d, 99),
		P999: stats.Percentile(d, 99.9), Min: d[0], Max: d[len(d)-1], Mean: time.Duration(sum / float64(len(d)))}
}

// Result is one run: what was planned and what every invocation did.
type Result struct {
	Title    string        // what ran, for the summary
	OpenLoop bool          // a schedule (trace, rps) rather than closed-loop clients
	Planned  int           // invocations planned, warm-up included
	Length   time.Duration // the schedule's length, or the closed loop's duration
	Started  time.Time     // wall clock at the start
	// PlannedPerSecond counts the planned invocations in each second of the
	// schedule (open loop only).
	PlannedPerSecond []int
	Records          []Record
}

// PlannedPerSecond counts a schedule's invocations in each second.
func PlannedPerSecond(s Schedule) []int {
	out := make([]int, int(math.Ceil(s.Length().Seconds())))
	for inv := range s.All() {
		i := int(inv.At / time.Second)
		for i >= len(out) {
			out = append(out, 0)
		}
		out[i]++
	}
	return out
}

// FunctionSlowdown is one function's slowdown: the geometric mean over its
// invocations of end-to-end latency / execution time.
type FunctionSlowdown struct {
	Function string
	N        int
	GeoMean  float64
}

// Second is one second of the run.
type Second struct {
	Planned, Issued, OK, Errors, Cold int
}

// Summary is the statistics of a Result. Warm-up invocations count in the
// schedule figures (Issued, lateness, Seconds) but in nothing else.
type Summary struct {
	Title    string
	OpenLoop bool
	Planned  int
	Issued   int // requests sent, warm-up included
	Measured int // invocations answered outside the warm-up
	Warmup   int // invocations answered in the warm-up
	OK       int
	Errors   map[string]int
	// Window runs from the first measured request sent to the last answer.
	Window     time.Duration
	Throughput float64 // successful measured invocations per second of Window
	E2E        Quantiles
	// Sched is end to end minus the reported execution time, over the
	// successful invocations whose function reported one.
	Sched     Quantiles
	Cold      int
	ColdShare float64 // of the measured invocations
	// Slowdown is per function, over the successful invocations that asked
	// for at least MinSlowdownExec and whose function reported its
	// execution time; SlowdownP50 and SlowdownP99 are taken across
	// functions.
	Slowdown                 []FunctionSlowdown
	SlowdownP50, SlowdownP99 float64
	// Lateness is how late requests went out against the schedule.
	Lateness, MaxLateness time.Duration // p99 and max
	Behind                bool          // MaxLateness over BehindThreshold, or requests never sent
	Seconds               []Second
}

// MinSlowdownExec is the shortest requested execution time a slowdown is
// computed for: an invocation asking for no work runs for a few
// microseconds, which would give meaningless ratios.
const MinSlowdownExec = time.Millisecond

// BehindThreshold is the lateness past which a run is said to have fallen
// behind its schedule.
const BehindThreshold = 10 * time.Millisecond

// Summarize computes the statistics of r.
func Summarize(r *Result) *Summary {
	s := &Summary{Title: r.Title, OpenLoop: r.OpenLoop, Planned: r.Planned, Errors: map[string]int{}}
	var e2e, sched, late []time.Duration
	perFn := map[string][]float64{}
	var first, last time.Duration = math.MaxInt64, 0
	nsec := len(r.PlannedPerSecond)
	secs := make([]Second, nsec)
	for i, n := range r.PlannedPerSecond {
		secs[i].Planned = n
	}
	sec := func(t time.Duration) *Second {
		i := max(int(t/time.Second), 0)
		for i >= len(secs) {
			secs = append(secs, Second{})
		}
		return &secs[i]
	}
	for i := range r.Records {
		rec := &r.Records[i]
		s.Issued++
		sec(rec.Start).Issued++
		end := rec.Start + rec.Latency
		if rec.OK() {
			sec(end).OK++
		} else {
			sec(end).Errors++
		}
		if rec.Temp == Cold {
			sec(end).Cold++
		}
		if r.OpenLoop {
			late = append(late, rec.Lateness())
		}
		if rec.Warmup {
			s.Warmup++
			continue
		}
		s.Measured++
		first, last = min(first, rec.Start), max(last, end)
		if rec.Temp == Cold {
			s.Cold++
		}
		if !rec.OK() {
			s.Errors[rec.Err]++
			continue
		}
		s.OK++
		e2e = append(e2e, rec.Latency)
		if rec.ExecKnown {
			sched = append(sched, rec.Scheduling())
			if rec.Requested >= MinSlowdownExec && rec.Exec > 0 {
				perFn[rec.Function] = append(perFn[rec.Function], float64(rec.Latency)/float64(rec.Exec))
			}
		}
	}
	s.Seconds = secs
	if s.Measured > 0 {
		s.Window = last - first
		if s.Window > 0 {
			s.Throughput = float64(s.OK) / s.Window.Seconds()
		}
		s.ColdShare = float64(s.Cold) / float64(s.Measured)
	}
	s.E2E, s.Sched = LatencyQuantiles(e2e), LatencyQuantiles(sched)
	for fn, xs := range perFn {
		s.Slowdown = append(s.Slowdown, FunctionSlowdown{Function: fn, N: len(xs), GeoMean: GeoMean(xs)})
	}
	sort.Slice(s.Slowdown, func(i, j int) bool { return s.Slowdown[i].Function < s.Slowdown[j].Function })
	if len(s.Slowdown) > 0 {
		g := make([]float64, len(s.Slowdown))
		for i, f := range s.Slowdown {
			g[i] = f.GeoMean
		}
		slices.Sort(g)
		s.SlowdownP50, s.SlowdownP99 = stats.Percentile(g, 50), stats.Percentile(g, 99)
	}
	if r.OpenLoop {
		lq := LatencyQuantiles(late)
		s.Lateness, s.MaxLateness = lq.P99, lq.Max
		s.Behind = s.MaxLateness > BehindThreshold || s.Issued < s.Planned
	}
	return s
}

// Slowdowns returns every successful measured invocation's slowdown
// (end to end / reported execution time), sorted.
func Slowdowns(recs []Record) []float64 {
	var out []float64
	for i := range recs {
		r := &recs[i]
		if !r.Warmup && r.OK() && r.ExecKnown && r.Requested >= MinSlowdownExec && r.Exec > 0 {
			out = append(out, float64(r.Latency)/float64(r.Exec))
		}
	}
	slices.Sort(out)
	return out
}
