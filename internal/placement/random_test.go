package placement

import "testing"

func TestRandomCoversFittingNodes(t *testing.T) {
	t.Parallel()
	nodes := manyNodes(20)
	req := Request{CPU: 500, Memory: 1024}
	fit := fitting(nodes, req)
	if len(fit) < 2 || len(fit) == len(nodes) {
		t.Fatalf("test setup: %d of %d nodes fit", len(fit), len(nodes))
	}
	for seed := range uint64(5) {
		p, err := New("random", seeded(seed))
		if err != nil {
			t.Fatal(err)
		}
		const draws = 2000
		counts := make([]int, len(nodes))
		for range draws {
			i, err := p.Place(nodes, req)
			if err != nil {
				t.Fatal(err)
			}
			if !fits(&nodes[i], req) {
				t.Fatalf("seed %d: picked node %d, which has no room", seed, i)
			}
			counts[i]++
		}
		// Uniform: each fitting node expects draws/len(fit); allow a wide
		// margin (the draws are seeded, so this cannot flake).
		for _, i := range fit {
			if exp := draws / len(fit); counts[i] < exp/2 || counts[i] > exp*3/2 {
				t.Errorf("seed %d: node %d picked %d times, expected about %d", seed, i, counts[i], exp)
			}
		}
	}
}

func TestRandomIsSeeded(t *testing.T) {
	t.Parallel()
	nodes := manyNodes(50)
	req := Request{CPU: 250, Memory: 128}
	picks := func() []int {
		p, err := New("random", seeded(42))
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for range 20 {
			i, err := p.Place(nodes, req)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, i)
		}
		return out
	}
	a, b := picks(), picks()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different picks:\n%v\n%v", a, b)
		}
	}
}
