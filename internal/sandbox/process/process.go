// Package process is Baton's default sandbox runtime. It runs a function's
// executable as a child process in new PID, mount, UTS and IPC namespaces
// (sharing the host's network: the function binds its own port on Host), in
// a cgroup limited to the sandbox's cpu and memory request. It needs root and
// no daemon.
//
// A sandbox starts as a re-execution of the current binary under the argv[0]
// "baton-sandbox-init" (package sandboxinit): that small init waits until the
// runtime has placed it in its cgroups, mounts a fresh /proc, sets the
// hostname to the sandbox id and execs the function, which then is PID 1 of
// its namespace. Killing it kills the whole tree. It does this from a Go
// init function, so any binary importing this package can run sandboxes.
//
// Sandboxes do not outlive the runtime's process (they get SIGKILL when it
// dies), so after a restart there is nothing to adopt: New removes the
// cgroups they left behind.
package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/process/sandboxinit"
)

// Config configures a Runtime. The zero value (plus root) works.
type Config struct {
	// Host is the IP the functions bind and are reached on; default 127.0.0.1.
	Host string
	// PortMin and PortMax bound the ports handed to sandboxes; default 30000-39999.
	PortMin, PortMax int
	// CgroupParent is the cgroup path below each controller's root where the
	// sandboxes' groups go; default "baton". A worker passes "baton/<worker-id>".
	CgroupParent string
	// ReadyTimeout bounds the wait for a new sandbox to answer; default 30s.
	ReadyTimeout time.Duration
	// ImageMap maps image references to executables, for specs that name an
	// Image and no Binary.
	ImageMap map[string]string
	// OnExit is told about sandboxes that stop without Delete.
	OnExit sandbox.ExitFunc
	// Logger receives the runtime's logs and, at debug level, the sandboxes'
	// output lines; nil discards.
	Logger *slog.Logger
}

// Defaults for Config.
const (
	DefaultHost         = "127.0.0.1"
	DefaultPortMin      = 30000
	DefaultPortMax      = 39999
	DefaultCgroupParent = "baton"
	DefaultReadyTimeout = 30 * time.Second
)

// cloneFlags are the namespaces a sandbox gets. Not CLONE_NEWNET: it serves
// on the host's network.
const cloneFlags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC

// Runtime is the process runtime. It is safe for concurrent use.
type Runtime struct {
	cfg       Config
	host      netip.Addr // cfg.Host
	log       *slog.Logger
	cg        *cgroupSet
	ports     *ports
	listeners listenerFinder
	onExit    sandbox.ExitFunc

	mu     sync.Mutex
	boxes  map[string]*box
	closed bool

	spawns chan spawnRequest // to the spawner; closed by Close
	wg     sync.WaitGroup    // every goroutine the runtime starts
}

var _ sandbox.Runtime = (*Runtime)(nil)

// box is one sandbox and everything it holds.
type box struct {
	sandbox.Life
	port int
	cg   *cgroup
	proc *os.Process
	out  ring

	exited  chan struct{} // closed when the process has been reaped
	outDone chan struct{} // closed when its output is drained

	exitState *os.ProcessState // set before exited is closed
	waitErr   error
}

