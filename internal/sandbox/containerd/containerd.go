// Package containerd is Baton's container runtime: each sandbox is a
// containerd container with a runc task, in a containerd namespace of
// Baton's own, running an OCI image pulled from a registry on first use, in
// a network namespace of its own on the node bridge (package netpool) with
// an address from the node's subnet, under the cpu and memory limits of its
// spec (OCI runtime spec resources, applied by runc through cgroups).
//
// Containers carry labels (worker id, sandbox id, function, generation,
// address, resources, namespace path), so that a worker restarted after a
// crash finds its sandboxes: New adopts those whose task still runs (List
// returns them) and removes the rest, with their snapshots, namespaces and
// log files. Nothing is left behind and nothing is counted twice.
//
// A sandbox is ready when its port accepts a TCP connection. Its task's
// exit is watched through containerd (task Wait), reported through OnExit
// with the exit status and the last lines of its output, and everything it
// held is released.
//
// It works with containerd 1.6 (Debian 12) and 2.x: the client is
// github.com/containerd/containerd v1.7, which speaks the same v1 API to
// both.
package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	containerd "github.com/containerd/containerd"
	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/identifiers"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/snapshots"

	"github.com/batonfaas/baton/internal/image"
	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/containerd/netpool"
)

// Config configures a Runtime. The zero value works as root against the
// system's containerd.
type Config struct {
	// Socket is containerd's gRPC address; default
	// /run/containerd/containerd.sock.
	Socket string
	// Namespace is the containerd namespace of Baton's containers;
	// default "baton".
	Namespace string
	// Snapshotter unpacks images and makes the sandboxes' root
	// filesystems; default overlayfs.
	Snapshotter string
	// WorkerID labels this worker's containers (several workers may share
	// a containerd and a namespace); default the hostname.
	WorkerID string
	// StateDir holds the sandboxes' network namespaces and output files;
	// it must survive a restart of the worker for adoption; default
	// /run/baton/containerd/<namespace>/<worker>.
	StateDir string
	// Bridge and Subnet are the node's sandbox network (netpool.Config);
	// defaults baton0 and 10.87.0.0/16. Workers sharing a node need
	// different ones.
	Bridge, Subnet string
	// NetPool is how many network namespaces are kept ready; default 16.
	NetPool int
	// Port is the port functions serve on in their namespace ($PORT);
	// default 8080.
	Port int
	// ReadyTimeout bounds the wait for a new sandbox to answer; default 30s.
	ReadyTimeout time.Duration
	// PullTimeout bounds an image pull; default 5m.
	PullTimeout time.Duration
	// InsecureRegistries are registries (host or host:port) reached over
	// plain HTTP; loopback ones always are.
	InsecureRegistries []string
	// RegistryConfig is a Docker config file with registry credentials
	// (its auths, credHelpers and credsStore); empty is the usual search
	// (image.Keychain), the one `baton image push` uses.
	RegistryConfig string
	// Shim is containerd's runtime for the tasks; default
	// io.containerd.runc.v2.
	Shim string
	// OnExit is told about sandboxes that stop without Delete.
	OnExit sandbox.ExitFunc
	// Logger; nil discards.
	Logger *slog.Logger
}

// Defaults for Config.
const (
	DefaultSocket       = "/run/containerd/containerd.sock"
	DefaultNamespace    = "baton"
	DefaultSnapshotter  = "overlayfs"
	DefaultPort         = 8080
	DefaultReadyTimeout = 30 * time.Second
	DefaultPullTimeout  = 5 * time.Minute
	DefaultShim         = "io.containerd.runc.v2"
	// DefaultMaxCreations is the worker's cap on concurrent creations for
	// this runtime (worker --max-creations). Measured on 2 cores
	// (BENCHMARKS.md): creations/s peak at 3-4 in flight (~36/s) and stay
	// flat to 8 while each creation's latency grows linearly (p50 60 ms at
	// 1-2, 110 ms at 4, 220 ms at 8, 530 ms at 16), then fall. 4 is at the
	// peak with the lowest latency there, and leaves room for one slot
	// held by an image pull.
	DefaultMaxCreations = 4
)

// Container labels.
const (
	labelWorker     = "baton.worker"
	labelSandbox    = "baton.sandbox"
	labelFunction   = "baton.function"
	labelGeneration = "baton.generation"
	labelAddress    = "baton.address"
	labelCPU        = "baton.cpu"
	labelMemory     = "baton.memory"
	labelNetns      = "baton.netns"
	labelIP         = "baton.ip"
	// labelGCRoot keeps a sandbox's snapshot from containerd's garbage
	// collector between its Prepare and its container's creation (without
	// the lease, and its two round trips, that containerd's client takes
	// for every container); the runtime removes the snapshot itself.
	labelGCRoot = "containerd.io/gc.root"
)

