package e2e

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/sandbox"
	ctrrt "github.com/batonfaas/baton/internal/sandbox/containerd"
	"github.com/batonfaas/baton/internal/sandbox/containerd/netpool"
	"github.com/batonfaas/baton/internal/stats"

	containerd "github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/snapshots"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// End-to-end tests of the containerd runtime: a real containerd
// (BATON_CONTAINERD_SOCKET) and a real registry (BATON_REGISTRY, on
// loopback), both started by scripts/containerd.sh; the functions are
// examples/hello and examples/workload, made into images and pushed with
// `baton image build --push`.

var (
	ctrSocket   = os.Getenv("BATON_CONTAINERD_SOCKET")
	ctrRegistry = os.Getenv("BATON_REGISTRY")
	// ctrNS is this test binary's containerd namespace.
	ctrNS = fmt.Sprintf("baton-e2e-%d", os.Getpid())
)

// needContainerd skips a test without root, containerd or a registry,
// except under CI=true where it must run.
func needContainerd(t testing.TB) {
	t.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "needs root (containerd, network namespaces)"
	case ctrSocket == "" || ctrRegistry == "":
		why = "needs containerd and a registry: set BATON_CONTAINERD_SOCKET and BATON_REGISTRY (eval \"$(scripts/containerd.sh start DIR)\" starts both)"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test " + why + ", and CI=true forbids skipping it")
	}
	t.Skip("skipped: this test " + why)
}

var (
	ctrImagesOnce sync.Once
	ctrImages     map[string]string // example -> reference in the registry
	ctrImagesErr  error
)

// ctrImage returns the reference of examples/<name> ("hello" or
// "workload"), built into an image and pushed by the baton binary.
func ctrImage(t testing.TB, name string) string {
	t.Helper()
	needContainerd(t)
	ctrImagesOnce.Do(func() {
		ctrImages = map[string]string{}
		for _, ex := range []string{"hello", "workload"} {
			ref := fmt.Sprintf("%s/baton-e2e/%s:%d", ctrRegistry, ex, os.Getpid())
			out, err := exec.Command(bin(t, "baton"), "image", "build", "--binary", bin(t, ex), "--tag", ref, "--push").CombinedOutput()
			if err != nil {
				ctrImagesErr = fmt.Errorf("baton image build %s: %v\n%s", ex, err, out)
				return
			}
			ctrImages[ex] = ref
		}
	})
	if ctrImagesErr != nil {
		t.Fatal(ctrImagesErr)
	}
	return ctrImages[name]
}

var ctrNet struct {
	sync.Mutex
	n int
}

// ctrConfig is a runtime config for worker id: this binary's namespace, a
// bridge and subnet of its own (removed at the end of the test, after the
// last connection to its addresses), a state directory of its own.
func ctrConfig(t testing.TB, id string) ctrrt.Config {
	ctrNet.Lock()
	ctrNet.n++
	n := ctrNet.n
	ctrNet.Unlock()
	cfg := ctrrt.Config{
		Socket:    ctrSocket,
		Namespace: ctrNS,
		WorkerID:  id,
		StateDir:  t.TempDir(),
		Bridge:    fmt.Sprintf("bte%d-%d", os.Getpid()%100000, n%100),
		Subnet:    fmt.Sprintf("10.%d.%d.0/24", 150+os.Getpid()%50, n%250),
		NetPool:   8,
		Logger:    testLogger(t).With("c", "containerd", "worker", id),
	}
	t.Cleanup(func() { netpool.RemoveBridge(cfg.Bridge) })
	return cfg
}

// startCtrCluster is startCluster with containerd workers (o.noWorkers: the
// test starts its own), a queue limit of 100000 and the runtime's creation
// cap unless o says otherwise, an in-memory store, and a longer client
// timeout for pulls. wrap, when set, wraps each worker's runtime (to count
// calls). Its workers' runtimes are returned.
func startCtrCluster(t testing.TB, o clusterOpts, wrap func(sandbox.Runtime) sandbox.Runtime) (*cluster, []*ctrrt.Runtime) {
	t.Helper()
	needContainerd(t)
	var rts []*ctrrt.Runtime // appended by worker.New, on this goroutine
	o.queueLimit = cmp.Or(o.queueLimit, 100000)
	o.maxCreations = cmp.Or(o.maxCreations, ctrrt.DefaultMaxCreations)
	o.memStore = true
	o.newRuntime = func(id string, onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
		cfg := ctrConfig(t, id)
		cfg.OnExit = onExit
		rt, err := ctrrt.New(cfg)
		if err != nil {
			return nil, err
		}
		rts = append(rts, rt)
		if wrap != nil {
			return wrap(rt), nil
		}
		return rt, nil
	}
	c := startCluster(t, o)
	c.client.Timeout = 60 * time.Second
	return c, rts
}

