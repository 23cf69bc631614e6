package batch

import (
	"errors"
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

func TestSend(t *testing.T) {
	type msg struct {
		one  *pb.ScaleRequest
		many []*pb.ScaleRequest
	}
	var sent []msg
	send := func(q []*pb.ScaleRequest) error {
		sent = sent[:0]
		return Send(q, func(r *pb.ScaleRequest) msg { return msg{one: r} },
			func(run []*pb.ScaleRequest) msg { return msg{many: run} },
			func(m msg) error { sent = append(sent, m); return nil })
	}
	a, b := scale("a"), scale("b")
	if send([]*pb.ScaleRequest{a}); len(sent) != 1 || sent[0].one != a {
		t.Fatalf("a queue of one: %+v, want it sent as it is", sent)
	}
	if send([]*pb.ScaleRequest{a, b}); len(sent) != 1 || len(sent[0].many) != 2 || sent[0].many[0] != a {
		t.Fatalf("a queue of two: %+v, want one batch of both, in order", sent)
	}
	var q []*pb.ScaleRequest
	for range MaxCount + 1 {
		q = append(q, a)
	}
	if send(q); len(sent) != 2 || len(sent[0].many) != MaxCount || sent[1].one != a {
		t.Fatalf("a queue of %d: %d messages, want a full batch and one alone", len(q), len(sent))
	}
	n := 0
	err := Send(q, func(r *pb.ScaleRequest) int { return 1 }, func([]*pb.ScaleRequest) int { return 2 },
		func(int) error { n++; return errors.New("broken") })
	if err == nil || n != 1 {
		t.Fatalf("a failing send: %v after %d sends, want the error after the first", err, n)
	}
}
