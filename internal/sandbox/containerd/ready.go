package containerd

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
)

// Readiness polling: every finePoll for the first finePollFor (a small
// static server answers within a few milliseconds of its start), then
// backing off to 10 ms.
const (
	finePoll    = 500 * time.Microsecond
	finePollFor = 100 * time.Millisecond
)

// waitReady polls the sandbox's port until it accepts a TCP connection,
// the task exits, ctx ends or the ready timeout passes.
func (r *Runtime) waitReady(ctx context.Context, b *box) error {
	start := time.Now()
	deadline := start.Add(r.cfg.ReadyTimeout)
	dialer := net.Dialer{Timeout: time.Second}
	wait := finePoll
	var timer *time.Timer
	for {
		conn, err := dialer.DialContext(ctx, "tcp", b.sb.Address)
		if err == nil {
			_ = conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: no answer on %s within %v%s", sandbox.ErrNotReady, b.sb.Address, r.cfg.ReadyTimeout, outputSuffix(b))
		}
		if time.Since(start) < finePollFor {
			// Go's timers fire at millisecond granularity here: sleep the
			// thread instead, a few times.
			select {
			case <-b.exited:
				return r.notReadyExited(b)
			case <-ctx.Done():
				return fmt.Errorf("wait for %s: %w", b.sb.Address, ctx.Err())
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
		case <-b.exited:
			return r.notReadyExited(b)
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", b.sb.Address, ctx.Err())
		case <-timer.C:
		}
		wait = min(wait*3/2, 10*time.Millisecond)
	}
}

func (r *Runtime) notReadyExited(b *box) error {
	return fmt.Errorf("%w: exited before answering on %s: %s", sandbox.ErrNotReady, b.sb.Address, r.exitReason(b))
}

func outputSuffix(b *box) string {
	if out := tail(b.logPath, reasonBytes); out != "" {
		return "; its output ends: " + out
	}
	return ""
}

// reasonBytes is how much output an error reason quotes.
const reasonBytes = 2 << 10

// tail returns the last n bytes of the file at path (the task's stdout and
// stderr), from a line start where it can, trimmed.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(0, st.Size()-n)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return ""
	}
	s := string(buf)
	if off > 0 {
		if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
			s = s[i+1:]
		}
	}
	return strings.TrimSpace(s)
}
