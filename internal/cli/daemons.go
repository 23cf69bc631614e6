package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/batonfaas/baton/internal/controlplane"
	"github.com/batonfaas/baton/internal/cpclient"
	"github.com/batonfaas/baton/internal/dataplane"
	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/fake"
	"github.com/batonfaas/baton/internal/sandbox/process"
	"github.com/batonfaas/baton/internal/store/raftstore"
	"github.com/batonfaas/baton/internal/worker"
)

// signalContext is cancelled by the first SIGINT or SIGTERM; a second one
// exits at once.
func signalContext(log *slog.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-ch
		log.Info("shutting down (a second signal exits at once)", "signal", s.String())
		cancel()
		<-ch
		os.Exit(1)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// ---- control plane ---------------------------------------------------------

type cpFlags struct {
	listen, dataDir, placement  string
	hbInterval, hbTimeout, tick time.Duration
	idleDrain                   time.Duration
	dirigentListen              string
	rebuildGrace                time.Duration
}

func (f *cpFlags) register(fs *flagSet, prefix string) {
	fs.StringVar(&f.listen, prefix+"listen", "127.0.0.1:9090", "control-plane gRPC address")
	fs.StringVar(&f.dirigentListen, "dirigent-listen", "127.0.0.1:9091", "Dirigent-compatible registration API (HTTP); empty disables it")
	fs.StringVar(&f.placement, "placement", "kubernetes", "placement policy: random, round-robin, least-loaded or kubernetes")
	fs.DurationVar(&f.hbInterval, "heartbeat-interval", time.Second, "how often workers heartbeat")
	fs.DurationVar(&f.hbTimeout, "heartbeat-timeout", 3*time.Second, "a worker silent this long is marked down and its sandboxes replaced")
	fs.DurationVar(&f.tick, "autoscale-interval", 2*time.Second, "how often the autoscaler decides")
	fs.DurationVar(&f.idleDrain, "idle-drain", time.Second, "delay before an idle function's removed sandbox is deleted")
	fs.DurationVar(&f.rebuildGrace, "rebuild-grace", 200*time.Millisecond, "replicated: how long a new leader waits for workers to report what they run before sending data planes their tables")
}

func (f *cpFlags) config(log *slog.Logger) controlplane.Config {
	return controlplane.Config{Listen: f.listen, DirigentListen: f.dirigentListen, DataDir: f.dataDir, Placement: f.placement,
		HeartbeatInterval: f.hbInterval, HeartbeatTimeout: f.hbTimeout, AutoscaleInterval: f.tick,
		IdleDrain: f.idleDrain, RebuildGrace: f.rebuildGrace, Logger: log.With("component", "controlplane")}
}

func cmdControlPlane(args []string, stderr io.Writer) error {
	fs := newFlagSet("controlplane", "controlplane [flags]", stderr)
	var f cpFlags
	f.register(fs, "")
	fs.StringVar(&f.dataDir, "data-dir", defaultDataDir(), "directory of the function registry (bbolt, or the raft log and snapshots)")
	id := fs.String("id", "", "this replica's name (replicated control plane)")
	raftListen := fs.String("raft-listen", "", "this replica's raft address (replicated control plane)")
	raftPeers := fs.String("raft-peers", "", "NAME=RAFTADDR,... of every replica, this one included: runs a replicated control plane (3 or 5 replicas)")
	log, err := fs.parseDaemon(args)
	if err != nil {
		return err
	}
	cfg := f.config(log)
	if *raftPeers != "" {
		rs, err := openRaftStore(*id, f.dataDir, *raftListen, *raftPeers, log)
		if err != nil {
			return err
		}
		defer rs.Close()
		cfg.Store, cfg.ReplicaID = rs, *id
	}
	cp, err := controlplane.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signalContext(log)
	defer stop()
	return cp.Run(ctx)
}

// openRaftStore opens this replica of the replicated registry.
func openRaftStore(id, dataDir, listen, peers string, log *slog.Logger) (*raftstore.Store, error) {
	if id == "" || listen == "" {
		return nil, fmt.Errorf("a replicated control plane needs --id and --raft-listen as well as --raft-peers")
	}
	m := map[string]string{}
	for _, kv := range strings.Split(peers, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("--raft-peers %q: want NAME=HOST:PORT,...", kv)
		}
		m[name] = addr
	}
	if _, ok := m[id]; !ok {
		return nil, fmt.Errorf("--raft-peers does not name this replica (--id %s)", id)
	}
	return raftstore.Open(raftstore.Config{ID: id, DataDir: dataDir, Bind: listen, Peers: m,
		Logger: log.With("component", "raft")})
}

