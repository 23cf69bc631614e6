package autoscaler

import (
	"math"
	"time"
)

// State is what Decide carries from one tick of a function to the next. The
// zero State is a function that has never seen load and is not in panic.
type State struct {
	PanicSince    time.Time // last time the panic threshold was reached; zero: not in panic
	MaxPanicScale int32     // highest desired count while in panic
	LastActive    time.Time // last decision that saw load; zero: never
}

// Input is what the control plane observed for one function at one tick.
type Input struct {
	Now               time.Time
	Ready             int32   // sandboxes ready now
	StableConcurrency float64 // Window.Average over Config.StableWindow
	PanicConcurrency  float64 // Window.Average over Config.PanicWindow()
	Active            bool    // load (arrivals or concurrency > 0) seen since the previous decision
}

// Decision is the outcome of one tick.
type Decision struct {
	Desired int32 // sandboxes wanted
	Panic   bool  // whether the function is in panic mode after this tick
	State   State // to pass to the next Decide
}

// epsilon absorbs floating-point noise in the time-weighted averages (a
// steady concurrency of 1 may average to 1.0000000000000002), which would
// otherwise ask for one sandbox too many.
const epsilon = 1e-9

// Decide computes the desired number of sandboxes with Knative KPA semantics
// (knative.dev/serving pkg/autoscaler/scaling/autoscaler.go). cfg must be
// valid (see Config.Validate).
//
//   - Per-sandbox target t = TargetConcurrency*TargetUtilization; the stable
//     and panic estimates are ceil(concurrency/t).
//   - Both are clamped to [floor(r/MaxScaleDownRate), ceil(r*MaxScaleUpRate)]
//     where r = max(1, Ready).
//   - Panic starts when the unclamped panic estimate reaches
//     PanicThresholdPercent of r, is renewed on every tick that still
//     reaches it, and ends on the first tick below it at least StableWindow
//     after the last renewal. In panic the count never goes down: it is the
//     largest of both estimates, Ready and every earlier panic count.
//     Outside panic it is the stable estimate.
//   - With Ready == 0 panic is not entered: a function without sandboxes is
//     scaled from zero (see FromZero) and its estimates are used as they
//     are. A panic already under way continues (and is renewed) if the
//     sandboxes vanish.
//   - A count of 0 becomes 1 while less than ScaleToZeroGrace has passed
//     since the last decision that saw load. A function that never saw load
//     may go to zero at once.
//   - Finally the count is clamped to [MinScale, MaxScale] (MaxScale 0:
//     no upper bound).
func Decide(cfg Config, in Input, st State) Decision {
	target := cfg.target()
	ready := float64(max(in.Ready, 1))
	maxUp := math.Ceil(cfg.MaxScaleUpRate * ready)
	maxDown := math.Floor(ready / cfg.MaxScaleDownRate)

	stablePods := pods(in.StableConcurrency, target)
	panicPods := pods(in.PanicConcurrency, target)
	desiredStable := toInt32(min(max(stablePods, maxDown), maxUp))
	desiredPanic := toInt32(min(max(panicPods, maxDown), maxUp))

	over := panicPods/ready >= cfg.PanicThresholdPercent/100
	panicking := !st.PanicSince.IsZero()
	switch {
	case over && (panicking || in.Ready > 0):
		st.PanicSince = in.Now
	case panicking && !over && !in.Now.Before(st.PanicSince.Add(cfg.StableWindow)):
		st.PanicSince = time.Time{}
		st.MaxPanicScale = 0
	}

	desired := desiredStable
	if !st.PanicSince.IsZero() {
		desired = max(desiredStable, desiredPanic, st.MaxPanicScale, in.Ready)
		st.MaxPanicScale = desired
	}

	if in.Active {
		st.LastActive = in.Now
	}
	if desired == 0 && !st.LastActive.IsZero() && in.Now.Sub(st.LastActive) < cfg.ScaleToZeroGrace {
		desired = 1
	}
	return Decision{Desired: bound(cfg, desired), Panic: !st.PanicSince.IsZero(), State: st}
}

// FromZero returns how many sandboxes to ask for at once when queued
// requests wait for a function that has none: ceil(queued/target), limited
// by the scale-up rate from one sandbox, at least 1, then clamped to
// [MinScale, MaxScale]. It needs no window and no tick.
func FromZero(cfg Config, queued int32) int32 {
	n := min(pods(float64(queued), cfg.target()), math.Ceil(cfg.MaxScaleUpRate))
	return bound(cfg, max(toInt32(n), 1))
}

// pods returns ceil(concurrency/target), 0 for no (or invalid) load.
func pods(concurrency, target float64) float64 {
	x := concurrency / target
	if !(x > 0) {
		return 0
	}
	return math.Ceil(x - epsilon)
}

// bound clamps n to [MinScale, MaxScale], MaxScale 0 being unbounded.
func bound(cfg Config, n int32) int32 {
	n = max(n, cfg.MinScale)
	if cfg.MaxScale > 0 {
		n = min(n, cfg.MaxScale)
	}
	return n
}

// toInt32 converts a non-negative float, saturating at MaxInt32.
func toInt32(x float64) int32 {
	switch {
	case !(x > 0):
		return 0
	case x >= math.MaxInt32:
		return math.MaxInt32
	}
	return int32(x)
}
