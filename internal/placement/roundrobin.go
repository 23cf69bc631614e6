package placement

import "sync"

// roundRobin takes the nodes in turn, in the order given (the control plane
// gives them sorted by ID), skipping those without room.
//
// The cursor is the ID of the last node chosen rather than an index, so the
// rotation survives nodes joining and leaving: the next turn goes to the
// node after the last one chosen, or, if that node is gone, to the first
// node whose ID sorts after it.
type roundRobin struct {
	mu   sync.Mutex
	last string // guarded by mu; ID of the last node chosen
	used bool   // guarded by mu; whether a node was ever chosen
}

func (*roundRobin) Name() string { return "round-robin" }

func (p *roundRobin) Place(nodes []Node, req Request) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := 0
	if p.used {
		start = p.next(nodes)
	}
	for j := range nodes {
		i := start + j
		if i >= len(nodes) {
			i -= len(nodes)
		}
		if fits(&nodes[i], req) {
			p.last, p.used = nodes[i].ID, true
			return i, nil
		}
	}
	return -1, noCapacity(nodes, req)
}

// next returns the index after the last node chosen or, if it is gone, of
// the first node whose ID sorts after it (0 if none: wrap around).
func (p *roundRobin) next(nodes []Node) int {
	for i := range nodes {
		if nodes[i].ID == p.last {
			return i + 1
		}
	}
	for i := range nodes {
		if nodes[i].ID > p.last {
			return i
		}
	}
	return 0
}
