package placement

import "testing"

func TestLeastLoaded(t *testing.T) {
	t.Parallel()
	req := Request{CPU: 500, Memory: 512}
	for _, tc := range []struct {
		name  string
		nodes []Node
		want  int
	}{
		{"fewest sandboxes", []Node{node("a", 0, 0, 3), node("b", 3000, 0, 1), node("c", 0, 0, 2)}, 1},
		{"tie: lowest cpu fraction", []Node{node("a", 1000, 0, 2), node("b", 400, 0, 2), node("c", 800, 0, 2)}, 1},
		{"tie: fraction, not absolute use", []Node{
			{ID: "a", CPU: 1000, Memory: 8192, UsedCPU: 300, Sandboxes: 1}, // 0.30
			{ID: "b", CPU: 2000, Memory: 8192, UsedCPU: 500, Sandboxes: 1}, // 0.25
		}, 1},
		{"full tie: lowest index", []Node{node("a", 0, 0, 5), node("b", 200, 0, 2), node("c", 200, 0, 2)}, 1},
		{"the least loaded has no room", []Node{node("a", 0, 7900, 0), node("b", 0, 0, 4), node("c", 0, 0, 3)}, 2},
		{"more sandboxes beat a higher cpu fraction", []Node{node("a", 3000, 0, 1), node("b", 0, 0, 2)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := mustNew(t, "least-loaded").Place(tc.nodes, req)
			if err != nil || got != tc.want {
				t.Errorf("Place = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}
