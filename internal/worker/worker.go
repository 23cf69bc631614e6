// Package worker is Baton's node agent. It opens a session to the control
// plane, heartbeats with its capacity and use, creates and deletes sandboxes
// through a sandbox.Runtime on command (at most MaxCreations at once, the rest
// queued), and reports sandboxes that become ready, fail or exit. When its
// runtime pulls images (sandbox.Prepuller), it fetches the images the control
// plane asks it to prepull in the background, a few at a time, and reports
// how each went.
//
// Every command is idempotent: a CreateSandbox for an id the worker already
// has re-reports it; a DeleteSandbox for an id it does not have reports it
// deleted. After a reconnect the worker's hello lists what it runs, and the
// control plane reconciles.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/batch"
	"github.com/batonfaas/baton/internal/cpclient"
	"github.com/batonfaas/baton/internal/sandbox"
)

// Config configures a worker.
type Config struct {
	ID           string // default: the hostname
	Hostname     string // default: os.Hostname
	ControlPlane string // gRPC address, or a comma-separated list of replicas; default 127.0.0.1:9090
	// Client, when set, is used instead of dialling ControlPlane (emulated
	// workers in one process share one).
	Client *cpclient.Client
	// NewRuntime builds the runtime; the worker passes the function through
	// which the runtime reports exits.
	NewRuntime   func(onExit sandbox.ExitFunc) (sandbox.Runtime, error)
	Capacity     Resources
	MaxCreations int           // concurrent creations; default 16
	StopTimeout  time.Duration // to delete all sandboxes at shutdown; default 10s
	Cleanup      func()        // called once the runtime is closed (files the caller made for it)
	Logger       *slog.Logger
}

// Resources is a capacity: millicores, MiB, and a sandbox count (0: none).
type Resources struct {
	CPUMillicores int64
	MemoryMiB     int64
	Sandboxes     int32
}

// Worker is one node agent.
type Worker struct {
	cfg Config
	log *slog.Logger
	rt  sandbox.Runtime
	cpc *cpclient.Client
	own bool // cpc is ours to close
	// adopted: the runtime's sandboxes were taken over (adopt); Run's
	// goroutine's.
	adopted bool
	sem     chan struct{}
	// pullSem bounds the prepulls running at once (they share the node's
	// bandwidth and disk with the creations).
	pullSem chan struct{}

	mu        sync.Mutex
	sandboxes map[string]*entry
	session   *session
	lastEpoch uint64
	queued    int
	creating  int
	pulls     map[string]map[string]struct{} // image -> the functions that asked for its prepull in flight

	wg sync.WaitGroup
}

// maxPrepulls is how many images a worker prepulls at once.
const maxPrepulls = 2

type entry struct {
	spec   sandbox.Spec
	sb     sandbox.Sandbox
	ready  bool
	cancel context.CancelFunc
}

