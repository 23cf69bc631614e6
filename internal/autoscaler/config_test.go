package autoscaler

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want []string // substrings of the error; none: valid
	}{
		{"default", func(*Config) {}, nil},
		{"bounded", func(c *Config) { c.MinScale, c.MaxScale = 2, 2 }, nil},
		{"min without max", func(c *Config) { c.MinScale = 50 }, nil},
		{"zero grace", func(c *Config) { c.ScaleToZeroGrace = 0 }, nil},
		{"utilization 1.5", func(c *Config) { c.TargetUtilization = 1.5 },
			[]string{"target utilization must be in (0, 1], got 1.5"}},
		{"utilization 0", func(c *Config) { c.TargetUtilization = 0 },
			[]string{"target utilization must be in (0, 1], got 0"}},
		{"utilization NaN", func(c *Config) { c.TargetUtilization = math.NaN() },
			[]string{"target utilization must be in (0, 1], got NaN"}},
		{"target 0", func(c *Config) { c.TargetConcurrency = 0 },
			[]string{"target concurrency must be a positive number, got 0"}},
		{"negative min", func(c *Config) { c.MinScale = -1 },
			[]string{"min scale must be >= 0, got -1"}},
		{"negative max", func(c *Config) { c.MaxScale = -1 },
			[]string{"max scale must be >= 0 (0 is unbounded), got -1"}},
		{"min above max", func(c *Config) { c.MinScale, c.MaxScale = 5, 3 },
			[]string{"min scale 5 must not exceed max scale 3"}},
		{"stable window", func(c *Config) { c.StableWindow = 0 },
			[]string{"stable window must be positive, got 0s"}},
		{"panic percent 0", func(c *Config) { c.PanicWindowPercent = 0 },
			[]string{"panic window percent must be in (0, 100], got 0"}},
		{"panic percent 101", func(c *Config) { c.PanicWindowPercent = 101 },
			[]string{"panic window percent must be in (0, 100], got 101"}},
		{"panic window rounds to zero", func(c *Config) { c.StableWindow, c.PanicWindowPercent = 5, 10 },
			[]string{"panic window (10% of 5ns) rounds to zero"}},
		{"panic threshold 100", func(c *Config) { c.PanicThresholdPercent = 100 },
			[]string{"panic threshold percent must be > 100, got 100"}},
		{"scale up rate", func(c *Config) { c.MaxScaleUpRate = 0.5 },
			[]string{"max scale up rate must be >= 1, got 0.5"}},
		{"scale down rate", func(c *Config) { c.MaxScaleDownRate = 0 },
			[]string{"max scale down rate must be >= 1, got 0"}},
		{"infinite rate", func(c *Config) { c.MaxScaleDownRate = math.Inf(1) },
			[]string{"max scale down rate must be >= 1, got +Inf"}},
		{"negative grace", func(c *Config) { c.ScaleToZeroGrace = -time.Second },
			[]string{"scale to zero grace must be >= 0, got -1s"}},
		{"zero config reports everything", func(c *Config) { *c = Config{} }, []string{
			"target concurrency", "target utilization", "stable window", "panic window percent",
			"panic threshold", "max scale up rate", "max scale down rate",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := DefaultConfig()
			tc.edit(&c)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestPanicWindow(t *testing.T) {
	t.Parallel()
	if got := DefaultConfig().PanicWindow(); got != 6*time.Second {
		t.Errorf("default panic window = %v, want 6s", got)
	}
	c := Config{StableWindow: 90 * time.Second, PanicWindowPercent: 100}
	if got := c.PanicWindow(); got != 90*time.Second {
		t.Errorf("100%% panic window = %v, want 90s", got)
	}
}
