package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// Outcomes of WaitTCP other than success and ctx's end.
var (
	ErrProbeExited  = errors.New("sandbox exited before answering")
	ErrProbeTimeout = errors.New("sandbox did not answer in time")
)

// finePoll is the probe interval for the first part of a wait: most
// functions answer within a few milliseconds.
const finePoll = 500 * time.Microsecond

// WaitTCP polls addr until it accepts a TCP connection (nil), exited is
// closed (ErrProbeExited), timeout passes (ErrProbeTimeout) or ctx ends. It
// probes every 0.5 ms for the first fineFor, sleeping the thread (Go's
// timers fire at millisecond granularity here, a fifth of a typical start),
// then backs off to 10 ms. Runtimes share it and word the errors their way.
func WaitTCP(ctx context.Context, addr string, timeout, fineFor time.Duration, exited <-chan struct{}) error {
	start := time.Now()
	deadline := start.Add(timeout)
	dialer := net.Dialer{Timeout: time.Second}
	wait := finePoll
	var timer *time.Timer
	for {
		conn, err := dialer.DialContext(ctx, "tcp", addr)
		if err == nil {
			_ = conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return ErrProbeTimeout
		}
		if time.Since(start) < fineFor {
			select {
			case <-exited:
				return ErrProbeExited
			case <-ctx.Done():
				return fmt.Errorf("wait for %s: %w", addr, ctx.Err())
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
			return fmt.Errorf("wait for %s: %w", addr, ctx.Err())
		case <-timer.C:
		}
		wait = min(wait*3/2, 10*time.Millisecond)
	}
}
