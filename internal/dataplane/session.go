package dataplane

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/batch"
)

// The session with the control plane (DataPlaneSession): hello, a full route
// snapshot, then incremental updates in; load reports and scale requests
// out. When the stream breaks the data plane keeps serving from its table
// and reconnects with back-off, telling the control plane the epoch it
// held.

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
	// maxRouteMsg bounds one RouteUpdate; a full snapshot of many thousand
	// functions exceeds gRPC's default of 4 MiB.
	maxRouteMsg = 256 << 20
)

// runSessions keeps a session open until ctx is done. ControlPlane may list
// several replicas (comma-separated): after a failure the next one is tried
// at once (a follower refuses the session; a fail-over is quick), and only
// after a whole round of failures does the delay grow.
func (d *DataPlane) runSessions(ctx context.Context) {
	addrs := strings.Split(d.cfg.ControlPlane, ",")
	delay := minBackoff
	failingSince := time.Now()
	for i := 0; ; i = (i + 1) % len(addrs) {
		addr := strings.TrimSpace(addrs[i])
		established, err := d.session(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if established {
			delay = minBackoff
			failingSince = time.Now()
			d.log.Warn("control plane session lost; serving from the routing table", "controlplane", addr, "err", err)
		} else if errors.Is(err, ErrStaleEpoch) {
			// The control plane should pick an epoch above our last_epoch.
			d.log.Warn("control plane sent a stale snapshot", "controlplane", addr, "err", err, "retry_in", delay)
		} else {
			d.log.Debug("control plane session failed", "controlplane", addr, "err", err, "retry_in", delay)
		}
		// The next replica at once; a fail-over takes a few hundred
		// milliseconds, so keep retrying quickly for a while before backing
		// off.
		wait := 20 * time.Millisecond
		if (i+1)%len(addrs) == 0 && !established && time.Since(failingSince) > 3*time.Second {
			wait = delay
			delay = min(2*delay, maxBackoff)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// session runs one session until the stream breaks or ctx is done.
// established says whether the first snapshot was applied.
func (d *DataPlane) session(ctx context.Context, addr string) (established bool, err error) {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRouteMsg)))
	if err != nil {
		return false, fmt.Errorf("dial control plane: %w", err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()

	stream, err := controlplanev1.NewControlPlaneClient(conn).DataPlaneSession(sctx)
	if err != nil {
		return false, fmt.Errorf("open session: %w", err)
	}
	hello := &controlplanev1.DataPlaneMessage{Msg: &controlplanev1.DataPlaneMessage_Hello{Hello: &controlplanev1.DataPlaneHello{
		DataPlaneId: d.cfg.ID,
		Address:     d.cfg.Advertise,
		LastEpoch:   d.rt.epoch.Load(),
		Workers:     d.rt.workerIDs(),
	}}}
	if err := stream.Send(hello); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return false, fmt.Errorf("receive snapshot: %w", err)
	}
	if !first.GetFull() {
		return false, errors.New("first route update of the session is not a full snapshot")
	}
	if err := d.rt.applyRoutes(first); err != nil {
		return false, fmt.Errorf("apply snapshot: %w", err)
	}
	d.log.Info("control plane session established", "controlplane", addr,
		"epoch", first.GetEpoch(), "functions", len(first.GetFunctions()))
	d.rt.markWaiting()
	acks := newAcker(first)

	var wg sync.WaitGroup
	sendErr := make(chan error, 1)
	wg.Go(func() {
		if err := d.sendLoop(sctx, stream, acks); err != nil {
			sendErr <- err
			cancel()
		}
	})
	for {
		u, rerr := stream.Recv()
		if rerr != nil {
			err = rerr
			break
		}
		if aerr := d.rt.applyRoutes(u); aerr != nil {
			d.log.Debug("route update dropped", "err", aerr)
			continue
		}
		acks.applied(u)
	}
	cancel()
	wg.Wait()
	select {
	case serr := <-sendErr:
		err = serr
	default:
	}
	return true, err
}

// sendLoop is the session's only sender: scale requests as soon as the
// request path marks a function, load reports every ReportInterval.
func (d *DataPlane) sendLoop(ctx context.Context, stream grpc.BidiStreamingClient[controlplanev1.DataPlaneMessage, controlplanev1.RouteUpdate], acks *acker) error {
	rep := &reporter{rt: d.rt}
	rep.reset(d.rt.micros(time.Now()))
	tick := time.NewTicker(d.cfg.ReportInterval)
	defer tick.Stop()
	var fns []*function
	var reqs []*controlplanev1.ScaleRequest
	sendScales := func() error {
		fns = d.rt.scale.take(fns)
		epoch := d.rt.epoch.Load()
		for _, fn := range fns {
			queued := fn.queued.Load()
			reqs = append(reqs, &controlplanev1.ScaleRequest{
				Epoch:    epoch,
				Function: fn.name,
				Queued:   queued,
				InFlight: max(int32(fn.load.level())-queued, 0),
			})
		}
		clear(fns)
		defer func() { clear(reqs); reqs = reqs[:0] }()
		err := batch.Send(reqs, func(r *controlplanev1.ScaleRequest) *controlplanev1.DataPlaneMessage {
			return &controlplanev1.DataPlaneMessage{Msg: &controlplanev1.DataPlaneMessage_Scale{Scale: r}}
		}, func(run []*controlplanev1.ScaleRequest) *controlplanev1.DataPlaneMessage {
			return &controlplanev1.DataPlaneMessage{Msg: &controlplanev1.DataPlaneMessage_Scales{Scales: &controlplanev1.ScaleRequests{Requests: run}}}
		}, stream.Send)
		if err != nil {
			return fmt.Errorf("send scale requests: %w", err)
		}
		return nil
	}
	var acked uint64
	sendAck := func() error {
		v := acks.version.Load()
		if v == acked {
			return nil
		}
		acked = v
		m := &controlplanev1.DataPlaneMessage{Msg: &controlplanev1.DataPlaneMessage_Ack{Ack: &controlplanev1.RouteAck{
			Epoch: d.rt.epoch.Load(), Version: v}}}
		if err := stream.Send(m); err != nil {
			return fmt.Errorf("send route ack: %w", err)
		}
		return nil
	}
	if err := sendScales(); err != nil {
		return err
	}
	if err := sendAck(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-acks.kick:
			if err := sendAck(); err != nil {
				return err
			}
		case <-d.rt.scale.kick:
			if err := sendScales(); err != nil {
				return err
			}
		case now := <-tick.C:
			loads, interval := rep.collect(d.rt.micros(now))
			if len(loads) == 0 {
				continue
			}
			m := &controlplanev1.DataPlaneMessage{Msg: &controlplanev1.DataPlaneMessage_Load{Load: &controlplanev1.LoadReport{
				Epoch:      d.rt.epoch.Load(),
				IntervalMs: (interval + 500) / 1000,
				Functions:  loads,
			}}}
			if err := stream.Send(m); err != nil {
				return fmt.Errorf("send load report: %w", err)
			}
		}
	}
}

// acker tracks the highest route version applied in this session, for the
// RouteAck messages the sender loop sends.
type acker struct {
	version atomic.Uint64
	kick    chan struct{}
}

func newAcker(snapshot *controlplanev1.RouteUpdate) *acker {
	a := &acker{kick: make(chan struct{}, 1)}
	a.applied(snapshot)
	return a
}

// applied records an update that was applied.
func (a *acker) applied(u *controlplanev1.RouteUpdate) {
	v := a.version.Load()
	for _, r := range u.GetFunctions() {
		v = max(v, r.GetVersion())
	}
	if v == a.version.Load() {
		return
	}
	a.version.Store(v)
	select {
	case a.kick <- struct{}{}:
	default:
	}
}