// New checks the host (root, cgroups), removes the empty cgroups a previous
// run left below CgroupParent and returns a runtime.
func New(cfg Config) (*Runtime, error) {
	if uid := os.Geteuid(); uid != 0 {
		return nil, fmt.Errorf("process runtime: needs root to create namespaces and cgroups (running as uid %d); run as root or use the fake runtime", uid)
	}
	if cfg.Host == "" {
		cfg.Host = DefaultHost
	}
	host, err := netip.ParseAddr(cfg.Host)
	if err != nil || host.Zone() != "" {
		return nil, fmt.Errorf("process runtime: host %q is not an IP address", cfg.Host)
	}
	if cfg.PortMin == 0 && cfg.PortMax == 0 {
		cfg.PortMin, cfg.PortMax = DefaultPortMin, DefaultPortMax
	}
	if cfg.PortMin < 1 || cfg.PortMax > 65535 || cfg.PortMin > cfg.PortMax {
		return nil, fmt.Errorf("process runtime: bad port range %d-%d", cfg.PortMin, cfg.PortMax)
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	parent := filepath.Clean(cfg.CgroupParent)
	if filepath.IsAbs(parent) || parent == "." || parent == ".." || strings.HasPrefix(parent, "../") {
		return nil, fmt.Errorf("process runtime: cgroup parent %q must be a relative path below the cgroup roots", cfg.CgroupParent)
	}
	cfg.CgroupParent = parent
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cg, err := detectCgroups(cgroupMount, parent)
	if err != nil {
		return nil, fmt.Errorf("process runtime: %w", err)
	}
	cg.removeLeftovers(log)
	if err := cg.ensureParent(); err != nil {
		return nil, fmt.Errorf("process runtime: %w", err)
	}
	onExit := cfg.OnExit
	if onExit == nil {
		onExit = func(sandbox.Exit) {}
	}
	listeners, how := newListenerFinder()
	if how != "sock_diag" {
		log.Warn("the kernel does not answer sock_diag: readiness reads /proc/net/tcp to find who holds a sandbox's port, which adds milliseconds to every start")
	}
	log.Debug("process runtime ready", "cgroup_v2", cg.v2, "cgroup_parent", parent,
		"host", cfg.Host, "ports", fmt.Sprintf("%d-%d", cfg.PortMin, cfg.PortMax), "port_owner_check", how)
	r := &Runtime{
		cfg:       cfg,
		host:      host,
		log:       log,
		cg:        cg,
		ports:     newPorts(cfg.PortMin, cfg.PortMax),
		listeners: listeners,
		onExit:    onExit,
		boxes:     map[string]*box{},
		spawns:    make(chan spawnRequest),
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		spawner(r.spawns)
	}()
	return r, nil
}

// Name returns "process".
func (r *Runtime) Name() string { return "process" }

// Create starts the sandbox and returns once its port accepts connections
// on a socket of the sandbox's.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	sb, err := r.create(ctx, spec)
	if err != nil {
		return sandbox.Sandbox{}, fmt.Errorf("create sandbox %s: %w", spec.ID, err)
	}
	return sb, nil
}

