package e2e

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/controlplane"
	"github.com/batonfaas/baton/internal/dataplane"
	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/fake"
	"github.com/batonfaas/baton/internal/sandbox/process"
	"github.com/batonfaas/baton/internal/store"
	"github.com/batonfaas/baton/internal/worker"
)

// needRoot skips a test that needs root (namespaces, cgroups), except under
// CI=true where it must run.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (process sandboxes use namespaces and cgroups), and CI=true forbids skipping it")
	}
	t.Skip("skipped: needs root for namespaces and cgroups (run as root, or CI=true to make this a failure)")
}

// The packages bin builds, by name.
var binPkgs = map[string]string{
	"fn": "./testdata/fn", "relay": "./testdata/relay", "hello": "../../examples/hello", "workload": "../../examples/workload",
	"baton": "../../cmd/baton",
}

var (
	binDir  string // made by the first build, removed by TestMain
	binOnce = sync.OnceValue(func() error {
		var err error
		binDir, err = os.MkdirTemp("", "baton-e2e-bin-")
		return err
	})
	builds sync.Map // name → func() error, each build done once
)

// bin builds the named test function, example or the baton binary once per
// test run (only those the tests ask for) and returns its path.
func bin(t testing.TB, name string) string {
	t.Helper()
	pkg, ok := binPkgs[name]
	if !ok {
		t.Fatalf("bin: no package for %q", name)
	}
	build, _ := builds.LoadOrStore(name, sync.OnceValue(func() error {
		if err := binOnce(); err != nil {
			return err
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
		}
		return nil
	}))
	if err := build.(func() error)(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(binDir, name)
}

func TestMain(m *testing.M) {
	code := m.Run()
	// Every runtime removed its own groups; remove their common parent.
	parents, _ := filepath.Glob("/sys/fs/cgroup/*/baton-e2e") // cgroup v1: one tree per controller
	parents = append(parents, "/sys/fs/cgroup/baton-e2e")     // v2: the unified tree
	for _, p := range parents {
		os.Remove(p)
	}
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type cluster struct {
	cp      *controlplane.ControlPlane
	cpc     pb.ControlPlaneClient
	dp      *dataplane.DataPlane
	dataDir string
	workers []*worker.Worker
	client  *http.Client
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

type clusterOpts struct {
	workers    int  // in-process workers; default 1
	noWorkers  bool // none: the test runs its own
	queueLimit int
	dataDir    string
	fake       bool          // the fake runtime instead of process
	fakeDelay  time.Duration // its creation delay (default 40ms)
	memStore   bool          // an in-memory store (benchmarks deploying thousands)
	// newRuntime, when set, builds each worker's runtime (other runtimes'
	// end-to-end tests); the worker id is unique per worker.
	newRuntime func(workerID string, onExit sandbox.ExitFunc) (sandbox.Runtime, error)
	// maxCreations is the workers' cap; default 16 (4096 with fake).
	maxCreations     int
	heartbeatTimeout time.Duration // default 1s
	// defaultIntervals runs the control plane and the data plane on the
	// daemons' default intervals (autoscaler 2 s, load reports 100 ms,
	// heartbeats 1 s with a 3 s timeout, idle drain 1 s) instead of the
	// tests' faster ones: benchmarks measure what users run.
	defaultIntervals bool
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("BATON_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startCluster runs a control plane, a data plane and process-runtime
// workers in this process, on loopback ports of their own, with short
// timers so the tests run fast.
func startCluster(t testing.TB, o clusterOpts) *cluster {
	t.Helper()
	if !o.fake && o.newRuntime == nil {
		needRoot(t)
	}
	switch {
	case o.noWorkers:
		o.workers = 0
	case o.workers == 0:
		o.workers = 1
	}
	o.heartbeatTimeout = cmp.Or(o.heartbeatTimeout, time.Second)
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	log := testLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 1024
	c := &cluster{cancel: cancel, dataDir: o.dataDir, client: &http.Client{Timeout: 30 * time.Second, Transport: tr}}
	var st store.Store
	if o.memStore {
		st = store.NewMemory()
	}
	var err error
	autoscale, report, beat, beatTimeout, drain := 200*time.Millisecond, 50*time.Millisecond, 200*time.Millisecond,
		o.heartbeatTimeout, 200*time.Millisecond
	if o.defaultIntervals { // zero: the daemons' defaults
		autoscale, report, beat, beatTimeout, drain = 0, 0, 0, 0, 0
	}
	c.cp, err = controlplane.New(controlplane.Config{
		Listen: "127.0.0.1:0", DataDir: o.dataDir, Store: st, HeartbeatInterval: beat,
		HeartbeatTimeout: beatTimeout, AutoscaleInterval: autoscale, IdleDrain: drain,
		Logger: log.With("c", "cp"),
	})
	if err != nil {
		t.Fatal(err)
	}
	c.goRun(func() { c.cp.Run(ctx) })
	c.dp, err = dataplane.New(dataplane.Config{
		Listen: "127.0.0.1:0", ControlPlane: c.cp.Addr(), QueueLimit: o.queueLimit,
		ReportInterval: report, Logger: log.With("c", "dp"),
	})
	if err != nil {
		t.Fatal(err)
	}
	c.goRun(func() { c.dp.Run(ctx) })
	for i := range o.workers {
		id := fmt.Sprintf("e2e-%d-%d", os.Getpid(), i)
		newRT := func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
			return process.New(process.Config{CgroupParent: "baton-e2e/" + id, OnExit: onExit, Logger: log})
		}
		capacity, creations := worker.Resources{CPUMillicores: 10_000_000, MemoryMiB: 1 << 20}, 16
		if o.fake {
			newRT = func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
				return fake.New(fake.Config{Delay: o.fakeDelay, OnExit: onExit})
			}
			capacity, creations = worker.Resources{CPUMillicores: 1 << 40, MemoryMiB: 1 << 40}, 4096
		}
		if o.newRuntime != nil {
			newRT = func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) { return o.newRuntime(id, onExit) }
		}
		creations = cmp.Or(o.maxCreations, creations)
		w, err := worker.New(worker.Config{
			ID: id, ControlPlane: c.cp.Addr(), Capacity: capacity, MaxCreations: creations,
			Logger: log.With("c", "worker", "id", id), NewRuntime: newRT,
		})
		if err != nil {
			t.Fatal(err)
		}
		c.workers = append(c.workers, w)
		c.goRun(func() { w.Run(ctx) })
	}
	conn, err := grpc.NewClient(c.cp.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c.cpc = pb.NewControlPlaneClient(conn)
	t.Cleanup(func() {
		conn.Close()
		c.stop()
	})
	// Ready when the control plane sees every worker and the data plane.
	waitFor(t, 10*time.Second, "workers and data plane registered", func() bool {
		st, err := c.cpc.GetStatus(context.Background(), &pb.GetStatusRequest{})
		return err == nil && len(st.Workers) == o.workers && len(st.DataPlanes) == 1
	})
	return c
}

func (c *cluster) goRun(f func()) {
	c.done.Add(1)
	go func() { defer c.done.Done(); f() }()
}

func (c *cluster) stop() {
	c.cancel()
	c.done.Wait()
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) deploy(t testing.TB, spec *pb.FunctionSpec) {
	t.Helper()
	if _, err := c.cpc.DeployFunction(context.Background(), &pb.DeployFunctionRequest{Spec: spec}); err != nil {
		t.Fatalf("deploy %s: %v", spec.Name, err)
	}
}

func (c *cluster) function(t testing.TB, name string) *pb.Function {
	t.Helper()
	f, err := c.cpc.GetFunction(context.Background(), &pb.GetFunctionRequest{Name: name})
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return f
}

type answer struct {
	status int
	body   string
	header http.Header
}

// invoke sends a request for fn by Host header (path "" means "/").
func (c *cluster) invoke(t testing.TB, fn, path string) answer {
	t.Helper()
	if path == "" {
		path = "/"
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.dp.Addr()+path, nil)
	req.Host = fn
	return c.do(t, req)
}

func (c *cluster) do(t testing.TB, req *http.Request) answer {
	t.Helper()
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", req.Method, req.URL, req.Host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: string(b), header: resp.Header}
}

func (a answer) cold() string { return a.header.Get("X-Baton-Cold-Start") }

func (a answer) want(t testing.TB, status int, bodyHas string) {
	t.Helper()
	if a.status != status || !strings.Contains(a.body, bodyHas) {
		t.Fatalf("got %d %q, want %d with %q", a.status, a.body, status, bodyHas)
	}
}

// sandboxProcs lists the live processes running the given executable.
func sandboxProcs(t testing.TB, exe string) []string {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && target == exe {
			out = append(out, e.Name())
		}
	}
	return out
}

// cgroupsUnder lists the cgroup directories left under parent in every
// mounted hierarchy.
func cgroupsUnder(parent string) []string {
	var out []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent)
	if _, err := os.Stat("/sys/fs/cgroup/" + parent); err == nil {
		roots = append(roots, "/sys/fs/cgroup/"+parent)
	}
	for _, r := range roots {
		filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != r {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}
