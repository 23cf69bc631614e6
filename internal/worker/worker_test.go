package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/fake"
)

// cpStub is a control plane that accepts one worker session, sends it
// what the test queues, and records every sandbox event it gets, batched
// or not.
type cpStub struct {
	pb.UnimplementedControlPlaneServer
	epoch uint64
	out   chan *pb.WorkerCommand

	mu     sync.Mutex
	events []*pb.SandboxEvent
	hellos []*pb.WorkerHello
	hbs    []*pb.WorkerHeartbeat
	end    chan struct{} // a value ends the current session
	// beforeAccept, if set, runs before the n-th session (from 1) is
	// accepted.
	beforeAccept func(n int)
}

func (c *cpStub) WorkerSession(stream pb.ControlPlane_WorkerSessionServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.hellos = append(c.hellos, m.GetHello())
	n, before := len(c.hellos), c.beforeAccept
	c.mu.Unlock()
	if before != nil {
		before(n)
	}
	if err := stream.Send(&pb.WorkerCommand{Epoch: c.epoch, Cmd: &pb.WorkerCommand_Accepted{
		Accepted: &pb.SessionAccepted{Epoch: c.epoch, HeartbeatIntervalMs: 20}}}); err != nil {
		return err
	}
	ended := make(chan error, 2)
	go func() {
		for {
			select {
			case cmd, ok := <-c.out:
				if !ok {
					return
				}
				stream.Send(cmd)
			case <-c.end:
				ended <- errors.New("session ended by the test")
				return
			case <-stream.Context().Done():
				return
			}
		}
	}()
	go func() { ended <- c.record(stream) }()
	return <-ended
}

func (c *cpStub) record(stream pb.ControlPlane_WorkerSessionServer) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		msgs := []*pb.WorkerMessage{m}
		c.mu.Lock()
		if b := m.GetBatch(); b != nil {
			msgs = b.Messages
		}
		for _, m := range msgs {
			if ev := m.GetEvent(); ev != nil {
				c.events = append(c.events, ev)
			}
			if hb := m.GetHeartbeat(); hb != nil {
				c.hbs = append(c.hbs, hb)
			}
		}
		c.mu.Unlock()
	}
}

func (c *cpStub) ready() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]bool{}
	for _, ev := range c.events {
		if ev.Kind == pb.SandboxEvent_KIND_READY {
			out[ev.Sandbox.SandboxId] = true
		}
	}
	return out
}

func create(epoch uint64, id string) *pb.WorkerCommand {
	return &pb.WorkerCommand{Epoch: epoch, Cmd: &pb.WorkerCommand_Create{Create: &pb.CreateSandbox{
		SandboxId: id, Generation: 1, Spec: &pb.FunctionSpec{Name: "f", Image: "fake", CpuMillicores: 100, MemoryMib: 64}}}}
}

// A batch of commands is carried out command by command (one with a stale
// epoch is dropped).
func TestWorkerBatches(t *testing.T) {
	stub, w := runWorker(t, Config{MaxCreations: 64,
		NewRuntime: func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
			return fake.New(fake.Config{Delay: 20 * time.Millisecond, OnExit: onExit})
		}})
	const n = 30
	cmds := []*pb.WorkerCommand{create(6, "stale")}
	for i := range n {
		cmds = append(cmds, create(7, "sb-"+string(rune('a'+i))))
	}
	stub.out <- &pb.WorkerCommand{Epoch: 7, Cmd: &pb.WorkerCommand_Batch{Batch: &pb.WorkerCommands{Commands: cmds}}}

	eventually(t, fmt.Sprintf("the %d sandboxes of the batch reported ready", n), func() bool { return len(stub.ready()) >= n })
	// handle registers a sandbox before it reports: one the stale command
	// made would be in the map by now, whether or not it reported yet.
	w.mu.Lock()
	_, stale := w.sandboxes["stale"]
	w.mu.Unlock()
	if stale || stub.ready()["stale"] {
		t.Fatal("a command with a stale epoch inside a batch created its sandbox")
	}
}

