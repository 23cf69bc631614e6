package autoscaler

import (
	"math"
	"testing"
	"time"
)

// op is one step of a window script: a report, or a query of Average over
// d and of Empty.
type op struct {
	query    bool
	at       time.Duration // since t0
	c        float64       // report: concurrency
	interval time.Duration // report: interval
	d        time.Duration // query: window
	want     float64       // query: expected average
	empty    bool          // query: expected Empty
}

func rec(at time.Duration, c float64, interval time.Duration) op {
	return op{at: at, c: c, interval: interval}
}

func avg(at, d time.Duration, want float64) op {
	return op{query: true, at: at, d: d, want: want}
}

func avgEmpty(at, d time.Duration) op {
	return op{query: true, at: at, d: d, empty: true}
}

// reports returns reports of c every 100 ms in (from, to], for each of n
// data planes.
func reports(from, to time.Duration, c float64, n int) []op {
	var ops []op
	for at := from + report; at <= to; at += report {
		for range n {
			ops = append(ops, rec(at, c, report))
		}
	}
	return ops
}

func seq(parts ...[]op) []op {
	var all []op
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

func TestWindow(t *testing.T) {
	t.Parallel()
	s := time.Second
	for _, tc := range []struct {
		name         string
		bucket, span time.Duration
		ops          []op
	}{
		{
			name: "two data planes add up", bucket: s, span: 60 * s,
			ops: seq(reports(0, s, 3, 2), []op{
				avg(s, 60*s, 6),
				avg(s, s, 6),
				avg(s, 6*s, 6),
			}),
		},
		{
			name: "start-up shortening", bucket: 100 * time.Millisecond, span: 60 * s,
			ops: seq(reports(0, 500*time.Millisecond, 4, 1), []op{
				avg(500*time.Millisecond, 60*s, 4),
				avg(500*time.Millisecond, 6*s, 4),
				// Time passes without reports: the idle time counts.
				avg(s, 60*s, 2),
			}),
		},
		{
			name: "shortening never below one bucket", bucket: s, span: 60 * s,
			ops: seq(reports(0, 500*time.Millisecond, 4, 1), []op{
				avg(500*time.Millisecond, 60*s, 2),
			}),
		},
		{
			name: "steady load, query between buckets", bucket: s, span: 60 * s,
			ops: seq(reports(0, 100300*time.Millisecond, 2, 1), []op{
				avg(100300*time.Millisecond, 60*s, 2),
				avg(100300*time.Millisecond, 6*s, 2),
				avg(100300*time.Millisecond, time.Hour, 2), // clamped to the span
				avg(100300*time.Millisecond, 0, 2),         // at least one bucket
			}),
		},
		{
			name: "a burst inside a longer history", bucket: s, span: 60 * s,
			ops: seq(reports(0, 54*s, 1, 1), reports(54*s, 60*s, 7, 1), []op{
				avg(60*s, 60*s, (54+6*7)/60.0),
				avg(60*s, 6*s, 7),
			}),
		},
		{
			name: "idle buckets expire", bucket: s, span: 60 * s,
			ops: seq(reports(0, s, 5, 1), []op{
				avg(30*s, 60*s, 5.0/30),
				avg(30*s, 6*s, 0),
				avgEmpty(61*s, 60*s),
				avgEmpty(10*time.Hour, 60*s),
			}),
		},
		{
			name: "partly expired", bucket: s, span: 60 * s,
			ops: seq(reports(0, s, 1, 1), reports(30*s, 31*s, 2, 1), []op{
				avg(60*s, 60*s, 3.0/60),
				avg(61*s, 60*s, 2.0/60),
				avg(90*s, 60*s, 2.0/60),
				avgEmpty(91*s, 60*s),
			}),
		},
		{
			name: "load returning after an idle span is measured afresh", bucket: s, span: 60 * s,
			ops: seq(reports(0, s, 5, 1), reports(100*s, 102*s, 3, 1), []op{
				avg(102*s, 60*s, 3),
			}),
		},
		{
			name: "a ring slot is reset when reused", bucket: s, span: 5 * s,
			ops: seq(reports(0, s, 4, 1), reports(6*s, 7*s, 1, 1), []op{
				// Bucket 6 shares bucket 0's slot in a ring of 6.
				avg(7*s, 5*s, 1),
			}),
		},
		{
			name: "late and ancient reports", bucket: s, span: 10 * s,
			ops: seq(reports(19*s, 20*s, 1, 1), []op{
				rec(15*s, 1, s),  // late but in the ring: counts, window starts earlier
				rec(5*s, 100, s), // older than the ring: dropped
				avg(20*s, 10*s, 2.0/6),
			}),
		},
		{
			name: "reports without load are ignored", bucket: s, span: 10 * s,
			ops: []op{
				rec(s, 0, report),
				rec(s, math.NaN(), report),
				rec(s, -1, report),
				rec(s, 1, -s),
				avgEmpty(2*s, 10*s),
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := NewWindow(tc.bucket, tc.span)
			if !w.Empty(t0) {
				t.Fatal("new window not empty")
			}
			for i, o := range tc.ops {
				now := t0.Add(o.at)
				if !o.query {
					w.Record(now, o.c, o.interval)
					continue
				}
				if got := w.Average(now, o.d); math.Abs(got-o.want) > 1e-9 {
					t.Errorf("op %d: Average(t0+%v, %v) = %g, want %g", i, o.at, o.d, got, o.want)
				}
				if got := w.Empty(now); got != o.empty {
					t.Errorf("op %d: Empty(t0+%v) = %v, want %v", i, o.at, got, o.empty)
				}
			}
		})
	}
}

func TestNewWindowPanics(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ bucket, span time.Duration }{{0, time.Second}, {time.Second, time.Millisecond}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewWindow(%v, %v) did not panic", c.bucket, c.span)
				}
			}()
			NewWindow(c.bucket, c.span)
		}()
	}
}

func TestWindowAllocs(t *testing.T) {
	w := NewWindow(time.Second, time.Minute)
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(report)
		w.Record(now, 3, report)
		w.Average(now, time.Minute)
	})
	if allocs != 0 {
		t.Errorf("Record+Average allocate %v times, want 0", allocs)
	}
}

func BenchmarkWindow(b *testing.B) {
	w := NewWindow(time.Second, time.Minute)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(report)
		w.Record(now, 3, report)
		w.Record(now, 2, report)
		_ = w.Average(now, time.Minute)
		_ = w.Average(now, 6*time.Second)
	}
}
