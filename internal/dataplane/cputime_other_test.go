//go:build !unix

package dataplane

import "time"

// cpuTime is not measured here: the cpu-ratio metric reads 0.
func cpuTime() time.Duration { return 0 }
