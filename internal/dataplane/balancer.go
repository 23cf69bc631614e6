package dataplane

import (
	"fmt"
	"math/rand/v2"
)

// Load-balancing policies. Each is a pure function over a function's current
// endpoint snapshot: it reads the endpoints' in-flight counters and returns
// the index of one whose count is below limit, or -1 when every endpoint is
// full. It does not take the slot: the caller does that with a CAS and picks
// again if another request won the race. The position in a rotation (seq) and
// the random source are passed in, so the policies are tested by table
// without goroutines or sleeps.

// Balancer names accepted in Config.Balancer.
const (
	BalancerRoundRobin    = "round-robin"
	BalancerRandom        = "random"
	BalancerLeastInFlight = "least-in-flight"
	BalancerPowerOfTwo    = "power-of-two"
)

// randSource is the random source a policy draws from; *rand.Rand fits.
type randSource interface {
	IntN(n int) int
}

// globalRand draws from math/rand/v2's goroutine-safe global source. It is a
// zero-size value, so passing it as a randSource does not allocate.
type globalRand struct{}

func (globalRand) IntN(n int) int { return rand.IntN(n) }

// pickFunc is one policy.
type pickFunc func(eps []*endpoint, limit int32, seq uint64, rnd randSource) int

// policy is a pickFunc plus whether it needs a rotation counter (reading and
// bumping a shared counter costs a contended atomic, so only policies that
// use it pay for it).
type policy struct {
	name    string
	pick    pickFunc
	usesSeq bool
}

func policyByName(name string) (policy, error) {
	switch name {
	case "", BalancerRoundRobin:
		return policy{BalancerRoundRobin, pickRoundRobin, true}, nil
	case BalancerRandom:
		return policy{BalancerRandom, pickRandom, false}, nil
	case BalancerLeastInFlight:
		return policy{BalancerLeastInFlight, pickLeastInFlight, true}, nil
	case BalancerPowerOfTwo:
		return policy{BalancerPowerOfTwo, pickPowerOfTwo, false}, nil
	}
	return policy{}, fmt.Errorf("unknown balancer %q (want %s, %s, %s or %s)", name,
		BalancerRoundRobin, BalancerRandom, BalancerLeastInFlight, BalancerPowerOfTwo)
}

// pickRoundRobin starts at seq (mod n) and takes the first endpoint with a
// free slot, so full endpoints are skipped and their turn goes to the next.
func pickRoundRobin(eps []*endpoint, limit int32, seq uint64, _ randSource) int {
	n := len(eps)
	if n == 0 {
		return -1
	}
	start := int(seq % uint64(n))
	for k := 0; k < n; k++ {
		i := start + k
		if i >= n {
			i -= n
		}
		if eps[i].inflight.Load() < limit {
			return i
		}
	}
	return -1
}

// pickRandom picks uniformly among the endpoints with a free slot: one random
// probe, and when it hits a full endpoint, a uniform draw among the free ones.
// (P(i) = 1/n + (n-c)/n · 1/c = 1/c for each of the c free endpoints.)
func pickRandom(eps []*endpoint, limit int32, _ uint64, rnd randSource) int {
	n := len(eps)
	if n == 0 {
		return -1
	}
	i := rnd.IntN(n)
	if eps[i].inflight.Load() < limit {
		return i
	}
	free := 0
	for _, ep := range eps {
		if ep.inflight.Load() < limit {
			free++
		}
	}
	if free == 0 {
		return -1
	}
	k := rnd.IntN(free)
	for i, ep := range eps {
		if ep.inflight.Load() < limit {
			if k == 0 {
				return i
			}
			k--
		}
	}
	return -1 // all filled up between the two passes
}

// pickLeastInFlight takes the endpoint with the fewest requests in flight
// among those with a free slot; ties go to the first in a rotation that
// starts at seq, so equal endpoints share the load.
func pickLeastInFlight(eps []*endpoint, limit int32, seq uint64, _ randSource) int {
	n := len(eps)
	if n == 0 {
		return -1
	}
	start := int(seq % uint64(n))
	best, bestLoad := -1, limit
	for k := 0; k < n; k++ {
		i := start + k
		if i >= n {
			i -= n
		}
		if l := eps[i].inflight.Load(); l < bestLoad {
			best, bestLoad = i, l
			if l == 0 {
				break
			}
		}
	}
	return best
}

// pickPowerOfTwo draws two distinct endpoints and takes the one with fewer
// requests in flight (power of two choices). When both are full it falls
// back to least-in-flight over all endpoints.
func pickPowerOfTwo(eps []*endpoint, limit int32, _ uint64, rnd randSource) int {
	n := len(eps)
	switch n {
	case 0:
		return -1
	case 1:
		if eps[0].inflight.Load() < limit {
			return 0
		}
		return -1
	}
	i := rnd.IntN(n)
	j := rnd.IntN(n - 1)
	if j >= i {
		j++
	}
	li, lj := eps[i].inflight.Load(), eps[j].inflight.Load()
	if lj < li {
		i, li = j, lj
	}
	if li < limit {
		return i
	}
	return pickLeastInFlight(eps, limit, uint64(i), rnd)
}
