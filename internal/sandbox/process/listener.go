package process

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Sandboxes share the host's network, so the port a sandbox is given can be
// taken by another process (another worker, a test binary) between the
// allocator's bind test and the function's own bind. A connection to the
// port then proves nothing: readiness also asks the kernel which listening
// socket a connection to Host:port reaches, and checks that a process of
// the sandbox holds it (owner.go).
//
// The kernel answers through sock_diag, an exact lookup that costs a few
// microseconds. /proc/net/tcp and tcp6 say the same, but reading either
// walks the whole established hash table (262144 buckets on a small VM:
// 4-7 ms per file, as much again as a cold start), so they are only the
// fallback for kernels built without sock_diag.

// listenerFinder returns the inodes of the listening sockets a TCP
// connection to host:port may reach: none when nothing listens there. Only
// the /proc finder returns more than one, for sockets that share the port
// with SO_REUSEPORT; sock_diag names the one its lookup picks.
type listenerFinder func(host netip.Addr, port int) ([]uint64, error)

// newListenerFinder returns the sock_diag finder if this kernel answers it
// (it looks up a listener of its own to tell "no such socket" from "no
// sock_diag", which the kernel reports alike), else the /proc one.
func newListenerFinder() (finder listenerFinder, name string) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return procListeners, "/proc/net/tcp"
	}
	defer l.Close()
	addr := l.Addr().(*net.TCPAddr).AddrPort()
	inodes, err := diagListeners(addr.Addr(), int(addr.Port()))
	if err != nil || len(inodes) != 1 {
		return procListeners, "/proc/net/tcp"
	}
	if want, err := socketInode(l.(*net.TCPListener)); err != nil || want != inodes[0] {
		return procListeners, "/proc/net/tcp"
	}
	return diagListeners, "sock_diag"
}

// socketInode returns the socket inode of l.
func socketInode(l *net.TCPListener) (uint64, error) {
	raw, err := l.SyscallConn()
	if err != nil {
		return 0, err
	}
	var st syscall.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil {
		return 0, err
	}
	return st.Ino, serr
}

// sock_diag (linux/sock_diag.h, linux/inet_diag.h).
const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	nlmsgHdrLen      = 16 // struct nlmsghdr
	diagReqLen       = 56 // struct inet_diag_req_v2
	diagMsgLen       = 72 // struct inet_diag_msg
	tcpListen        = 10 // TCP_LISTEN
)

// diagListeners asks sock_diag for the socket that a TCP connection to
// host:port reaches. It sends an exact request (not a dump), which the
// kernel serves with its own lookup for an incoming connection, from a
// remote 0.0.0.0:0 that matches no established socket: so the answer is
// the listener the connection would get, exact address before wildcard.
func diagListeners(host netip.Addr, port int) ([]uint64, error) {
	host = host.Unmap()
	family := syscall.AF_INET
	if host.Is6() {
		family = syscall.AF_INET6
	}
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, syscall.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer syscall.Close(fd)
	// The reply is queued before sendto returns; the timeout is a backstop.
	tv := syscall.NsecToTimeval(int64(time.Second))
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)

	var req [nlmsgHdrLen + diagReqLen]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))      // nlmsg_len
	ne.PutUint16(req[4:], sockDiagByFamily)      // nlmsg_type
	ne.PutUint16(req[6:], syscall.NLM_F_REQUEST) // nlmsg_flags
	ne.PutUint32(req[8:], 1)                     // nlmsg_seq
	r := req[nlmsgHdrLen:]
	r[0] = byte(family)                             // sdiag_family
	r[1] = syscall.IPPROTO_TCP                      // sdiag_protocol
	ne.PutUint32(r[4:], 1<<tcpListen)               // idiag_states (a dump's filter)
	binary.BigEndian.PutUint16(r[8:], uint16(port)) // id.idiag_sport
	// id.idiag_src; idiag_dport, idiag_dst and idiag_if stay 0.
	if host.Is4() {
		a := host.As4()
		copy(r[12:], a[:])
	} else {
		a := host.As16()
		copy(r[12:], a[:])
	}
	ne.PutUint32(r[48:], ^uint32(0)) // id.idiag_cookie: INET_DIAG_NOCOOKIE
	ne.PutUint32(r[52:], ^uint32(0))
	if err := syscall.Sendto(fd, req[:], 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	var buf [1024]byte
	n, _, err := syscall.Recvfrom(fd, buf[:], 0)
	if err != nil {
		return nil, fmt.Errorf("sock_diag reply: %w", err)
	}
	return parseDiagReply(buf[:n])
}

