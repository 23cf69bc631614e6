package process

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// procNetTCP and procNetTCP6 are /proc/net/tcp and tcp6 as an amd64 host
// prints them (words in little-endian order).
const (
	procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:7530 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 00000000:7530 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0100007F:7531 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0000000000000000 100 0 0 10 0
   3: 0100007F:7530 0100007F:A4C2 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
   4: 020200C0:9FFA 507100CB:01BB 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
`
	procNetTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:7530 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:7530 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:7531 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
   3: 0000000000000000FFFF00000100007F:7530 0000000000000000FFFF00000100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2004 1 0000000000000000 20 4 30 10 -1
`
)

func littleEndian() bool { return binary.NativeEndian.Uint16([]byte{1, 0}) == 1 }

func TestParseProcNetTCP(t *testing.T) {
	if !littleEndian() {
		t.Skip("the sample text is a little-endian host's; this one is big-endian")
	}
	a := netip.MustParseAddr
	tests := []struct {
		name string
		text string
		port int
		want []procListener
	}{
		{"ipv4", procNetTCP, 30000, []procListener{{a("127.0.0.1"), 1001}, {a("0.0.0.0"), 1002}}},
		{"ipv4 another port", procNetTCP, 30001, []procListener{{a("127.0.0.1"), 1003}}},
		{"ipv6", procNetTCP6, 30000, []procListener{{a("::"), 2001}, {a("::1"), 2002}}},
		{"ipv6 another port", procNetTCP6, 30001, []procListener{{a("::ffff:127.0.0.1"), 2003}}},
		{"no listener", procNetTCP, 30002, nil},
		{"header only", "  sl  local_address rem_address   st\n", 30000, nil},
	}
	for _, tc := range tests {
		got, err := parseProcNetTCP(strings.NewReader(tc.text), tc.port)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	for _, bad := range []string{ // listeners of port 30000 (hex 7530), each malformed
		"   0: 0100007:7530 00000000:0000 0A 0 0 0 0 0 1001 1",
		"   0: 0100007F:75300 00000000:0000 0A 0 0 0 0 0 1001 1",
		"   0: 0100007F 00000000:0000 0A 0 0 0 0 0 1001 1",
		"   0: 0100007F:7530 00000000:0000 0A 0 0 0 0 0 x 1",
	} {
		if got, err := parseProcNetTCP(strings.NewReader("header\n"+bad+"\n"), 30000); err == nil {
			t.Errorf("%q parsed as %v, want an error", bad, got)
		}
	}
}

func TestReachable(t *testing.T) {
	l := func(addr string, inode uint64) procListener {
		return procListener{addr: netip.MustParseAddr(addr), inode: inode}
	}
	exact4, any4, exact6, any6 := l("127.0.0.1", 1), l("0.0.0.0", 2), l("::1", 3), l("::", 4)
	mapped, other := l("::ffff:127.0.0.1", 5), l("10.1.2.3", 6)
	tests := []struct {
		name string
		ls   []procListener
		host string
		want []uint64
	}{
		{"nothing", nil, "127.0.0.1", nil},
		{"dual-stack wildcard", []procListener{any6}, "127.0.0.1", []uint64{4}},
		{"exact before wildcard", []procListener{any6, any4, exact4}, "127.0.0.1", []uint64{1}},
		{"ipv4 before ipv6", []procListener{any6, any4}, "127.0.0.1", []uint64{2}},
		{"ipv4-mapped is exact", []procListener{any4, mapped}, "127.0.0.1", []uint64{5}},
		{"ipv4 exact before mapped", []procListener{mapped, exact4}, "127.0.0.1", []uint64{1}},
		{"other address unreachable", []procListener{other, exact6}, "127.0.0.1", nil},
		{"reuseport group", []procListener{exact4, other, l("127.0.0.1", 7)}, "127.0.0.1", []uint64{1, 7}},
		{"ipv6 host", []procListener{any4, any6, exact6}, "::1", []uint64{3}},
		{"ipv6 host ignores 0.0.0.0", []procListener{any4}, "::1", nil},
		{"mapped host", []procListener{any4, exact4}, "::ffff:127.0.0.1", []uint64{1}},
	}
	for _, tc := range tests {
		if got := reachable(tc.ls, netip.MustParseAddr(tc.host)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSocketLink(t *testing.T) {
	for link, want := range map[string]uint64{
		"socket:[12345]": 12345,
		"socket:[]":      0,
		"pipe:[12345]":   0,
		"/dev/null":      0,
		"socket:[12":     0,
	} {
		if got, ok := socketLink(link); got != want || ok != (want != 0) {
			t.Errorf("socketLink(%q) = %d, %v; want %d", link, got, ok, want)
		}
	}
}

// TestListenerFinders checks sock_diag and /proc against real listeners:
// both must name the socket a connection reaches, and nothing for a port
// nobody listens on.
func TestListenerFinders(t *testing.T) {
	if _, how := newListenerFinder(); how != "sock_diag" {
		t.Logf("this kernel does not answer sock_diag; only %s is tested", how)
	}
	tests := []struct {
		network, addr string
		host          string // dialled
	}{
		{"tcp4", "127.0.0.1:0", "127.0.0.1"},
		{"tcp4", "0.0.0.0:0", "127.0.0.1"},
		{"tcp", ":0", "127.0.0.1"}, // dual stack, as functions listen
		{"tcp6", "[::1]:0", "::1"},
		{"tcp", ":0", "::1"},
	}
	for _, tc := range tests {
		l, err := net.Listen(tc.network, tc.addr)
		if err != nil {
			if strings.Contains(tc.addr, "::") || tc.host == "::1" {
				t.Logf("%s %s: %v (no IPv6?)", tc.network, tc.addr, err)
				continue
			}
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		want, err := socketInode(l.(*net.TCPListener))
		if err != nil {
			t.Fatal(err)
		}
		host := netip.MustParseAddr(tc.host)
		name := fmt.Sprintf("%s %s dialled on %s", tc.network, l.Addr(), tc.host)
		for _, f := range testFinders() {
			got, err := f.find(host, port)
			if err != nil || !slices.Equal(got, []uint64{want}) {
				t.Errorf("%s: %s found %v, %v; want [%d]", name, f.name, got, err, want)
			}
		}
		l.Close()
		for _, f := range testFinders() {
			if got, err := f.find(host, port); err != nil || len(got) != 0 {
				t.Errorf("%s, closed: %s found %v, %v; want nothing", name, f.name, got, err)
			}
		}
	}
}

// TestListenerFindersPreferExact checks that both finders pick the socket
// the kernel gives a connection when a wildcard and an exact listener share
// a port (SO_REUSEPORT lets them): the exact one.
func TestListenerFindersPreferExact(t *testing.T) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return cmp.Or(err, serr)
	}}
	wild, err := lc.Listen(t.Context(), "tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer wild.Close()
	port := wild.Addr().(*net.TCPAddr).Port
	exact, err := lc.Listen(t.Context(), "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer exact.Close()
	want, err := socketInode(exact.(*net.TCPListener))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range testFinders() {
		got, err := f.find(netip.MustParseAddr("127.0.0.1"), port)
		if err != nil || !slices.Equal(got, []uint64{want}) {
			t.Errorf("%s found %v, %v; want the exact listener [%d]", f.name, got, err, want)
		}
	}
	// A connection does reach the exact one.
	c, err := net.Dial("tcp", exact.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exact.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	if a, err := exact.Accept(); err != nil {
		t.Errorf("the exact listener did not get the connection: %v", err)
	} else {
		a.Close()
	}
}