// Runtime is the containerd runtime. It is safe for concurrent use.
type Runtime struct {
	cfg    Config
	log    *slog.Logger
	client *containerd.Client
	pool   *netpool.Pool
	images *images
	onExit sandbox.ExitFunc
	logDir string

	ctx    context.Context // the runtime's life, with the namespace
	cancel context.CancelFunc

	mu     sync.Mutex
	boxes  map[string]*box
	closed bool

	wg sync.WaitGroup // every goroutine the runtime starts
}

var _ sandbox.Runtime = (*Runtime)(nil)

// box is one sandbox and what it holds.
type box struct {
	sandbox.Life
	cid     string // its container's id (and its snapshot's key)
	slot    *netpool.Slot
	logPath string

	// What exists in containerd (set by Create as it makes them, by adopt).
	haveSnapshot, haveContainer, haveTask bool
	watching                              bool          // the exit watcher runs
	mounts                                []mount.Mount // the snapshot's, for the task

	exited chan struct{} // closed when the task's exit is known

	// Set before exited is closed: the exit status, or why it is unknown.
	exitStatus uint32
	exitErr    error
}

// New connects to containerd, prepares the node network, adopts the
// sandboxes an earlier run of this worker left running and removes
// everything else it left.
func New(cfg Config) (*Runtime, error) {
	if uid := os.Geteuid(); uid != 0 {
		return nil, fmt.Errorf("containerd runtime: needs root for containerd and network namespaces (running as uid %d)", uid)
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if err := identifiers.Validate(cfg.Namespace); err != nil {
		return nil, fmt.Errorf("containerd runtime: namespace: %w", err)
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = DefaultSnapshotter
	}
	if cfg.WorkerID == "" {
		cfg.WorkerID, _ = os.Hostname()
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join("/run/baton/containerd", cfg.Namespace, safeName(cfg.WorkerID))
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("containerd runtime: bad port %d", cfg.Port)
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	if cfg.PullTimeout <= 0 {
		cfg.PullTimeout = DefaultPullTimeout
	}
	if cfg.Shim == "" {
		cfg.Shim = DefaultShim
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	keychain, err := image.Keychain(cfg.RegistryConfig)
	if err != nil {
		return nil, fmt.Errorf("containerd runtime: %w", err)
	}
	onExit := cfg.OnExit
	if onExit == nil {
		onExit = func(sandbox.Exit) {}
	}
	if _, err := os.Stat(cfg.Socket); err != nil {
		return nil, fmt.Errorf("containerd runtime: no containerd socket at %s (start containerd, or give --containerd-socket): %w", cfg.Socket, err)
	}
	client, err := containerd.New(cfg.Socket, containerd.WithDefaultNamespace(cfg.Namespace),
		containerd.WithDefaultRuntime(cfg.Shim), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("containerd runtime: connect to containerd at %s: %w", cfg.Socket, err)
	}
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), cfg.Namespace))
	vctx, vcancel := context.WithTimeout(ctx, 10*time.Second)
	ver, err := client.Version(vctx)
	vcancel()
	if err != nil {
		cancel()
		client.Close()
		return nil, fmt.Errorf("containerd runtime: containerd at %s does not answer: %w", cfg.Socket, err)
	}
	if _, err := client.SnapshotService(cfg.Snapshotter).Stat(ctx, "baton-no-such-snapshot"); err != nil && !errdefs.IsNotFound(err) {
		cancel()
		client.Close()
		return nil, fmt.Errorf("containerd runtime: snapshotter %q: %w", cfg.Snapshotter, err)
	}
	logDir := filepath.Join(cfg.StateDir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		cancel()
		client.Close()
		return nil, fmt.Errorf("containerd runtime: %w", err)
	}
	pool, err := netpool.New(netpool.Config{Bridge: cfg.Bridge, Subnet: cfg.Subnet, Dir: filepath.Join(cfg.StateDir, "netns"),
		Size: cfg.NetPool, Logger: log})
	if err != nil {
		cancel()
		client.Close()
		return nil, fmt.Errorf("containerd runtime: network: %w", err)
	}
	insecure := map[string]bool{}
	for _, h := range cfg.InsecureRegistries {
		insecure[h] = true
	}
	r := &Runtime{
		cfg:    cfg,
		log:    log,
		client: client,
		pool:   pool,
		images: &images{ctx: ctx, client: client, snapshotter: cfg.Snapshotter, insecure: insecure, keychain: keychain,
			pullTimeout: cfg.PullTimeout, entries: map[string]*imageEntry{}},
		onExit: onExit,
		logDir: logDir,
		ctx:    ctx,
		cancel: cancel,
		boxes:  map[string]*box{},
	}
	r.images.wg = &r.wg
	if err := r.recover(ctx); err != nil {
		r.cancel()
		r.wg.Wait()
		pool.Close()
		client.Close()
		return nil, fmt.Errorf("containerd runtime: recover: %w", err)
	}
	pool.Start()
	log.Info("containerd runtime ready", "containerd", ver.Version, "socket", cfg.Socket, "namespace", cfg.Namespace,
		"snapshotter", cfg.Snapshotter, "bridge", pool.Gateway(), "adopted", len(r.boxes))
	return r, nil
}