// parseDiagReply reads the answer to an exact sock_diag request: one
// inet_diag_msg, or an error message where ENOENT means no such socket.
func parseDiagReply(b []byte) ([]uint64, error) {
	ne := binary.NativeEndian
	if len(b) < nlmsgHdrLen {
		return nil, fmt.Errorf("sock_diag reply: %d bytes", len(b))
	}
	switch typ := ne.Uint16(b[4:]); typ {
	case syscall.NLMSG_ERROR:
		if len(b) < nlmsgHdrLen+4 {
			return nil, errors.New("sock_diag reply: short error message")
		}
		errno := syscall.Errno(-int32(ne.Uint32(b[nlmsgHdrLen:])))
		if errno == syscall.ENOENT {
			return nil, nil
		}
		return nil, fmt.Errorf("sock_diag: %w", errno)
	case sockDiagByFamily:
		if len(b) < nlmsgHdrLen+diagMsgLen {
			return nil, fmt.Errorf("sock_diag reply: %d bytes, want at least %d", len(b), nlmsgHdrLen+diagMsgLen)
		}
		m := b[nlmsgHdrLen:]
		if m[1] != tcpListen { // idiag_state
			return nil, nil
		}
		return []uint64{uint64(ne.Uint32(m[68:]))}, nil // idiag_inode
	default:
		return nil, fmt.Errorf("sock_diag reply: unexpected message type %d", typ)
	}
}

// procListeners finds the listeners of host:port in /proc/net/tcp and
// /proc/net/tcp6, choosing among them as the kernel's lookup does.
func procListeners(host netip.Addr, port int) ([]uint64, error) {
	var all []procListener
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) && path == "/proc/net/tcp6" {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		ls, err := parseProcNetTCP(f, port)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		all = append(all, ls...)
	}
	return reachable(all, host), nil
}

// procListener is a LISTEN line of /proc/net/tcp or tcp6.
type procListener struct {
	addr  netip.Addr // 16 bytes (perhaps IPv4-mapped) for an IPv6 socket
	inode uint64
}

// parseProcNetTCP returns the listening sockets on port from the text of /proc/net/tcp or tcp6. An address is printed as the hex
// of its 32-bit words as the host stores them, the port as plain hex:
//
//	sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//	 0: 0100007F:7530 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 ...
func parseProcNetTCP(r io.Reader, port int) ([]procListener, error) {
	var out []procListener
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := bytes.Fields(sc.Bytes())
		if len(f) < 10 || string(f[3]) != "0A" { // st: TCP_LISTEN
			continue
		}
		hexAddr, hexPort, ok := bytes.Cut(f[1], []byte(":"))
		if !ok {
			return nil, fmt.Errorf("bad local address %q", f[1])
		}
		p, err := strconv.ParseUint(string(hexPort), 16, 16)
		if err != nil {
			return nil, fmt.Errorf("bad local address %q", f[1])
		}
		if int(p) != port {
			continue
		}
		addr, err := parseProcAddr(string(hexAddr))
		if err != nil {
			return nil, err
		}
		inode, err := strconv.ParseUint(string(f[9]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bad inode %q", f[9])
		}
		out = append(out, procListener{addr: addr, inode: inode})
	}
	return out, sc.Err()
}

// parseProcAddr decodes the 8 (IPv4) or 32 (IPv6) hex digits of an address.
func parseProcAddr(h string) (netip.Addr, error) {
	if len(h) != 8 && len(h) != 32 {
		return netip.Addr{}, fmt.Errorf("bad address %q", h)
	}
	var b [16]byte
	for i := 0; i < len(h); i += 8 {
		w, err := strconv.ParseUint(h[i:i+8], 16, 32)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("bad address %q", h)
		}
		binary.NativeEndian.PutUint32(b[i/2:], uint32(w))
	}
	if len(h) == 8 {
		return netip.AddrFrom4([4]byte(b[:4])), nil
	}
	return netip.AddrFrom16(b), nil
}

// reachable picks from the listeners of one port those a connection to
// host reaches, in the kernel's order: a socket bound to host before a
// wildcard one, an IPv4 socket before an IPv6 one. All of the best rank are
// returned (SO_REUSEPORT shares a port among them). /proc does not show
// IPV6_V6ONLY, so an IPv6 wildcard socket is assumed to take IPv4 too.
func reachable(ls []procListener, host netip.Addr) []uint64 {
	host = host.Unmap()
	best := -1
	var out []uint64
	for _, l := range ls {
		rank := 0
		switch a := l.addr.Unmap(); {
		case a == host:
		case a.IsUnspecified() && (host.Is4() || a.Is6()):
			rank = 2 // 0.0.0.0 takes no IPv6; :: takes both
		default:
			continue
		}
		if l.addr.Is6() {
			rank++
		}
		switch {
		case best == -1 || rank < best:
			best, out = rank, append(out[:0], l.inode)
		case rank == best:
			out = append(out, l.inode)
		}
	}
	return out
}
