package placement

// leastLoaded picks the node with room running the fewest sandboxes; ties go
// to the lowest fraction of CPU in use, then to the lowest index.
type leastLoaded struct{}

func (leastLoaded) Name() string { return "least-loaded" }

func (leastLoaded) Place(nodes []Node, req Request) (int, error) {
	best := -1
	for i := range nodes {
		n := &nodes[i]
		if !fits(n, req) {
			continue
		}
		if best < 0 || less(n, &nodes[best]) {
			best = i
		}
	}
	if best < 0 {
		return -1, noCapacity(nodes, req)
	}
	return best, nil
}

// less reports whether a is less loaded than b.
func less(a, b *Node) bool {
	if a.Sandboxes != b.Sandboxes {
		return a.Sandboxes < b.Sandboxes
	}
	return cpuFracLess(a, b)
}

// cpuFracLess reports whether a uses a smaller fraction of its CPU than b,
// comparing by cross-multiplication (exact; millicores keep the products
// small). A node without CPU capacity counts as fully used.
func cpuFracLess(a, b *Node) bool {
	switch {
	case a.CPU <= 0:
		return false
	case b.CPU <= 0:
		return true
	}
	return a.UsedCPU*b.CPU < b.UsedCPU*a.CPU
}