var unsafeChars = strings.NewReplacer("/", "_", "\x00", "_")

func safeName(s string) string {
	if s == "" || s == "." || s == ".." {
		return "_"
	}
	return unsafeChars.Replace(s)
}

// Name returns "containerd".
func (r *Runtime) Name() string { return "containerd" }

// Create starts the sandbox and returns once its port accepts connections.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	sb, err := r.create(ctx, spec)
	if err != nil {
		return sandbox.Sandbox{}, fmt.Errorf("create sandbox %s: %w", spec.ID, err)
	}
	return sb, nil
}

// containerID is the container id (and snapshot key) of sandbox id: the id
// itself when containerd takes it (function names may hold "--", which it
// does not), else the id's letters and digits with each run of anything
// else made one '-', and a hash of the id, so that two ids never share one.
func containerID(id string) string {
	if identifiers.Validate(id) == nil {
		return id
	}
	var sb strings.Builder
	sep := false
	for _, c := range id {
		if c < 128 && (unicode.IsLetter(c) || unicode.IsDigit(c)) {
			if sep && sb.Len() > 0 {
				sb.WriteByte('-')
			}
			sb.WriteRune(c)
			sep = false
		} else {
			sep = true
		}
	}
	s := sb.String()
	if len(s) > 50 {
		s = s[:50]
	}
	h := sha256.Sum256([]byte(id))
	if s == "" {
		return "x-" + hex.EncodeToString(h[:6])
	}
	return s + "-" + hex.EncodeToString(h[:6])
}

func validate(spec sandbox.Spec) error {
	switch {
	case spec.ID == "":
		return fmt.Errorf("%w: empty sandbox id", sandbox.ErrInvalid)
	case len(spec.ID) > 200 || strings.ContainsAny(spec.ID, "/\x00"):
		return fmt.Errorf("%w: sandbox id %q: at most 200 bytes, no '/'", sandbox.ErrInvalid, spec.ID)
	case spec.Image == "":
		if spec.Binary != "" {
			return fmt.Errorf("%w: the containerd runtime runs images, and the spec names only the binary %s: package it with baton image build --binary %s --tag REF --push, and deploy with --image REF",
				sandbox.ErrInvalid, spec.Binary, spec.Binary)
		}
		return fmt.Errorf("%w: the spec names no image", sandbox.ErrInvalid)
	case spec.CPUMillicores < 0 || spec.MemoryMiB < 0:
		return fmt.Errorf("%w: negative resource request (cpu %d millicores, memory %d MiB)", sandbox.ErrInvalid, spec.CPUMillicores, spec.MemoryMiB)
	case spec.MemoryMiB > 0 && spec.MemoryMiB < 6:
		return fmt.Errorf("%w: memory limit %d MiB is below what runc needs to start a container (6 MiB)", sandbox.ErrInvalid, spec.MemoryMiB)
	}
	return nil
}