// New builds the worker and its runtime; it does not connect yet.
func New(cfg Config) (*Worker, error) {
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	if cfg.ID == "" {
		cfg.ID = cfg.Hostname
	}
	if cfg.ControlPlane == "" {
		cfg.ControlPlane = "127.0.0.1:9090"
	}
	if cfg.MaxCreations <= 0 {
		cfg.MaxCreations = 16
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.NewRuntime == nil {
		return nil, errors.New("worker: no runtime")
	}
	w := &Worker{cfg: cfg, log: cfg.Logger.With("worker", cfg.ID), sandboxes: make(map[string]*entry),
		sem: make(chan struct{}, cfg.MaxCreations), pullSem: make(chan struct{}, maxPrepulls),
		pulls: make(map[string]map[string]struct{})}
	rt, err := cfg.NewRuntime(w.onExit)
	if err != nil {
		return nil, fmt.Errorf("worker %s: runtime: %w", cfg.ID, err)
	}
	w.rt = rt
	w.cpc = cfg.Client
	if w.cpc == nil {
		w.cpc, err = cpclient.Dial(cfg.ControlPlane)
		if err != nil {
			rt.Close(context.Background())
			return nil, fmt.Errorf("worker %s: %w", cfg.ID, err)
		}
		w.own = true
	}
	return w, nil
}

// ID is the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Runtime is the worker's sandbox runtime.
func (w *Worker) Runtime() sandbox.Runtime { return w.rt }

// Run keeps a session to the control plane (its leader, among replicas)
// open until ctx is done, then deletes every sandbox and returns. After a
// session breaks it tries the replicas in turn, quickly at first (a
// fail-over is quick), then backing off.
func (w *Worker) Run(ctx context.Context) error {
	cl := pb.NewControlPlaneClient(w.cpc) // a stream opens on the current replica
	i := w.cpc.Current()
	failures := 0
	var failingSince time.Time
	for ctx.Err() == nil {
		start := time.Now()
		err := w.runSession(ctx, cl)
		if ctx.Err() != nil {
			break
		}
		if time.Since(start) > 5*time.Second || failures == 0 {
			failures, failingSince = 0, time.Now()
		}
		failures++
		// A fail-over takes a few hundred milliseconds: retry quickly for
		// a while, then back off.
		delay := 25 * time.Millisecond
		if over := time.Since(failingSince) - 3*time.Second; over > 0 {
			delay = min(100*time.Millisecond+over/4, 2*time.Second)
		}
		var addr string
		i, addr = w.cpc.Next(i)
		if failures == 1 {
			w.log.Warn("control-plane session ended; reconnecting", "err", err, "next", addr)
		} else {
			w.log.Debug("control-plane session failed", "err", err, "next", addr, "in", delay)
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	w.wg.Wait()
	stopCtx, cancel := context.WithTimeout(context.Background(), w.cfg.StopTimeout)
	defer cancel()
	err := w.rt.Close(stopCtx)
	if w.cfg.Cleanup != nil {
		w.cfg.Cleanup()
	}
	if w.own {
		w.cpc.Close()
	}
	w.log.Info("worker stopped")
	return err
}

type session struct {
	epoch  uint64
	mu     sync.Mutex
	queue  []*pb.WorkerMessage
	wake   chan struct{}
	closed bool
}

// send queues m, stamped with the session's epoch (see stamp); before the
// session is accepted the epoch is not known yet, and accept stamps it.
func (s *session) send(m *pb.WorkerMessage) {
	s.mu.Lock()
	if !s.closed {
		stamp(m, s.epoch)
		s.queue = append(s.queue, m)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// accept sets the epoch the control plane gave the session and stamps the
// messages queued before it.
func (s *session) accept(epoch uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch = epoch
	for _, m := range s.queue {
		stamp(m, epoch)
	}
}

// stamp sets the epoch of the messages that carry one: sandbox and image
// events (heartbeats are made after acceptance, with it).
func stamp(m *pb.WorkerMessage, epoch uint64) {
	switch m := m.Msg.(type) {
	case *pb.WorkerMessage_Event:
		m.Event.Epoch = epoch
	case *pb.WorkerMessage_Image:
		m.Image.Epoch = epoch
	}
}

// close drops what is queued and what comes later: the next hello carries
// the truth.
func (s *session) close() {
	s.mu.Lock()
	s.closed = true
	s.queue = nil
	s.mu.Unlock()
}

// adopt takes over, once, the sandboxes the runtime found again after a
// restart of this process (the containerd runtime adopts its running
// containers): they are counted, deleted when told, their exits reported.
// Later sessions report what the worker holds, without asking the runtime.
func (w *Worker) adopt(ctx context.Context) error {
	if w.adopted {
		return nil // only Run's goroutine sets it
	}
	list, err := w.rt.List(ctx)
	if err != nil {
		return fmt.Errorf("list sandboxes: %w", err)
	}
	w.mu.Lock()
	for _, sb := range list {
		if _, ok := w.sandboxes[sb.ID]; !ok {
			w.sandboxes[sb.ID] = &entry{spec: sandbox.Spec{ID: sb.ID, Function: sb.Function, Generation: sb.Generation,
				CPUMillicores: sb.CPUMillicores, MemoryMiB: sb.MemoryMiB}, sb: sb, ready: true, cancel: func() {}}
		}
	}
	w.mu.Unlock()
	w.adopted = true
	return nil
}

func (w *Worker) runSession(ctx context.Context, cl pb.ControlPlaneClient) error {
	life := ctx // the worker's, which prepulls live as long as
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cl.WorkerSession(ctx)
	if err != nil {
		return err
	}
	if err := w.adopt(ctx); err != nil {
		return err
	}
	// The hello and the session are made in one hold of w.mu: whatever
	// happens to a sandbox after the hello (ready, exited, failed, deleted)
	// is queued in s, behind the hello, and sent once the session is
	// accepted, stamped with its epoch.
	s := &session{wake: make(chan struct{}, 1)}
	w.mu.Lock()
	hello := &pb.WorkerHello{WorkerId: w.cfg.ID, Hostname: w.cfg.Hostname, Runtime: w.rt.Name(),
		Capacity: w.capacity(), LastEpoch: w.lastEpoch}
	for _, e := range w.sandboxes {
		if e.ready {
			hello.Sandboxes = append(hello.Sandboxes, info(e.sb))
		}
	}
	w.session = s
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		if w.session == s {
			w.session = nil
		}
		w.mu.Unlock()
		s.close()
	}()
	if err := stream.Send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Hello{Hello: hello}}); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	acc := first.GetAccepted()
	if acc == nil {
		return errors.New("control plane did not accept the session")
	}
	s.accept(acc.Epoch)
	w.mu.Lock()
	w.lastEpoch = acc.Epoch
	w.mu.Unlock()
	w.log.Info("connected to control plane", "addr", w.cfg.ControlPlane, "epoch", acc.Epoch, "sandboxes", len(hello.Sandboxes))

	// The session's goroutines end with it: a batch being carried out
	// must not start work after Run has stopped waiting for it.
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { errc <- w.sender(ctx, stream, s) })
	wg.Go(func() { errc <- w.heartbeats(ctx, s, time.Duration(acc.HeartbeatIntervalMs)*time.Millisecond) })
	wg.Go(func() {
		for {
			cmd, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			cmds := []*pb.WorkerCommand{cmd}
			if b := cmd.GetBatch(); b != nil {
				cmds = b.Commands // a nested batch matches no case in handle
			}
			for _, c := range cmds {
				if ctx.Err() != nil {
					return
				}
				if c.Epoch >= s.epoch { // else from an older session or a deposed leader
					w.handle(life, s, c)
				}
			}
		}
	})
	err = <-errc
	if errors.Is(err, io.EOF) {
		err = errors.New("control plane closed the session")
	}
	return err
}

func (w *Worker) sender(ctx context.Context, stream pb.ControlPlane_WorkerSessionClient, s *session) error {
	for {
		select {
		case <-s.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
		q := s.queue
		s.queue = nil
		s.mu.Unlock()
		err := batch.Send(q, func(m *pb.WorkerMessage) *pb.WorkerMessage { return m },
			func(run []*pb.WorkerMessage) *pb.WorkerMessage {
				return &pb.WorkerMessage{Msg: &pb.WorkerMessage_Batch{Batch: &pb.WorkerMessages{Messages: run}}}
			}, stream.Send)
		if err != nil {
			return err
		}
	}
}

func (w *Worker) heartbeats(ctx context.Context, s *session, every time.Duration) error {
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		w.mu.Lock()
		hb := &pb.WorkerHeartbeat{Epoch: s.epoch, Used: w.used(), Creating: int32(w.creating), Queued: int32(w.queued)}
		w.mu.Unlock()
		s.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Heartbeat{Heartbeat: hb}})
	}
}