// ctrState is what containerd holds for this binary's namespace.
type ctrState struct {
	containers, tasks, snapshots int
	ids                          []string
}

func containerdState(t testing.TB) ctrState {
	t.Helper()
	client, err := containerd.New(ctrSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), ctrNS)
	cs, err := client.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var st ctrState
	for _, c := range cs {
		st.containers++
		st.ids = append(st.ids, c.ID())
		switch _, err := c.Task(ctx, nil); {
		case err == nil:
			st.tasks++
		case !errdefs.IsNotFound(err): // an error is not "no task"
			t.Fatalf("task of container %s: %v", c.ID(), err)
		}
	}
	err = client.SnapshotService(ctrrt.DefaultSnapshotter).Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Kind == snapshots.KindActive {
			st.snapshots++
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk snapshots: %v", err)
	}
	return st
}

// sandboxID is the sandbox an examples/hello answer names.
func sandboxID(body string) string {
	_, rest, ok := strings.Cut(body, "sandbox ")
	if !ok {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSpace(rest), ")")
}

// Deploy by image reference, a cold invocation, a warm one, scale to zero
// with the container, task, snapshot, namespace and address gone.
func TestContainerdColdWarmScaleToZero(t *testing.T) {
	ref := ctrImage(t, "hello")
	c, rts := startCtrCluster(t, clusterOpts{}, nil)
	rt := rts[0]
	c.deploy(t, &pb.FunctionSpec{Name: "chello", Image: ref, Env: map[string]string{"FUNCTION": "chello"},
		CpuMillicores: 200, MemoryMib: 64, Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 1500, StableWindowMs: 2000}})

	cold := c.invoke(t, "chello", "/")
	cold.want(t, 200, "Hello from Baton! (function chello, sandbox chello-")
	if cold.cold() != "true" {
		t.Fatalf("first invocation: X-Baton-Cold-Start %q, want true", cold.cold())
	}
	warm := c.invoke(t, "chello", "/x")
	warm.want(t, 200, "function chello")
	if warm.cold() != "false" || sandboxID(warm.body) != sandboxID(cold.body) {
		t.Fatalf("second invocation: cold %q by %q, want a warm answer from %q", warm.cold(), sandboxID(warm.body), sandboxID(cold.body))
	}
	id := sandboxID(cold.body)
	st := containerdState(t)
	if st.containers != 1 || st.tasks != 1 || st.snapshots != 1 || st.ids[0] != id {
		t.Fatalf("containerd holds %+v, want the one sandbox %s", st, id)
	}
	l, _ := rt.List(t.Context())
	if len(l) != 1 || rt.Network().InUse != 1 {
		t.Fatalf("runtime lists %+v with %d namespaces in use", l, rt.Network().InUse)
	}
	addr := l[0].Address

	waitFor(t, 30*time.Second, "scale to zero", func() bool {
		f := c.function(t, "chello")
		st := containerdState(t)
		return f.Status.Ready == 0 && f.Status.Draining == 0 && st.containers == 0 && st.tasks == 0 && st.snapshots == 0
	})
	waitFor(t, 5*time.Second, "namespace and address returned", func() bool { return rt.Network().InUse == 0 })
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still answers after scale to zero", addr)
	}
	// And cold again.
	again := c.invoke(t, "chello", "/")
	again.want(t, 200, "function chello")
	if again.cold() != "true" {
		t.Errorf("after scale to zero: X-Baton-Cold-Start %q, want true", again.cold())
	}
}

// The workload function: its protocol through the data plane (the cpu limit
// from the spec is checked by the runtime's own tests).
func TestContainerdWorkload(t *testing.T) {
	ref := ctrImage(t, "workload")
	c, _ := startCtrCluster(t, clusterOpts{}, nil)
	c.deploy(t, &pb.FunctionSpec{Name: "cwork", Image: ref, CpuMillicores: 500, MemoryMib: 64,
		Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 60_000}})
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.dp.Addr()+"/", nil)
	req.Host = "cwork"
	req.Header.Set("workload", "empty")
	req.Header.Set("function", "cwork")
	a := c.do(t, req)
	a.want(t, 200, `"Status":"OK"`)
	c.invoke(t, "cwork", "/health").want(t, 200, "")
}

// countingRuntime counts Create calls (to see the back-off).
type countingRuntime struct {
	sandbox.Runtime
	mu      sync.Mutex
	creates map[string]int // by function
}

