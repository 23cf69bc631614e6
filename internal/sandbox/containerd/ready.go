package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
)

// finePollFor is how long readiness is probed every 0.5 ms (a small static
// server answers within a few milliseconds of its start) before backing off.
const finePollFor = 100 * time.Millisecond

// waitReady polls the sandbox's port until it accepts a TCP connection,
// the task exits, ctx ends or the ready timeout passes.
func (r *Runtime) waitReady(ctx context.Context, b *box) error {
	err := sandbox.WaitTCP(ctx, b.Sandbox.Address, r.cfg.ReadyTimeout, finePollFor, b.exited)
	switch {
	case errors.Is(err, sandbox.ErrProbeExited):
		return r.notReadyExited(b)
	case errors.Is(err, sandbox.ErrProbeTimeout):
		return fmt.Errorf("%w: no answer on %s within %v%s", sandbox.ErrNotReady, b.Sandbox.Address, r.cfg.ReadyTimeout, outputSuffix(b))
	}
	return err
}

func (r *Runtime) notReadyExited(b *box) error {
	return fmt.Errorf("%w: exited before answering on %s: %s", sandbox.ErrNotReady, b.Sandbox.Address, r.exitReason(b))
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