// capacity and used: w.mu held.
func (w *Worker) capacity() *pb.Resources {
	c := w.cfg.Capacity
	return &pb.Resources{CpuMillicores: c.CPUMillicores, MemoryMib: c.MemoryMiB, Sandboxes: c.Sandboxes}
}

func (w *Worker) used() *pb.Resources {
	u := &pb.Resources{}
	for _, e := range w.sandboxes {
		u.CpuMillicores += e.spec.CPUMillicores
		u.MemoryMib += e.spec.MemoryMiB
		u.Sandboxes++
	}
	return u
}

// handle runs one command. ctx is the worker's life, not the session's.
func (w *Worker) handle(ctx context.Context, s *session, cmd *pb.WorkerCommand) {
	switch c := cmd.Cmd.(type) {
	case *pb.WorkerCommand_Create:
		w.create(s, c.Create)
	case *pb.WorkerCommand_Delete:
		w.delete(s, c.Delete.SandboxId)
	case *pb.WorkerCommand_Prepull:
		w.prepull(ctx, c.Prepull)
	}
}

// prepull fetches an image in the background if the runtime pulls images,
// once however many functions (or repeated commands, or sessions) ask for
// it while it is in flight, and reports the outcome for each function that
// asked on the session open when it ends (none: the next session's control
// plane asks again). It stops only with the worker.
func (w *Worker) prepull(ctx context.Context, c *pb.PrepullImage) {
	p, ok := w.rt.(sandbox.Prepuller)
	if !ok || c.Image == "" {
		w.log.Debug("prepull ignored: the runtime pulls no images", "function", c.Function, "image", c.Image)
		return
	}
	w.mu.Lock()
	if asked := w.pulls[c.Image]; asked != nil {
		asked[c.Function] = struct{}{}
		w.mu.Unlock()
		return
	}
	asked := map[string]struct{}{c.Function: {}}
	w.pulls[c.Image] = asked
	w.wg.Add(1)
	w.mu.Unlock()

	go func() {
		defer w.wg.Done()
		var err error
		var took time.Duration
		select {
		case w.pullSem <- struct{}{}:
			start := time.Now()
			err = p.Prepull(ctx, c.Image)
			took = time.Since(start)
			<-w.pullSem
		case <-ctx.Done():
			err = ctx.Err()
		}
		w.mu.Lock()
		delete(w.pulls, c.Image)
		fns := slices.Collect(maps.Keys(asked))
		w.mu.Unlock()
		if ctx.Err() != nil { // the worker is stopping
			return
		}
		reason := ""
		if err != nil {
			reason = err.Error()
			w.log.Warn("image prepull failed", "image", c.Image, "functions", fns, "err", err)
		} else {
			w.log.Info("image prepulled", "image", c.Image, "functions", fns, "took", took.Round(time.Millisecond))
		}
		cur := w.current()
		if cur == nil {
			return
		}
		for _, fn := range fns {
			cur.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Image{Image: &pb.ImageEvent{
				Function: fn, Image: c.Image, Ok: err == nil, Reason: reason}}})
		}
	}()
}

