package controlplane

import (
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/batch"
)

// workerSession is one open WorkerSession stream.
type workerSession struct {
	epoch  uint64
	worker *worker

	mu     sync.Mutex
	queue  []*pb.WorkerCommand
	wake   chan struct{}
	closed bool
}

// send queues cmd for the session's sender; it never blocks.
func (s *workerSession) send(cmd *pb.WorkerCommand) {
	cmd.Epoch = s.epoch
	s.mu.Lock()
	if !s.closed {
		s.queue = append(s.queue, cmd)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *workerSession) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// WorkerSession implements the worker link (see the proto for the protocol).
func (cp *ControlPlane) WorkerSession(stream pb.ControlPlane_WorkerSessionServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil || hello.WorkerId == "" {
		return status.Error(codes.InvalidArgument, "the first message of a worker session must be a hello with a worker id")
	}
	sess, accepted := cp.openWorkerSession(hello)
	defer cp.closeWorkerSession(sess)
	if err := stream.Send(accepted); err != nil {
		return err
	}
	cp.log.Info("worker connected", "worker", hello.WorkerId, "epoch", sess.epoch, "sandboxes", len(hello.Sandboxes),
		"cpu", hello.Capacity.GetCpuMillicores(), "memory_mib", hello.Capacity.GetMemoryMib())

	return cp.pump(
		func() error { return cp.workerSender(stream, sess) },
		func() error {
			for {
				msg, err := stream.Recv()
				if err != nil {
					return err
				}
				cp.handleWorkerMessage(sess, msg)
			}
		},
		sess.close)
}

func (cp *ControlPlane) workerSender(stream pb.ControlPlane_WorkerSessionServer, s *workerSession) error {
	for {
		select {
		case <-s.wake:
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
		s.mu.Lock()
		q, closed := s.queue, s.closed
		s.queue = nil
		s.mu.Unlock()
		if closed {
			return nil
		}
		err := batch.Send(q, func(c *pb.WorkerCommand) *pb.WorkerCommand { return c },
			func(run []*pb.WorkerCommand) *pb.WorkerCommand {
				return &pb.WorkerCommand{Epoch: s.epoch, Cmd: &pb.WorkerCommand_Batch{Batch: &pb.WorkerCommands{Commands: run}}}
			}, stream.Send)
		if err != nil {
			return err
		}
	}
}

// openWorkerSession registers (or re-registers) a worker and reconciles what
// it runs with what the control plane expects. It returns the session and
// the SessionAccepted to send first, before anything the session queues.
func (cp *ControlPlane) openWorkerSession(h *pb.WorkerHello) (*workerSession, *pb.WorkerCommand) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	now := cp.cfg.Now()
	w := cp.workers[h.WorkerId]
	known := w != nil && w.up
	if w == nil {
		w = &worker{id: h.WorkerId, sandboxes: make(map[string]*sandbox)}
		cp.workers[h.WorkerId] = w
	}
	if w.session != nil {
		w.session.close()
	}
	w.hostname, w.runtime, w.capacity = h.Hostname, h.Runtime, h.Capacity
	w.used, w.lastBeat, w.up = &pb.Resources{}, now, true
	sess := &workerSession{epoch: cp.nextEpoch(h.LastEpoch), worker: w, wake: make(chan struct{}, 1)}
	w.session = sess
	accepted := &pb.WorkerCommand{Epoch: sess.epoch, Cmd: &pb.WorkerCommand_Accepted{Accepted: &pb.SessionAccepted{
		Epoch: sess.epoch, HeartbeatIntervalMs: cp.cfg.HeartbeatInterval.Milliseconds(),
	}}}

	reported := make(map[string]*pb.SandboxInfo, len(h.Sandboxes))
	for _, s := range h.Sandboxes {
		reported[s.SandboxId] = s
	}
	// What we expected on this worker and it no longer has is gone.
	for id, sb := range w.sandboxes {
		if _, ok := reported[id]; !ok {
			cp.forget(sb)
		}
	}
	touched := map[string]bool{}
	for id, s := range reported {
		if sb := w.sandboxes[id]; sb != nil {
			switch sb.state {
			case sbPending:
				cp.markReady(sb, s.Address, 0)
			case sbDeleting: // the delete may have been lost with the old session
				sess.send(&pb.WorkerCommand{Cmd: &pb.WorkerCommand_Delete{Delete: &pb.DeleteSandbox{SandboxId: id}}})
			}
			continue
		}
		fn := cp.functions[s.Function]
		// A worker this control plane already knew (it was up, or came back
		// after being declared down, whose sandboxes were replaced) runs
		// sandboxes nobody expects: stop them. A worker new to this control
		// plane (after a restart) has its current sandboxes adopted.
		if known || fn == nil || s.Generation != fn.def.Generation || cp.workerWasDown(h.WorkerId) {
			sess.send(&pb.WorkerCommand{Cmd: &pb.WorkerCommand_Delete{Delete: &pb.DeleteSandbox{SandboxId: id}}})
			continue
		}
		sb := &sandbox{id: id, fn: s.Function, generation: s.Generation, worker: w, state: sbReady,
			address: s.Address, cpu: s.CpuMillicores, memory: s.MemoryMib, since: now}
		cp.track(fn, sb)
		fn.desired = max(fn.desired, int32(len(fn.sandboxes)))
		touched[fn.name()] = true
	}
	delete(cp.downWorkers, h.WorkerId)
	for name := range touched {
		cp.markDirty(name)
	}
	close(cp.joined)
	cp.joined = make(chan struct{})
	// Every prepull function's image, again after a reconnect: the worker
	// may be new, restarted, or have missed the deploy.
	for _, fn := range cp.prepulls {
		delete(fn.prepullFailed, w.id) // this attempt's outcome replaces it
		cp.sendPrepull(w, fn)
	}
	return sess, accepted
}

// notePrepull keeps cp.prepulls in step with fn's spec, so that a worker's
// hello or death visits the prepull functions, not all of them. cp.mu held.
func (cp *ControlPlane) notePrepull(fn *function) {
	if fn.def.Spec.Prepull {
		cp.prepulls[fn.name()] = fn
	} else {
		delete(cp.prepulls, fn.name())
	}
}

// sendPrepull asks w, if connected, to fetch fn's image now. It never
// blocks; a worker whose runtime pulls no images ignores it. cp.mu held.
func (cp *ControlPlane) sendPrepull(w *worker, fn *function) {
	if w.session == nil { // (a prepull function always has an image: normalize)
		return
	}
	w.session.send(&pb.WorkerCommand{Cmd: &pb.WorkerCommand_Prepull{Prepull: &pb.PrepullImage{
		Function: fn.name(), Image: fn.def.Spec.Image}}})
}

// handleImageEvent records the outcome of a prepull on w; one about an
// image the function no longer has, or for a function gone, is stale.
// cp.mu held.
func (cp *ControlPlane) handleImageEvent(w *worker, ev *pb.ImageEvent) {
	fn := cp.functions[ev.Function]
	if fn == nil || !fn.def.Spec.Prepull || fn.def.Spec.Image != ev.Image {
		return
	}
	if ev.Ok {
		delete(fn.prepullFailed, w.id)
		return
	}
	cp.log.Warn("image prepull failed", "function", ev.Function, "image", ev.Image, "worker", w.id, "reason", ev.Reason)
	if fn.prepullFailed == nil {
		fn.prepullFailed = make(map[string]*pb.PrepullFailure, 1)
	}
	fn.prepullFailed[w.id] = &pb.PrepullFailure{WorkerId: w.id, Image: ev.Image, Reason: ev.Reason,
		UnixMs: cp.cfg.Now().UnixMilli()}
}

// workerWasDown reports whether id was declared down by this control plane
// (its sandboxes were then replaced elsewhere). cp.mu held.
func (cp *ControlPlane) workerWasDown(id string) bool {
	_, ok := cp.downWorkers[id]
	return ok
}

func (cp *ControlPlane) closeWorkerSession(s *workerSession) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if s.worker.session == s {
		s.worker.session = nil
		cp.log.Info("worker disconnected", "worker", s.worker.id, "epoch", s.epoch)
	}
}

