// Package stats holds the small statistics Baton's load generator, tests and
// benchmarks share, so that a percentile means the same thing everywhere.
package stats

import (
	"math"
	"slices"
)

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest value with at least p% of the sample at
// or below it. It returns 0 for an empty sample.
func Percentile[T ~int64 | ~float64](sorted []T, p float64) T {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p/100*float64(len(sorted)) - 1e-9)) // 99.9% of 1000 is 999, not 999.0000000000001
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// Percentiles returns the nearest-rank percentiles ps of sample (see
// Percentile), in the order asked for. It sorts a copy: sample is left as
// it was. Every value is 0 for an empty sample.
func Percentiles[T ~int64 | ~float64](sample []T, ps ...float64) []T {
	sorted := slices.Clone(sample)
	slices.Sort(sorted)
	out := make([]T, len(ps))
	for i, p := range ps {
		out[i] = Percentile(sorted, p)
	}
	return out
}
