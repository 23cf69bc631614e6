package batch

import (
	"strings"
	"testing"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
)

func scale(name string) *pb.ScaleRequest { return &pb.ScaleRequest{Function: name} }

func runs(q []*pb.ScaleRequest) [][]*pb.ScaleRequest {
	var out [][]*pb.ScaleRequest
	for r := range Split(q) {
		out = append(out, r)
	}
	return out
}

func TestSplit(t *testing.T) {
	if r := runs(nil); len(r) != 0 {
		t.Fatalf("nothing queued: %d runs", len(r))
	}
	// By count, in order, nothing lost.
	var q []*pb.ScaleRequest
	for i := range 2*MaxCount + 3 {
		q = append(q, scale(strings.Repeat("f", 1+i%7)))
	}
	r := runs(q)
	if len(r) != 3 || len(r[0]) != MaxCount || len(r[1]) != MaxCount || len(r[2]) != 3 {
		t.Fatalf("runs of %d messages: got %d runs", len(q), len(r))
	}
	i := 0
	for _, run := range r {
		for _, m := range run {
			if m != q[i] {
				t.Fatalf("message %d out of order", i)
			}
			i++
		}
	}
	// By size: big messages split the runs, one larger than the bound goes
	// alone.
	big := scale(strings.Repeat("b", MaxBytes/2))
	huge := scale(strings.Repeat("h", MaxBytes+1))
	r = runs([]*pb.ScaleRequest{scale("a"), big, big, huge, scale("z")})
	want := []int{2, 1, 1, 1}
	if len(r) != len(want) {
		t.Fatalf("size-bound runs: %d, want %d", len(r), len(want))
	}
	for k, n := range want {
		if len(r[k]) != n {
			t.Fatalf("run %d has %d messages, want %d", k, len(r[k]), n)
		}
	}
	// Stopping early stops.
	n := 0
	for range Split(q) {
		n++
		break
	}
	if n != 1 {
		t.Fatalf("break after the first run: %d runs", n)
	}
}