func (r *Runtime) create(ctx context.Context, spec sandbox.Spec) (_ sandbox.Sandbox, err error) {
	if err := validate(spec); err != nil {
		return sandbox.Sandbox{}, err
	}
	if err := ctx.Err(); err != nil {
		return sandbox.Sandbox{}, err
	}
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(ctx, r.cfg.Namespace))
	defer cancel()
	b := &box{
		Life:   sandbox.NewLife(spec, cancel),
		cid:    containerID(spec.ID),
		exited: make(chan struct{}),
	}
	b.logPath = filepath.Join(r.logDir, b.cid+".log")
	if err := sandbox.Register(&r.mu, r.boxes, &r.closed, b); err != nil {
		return sandbox.Sandbox{}, err
	}
	defer sandbox.EndCreate(b, &err, r.abort)

	img, err := r.images.get(ctx, r.log, spec.Image, use{function: spec.Function, generation: spec.Generation})
	if err != nil {
		return sandbox.Sandbox{}, err
	}
	b.slot, err = r.pool.Get(ctx)
	if err != nil {
		return sandbox.Sandbox{}, fmt.Errorf("network namespace: %w", err)
	}
	b.Sandbox.Address = net.JoinHostPort(b.slot.IP.String(), strconv.Itoa(r.cfg.Port))
	ociSpec, err := r.ociSpec(ctx, spec, img, b)
	if err != nil {
		return sandbox.Sandbox{}, err
	}
	t0 := time.Now()
	if err := r.newContainer(ctx, b, img, ociSpec); err != nil {
		return sandbox.Sandbox{}, err
	}
	t1 := time.Now()
	if err := r.newTask(ctx, b); err != nil {
		return sandbox.Sandbox{}, err
	}
	t2 := time.Now()
	r.watch(b)
	if _, err := r.client.TaskService().Start(ctx, &tasks.StartRequest{ContainerID: b.cid}); err != nil {
		return sandbox.Sandbox{}, r.taskError("start task", errdefs.FromGRPC(err), b)
	}
	t3 := time.Now()
	if err := r.waitReady(ctx, b); err != nil {
		return sandbox.Sandbox{}, err
	}
	b.Sandbox.Started = time.Now()
	if !sandbox.MarkRunning(&r.mu, b, b.exited) { // exited between the answer and now
		return sandbox.Sandbox{}, fmt.Errorf("%w: exited right after answering on %s: %s", sandbox.ErrNotReady, b.Sandbox.Address, r.exitReason(b))
	}
	r.log.Debug("sandbox ready", "sandbox", spec.ID, "function", spec.Function, "address", b.Sandbox.Address,
		"container_ms", ms(t1.Sub(t0)), "task_ms", ms(t2.Sub(t1)), "start_ms", ms(t3.Sub(t2)), "ready_ms", ms(time.Since(t3)))
	return b.Sandbox, nil
}

// taskError classifies a failure to create or start a task: a cancelled
// context stays one; otherwise the sandbox did not become ready, and the
// task's output (runc's complaint, the function's last words) says why.
func (r *Runtime) taskError(what string, err error, b *box) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	msg := err.Error()
	if out := tail(b.logPath, reasonBytes); out != "" {
		msg += ": " + out
	}
	class := sandbox.ErrNotReady
	if strings.Contains(msg, "executable file not found") || strings.Contains(msg, "no such file or directory") ||
		strings.Contains(msg, "exec format error") || strings.Contains(msg, "permission denied") {
		class = sandbox.ErrInvalid // the image's entrypoint cannot run: retrying will not help
	}
	return fmt.Errorf("%w: %s: %s", class, what, msg)
}

func (r *Runtime) labels(b *box) map[string]string {
	l := map[string]string{
		labelWorker:     r.cfg.WorkerID,
		labelSandbox:    b.Sandbox.ID,
		labelFunction:   b.Sandbox.Function,
		labelGeneration: strconv.FormatUint(b.Sandbox.Generation, 10),
		labelAddress:    b.Sandbox.Address,
		labelCPU:        strconv.FormatInt(b.Sandbox.CPUMillicores, 10),
		labelMemory:     strconv.FormatInt(b.Sandbox.MemoryMiB, 10),
		labelNetns:      b.slot.Path,
		labelIP:         b.slot.IP.String(),
	}
	return l
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// newContainer prepares the sandbox's writable snapshot on the image's
// layers and makes its container, straight through containerd's snapshot
// and container services: two round trips, where containerd's client
// takes a lease, reads the image's manifest and config from the content
// store and reads the container back.
func (r *Runtime) newContainer(ctx context.Context, b *box, img *resolvedImage, spec *oci.Spec) error {
	labels := map[string]string{labelWorker: r.cfg.WorkerID, labelGCRoot: time.Now().UTC().Format(time.RFC3339)}
	mounts, err := r.client.SnapshotService(r.cfg.Snapshotter).Prepare(ctx, b.cid, img.chainID, snapshots.WithLabels(labels))
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("%w: a snapshot %s already exists in containerd namespace %s", sandbox.ErrExists, b.cid, r.cfg.Namespace)
		}
		b.haveSnapshot = ctx.Err() != nil // cut short: it may exist
		return fmt.Errorf("prepare a snapshot on image %s: %w", img.name, err)
	}
	b.haveSnapshot = true
	b.mounts = mounts
	anySpec, err := protobuf.MarshalAnyToProto(spec)
	if err != nil {
		return fmt.Errorf("OCI spec: %w", err)
	}
	_, err = r.client.ContainerService().Create(ctx, containers.Container{
		ID:          b.cid,
		Labels:      r.labels(b),
		Image:       img.name,
		Runtime:     containers.RuntimeInfo{Name: r.cfg.Shim},
		Spec:        anySpec,
		Snapshotter: r.cfg.Snapshotter,
		SnapshotKey: b.cid,
	})
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			// Not ours (ours are all in boxes): another worker's or another
			// program's container with this id in our namespace.
			return fmt.Errorf("%w: a container %s already exists in containerd namespace %s", sandbox.ErrExists, b.cid, r.cfg.Namespace)
		}
		b.haveContainer = ctx.Err() != nil // cut short: it may exist
		return fmt.Errorf("container: %w", err)
	}
	b.haveContainer = true
	return nil
}

