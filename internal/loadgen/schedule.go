package loadgen

import (
	"errors"
	"fmt"
	"iter"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Invocation is one planned request.
type Invocation struct {
	At        time.Duration // since the start of the run
	Function  string
	Exec      time.Duration // execution time asked of the function (requested_cpu); 0: none
	MemoryMiB int           // requested_memory; 0: none
	Warmup    bool          // replayed but excluded from the results
}

// Schedule is an open-loop plan: what to send, and when.
type Schedule interface {
	// Planned is the number of invocations, warm-up included.
	Planned() int
	// Length is the time from the start to the end of the plan.
	Length() time.Duration
	// All yields the invocations in time order.
	All() iter.Seq[Invocation]
}

// TraceOptions says which part of a trace to replay and how.
type TraceOptions struct {
	WarmupMinutes int    // first minutes, replayed but not measured
	Minutes       int    // minutes measured after the warm-up; 0: the rest of the trace
	IAT           IAT    // inter-arrival distribution within a minute (2019 format)
	Seed          uint64 // seeds arrivals, execution times and memory sizes
}

// TraceSchedule replays minutes of a trace. Invocations are generated a
// minute at a time, each function's minute from its own seeded random
// source, so memory stays small and the plan does not depend on the order
// in which it is read.
type TraceSchedule struct {
	trace   *Trace
	opts    TraceOptions
	planned int
}

// NewTraceSchedule plans the replay of t with o.
func NewTraceSchedule(t *Trace, o TraceOptions) (*TraceSchedule, error) {
	if o.WarmupMinutes < 0 || o.Minutes < 0 {
		return nil, errors.New("minutes and warm-up minutes must not be negative")
	}
	total := t.Minutes()
	if o.WarmupMinutes >= total {
		return nil, fmt.Errorf("warm-up of %d minutes leaves nothing of a %d-minute trace", o.WarmupMinutes, total)
	}
	if o.Minutes == 0 || o.WarmupMinutes+o.Minutes > total {
		if o.Minutes != 0 {
			return nil, fmt.Errorf("%d warm-up and %d measured minutes: the trace has only %d", o.WarmupMinutes, o.Minutes, total)
		}
		o.Minutes = total - o.WarmupMinutes
	}
	s := &TraceSchedule{trace: t, opts: o}
	if t.Format == FormatAzure2021 {
		end := s.Length()
		for _, c := range t.Calls {
			if c.Start < end {
				s.planned++
			}
		}
		return s, nil
	}
	for _, f := range t.Functions {
		for _, n := range f.PerMinute[:s.minutes()] {
			s.planned += n
		}
	}
	return s, nil
}

func (s *TraceSchedule) minutes() int { return s.opts.WarmupMinutes + s.opts.Minutes }

// Options returns the options in force (Minutes filled in).
func (s *TraceSchedule) Options() TraceOptions { return s.opts }

// Planned implements Schedule.
func (s *TraceSchedule) Planned() int { return s.planned }

// Length implements Schedule.
func (s *TraceSchedule) Length() time.Duration { return time.Duration(s.minutes()) * time.Minute }

// Functions returns the functions invoked in the replayed minutes.
func (s *TraceSchedule) Functions() []*Function {
	used := make([]bool, len(s.trace.Functions))
	if s.trace.Format == FormatAzure2021 {
		end := s.Length()
		for _, c := range s.trace.Calls {
			if c.Start < end {
				used[c.Function] = true
			}
		}
	} else {
		for i, f := range s.trace.Functions {
			for _, n := range f.PerMinute[:s.minutes()] {
				if n > 0 {
					used[i] = true
					break
				}
			}
		}
	}
	var out []*Function
	for i, f := range s.trace.Functions {
		if used[i] {
			out = append(out, f)
		}
	}
	return out
}

// Minute returns the invocations of replayed minute m (0-based, warm-up
// minutes first), sorted by time, with At counted from the run's start.
func (s *TraceSchedule) Minute(m int) []Invocation {
	if m < 0 || m >= s.minutes() {
		return nil
	}
	warm := m < s.opts.WarmupMinutes
	base := time.Duration(m) * time.Minute
	var out []Invocation
	if s.trace.Format == FormatAzure2021 {
		lo, hi := base, base+time.Minute
		i, _ := slices.BinarySearchFunc(s.trace.Calls, lo, func(c Call, t time.Duration) int { return cmpDur(c.Start, t) })
		for ; i < len(s.trace.Calls) && s.trace.Calls[i].Start < hi; i++ {
			c := s.trace.Calls[i]
			out = append(out, Invocation{At: c.Start, Function: s.trace.Functions[c.Function].Name,
				Exec: clampExec(c.Duration.Round(time.Millisecond)), Warmup: warm})
		}
		return out
	}
	for _, f := range s.trace.Functions {
		n := f.PerMinute[m]
		if n == 0 {
			continue
		}
		rng := rand.New(rand.NewPCG(s.opts.Seed, uint64(f.Index)<<32|uint64(m)))
		for _, at := range Arrivals(rng, s.opts.IAT, n, time.Minute) {
			out = append(out, Invocation{At: base + at, Function: f.Name, Exec: f.Duration.Sample(rng),
				MemoryMiB: f.Memory.Sample(rng), Warmup: warm})
		}
	}
	slices.SortStableFunc(out, func(a, b Invocation) int { return cmpDur(a.At, b.At) })
	return out
}

func cmpDur(a, b time.Duration) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// All implements Schedule. The next minute is generated while the current
// one is read, so a sender does not stall at minute boundaries.
func (s *TraceSchedule) All() iter.Seq[Invocation] {
	return func(yield func(Invocation) bool) {
		minutes := make(chan []Invocation, 1)
		done := make(chan struct{})
		var wg sync.WaitGroup
		defer func() {
			close(done)
			wg.Wait()
		}()
		wg.Go(func() {
			defer close(minutes)
			for m := range s.minutes() {
				select {
				case minutes <- s.Minute(m):
				case <-done:
					return
				}
			}
		})
		for invs := range minutes {
			for _, inv := range invs {
				if !yield(inv) {
					return
				}
			}
		}
	}
}

// RateSchedule sends Rate requests per second for Duration, evenly spaced,
// to Functions in rotation.
type RateSchedule struct {
	Rate      float64
	Duration  time.Duration
	Functions []string
	Exec      time.Duration // requested_cpu of every request
}

// Planned implements Schedule.
func (s *RateSchedule) Planned() int {
	if s.Rate <= 0 || s.Duration <= 0 || len(s.Functions) == 0 {
		return 0
	}
	return int(math.Floor(s.Rate*s.Duration.Seconds() + 1e-9))
}

// Length implements Schedule.
func (s *RateSchedule) Length() time.Duration { return s.Duration }

// All implements Schedule.
func (s *RateSchedule) All() iter.Seq[Invocation] {
	return func(yield func(Invocation) bool) {
		n := s.Planned()
		for k := range n {
			at := time.Duration(float64(k) * float64(time.Second) / s.Rate)
			if !yield(Invocation{At: at, Function: s.Functions[k%len(s.Functions)], Exec: s.Exec}) {
				return
			}
		}
	}
}
