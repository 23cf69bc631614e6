package placement

import (
	"slices"
	"sync"
	"testing"
)

func ids(names ...string) []Node {
	nodes := make([]Node, len(names))
	for i, id := range names {
		nodes[i] = node(id, 0, 0, 0)
	}
	return nodes
}

func full(n Node) Node {
	n.UsedCPU = n.CPU
	return n
}

func TestRoundRobin(t *testing.T) {
	t.Parallel()
	abc := ids("a", "b", "c")
	bFull := []Node{abc[0], full(abc[1]), abc[2]}
	req := Request{CPU: 100, Memory: 100}
	type call struct {
		nodes []Node
		want  string // ID of the node chosen
	}
	for _, tc := range []struct {
		name  string
		calls []call
	}{
		{"in order, wrapping", []call{{abc, "a"}, {abc, "b"}, {abc, "c"}, {abc, "a"}, {abc, "b"}}},
		{"skips a full node", []call{{bFull, "a"}, {bFull, "c"}, {bFull, "a"}, {bFull, "c"}}},
		{"a node filling up mid-rotation", []call{{abc, "a"}, {bFull, "c"}, {abc, "a"}, {abc, "b"}}},
		{"the last node chosen leaves", []call{
			{abc, "a"}, {abc, "b"},
			{ids("a", "c", "d"), "c"}, {ids("a", "c", "d"), "d"}, {ids("a", "c", "d"), "a"},
		}},
		{"a node joins after the last chosen", []call{
			{ids("a", "b"), "a"}, {ids("a", "b"), "b"}, {ids("a", "b", "c"), "c"}, {ids("a", "b", "c"), "a"},
		}},
		{"a node joins before the cursor", []call{
			{ids("b", "c"), "b"}, {ids("a", "b", "c"), "c"}, {ids("a", "b", "c"), "a"},
		}},
		{"every node leaves but one", []call{{abc, "a"}, {abc, "b"}, {ids("a"), "a"}, {ids("a"), "a"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := mustNew(t, "round-robin")
			for k, c := range tc.calls {
				i, err := p.Place(c.nodes, req)
				if err != nil {
					t.Fatalf("call %d: %v", k, err)
				}
				if got := c.nodes[i].ID; got != c.want {
					t.Fatalf("call %d: got %s, want %s", k, got, c.want)
				}
			}
		})
	}
}

// TestRoundRobinConcurrentFairness: concurrent callers share one rotation,
// so every node gets exactly its share.
func TestRoundRobinConcurrentFairness(t *testing.T) {
	t.Parallel()
	nodes := ids("a", "b", "c", "d")
	p := mustNew(t, "round-robin")
	const workers, each = 8, 50
	var mu sync.Mutex
	counts := make([]int, len(nodes))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				i, err := p.Place(nodes, Request{CPU: 1, Memory: 1})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				counts[i]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	want := workers * each / len(nodes)
	if !slices.Equal(counts, []int{want, want, want, want}) {
		t.Errorf("counts = %v, want %d each", counts, want)
	}
}
