package loadgen

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
)

// fakeCP is a control plane holding a registry in a map; the methods the
// generator does not call are left to the embedded nil interface.
type fakeCP struct {
	pb.ControlPlaneClient
	mu       sync.Mutex
	fns      map[string]*pb.Function
	deploys  int
	failName string
	statusFn func(name string, polls int) *pb.FunctionStatus
	polls    int
}

func (f *fakeCP) DeployFunction(ctx context.Context, in *pb.DeployFunctionRequest, _ ...grpc.CallOption) (*pb.DeployFunctionResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in.Spec.Name == f.failName {
		return nil, errors.New("invalid spec")
	}
	f.deploys++
	s := proto.Clone(in.Spec).(*pb.FunctionSpec)
	if s.Concurrency == 0 { // defaults filled in, as the control plane does
		s.Concurrency = 1
	}
	if s.Scaling.ScaleToZeroGraceMs == 0 {
		s.Scaling.ScaleToZeroGraceMs = 30000
	}
	_, existed := f.fns[s.Name]
	f.fns[s.Name] = &pb.Function{Spec: s}
	return &pb.DeployFunctionResponse{Function: f.fns[s.Name], Created: !existed}, nil
}

func (f *fakeCP) ListFunctions(ctx context.Context, _ *pb.ListFunctionsRequest, _ ...grpc.CallOption) (*pb.ListFunctionsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := &pb.ListFunctionsResponse{}
	for _, fn := range f.fns {
		out.Functions = append(out.Functions, fn)
	}
	return out, nil
}

func (f *fakeCP) GetStatus(ctx context.Context, _ *pb.GetStatusRequest, _ ...grpc.CallOption) (*pb.ClusterStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polls++
	out := &pb.ClusterStatus{}
	for name, fn := range f.fns {
		out.Functions = append(out.Functions, &pb.Function{Spec: fn.Spec, Status: f.statusFn(name, f.polls)})
	}
	return out, nil
}

func TestDeploy(t *testing.T) {
	cp := &fakeCP{fns: map[string]*pb.Function{}}
	opts := FunctionOptions{Image: "fake", MaxScale: 3}
	var specs []*pb.FunctionSpec
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		specs = append(specs, opts.Spec(n))
	}
	ctx := context.Background()
	st, err := Deploy(ctx, cp, specs, 3, nil)
	if err != nil || st != (DeployStats{Created: 5}) {
		t.Fatalf("first deploy: %+v %v", st, err)
	}
	// Again: nothing to do (the registered specs have defaults filled in).
	st, err = Deploy(ctx, cp, specs, 3, nil)
	if err != nil || st != (DeployStats{Unchanged: 5}) || cp.deploys != 5 {
		t.Fatalf("second deploy: %+v %v, %d calls", st, err, cp.deploys)
	}
	// A changed option redeploys; a new name is created.
	specs[1] = FunctionOptions{Image: "fake", MaxScale: 4}.Spec("b")
	specs = append(specs, opts.Spec("f"))
	var last int
	st, err = Deploy(ctx, cp, specs, 3, func(done, total int) { last = done })
	if err != nil || st != (DeployStats{Created: 1, Updated: 1, Unchanged: 4}) || last != 6 {
		t.Fatalf("third deploy: %+v %v, progress %d", st, err, last)
	}
	// A different grace than the default redeploys too.
	specs[0] = FunctionOptions{Image: "fake", MaxScale: 3, ScaleToZeroGrace: 2 * time.Second}.Spec("a")
	if st, err = Deploy(ctx, cp, specs, 3, nil); err != nil || st.Updated != 1 {
		t.Fatalf("grace change: %+v %v", st, err)
	}
	cp.failName = "g"
	specs = append(specs, opts.Spec("g"))
	if _, err := Deploy(ctx, cp, specs, 3, nil); err == nil || !strings.Contains(err.Error(), "deploy g") {
		t.Fatalf("failing deploy: %v", err)
	}
}

func TestFunctionOptionsSpec(t *testing.T) {
	s := FunctionOptions{Binary: "/bin/fn", Image: "fake", MinScale: 1, Concurrency: 2, StableWindow: 2 * time.Second}.Spec("x")
	if s.Name != "x" || s.Binary != "/bin/fn" || s.Image != "" || s.Concurrency != 2 || s.Scaling.MinScale != 1 ||
		s.Scaling.StableWindowMs != 2000 {
		t.Errorf("spec %v", s)
	}
	if s := (FunctionOptions{Image: "fake"}).Spec("y"); s.Image != "fake" || s.Binary != "" {
		t.Errorf("spec %v", s)
	}
}

func TestWaitScale(t *testing.T) {
	cp := &fakeCP{fns: map[string]*pb.Function{"a": {Spec: &pb.FunctionSpec{Name: "a"}}, "b": {Spec: &pb.FunctionSpec{Name: "b"}}},
		statusFn: func(name string, polls int) *pb.FunctionStatus {
			if name == "a" && polls < 3 {
				return &pb.FunctionStatus{Ready: 1}
			}
			return &pb.FunctionStatus{}
		}}
	left, err := WaitScale(context.Background(), cp, []string{"a", "b"}, AtZero)
	if err != nil || left != 0 || cp.polls != 3 {
		t.Fatalf("left %d, err %v, polls %d", left, err, cp.polls)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	left, err = WaitScale(ctx, cp, []string{"a", "b"}, ReadyAtLeast(1))
	if err == nil || left != 2 {
		t.Fatalf("never ready: left %d, err %v", left, err)
	}
}
