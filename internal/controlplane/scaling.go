package controlplane

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/autoscaler"
	"github.com/batonfaas/baton/internal/placement"
)

// The scaling loop: the autoscaler decides a desired scale per function,
// reconcile makes the sandboxes match it. Everything here but tick runs with
// cp.mu held and does no I/O: commands go to per-session outboxes.

// tickChunk is how many functions one hold of cp.mu decides in a tick: with
// thousands of active functions (about 1 µs each) a tick under one hold
// stalled scale requests and sandbox events for milliseconds.
const tickChunk = 256

// tick runs the autoscaler for every function that has anything going on,
// tickChunk functions at a time.
func (cp *ControlPlane) tick(now time.Time) {
	cp.mu.Lock()
	var busy []*function
	for _, fn := range cp.functions {
		if fn.desired == 0 && len(fn.sandboxes) == 0 && !fn.active && fn.cfg.MinScale == 0 {
			continue // idle functions cost nothing
		}
		busy = append(busy, fn)
	}
	cp.mu.Unlock()
	for i := 0; i < len(busy); i += tickChunk {
		cp.mu.Lock()
		for _, fn := range busy[i:min(i+tickChunk, len(busy))] {
			if cp.functions[fn.name()] != fn {
				continue // deleted meanwhile
			}
			cp.decide(fn, now)
			cp.reconcile(fn)
		}
		cp.mu.Unlock()
	}
	cp.mu.Lock()
	cp.drainDue(now)
	cp.mu.Unlock()
}

func (cp *ControlPlane) decide(fn *function, now time.Time) {
	_, ready := fn.counts()
	in := autoscaler.Input{
		Now:               now,
		Ready:             ready,
		StableConcurrency: fn.window.Average(now, fn.cfg.StableWindow),
		PanicConcurrency:  fn.window.Average(now, fn.cfg.PanicWindow()),
		Active:            fn.active,
	}
	d := autoscaler.Decide(fn.cfg, in, fn.scaler)
	fn.scaler, fn.active = d.State, false
	// A scale decided at once from a ScaleRequest is not undone by a tick
	// that comes before the first load report has reached the window: an
	// empty window right after a request is no evidence of zero load.
	if fn.window.Empty(now) && !fn.lastLoad.IsZero() && now.Sub(fn.lastLoad) < fn.cfg.PanicWindow() {
		d.Desired = max(d.Desired, fn.desired)
	}
	// The windows smooth a falling trend; they never take the scale below
	// what the requests in flight and queued right now need (the average of
	// a window that has just started under-estimates them).
	if demand := fn.demand(); demand > 0 {
		need := int32(math.Ceil(float64(demand)/(fn.cfg.TargetConcurrency*fn.cfg.TargetUtilization) - 1e-9))
		if fn.cfg.MaxScale > 0 {
			need = min(need, fn.cfg.MaxScale)
		}
		d.Desired = max(d.Desired, need)
	}
	if d.Desired != fn.desired {
		cp.log.Debug("scale", "function", fn.name(), "from", fn.desired, "to", d.Desired, "panic", d.Panic,
			"stable", in.StableConcurrency, "panicc", in.PanicConcurrency, "ready", ready)
	}
	fn.desired = d.Desired
}

// scaleRequest handles a data plane's word that requests queue for fn. Scale
// from zero is decided here, at once; a function that has sandboxes but
// fewer than its queue needs grows at once too, within its max scale-up rate.
func (cp *ControlPlane) scaleRequest(fn *function, queued, inFlight int32, now time.Time) {
	fn.active = true
	fn.scaler.LastActive = now
	pending, ready := fn.counts()
	have := pending + ready
	if have == 0 {
		fn.desired = max(fn.desired, autoscaler.FromZero(fn.cfg, queued+inFlight))
	} else {
		target := fn.cfg.TargetConcurrency * fn.cfg.TargetUtilization
		need := int32(math.Ceil(float64(queued+inFlight) / target))
		limit := int32(math.Ceil(fn.cfg.MaxScaleUpRate * float64(max(ready, 1))))
		need = min(need, limit)
		if fn.cfg.MaxScale > 0 {
			need = min(need, fn.cfg.MaxScale)
		}
		fn.desired = max(fn.desired, need)
	}
	cp.reconcile(fn)
	if fn.lastErr != "" {
		cp.markDirty(fn.name()) // tell the data plane the reason again
	}
}

