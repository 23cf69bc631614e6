package process

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"sync"
)

// outputKeep is how much of a sandbox's output is kept for error reasons.
const outputKeep = 4 << 10

// ring keeps the last outputKeep bytes written to it.
type ring struct {
	mu   sync.Mutex
	buf  [outputKeep]byte
	n    int64 // bytes ever written
	head int   // next write position
}

func (r *ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	if len(p) > len(r.buf) {
		p = p[len(p)-len(r.buf):]
	}
	for len(p) > 0 {
		c := copy(r.buf[r.head:], p)
		p = p[c:]
		r.head = (r.head + c) % len(r.buf)
	}
	r.n += int64(n)
	return n, nil
}

// tail returns the last (at most) max bytes written.
func (r *ring) tail(max int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := int(min(r.n, int64(len(r.buf))))
	max = min(max, size)
	out := make([]byte, 0, max)
	start := (r.head - max + len(r.buf)) % len(r.buf)
	if start+max <= len(r.buf) {
		return append(out, r.buf[start:start+max]...)
	}
	out = append(out, r.buf[start:]...)
	return append(out, r.buf[:max-(len(r.buf)-start)]...)
}

// readOutput copies a sandbox's merged stdout and stderr from f into out
// until every writer has closed it, passing whole lines to log at debug
// level when that level is enabled.
func readOutput(f *os.File, out *ring, log *slog.Logger, id string) {
	defer f.Close()
	debug := log.Enabled(context.Background(), slog.LevelDebug)
	buf := make([]byte, 4096)
	var line []byte
	for {
		n, err := f.Read(buf)
		if n > 0 {
			_, _ = out.Write(buf[:n])
			if debug {
				line = logLines(log, id, append(line, buf[:n]...))
			}
		}
		if err != nil {
			break
		}
	}
	if len(line) > 0 {
		log.Debug("sandbox output", "sandbox", id, "line", string(line))
	}
}

// logLines logs every complete line of p and returns the rest; a partial
// line longer than outputKeep is logged as it is.
func logLines(log *slog.Logger, id string, p []byte) []byte {
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			break
		}
		log.Debug("sandbox output", "sandbox", id, "line", string(p[:i]))
		p = p[i+1:]
	}
	if len(p) > outputKeep {
		log.Debug("sandbox output", "sandbox", id, "line", string(p))
		p = p[:0]
	}
	return append([]byte(nil), p...)
}
