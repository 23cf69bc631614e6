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
	err := rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			st = sockData
		case err == syscall.EAGAIN || err == syscall.EINTR:
		default: // 0 bytes: the peer closed; or an error
			st = sockClosed
		}
	})
	if err != nil {
		return sockClosed
	}
	return st
}

// spinFD polls fd without blocking until a read would not block (bytes
// came, the peer closed, the socket failed) or end has passed, and says
// whether a read would now return at once.
func spinFD(fd uintptr, end time.Time) bool {
	var b [1]byte
	for i := 0; ; i++ {
		_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if errno != syscall.EAGAIN && errno != syscall.EINTR {
			return true // bytes, or 0 for a close, or an error
		}
		if i&7 == 7 && time.Now().After(end) {
			return false
		}
	}
}
