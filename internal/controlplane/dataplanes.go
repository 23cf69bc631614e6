package controlplane

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
)

// dataPlaneSession is one open DataPlaneSession stream. Route changes are
// not queued as messages: the session keeps the set of function names that
// changed, and its sender builds one update from the current state for all
// of them. Many changes in a row thus coalesce into one message, and what is
// sent is never stale.
type dataPlaneSession struct {
	id      string
	address string
	epoch   uint64
	full    bool                // the next update is a snapshot
	dirty   map[string]struct{} // guarded by ControlPlane.mu
	wake    chan struct{}
	closed  bool
	acked   uint64 // highest route version it has applied
}

// markDirty records that fn's route changed, for every data plane. cp.mu held.
func (cp *ControlPlane) markDirty(fn string) {
	for _, s := range cp.dataPlanes {
		s.dirty[fn] = struct{}{}
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// DataPlaneSession implements the data-plane link (see the proto).
func (cp *ControlPlane) DataPlaneSession(stream pb.ControlPlane_DataPlaneSessionServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil || hello.DataPlaneId == "" {
		return status.Error(codes.InvalidArgument, "the first message of a data-plane session must be a hello with an id")
	}
	cp.awaitRebuild(stream.Context(), hello.Workers)
	cp.mu.Lock()
	if old := cp.dataPlanes[hello.DataPlaneId]; old != nil {
		old.closed = true
		select {
		case old.wake <- struct{}{}:
		default:
		}
	}
	s := &dataPlaneSession{id: hello.DataPlaneId, address: hello.Address, epoch: cp.nextEpoch(hello.LastEpoch), full: true,
		dirty: make(map[string]struct{}), wake: make(chan struct{}, 1)}
	s.wake <- struct{}{}
	cp.dataPlanes[s.id] = s
	cp.mu.Unlock()
	cp.log.Info("data plane connected", "data_plane", s.id, "address", s.address, "epoch", s.epoch)
	defer func() {
		cp.mu.Lock()
		if cp.dataPlanes[s.id] == s {
			delete(cp.dataPlanes, s.id)
			for _, fn := range cp.functions {
				if fn.load != nil {
					fn.setLoad(s.id, 0)
				}
			}
		}
		cp.mu.Unlock()
		cp.log.Info("data plane disconnected", "data_plane", s.id, "epoch", s.epoch)
	}()

	return cp.pump(
		func() error { return cp.dataPlaneSender(stream, s) },
		func() error {
			for {
				msg, err := stream.Recv()
				if err != nil {
					return err
				}
				cp.handleDataPlaneMessage(s, msg)
			}
		},
		func() {
			cp.mu.Lock()
			s.closed = true
			cp.mu.Unlock()
			select {
			case s.wake <- struct{}{}:
			default:
			}
		})
}

func (cp *ControlPlane) dataPlaneSender(stream pb.ControlPlane_DataPlaneSessionServer, s *dataPlaneSession) error {
	for {
		select {
		case <-s.wake:
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
		cp.mu.Lock()
		if s.closed {
			cp.mu.Unlock()
			return nil
		}
		u := &pb.RouteUpdate{Epoch: s.epoch}
		if s.full {
			u.Full = true
			s.full = false
			u.Functions = make([]*pb.FunctionRoute, 0, len(cp.functions))
			for _, fn := range cp.functions {
				u.Functions = append(u.Functions, cp.route(fn))
			}
		} else {
			u.Functions = make([]*pb.FunctionRoute, 0, len(s.dirty))
			for name := range s.dirty {
				if fn := cp.functions[name]; fn != nil {
					u.Functions = append(u.Functions, cp.route(fn))
				} else {
					cp.routeSeq++
					u.Functions = append(u.Functions, &pb.FunctionRoute{Name: name, Version: cp.routeSeq, Deleted: true})
				}
			}
		}
		clear(s.dirty)
		cp.mu.Unlock()
		if !u.Full && len(u.Functions) == 0 {
			continue
		}
		if err := stream.Send(u); err != nil {
			return err
		}
	}
}

// route is fn's entry in the data planes' tables: its ready sandboxes of the
// current generation. cp.mu held.
func (cp *ControlPlane) route(fn *function) *pb.FunctionRoute {
	cp.routeSeq++
	spec := fn.def.Spec
	r := &pb.FunctionRoute{
		Name: spec.Name, Version: cp.routeSeq, Concurrency: spec.Concurrency,
		TimeoutMs: spec.TimeoutMs, Generation: fn.def.Generation, Retry: spec.Retry,
	}
	for _, sb := range fn.sandboxes {
		if sb.state == sbReady && sb.generation == fn.def.Generation {
			r.Endpoints = append(r.Endpoints, &pb.Endpoint{
				SandboxId: sb.id, Address: sb.address, WorkerId: sb.worker.id, CreateMicros: sb.createMicros,
			})
		}
	}
	if len(r.Endpoints) == 0 && fn.lastErr != "" {
		r.Error = fn.lastErr
	}
	return r
}

func (cp *ControlPlane) handleDataPlaneMessage(s *dataPlaneSession, msg *pb.DataPlaneMessage) {
	now := cp.cfg.Now()
	switch m := msg.Msg.(type) {
	case *pb.DataPlaneMessage_Load:
		if m.Load.Epoch != s.epoch {
			return
		}
		interval := time.Duration(m.Load.IntervalMs) * time.Millisecond
		cp.mu.Lock()
		for _, l := range m.Load.Functions {
			fn := cp.functions[l.Function]
			if fn == nil {
				continue
			}
			fn.window.Record(now, l.Concurrency, interval)
			fn.setLoad(s.id, l.InFlight+l.Queued)
			if l.Arrivals > 0 || l.Concurrency > 0 || l.InFlight > 0 || l.Queued > 0 {
				fn.active = true
				fn.lastLoad = now
			}
		}
		cp.mu.Unlock()
	case *pb.DataPlaneMessage_Ack:
		if m.Ack.Epoch != s.epoch {
			return
		}
		cp.mu.Lock()
		s.acked = max(s.acked, m.Ack.Version)
		cp.mu.Unlock()
	case *pb.DataPlaneMessage_Scale:
		cp.mu.Lock()
		cp.handleScale(s, m.Scale, now)
		cp.mu.Unlock()
	case *pb.DataPlaneMessage_Scales:
		cp.mu.Lock()
		for _, r := range m.Scales.Requests {
			cp.handleScale(s, r, now)
		}
		cp.mu.Unlock()
	}
}

// handleScale handles one scale request. cp.mu held.
func (cp *ControlPlane) handleScale(s *dataPlaneSession, r *pb.ScaleRequest, now time.Time) {
	if r.Epoch != s.epoch {
		return
	}
	if fn := cp.functions[r.Function]; fn != nil {
		fn.lastLoad = now
		cp.scaleRequest(fn, r.Queued, r.InFlight, now)
	}
}

// routeBarrier returns a function that waits until every data plane now
// connected has applied the routes marked dirty before the call (or left),
// at most for d. cp.mu held when routeBarrier is called, not when waiting.
func (cp *ControlPlane) routeBarrier() func(d time.Duration) bool {
	need := cp.routeSeq + 1 // every route built from now on has a version >= need
	sessions := make([]*dataPlaneSession, 0, len(cp.dataPlanes))
	for _, s := range cp.dataPlanes {
		sessions = append(sessions, s)
	}
	return func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for {
			cp.mu.Lock()
			done := true
			for _, s := range sessions {
				if !s.closed && cp.dataPlanes[s.id] == s && s.acked < need {
					done = false
					break
				}
			}
			cp.mu.Unlock()
			if done {
				return true
			}
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
}
