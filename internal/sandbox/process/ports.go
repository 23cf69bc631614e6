package process

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
)

// claimed holds the ports handed out by every Runtime in this process, so
// that two runtimes (emulated workers, parallel tests) never share one.
var claimed = struct {
	sync.Mutex
	m map[int]bool
}{m: map[int]bool{}}

// ports hands out the ports of a range, round robin so that a freed port is
// reused as late as possible.
//
// Ports in the kernel's ephemeral range (net.ipv4.ip_local_port_range) are
// used only when the rest of the range is taken: any outgoing connection on
// the host, the data plane's to the sandboxes included, may take one of
// them between the bind test and the function's own bind.
type ports struct {
	min, max           int
	ephemMin, ephemMax int // 0, 0 when unknown

	mu   sync.Mutex
	next int // offset into the range where the next search starts
}

func newPorts(min, max int) *ports {
	p := &ports{min: min, max: max, next: rand.IntN(max - min + 1)} // a random start spreads processes apart
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		_, _ = fmt.Sscan(string(b), &p.ephemMin, &p.ephemMax)
	}
	return p
}

// ephemeral reports whether port is in the kernel's ephemeral range.
func (p *ports) ephemeral(port int) bool {
	return port >= p.ephemMin && port <= p.ephemMax
}

// get returns a port that no runtime here holds and that binds right now.
func (p *ports) get() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.max - p.min + 1
	for _, allowEphemeral := range []bool{false, true} {
		for i := range n {
			off := (p.next + i) % n
			port := p.min + off
			if p.ephemeral(port) != allowEphemeral {
				continue
			}
			claimed.Lock()
			taken := claimed.m[port]
			claimed.m[port] = true
			claimed.Unlock()
			if taken {
				continue
			}
			if !bindable(port) {
				release(port)
				continue
			}
			p.next = (off + 1) % n
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port in %d-%d", p.min, p.max)
}

// release frees a port that get returned.
func release(port int) {
	claimed.Lock()
	delete(claimed.m, port)
	claimed.Unlock()
}

// bindable reports whether a function could listen on port now. It tests
// the wildcard address, as functions listen on ":$PORT": that bind
// conflicts with a socket on any address of the host.
func bindable(port int) bool {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}