func (w *Worker) event(s *session, kind pb.SandboxEvent_Kind, in *pb.SandboxInfo, reason string, micros int64) {
	s.send(&pb.WorkerMessage{Msg: &pb.WorkerMessage_Event{Event: &pb.SandboxEvent{
		Kind: kind, Sandbox: in, Reason: reason, CreateMicros: micros}}})
}

// current returns the session being opened or open, or nil. Events for a closed session are
// dropped: the next hello carries the truth.
func (w *Worker) current() *session {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.session
}

func (w *Worker) create(s *session, c *pb.CreateSandbox) {
	spec := specFrom(c)
	w.mu.Lock()
	if e, ok := w.sandboxes[spec.ID]; ok {
		ready, sb := e.ready, e.sb
		w.mu.Unlock()
		if ready { // a duplicate command: say again what we have
			w.event(s, pb.SandboxEvent_KIND_READY, info(sb), "", 0)
		}
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.sandboxes[spec.ID] = &entry{spec: spec, cancel: cancel}
	w.queued++
	w.wg.Add(1)
	w.mu.Unlock()

	go func() {
		defer w.wg.Done()
		defer cancel()
		acquired := false
		select { // the cap on concurrent creations; the rest wait here
		case w.sem <- struct{}{}:
			acquired = true
		case <-ctx.Done():
		}
		w.mu.Lock()
		w.queued--
		w.creating++
		w.mu.Unlock()
		var (
			sb  sandbox.Sandbox
			err error
		)
		start := time.Now()
		if acquired && ctx.Err() == nil {
			sb, err = w.rt.Create(ctx, spec)
		} else {
			err = ctx.Err()
		}
		if acquired {
			<-w.sem
		}
		micros := time.Since(start).Microseconds()
		w.mu.Lock()
		w.creating--
		e := w.sandboxes[spec.ID]
		cancelled := ctx.Err() != nil
		if err != nil || cancelled {
			delete(w.sandboxes, spec.ID)
		} else {
			e.sb, e.ready = sb, true
		}
		cur := w.session // read with ready set: the hello lists it or cur reports it
		w.mu.Unlock()
		switch {
		case err == nil && cancelled: // deleted while being created
			w.rt.Delete(context.Background(), spec.ID)
			if cur != nil {
				w.event(cur, pb.SandboxEvent_KIND_DELETED, infoSpec(spec), "deleted while being created", 0)
			}
		case err != nil:
			kind, reason := pb.SandboxEvent_KIND_FAILED, err.Error()
			if cancelled {
				kind, reason = pb.SandboxEvent_KIND_DELETED, "deleted while being created"
			} else {
				w.log.Warn("sandbox creation failed", "sandbox", spec.ID, "function", spec.Function, "err", err)
			}
			if cur != nil {
				w.event(cur, kind, infoSpec(spec), reason, micros)
			}
		default:
			if cur != nil {
				w.event(cur, pb.SandboxEvent_KIND_READY, info(sb), "", micros)
			}
		}
	}()
}

func (w *Worker) delete(s *session, id string) {
	w.mu.Lock()
	e, ok := w.sandboxes[id]
	if ok && !e.ready {
		w.mu.Unlock()
		e.cancel() // the creating goroutine cleans up and reports
		return
	}
	delete(w.sandboxes, id)
	w.wg.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.wg.Done()
		in := &pb.SandboxInfo{SandboxId: id}
		if ok {
			in = info(e.sb)
			if err := w.rt.Delete(context.Background(), id); err != nil {
				w.log.Warn("delete sandbox", "sandbox", id, "err", err)
			}
		}
		w.event(s, pb.SandboxEvent_KIND_DELETED, in, "", 0)
	}()
}

