package autoscaler

import (
	"fmt"
	"testing"
	"time"
)

// t0 is the fake clock's origin, on a whole second.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	tick   = 2 * time.Second        // decision period
	report = 100 * time.Millisecond // data-plane report period
)

// step is n decision ticks (1 if n is 0). Before each tick, two data planes
// each report load/2 every 100 ms for the 2 s since the previous tick.
// Each tick must decide want (and panic).
type step struct {
	n     int
	load  float64
	ready int32 // Ready at these ticks, unless the script follows desired
	want  int32
	panic bool
}

type script struct {
	name   string
	cfg    Config
	follow bool  // Ready is the previous tick's desired (instant creation)
	ready0 int32 // Ready at the first tick when following
	steps  []step
}

// run replays s through a Window and Decide with a fake clock.
func run(t *testing.T, s script) {
	t.Helper()
	if err := s.cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	w := NewWindow(time.Second, s.cfg.StableWindow)
	var st State
	now := t0
	ready := s.ready0
	tickNo := 0
	for i, sp := range s.steps {
		for range max(sp.n, 1) {
			tickNo++
			for range tick / report {
				now = now.Add(report)
				w.Record(now, sp.load/2, report)
				w.Record(now, sp.load/2, report)
			}
			if !s.follow {
				ready = sp.ready
			}
			in := Input{
				Now:               now,
				Ready:             ready,
				StableConcurrency: w.Average(now, s.cfg.StableWindow),
				PanicConcurrency:  w.Average(now, s.cfg.PanicWindow()),
				Active:            sp.load > 0,
			}
			d := Decide(s.cfg, in, st)
			if d.Desired != sp.want || d.Panic != sp.panic {
				t.Fatalf("step %d, tick %d (t=%v): input %+v: got desired %d panic %v, want %d panic %v",
					i, tickNo, now.Sub(t0), fmtInput(in), d.Desired, d.Panic, sp.want, sp.panic)
			}
			st = d.State
			ready = d.Desired
		}
	}
}

func fmtInput(in Input) string {
	return fmt.Sprintf("{ready %d stable %.3f panic %.3f active %v}",
		in.Ready, in.StableConcurrency, in.PanicConcurrency, in.Active)
}

func cfgWith(f func(*Config)) Config {
	c := DefaultConfig()
	f(&c)
	return c
}

func TestScripts(t *testing.T) {
	t.Parallel()
	for _, s := range []script{
		{
			// The stable window is shortened to the time since load began,
			// so a new function gets its full estimate at once; after that
			// the 60 s average follows a rise step by step (below panic).
			name: "scale up", cfg: DefaultConfig(), follow: true,
			steps: []step{
				{load: 5, want: 5},        // t=2: shortened window: stable 5; Ready 0 never panics
				{n: 4, load: 5, want: 5},  // t=4..10
				{load: 8, want: 6},        // t=12: stable 66/12=5.5; panic 36/6=6 is 1.2x Ready
				{load: 8, want: 6},        // t=14: stable 82/14=5.86
				{n: 8, load: 8, want: 7},  // t=16..30: stable 98/16 .. 210/30=7
				{n: 20, load: 8, want: 8}, // t=32..70: stable 226/32=7.06 .. 8
			},
		},
		{
			// A burst to 5x the load: the panic estimate reaches 2x Ready,
			// the count only rises while in panic, and panic ends on the
			// first tick 60 s after the estimate was last over the
			// threshold; then the scale-down rate (2x) applies.
			name: "panic", cfg: DefaultConfig(), follow: true, ready0: 2,
			steps: []step{
				{n: 5, load: 2, want: 2},                // t=2..10
				{load: 10, want: 5, panic: true},        // t=12: panic 28/6=4.67 -> 5, 2.5x Ready: enter
				{load: 10, want: 8, panic: true},        // t=14: panic 44/6=7.33 -> 8 (1.6x: below, but stays)
				{n: 3, load: 10, want: 10, panic: true}, // t=16..20
				{n: 25, load: 1, want: 10, panic: true}, // t=22..70: load drops, no scale down in panic
				{load: 1, want: 5},                      // t=72: 60 s after t=12: leave; stable 132/60 -> 3, rate limits to 10/2
				{load: 1, want: 2},                      // t=74: stable 1.9 -> 2
				{n: 2, load: 1, want: 2},                // t=76,78: stable 1.6, 1.3 -> 2
				{n: 2, load: 1, want: 1},                // t=80,82: stable 1.0 (the burst left the window)
			},
		},
		{
			// No load at all: each tick may halve the count (floor), and a
			// function that never saw load needs no grace.
			name: "scale down rate", cfg: DefaultConfig(), follow: true, ready0: 10,
			steps: []step{
				{want: 5},
				{want: 2},
				{want: 1},
				{n: 3, want: 0},
			},
		},
		{
			name: "scale down rate with load", cfg: DefaultConfig(), follow: true, ready0: 10,
			steps: []step{
				{load: 1, want: 5},
				{load: 1, want: 2},
				{n: 3, load: 1, want: 1},
			},
		},
		{
			// A 10 s stable window so that the estimate reaches 0 well
			// before the 30 s grace ends.
			name:   "scale to zero after grace",
			cfg:    cfgWith(func(c *Config) { c.StableWindow = 10 * time.Second }),
			follow: true,
			steps: []step{
				{n: 5, load: 1, want: 1}, // t=2..10: load seen last at t=10
				{n: 4, want: 1},          // t=12..18: stable 0.8 .. 0.2
				{n: 10, want: 1},         // t=20..38: stable 0, within grace
				{n: 3, want: 0},          // t=40..44: 30 s after t=10
			},
		},
		{
			name: "min and max scale",
			cfg: cfgWith(func(c *Config) {
				c.MinScale, c.MaxScale = 2, 4
			}),
			follow: true,
			steps: []step{
				{n: 2, want: 2},                        // t=2,4: no load, min 2
				{n: 2, load: 10, want: 4, panic: true}, // t=6,8: 10 wanted, 5x then 2.5x Ready: panic, capped at 4
				{n: 29, want: 4, panic: true},          // t=10..66: panic holds
				{want: 2},                              // t=68: 60 s after t=8: leave, stable 0, rate allows 2
				{n: 3, want: 2},                        // t=70..74: rate allows 1, min keeps 2
			},
		},
		{
			// Knative's own default target: 10 requests at 70 %: 7 per sandbox.
			name: "target 10 at 70%",
			cfg: cfgWith(func(c *Config) {
				c.TargetConcurrency, c.TargetUtilization = 10, 0.7
			}),
			follow: true,
			steps: []step{
				{n: 5, load: 35, want: 5},                // t=2..10: 35/7
				{load: 140, want: 10, panic: true},       // t=12: panic 420/6=70 -> 10 = 2x Ready
				{load: 140, want: 15, panic: true},       // t=14: panic 630/6=105 -> 15
				{n: 2, load: 140, want: 20, panic: true}, // t=16,18: 140/7
			},
		},
	} {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			run(t, s)
		})
	}
}
