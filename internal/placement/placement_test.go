package placement

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func seeded(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed+1)) }

func mustNew(t testing.TB, name string) Policy {
	t.Helper()
	p, err := New(name, seeded(1))
	if err != nil {
		t.Fatalf("New(%q): %v", name, err)
	}
	return p
}

// node returns a node with 4 cores and 8 GiB, using cpu millicores and mem MiB.
func node(id string, cpu, mem int64, sandboxes int) Node {
	return Node{ID: id, CPU: 4000, Memory: 8192, UsedCPU: cpu, UsedMemory: mem, Sandboxes: sandboxes}
}

func TestNew(t *testing.T) {
	t.Parallel()
	want := []string{"random", "round-robin", "least-loaded", "kubernetes"}
	if got := Names(); !slices.Equal(got, want) {
		t.Errorf("Names() = %q, want %q", got, want)
	}
	Names()[0] = "changed"
	if Names()[0] != "random" {
		t.Error("Names() shares its slice")
	}
	for _, name := range want {
		if p := mustNew(t, name); p.Name() != name {
			t.Errorf("New(%q).Name() = %q", name, p.Name())
		}
	}
	_, err := New("best-fit", nil)
	if err == nil || !strings.Contains(err.Error(), `unknown placement policy "best-fit" (valid: random, round-robin, least-loaded, kubernetes)`) {
		t.Errorf("New(unknown) error = %v", err)
	}
	if _, err := New("random", nil); err == nil {
		t.Error("New(random, nil) succeeded")
	}
	if _, err := New("kubernetes", nil); err != nil {
		t.Errorf("New(kubernetes, nil): %v", err)
	}
}

// TestFitFiltering runs every policy on cases where exactly one node fits.
func TestFitFiltering(t *testing.T) {
	t.Parallel()
	req := Request{CPU: 500, Memory: 1024}
	for _, tc := range []struct {
		name  string
		nodes []Node
		want  int
	}{
		{"only the last has cpu", []Node{node("a", 3600, 0, 0), node("b", 3501, 0, 0), node("c", 3500, 7168, 9)}, 2},
		{"only the first has memory", []Node{node("a", 0, 7168, 9), node("b", 0, 7169, 0), node("c", 0, 8000, 0)}, 0},
		{"exact fit", []Node{node("a", 3600, 0, 0), node("b", 3500, 7168, 5), node("c", 4000, 8192, 0)}, 1},
		{"zero capacity", []Node{{ID: "a", Memory: 8192}, {ID: "b", CPU: 4000}, node("c", 0, 0, 50)}, 2},
	} {
		for _, name := range Names() {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				t.Parallel()
				p := mustNew(t, name)
				for range 3 {
					got, err := p.Place(tc.nodes, req)
					if err != nil || got != tc.want {
						t.Fatalf("Place = %d, %v; want %d", got, err, tc.want)
					}
				}
			})
		}
	}
}

func TestNoCapacity(t *testing.T) {
	t.Parallel()
	req := Request{CPU: 500, Memory: 1024}
	for _, tc := range []struct {
		name  string
		nodes []Node
	}{
		{"no nodes", nil},
		{"all full", []Node{node("a", 3600, 0, 0), node("b", 0, 7200, 0), node("c", 4000, 8192, 0)}},
		{"request larger than any node", []Node{{ID: "a", CPU: 400, Memory: 1 << 20}}},
	} {
		for _, name := range Names() {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				t.Parallel()
				i, err := mustNew(t, name).Place(tc.nodes, req)
				if !errors.Is(err, ErrNoCapacity) {
					t.Fatalf("Place = %d, %v; want ErrNoCapacity", i, err)
				}
				want := fmt.Sprintf("place sandbox (cpu 500m, memory 1024MiB) on %d nodes: no worker has room", len(tc.nodes))
				if err.Error() != want || i != -1 {
					t.Errorf("Place = %d, %q; want -1, %q", i, err, want)
				}
			})
		}
	}
}

// fitting returns the indexes of the nodes with room for req.
func fitting(nodes []Node, req Request) []int {
	var idx []int
	for i := range nodes {
		if fits(&nodes[i], req) {
			idx = append(idx, i)
		}
	}
	return idx
}

// manyNodes returns n nodes of varied load; about one in five is full.
func manyNodes(n int) []Node {
	nodes := make([]Node, n)
	for i := range nodes {
		used := int64(i*37%5) * 900 // 0 .. 3600
		nodes[i] = Node{
			ID:  fmt.Sprintf("node-%04d", i),
			CPU: 4000, Memory: 8192,
			UsedCPU: used, UsedMemory: int64(i*53%8) * 1024,
			Sandboxes: int(used / 250),
		}
	}
	return nodes
}

// TestConcurrent places from several goroutines at once (run with -race).
func TestConcurrent(t *testing.T) {
	t.Parallel()
	nodes := manyNodes(40)
	req := Request{CPU: 250, Memory: 128}
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := mustNew(t, name)
			const workers, each = 8, 100
			errs := make(chan error, workers)
			for range workers {
				go func() {
					for range each {
						i, err := p.Place(nodes, req)
						if err == nil && !fits(&nodes[i], req) {
							err = fmt.Errorf("picked %d, which has no room", i)
						}
						if err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
			}
			for range workers {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func TestPlaceAllocs(t *testing.T) {
	nodes := manyNodes(1000)
	req := Request{CPU: 250, Memory: 128}
	for _, name := range Names() {
		p := mustNew(t, name)
		if a := testing.AllocsPerRun(100, func() { p.Place(nodes, req) }); a != 0 {
			t.Errorf("%s: Place allocates %v times, want 0", name, a)
		}
	}
}

func BenchmarkPlace(b *testing.B) {
	nodes := manyNodes(1000)
	req := Request{CPU: 250, Memory: 128}
	for _, name := range Names() {
		b.Run(name, func(b *testing.B) {
			p := mustNew(b, name)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Place(nodes, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
