package controlplane

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/cpclient"
	"github.com/batonfaas/baton/internal/errdefs"
)

// High availability. When the store is replicated (it implements
// Leadership), only the replica that leads the store's Raft group acts as
// the control plane; the others answer every call with "not the leader"
// (gRPC FailedPrecondition), which clients (internal/cpclient) take as "try
// the next replica". A new leader:
//  1. waits for the store's barrier, so its registry is complete, and loads it;
//  2. records its API address in the log (memberKey), so followers can
//     forward the Dirigent front door's registrations to it;
//  3. accepts worker and data-plane sessions: workers' hellos list what they
//     run and it adopts those sandboxes, data planes re-send their scale
//     requests;
//  4. holds scale-down for one stable window, until that picture is complete.
// No sandbox, scale or autoscaler state is ever written to the store.

// Leadership is what a replicated store tells about its Raft group.
type Leadership interface {
	IsLeader() bool
	Leader() string // the leader's replica id, "" if unknown
	Term() uint64
	LeaderCh() <-chan bool
	Barrier(ctx context.Context) error
}

// memberPrefix keys the replicas' API addresses in the store; function
// names cannot start with it.
const memberPrefix = "\x00member/"

// isLeader reports whether this replica acts as the control plane.
func (cp *ControlPlane) isLeader() bool { return cp.lead == nil || cp.leading.Load() }

// notLeader is the error followers answer with.
func (cp *ControlPlane) notLeader() error {
	leader := "unknown, an election is in progress"
	if id := cp.lead.Leader(); id != "" {
		leader = id
		if addr := cp.memberAddr(id); addr != "" {
			leader += " at " + addr
		}
	}
	return status.Errorf(codes.FailedPrecondition, "%s (this is replica %s; the leader is %s)", cpclient.NotLeader, cp.cfg.ReplicaID, leader)
}

func (cp *ControlPlane) memberAddr(id string) string {
	b, err := cp.store.Get(context.Background(), memberPrefix+id)
	if err != nil {
		return ""
	}
	return string(b)
}

// leaderInterceptors refuse every call on a follower.
func (cp *ControlPlane) unaryGuard(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if !cp.isLeader() {
		return nil, cp.notLeader()
	}
	return h(ctx, req)
}

func (cp *ControlPlane) streamGuard(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if !cp.isLeader() {
		return cp.notLeader()
	}
	return h(srv, ss)
}

// watchLeadership follows the store's leadership until ctx is done.
func (cp *ControlPlane) watchLeadership(ctx context.Context) {
	ch := cp.lead.LeaderCh()
	check := time.NewTicker(100 * time.Millisecond) // LeaderCh may coalesce; poll as a safety net
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-check.C:
		}
		now := cp.lead.IsLeader()
		if now == cp.leading.Load() {
			continue
		}
		if now {
			cp.becomeLeader(ctx)
		} else {
			cp.stepDown()
		}
	}
}

func (cp *ControlPlane) becomeLeader(ctx context.Context) {
	start := time.Now()
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := cp.lead.Barrier(bctx)
	cancel()
	if err != nil {
		cp.log.Warn("leadership: barrier failed; staying a follower", "err", err)
		return
	}
	cp.mu.Lock()
	cp.resetSoftState()
	err = cp.loadFunctions(ctx)
	cp.leaderSince = cp.cfg.Now()
	n := len(cp.functions)
	cp.mu.Unlock()
	if err != nil {
		cp.log.Error("leadership: load the registry", "err", err)
		return
	}
	cp.leading.Store(true)
	cp.log.Info("became the leader", "replica", cp.cfg.ReplicaID, "term", cp.lead.Term(), "functions", n,
		"took", time.Since(start).Round(time.Microsecond))
	// Tell followers where to forward registrations (a write per election,
	// never on the invocation path).
	go func() {
		if err := cp.store.Put(ctx, memberPrefix+cp.cfg.ReplicaID, []byte(cp.Addr())); err != nil {
			cp.log.Warn("leadership: record the API address", "err", err)
		}
	}()
}

func (cp *ControlPlane) stepDown() {
	cp.leading.Store(false)
	cp.mu.Lock()
	cp.resetSoftState()
	cp.mu.Unlock()
	cp.log.Warn("no longer the leader", "replica", cp.cfg.ReplicaID, "leader", cp.lead.Leader())
}