// runWorker runs a worker made from cfg (with an id, a large capacity and
// the address of a cpStub it starts) until the test ends.
func runWorker(t *testing.T, cfg Config) (*cpStub, *Worker) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stub := &cpStub{epoch: 7, out: make(chan *pb.WorkerCommand, 4), end: make(chan struct{}, 1)}
	srv := grpc.NewServer()
	pb.RegisterControlPlaneServer(srv, stub)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	t.Cleanup(func() { close(stub.out) })

	cfg.ID, cfg.ControlPlane = "w", ln.Addr().String()
	cfg.Capacity = Resources{CPUMillicores: 100000, MemoryMiB: 100000, Sandboxes: 1000}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return stub, w
}

// slowDelete is a runtime whose deletions wait for the test.
type slowDelete struct {
	sandbox.Runtime
	deleting chan string
	release  chan struct{}
}

func (r *slowDelete) Delete(ctx context.Context, id string) error {
	r.deleting <- id
	<-r.release
	return r.Runtime.Delete(ctx, id)
}

// A sandbox still being deleted when the session breaks is not taken back
// on the reconnect: not in the new hello, not counted as used.
func TestReconnectDoesNotReadopt(t *testing.T) {
	rt := &slowDelete{deleting: make(chan string, 4), release: make(chan struct{})}
	stub, w := runWorker(t, Config{
		NewRuntime: func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
			f, err := fake.New(fake.Config{OnExit: onExit})
			rt.Runtime = f
			return rt, err
		}})
	released := false
	defer func() { // before the worker stops: it waits for its deletions
		if !released {
			close(rt.release)
		}
	}()

	stub.out <- create(7, "a")
	stub.out <- create(7, "b")
	eventually(t, "both sandboxes ready", func() bool { return len(stub.ready()) == 2 })
	stub.out <- &pb.WorkerCommand{Epoch: 7, Cmd: &pb.WorkerCommand_Delete{Delete: &pb.DeleteSandbox{SandboxId: "a"}}}
	if id := <-rt.deleting; id != "a" {
		t.Fatalf("deleting %s, want a", id)
	}
	stub.end <- struct{}{}
	eventually(t, "a second session", func() bool {
		stub.mu.Lock()
		defer stub.mu.Unlock()
		return len(stub.hellos) == 2
	})
	stub.mu.Lock()
	hello := stub.hellos[1]
	stub.mu.Unlock()
	var ids []string
	for _, sb := range hello.Sandboxes {
		ids = append(ids, sb.SandboxId)
	}
	if len(ids) != 1 || ids[0] != "b" {
		t.Errorf("the reconnect's hello lists %v, want [b] (a is being deleted)", ids)
	}
	eventually(t, "a heartbeat of the second session", func() bool {
		stub.mu.Lock()
		defer stub.mu.Unlock()
		return len(stub.hbs) > 0
	})
	w.mu.Lock()
	used := w.used()
	w.mu.Unlock()
	if used.Sandboxes != 1 {
		t.Errorf("used %d sandboxes after the reconnect, want 1", used.Sandboxes)
	}
	close(rt.release)
	released = true
}

// A creation that ends while the worker is between sessions (after the
// new hello was made, before it is accepted) is reported READY to the new
// session, once: it is not left running unknown to the control plane.
func TestReadyBetweenSessions(t *testing.T) {
	var w *Worker
	ready := func(id string) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		e := w.sandboxes[id]
		return e != nil && e.ready
	}
	var stub *cpStub
	stub, w = runWorker(t, Config{
		NewRuntime: func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
			return fake.New(fake.Config{Delay: 300 * time.Millisecond, OnExit: onExit})
		}})
	stub.out <- create(7, "a")
	eventually(t, "a being created", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.sandboxes["a"] != nil
	})
	stub.mu.Lock()
	stub.beforeAccept = func(n int) { // the second session waits for a to be ready
		if n == 2 && !poll(func() bool { return ready("a") }) {
			t.Error("a not ready within 10s") // a gRPC handler: no t.Fatal here
		}
	}
	stub.mu.Unlock()
	stub.end <- struct{}{}
	eventually(t, "a reported ready to the second session", func() bool { return stub.ready()["a"] })
	stub.mu.Lock()
	hello := stub.hellos[1]
	stub.mu.Unlock()
	if len(hello.Sandboxes) != 0 {
		t.Errorf("the second hello lists %v; a was still being created when it was made", hello.Sandboxes)
	}
	// A second READY would have been queued before the next heartbeat
	// (one sender, in order).
	stub.mu.Lock()
	hbs := len(stub.hbs)
	stub.mu.Unlock()
	eventually(t, "a later heartbeat", func() bool { stub.mu.Lock(); defer stub.mu.Unlock(); return len(stub.hbs) > hbs })
	stub.mu.Lock()
	n := 0
	for _, ev := range stub.events {
		if ev.Kind == pb.SandboxEvent_KIND_READY && ev.Sandbox.SandboxId == "a" {
			n++
		}
	}
	stub.mu.Unlock()
	if n != 1 {
		t.Errorf("a reported READY %d times, want once", n)
	}
}

