package stats

import (
	"slices"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	ten := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct{ p, want float64 }{{10, 1}, {50, 5}, {51, 6}, {90, 9}, {99, 10}, {100, 10}, {0.1, 1}} {
		if got := Percentile(ten, tc.p); got != tc.want {
			t.Errorf("p%g of 1..10 = %g, want %g", tc.p, got, tc.want)
		}
	}
	thousand := make([]time.Duration, 1000)
	for i := range thousand {
		thousand[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 500 * time.Millisecond}, {90, 900 * time.Millisecond}, {99, 990 * time.Millisecond}, {99.9, 999 * time.Millisecond}} {
		if got := Percentile(thousand, tc.p); got != tc.want {
			t.Errorf("p%g of 1..1000ms = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := Percentile([]float64{}, 50); got != 0 {
		t.Errorf("empty sample: %g", got)
	}
	if got := Percentile([]float64{7}, 99.9); got != 7 {
		t.Errorf("one value: %g", got)
	}
}

func TestPercentilesSortsACopy(t *testing.T) {
	sample := []time.Duration{40, 10, 30, 20}
	if got, want := Percentiles(sample, 50, 99, 25), []time.Duration{20, 40, 10}; !slices.Equal(got, want) {
		t.Errorf("p50, p99, p25 of %v = %v, want %v", sample, got, want)
	}
	if want := []time.Duration{40, 10, 30, 20}; !slices.Equal(sample, want) {
		t.Errorf("sample reordered to %v", sample)
	}
	if got := Percentiles([]float64(nil), 50, 99); !slices.Equal(got, []float64{0, 0}) {
		t.Errorf("empty sample: %v", got)
	}
}