// onExit is the runtime's report of a sandbox that stopped on its own.
func (w *Worker) onExit(x sandbox.Exit) {
	w.mu.Lock()
	e, ok := w.sandboxes[x.ID]
	if ok && e.ready {
		delete(w.sandboxes, x.ID)
	}
	s := w.session
	w.mu.Unlock()
	if !ok || !e.ready {
		return
	}
	w.log.Warn("sandbox exited", "sandbox", x.ID, "function", e.spec.Function, "reason", x.Reason)
	if s != nil {
		w.event(s, pb.SandboxEvent_KIND_EXITED, info(e.sb), x.Reason, 0)
	}
}

func specFrom(c *pb.CreateSandbox) sandbox.Spec {
	s := c.GetSpec()
	return sandbox.Spec{
		ID: c.SandboxId, Function: s.GetName(), Generation: c.Generation, Binary: s.GetBinary(), Image: s.GetImage(),
		Args: s.GetArgs(), Env: s.GetEnv(), CPUMillicores: s.GetCpuMillicores(), MemoryMiB: s.GetMemoryMib(),
	}
}

func info(sb sandbox.Sandbox) *pb.SandboxInfo {
	return &pb.SandboxInfo{SandboxId: sb.ID, Function: sb.Function, Generation: sb.Generation, Address: sb.Address,
		CpuMillicores: sb.CPUMillicores, MemoryMib: sb.MemoryMiB}
}

func infoSpec(s sandbox.Spec) *pb.SandboxInfo {
	return &pb.SandboxInfo{SandboxId: s.ID, Function: s.Function, Generation: s.Generation,
		CpuMillicores: s.CPUMillicores, MemoryMib: s.MemoryMiB}
}
