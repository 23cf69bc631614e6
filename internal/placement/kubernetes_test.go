package placement

import "testing"

func TestKubeScore(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		n    Node
		req  Request
		want int64
	}{
		{"empty node, empty request", Node{CPU: 1000, Memory: 1000}, Request{}, 100 + 100},
		{"half used, balanced", Node{CPU: 1000, Memory: 1000, UsedCPU: 400, UsedMemory: 400}, Request{100, 100}, 50 + 100},
		// cpu 0.6, memory 0.2: least (40+80)/2 = 60; stddev 0.2: 80.
		{"unbalanced", Node{CPU: 1000, Memory: 1000, UsedCPU: 500, UsedMemory: 100}, Request{100, 100}, 60 + 80},
		// cpu 1.0, memory 0: least (0+100)/2 = 50; stddev 0.5: 50.
		{"cpu only, full", Node{CPU: 1000, Memory: 1000}, Request{CPU: 1000}, 50 + 50},
		// integer division as in kube-scheduler: (3000-1)*100/3000 = 99.
		{"integer truncation", Node{CPU: 3000, Memory: 3000}, Request{1, 0}, 99 + 99},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := kubeScore(&tc.n, tc.req); got != tc.want {
				t.Errorf("kubeScore = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestKubernetes(t *testing.T) {
	t.Parallel()
	sq := func(id string, cpu, mem int64) Node { // 1000m, 1000 MiB
		return Node{ID: id, CPU: 1000, Memory: 1000, UsedCPU: cpu, UsedMemory: mem}
	}
	for _, tc := range []struct {
		name  string
		nodes []Node
		req   Request
		want  int
	}{
		{"prefers the emptier node", []Node{sq("a", 500, 500), sq("b", 100, 100), sq("c", 300, 300)}, Request{100, 100}, 1},
		// Same LeastAllocated (60), b balanced (100 vs 80).
		{"prefers the more balanced node", []Node{sq("a", 500, 100), sq("b", 300, 300)}, Request{100, 100}, 1},
		// a ends at cpu .6 mem .6: least 40, balanced 100; b at cpu .2
		// mem .6: least 60, balanced 80. Both 140.
		{"balance offsets emptiness: tie goes to the lowest index", []Node{sq("a", 600, 100), sq("b", 200, 100)}, Request{0, 500}, 0},
		// a: cpu .9 mem .6: least 25, balanced 85 = 110; b: cpu .1 mem .6: least 65, balanced 75 = 140.
		{"emptiness outweighs a small imbalance", []Node{sq("a", 900, 100), sq("b", 100, 100)}, Request{0, 500}, 1},
		{"identical nodes: lowest index", []Node{sq("a", 200, 200), sq("b", 200, 200)}, Request{100, 100}, 0},
		{"the best node has no room", []Node{sq("a", 950, 0), sq("b", 600, 600), sq("c", 0, 0)}, Request{100, 950}, 2},
		{"skips nodes without room", []Node{sq("a", 0, 950), sq("b", 600, 600)}, Request{100, 100}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := mustNew(t, "kubernetes").Place(tc.nodes, tc.req)
			if err != nil || got != tc.want {
				t.Errorf("Place = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}
