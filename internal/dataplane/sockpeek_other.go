//go:build !unix

package dataplane

import (
	"syscall"
	"time"
)

// peek cannot look at a socket here: it always says idle, so closes are
// seen only when the connection is used.
func peek(syscall.RawConn) sockState { return sockIdle }

// spinFD cannot poll a socket here: it says a read would block.
func spinFD(uintptr, time.Time) bool { return false }