// resetSoftState forgets everything in memory and closes every session, so
// workers and data planes reconnect to the new leader. cp.mu held.
func (cp *ControlPlane) resetSoftState() {
	for _, w := range cp.workers {
		if w.session != nil {
			w.session.close()
		}
	}
	for _, d := range cp.dataPlanes {
		d.closed = true
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	cp.functions = make(map[string]*function)
	cp.workers = make(map[string]*worker)
	cp.sandboxes = make(map[string]*sandbox)
	cp.dataPlanes = make(map[string]*dataPlaneSession)
	cp.draining = make(map[string]time.Time)
	cp.downWorkers = make(map[string]struct{})
	cp.prepulls = make(map[string]*function)
}

// rebuilding reports whether this replica became the leader less than the
// rebuild grace ago. cp.mu held.
func (cp *ControlPlane) rebuilding(now time.Time) bool {
	return cp.lead != nil && now.Before(cp.leaderSince.Add(cp.cfg.RebuildGrace))
}

// awaitRebuild delays a data plane's first snapshot until the workers its
// table routes to (expect, from its hello) have reconnected, or the rebuild
// grace has passed, so that its table is not emptied of sandboxes whose
// workers have not reconnected yet. Workers retry every 25 ms after losing
// their session, so the wait is usually a few tens of milliseconds; the
// grace bounds it when a worker died with the old leader.
func (cp *ControlPlane) awaitRebuild(ctx context.Context, expect []string) {
	if cp.lead == nil {
		return
	}
	for {
		cp.mu.Lock()
		wait := cp.leaderSince.Add(cp.cfg.RebuildGrace).Sub(cp.cfg.Now())
		missing := false
		for _, id := range expect {
			if w := cp.workers[id]; w == nil || w.session == nil {
				missing = true
				break
			}
		}
		joined := cp.joined
		cp.mu.Unlock()
		if wait <= 0 || !missing {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-joined:
		}
		t.Stop()
		if ctx.Err() != nil {
			return
		}
	}
}

// holdScaleDown reports whether fn may not shrink yet: for one stable
// window after this replica became the leader, while workers report what
// they run. cp.mu held.
func (cp *ControlPlane) holdScaleDown(fn *function) bool {
	return cp.lead != nil && cp.cfg.Now().Before(cp.leaderSince.Add(fn.cfg.StableWindow))
}

// forwarder sends the Dirigent front door's registrations from a follower
// to the leader.
type forwarder struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// forwardDeploy deploys spec through the leader and returns the data
// planes the leader knows.
func (cp *ControlPlane) forwardDeploy(ctx context.Context, spec *pb.FunctionSpec) ([]string, error) {
	id := cp.lead.Leader()
	addr := cp.memberAddr(id)
	if addr == "" {
		return nil, fmt.Errorf("this replica is not the leader and does not know the leader's address yet (leader %q)", id)
	}
	cp.fwd.mu.Lock()
	conn := cp.fwd.conns[addr]
	if conn == nil {
		var err error
		conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			cp.fwd.mu.Unlock()
			return nil, err
		}
		if cp.fwd.conns == nil {
			cp.fwd.conns = map[string]*grpc.ClientConn{}
		}
		cp.fwd.conns[addr] = conn
	}
	cp.fwd.mu.Unlock()
	c := pb.NewControlPlaneClient(conn)
	if _, err := c.DeployFunction(ctx, &pb.DeployFunctionRequest{Spec: spec}); err != nil {
		return nil, fmt.Errorf("forward to the leader %s at %s: %w", id, addr, errdefs.FromGRPC(err))
	}
	st, err := c.GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("ask the leader %s at %s for its data planes: %s", id, addr, status.Convert(err).Message())
	}
	var out []string
	for _, d := range st.DataPlanes {
		if d.Connected && d.Address != "" {
			out = append(out, d.Address)
		}
	}
	return out, nil
}

func (cp *ControlPlane) closeForwarder() {
	cp.fwd.mu.Lock()
	defer cp.fwd.mu.Unlock()
	for _, c := range cp.fwd.conns {
		c.Close()
	}
}
