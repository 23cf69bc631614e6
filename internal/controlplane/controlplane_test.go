package controlplane

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
)

// These tests drive a real control plane over gRPC with hand-written fake
// workers and a fake data plane, so that every message on the links can be
// scripted and observed.

func startCP(t *testing.T, dir string) (*ControlPlane, pb.ControlPlaneClient, func()) {
	t.Helper()
	cp, err := New(Config{Listen: "127.0.0.1:0", DataDir: dir, Placement: "least-loaded",
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 400 * time.Millisecond,
		AutoscaleInterval: 100 * time.Millisecond, IdleDrain: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cp.Run(ctx); close(done) }()
	conn, err := grpc.NewClient(cp.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	stop := func() { conn.Close(); cancel(); <-done }
	return cp, pb.NewControlPlaneClient(conn), stop
}

// fakeWorker answers every CreateSandbox with READY and every DeleteSandbox
// with DELETED, records the PrepullImage commands (the test answers them,
// with reportImage), and heartbeats while beating is true.
type fakeWorker struct {
	t      *testing.T
	id     string
	cancel context.CancelFunc
	stream pb.ControlPlane_WorkerSessionClient
	epoch  uint64

	mu       sync.Mutex
	running  map[string]*pb.SandboxInfo
	deleted  []string
	creates  int
	beating  bool
	hold     bool                // creations are not answered: the test does it
	held     []*pb.SandboxInfo   // what was created while holding
	prepull  []*pb.WorkerCommand // the PrepullImage commands, in order
	sendMu   sync.Mutex
	finished chan struct{}
}

func connectWorker(t *testing.T, c pb.ControlPlaneClient, id string, existing ...*pb.SandboxInfo) *fakeWorker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := c.WorkerSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &fakeWorker{t: t, id: id, cancel: cancel, stream: s, running: map[string]*pb.SandboxInfo{}, beating: true,
		finished: make(chan struct{})}
	for _, e := range existing {
		w.running[e.SandboxId] = e
	}
	hello := &pb.WorkerHello{WorkerId: id, Runtime: "fake", Sandboxes: existing,
		Capacity: &pb.Resources{CpuMillicores: 100000, MemoryMib: 100000}}
	if err := s.Send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil || first.GetAccepted() == nil {
		t.Fatalf("no SessionAccepted: %v %v", first, err)
	}
	w.epoch = first.GetAccepted().Epoch
	go w.serve()
	go w.heartbeat(ctx)
	t.Cleanup(w.close)
	return w
}

func (w *fakeWorker) send(m *pb.WorkerMessage) {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	w.stream.Send(m)
}

func (w *fakeWorker) serve() {
	defer close(w.finished)
	for {
		cmd, err := w.stream.Recv()
		if err != nil {
			return
		}
		cmds := []*pb.WorkerCommand{cmd}
		if b := cmd.GetBatch(); b != nil {
			cmds = b.Commands
		}
		for _, cmd := range cmds {
			w.handle(cmd)
		}
	}
}

func (w *fakeWorker) handle(cmd *pb.WorkerCommand) {
	if cmd.Epoch != w.epoch {
		w.t.Errorf("worker %s: command with epoch %d in session %d", w.id, cmd.Epoch, w.epoch)
	}
	switch c := cmd.Cmd.(type) {
	case *pb.WorkerCommand_Create:
		info := &pb.SandboxInfo{SandboxId: c.Create.SandboxId, Function: c.Create.Spec.Name,
			Generation: c.Create.Generation, Address: "127.0.0.1:1"}
		w.mu.Lock()
		w.running[info.SandboxId] = info
		w.creates++
		hold := w.hold
		if hold {
			w.held = append(w.held, info)
		}
		w.mu.Unlock()
		if hold {
			return
		}
		w.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Event{Event: &pb.SandboxEvent{
			Epoch: w.epoch, Kind: pb.SandboxEvent_KIND_READY, Sandbox: info, CreateMicros: 1000}}})
	case *pb.WorkerCommand_Delete:
		w.mu.Lock()
		delete(w.running, c.Delete.SandboxId)
		w.deleted = append(w.deleted, c.Delete.SandboxId)
		w.mu.Unlock()
		w.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Event{Event: &pb.SandboxEvent{
			Epoch: w.epoch, Kind: pb.SandboxEvent_KIND_DELETED, Sandbox: &pb.SandboxInfo{SandboxId: c.Delete.SandboxId}}}})
	case *pb.WorkerCommand_Prepull:
		w.mu.Lock()
		w.prepull = append(w.prepull, cmd)
		w.mu.Unlock()
	}
}