// ---- data plane ------------------------------------------------------------

type dpFlags struct {
	id, listen, advertise, balancer string
	maxBody                         int64
	queueLimit                      int
	report, busyPoll                time.Duration
}

func (f *dpFlags) register(fs *flagSet) {
	fs.StringVar(&f.id, "dataplane-id", "", "data plane id (default: hostname:port)")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8080", "HTTP address clients invoke functions on")
	fs.StringVar(&f.advertise, "advertise", "", "host:port told to the control plane (default: the listen address)")
	fs.StringVar(&f.balancer, "balancer", "round-robin", "load balancing: round-robin, random, least-in-flight or power-of-two")
	fs.Int64Var(&f.maxBody, "max-body", 10<<20, "largest request body in bytes (larger: 413)")
	fs.IntVar(&f.queueLimit, "queue-limit", 10000, "requests that may wait per function (more: 503)")
	fs.DurationVar(&f.report, "report-interval", 100*time.Millisecond, "how often load is reported to the control plane")
	fs.DurationVar(&f.busyPoll, "busy-poll", dataplane.DefaultBusyPoll, "when nearly idle, poll a socket this long before sleeping: lower latency for more CPU (0: never)")
}

func (f *dpFlags) config(cp string, log *slog.Logger) dataplane.Config {
	cfg := dataplane.Config{ID: f.id, Listen: f.listen, Advertise: f.advertise, ControlPlane: cp, Balancer: f.balancer,
		MaxBodyBytes: f.maxBody, QueueLimit: f.queueLimit, ReportInterval: f.report, BusyPoll: f.busyPoll,
		Logger: log.With("component", "dataplane")}
	if f.busyPoll == 0 {
		cfg.BusyPoll = -1 // the Config's zero is the default
	}
	return cfg
}

func cmdDataPlane(args []string, stderr io.Writer) error {
	fs := newFlagSet("dataplane", "dataplane [flags]", stderr)
	var f dpFlags
	f.register(fs)
	cpAddr := fs.String("controlplane", controlPlaneDefault(), "control-plane gRPC address")
	log, err := fs.parseDaemon(args)
	if err != nil {
		return err
	}
	dp, err := dataplane.New(f.config(*cpAddr, log))
	if err != nil {
		return err
	}
	ctx, stop := signalContext(log)
	defer stop()
	return dp.Run(ctx)
}

// ---- worker ----------------------------------------------------------------

type workerFlags struct {
	id, runtime, host          string
	cpu, memory                int64
	maxSandboxes, maxCreations int
	fakeDelay                  time.Duration
	emulate                    int
	portRange                  string
	fakeListen                 string
	imageMap                   multiFlag
	ctr                        containerdFlags
}

func (f *workerFlags) register(fs *flagSet) {
	fs.StringVar(&f.id, "worker-id", "", "worker id (default: the hostname)")
	fs.StringVar(&f.runtime, "runtime", "process", "sandbox runtime: process, containerd or fake")
	fs.StringVar(&f.host, "sandbox-host", "127.0.0.1", "IP that process sandboxes listen on and are reached at")
	fs.StringVar(&f.portRange, "port-range", "30000-39999", "process runtime: ports handed to sandboxes, MIN-MAX (give workers sharing a machine ranges of their own)")
	fs.Int64Var(&f.cpu, "cpu", 0, "CPU capacity in millicores offered to sandboxes (default: process 8x the cores, fake 1,000,000)")
	fs.Int64Var(&f.memory, "memory", 0, "memory capacity in MiB offered to sandboxes (default: process the machine's memory, fake 4 TiB)")
	fs.IntVar(&f.maxSandboxes, "max-sandboxes", 0, "most sandboxes at once (0: no limit but cpu and memory)")
	fs.IntVar(&f.maxCreations, "max-creations", 0, "concurrent sandbox creations, the rest queue (default: process 16, containerd 4, fake 1024)")
	fs.DurationVar(&f.fakeDelay, "fake-delay", 40*time.Millisecond, "fake runtime: emulated creation time")
	fs.StringVar(&f.fakeListen, "fake-listen", "127.0.0.1:0", "fake runtime: address of the in-process function server")
	fs.Var(&f.imageMap, "image-map", "process runtime: IMAGE=PATH runs executable PATH for image IMAGE (repeatable; Dirigent's workload images and \"workload\" map to the built-in workload function by default)")
	f.ctr.register(fs)
}

