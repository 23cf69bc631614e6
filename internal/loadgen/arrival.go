package loadgen

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"time"
)

// IAT is a distribution of inter-arrival times.
type IAT int

// The inter-arrival distributions of a trace replay.
const (
	Exponential IAT = iota // a Poisson process (conditioned on the minute's count)
	Uniform                // gaps uniform on [0, 1), scaled
	Equidistant            // equal gaps
)

func (d IAT) String() string {
	switch d {
	case Exponential:
		return "exponential"
	case Uniform:
		return "uniform"
	case Equidistant:
		return "equidistant"
	}
	return fmt.Sprintf("IAT(%d)", int(d))
}

// ParseIAT parses "exponential", "uniform" or "equidistant".
func ParseIAT(s string) (IAT, error) {
	for _, d := range []IAT{Exponential, Uniform, Equidistant} {
		if s == d.String() {
			return d, nil
		}
	}
	return 0, fmt.Errorf("inter-arrival distribution %q: use exponential, uniform or equidistant", s)
}

// Arrivals returns n arrival offsets in [0, span), sorted: n gaps drawn from
// d and scaled to sum to span, laid on a circle of length span from a
// random phase. The phase keeps functions from all firing at the start of
// every minute; with exponential gaps the result is exactly a Poisson
// process conditioned on n arrivals in the span. rng decides everything, so
// a seeded rng gives the same arrivals every time.
func Arrivals(rng *rand.Rand, d IAT, n int, span time.Duration) []time.Duration {
	if n <= 0 || span <= 0 {
		return nil
	}
	gaps := make([]float64, n)
	sum := 0.0
	for i := range gaps {
		switch d {
		case Exponential:
			gaps[i] = rng.ExpFloat64()
		case Uniform:
			gaps[i] = rng.Float64()
		default:
			gaps[i] = 1
		}
		sum += gaps[i]
	}
	if !(sum > 0) { // every uniform draw 0: cannot scale, fall back to equal gaps
		for i := range gaps {
			gaps[i] = 1
		}
		sum = float64(n)
	}
	scale := float64(span) / sum
	phase := rng.Float64() * float64(span)
	out := make([]time.Duration, n)
	t := phase
	for i, g := range gaps {
		at := time.Duration(t)
		for at >= span {
			at -= span
		}
		out[i] = max(at, 0)
		t += g * scale
	}
	slices.Sort(out)
	return out
}
