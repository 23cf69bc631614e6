package process

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/batonfaas/baton/internal/sandbox"
)

func TestRing(t *testing.T) {
	var r ring
	if got := r.tail(10); len(got) != 0 {
		t.Errorf("empty tail = %q", got)
	}
	_, _ = r.Write([]byte("hello"))
	if got := string(r.tail(3)); got != "llo" {
		t.Errorf("tail(3) = %q", got)
	}
	if got := string(r.tail(100)); got != "hello" {
		t.Errorf("tail(100) = %q", got)
	}
	// Wrap around, in pieces and in one write bigger than the ring.
	var all bytes.Buffer
	for i := range 1000 {
		line := []byte(strings.Repeat(string(rune('a'+i%26)), i%13) + "\n")
		all.Write(line)
		_, _ = r.Write(line)
	}
	want := all.Bytes()[all.Len()-outputKeep:]
	if got := r.tail(outputKeep); !bytes.Equal(got, want) {
		t.Errorf("tail after wrapping differs")
	}
	big := bytes.Repeat([]byte("0123456789"), 1000)
	_, _ = r.Write(big)
	if got := r.tail(outputKeep + 10); !bytes.Equal(got, big[len(big)-outputKeep:]) {
		t.Errorf("tail after a big write differs")
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestOutputLogged checks a sandbox's output lines reach the logger at
// debug level.
func TestOutputLogged(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rt := newRuntime(t, Config{Logger: log})
	fn := script(t, "echo first line\necho second line >&2\nexec "+hello)
	if _, err := rt.Create(context.Background(), sandbox.Spec{ID: "log-1", Function: "log", Binary: fn}); err != nil {
		t.Fatal(err)
	}
	if err := rt.Delete(context.Background(), "log-1"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`sandbox=log-1 line="first line"`, `sandbox=log-1 line="second line"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %s:\n%s", want, logs.String())
		}
	}
}