// workers builds the worker (or, with n > 1 emulated workers of the fake
// runtime, the workers) this process runs. Emulated workers register and
// heartbeat each as its own node with its own capacity, named ID-0..ID-n-1;
// they share one connection to the control plane and one fake function
// server. close releases what they share.
func (f *workerFlags) workers(cp string, n int, log *slog.Logger) (ws []*worker.Worker, close func(), err error) {
	close = func() {}
	if n <= 1 {
		cfg, err := f.config(cp, log)
		if err != nil {
			return nil, close, err
		}
		w, err := worker.New(cfg)
		if err != nil {
			return nil, close, err
		}
		return []*worker.Worker{w}, close, nil
	}
	if f.runtime != "fake" {
		return nil, close, fmt.Errorf("emulating %d workers needs --runtime fake", n)
	}
	srv, err := fake.NewServer(f.fakeListen)
	if err != nil {
		return nil, close, err
	}
	conn, err := cpclient.Dial(cp)
	if err != nil {
		srv.Close()
		return nil, close, err
	}
	close = func() { conn.Close(); srv.Close() }
	base := f.id
	if base == "" {
		base, _ = os.Hostname()
	}
	for i := range n {
		g := *f
		g.id = fmt.Sprintf("%s-%d", base, i)
		cfg, err := g.config(cp, log)
		if err != nil {
			close()
			return nil, func() {}, err
		}
		cfg.Client = conn
		delay := f.fakeDelay
		if delay == 0 {
			delay = -1
		}
		cfg.NewRuntime = func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
			return fake.New(fake.Config{Delay: delay, Server: srv, OnExit: onExit})
		}
		w, err := worker.New(cfg)
		if err != nil {
			close()
			return nil, func() {}, err
		}
		ws = append(ws, w)
	}
	log.Info("emulating workers", "count", n, "first", ws[0].ID(), "fake_server", srv.Addr())
	return ws, close, nil
}

// runWorkers runs every worker until ctx is done and joins their errors.
func runWorkers(ctx context.Context, ws []*worker.Worker) error {
	errs := make(chan error, len(ws))
	for _, w := range ws {
		go func() { errs <- w.Run(ctx) }()
	}
	var all []error
	for range ws {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

var idSafe = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

func (f *workerFlags) config(cp string, log *slog.Logger) (worker.Config, error) {
	cfg := worker.Config{ID: f.id, ControlPlane: cp, MaxCreations: f.maxCreations,
		Logger: log.With("component", "worker")}
	if cfg.ID == "" {
		cfg.ID, _ = os.Hostname()
	}
	cfg.Capacity = worker.Resources{CPUMillicores: f.cpu, MemoryMiB: f.memory, Sandboxes: int32(f.maxSandboxes)}
	images := map[string]string{}
	if f.runtime == "process" {
		link, cleanup, err := workloadLink()
		if err != nil {
			return cfg, fmt.Errorf("worker: link the built-in workload function: %w", err)
		}
		cfg.Cleanup = cleanup
		for _, img := range DefaultWorkloadImages {
			images[img] = link
		}
	}
	for _, kv := range f.imageMap {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || !filepath.IsAbs(v) {
			return cfg, fmt.Errorf("--image-map %q: want IMAGE=/absolute/path", kv)
		}
		images[k] = v
	}
	switch f.runtime {
	case "process":
		if cfg.Capacity.CPUMillicores == 0 {
			cfg.Capacity.CPUMillicores = int64(runtime.NumCPU()) * 1000 * 8
		}
		if cfg.Capacity.MemoryMiB == 0 {
			cfg.Capacity.MemoryMiB = memTotalMiB()
		}
		if cfg.MaxCreations == 0 {
			cfg.MaxCreations = 16
		}
		lo, hi, ok := strings.Cut(f.portRange, "-")
		pmin, err1 := strconv.Atoi(lo)
		pmax, err2 := strconv.Atoi(hi)
		if !ok || err1 != nil || err2 != nil || pmin < 1 || pmax > 65535 || pmin > pmax {
			return cfg, fmt.Errorf("--port-range %q: want MIN-MAX, e.g. 30000-39999", f.portRange)
		}
		pcfg := process.Config{Host: f.host, PortMin: pmin, PortMax: pmax, CgroupParent: "baton/" + idSafe.ReplaceAllString(cfg.ID, "_"),
			ImageMap: images, Logger: cfg.Logger}
		cfg.NewRuntime = func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
			pcfg.OnExit = onExit
			return process.New(pcfg)
		}
	case "fake":
		if cfg.Capacity.CPUMillicores == 0 {
			cfg.Capacity.CPUMillicores = 1_000_000
		}
		if cfg.Capacity.MemoryMiB == 0 {
			cfg.Capacity.MemoryMiB = 4 << 20
		}
		if cfg.MaxCreations == 0 {
			cfg.MaxCreations = 1024
		}
		delay := f.fakeDelay
		if delay == 0 {
			delay = -1 // the fake runtime reads 0 as its default; the flag means none
		}
		fcfg := fake.Config{Delay: delay, Listen: f.fakeListen}
		cfg.NewRuntime = func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
			fcfg.OnExit = onExit
			return fake.New(fcfg)
		}
	case "containerd":
		f.ctr.configure(&cfg, cfg.Logger)
	default:
		return cfg, fmt.Errorf("--runtime %q: use process, containerd or fake", f.runtime)
	}
	return cfg, nil
}

