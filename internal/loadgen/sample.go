package loadgen

import (
	"math"
	"math/rand/v2"
	"time"
)

// Bounds on a sampled execution time: the workload protocol counts whole
// milliseconds, and no function of the trace runs longer than a minute.
const (
	MinExec = time.Millisecond
	MaxExec = time.Minute
)

// point is one percentile of a distribution: p in [0, 100], value v.
type point struct{ p, v float64 }

// sampleBetween draws a value of the distribution given by its percentiles
// (in increasing p): a uniform percentile, then linear interpolation between
// the two known percentiles around it (below the first, the first value).
// Values are made non-decreasing first, so bad data cannot invert a range.
func sampleBetween(rng *rand.Rand, pts []point) float64 {
	u := rng.Float64() * 100
	prev := pts[0]
	prev.v = math.Max(prev.v, 0)
	if u <= prev.p {
		return prev.v
	}
	for _, q := range pts[1:] {
		q.v = math.Max(q.v, prev.v)
		if u <= q.p {
			if q.p == prev.p {
				return q.v
			}
			return prev.v + (q.v-prev.v)*(u-prev.p)/(q.p-prev.p)
		}
		prev = q
	}
	return prev.v
}

// Sample draws an execution time between the function's duration
// percentiles, rounded to the millisecond and clamped to [MinExec, MaxExec].
func (d DurationStats) Sample(rng *rand.Rand) time.Duration {
	ms := sampleBetween(rng, []point{{0, d.P0}, {1, d.P1}, {25, d.P25}, {50, d.P50}, {75, d.P75}, {99, d.P99}, {100, d.P100}})
	return clampExec(time.Duration(math.Round(ms)) * time.Millisecond)
}

func clampExec(d time.Duration) time.Duration {
	return min(max(d, MinExec), MaxExec)
}

// Sample draws a memory size in MiB between the function's memory
// percentiles (below the first percentile, its value), at least 1.
func (m MemoryStats) Sample(rng *rand.Rand) int {
	mib := sampleBetween(rng, []point{{1, m.P1}, {5, m.P5}, {25, m.P25}, {50, m.P50}, {75, m.P75}, {95, m.P95},
		{99, m.P99}, {100, m.P100}})
	return max(int(math.Round(mib)), 1)
}