func (r *Runtime) create(ctx context.Context, spec sandbox.Spec) (_ sandbox.Sandbox, err error) {
	binary, err := r.resolve(spec)
	if err != nil {
		return sandbox.Sandbox{}, err
	}
	if err := ctx.Err(); err != nil {
		return sandbox.Sandbox{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	b := &box{
		Life:    sandbox.NewLife(spec, cancel),
		exited:  make(chan struct{}),
		outDone: make(chan struct{}),
	}
	if err := sandbox.Register(&r.mu, r.boxes, &r.closed, b); err != nil {
		return sandbox.Sandbox{}, err
	}
	defer sandbox.EndCreate(b, &err, r.abort)

	b.port, err = r.ports.get()
	if err != nil {
		return sandbox.Sandbox{}, err
	}
	b.Sandbox.Address = net.JoinHostPort(r.cfg.Host, strconv.Itoa(b.port))
	syncW, err := r.start(b, binary, spec)
	if err != nil {
		return sandbox.Sandbox{}, err
	}
	// The child's Go runtime starts while its cgroups are made; it waits
	// for the byte on syncW before it execs the function.
	b.cg, err = r.cg.create(spec.ID, spec.CPUMillicores, spec.MemoryMiB)
	if err == nil {
		err = b.cg.join(b.proc.Pid)
	}
	if err == nil {
		_, err = syncW.Write([]byte{1})
		if err != nil {
			err = fmt.Errorf("release sandbox init: %w", err)
		}
	}
	_ = syncW.Close()
	if err != nil {
		return sandbox.Sandbox{}, err
	}
	if err := r.waitReady(ctx, b); err != nil {
		return sandbox.Sandbox{}, err
	}
	b.Sandbox.Started = time.Now()
	if !sandbox.MarkRunning(&r.mu, b, b.exited) { // exited between the answer and now
		return sandbox.Sandbox{}, fmt.Errorf("%w: exited right after answering on %s: %s", sandbox.ErrNotReady, b.Sandbox.Address, exitReason(b))
	}
	r.log.Debug("sandbox ready", "sandbox", spec.ID, "function", spec.Function, "address", b.Sandbox.Address, "pid", b.proc.Pid)
	return b.Sandbox, nil
}

// resolve validates spec and returns the executable to run.
func (r *Runtime) resolve(spec sandbox.Spec) (string, error) {
	id := spec.ID
	switch {
	case id == "":
		return "", fmt.Errorf("%w: empty sandbox id", sandbox.ErrInvalid)
	case len(id) > 200 || id == "." || id == ".." || strings.ContainsAny(id, "/\x00"):
		return "", fmt.Errorf("%w: sandbox id %q cannot name a cgroup (at most 200 bytes, no '/')", sandbox.ErrInvalid, id)
	case spec.CPUMillicores < 0 || spec.MemoryMiB < 0:
		return "", fmt.Errorf("%w: negative resource request (cpu %d millicores, memory %d MiB)", sandbox.ErrInvalid, spec.CPUMillicores, spec.MemoryMiB)
	}
	binary := spec.Binary
	if binary == "" {
		if spec.Image == "" {
			return "", fmt.Errorf("%w: the spec names neither a binary nor an image", sandbox.ErrInvalid)
		}
		var ok bool
		if binary, ok = r.cfg.ImageMap[spec.Image]; !ok {
			return "", fmt.Errorf("%w: image %q has no executable mapped; the process runtime runs executables: map the image with --image-map %s=/path/to/executable, or deploy with --binary", sandbox.ErrInvalid, spec.Image, spec.Image)
		}
	}
	if !filepath.IsAbs(binary) {
		return "", fmt.Errorf("%w: binary %q is not an absolute path", sandbox.ErrInvalid, binary)
	}
	st, err := os.Stat(binary)
	switch {
	case err != nil:
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("%w: binary %s: %v", sandbox.ErrInvalid, binary, err)
	case !st.Mode().IsRegular():
		return "", fmt.Errorf("%w: binary %s is not a regular file", sandbox.ErrInvalid, binary)
	case st.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("%w: binary %s is not executable (mode %v)", sandbox.ErrInvalid, binary, st.Mode().Perm())
	}
	return binary, nil
}

// start launches the sandbox init and the goroutines that drain its output
// and wait for it. It returns the pipe on which the init waits.
func (r *Runtime) start(b *box, binary string, spec sandbox.Spec) (*os.File, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("output pipe: %w", err)
	}
	syncR, syncW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("sync pipe: %w", err)
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		outR.Close()
		outW.Close()
		syncR.Close()
		syncW.Close()
		return nil, err
	}
	hostname := spec.ID
	if len(hostname) > 64 { // HOST_NAME_MAX
		hostname = hostname[:64]
	}
	argv := append([]string{sandboxinit.Arg0, hostname, binary}, spec.Args...)
	proc, err := r.spawn(argv, &os.ProcAttr{
		Dir:   filepath.Dir(binary),
		Env:   env(spec.Env, b.port),
		Files: []*os.File{devNull, outW, outW, syncR}, // syncR becomes sandboxinit.SyncFD
		Sys: &syscall.SysProcAttr{
			Cloneflags: cloneFlags,
			Pdeathsig:  syscall.SIGKILL,
			Setpgid:    true,
		},
	})
	devNull.Close()
	outW.Close()
	syncR.Close()
	if err != nil {
		outR.Close()
		syncW.Close()
		return nil, fmt.Errorf("start sandbox init: %w", err)
	}
	b.proc = proc
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		defer close(b.outDone)
		readOutput(outR, &b.out, r.log, spec.ID)
	}()
	go func() {
		defer r.wg.Done()
		r.watch(b)
	}()
	return syncW, nil
}

