// Package dataplane is Baton's HTTP front door: it routes each invocation to
// a sandbox of its function, load-balances over the sandboxes that have a
// free slot, queues requests that find none, and keeps the control plane
// informed (scale requests at once, load reports every interval) over the
// DataPlaneSession stream, from which it receives the routing table.
//
// Pieces, one per file:
//   - table.go: the routing table (sharded copy-on-write map of functions,
//     each with an atomic pointer to its immutable route state);
//   - routes.go: applying RouteUpdates (epochs, versions, snapshots);
//   - router.go: the engine-independent request path (resolve, acquire a
//     slot, release it) and the per-function wait queue discipline;
//   - balancer.go: the load-balancing policies, pure functions;
//   - queue.go: the intrusive FIFO of waiters;
//   - load.go: load meters and report collection;
//   - session.go: the gRPC session with the control plane;
//   - h1.go, h1serve.go: the HTTP/1.1 engine (its own server loop on raw
//     connections; hands HTTP/2 connections to proxy.go), with
//     h1parse.go (message heads), h1body.go (bodies: lengths, chunked) and
//     upstream.go (keep-alive connections to sandboxes);
//   - proxy.go: the h2c engine (net/http server, forwarder).
//
// The warm path allocates nothing, in the router and in the HTTP/1.1
// engine; the router takes no lock, the engine one short per-sandbox-address
// lock to take and give back a keep-alive connection.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
)

// Config configures a data plane. The zero value of every field means its
// default.
type Config struct {
	ID             string        // default: hostname + ":" + listen port
	Listen         string        // HTTP listen address, default "127.0.0.1:8080"
	Advertise      string        // host:port told to the control plane (default: the bound address)
	ControlPlane   string        // gRPC address of the control plane, default "127.0.0.1:9090"
	Balancer       string        // "round-robin" (default) | "random" | "least-in-flight" | "power-of-two"
	MaxBodyBytes   int64         // default 10 MiB; larger → 413
	QueueLimit     int           // per function, default 10000; full → 503
	ReportInterval time.Duration // default 100ms
	// BusyPoll bounds how long an HTTP/1.1 connection polls its socket
	// before sleeping, when the data plane is otherwise idle (on average
	// fewer than 1.5 requests in flight, one connection at a time, two or
	// more CPUs): for a sandbox's answer and for a client's next request.
	// It trades up to that much CPU per wait for the wake-up of a sleeping
	// thread. Default DefaultBusyPoll; negative: never.
	BusyPoll time.Duration
	Logger   *slog.Logger // default slog.Default()
}

// Defaults.
const (
	DefaultListen         = "127.0.0.1:8080"
	DefaultControlPlane   = "127.0.0.1:9090"
	DefaultMaxBodyBytes   = 10 << 20
	DefaultQueueLimit     = 10000
	DefaultReportInterval = 100 * time.Millisecond
	DefaultBusyPoll       = 100 * time.Microsecond
	// ShutdownGrace is how long Run lets requests finish after its context
	// is done.
	ShutdownGrace = 10 * time.Second
)

// DataPlane is one data-plane process's state.
type DataPlane struct {
	cfg Config
	log *slog.Logger
	ln  net.Listener
	rt  *router
	eng *httpEngine // h2c
	h1  *h1Engine

	grace time.Duration // ShutdownGrace; shorter in tests
}

// New validates cfg, fills in defaults and binds the listener, so Addr is
// known before Run. Run must be called to release the listener.
func New(cfg Config) (*DataPlane, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.ControlPlane == "" {
		cfg.ControlPlane = DefaultControlPlane
	}
	if cfg.Balancer == "" {
		cfg.Balancer = BalancerRoundRobin
	}
	pol, err := policyByName(cfg.Balancer)
	if err != nil {
		return nil, fmt.Errorf("data plane config: %w", err)
	}
	switch {
	case cfg.MaxBodyBytes < 0:
		return nil, fmt.Errorf("data plane config: negative MaxBodyBytes %d", cfg.MaxBodyBytes)
	case cfg.MaxBodyBytes == 0:
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	switch {
	case cfg.QueueLimit < 0:
		return nil, fmt.Errorf("data plane config: negative QueueLimit %d", cfg.QueueLimit)
	case cfg.QueueLimit == 0:
		cfg.QueueLimit = DefaultQueueLimit
	}
	switch {
	case cfg.ReportInterval < 0:
		return nil, fmt.Errorf("data plane config: negative ReportInterval %s", cfg.ReportInterval)
	case cfg.ReportInterval == 0:
		cfg.ReportInterval = DefaultReportInterval
	}
	if cfg.BusyPoll == 0 {
		cfg.BusyPoll = DefaultBusyPoll
	}
	if cfg.BusyPoll < 0 || runtime.GOMAXPROCS(0) < 2 { // one CPU (GOMAXPROCS follows a cgroup's CPU limit): spinning would keep the sandbox from answering
		cfg.BusyPoll = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("data plane: listen: %w", err)
	}
	addr := ln.Addr().String()
	if cfg.Advertise == "" {
		cfg.Advertise = addr
	}
	if cfg.ID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "dataplane"
		}
		_, port, _ := net.SplitHostPort(addr)
		cfg.ID = host + ":" + port
	}
	log := cfg.Logger // callers tag it (the CLI adds component=dataplane)
	rt := newRouter(pol, cfg.QueueLimit, log)
	return &DataPlane{
		cfg:   cfg,
		log:   log,
		ln:    ln,
		rt:    rt,
		eng:   &httpEngine{rt: rt, transport: newTransport(), maxBody: cfg.MaxBodyBytes},
		h1:    newH1Engine(rt, cfg.MaxBodyBytes, cfg.BusyPoll),
		grace: ShutdownGrace,
	}, nil
}

