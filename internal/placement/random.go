package placement

import (
	"math/rand/v2"
	"sync"
)

// random picks uniformly among the nodes with room.
type random struct {
	mu  sync.Mutex
	rng *rand.Rand // guarded by mu
}

func (*random) Name() string { return "random" }

// Place counts the nodes with room, draws one of them, and finds it in a
// second pass: one draw per call, no allocation.
func (p *random) Place(nodes []Node, req Request) (int, error) {
	n := 0
	for i := range nodes {
		if fits(&nodes[i], req) {
			n++
		}
	}
	if n == 0 {
		return -1, noCapacity(nodes, req)
	}
	p.mu.Lock()
	k := p.rng.IntN(n)
	p.mu.Unlock()
	for i := range nodes {
		if fits(&nodes[i], req) {
			if k == 0 {
				return i, nil
			}
			k--
		}
	}
	// Only reachable if the caller changed nodes during the call.
	return -1, noCapacity(nodes, req)
}
