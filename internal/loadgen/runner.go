package loadgen

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Clock tells the time and waits; tests replace the real one.
type Clock interface {
	Now() time.Time
	// SleepUntil returns at t, or early with ctx's error.
	SleepUntil(ctx context.Context, t time.Time) error
}

// RealClock is the system clock.
type RealClock struct{}

// Now implements Clock.
func (RealClock) Now() time.Time { return time.Now() }

// SleepUntil implements Clock.
func (RealClock) SleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Request is one invocation to send.
type Request struct {
	Function  string
	Exec      time.Duration // requested_cpu; 0: none
	MemoryMiB int           // requested_memory; 0: none
}

// Answer is what came back.
type Answer struct {
	Status    int           // HTTP status; 0: none
	Exec      time.Duration // execution time the function reported
	ExecKnown bool
	Temp      Temperature
	Err       string // error kind, "" for success
}

// Invoker sends one invocation and waits for its answer. It must be safe
// for concurrent use.
type Invoker interface {
	Invoke(ctx context.Context, r Request) Answer
}

// Runner sends load through an Invoker and records every invocation.
type Runner struct {
	Invoker  Invoker
	Clock    Clock // nil: RealClock
	Recorder *Recorder

	// Started is the clock's time at the start of the last run.
	Started time.Time
}

func (r *Runner) clock() Clock {
	if r.Clock == nil {
		return RealClock{}
	}
	return r.Clock
}

// Open sends the schedule open loop: each invocation at its time whatever
// happened to the earlier ones. It returns once every request sent has been
// answered; when ctx ends it stops sending, and requests in flight end with
// it (recorded as "canceled").
func (r *Runner) Open(ctx context.Context, s Schedule) error {
	clk := r.clock()
	start := clk.Now()
	r.Started = start
	var wg sync.WaitGroup
	var err error
	for inv := range s.All() {
		if err = clk.SleepUntil(ctx, start.Add(inv.At)); err != nil {
			break
		}
		wg.Go(func() { r.send(ctx, clk, start, inv) })
	}
	wg.Wait()
	return err
}

func (r *Runner) send(ctx context.Context, clk Clock, start time.Time, inv Invocation) {
	r.Recorder.Issued()
	t0 := clk.Now()
	a := r.Invoker.Invoke(ctx, Request{Function: inv.Function, Exec: inv.Exec, MemoryMiB: inv.MemoryMiB})
	t1 := clk.Now()
	r.Recorder.Add(Record{Function: inv.Function, Scheduled: inv.At, Start: t0.Sub(start), Latency: t1.Sub(t0),
		Exec: a.Exec, ExecKnown: a.ExecKnown, Requested: inv.Exec, MemoryMiB: inv.MemoryMiB, Temp: a.Temp,
		Status: a.Status, Err: a.Err, Warmup: inv.Warmup})
}

// Closed runs clients concurrent loops, each sending req again as soon as
// its previous answer came, for d. Requests in flight at the end finish and
// are recorded.
func (r *Runner) Closed(ctx context.Context, clients int, d time.Duration, req Request) error {
	if clients <= 0 {
		return errors.New("closed loop: need at least one client")
	}
	clk := r.clock()
	start := clk.Now()
	r.Started = start
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for ctx.Err() == nil {
				now := clk.Now()
				if !now.Before(deadline) {
					return
				}
				at := now.Sub(start)
				r.send(ctx, clk, start, Invocation{At: at, Function: req.Function, Exec: req.Exec, MemoryMiB: req.MemoryMiB})
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}