// env is the function's environment: its spec's, a PATH unless the spec
// sets one, and PORT.
func env(spec map[string]string, port int) []string {
	out := make([]string, 0, len(spec)+2)
	for k, v := range spec {
		if k != "PORT" {
			out = append(out, k+"="+v)
		}
	}
	if _, ok := spec["PATH"]; !ok {
		out = append(out, "PATH="+sandbox.DefaultPath)
	}
	out = append(out, "PORT="+strconv.Itoa(port))
	slices.Sort(out)
	return out
}

// waitReady polls the sandbox's port until it accepts a connection, the
// process exits, ctx ends or the ready timeout passes. A connection only
// shows that something listens: the port is the sandbox's only once the
// listener it reached is held by one of the sandbox's processes, not by a
// stranger that took the port before the function bound it.
func (r *Runtime) waitReady(ctx context.Context, b *box) error {
	deadline := time.Now().Add(r.cfg.ReadyTimeout)
	err := sandbox.WaitTCP(ctx, b.Sandbox.Address, r.cfg.ReadyTimeout, finePollFor, b.exited)
	switch {
	case errors.Is(err, sandbox.ErrProbeExited):
		return r.notReadyExited(b)
	case errors.Is(err, sandbox.ErrProbeTimeout):
		return fmt.Errorf("%w: no answer on %s within %v%s", sandbox.ErrNotReady, b.Sandbox.Address, r.cfg.ReadyTimeout, outputSuffix(b))
	case err != nil:
		return err
	}
	// Then until the listener is the sandbox's: every 1 ms, doubling to 10 ms.
	var inodes []uint64
	var holderErr error
	err = sandbox.Poll(ctx, b.Sandbox.Address, deadline, sandbox.Pace{First: time.Millisecond, Growth: 200}, b.exited, func() bool {
		var ok bool
		ok, inodes, holderErr = r.listening(b)
		return ok
	})
	switch {
	case errors.Is(err, sandbox.ErrProbeExited):
		return r.notReadyExited(b)
	case errors.Is(err, sandbox.ErrProbeTimeout) && holderErr != nil:
		return fmt.Errorf("%w: %s answers, but who holds port %d is unknown: %v", sandbox.ErrNotReady, b.Sandbox.Address, b.port, holderErr)
	case errors.Is(err, sandbox.ErrProbeTimeout) && len(inodes) == 0:
		return fmt.Errorf("%w: %s answered once, then nothing listened on it within %v%s", sandbox.ErrNotReady, b.Sandbox.Address, r.cfg.ReadyTimeout, outputSuffix(b))
	case errors.Is(err, sandbox.ErrProbeTimeout):
		return fmt.Errorf("%w: port %d is held by another process (%s), not by the sandbox: the function did not listen on %s within %v%s",
			sandbox.ErrNotReady, b.port, socketHolder(inodes), b.Sandbox.Address, r.cfg.ReadyTimeout, outputSuffix(b))
	}
	return err
}

// finePollFor is how long readiness is probed every 0.5 ms (most functions
// answer within a few milliseconds) before backing off.
const finePollFor = 50 * time.Millisecond

// notReadyExited says why an exited sandbox never became ready, and who
// holds its port if anyone does (a function that finds its port taken
// fails to bind it and exits).
func (r *Runtime) notReadyExited(b *box) error {
	reason := exitReason(b)
	if inodes, err := r.listeners(r.host, b.port); err == nil && len(inodes) > 0 {
		reason += fmt.Sprintf("; port %d is held by another process (%s)", b.port, socketHolder(inodes))
	}
	return fmt.Errorf("%w: exited before answering on %s: %s", sandbox.ErrNotReady, b.Sandbox.Address, reason)
}

// reasonBytes is how much output an error reason quotes.
const reasonBytes = 2 << 10

// exitReason says how the (exited) sandbox ended, with its last output.
func exitReason(b *box) string {
	select {
	case <-b.outDone:
	case <-time.After(500 * time.Millisecond): // a writer outlived the init?
	}
	var reason string
	switch {
	case b.exitState != nil:
		reason = b.exitState.String()
	case b.waitErr != nil:
		reason = b.waitErr.Error()
	default:
		reason = "exited"
	}
	if out := strings.TrimSpace(string(b.out.tail(reasonBytes))); out != "" {
		reason += ": " + out
	}
	return reason
}