func memTotalMiB() int64 {
	fh, err := os.Open("/proc/meminfo")
	if err != nil {
		return 4096
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb / 1024
		}
	}
	return 4096
}

func cmdWorker(args []string, stderr io.Writer) error {
	fs := newFlagSet("worker", "worker [flags]", stderr)
	var f workerFlags
	f.register(fs)
	cpAddr := fs.String("controlplane", controlPlaneDefault(), "control-plane gRPC address")
	fs.IntVar(&f.emulate, "emulate", 1, "run this many emulated workers in this process (fake runtime only)")
	log, err := fs.parseDaemon(args)
	if err != nil {
		return err
	}
	ws, closeShared, err := f.workers(*cpAddr, f.emulate, log)
	if err != nil {
		return err
	}
	defer closeShared()
	ctx, stop := signalContext(log)
	defer stop()
	return runWorkers(ctx, ws)
}

// ---- baton up --------------------------------------------------------------

func cmdUp(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("up", "up [flags]", stderr)
	var (
		cpf cpFlags
		dpf dpFlags
		wf  workerFlags
	)
	cpf.register(fs, "controlplane-")
	dpf.register(fs)
	wf.register(fs)
	fs.StringVar(&cpf.dataDir, "data-dir", defaultDataDir(), "directory of the function registry (bbolt)")
	fs.IntVar(&wf.emulate, "workers", 1, "workers to run (more than one: emulated, fake runtime only)")
	log, err := fs.parseDaemon(args)
	if err != nil {
		return err
	}
	cp, err := controlplane.New(cpf.config(log))
	if err != nil {
		return err
	}
	dp, err := dataplane.New(dpf.config(cp.Addr(), log))
	if err != nil {
		return err
	}
	ws, closeShared, err := wf.workers(cp.Addr(), wf.emulate, log)
	if err != nil {
		return err
	}
	defer closeShared()
	ctx, stop := signalContext(log)
	defer stop()
	fmt.Fprintf(stdout, "baton up: data plane on http://%s, control plane on %s, %s runtime, data in %s\n",
		dp.Addr(), cp.Addr(), wf.runtime, cpf.dataDir)
	fmt.Fprintf(stdout, "try: baton fn deploy hello --binary $(pwd)/bin/hello && baton invoke hello\n")

	// The worker and data plane stop first (sandboxes deleted, requests
	// finished), then the control plane.
	cpCtx, cpStop := context.WithCancel(context.Background())
	defer cpStop()
	cpDone := make(chan error, 1)
	go func() { cpDone <- cp.Run(cpCtx) }()
	dpDone := make(chan error, 1)
	go func() { dpDone <- dp.Run(ctx) }()
	wDone := make(chan error, 1)
	go func() { wDone <- runWorkers(ctx, ws) }()

	var errs []error
	select {
	case <-ctx.Done():
	case err := <-cpDone:
		errs = append(errs, err)
		cpDone <- nil
		stop()
	}
	errs = append(errs, <-wDone, <-dpDone)
	cpStop()
	errs = append(errs, <-cpDone)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "baton up: stopped")
	return nil
}
