package process

import (
	"fmt"
	"math/rand/v2"
	"net"
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
type ports struct {
	host     string
	min, max int

	mu   sync.Mutex
	next int // offset into the range where the next search starts
}

func newPorts(host string, min, max int) *ports {
	// A random start spreads runtimes in different processes apart.
	return &ports{host: host, min: min, max: max, next: rand.IntN(max - min + 1)}
}

// get returns a port that no runtime here holds and that binds right now.
func (p *ports) get() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.max - p.min + 1
	for i := range n {
		off := (p.next + i) % n
		port := p.min + off
		claimed.Lock()
		taken := claimed.m[port]
		claimed.m[port] = true
		claimed.Unlock()
		if taken {
			continue
		}
		if !bindable(p.host, port) {
			release(port)
			continue
		}
		p.next = (off + 1) % n
		return port, nil
	}
	return 0, fmt.Errorf("no free port in %d-%d on %s", p.min, p.max, p.host)
}

// release frees a port that get returned.
func release(port int) {
	claimed.Lock()
	delete(claimed.m, port)
	claimed.Unlock()
}

// bindable reports whether something could listen on host:port now.
func bindable(host string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}
