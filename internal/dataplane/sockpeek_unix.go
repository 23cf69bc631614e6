//go:build unix

package dataplane

import (
	"syscall"
	"time"
	"unsafe"
)

// peek looks at a socket without reading from it or blocking: is the peer
// still there, and has it sent anything?
func peek(rc syscall.RawConn) sockState {
	if rc == nil {
		return sockIdle
	}
	st := sockIdle
	if err := rc.Control(func(fd uintptr) { st = peekFD(fd) }); err != nil {
		return sockClosed
	}
	return st
}

// peekFD peeks at one byte of fd without blocking: sockData, sockIdle
// (nothing yet), or sockClosed (the peer closed, or the socket failed). A
// raw system call: the busy-poller calls it in a loop.
func peekFD(fd uintptr) sockState {
	var b [1]byte
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	switch {
	case errno == syscall.EAGAIN || errno == syscall.EINTR:
		return sockIdle
	case errno == 0 && n > 0:
		return sockData
	}
	return sockClosed
}

// spinFD polls fd without blocking until a read would not block (bytes
// came, the peer closed, the socket failed) or end has passed, and says
// whether a read would now return at once.
func spinFD(fd uintptr, end time.Time) bool {
	for i := 0; ; i++ {
		if peekFD(fd) != sockIdle {
			return true
		}
		if i&7 == 7 && time.Now().After(end) {
			return false
		}
	}
}
