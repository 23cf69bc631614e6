package placement

import "math"

// kubernetes scores the nodes with room the way kube-scheduler's default
// scoring plugins do for CPU and memory, with equal weights, and picks the
// highest score (ties: the lowest index):
//
//   - NodeResourcesFit, LeastAllocated strategy: for each resource
//     (capacity-requested)*100/capacity in integers, where requested
//     includes this sandbox; the mean over the two resources.
//   - NodeResourcesBalancedAllocation: (1-stddev)*100 of the two requested
//     fractions after placing, which for two resources is
//     100 - |cpuFraction-memFraction|*50.
//
// Unlike kube-scheduler it does not substitute default requests for a
// sandbox that asks for nothing.
type kubernetes struct{}

func (kubernetes) Name() string { return "kubernetes" }

func (kubernetes) Place(nodes []Node, req Request) (int, error) {
	best, bestScore := -1, int64(-1)
	for i := range nodes {
		n := &nodes[i]
		if !fits(n, req) {
			continue
		}
		if s := kubeScore(n, req); s > bestScore {
			best, bestScore = i, s
		}
	}
	if best < 0 {
		return -1, noCapacity(nodes, req)
	}
	return best, nil
}

// kubeScore returns LeastAllocated + BalancedAllocation, each in [0, 100].
func kubeScore(n *Node, req Request) int64 {
	cpu, mem := n.UsedCPU+req.CPU, n.UsedMemory+req.Memory
	least := (leastAllocated(cpu, n.CPU) + leastAllocated(mem, n.Memory)) / 2
	std := math.Abs(fraction(cpu, n.CPU)-fraction(mem, n.Memory)) / 2
	balanced := int64((1 - std) * 100)
	return least + balanced
}

// leastAllocated is kube-scheduler's leastRequestedScore.
func leastAllocated(requested, capacity int64) int64 {
	if capacity <= 0 || requested > capacity {
		return 0
	}
	return (capacity - requested) * 100 / capacity
}

// fraction is requested/capacity capped at 1, as in BalancedAllocation.
func fraction(requested, capacity int64) float64 {
	if capacity <= 0 {
		return 1
	}
	return min(float64(requested)/float64(capacity), 1)
}