func (w *fakeWorker) heartbeat(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		beat := w.beating
		w.mu.Unlock()
		if beat {
			w.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Heartbeat{Heartbeat: &pb.WorkerHeartbeat{Epoch: w.epoch}}})
		}
	}
}

func (w *fakeWorker) setBeating(b bool) { w.mu.Lock(); w.beating = b; w.mu.Unlock() }
func (w *fakeWorker) close()            { w.cancel() }
func (w *fakeWorker) sandboxes() []*pb.SandboxInfo {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*pb.SandboxInfo
	for _, s := range w.running {
		out = append(out, s)
	}
	return out
}
func (w *fakeWorker) deletedIDs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.deleted...)
}

// prepulls lists the PrepullImage commands received, in order, as
// "function=image".
func (w *fakeWorker) prepulls() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.prepull))
	for _, cmd := range w.prepull {
		p := cmd.GetPrepull()
		out = append(out, p.Function+"="+p.Image)
	}
	return out
}

// asked reports whether a PrepullImage command for pull ("function=image")
// was received.
func (w *fakeWorker) asked(pull string) bool { return slices.Contains(w.prepulls(), pull) }

// reportImage sends the outcome of a prepull of image for fn in the session
// of the given epoch: a failure when failure is not empty.
func (w *fakeWorker) reportImage(epoch uint64, fn, image, failure string) {
	w.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Image{Image: &pb.ImageEvent{
		Epoch: epoch, Function: fn, Image: image, Ok: failure == "", Reason: failure}}})
}

// fakeDataPlane records the routes it is pushed.
type fakeDataPlane struct {
	t      *testing.T
	stream pb.ControlPlane_DataPlaneSessionClient
	sendMu sync.Mutex
	mu     sync.Mutex
	epoch  uint64
	routes map[string]*pb.FunctionRoute
	msgs   int
	cancel context.CancelFunc
}

func connectDataPlane(t *testing.T, c pb.ControlPlaneClient) *fakeDataPlane {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := c.DataPlaneSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDataPlane{t: t, stream: s, routes: map[string]*pb.FunctionRoute{}, cancel: cancel}
	if err := s.Send(&pb.DataPlaneMessage{Msg: &pb.DataPlaneMessage_Hello{Hello: &pb.DataPlaneHello{
		DataPlaneId: "dp-test", Address: "127.0.0.1:8080"}}}); err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil || !first.Full {
		t.Fatalf("first route update is not a full snapshot: %v %v", first, err)
	}
	d.apply(first)
	go func() {
		for {
			u, err := s.Recv()
			if err != nil {
				return
			}
			if u.Full || u.Epoch != d.epoch {
				t.Errorf("incremental update with full=%v epoch %d (session %d)", u.Full, u.Epoch, d.epoch)
			}
			d.apply(u)
			var v uint64
			for _, r := range u.Functions {
				v = max(v, r.Version)
			}
			d.send(&pb.DataPlaneMessage{Msg: &pb.DataPlaneMessage_Ack{Ack: &pb.RouteAck{Epoch: u.Epoch, Version: v}}})
		}
	}()
	t.Cleanup(cancel)
	return d
}

func (d *fakeDataPlane) apply(u *pb.RouteUpdate) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.msgs++
	if u.Full {
		d.epoch = u.Epoch
		clear(d.routes)
	}
	for _, r := range u.Functions {
		if old := d.routes[r.Name]; old != nil && old.Version >= r.Version {
			d.t.Errorf("route of %s: version %d after %d", r.Name, r.Version, old.Version)
		}
		d.routes[r.Name] = r
	}
}

func (d *fakeDataPlane) endpoints(fn string) []*pb.Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r := d.routes[fn]; r != nil && !r.Deleted {
		return r.Endpoints
	}
	return nil
}

func (d *fakeDataPlane) send(m *pb.DataPlaneMessage) {
	d.sendMu.Lock()
	defer d.sendMu.Unlock()
	d.stream.Send(m)
}

