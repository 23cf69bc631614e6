package autoscaler

import (
	"math"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	t.Parallel()
	now := t0.Add(time.Hour)
	def := DefaultConfig()
	for _, tc := range []struct {
		name      string
		cfg       Config
		in        Input
		st        State
		want      int32
		wantPanic bool
		wantState State
	}{
		{
			name: "idle function stays at zero",
			cfg:  def, in: Input{Now: now},
			want: 0,
		},
		{
			name: "stable estimate",
			cfg:  def, in: Input{Now: now, Ready: 4, StableConcurrency: 4.2, PanicConcurrency: 4.2},
			want: 5,
		},
		{
			name: "floating-point noise does not add a sandbox",
			cfg:  def, in: Input{Now: now, Ready: 1, StableConcurrency: 1.0000000000000002, PanicConcurrency: 1},
			want: 1,
		},
		{
			name: "no panic at zero ready: estimate used as is",
			cfg:  def, in: Input{Now: now, StableConcurrency: 50, PanicConcurrency: 80, Active: true},
			want:      50,
			wantState: State{LastActive: now},
		},
		{
			name: "panic at zero ready continues and is renewed",
			cfg:  def, in: Input{Now: now, StableConcurrency: 5, PanicConcurrency: 8},
			st:        State{PanicSince: now.Add(-10 * time.Second), MaxPanicScale: 6},
			want:      8,
			wantPanic: true,
			wantState: State{PanicSince: now, MaxPanicScale: 8},
		},
		{
			name: "enter panic at exactly the threshold",
			cfg:  def, in: Input{Now: now, Ready: 3, StableConcurrency: 3, PanicConcurrency: 6},
			want:      6,
			wantPanic: true,
			wantState: State{PanicSince: now, MaxPanicScale: 6},
		},
		{
			name: "one sandbox below the threshold: no panic (5.9 would round up to 6)",
			cfg:  def, in: Input{Now: now, Ready: 3, StableConcurrency: 3, PanicConcurrency: 5},
			want: 3,
		},
		{
			name: "scale-up rate limits both estimates",
			cfg:  cfgWith(func(c *Config) { c.MaxScaleUpRate = 2 }),
			in:   Input{Now: now, Ready: 1, StableConcurrency: 100, PanicConcurrency: 100},
			want: 2, wantPanic: true,
			wantState: State{PanicSince: now, MaxPanicScale: 2},
		},
		{
			name: "in panic: never below earlier panic count",
			cfg:  def, in: Input{Now: now, Ready: 10, StableConcurrency: 1, PanicConcurrency: 1},
			st:   State{PanicSince: now.Add(-30 * time.Second), MaxPanicScale: 12},
			want: 12, wantPanic: true,
			wantState: State{PanicSince: now.Add(-30 * time.Second), MaxPanicScale: 12},
		},
		{
			name: "in panic: never below ready",
			cfg:  def, in: Input{Now: now, Ready: 20, StableConcurrency: 1, PanicConcurrency: 1},
			st:   State{PanicSince: now.Add(-30 * time.Second), MaxPanicScale: 12},
			want: 20, wantPanic: true,
			wantState: State{PanicSince: now.Add(-30 * time.Second), MaxPanicScale: 20},
		},
		{
			name: "in panic: stable estimate above panic estimate wins",
			cfg:  def, in: Input{Now: now, Ready: 10, StableConcurrency: 30, PanicConcurrency: 11},
			st:   State{PanicSince: now.Add(-30 * time.Second), MaxPanicScale: 12},
			want: 30, wantPanic: true,
			wantState: State{PanicSince: now.Add(-30 * time.Second), MaxPanicScale: 30},
		},
		{
			name: "panic ends exactly one stable window after the last renewal",
			cfg:  def, in: Input{Now: now, Ready: 10, StableConcurrency: 3, PanicConcurrency: 3},
			st:   State{PanicSince: now.Add(-60 * time.Second), MaxPanicScale: 12},
			want: 5, // rate-limited from 10
		},
		{
			name: "panic does not end while over the threshold",
			cfg:  def, in: Input{Now: now, Ready: 10, StableConcurrency: 3, PanicConcurrency: 25},
			st:   State{PanicSince: now.Add(-90 * time.Second), MaxPanicScale: 12},
			want: 25, wantPanic: true,
			wantState: State{PanicSince: now, MaxPanicScale: 25},
		},
		{
			name: "grace keeps one sandbox",
			cfg:  def, in: Input{Now: now, Ready: 1},
			st:        State{LastActive: now.Add(-29 * time.Second)},
			want:      1,
			wantState: State{LastActive: now.Add(-29 * time.Second)},
		},
		{
			name: "grace over",
			cfg:  def, in: Input{Now: now, Ready: 1},
			st:        State{LastActive: now.Add(-30 * time.Second)},
			want:      0,
			wantState: State{LastActive: now.Add(-30 * time.Second)},
		},
		{
			name: "activity without concurrency keeps one sandbox",
			cfg:  def, in: Input{Now: now, Ready: 1, Active: true},
			st:        State{LastActive: now.Add(-time.Hour)},
			want:      1,
			wantState: State{LastActive: now},
		},
		{
			name: "zero grace scales to zero at once",
			cfg:  cfgWith(func(c *Config) { c.ScaleToZeroGrace = 0 }),
			in:   Input{Now: now, Ready: 1, Active: true},
			want: 0, wantState: State{LastActive: now},
		},
		{
			name: "min scale",
			cfg:  cfgWith(func(c *Config) { c.MinScale = 3 }),
			in:   Input{Now: now, Ready: 3},
			want: 3,
		},
		{
			name: "max scale",
			cfg:  cfgWith(func(c *Config) { c.MaxScale = 3 }),
			in:   Input{Now: now, Ready: 3, StableConcurrency: 5, PanicConcurrency: 5},
			want: 3,
		},
		{
			name: "target 10 at 70%",
			cfg:  cfgWith(func(c *Config) { c.TargetConcurrency, c.TargetUtilization = 10, 0.7 }),
			in:   Input{Now: now, Ready: 6, StableConcurrency: 36, PanicConcurrency: 36},
			want: 6, // 36/7 = 5.14
		},
		{
			name: "saturates instead of overflowing",
			cfg:  def, in: Input{Now: now, Ready: math.MaxInt32, StableConcurrency: 1e300, PanicConcurrency: 1e300},
			want: math.MaxInt32, wantPanic: true,
			wantState: State{PanicSince: now, MaxPanicScale: math.MaxInt32},
		},
		{
			name: "NaN and negative concurrency count as none",
			cfg:  def, in: Input{Now: now, Ready: 2, StableConcurrency: math.NaN(), PanicConcurrency: -4},
			want: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if err := tc.cfg.Validate(); err != nil {
				t.Fatalf("config: %v", err)
			}
			d := Decide(tc.cfg, tc.in, tc.st)
			if d.Desired != tc.want || d.Panic != tc.wantPanic {
				t.Errorf("got desired %d panic %v, want %d panic %v", d.Desired, d.Panic, tc.want, tc.wantPanic)
			}
			if d.State != tc.wantState {
				t.Errorf("state:\n got %+v\nwant %+v", d.State, tc.wantState)
			}
		})
	}
}

