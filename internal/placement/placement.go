// Package placement picks the worker node for a new sandbox. It is pure: a
// Policy sees a read-only snapshot of the nodes and the sandbox's resource
// request and returns the index of the chosen node, without I/O or clock;
// the random policy takes its random source from the caller.
//
// One file per policy: random.go, roundrobin.go, leastloaded.go,
// kubernetes.go. Every policy considers only the nodes with room for the
// request and returns an error wrapping ErrNoCapacity when there is none.
// Place runs on every cold start, so it does not allocate when it succeeds.
package placement

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
)

// Node is a worker as the control plane sees it when placing.
type Node struct {
	ID                  string
	CPU, Memory         int64 // capacity: millicores, MiB
	UsedCPU, UsedMemory int64 // requested by the sandboxes placed there (ready or being created)
	Sandboxes           int
}

// Request is what one sandbox asks for.
type Request struct {
	CPU, Memory int64 // millicores, MiB
}

// ErrNoCapacity is wrapped by Place when no node has room for the request.
var ErrNoCapacity = errors.New("no worker has room")

// Policy chooses a node for a sandbox.
type Policy interface {
	// Name returns the name New knows the policy by.
	Name() string
	// Place picks a node for the request among those with room
	// (Used+request <= capacity for CPU and memory) and returns its index in
	// nodes. Policies that keep state (round-robin's cursor, random's
	// source) are safe for concurrent use.
	Place(nodes []Node, req Request) (int, error)
}

// names lists the policies in the order Names reports them.
var names = []string{"random", "round-robin", "least-loaded", "kubernetes"}

// Names returns the names New accepts.
func Names() []string { return append([]string(nil), names...) }

// New returns the policy with the given name. rng is the random source of
// the "random" policy (which then owns it: the caller must not use it
// concurrently); the other policies ignore it.
func New(name string, rng *rand.Rand) (Policy, error) {
	switch name {
	case "random":
		if rng == nil {
			return nil, errors.New("placement policy \"random\" needs a random source")
		}
		return &random{rng: rng}, nil
	case "round-robin":
		return &roundRobin{}, nil
	case "least-loaded":
		return leastLoaded{}, nil
	case "kubernetes":
		return kubernetes{}, nil
	}
	return nil, fmt.Errorf("unknown placement policy %q (valid: %s)", name, strings.Join(names, ", "))
}

// fits reports whether n has room for req.
func fits(n *Node, req Request) bool {
	return n.UsedCPU+req.CPU <= n.CPU && n.UsedMemory+req.Memory <= n.Memory
}

// noCapacity is the error of a Place that found no node with room.
func noCapacity(nodes []Node, req Request) error {
	return fmt.Errorf("place sandbox (cpu %dm, memory %dMiB) on %d nodes: %w",
		req.CPU, req.Memory, len(nodes), ErrNoCapacity)
}