func (cp *ControlPlane) handleWorkerMessage(s *workerSession, msg *pb.WorkerMessage) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	now := cp.cfg.Now()
	if b := msg.GetBatch(); b != nil {
		for _, m := range b.Messages {
			cp.handleWorkerMessageLocked(s, m, now) // a nested batch matches no case there
		}
		return
	}
	cp.handleWorkerMessageLocked(s, msg, now)
}

// handleWorkerMessageLocked handles one message (not a batch), which came
// at now. cp.mu held.
func (cp *ControlPlane) handleWorkerMessageLocked(s *workerSession, msg *pb.WorkerMessage, now time.Time) {
	w := s.worker
	if w.session != s {
		return // a newer session replaced this one
	}
	switch m := msg.Msg.(type) {
	case *pb.WorkerMessage_Heartbeat:
		if m.Heartbeat.Epoch != s.epoch {
			return
		}
		w.lastBeat = now
		w.used = m.Heartbeat.Used
	case *pb.WorkerMessage_Event:
		ev := m.Event
		if ev.Epoch != s.epoch || ev.Sandbox == nil {
			return
		}
		w.lastBeat = now
		cp.handleSandboxEvent(w, ev)
	case *pb.WorkerMessage_Image:
		if m.Image.Epoch != s.epoch {
			return
		}
		w.lastBeat = now
		cp.handleImageEvent(w, m.Image)
	}
}