func (d *fakeDataPlane) scale(fn string, queued int32) {
	d.send(&pb.DataPlaneMessage{Msg: &pb.DataPlaneMessage_Scale{Scale: &pb.ScaleRequest{
		Epoch: d.epoch, Function: fn, Queued: queued}}})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func deploy(t *testing.T, c pb.ControlPlaneClient, name string, minScale int32) {
	t.Helper()
	_, err := c.DeployFunction(context.Background(), &pb.DeployFunctionRequest{Spec: &pb.FunctionSpec{
		Name: name, Binary: "/bin/true", Scaling: &pb.ScalingSpec{MinScale: minScale}}})
	if err != nil {
		t.Fatal(err)
	}
}

func workersOf(eps []*pb.Endpoint) map[string]int {
	m := map[string]int{}
	for _, e := range eps {
		m[e.WorkerId]++
	}
	return m
}

// A worker that stops heartbeating is declared down within the timeout: its
// sandboxes leave the data plane's table and are replaced on the other one.
func TestWorkerDownReplacesSandboxes(t *testing.T) {
	_, c, stop := startCP(t, t.TempDir())
	defer stop()
	dp := connectDataPlane(t, c)
	a := connectWorker(t, c, "a")
	b := connectWorker(t, c, "b")
	deploy(t, c, "f", 4)
	waitUntil(t, "4 endpoints over both workers", func() bool {
		m := workersOf(dp.endpoints("f"))
		return len(dp.endpoints("f")) == 4 && m["a"] == 2 && m["b"] == 2
	})

	a.setBeating(false)
	start := time.Now()
	waitUntil(t, "all 4 endpoints on b", func() bool {
		m := workersOf(dp.endpoints("f"))
		return m["a"] == 0 && m["b"] == 4
	})
	// The bound is loose (shared machines); it still tells a replacement
	// triggered by the heartbeat timeout from none at all.
	if el := time.Since(start); el > 400*time.Millisecond+3*time.Second {
		t.Fatalf("replacement took %s with a 400ms heartbeat timeout", el)
	}
	if n := len(b.sandboxes()); n != 4 {
		t.Fatalf("worker b runs %d sandboxes, want 4", n)
	}
	st, _ := c.GetStatus(context.Background(), &pb.GetStatusRequest{})
	for _, w := range st.Workers {
		if w.WorkerId == "a" && w.Up {
			t.Fatal("worker a still up in status")
		}
	}

	// a comes back with its old sandboxes: nobody expects them any more, so
	// they are stopped, and f keeps exactly its scale.
	old := a.sandboxes()
	a.close()
	<-a.finished
	a2 := connectWorker(t, c, "a", old...)
	waitUntil(t, "a's stale sandboxes deleted", func() bool { return len(a2.deletedIDs()) == len(old) })
	time.Sleep(300 * time.Millisecond)
	if n := len(dp.endpoints("f")); n != 4 {
		t.Fatalf("f has %d endpoints after a returned, want 4", n)
	}
}

// A new control plane (a restart) adopts what workers run: their sandboxes
// are in the data plane's table without any creation.
func TestRestartAdoptsSandboxes(t *testing.T) {
	dir := t.TempDir()
	cp, c, stop := startCP(t, dir)
	deploy(t, c, "g", 2)
	w := connectWorker(t, c, "w")
	waitUntil(t, "2 sandboxes", func() bool { return len(w.sandboxes()) == 2 })
	running := w.sandboxes()
	w.close()
	stop()
	_ = cp

	_, c, stop = startCP(t, dir)
	defer stop()
	dp := connectDataPlane(t, c)
	w2 := connectWorker(t, c, "w", running...)
	waitUntil(t, "adopted endpoints", func() bool { return len(dp.endpoints("g")) == 2 })
	time.Sleep(300 * time.Millisecond)
	w2.mu.Lock()
	creates := w2.creates
	w2.mu.Unlock()
	if creates != 0 || len(w2.deletedIDs()) != 0 {
		t.Fatalf("after restart: %d creations, %d deletions; want the 2 sandboxes adopted as they are", creates, len(w2.deletedIDs()))
	}
}

// Scale from zero is decided on the ScaleRequest, and a burst of sandboxes
// becoming ready reaches the data plane in few, coalesced messages; nothing
// is written to the store.
func TestScaleFromZeroCoalescedAndNotPersisted(t *testing.T) {
	cp, c, stop := startCP(t, t.TempDir())
	defer stop()
	connectWorker(t, c, "w")
	for i := range 50 {
		deploy(t, c, fmt.Sprintf("h%d", i), 0)
	}
	writes := cp.StoreWrites()
	dp := connectDataPlane(t, c)
	dp.mu.Lock()
	before := dp.msgs
	dp.mu.Unlock()
	for i := range 50 {
		dp.scale(fmt.Sprintf("h%d", i), 3)
	}
	waitUntil(t, "3 endpoints for each of 50 functions", func() bool {
		for i := range 50 {
			if len(dp.endpoints(fmt.Sprintf("h%d", i))) != 3 {
				return false
			}
		}
		return true
	})
	dp.mu.Lock()
	msgs := dp.msgs - before
	dp.mu.Unlock()
	if msgs >= 150 {
		t.Fatalf("150 sandboxes became ready in %d route messages: not coalesced", msgs)
	}
	if cp.StoreWrites() != writes {
		t.Fatalf("store writes went from %d to %d while scaling", writes, cp.StoreWrites())
	}
	t.Logf("150 sandboxes, 50 functions: %d route messages", msgs)
}

// Batched messages: scale requests from a data plane in one ScaleRequests,
// sandbox events from a worker in one WorkerMessages, each part handled as
// if it came alone (a stale epoch inside a batch is dropped).
func TestBatchedSessionMessages(t *testing.T) {
	_, c, stop := startCP(t, t.TempDir())
	defer stop()
	w := connectWorker(t, c, "w")
	w.mu.Lock()
	w.hold = true
	w.mu.Unlock()
	const n = 40
	for i := range n + 1 {
		deploy(t, c, fmt.Sprintf("b%d", i), 0)
	}
	dp := connectDataPlane(t, c)
	reqs := []*pb.ScaleRequest{{Epoch: dp.epoch - 1, Function: fmt.Sprintf("b%d", n), Queued: 1}} // stale
	for i := range n {
		reqs = append(reqs, &pb.ScaleRequest{Epoch: dp.epoch, Function: fmt.Sprintf("b%d", i), Queued: 1})
	}
	dp.send(&pb.DataPlaneMessage{Msg: &pb.DataPlaneMessage_Scales{Scales: &pb.ScaleRequests{Requests: reqs}}})
	waitUntil(t, "a creation for each of the batch's functions", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.held) == n
	})
	w.mu.Lock()
	held := w.held
	w.mu.Unlock()
	for _, h := range held {
		if h.Function == fmt.Sprintf("b%d", n) {
			t.Fatalf("a scale request with a stale epoch created sandbox %s", h.SandboxId)
		}
	}

	var evs []*pb.WorkerMessage
	for i, h := range held {
		epoch := w.epoch
		if i == 0 {
			epoch-- // stale: dropped
		}
		evs = append(evs, &pb.WorkerMessage{Msg: &pb.WorkerMessage_Event{Event: &pb.SandboxEvent{
			Epoch: epoch, Kind: pb.SandboxEvent_KIND_READY, Sandbox: h, CreateMicros: 1000}}})
	}
	w.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Batch{Batch: &pb.WorkerMessages{Messages: evs}}})
	waitUntil(t, "an endpoint for each function readied in the batch", func() bool {
		for _, h := range held[1:] {
			if len(dp.endpoints(h.Function)) != 1 {
				return false
			}
		}
		return true
	})
	time.Sleep(50 * time.Millisecond)
	if eps := dp.endpoints(held[0].Function); len(eps) != 0 {
		t.Fatalf("a READY with a stale epoch inside a batch routed to %v", eps)
	}
}