// reconcile creates or removes sandboxes of fn's current generation until
// pending+ready equals the desired scale.
func (cp *ControlPlane) reconcile(fn *function) {
	pending, ready := fn.counts()
	have := pending + ready
	switch {
	case fn.desired > have:
		now := cp.cfg.Now()
		if now.Before(fn.backoff) {
			cp.scheduleRetry(fn, fn.backoff.Sub(now))
			return
		}
		for i := have; i < fn.desired; i++ {
			if err := cp.createSandbox(fn); err != nil {
				if cp.rebuilding(now) { // workers are still reconnecting to a new leader
					cp.scheduleRetry(fn, 20*time.Millisecond)
					return
				}
				cp.creationFailed(fn, err.Error())
				return
			}
		}
	case fn.desired < have:
		if cp.holdScaleDown(fn) {
			return // a new leader does not shrink until it knows what runs
		}
		excess := have - fn.desired
		// Pending ones first: they serve nobody yet.
		for _, sb := range fn.sandboxes {
			if excess == 0 {
				break
			}
			if sb.generation == fn.def.Generation && sb.state == sbPending {
				cp.stopSandbox(sb)
				excess--
			}
		}
		for _, sb := range fn.sandboxes {
			if excess == 0 {
				break
			}
			if sb.generation == fn.def.Generation && sb.state == sbReady {
				cp.drain(fn, sb)
				excess--
			}
		}
	}
}

// createSandbox places one new sandbox of fn and sends the command.
func (cp *ControlPlane) createSandbox(fn *function) error {
	spec := fn.def.Spec
	req := placement.Request{CPU: spec.CpuMillicores, Memory: spec.MemoryMib}
	nodes := cp.nodes[:0]
	cp.nodeWorkers = cp.nodeWorkers[:0]
	for _, w := range cp.workers {
		if !w.up || w.session == nil {
			continue
		}
		nodes = append(nodes, placement.Node{
			ID: w.id, CPU: w.capacity.GetCpuMillicores(), Memory: w.capacity.GetMemoryMib(),
			UsedCPU: w.usedCPU, UsedMemory: w.usedMem, Sandboxes: len(w.sandboxes),
		})
		cp.nodeWorkers = append(cp.nodeWorkers, w)
	}
	cp.nodes = nodes
	if len(nodes) == 0 {
		return errors.New("no worker is up")
	}
	i, err := cp.placer.Place(nodes, req)
	if err != nil {
		return err // it says what did not fit where
	}
	w := cp.nodeWorkers[i]
	sb := &sandbox{
		id: newSandboxID(fn.name()), fn: fn.name(), generation: fn.def.Generation, worker: w,
		state: sbPending, cpu: spec.CpuMillicores, memory: spec.MemoryMib, since: cp.cfg.Now(),
	}
	cp.track(fn, sb)
	w.session.send(&pb.WorkerCommand{Cmd: &pb.WorkerCommand_Create{Create: &pb.CreateSandbox{
		SandboxId: sb.id, Spec: spec, Generation: fn.def.Generation,
	}}})
	return nil
}

// creationFailed records why fn could not get a sandbox and backs off:
// 1 s, doubling up to a minute, while the failures go on.
func (cp *ControlPlane) creationFailed(fn *function, reason string) {
	now := cp.cfg.Now()
	fn.failures++
	fn.lastErr, fn.lastErrAt = reason, now
	delay := time.Second << min(fn.failures-1, 6)
	fn.backoff = now.Add(min(delay, time.Minute))
	cp.log.Warn("sandbox creation failed", "function", fn.name(), "reason", reason, "retry_in", delay)
	cp.markDirty(fn.name())
	cp.scheduleRetry(fn, fn.backoff.Sub(now))
}