func (c *countingRuntime) Create(ctx context.Context, s sandbox.Spec) (sandbox.Sandbox, error) {
	c.mu.Lock()
	c.creates[s.Function]++
	c.mu.Unlock()
	return c.Runtime.Create(ctx, s)
}

func (c *countingRuntime) count(fn string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.creates[fn]
}

// An image that cannot be pulled: 502 with the reason, the reason in the
// function's status, a worker that stays healthy and serves others, and
// creations backing off rather than retried in a tight loop.
func TestContainerdBadImage(t *testing.T) {
	good := ctrImage(t, "hello")
	var counter *countingRuntime
	c, _ := startCtrCluster(t, clusterOpts{}, func(rt sandbox.Runtime) sandbox.Runtime {
		counter = &countingRuntime{Runtime: rt, creates: map[string]int{}}
		return counter
	})
	bad := ctrRegistry + "/baton-e2e/no-such-image:1"
	c.deploy(t, &pb.FunctionSpec{Name: "cbad", Image: bad, Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 60_000}})
	start := time.Now()
	a := c.invoke(t, "cbad", "/")
	a.want(t, 502, "no-such-image")
	if !strings.Contains(a.body, "not found") {
		t.Errorf("502 body %q does not say the image was not found", a.body)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("502 took %v", d)
	}
	f := c.function(t, "cbad")
	if !strings.Contains(f.Status.LastError, "no-such-image") || !strings.Contains(f.Status.LastError, "not found") {
		t.Errorf("status last error %q does not give the reason", f.Status.LastError)
	}
	// Requests during the back-off fail at once with the same reason.
	for range 5 {
		c.invoke(t, "cbad", "/").want(t, 502, "no-such-image")
	}
	time.Sleep(3 * time.Second)
	if n := counter.count("cbad"); n > 4 {
		t.Errorf("%d creations of the bad function in ~3 s: no back-off", n)
	}
	// The worker is healthy and serves a good function.
	c.deploy(t, &pb.FunctionSpec{Name: "cgood", Image: good, Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 60_000}})
	c.invoke(t, "cgood", "/").want(t, 200, "Hello from Baton!")
	st, err := c.cpc.GetStatus(t.Context(), &pb.GetStatusRequest{})
	if err != nil || len(st.Workers) != 1 || !st.Workers[0].Up {
		t.Fatalf("worker status %+v (%v)", st.GetWorkers(), err)
	}
	if s := containerdState(t); s.containers != 1 {
		t.Errorf("containerd holds %+v, want only the good function's sandbox", s)
	}
}

// workerProc is a `baton worker --runtime containerd` process.
type workerProc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func startWorkerProc(t testing.TB, cp, id string, cfg ctrrt.Config) *workerProc {
	t.Helper()
	cmd := exec.Command(bin(t, "baton"), "worker", "--controlplane", cp, "--worker-id", id, "--runtime", "containerd",
		"--containerd-socket", cfg.Socket, "--containerd-namespace", cfg.Namespace, "--containerd-state", cfg.StateDir,
		"--bridge", cfg.Bridge, "--sandbox-subnet", cfg.Subnet, "--log-level", "debug")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &workerProc{cmd: cmd, out: &out}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
			p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("worker %s output:\n%s", id, out.String())
		}
	})
	return p
}