// A sandbox the hello of a new session lists, and that exits before the
// session is accepted, is reported EXITED to that session, with its epoch:
// the control plane must not keep routing to it.
func TestExitBetweenSessions(t *testing.T) {
	var rt *fake.Runtime
	stub, w := runWorker(t, Config{
		NewRuntime: func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
			r, err := fake.New(fake.Config{Delay: -1, OnExit: onExit})
			rt = r
			return r, err
		}})
	stub.out <- create(7, "a")
	eventually(t, "a ready", func() bool { return stub.ready()["a"] })
	gone := func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.sandboxes["a"] == nil
	}
	stub.mu.Lock()
	stub.beforeAccept = func(n int) { // a exits after the second hello, before its acceptance
		if n == 2 {
			rt.Kill("a")
			if !poll(gone) {
				t.Error("the worker did not see a exit within 10s") // a gRPC handler: no t.Fatal here
			}
		}
	}
	stub.mu.Unlock()
	stub.end <- struct{}{}
	eventually(t, "a reported EXITED", func() bool {
		stub.mu.Lock()
		defer stub.mu.Unlock()
		for _, ev := range stub.events {
			if ev.Kind == pb.SandboxEvent_KIND_EXITED && ev.Sandbox.GetSandboxId() == "a" {
				if ev.Epoch != stub.epoch {
					t.Errorf("EXITED with epoch %d, want the session's %d", ev.Epoch, stub.epoch)
				}
				return true
			}
		}
		return false
	})
	stub.mu.Lock()
	hello := stub.hellos[1]
	stub.mu.Unlock()
	if len(hello.Sandboxes) != 1 || hello.Sandboxes[0].SandboxId != "a" {
		t.Errorf("the second hello lists %v, want a (it exited after the hello)", hello.Sandboxes)
	}
}

// poll says whether cond became true within 10 s, for goroutines that may
// not call t.Fatal.
func poll(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sendRecorder is a worker session stream that records what is sent.
type sendRecorder struct {
	pb.ControlPlane_WorkerSessionClient
	sent chan *pb.WorkerMessage
}

func (r *sendRecorder) Send(m *pb.WorkerMessage) error { r.sent <- m; return nil }

// What queued while the sender was busy goes out as one batch, in order.
func TestWorkerSenderBatches(t *testing.T) {
	const n = 30
	s := &session{epoch: 7, wake: make(chan struct{}, 1)}
	for i := range n {
		s.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Event{Event: &pb.SandboxEvent{
			Epoch: 7, Kind: pb.SandboxEvent_KIND_READY, Sandbox: &pb.SandboxInfo{SandboxId: fmt.Sprint(i)}}}})
	}
	rec := &sendRecorder{sent: make(chan *pb.WorkerMessage, n)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Worker{}).sender(ctx, rec, s) }()
	m := <-rec.sent
	cancel()
	<-done
	b := m.GetBatch()
	if b == nil || len(b.Messages) != n {
		t.Fatalf("%d events queued before the sender woke: sent %v, want one batch of all", n, m)
	}
	for i, e := range b.Messages {
		if id := e.GetEvent().GetSandbox().GetSandboxId(); id != fmt.Sprint(i) {
			t.Fatalf("event %d of the batch is sandbox %s: out of order", i, id)
		}
	}
	if len(rec.sent) != 0 {
		t.Fatalf("%d more messages sent after the batch", len(rec.sent))
	}
}
