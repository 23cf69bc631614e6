package loadgen

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Progress shows a run's progress: a bar redrawn in place on a terminal,
// a plain line every Interval otherwise.
type Progress struct {
	W        io.Writer
	Terminal bool          // redraw one line with a bar
	Width    int           // terminal width (default 80)
	Interval time.Duration // between lines when not on a terminal (default 5s; a terminal redraws every 200ms)
	Label    string
	Planned  int           // requests planned; 0: progress by time
	Length   time.Duration // the run's planned length
	Counts   func() Counts

	stop chan struct{}
	wg   sync.WaitGroup
}

// Start shows progress until Stop; start is when the run began.
func (p *Progress) Start(start time.Time) {
	p.stop = make(chan struct{})
	every := p.Interval
	if every <= 0 {
		every = 5 * time.Second
	}
	if p.Terminal {
		every = 200 * time.Millisecond
	}
	p.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				p.draw(time.Since(start), true)
				return
			case <-t.C:
				p.draw(time.Since(start), false)
			}
		}
	})
}

// Stop draws the final state and waits for the drawing to end.
func (p *Progress) Stop() {
	if p.stop == nil {
		return
	}
	close(p.stop)
	p.wg.Wait()
	p.stop = nil
}

func (p *Progress) draw(elapsed time.Duration, final bool) {
	if !p.Terminal && final {
		return // the summary follows
	}
	line := p.Line(elapsed)
	if !p.Terminal {
		fmt.Fprintln(p.W, line)
		return
	}
	end := ""
	if final {
		end = "\n"
	}
	fmt.Fprintf(p.W, "\r\033[K%s%s", line, end)
}

// Line renders the progress after elapsed; on a terminal it starts with a
// bar.
func (p *Progress) Line(elapsed time.Duration) string {
	c := p.Counts()
	frac := 0.0
	if p.Length > 0 {
		frac = elapsed.Seconds() / p.Length.Seconds()
	}
	if p.Planned > 0 {
		frac = float64(c.Issued) / float64(p.Planned)
	}
	frac = min(max(frac, 0), 1)
	el, total := elapsed.Truncate(time.Second), p.Length.Truncate(time.Second)
	var b strings.Builder
	if p.Terminal {
		w := p.Width
		if w <= 0 {
			w = 80
		}
		barW := min(max(w-70, 10), 40)
		full := int(frac * float64(barW))
		b.WriteString("[" + strings.Repeat("=", full) + strings.Repeat(" ", barW-full) + "] ")
	}
	fmt.Fprintf(&b, "%s %3.0f%% %s/%s sent %d", p.Label, 100*frac, el, total, c.Issued)
	if p.Planned > 0 {
		fmt.Fprintf(&b, "/%d", p.Planned)
	}
	fmt.Fprintf(&b, ", answered %d, errors %d, cold %d", c.Done, c.Failed, c.Cold)
	s := b.String()
	if p.Terminal && p.Width > 0 && len(s) >= p.Width {
		s = s[:p.Width-1]
	}
	return s
}
