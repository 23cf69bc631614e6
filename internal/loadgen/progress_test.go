package loadgen

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a strings.Builder safe for the progress goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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

func TestProgressLine(t *testing.T) {
	counts := func() Counts { return Counts{Issued: 50, Done: 40, Failed: 2, Cold: 7} }
	p := &Progress{Label: "rps", Planned: 200, Length: 10 * time.Second, Counts: counts}
	if got, want := p.Line(3*time.Second), "rps  25% 3s/10s sent 50/200, answered 40, errors 2, cold 7"; got != want {
		t.Errorf("plain line %q, want %q", got, want)
	}
	p.Terminal, p.Width = true, 100
	if got := p.Line(3 * time.Second); !strings.HasPrefix(got, "["+strings.Repeat("=", 7)+strings.Repeat(" ", 23)+"] rps  25%") || len(got) >= 100 {
		t.Errorf("terminal line %q", got)
	}
	// A closed loop has no plan: progress by time.
	p = &Progress{Label: "closed", Length: 4 * time.Second, Counts: counts}
	if got := p.Line(time.Second); !strings.HasPrefix(got, "closed  25% 1s/4s sent 50,") {
		t.Errorf("closed-loop line %q", got)
	}
}

func TestProgressLines(t *testing.T) {
	var out syncBuffer
	p := &Progress{W: &out, Interval: 20 * time.Millisecond, Label: "x", Length: time.Second,
		Counts: func() Counts { return Counts{} }}
	p.Start(time.Now())
	time.Sleep(110 * time.Millisecond)
	p.Stop()
	p.Stop() // twice is harmless
	lines := strings.Count(out.String(), "\n")
	if lines < 2 || strings.Contains(out.String(), "\r") {
		t.Errorf("%d plain lines:\n%s", lines, out.String())
	}
	out = syncBuffer{}
	p = &Progress{W: &out, Terminal: true, Label: "x", Length: time.Second, Counts: func() Counts { return Counts{} }}
	p.Start(time.Now())
	p.Stop()
	if s := out.String(); !strings.HasPrefix(s, "\r\033[K[") || !strings.HasSuffix(s, "\n") {
		t.Errorf("terminal output %q", s)
	}
}
