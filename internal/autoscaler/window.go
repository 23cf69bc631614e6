package autoscaler

import (
	"fmt"
	"math"
	"time"
)

// Window holds a function's recent load as time-weighted sums in fixed
// buckets, so that reports from several data planes add up.
//
// Bucket k holds the reports stamped in (k*bucket, (k+1)*bucket]: a report
// describes the interval that ends at its timestamp. The buckets form a ring
// one longer than span/bucket, so that a window of a full span that does not
// start on a bucket boundary still fits. Buckets that fall out of the span
// are cleared lazily by the next Record or Average; an idle Window costs
// nothing per tick. With 1 s buckets and a 60 s span a Window is about 560
// bytes.
//
// A Window is not safe for concurrent use; the caller serializes access.
type Window struct {
	bucket int64     // bucket width, ns
	sums   []float64 // concurrency*ns per bucket, ring indexed by bucket index
	head   int64     // newest bucket index the ring has been advanced to
	last   int64     // newest bucket index holding load
	start  int64     // ns since the epoch: earliest time covered since the window was last empty
	loaded bool      // whether any load was ever recorded (head, last, start valid)
}

// NewWindow returns an empty window of buckets of the given width covering
// span (rounded up to whole buckets). It panics if bucket <= 0 or
// span < bucket: both are programming errors.
func NewWindow(bucket, span time.Duration) *Window {
	if bucket <= 0 || span < bucket {
		panic(fmt.Sprintf("autoscaler: NewWindow(bucket %v, span %v): need 0 < bucket <= span", bucket, span))
	}
	n := (int64(span) + int64(bucket) - 1) / int64(bucket)
	return &Window{bucket: int64(bucket), sums: make([]float64, n+1)}
}

// index returns the bucket holding a report stamped at ns.
func (w *Window) index(ns int64) int64 { return floorDiv(ns-1, w.bucket) }

func (w *Window) slot(idx int64) *float64 {
	n := int64(len(w.sums))
	return &w.sums[((idx%n)+n)%n]
}

// advance moves the ring's head to idx, clearing the buckets it passes.
func (w *Window) advance(idx int64) {
	if idx <= w.head {
		return
	}
	if idx-w.head >= int64(len(w.sums)) {
		clear(w.sums)
	} else {
		for k := w.head + 1; k <= idx; k++ {
			*w.slot(k) = 0
		}
	}
	w.head = idx
}

// Record adds a report that the average concurrency over the interval ending
// at now was concurrency: concurrency*interval goes into now's bucket.
// Reports with no load (concurrency or interval <= 0, or NaN) add nothing,
// and reports older than the ring are dropped. The interval should be short
// compared to the bucket (data planes report every ~100 ms).
func (w *Window) Record(now time.Time, concurrency float64, interval time.Duration) {
	if !(concurrency > 0) || interval <= 0 || math.IsInf(concurrency, 0) {
		return
	}
	ns := now.UnixNano()
	idx := w.index(ns)
	from := ns - int64(interval)
	n := int64(len(w.sums))
	switch {
	case w.loaded && w.head-idx >= n:
		return // older than the ring
	case w.emptyAt(ns):
		// Nothing recorded yet, or all of it has expired: measure from this
		// report on, so that load returning after an idle spell is not
		// diluted by the idle time.
		if !w.loaded {
			w.head, w.loaded = idx, true
		}
		w.start, w.last = from, idx
	default:
		w.start = min(w.start, from)
	}
	w.advance(idx)
	*w.slot(idx) += concurrency * float64(interval)
	w.last = max(w.last, idx)
}

// Average returns the mean concurrency over the last d before now: the load
// recorded in the buckets covering (now-d, now] divided by the time they
// cover. d is clamped to [one bucket, span]. The covered time starts no
// earlier than the interval of the first report since the window was last
// empty, so a new (or newly active) function is not under-estimated, and it
// is never less than one bucket. A window with no load in the span averages
// 0. Average clears expired buckets, hence the pointer receiver.
func (w *Window) Average(now time.Time, d time.Duration) float64 {
	if !w.loaded {
		return 0
	}
	ns := now.UnixNano()
	cur := w.index(ns)
	w.advance(cur)
	span := int64(len(w.sums)-1) * w.bucket
	dd := min(max(int64(d), w.bucket), span)
	oldest := floorDiv(ns-dd, w.bucket) // bucket holding the instant just after now-d
	if lo := w.head - int64(len(w.sums)) + 1; oldest < lo {
		oldest = lo
	}
	var sum float64
	n := int64(len(w.sums))
	for k, i := oldest, ((oldest%n)+n)%n; k <= cur; k, i = k+1, i+1 {
		if i == n {
			i = 0
		}
		sum += w.sums[i]
	}
	if sum == 0 {
		return 0
	}
	covered := ns - max(oldest*w.bucket, w.start)
	return sum / float64(max(covered, w.bucket))
}

// Empty reports whether no load was recorded within the span before now,
// that is whether every bucket holding load ended at or before now-span.
// It does not modify the window.
func (w *Window) Empty(now time.Time) bool { return w.emptyAt(now.UnixNano()) }

func (w *Window) emptyAt(ns int64) bool {
	span := int64(len(w.sums)-1) * w.bucket
	return !w.loaded || (w.last+1)*w.bucket <= ns-span
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
