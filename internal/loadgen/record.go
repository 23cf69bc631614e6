package loadgen

import (
	"sync"
	"sync/atomic"
	"time"
)

// Temperature says whether an answer came from a new sandbox.
type Temperature int8

// Temperatures, from the X-Baton-Cold-Start header.
const (
	Unknown Temperature = iota // no header (not proxied, or an error)
	Warm
	Cold
)

func (t Temperature) String() string {
	switch t {
	case Warm:
		return "warm"
	case Cold:
		return "cold"
	}
	return ""
}

// Record is what happened to one invocation.
type Record struct {
	Function  string
	Scheduled time.Duration // planned send time since the run's start (closed loop: Start)
	Start     time.Duration // actual send time since the run's start
	Latency   time.Duration // end to end: request sent to answer read
	Exec      time.Duration // execution time the function reported (ExecKnown)
	ExecKnown bool
	Requested time.Duration // execution time asked for (requested_cpu)
	MemoryMiB int
	Temp      Temperature
	Status    int    // HTTP status; 0 when no answer came
	Err       string // error kind ("" for success): "http 503", "timeout", "refused", ...
	Warmup    bool
}

// OK reports whether the invocation succeeded.
func (r *Record) OK() bool { return r.Err == "" }

// Lateness is how late the request went out against its schedule.
func (r *Record) Lateness() time.Duration { return max(r.Start-r.Scheduled, 0) }

// Scheduling is the time the platform added: end to end minus the
// execution time the function reported (0 when unknown, never negative).
func (r *Record) Scheduling() time.Duration {
	if !r.ExecKnown {
		return 0
	}
	return max(r.Latency-r.Exec, 0)
}

// Recorder collects records from concurrent senders and keeps live counts
// for progress reports.
type Recorder struct {
	mu      sync.Mutex
	records []Record

	issued, done, failed, cold atomic.Int64
}

// NewRecorder returns a recorder with room for n records.
func NewRecorder(n int) *Recorder {
	return &Recorder{records: make([]Record, 0, n)}
}

// Issued counts a request going out.
func (r *Recorder) Issued() { r.issued.Add(1) }

// Add records a finished invocation.
func (r *Recorder) Add(rec Record) {
	r.done.Add(1)
	if !rec.OK() {
		r.failed.Add(1)
	}
	if rec.Temp == Cold {
		r.cold.Add(1)
	}
	r.mu.Lock()
	r.records = append(r.records, rec)
	r.mu.Unlock()
}

// Counts is a snapshot of a Recorder's counters.
type Counts struct {
	Issued, Done, Failed, Cold int64
}

// Counts returns the live counters.
func (r *Recorder) Counts() Counts {
	return Counts{Issued: r.issued.Load(), Done: r.done.Load(), Failed: r.failed.Load(), Cold: r.cold.Load()}
}

// Records returns the records so far, in completion order. The caller must
// not modify them while senders still add.
func (r *Recorder) Records() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.records
}
