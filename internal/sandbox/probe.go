package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// Outcomes of WaitTCP and Poll other than success and ctx's end.
var (
	ErrProbeExited  = errors.New("sandbox exited before answering")
	ErrProbeTimeout = errors.New("sandbox did not answer in time")
)

// finePoll is the probe interval for the first part of a wait: most
// functions answer within a few milliseconds.
const finePoll = 500 * time.Microsecond

// WaitTCP polls addr until it accepts a TCP connection (nil), exited is
// closed (ErrProbeExited), timeout passes (ErrProbeTimeout) or ctx ends. It
// probes every 0.5 ms for the first fineFor, then backs off, by half each
// time, to 10 ms (Poll). Runtimes share it and word the errors their way.
func WaitTCP(ctx context.Context, addr string, timeout, fineFor time.Duration, exited <-chan struct{}) error {
	dialer := net.Dialer{Timeout: time.Second}
	pace := Pace{Fine: fineFor, First: finePoll, Growth: 150}
	return Poll(ctx, addr, time.Now().Add(timeout), pace, exited, func() bool {
		conn, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		_ = conn.Close()
		return true
	})
}

// Pace is how Poll spaces its probes: every 0.5 ms for the first Fine of
// the wait, sleeping the thread (Go's timers fire at millisecond
// granularity here, a fifth of a typical start), then First apart, the
// interval growing to Growth percent of the last one each time, up to
// 10 ms.
type Pace struct {
	Fine   time.Duration
	First  time.Duration
	Growth int64
}

// Poll calls probe until it returns true (nil), exited is closed
// (ErrProbeExited), deadline passes (ErrProbeTimeout) or ctx ends (an
// error that says it waited for what), spacing the calls by pace.
func Poll(ctx context.Context, what string, deadline time.Time, pace Pace, exited <-chan struct{}, probe func() bool) error {
	start := time.Now()
	wait := pace.First
	var timer *time.Timer
	for {
		if probe() {
			return nil
		}
		if time.Now().After(deadline) {
			return ErrProbeTimeout
		}
		if time.Since(start) < pace.Fine {
			select {
			case <-exited:
				return ErrProbeExited
			case <-ctx.Done():
				return fmt.Errorf("wait for %s: %w", what, ctx.Err())
			default:
			}
			ts := syscall.NsecToTimespec(int64(finePoll))
			_ = syscall.Nanosleep(&ts, nil)
			continue
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-exited:
			return ErrProbeExited
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-timer.C:
		}
		wait = min(wait*time.Duration(pace.Growth)/100, 10*time.Millisecond)
	}
}