func (cp *ControlPlane) scheduleRetry(fn *function, after time.Duration) {
	if fn.retry {
		return
	}
	fn.retry = true
	name := fn.name()
	cp.afterFunc(after, func() {
		cp.mu.Lock()
		defer cp.mu.Unlock()
		if f := cp.functions[name]; f == fn {
			fn.retry = false
			cp.reconcile(fn)
		}
	})
}

// drain takes sb out of the data planes' tables now and deletes it once the
// requests already sent to it can have finished: at once for an idle
// function, after the function's timeout otherwise.
func (cp *ControlPlane) drain(fn *function, sb *sandbox) {
	now := cp.cfg.Now()
	sb.state, sb.since = sbDraining, now
	delay := cp.cfg.IdleDrain
	if now.Sub(fn.lastLoad) < 2*time.Second {
		delay = time.Duration(fn.def.Spec.TimeoutMs) * time.Millisecond
	}
	cp.draining[sb.id] = now.Add(delay)
	cp.markDirty(fn.name())
	cp.wakeDrainer(delay)
}

// drainDue deletes draining sandboxes whose delay has passed.
func (cp *ControlPlane) drainDue(now time.Time) {
	for id, due := range cp.draining {
		if now.Before(due) {
			continue
		}
		delete(cp.draining, id)
		if sb := cp.sandboxByID(id); sb != nil && sb.state == sbDraining {
			cp.stopSandbox(sb)
		}
	}
}

func (cp *ControlPlane) wakeDrainer(after time.Duration) {
	cp.afterFunc(after, func() {
		cp.mu.Lock()
		defer cp.mu.Unlock()
		cp.drainDue(cp.cfg.Now())
	})
}

// drainOldGenerations drains every sandbox of fn older than its definition.
func (cp *ControlPlane) drainOldGenerations(fn *function) {
	for _, sb := range fn.sandboxes {
		if sb.generation == fn.def.Generation {
			continue
		}
		switch sb.state {
		case sbReady:
			cp.drain(fn, sb)
		case sbPending:
			cp.stopSandbox(sb)
		}
	}
}

// stopSandbox asks its worker to delete sb. The record goes when the worker
// confirms, or with the worker.
func (cp *ControlPlane) stopSandbox(sb *sandbox) {
	wasReady := sb.state == sbReady
	sb.state, sb.since = sbDeleting, cp.cfg.Now()
	delete(cp.draining, sb.id)
	if sb.worker.session != nil {
		sb.worker.session.send(&pb.WorkerCommand{Cmd: &pb.WorkerCommand_Delete{Delete: &pb.DeleteSandbox{SandboxId: sb.id}}})
	}
	if wasReady {
		cp.markDirty(sb.fn)
	}
}

// track records a new sandbox of fn.
func (cp *ControlPlane) track(fn *function, sb *sandbox) {
	fn.sandboxes[sb.id] = sb
	sb.worker.add(sb)
	cp.sandboxes[sb.id] = sb
}

// forget drops every trace of sb.
func (cp *ControlPlane) forget(sb *sandbox) {
	sb.worker.remove(sb)
	if cp.sandboxes[sb.id] == sb {
		delete(cp.sandboxes, sb.id)
	}
	delete(cp.draining, sb.id)
	if fn := cp.functions[sb.fn]; fn != nil {
		if cur, ok := fn.sandboxes[sb.id]; ok && cur == sb {
			delete(fn.sandboxes, sb.id)
		}
	}
	if sb.state == sbReady {
		cp.markDirty(sb.fn)
	}
}

func (cp *ControlPlane) sandboxByID(id string) *sandbox { return cp.sandboxes[id] }

func newSandboxID(fn string) string {
	var b [5]byte
	rand.Read(b[:])
	if len(fn) > 40 {
		fn = fn[:40]
	}
	return fn + "-" + hex.EncodeToString(b[:])
}