// A duplicate READY (a retried message) and a stale-epoch event change nothing.
func TestIdempotentAndStaleEvents(t *testing.T) {
	_, c, stop := startCP(t, t.TempDir())
	defer stop()
	dp := connectDataPlane(t, c)
	w := connectWorker(t, c, "w")
	deploy(t, c, "k", 1)
	waitUntil(t, "1 endpoint", func() bool { return len(dp.endpoints("k")) == 1 })
	sb := w.sandboxes()[0]
	w.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Event{Event: &pb.SandboxEvent{
		Epoch: w.epoch, Kind: pb.SandboxEvent_KIND_READY, Sandbox: sb}}})
	w.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Event{Event: &pb.SandboxEvent{
		Epoch: w.epoch - 1, Kind: pb.SandboxEvent_KIND_EXITED, Sandbox: sb}}})
	time.Sleep(200 * time.Millisecond)
	if eps := dp.endpoints("k"); len(eps) != 1 || eps[0].SandboxId != sb.SandboxId {
		t.Fatalf("endpoints after a duplicate and a stale event: %v", eps)
	}
	f, _ := c.GetFunction(context.Background(), &pb.GetFunctionRequest{Name: "k"})
	if f.Status.Ready != 1 {
		t.Fatalf("ready %d, want 1", f.Status.Ready)
	}
}

