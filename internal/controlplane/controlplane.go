// Package controlplane is Baton's control plane: the function registry
// (persisted through internal/store), the membership of workers and data
// planes, the sandbox table, the per-function autoscaler loop, placement, and
// the push of endpoint changes to every data plane. Everything but the
// registry is soft state held in memory and rebuilt from workers and data
// planes after a restart.
//
// Lock order: writeMu (deploy/delete serialisation) before mu (all soft
// state). No I/O happens with mu held; messages to workers and data planes go
// through per-session outboxes drained by the sessions' own goroutines.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/placement"
	"github.com/batonfaas/baton/internal/store"
)

// Config configures a control plane. Zero fields take the defaults.
type Config struct {
	Listen            string        // gRPC API; default 127.0.0.1:9090
	DirigentListen    string        // Dirigent-compatible registration HTTP API; "" disables it
	DataDir           string        // holds baton.db when Store is nil
	Store             store.Store   // default: bbolt at DataDir/baton.db
	Placement         string        // random | round-robin | least-loaded | kubernetes (default)
	HeartbeatInterval time.Duration // told to workers; default 1s
	HeartbeatTimeout  time.Duration // a worker silent this long is down; default 3s
	AutoscaleInterval time.Duration // autoscaler tick; default 2s
	IdleDrain         time.Duration // delay before deleting an idle function's removed sandbox; default 1s
	// RebuildGrace is how long a new leader gives workers to reconnect and
	// report what they run before it sends data planes their tables (which
	// they serve from meanwhile); default 200ms.
	RebuildGrace time.Duration
	ReplicaID    string // this replica's name (replicated stores)
	Logger       *slog.Logger
	Now          func() time.Time // clock; default time.Now
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:9090"
	}
	if c.Placement == "" {
		c.Placement = "kubernetes"
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = 3 * time.Second
	}
	if c.AutoscaleInterval <= 0 {
		c.AutoscaleInterval = 2 * time.Second
	}
	if c.IdleDrain <= 0 {
		c.IdleDrain = time.Second
	}
	if c.RebuildGrace <= 0 {
		c.RebuildGrace = 200 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// ControlPlane is one control-plane process's state and servers.
type ControlPlane struct {
	pb.UnimplementedControlPlaneServer

	cfg    Config
	log    *slog.Logger
	store  *store.Counting
	ownsDB bool
	lis    net.Listener
	dlis   net.Listener // the Dirigent front door, or nil
	grpc   *grpc.Server
	placer placement.Policy

	writeMu sync.Mutex // serialises registry writes

	lead        Leadership  // nil: a single control plane, always the leader
	leading     atomic.Bool // this replica acts as the control plane
	leaderSince time.Time   // guarded by mu
	fwd         forwarder

	mu          sync.Mutex
	functions   map[string]*function
	workers     map[string]*worker
	sandboxes   map[string]*sandbox
	dataPlanes  map[string]*dataPlaneSession
	draining    map[string]time.Time // sandbox id -> delete at
	downWorkers map[string]struct{}  // declared down since they last connected
	prepulls    map[string]*function // the functions deployed with prepull, by name
	joined      chan struct{}        // closed (and replaced) when a worker session opens
	nodes       []placement.Node     // scratch for placement
	nodeWorkers []*worker
	lastEpoch   uint64
	routeSeq    uint64

	ctx    context.Context // set by Run; timers stop with it
	wg     sync.WaitGroup
	closed atomic.Bool
}

// New opens the store, loads the registry and binds the API listener.
func New(cfg Config) (*ControlPlane, error) {
	cfg.setDefaults()
	placer, err := placement.New(cfg.Placement, rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())))
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	cp := &ControlPlane{
		cfg: cfg, log: cfg.Logger, placer: placer,
		functions:   make(map[string]*function),
		workers:     make(map[string]*worker),
		sandboxes:   make(map[string]*sandbox),
		dataPlanes:  make(map[string]*dataPlaneSession),
		draining:    make(map[string]time.Time),
		downWorkers: make(map[string]struct{}),
		prepulls:    make(map[string]*function),
		joined:      make(chan struct{}),
		ctx:         context.Background(),
	}
	st := cfg.Store
	if st == nil {
		if cfg.DataDir == "" {
			return nil, errors.New("control plane: no data directory and no store given")
		}
		b, err := store.OpenBolt(filepath.Join(cfg.DataDir, "baton.db"))
		if err != nil {
			return nil, err
		}
		st, cp.ownsDB = b, true
	}
	cp.store = store.NewCounting(st)
	if l, ok := st.(Leadership); ok {
		cp.lead = l // functions are loaded on becoming the leader
	} else if err := cp.loadFunctions(context.Background()); err != nil {
		cp.closeStore()
		return nil, err
	}
	cp.lis, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		cp.closeStore()
		return nil, fmt.Errorf("control plane: listen %s: %w", cfg.Listen, err)
	}
	if cfg.DirigentListen != "" {
		if cp.dlis, err = net.Listen("tcp", cfg.DirigentListen); err != nil {
			cp.lis.Close()
			cp.closeStore()
			return nil, fmt.Errorf("control plane: listen %s (Dirigent front door): %w", cfg.DirigentListen, err)
		}
	}
	cp.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(cp.unaryGuard),
		grpc.ChainStreamInterceptor(cp.streamGuard),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
	)
	pb.RegisterControlPlaneServer(cp.grpc, cp)
	return cp, nil
}

