// Package autoscaler decides how many sandboxes a function needs, with the
// semantics of Knative's pod autoscaler (KPA): a desired count from the
// average concurrency over a stable window, a panic mode driven by a shorter
// panic window, scale-up and scale-down rate limits, a grace period before
// scaling to zero, and min/max bounds.
//
// The package is pure: it does no I/O, starts no goroutines and never reads
// the clock. The control plane feeds load reports into a [Window] per
// function, and on every tick passes the window's averages and the current
// time to [Decide], keeping the returned [State] for the next tick. Scale
// from zero does not wait for a tick: [FromZero] answers how many sandboxes
// to ask for as soon as requests queue for a function that has none.
package autoscaler

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Config is the per-function autoscaling configuration. The field meanings
// and defaults follow Knative's autoscaler config, except the target: a FaaS
// sandbox serves one request at a time by default, as in Dirigent.
type Config struct {
	// MinScale and MaxScale bound the desired count. MaxScale 0 is unbounded.
	MinScale, MaxScale int32
	// TargetConcurrency is the number of requests in flight (or queued) per
	// sandbox that the autoscaler aims at.
	TargetConcurrency float64
	// TargetUtilization in (0, 1] scales the target down to leave headroom.
	TargetUtilization float64
	// StableWindow is the averaging window in normal operation.
	StableWindow time.Duration
	// PanicWindowPercent sets the panic window as a percentage of
	// StableWindow, in (0, 100].
	PanicWindowPercent float64
	// PanicThresholdPercent: panic mode starts when the panic-window estimate
	// reaches this percentage of the ready sandboxes. Must exceed 100.
	PanicThresholdPercent float64
	// MaxScaleUpRate and MaxScaleDownRate limit one decision to
	// ready*MaxScaleUpRate and ready/MaxScaleDownRate. Both at least 1.
	MaxScaleUpRate   float64
	MaxScaleDownRate float64
	// ScaleToZeroGrace is how long after the last load one sandbox is kept.
	ScaleToZeroGrace time.Duration
}

// DefaultConfig returns Knative's defaults with a FaaS target of one request
// per sandbox at 100 % utilisation.
func DefaultConfig() Config {
	return Config{
		TargetConcurrency:     1,
		TargetUtilization:     1,
		StableWindow:          60 * time.Second,
		PanicWindowPercent:    10,
		PanicThresholdPercent: 200,
		MaxScaleUpRate:        1000,
		MaxScaleDownRate:      2,
		ScaleToZeroGrace:      30 * time.Second,
	}
}

// PanicWindow returns StableWindow*PanicWindowPercent/100.
func (c Config) PanicWindow() time.Duration {
	return time.Duration(float64(c.StableWindow) * c.PanicWindowPercent / 100)
}

// target is the concurrency one sandbox is meant to carry.
func (c Config) target() float64 {
	return c.TargetConcurrency * c.TargetUtilization
}

// Validate reports every problem with c, joined into one error, or nil.
// Comparisons are written so that NaN fails them.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if c.MinScale < 0 {
		bad("min scale must be >= 0, got %d", c.MinScale)
	}
	if c.MaxScale < 0 {
		bad("max scale must be >= 0 (0 is unbounded), got %d", c.MaxScale)
	}
	if c.MaxScale > 0 && c.MinScale > c.MaxScale {
		bad("min scale %d must not exceed max scale %d", c.MinScale, c.MaxScale)
	}
	if !(c.TargetConcurrency > 0) || math.IsInf(c.TargetConcurrency, 0) {
		bad("target concurrency must be a positive number, got %g", c.TargetConcurrency)
	}
	if !(c.TargetUtilization > 0 && c.TargetUtilization <= 1) {
		bad("target utilization must be in (0, 1], got %g", c.TargetUtilization)
	}
	if c.StableWindow <= 0 {
		bad("stable window must be positive, got %v", c.StableWindow)
	}
	if !(c.PanicWindowPercent > 0 && c.PanicWindowPercent <= 100) {
		bad("panic window percent must be in (0, 100], got %g", c.PanicWindowPercent)
	} else if c.StableWindow > 0 && c.PanicWindow() <= 0 {
		bad("panic window (%g%% of %v) rounds to zero", c.PanicWindowPercent, c.StableWindow)
	}
	if !(c.PanicThresholdPercent > 100) || math.IsInf(c.PanicThresholdPercent, 0) {
		bad("panic threshold percent must be > 100, got %g", c.PanicThresholdPercent)
	}
	if !(c.MaxScaleUpRate >= 1) || math.IsInf(c.MaxScaleUpRate, 0) {
		bad("max scale up rate must be >= 1, got %g", c.MaxScaleUpRate)
	}
	if !(c.MaxScaleDownRate >= 1) || math.IsInf(c.MaxScaleDownRate, 0) {
		bad("max scale down rate must be >= 1, got %g", c.MaxScaleDownRate)
	}
	if c.ScaleToZeroGrace < 0 {
		bad("scale to zero grace must be >= 0, got %v", c.ScaleToZeroGrace)
	}
	return errors.Join(errs...)
}