// Addr is the address the HTTP listener is bound to.
func (d *DataPlane) Addr() string { return d.ln.Addr().String() }

// Config returns the configuration with defaults filled in.
func (d *DataPlane) Config() Config { return d.cfg }

// Run serves HTTP and keeps the session with the control plane until ctx is
// done, then shuts down: no new connections, idle ones closed, requests in
// flight get ShutdownGrace to finish, then what is left is cut off. It
// returns once every goroutine it started has ended; the error is nil
// unless serving failed.
func (d *DataPlane) Run(ctx context.Context) error {
	srv := newServer(d.eng, slog.NewLogLogger(d.log.Handler(), slog.LevelDebug))
	h2ln := newConnListener(d.ln.Addr())
	sctx, stopSessions := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSessions()

	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Go(func() {
		if err := srv.Serve(h2ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	})
	d.h1.start(d.ln, h2ln)
	wg.Go(func() { d.runSessions(sctx) })
	d.log.Info("data plane listening", "addr", d.Addr(), "id", d.cfg.ID,
		"controlplane", d.cfg.ControlPlane, "balancer", d.cfg.Balancer)

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("data plane: serve: %w", err)
	}
	d.log.Info("data plane shutting down")
	// The session stays up while requests drain: queued ones may still get
	// a sandbox.
	sdCtx, cancel := context.WithTimeout(context.Background(), d.grace)
	defer cancel()
	var h1done, h2done bool
	var sd sync.WaitGroup
	sd.Go(func() { h1done = d.h1.shutdown(sdCtx) })
	sd.Go(func() { h2done = srv.Shutdown(sdCtx) == nil })
	sd.Wait()
	if !h1done || !h2done {
		d.log.Warn("requests still running after the grace period; cutting them off")
		// Answer the waiting requests (503) and give those answers a moment
		// to be written, then close every connection: the requests still
		// forwarding fail and their handlers return.
		d.rt.failAllWaiters()
		d.waitIdle(200 * time.Millisecond)
		srv.Close()
		d.h1.closeAll()
	}
	d.h1.wait()
	if !d.eng.waitIdle(2 * time.Second) {
		d.log.Warn("handlers still running after shutdown", "count", d.eng.active.Load())
	}
	stopSessions()
	wg.Wait()
	d.eng.transport.CloseIdleConnections()
	d.log.Info("data plane stopped")
	return err
}

// waitIdle waits up to t for both engines to have no request in hand.
func (d *DataPlane) waitIdle(t time.Duration) {
	for deadline := time.Now().Add(t); d.handling() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// handling is the number of requests either engine has in hand.
func (d *DataPlane) handling() int64 { return d.eng.active.Load() + d.h1.active.Load() }

// ApplyRoutes applies one RouteUpdate from the control plane, as the
// session does:
//   - an update whose epoch is below the one held is dropped (ErrStaleEpoch);
//   - a full update (a snapshot) sets the epoch and replaces the table:
//     every function it lists is installed whatever its version, and
//     functions it does not list are deleted;
//   - an incremental update must carry the epoch held (else ErrStaleEpoch);
//     each function in it applies only when its version is newer than the
//     one held (versions of deleted functions are remembered until the next
//     snapshot); `deleted` removes the function.
//
// A deleted function's waiting requests are answered 404; its requests in
// flight finish. A route with an error and no endpoint fails its waiting
// requests with 502; new endpoints are handed to waiting requests at once.
func (d *DataPlane) ApplyRoutes(u *controlplanev1.RouteUpdate) error { return d.rt.applyRoutes(u) }

// Epoch is the epoch of the routes held (0 before the first snapshot).
func (d *DataPlane) Epoch() uint64 { return d.rt.epoch.Load() }

// Functions returns a snapshot of every function in the routing table,
// sorted by name.
func (d *DataPlane) Functions() []FunctionStats { return d.rt.functions() }

// Stats returns a snapshot of one function (name is case-insensitive).
func (d *DataPlane) Stats(name string) (FunctionStats, bool) {
	return d.rt.stats(strings.TrimSpace(name))
}
