package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	sbx "github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/fake"
	nodeagent "github.com/batonfaas/baton/internal/worker"
)

func deployImage(t *testing.T, c pb.ControlPlaneClient, name, image string, prepull bool) {
	t.Helper()
	if _, err := c.DeployFunction(context.Background(), &pb.DeployFunctionRequest{Spec: &pb.FunctionSpec{
		Name: name, Image: image, Prepull: prepull}}); err != nil {
		t.Fatal(err)
	}
}

func prepullFailures(t *testing.T, c pb.ControlPlaneClient, name string) []string {
	t.Helper()
	f, err := c.GetFunction(context.Background(), &pb.GetFunctionRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, pf := range f.Status.PrepullFailures {
		out = append(out, pf.WorkerId+": "+pf.Image+": "+pf.Reason)
	}
	return out
}

// A deploy with prepull asks every connected worker to fetch the image, a
// worker that connects later is asked for every prepull function's image,
// a redeploy with a new image asks again, and a deploy without prepull asks
// nothing. Nothing of it reaches the store.
func TestPrepullOnDeployAndConnect(t *testing.T) {
	cp, c, stop := startCP(t, t.TempDir())
	defer stop()
	a := connectWorker(t, c, "a")

	deployImage(t, c, "p", "reg.example/p:1", true)
	waitUntil(t, "a asked to prepull p", func() bool { return a.asked("p=reg.example/p:1") })
	deployImage(t, c, "q", "reg.example/q:1", false)
	writes := cp.StoreWrites()
	b := connectWorker(t, c, "b")
	// Commands to one worker keep their order: once r's arrives, q's
	// would have arrived before it.
	deployImage(t, c, "r", "reg.example/r:1", true)
	waitUntil(t, "both asked to prepull r", func() bool { return a.asked("r=reg.example/r:1") && b.asked("r=reg.example/r:1") })
	if got, want := a.prepulls(), []string{"p=reg.example/p:1", "r=reg.example/r:1"}; !slices.Equal(got, want) {
		t.Errorf("worker a was asked %v, want %v", got, want)
	}
	if got, want := b.prepulls(), []string{"p=reg.example/p:1", "r=reg.example/r:1"}; !slices.Equal(got, want) {
		t.Errorf("worker b (connected after p's deploy) was asked %v, want %v", got, want)
	}
	if w := cp.StoreWrites(); w != writes+1 {
		t.Errorf("store writes went from %d to %d for one deploy and a worker's connection", writes, w)
	}

	// A new image is fetched again; dropping prepull asks nothing.
	deployImage(t, c, "p", "reg.example/p:2", true)
	deployImage(t, c, "r", "reg.example/r:2", false)
	deployImage(t, c, "s", "reg.example/s:1", true)
	waitUntil(t, "both asked to prepull s", func() bool { return a.asked("s=reg.example/s:1") && b.asked("s=reg.example/s:1") })
	want := []string{"p=reg.example/p:1", "r=reg.example/r:1", "p=reg.example/p:2", "s=reg.example/s:1"}
	if got := a.prepulls(); !slices.Equal(got, want) {
		t.Errorf("worker a was asked %v, want %v", got, want)
	}
	if got := b.prepulls(); !slices.Equal(got, want) {
		t.Errorf("worker b was asked %v, want %v", got, want)
	}
	for _, w := range []*fakeWorker{a, b} {
		w.mu.Lock()
		for _, cmd := range w.prepull {
			if e := cmd.Epoch; e != w.epoch {
				t.Errorf("worker %s: a prepull with epoch %d in session %d", w.id, e, w.epoch)
			}
		}
		w.mu.Unlock()
	}

	// A worker connecting now gets the current images of p and s only.
	d := connectWorker(t, c, "d")
	deployImage(t, c, "z", "reg.example/z:1", true) // a marker, as above
	waitUntil(t, "d asked to prepull z", func() bool { return d.asked("z=reg.example/z:1") })
	got := d.prepulls()
	if len(got) != 3 || got[2] != "z=reg.example/z:1" || !d.asked("p=reg.example/p:2") || !d.asked("s=reg.example/s:1") {
		t.Errorf("worker d (connected last) was asked %v, want p:2 and s:1 (any order), then z:1", got)
	}
}

// A prepull needs an image.
func TestPrepullNeedsImage(t *testing.T) {
	_, c, stop := startCP(t, t.TempDir())
	defer stop()
	_, err := c.DeployFunction(context.Background(), &pb.DeployFunctionRequest{Spec: &pb.FunctionSpec{
		Name: "bin", Binary: "/bin/true", Prepull: true}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("deploy of a binary with prepull: %v, want InvalidArgument", err)
	}
}

// A worker's failed prepull shows in the function's status until it
// succeeds there, the function is redeployed or the worker goes down;
// reports about another image or from an old session are dropped; none of
// it is stored.
func TestPrepullFailuresShown(t *testing.T) {
	cp, c, stop := startCP(t, t.TempDir())
	defer stop()
	a := connectWorker(t, c, "a")
	b := connectWorker(t, c, "b")
	deployImage(t, c, "p", "reg.example/p:1", true)
	deployImage(t, c, "m", "reg.example/m:1", true) // a marker: reports about m are seen
	waitUntil(t, "both asked to prepull", func() bool { return a.asked("m=reg.example/m:1") && b.asked("m=reg.example/m:1") })
	writes := cp.StoreWrites()

	a.reportImage(a.epoch, "p", "reg.example/p:1", "pull: 401 Unauthorized")
	b.reportImage(b.epoch, "p", "reg.example/p:1", "")
	waitUntil(t, "a's failure shown", func() bool { return len(prepullFailures(t, c, "p")) == 1 })
	if got, want := prepullFailures(t, c, "p"), []string{"a: reg.example/p:1: pull: 401 Unauthorized"}; !slices.Equal(got, want) {
		t.Fatalf("failures %v, want %v", got, want)
	}

	// Stale reports from b, then one about m that shows once b's earlier
	// messages are handled.
	b.reportImage(b.epoch, "p", "reg.example/p:0", "an older image")
	b.reportImage(b.epoch-1, "p", "reg.example/p:1", "an older session")
	b.reportImage(b.epoch, "nope", "reg.example/p:1", "no such function")
	b.reportImage(b.epoch, "m", "reg.example/m:1", "marker")
	waitUntil(t, "b's report about m", func() bool { return len(prepullFailures(t, c, "m")) == 1 })
	if got := prepullFailures(t, c, "p"); len(got) != 1 {
		t.Fatalf("failures of p after stale reports: %v", got)
	}

	// A success clears; a redeploy clears and asks again.
	a.reportImage(a.epoch, "p", "reg.example/p:1", "")
	waitUntil(t, "a's failure cleared", func() bool { return len(prepullFailures(t, c, "p")) == 0 })
	if got := prepullFailures(t, c, "m"); len(got) != 1 {
		t.Fatalf("failures of m: %v", got)
	}
	deployImage(t, c, "m", "reg.example/m:1", true)
	if got := prepullFailures(t, c, "m"); len(got) != 0 {
		t.Fatalf("failures of m after its redeploy: %v", got)
	}
	waitUntil(t, "b asked again", func() bool {
		n := 0
		for _, p := range b.prepulls() {
			if p == "m=reg.example/m:1" {
				n++
			}
		}
		return n == 2
	})
	if w := cp.StoreWrites(); w != writes+1 {
		t.Errorf("store writes went from %d to %d for one deploy and prepull reports", writes, w)
	}

	// A worker declared down takes its failures with it.
	a.reportImage(a.epoch, "p", "reg.example/p:1", "disk full")
	waitUntil(t, "a's failure shown", func() bool { return len(prepullFailures(t, c, "p")) == 1 })
	a.setBeating(false)
	waitUntil(t, "a's failure gone with it", func() bool { return len(prepullFailures(t, c, "p")) == 0 })
}

// pullingRuntime is a fake runtime that pulls images: each Prepull waits
// for its image's gate, and fails for images in bad.
type pullingRuntime struct {
	sbx.Runtime
	bad map[string]bool

	mu       sync.Mutex
	gates    map[string]chan struct{}
	calls    map[string]int
	inFlight int
	maxIn    int
}

func (r *pullingRuntime) gate(image string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.gates[image]
	if g == nil {
		g = make(chan struct{})
		r.gates[image] = g
	}
	return g
}

func (r *pullingRuntime) Prepull(ctx context.Context, image string) error {
	r.mu.Lock()
	r.calls[image]++
	r.inFlight++
	r.maxIn = max(r.maxIn, r.inFlight)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.inFlight--
		r.mu.Unlock()
	}()
	select {
	case <-r.gate(image):
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.bad[image] {
		return fmt.Errorf("%w: pull image %s: not found", sbx.ErrInvalid, image)
	}
	return nil
}

func (r *pullingRuntime) stats() (calls map[string]int, inFlight, maxIn int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	calls = map[string]int{}
	for k, v := range r.calls {
		calls[k] = v
	}
	return calls, r.inFlight, r.maxIn
}

// The worker runs prepulls in the background, at most two at once, one per
// image however many functions share it, and reports each function's
// outcome: failures reach fn get, successes show nothing.
func TestWorkerPrepulls(t *testing.T) {
	cp, c, stop := startCP(t, t.TempDir())
	defer stop()
	rt := &pullingRuntime{bad: map[string]bool{"reg.example/bad:1": true},
		gates: map[string]chan struct{}{}, calls: map[string]int{}}
	w, err := nodeagent.New(nodeagent.Config{ID: "w", ControlPlane: cp.Addr(),
		Capacity: nodeagent.Resources{CPUMillicores: 10000, MemoryMiB: 10000},
		NewRuntime: func(onExit sbx.ExitFunc) (sbx.Runtime, error) {
			f, err := fake.New(fake.Config{OnExit: onExit})
			rt.Runtime = f
			return rt, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker: %v", err)
		}
	}()
	waitUntil(t, "the worker connected", func() bool {
		st, _ := c.GetStatus(context.Background(), &pb.GetStatusRequest{})
		return len(st.GetWorkers()) == 1 && st.Workers[0].Up
	})

	// Four images, and two functions sharing the bad one.
	deployImage(t, c, "one", "reg.example/one:1", true)
	deployImage(t, c, "two", "reg.example/two:1", true)
	deployImage(t, c, "three", "reg.example/three:1", true)
	deployImage(t, c, "bad-a", "reg.example/bad:1", true)
	deployImage(t, c, "bad-b", "reg.example/bad:1", true)
	// The worker handles commands in order: once a sandbox asked for
	// after those deploys is ready, every prepull command has been seen.
	if _, err := c.DeployFunction(context.Background(), &pb.DeployFunctionRequest{Spec: &pb.FunctionSpec{
		Name: "marker", Binary: "/bin/true", Scaling: &pb.ScalingSpec{MinScale: 1}}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the marker's sandbox ready", func() bool {
		f, err := c.GetFunction(context.Background(), &pb.GetFunctionRequest{Name: "marker"})
		return err == nil && f.Status.Ready == 1
	})
	waitUntil(t, "two prepulls running", func() bool { _, n, _ := rt.stats(); return n == 2 })
	time.Sleep(100 * time.Millisecond) // room for a third, were the bound broken
	if _, n, _ := rt.stats(); n != 2 {
		t.Fatalf("%d prepulls at once, want 2", n)
	}
	for _, img := range []string{"reg.example/one:1", "reg.example/two:1", "reg.example/three:1", "reg.example/bad:1"} {
		close(rt.gate(img))
	}
	waitUntil(t, "both functions of the bad image fail", func() bool {
		return len(prepullFailures(t, c, "bad-a")) == 1 && len(prepullFailures(t, c, "bad-b")) == 1
	})
	want := []string{"w: reg.example/bad:1: invalid sandbox spec: pull image reg.example/bad:1: not found"}
	if got := prepullFailures(t, c, "bad-b"); !slices.Equal(got, want) {
		t.Errorf("failures of bad-b %v, want %v", got, want)
	}
	calls, _, maxIn := rt.stats()
	if maxIn > 2 {
		t.Errorf("%d prepulls at once, want at most 2", maxIn)
	}
	for img, n := range calls {
		if n != 1 {
			t.Errorf("%s prepulled %d times, want once", img, n)
		}
	}
	if len(calls) != 4 {
		t.Errorf("prepulled %v, want 4 images", calls)
	}
	for _, fn := range []string{"one", "two", "three"} {
		if f := prepullFailures(t, c, fn); len(f) != 0 {
			t.Errorf("%s: failures %v", fn, f)
		}
	}
}