// newTask creates the task (the shim starts, runc creates the container
// in the slot's network namespace), its stdout and stderr going straight
// to the output file.
func (r *Runtime) newTask(ctx context.Context, b *box) error {
	_ = os.Remove(b.logPath)
	out := (&url.URL{Scheme: "file", Path: b.logPath}).String()
	req := &tasks.CreateTaskRequest{ContainerID: b.cid, Stdout: out, Stderr: out}
	for _, m := range b.mounts {
		req.Rootfs = append(req.Rootfs, &types.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	_, err := r.client.TaskService().Create(ctx, req)
	if err != nil {
		err = errdefs.FromGRPC(err)
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			b.haveTask = true // it may have been made all the same
		}
		return r.taskError("create task", err, b)
	}
	b.haveTask = true
	return nil
}

// watch starts the goroutine that waits for the task's exit. Call it
// before the task starts: a Wait on a task that exited already answers at
// once, so no exit is missed either way.
func (r *Runtime) watch(b *box) {
	b.watching = true
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.watchExit(b)
	}()
}

func (r *Runtime) watchExit(b *box) {
	backoff := 100 * time.Millisecond
	for {
		resp, err := r.client.TaskService().Wait(r.ctx, &tasks.WaitRequest{ContainerID: b.cid})
		if err == nil {
			b.exitStatus = resp.ExitStatus
			break
		}
		err = errdefs.FromGRPC(err)
		if r.ctx.Err() != nil { // closing (after every Delete) or abandoned
			b.exitErr = err
			close(b.exited)
			return
		}
		if errdefs.IsNotFound(err) {
			b.exitErr = errors.New("the task is gone from containerd")
			break
		}
		// containerd went away (a restart?): wait on the task again.
		r.log.Warn("lost the wait on a task; waiting again", "sandbox", b.Sandbox.ID, "err", err)
		select {
		case <-r.ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	close(b.exited)
	if !sandbox.ClaimExit(&r.mu, b) {
		return // Create or Delete owns the cleanup
	}
	reason := r.exitReason(b)
	r.log.Warn("sandbox exited", "sandbox", b.Sandbox.ID, "function", b.Sandbox.Function, "reason", reason)
	ctx, cancel := r.cleanupContext()
	defer cancel()
	r.release(ctx, b)
	r.onExit(sandbox.Exit{ID: b.Sandbox.ID, Reason: reason})
}

// exitReason says how the (exited) task ended, with its last output.
func (r *Runtime) exitReason(b *box) string {
	var reason string
	switch st := b.exitStatus; {
	case b.exitErr != nil:
		reason = b.exitErr.Error()
	case st > 128 && st < 160:
		reason = "killed by signal " + strconv.Itoa(int(st)-128) + " (" + syscall.Signal(st-128).String() + ")"
	default:
		reason = "exit status " + strconv.Itoa(int(st))
	}
	if out := tail(b.logPath, reasonBytes); out != "" {
		reason += ": " + out
	}
	return reason
}

// cleanupContext is for releasing what a sandbox holds: it outlives the
// caller's context (a cancelled Create still cleans up) but not forever.
func (r *Runtime) cleanupContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(namespaces.WithNamespace(context.Background(), r.cfg.Namespace), time.Minute)
}

// abort undoes a failed Create.
func (r *Runtime) abort(b *box) {
	ctx, cancel := r.cleanupContext()
	defer cancel()
	r.release(ctx, b)
}

// release removes the task (killing it if need be), the container and its
// snapshot, gives the namespace back to the pool, removes the output file
// and forgets the box.
func (r *Runtime) release(ctx context.Context, b *box) {
	if err := r.remove(ctx, b); err != nil {
		r.log.Warn("sandbox left in containerd", "sandbox", b.Sandbox.ID, "err", err)
	}
	if b.slot != nil {
		r.pool.Put(b.slot)
	}
	_ = os.Remove(b.logPath)
	sandbox.Forget(&r.mu, r.boxes, b)
}

// remove deletes the box's task, container and snapshot from containerd,
// whatever state Create left them in.
func (r *Runtime) remove(ctx context.Context, b *box) error {
	id := b.cid
	ts := r.client.TaskService()
	if b.haveTask {
		if !b.watching {
			r.watch(b)
		}
		_, err := ts.Kill(ctx, &tasks.KillRequest{ContainerID: id, Signal: uint32(syscall.SIGKILL), All: true})
		if err = errdefs.FromGRPC(err); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
			r.log.Debug("kill task", "sandbox", id, "err", err)
		}
		select { // the watcher sees the exit (a task never started: at once)
		case <-b.exited:
		case <-ctx.Done():
			return fmt.Errorf("wait for the task to exit: %w", ctx.Err())
		}
		_, err = ts.Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: id})
		if err = errdefs.FromGRPC(err); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task: %w", err)
		}
	}
	if b.haveContainer {
		if err := r.client.ContainerService().Delete(ctx, id); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete container: %w", err)
		}
	}
	if b.haveSnapshot {
		if err := r.client.SnapshotService(r.cfg.Snapshotter).Remove(ctx, id); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove snapshot: %w", err)
		}
	}
	return nil
}