// A worker killed with SIGKILL leaves its sandboxes running; started
// again, it adopts them: the control plane keeps routing to them, nothing
// is counted twice, and scaling down removes them for real.
func TestContainerdWorkerRestartAdopts(t *testing.T) {
	ref := ctrImage(t, "hello")
	c, _ := startCtrCluster(t, clusterOpts{noWorkers: true, heartbeatTimeout: 10 * time.Second}, nil)
	id := fmt.Sprintf("e2e-restart-%d", os.Getpid())
	cfg := ctrConfig(t, id)
	w1 := startWorkerProc(t, c.cp.Addr(), id, cfg)
	waitFor(t, 15*time.Second, "worker registered", func() bool {
		st, err := c.cpc.GetStatus(t.Context(), &pb.GetStatusRequest{})
		return err == nil && len(st.Workers) == 1 && st.Workers[0].Up
	})
	c.deploy(t, &pb.FunctionSpec{Name: "cadopt", Image: ref, Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 60_000}})
	cold := c.invoke(t, "cadopt", "/")
	cold.want(t, 200, "Hello from Baton!")
	sb := sandboxID(cold.body)

	if err := w1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	w1.cmd.Wait()
	if st := containerdState(t); st.tasks != 1 || st.ids[0] != sb {
		t.Fatalf("after the worker died containerd holds %+v, want %s still running", st, sb)
	}
	c.invoke(t, "cadopt", "/").want(t, 200, sb) // the data plane still routes to it

	restarted := time.Now()
	startWorkerProc(t, c.cp.Addr(), id, cfg)
	waitFor(t, 15*time.Second, "worker back (heartbeating) with its sandbox", func() bool {
		st, err := c.cpc.GetStatus(t.Context(), &pb.GetStatusRequest{})
		return err == nil && len(st.Workers) == 1 && st.Workers[0].Up && st.Workers[0].Sandboxes == 1 &&
			st.Workers[0].LastHeartbeatUnixMs > restarted.UnixMilli()
	})
	warm := c.invoke(t, "cadopt", "/")
	warm.want(t, 200, sb)
	if warm.cold() != "false" {
		t.Errorf("after the restart: X-Baton-Cold-Start %q, want false (the adopted sandbox)", warm.cold())
	}
	f := c.function(t, "cadopt")
	if f.Status.Ready != 1 || f.Status.Pending != 0 {
		t.Errorf("function status %+v, want exactly the adopted sandbox", f.Status)
	}
	if st := containerdState(t); st.containers != 1 {
		t.Errorf("containerd holds %+v, want only the adopted sandbox", st)
	}
	// Deleting the function deletes the adopted sandbox for real.
	if _, err := c.cpc.DeleteFunction(t.Context(), &pb.DeleteFunctionRequest{Name: "cadopt"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the adopted sandbox removed from containerd", func() bool {
		st := containerdState(t)
		return st.containers == 0 && st.tasks == 0 && st.snapshots == 0
	})
}

// rawLoop creates and starts containers the way a plain containerd client
// program would (containerd's client: NewContainer with a new snapshot and
// the image's config, NewTask, Wait, Start), in namespaces from the same
// kind of pool as Baton's (package netpool), and polls the function until
// it answers HTTP: the baseline of Baton's cold start.
type rawLoop struct {
	client *containerd.Client
	img    containerd.Image
	pool   *netpool.Pool
	dir    string
}

func newRawLoop(b *testing.B, ref string) *rawLoop {
	cfg := ctrConfig(b, "raw")
	client, err := containerd.New(ctrSocket, containerd.WithDefaultNamespace(ctrNS))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	ctx := namespaces.WithNamespace(context.Background(), ctrNS)
	img, err := client.GetImage(ctx, ref)
	if err != nil {
		img, err = client.Pull(ctx, ref, containerd.WithPullUnpack)
		if err != nil {
			b.Fatal(err)
		}
	}
	pool, err := netpool.New(netpool.Config{Bridge: cfg.Bridge, Subnet: cfg.Subnet, Dir: filepath.Join(cfg.StateDir, "netns"), Size: 8})
	if err != nil {
		b.Fatal(err)
	}
	pool.Start()
	b.Cleanup(func() { pool.Close() })
	return &rawLoop{client: client, img: img, pool: pool, dir: cfg.StateDir}
}

// once creates, starts and polls one container; it returns the time from
// the start of the creation to the first answer, and removes it (untimed).
func (r *rawLoop) once(b *testing.B, id string) time.Duration {
	ctx := namespaces.WithNamespace(context.Background(), ctrNS)
	slot, err := r.pool.Get(ctx)
	if err != nil {
		b.Fatal(err)
	}
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + net.JoinHostPort(slot.IP.String(), "8080") + "/"
	t0 := time.Now()
	c, err := r.client.NewContainer(ctx, id, containerd.WithImage(r.img), containerd.WithSnapshotter(ctrrt.DefaultSnapshotter),
		containerd.WithNewSnapshot(id, r.img),
		containerd.WithNewSpec(oci.WithImageConfig(r.img), oci.WithEnv([]string{"PORT=8080"}), oci.WithHostname(id),
			oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: slot.Path})))
	if err != nil {
		b.Fatal(err)
	}
	task, err := c.NewTask(ctx, cio.LogFile(filepath.Join(r.dir, id+".log")))
	if err != nil {
		b.Fatal(err)
	}
	exit, err := task.Wait(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		b.Fatal(err)
	}
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Since(t0) > 30*time.Second {
			b.Fatalf("raw container %s: no answer in 30s: %v", id, err)
		}
		time.Sleep(500 * time.Microsecond)
	}
	d := time.Since(t0)
	task.Kill(ctx, syscall.SIGKILL)
	<-exit
	if _, err := task.Delete(ctx); err != nil {
		b.Fatal(err)
	}
	if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		b.Fatal(err)
	}
	os.Remove(filepath.Join(r.dir, id+".log"))
	r.pool.Put(slot)
	return d
}