// The retry policy defaults to IDEMPOTENT, is stored as given, reaches the
// data planes in the function's route, and an unknown value is refused
// without changing anything.
func TestRetryPolicy(t *testing.T) {
	_, c, stop := startCP(t, t.TempDir())
	defer stop()
	dp := connectDataPlane(t, c)
	ctx := context.Background()
	routeOf := func(name string) *pb.FunctionRoute {
		dp.mu.Lock()
		defer dp.mu.Unlock()
		return dp.routes[name]
	}
	deploy(t, c, "plain", 0)
	f, err := c.GetFunction(ctx, &pb.GetFunctionRequest{Name: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if f.Spec.Retry != pb.RetryPolicy_RETRY_POLICY_IDEMPOTENT {
		t.Errorf("default retry policy %v, want IDEMPOTENT", f.Spec.Retry)
	}
	if _, err := c.DeployFunction(ctx, &pb.DeployFunctionRequest{Spec: &pb.FunctionSpec{
		Name: "always", Binary: "/bin/true", Retry: pb.RetryPolicy_RETRY_POLICY_ALWAYS}}); err != nil {
		t.Fatal(err)
	}
	if r := routeOf("always"); r == nil || r.Retry != pb.RetryPolicy_RETRY_POLICY_ALWAYS {
		t.Errorf("route of always: %v", r)
	}
	if r := routeOf("plain"); r == nil || r.Retry != pb.RetryPolicy_RETRY_POLICY_IDEMPOTENT {
		t.Errorf("route of plain: %v", r)
	}
	_, err = c.DeployFunction(ctx, &pb.DeployFunctionRequest{Spec: &pb.FunctionSpec{
		Name: "always", Binary: "/bin/true", Retry: pb.RetryPolicy(42)}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown retry policy: %v, want InvalidArgument", err)
	}
	if f, _ := c.GetFunction(ctx, &pb.GetFunctionRequest{Name: "always"}); f.GetSpec().GetRetry() != pb.RetryPolicy_RETRY_POLICY_ALWAYS || f.GetGeneration() != 1 {
		t.Errorf("a refused deploy changed the function: %v", f)
	}
}

// commandRecorder is a worker session stream that records what is sent.
type commandRecorder struct {
	pb.ControlPlane_WorkerSessionServer
	ctx  context.Context
	sent chan *pb.WorkerCommand
}

func (r *commandRecorder) Context() context.Context       { return r.ctx }
func (r *commandRecorder) Send(c *pb.WorkerCommand) error { r.sent <- c; return nil }

// Commands queued while the sender was busy (a burst of creations) go to
// the worker as one batch, in order.
func TestWorkerSenderBatches(t *testing.T) {
	const n = 40
	s := &workerSession{epoch: 9, wake: make(chan struct{}, 1)}
	for i := range n {
		s.send(&pb.WorkerCommand{Cmd: &pb.WorkerCommand_Create{Create: &pb.CreateSandbox{SandboxId: fmt.Sprint(i)}}})
	}
	ctx, cancel := context.WithCancel(context.Background())
	rec := &commandRecorder{ctx: ctx, sent: make(chan *pb.WorkerCommand, n)}
	done := make(chan error, 1)
	go func() { done <- (&ControlPlane{}).workerSender(rec, s) }()
	c := <-rec.sent
	cancel()
	<-done
	b := c.GetBatch()
	if b == nil || len(b.Commands) != n || c.Epoch != 9 {
		t.Fatalf("%d creations queued before the sender woke: sent %v, want one batch of all in epoch 9", n, c)
	}
	for i, cmd := range b.Commands {
		if id := cmd.GetCreate().GetSandboxId(); id != fmt.Sprint(i) || cmd.Epoch != 9 {
			t.Fatalf("command %d of the batch: sandbox %s, epoch %d", i, id, cmd.Epoch)
		}
	}
	if len(rec.sent) != 0 {
		t.Fatalf("%d more commands sent after the batch", len(rec.sent))
	}
}