// outputSuffix quotes the running sandbox's last output for an error.
func outputSuffix(b *box) string {
	if out := strings.TrimSpace(string(b.out.tail(reasonBytes))); out != "" {
		return "; its output ends with: " + out
	}
	return ""
}

// watch reaps the sandbox's process and, if it was running and nobody was
// deleting it, releases it and reports the exit.
func (r *Runtime) watch(b *box) {
	b.exitState, b.waitErr = b.proc.Wait()
	close(b.exited)
	if !sandbox.ClaimExit(&r.mu, b) {
		return // Create or Delete owns the cleanup
	}
	reason := exitReason(b)
	r.log.Warn("sandbox exited", "sandbox", b.Sandbox.ID, "function", b.Sandbox.Function, "reason", reason)
	r.release(b)
	r.onExit(sandbox.Exit{ID: b.Sandbox.ID, Reason: reason})
}

// abort undoes a failed Create: it stops the init (closing the sync pipe
// has already told it to give up), waits for it and releases the rest.
func (r *Runtime) abort(b *box) {
	if b.proc != nil {
		_ = b.proc.Kill()
		<-b.exited
	}
	r.release(b)
}

// release frees what the box holds once its process is gone, and forgets it.
func (r *Runtime) release(b *box) {
	if b.proc != nil {
		select {
		case <-b.outDone:
		case <-time.After(500 * time.Millisecond):
		}
	}
	if b.cg != nil {
		if err := b.cg.remove(); err != nil {
			r.log.Warn("sandbox cgroup left behind", "sandbox", b.Sandbox.ID, "err", err)
		}
	}
	if b.port != 0 {
		release(b.port)
	}
	sandbox.Forget(&r.mu, r.boxes, b)
}

// Delete kills the sandbox's process tree and frees its cgroups and port.
// A Create in progress for id is cancelled.
func (r *Runtime) Delete(ctx context.Context, id string) error {
	b, ok, err := sandbox.Claim(ctx, &r.mu, r.boxes, id)
	if !ok {
		return err
	}
	return r.stop(ctx, b)
}

// stop kills a claimed running box and releases it.
func (r *Runtime) stop(ctx context.Context, b *box) error {
	// SIGKILL to the PID namespace's init: the kernel kills everything else
	// in the namespace, and the init is reaped only once they are gone.
	if err := b.proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		r.log.Warn("kill sandbox", "sandbox", b.Sandbox.ID, "err", err)
	}
	select {
	case <-b.exited:
	case <-ctx.Done():
		r.wg.Add(1)
		go func() { // finish once the kill lands
			defer r.wg.Done()
			<-b.exited
			r.release(b)
		}()
		return fmt.Errorf("delete sandbox %s: %w", b.Sandbox.ID, ctx.Err())
	}
	r.release(b)
	r.log.Debug("sandbox deleted", "sandbox", b.Sandbox.ID)
	return nil
}

// List returns the running sandboxes, ordered by id.
func (r *Runtime) List(ctx context.Context) ([]sandbox.Sandbox, error) {
	return sandbox.ListRunning(&r.mu, r.boxes), nil
}

// Close deletes every sandbox, waits for the runtime's goroutines and
// removes the cgroup parent if it is empty. Later Creates fail; a second
// Close returns nil.
func (r *Runtime) Close(ctx context.Context) error {
	first, err := sandbox.CloseAll(ctx, &r.mu, r.boxes, &r.closed, 0, r.Delete)
	if !first {
		return nil
	}
	// Every Create has finished (Delete waited for those in progress) and
	// no new one gets past the closed check: nobody sends any more.
	close(r.spawns)
	r.wg.Wait()
	r.cg.removeParent()
	if err != nil {
		return fmt.Errorf("close process runtime: %w", err)
	}
	return nil
}