func TestFromZero(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		cfg    Config
		queued int32
		want   int32
	}{
		{"one request", DefaultConfig(), 1, 1},
		{"nothing queued still asks for one", DefaultConfig(), 0, 1},
		{"negative counts as none", DefaultConfig(), -3, 1},
		{"one per request", DefaultConfig(), 17, 17},
		{"target 10 at 70%", cfgWith(func(c *Config) { c.TargetConcurrency, c.TargetUtilization = 10, 0.7 }), 36, 6},
		{"min scale", cfgWith(func(c *Config) { c.MinScale = 3 }), 1, 3},
		{"max scale", cfgWith(func(c *Config) { c.MaxScale = 4 }), 100, 4},
		{"scale-up rate from one", cfgWith(func(c *Config) { c.MaxScaleUpRate = 10 }), 100, 10},
		{"fractional rate rounds up", cfgWith(func(c *Config) { c.MaxScaleUpRate = 2.5 }), 100, 3},
		{"min scale above the rate wins", cfgWith(func(c *Config) { c.MaxScaleUpRate, c.MinScale = 2, 5 }), 100, 5},
		{"large queue", DefaultConfig(), math.MaxInt32, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := FromZero(tc.cfg, tc.queued); got != tc.want {
				t.Errorf("FromZero(%d) = %d, want %d", tc.queued, got, tc.want)
			}
		})
	}
}