// BenchmarkColdStartContainerd: Baton's cold start on the containerd
// runtime (one request to a function at zero, request in to answer out,
// examples/hello) against the raw containerd client loop above, one at a
// time and interleaved, in the same run. Between iterations the sandbox
// (or container) is removed, untimed.
func BenchmarkColdStartContainerd(b *testing.B) {
	ref := ctrImage(b, "hello")
	raw := newRawLoop(b, ref)
	c, rts := startCtrCluster(b, clusterOpts{}, nil)
	rt := rts[0]
	for range 3 { // warm both paths up (image resolution, pools, connections)
		raw.once(b, fmt.Sprintf("raw-warm-%d", os.Getpid()))
	}
	baton := func(i int) time.Duration {
		name := fmt.Sprintf("ccold-%d", i)
		c.deploy(b, &pb.FunctionSpec{Name: name, Image: ref, MemoryMib: 64, CpuMillicores: benchCPU(),
			Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 600_000}})
		t0 := time.Now()
		a := c.invoke(b, name, "/")
		d := time.Since(t0)
		if a.status != 200 || a.cold() != "true" {
			b.Fatalf("%s: %d cold=%s %q", name, a.status, a.cold(), a.body)
		}
		if _, err := c.cpc.DeleteFunction(context.Background(), &pb.DeleteFunctionRequest{Name: name}); err != nil {
			b.Fatal(err)
		}
		waitFor(b, 30*time.Second, "sandbox of "+name+" deleted", func() bool {
			l, err := rt.List(context.Background())
			return err == nil && len(l) == 0 && rt.Network().InUse == 0
		})
		return d
	}
	baton(-1)
	baton(-2)
	var rawLat, batonLat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		rawLat = append(rawLat, raw.once(b, fmt.Sprintf("raw-%d-%d", os.Getpid(), i)))
		batonLat = append(batonLat, baton(i))
	}
	b.StopTimer()
	rawP, batonP := stats.Percentiles(rawLat, 50, 90), stats.Percentiles(batonLat, 50, 90)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(rawP[0]), "raw-p50-ms")
	b.ReportMetric(ms(batonP[0]), "baton-p50-ms")
	b.ReportMetric(ms(rawP[1]), "raw-p90-ms")
	b.ReportMetric(ms(batonP[1]), "baton-p90-ms")
	b.ReportMetric(100*(ms(batonP[0])/ms(rawP[0])-1), "overhead-p50-%")
}

// BenchmarkColdStartBurstContainerd: one request to each of b.N functions
// at zero, all at once, on one worker with the creation cap
// BATON_BENCH_MAX_CREATIONS (default the runtime's): cold starts/s through
// the whole cluster, and their latency. The sandboxes are removed
// afterwards, untimed.
func BenchmarkColdStartBurstContainerd(b *testing.B) {
	ref := ctrImage(b, "hello")
	maxc := ctrrt.DefaultMaxCreations
	if v, err := strconv.Atoi(os.Getenv("BATON_BENCH_MAX_CREATIONS")); err == nil && v > 0 {
		maxc = v
	}
	c, rts := startCtrCluster(b, clusterOpts{maxCreations: maxc}, nil)
	rt := rts[0]
	for i := range b.N {
		c.deploy(b, &pb.FunctionSpec{Name: fmt.Sprintf("cburst-%d", i), Image: ref, MemoryMib: 64, CpuMillicores: 100,
			Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 600_000}})
	}
	c.invoke(b, "cburst-0", "/").want(b, 200, "Hello") // the image, pulled once
	lat := make([]time.Duration, b.N)
	var failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i := 1; i < b.N; i++ {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, "http://"+c.dp.Addr()+"/", nil)
			req.Host = fmt.Sprintf("cburst-%d", i)
			t0 := time.Now()
			resp, err := c.client.Do(req)
			lat[i] = time.Since(t0)
			if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Baton-Cold-Start") != "true" {
				failed.Add(1)
			}
			if resp != nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d cold starts failed or were not cold", f, b.N-1)
	}
	if b.N > 1 {
		reportLatencies(b, lat[1:], elapsed)
	}
	for i := range b.N {
		c.cpc.DeleteFunction(context.Background(), &pb.DeleteFunctionRequest{Name: fmt.Sprintf("cburst-%d", i)})
	}
	waitFor(b, 2*time.Minute, "burst sandboxes deleted", func() bool {
		l, err := rt.List(context.Background())
		return err == nil && len(l) == 0
	})
}