func (cp *ControlPlane) handleSandboxEvent(w *worker, ev *pb.SandboxEvent) {
	id := ev.Sandbox.SandboxId
	sb := w.sandboxes[id]
	switch ev.Kind {
	case pb.SandboxEvent_KIND_READY:
		if sb == nil {
			// Not ours (any more): a duplicate or a late answer.
			w.session.send(&pb.WorkerCommand{Cmd: &pb.WorkerCommand_Delete{Delete: &pb.DeleteSandbox{SandboxId: id}}})
			return
		}
		if sb.state == sbPending {
			cp.markReady(sb, ev.Sandbox.Address, ev.CreateMicros)
		}
	case pb.SandboxEvent_KIND_FAILED:
		if sb == nil {
			return
		}
		cp.forget(sb)
		if fn := cp.functions[sb.fn]; fn != nil && sb.state == sbPending {
			cp.creationFailed(fn, ev.Reason)
		}
	case pb.SandboxEvent_KIND_EXITED, pb.SandboxEvent_KIND_DELETED:
		if sb == nil {
			return
		}
		wasLive := sb.state == sbReady || sb.state == sbPending
		cp.forget(sb)
		if fn := cp.functions[sb.fn]; fn != nil && wasLive {
			cp.log.Warn("sandbox exited", "function", sb.fn, "sandbox", id, "worker", w.id, "reason", ev.Reason)
			cp.reconcile(fn) // replace it
		}
	}
}

func (cp *ControlPlane) markReady(sb *sandbox, addr string, createMicros int64) {
	sb.state, sb.address, sb.createMicros, sb.since = sbReady, addr, createMicros, cp.cfg.Now()
	fn := cp.functions[sb.fn]
	if fn == nil {
		cp.stopSandbox(sb)
		return
	}
	if sb.generation != fn.def.Generation {
		cp.drain(fn, sb)
		return
	}
	fn.failures, fn.lastErr = 0, ""
	cp.markDirty(sb.fn)
}

// checkHeartbeats declares down the workers silent for longer than the
// timeout: their sandboxes are forgotten, leave every data plane's table at
// once, and are replaced elsewhere.
func (cp *ControlPlane) checkHeartbeats(now time.Time) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, w := range cp.workers {
		if !w.up || now.Sub(w.lastBeat) < cp.cfg.HeartbeatTimeout {
			continue
		}
		w.up = false
		cp.downWorkers[w.id] = struct{}{}
		if w.session != nil {
			w.session.close()
			w.session = nil
		}
		cp.log.Warn("worker down: missed heartbeats", "worker", w.id, "silent_for", now.Sub(w.lastBeat).Round(time.Millisecond),
			"sandboxes", len(w.sandboxes))
		for _, fn := range cp.prepulls {
			delete(fn.prepullFailed, w.id) // it runs nothing now; asked again when it returns
		}
		affected := map[string]*function{}
		for _, sb := range w.sandboxes {
			if fn := cp.functions[sb.fn]; fn != nil {
				affected[sb.fn] = fn
			}
			cp.forget(sb)
		}
		for _, fn := range affected {
			cp.reconcile(fn)
		}
	}
}