// Addr is the bound gRPC address.
func (cp *ControlPlane) Addr() string { return cp.lis.Addr().String() }

// DirigentAddr is the bound address of the Dirigent front door, "" if off.
func (cp *ControlPlane) DirigentAddr() string {
	if cp.dlis == nil {
		return ""
	}
	return cp.dlis.Addr().String()
}

// StoreWrites counts the writes that reached the store since New.
func (cp *ControlPlane) StoreWrites() uint64 { return cp.store.Writes() }

// Run serves until ctx is done, then stops the sessions and closes the store.
func (cp *ControlPlane) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cp.mu.Lock()
	cp.ctx = ctx
	cp.mu.Unlock()
	cp.log.Info("control plane serving", "addr", cp.Addr(), "functions", len(cp.functions),
		"placement", cp.placer.Name(), "pid", os.Getpid())

	serveErr := make(chan error, 1)
	cp.goTracked(func() { serveErr <- cp.grpc.Serve(cp.lis) })
	cp.goTracked(func() { cp.loop(ctx) })
	if cp.lead != nil {
		cp.goTracked(func() { cp.watchLeadership(ctx) })
	}
	if cp.dlis != nil {
		cp.goTracked(func() { cp.serveDirigent(ctx, cp.dlis) })
		cp.log.Info("Dirigent-compatible front door serving", "addr", cp.dlis.Addr().String())
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("control plane: serve: %w", err)
	}
	cancel()
	cp.closed.Store(true)
	stopped := make(chan struct{})
	go func() { cp.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		cp.grpc.Stop()
	}
	cp.wg.Wait()
	cp.closeForwarder()
	cp.closeStore()
	cp.log.Info("control plane stopped")
	return err
}

func (cp *ControlPlane) closeStore() {
	if cp.ownsDB {
		cp.store.Close()
	}
}

// loop runs the autoscaler ticks and the heartbeat checks.
func (cp *ControlPlane) loop(ctx context.Context) {
	scale := time.NewTicker(cp.cfg.AutoscaleInterval)
	defer scale.Stop()
	beat := time.NewTicker(max(cp.cfg.HeartbeatTimeout/4, 50*time.Millisecond))
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-scale.C:
			cp.tick(cp.cfg.Now())
		case <-beat.C:
			cp.checkHeartbeats(cp.cfg.Now())
		}
	}
}

func (cp *ControlPlane) goTracked(f func()) {
	cp.wg.Add(1)
	go func() {
		defer cp.wg.Done()
		f()
	}()
}

// afterFunc runs f after d unless the control plane stops first.
func (cp *ControlPlane) afterFunc(d time.Duration, f func()) {
	if cp.closed.Load() {
		return
	}
	time.AfterFunc(d, func() {
		if !cp.closed.Load() {
			f()
		}
	})
}

// pump runs a session's sender and its receive loop until either ends or
// the control plane stops, and returns the first error (a clean end of the
// stream is nil). close runs before pump returns, to stop the sender.
func (cp *ControlPlane) pump(send func() error, recv func() error, close func()) error {
	sendErr := make(chan error, 1)
	go func() { sendErr <- send() }()
	recvErr := make(chan error, 1)
	go func() { recvErr <- recv() }()
	var err error
	select {
	case err = <-sendErr:
	case err = <-recvErr:
	case <-cp.ctx.Done():
	}
	close()
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

// nextEpoch returns a session epoch larger than every one handed out before
// in this process and than the peer's previous one (peerLast), so that it
// also exceeds what an earlier control plane gave. cp.mu held.
func (cp *ControlPlane) nextEpoch(peerLast uint64) uint64 {
	e := max(uint64(time.Now().UnixNano()), peerLast+1)
	if e <= cp.lastEpoch {
		e = cp.lastEpoch + 1
	}
	cp.lastEpoch = e
	return e
}
