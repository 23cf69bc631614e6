//go:build !unix

package benchloop

import "time"

// SelfCPU is not measured here: 0.
func SelfCPU() time.Duration { return 0 }

// ProcCPU is not measured here: 0.
func ProcCPU(pid int) time.Duration { return 0 }
