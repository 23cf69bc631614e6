//go:build unix

package dataplane

import "syscall"

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