// Delete kills the sandbox and frees everything it held. A Create in
// progress for id is cancelled.
func (r *Runtime) Delete(ctx context.Context, id string) error {
	b, ok, err := sandbox.Claim(ctx, &r.mu, r.boxes, id)
	if !ok {
		return err
	}
	return r.stop(ctx, b)
}

// stop releases a claimed running box. If ctx ends first, the release goes
// on in the background.
func (r *Runtime) stop(ctx context.Context, b *box) error {
	done := make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(done)
		cctx, cancel := r.cleanupContext()
		defer cancel()
		r.release(cctx, b)
	}()
	select {
	case <-done:
		r.log.Debug("sandbox deleted", "sandbox", b.Sandbox.ID)
		return nil
	case <-ctx.Done():
		return fmt.Errorf("delete sandbox %s: %w", b.Sandbox.ID, ctx.Err())
	}
}

// Network returns the counters of the runtime's pool of network namespaces.
func (r *Runtime) Network() netpool.Stats { return r.pool.Stats() }

// List returns the running sandboxes (adopted ones included), ordered by id.
func (r *Runtime) List(ctx context.Context) ([]sandbox.Sandbox, error) {
	return sandbox.ListRunning(&r.mu, r.boxes), nil
}

// Close deletes every sandbox, waits for the runtime's goroutines and
// removes the node network and the state directory. Later Creates fail; a
// second Close returns nil.
func (r *Runtime) Close(ctx context.Context) error {
	// At most 8 deletions at once: containerd does not go faster with more.
	first, err := sandbox.CloseAll(ctx, &r.mu, r.boxes, &r.closed, 8, r.Delete)
	if !first {
		return nil
	}
	r.cancel()
	r.wg.Wait()
	err = errors.Join(err, r.pool.Close(), r.client.Close())
	if err := os.Remove(r.logDir); err == nil {
		os.Remove(r.cfg.StateDir)
	}
	r.removeCgroupParents()
	if err != nil {
		return fmt.Errorf("close containerd runtime: %w", err)
	}
	return nil
}

// removeCgroupParents removes the (empty) cgroups runc made for the
// namespace, the parents of the sandboxes' own.
func (r *Runtime) removeCgroupParents() {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", r.cfg.Namespace))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", r.cfg.Namespace))
	for _, d := range dirs {
		_ = os.Remove(d) // fails while another worker's sandboxes are there
	}
}

// abandon drops the runtime without touching its sandboxes, as a crash of
// the worker would: they keep running, for the next New to adopt.
func (r *Runtime) abandon() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	r.pool.Detach()
	r.client.Close()
}
