package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd"
	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/identifiers"
	ctrimages "github.com/containerd/containerd/images"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/vishvananda/netlink"

	"github.com/batonfaas/baton/internal/image"
	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/containerd/netpool"
	"github.com/batonfaas/baton/internal/sandbox/sandboxtest"
)

// The tests need root, a containerd (BATON_CONTAINERD_SOCKET) and, for
// pulls, a registry (BATON_REGISTRY, host:port on loopback);
// scripts/containerd.sh starts both. Without a registry the test image is
// imported instead.

var (
	socket   = os.Getenv("BATON_CONTAINERD_SOCKET")
	registry = os.Getenv("BATON_REGISTRY")
	buildDir string

	imagesMu sync.Mutex
	testRefs = map[string]string{} // test image name -> reference
)

// testNS is this test binary's containerd namespace.
var testNS = fmt.Sprintf("baton-test-%d", os.Getpid())

func TestMain(m *testing.M) {
	var err error
	buildDir, err = os.MkdirTemp("", "baton-ctr-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(buildDir)
	if socket != "" && os.Geteuid() == 0 {
		removeNamespace(socket, testNS)
	}
	os.Exit(code)
}

// needContainerd skips a test without root or containerd, except under
// CI=true where it must run.
func needContainerd(t testing.TB) {
	t.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "needs root (containerd, network namespaces)"
	case socket == "":
		why = "needs a containerd: set BATON_CONTAINERD_SOCKET (eval \"$(scripts/containerd.sh start DIR)\" starts one, and a registry)"
	}
	if why == "" {
		if _, err := os.Stat(socket); err != nil {
			why = "BATON_CONTAINERD_SOCKET: " + err.Error()
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test " + why + ", and CI=true forbids skipping it")
	}
	t.Skip("skipped: this test " + why)
}

// testImage builds a function into an image once and makes it
// available: pushed to BATON_REGISTRY if set (so that runtimes pull it),
// imported into the test namespace otherwise. name is "hello"
// (examples/hello) or "fn" (testdata/fn).
func testImage(t testing.TB, name string) string {
	t.Helper()
	needContainerd(t)
	imagesMu.Lock()
	defer imagesMu.Unlock()
	if ref, ok := testRefs[name]; ok {
		return ref
	}
	var bin string
	var err error
	if name == "hello" {
		bin, err = sandboxtest.BuildExample(buildDir, "hello")
	} else {
		bin = filepath.Join(buildDir, name)
		cmd := exec.Command("go", "build", "-o", bin, "./testdata/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, e := cmd.CombinedOutput(); e != nil {
			err = fmt.Errorf("build testdata/%s: %v\n%s", name, e, out)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Build(image.BuildOptions{Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	repo := "baton-test/" + name + ":" + strconv.Itoa(os.Getpid())
	var refStr string
	if registry != "" {
		refStr = registry + "/" + repo
		ref, err := image.ParseReference(refStr, false)
		if err == nil {
			err = image.Push(ref, img)
		}
		if err != nil {
			t.Fatal(err)
		}
	} else {
		refStr = "baton.test/" + repo
		ref, err := image.ParseReference(refStr, false)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := image.WriteArchive(&buf, ref, img); err != nil {
			t.Fatal(err)
		}
		if _, err := Import(context.Background(), ImportConfig{Socket: socket, Namespace: testNS}, &buf); err != nil {
			t.Fatal(err)
		}
	}
	testRefs[name] = refStr
	return refStr
}

func helloImage(t testing.TB) string { return testImage(t, "hello") }

var netSeq struct {
	sync.Mutex
	n int
}

// testConfig is a runtime of this test binary's namespace, with a bridge,
// subnet and state directory of its own.
func testConfig(t testing.TB) Config {
	netSeq.Lock()
	netSeq.n++
	n := netSeq.n
	netSeq.Unlock()
	return Config{
		Socket:    socket,
		Namespace: testNS,
		WorkerID:  "test-worker",
		StateDir:  t.TempDir(),
		Bridge:    fmt.Sprintf("bct%d-%d", os.Getpid()%100000, n%100),
		Subnet:    fmt.Sprintf("10.%d.%d.0/24", 100+os.Getpid()%50, n%250),
		NetPool:   4,
	}
}

func newRuntime(t testing.TB, cfg Config) *Runtime {
	t.Helper()
	needContainerd(t)
	if os.Getenv("BATON_TEST_LOG") != "" {
		cfg.Logger = slogDebug()
	}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := rt.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		// After the test's last connection to a sandbox address: without
		// the bridge they would follow the default route.
		if err := netpool.RemoveBridge(cfg.Bridge); err != nil {
			t.Errorf("remove bridge: %v", err)
		}
	})
	return rt
}

func helloSpec(t testing.TB, id string) sandbox.Spec {
	return sandbox.Spec{ID: id, Function: "hello", Image: helloImage(t)}
}

// kill crashes a sandbox as if its function died.
func kill(t testing.TB, rt *Runtime, id string) {
	t.Helper()
	rt.mu.Lock()
	b := rt.boxes[id]
	rt.mu.Unlock()
	if b == nil || !b.haveTask {
		t.Fatalf("no sandbox %s to kill", id)
	}
	if _, err := rt.client.TaskService().Kill(rt.ctx, &tasks.KillRequest{ContainerID: b.cid, Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatalf("kill sandbox %s: %v", id, err)
	}
}

func TestConformance(t *testing.T) {
	needContainerd(t)
	helloImage(t)
	sandboxtest.Run(t, sandboxtest.Harness{
		New: func(t *testing.T, onExit sandbox.ExitFunc) sandbox.Runtime {
			cfg := testConfig(t)
			cfg.OnExit = onExit
			return newRuntime(t, cfg)
		},
		Spec:    func(t *testing.T, id string) sandbox.Spec { return helloSpec(t, id) },
		Invalid: sandbox.Spec{Function: "bad", Image: "Not A Valid Reference!"},
		Kill: func(t *testing.T, rt sandbox.Runtime, id string) {
			kill(t, rt.(*Runtime), id)
		},
	})
}

func get(t testing.TB, addr string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func readTrim(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestIsolation checks the namespaces, the environment, the address and
// the cgroup limits of a sandbox.
func TestIsolation(t *testing.T) {
	rt := newRuntime(t, testConfig(t))
	spec := helloSpec(t, "iso-1")
	spec.Env = map[string]string{"FUNCTION": "iso", "PORT": "1"}
	spec.CPUMillicores = 250
	spec.MemoryMiB = 64
	sb, err := rt.Create(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if body, want := get(t, sb.Address), "Hello from Baton! (function iso, sandbox iso-1)\n"; body != want {
		t.Errorf("body %q, want %q", body, want)
	}
	if want := rt.pool.Gateway().String(); !strings.HasPrefix(sb.Address, strings.TrimSuffix(want, ".1")) || !strings.HasSuffix(sb.Address, ":8080") {
		t.Errorf("address %s: want the subnet of %s and port 8080 (PORT from the spec must not win)", sb.Address, want)
	}
	b := rt.boxes[sb.ID]
	tr, err := rt.client.TaskService().Get(rt.ctx, &tasks.GetRequest{ContainerID: b.cid})
	if err != nil {
		t.Fatal(err)
	}
	pid := int(tr.Process.Pid)
	for _, ns := range []string{"pid", "mnt", "uts", "ipc", "net"} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err1 != nil || err2 != nil {
			t.Fatalf("read namespaces: %v %v", err1, err2)
		}
		if mine == its {
			t.Errorf("%s namespace shared with the host", ns)
		}
	}
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	envs := strings.Split(strings.TrimRight(string(environ), "\x00"), "\x00")
	want := []string{"FUNCTION=iso", "HOME=/", "PATH=" + sandbox.DefaultPath, "PORT=8080"}
	if fmt.Sprint(envs) != fmt.Sprint(want) {
		t.Errorf("environment %q, want %q", envs, want)
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err == nil { // cgroup v1
		dir := filepath.Join("/", testNS, "iso-1")
		for file, want := range map[string]string{
			"cpu" + dir + "/cpu.cfs_quota_us":         "25000",
			"cpu" + dir + "/cpu.shares":               "256",
			"memory" + dir + "/memory.limit_in_bytes": strconv.Itoa(64 << 20),
		} {
			if got := readTrim(t, filepath.Join("/sys/fs/cgroup", file)); got != want {
				t.Errorf("%s = %s, want %s", file, got, want)
			}
		}
	}
	if err := rt.Delete(t.Context(), sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.slot.Path); err == nil && rt.pool.Stats().Ready == 0 {
		t.Errorf("namespace %s neither recycled nor removed", b.slot.Path)
	}
}

// TestBadImages: what cannot run is refused with a reason, and leaves
// nothing behind.
func TestBadImages(t *testing.T) {
	hello := helloImage(t)
	rt := newRuntime(t, testConfig(t))
	missing := "127.0.0.1:1/nothing/here:1"
	if registry != "" {
		missing = registry + "/baton-test/no-such-image:1"
	}
	tests := []struct {
		name  string
		spec  sandbox.Spec
		class error
		want  []string
	}{
		{"unknown image", sandbox.Spec{ID: "bad-1", Image: missing}, nil, []string{missing}},
		{"malformed", sandbox.Spec{ID: "bad-2", Image: "not a reference"}, sandbox.ErrInvalid, []string{"not a reference"}},
		{"binary only", sandbox.Spec{ID: "bad-3", Binary: "/bin/true"}, sandbox.ErrInvalid, []string{"baton image build"}},
		{"bad id", sandbox.Spec{ID: "a/b", Image: hello}, sandbox.ErrInvalid, []string{"a/b"}},
		{"tiny memory", sandbox.Spec{ID: "bad-4", Image: hello, MemoryMiB: 1}, sandbox.ErrInvalid, []string{"6 MiB"}},
	}
	if registry != "" {
		tests[0].class = sandbox.ErrInvalid
		tests[0].want = append(tests[0].want, "not found")
	}
	for _, tc := range tests {
		start := time.Now()
		_, err := rt.Create(t.Context(), tc.spec)
		if err == nil {
			t.Errorf("%s: Create succeeded", tc.name)
			continue
		}
		if tc.class != nil && !errors.Is(err, tc.class) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.class)
		}
		if !errors.Is(err, sandbox.ErrInvalid) && !errors.Is(err, sandbox.ErrNotReady) {
			t.Errorf("%s: %v is neither ErrInvalid nor ErrNotReady", tc.name, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.name, err, w)
			}
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("%s: took %v to fail", tc.name, d)
		}
	}
	if l, _ := rt.List(t.Context()); len(l) != 0 {
		t.Errorf("List = %v after failed creations", l)
	}
	ctx := namespaces.WithNamespace(t.Context(), testNS)
	cs, _ := rt.client.Containers(ctx)
	if len(cs) != 0 {
		t.Errorf("%d containers left after failed creations", len(cs))
	}
}

// TestNotReady: a function that exits, or never listens, is refused with
// its exit status and output, and leaves nothing behind.
func TestNotReady(t *testing.T) {
	fn := testImage(t, "fn")
	cfg := testConfig(t)
	cfg.ReadyTimeout = 500 * time.Millisecond
	rt := newRuntime(t, cfg)
	tests := []struct {
		mode string
		want []string
	}{
		{"exit", []string{"exit status 3", "boom: no config", "fn: starting"}},
		{"sleep", []string{"no answer", "500ms", "waiting forever"}},
	}
	for i, tc := range tests {
		start := time.Now()
		_, err := rt.Create(t.Context(), sandbox.Spec{ID: fmt.Sprintf("nr-%d", i), Function: "nr", Image: fn,
			Env: map[string]string{"MODE": tc.mode}})
		if !errors.Is(err, sandbox.ErrNotReady) {
			t.Errorf("%s: err %v, want ErrNotReady", tc.mode, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.mode, err, w)
			}
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: took %v to fail", tc.mode, d)
		}
	}
	if l, _ := rt.List(t.Context()); len(l) != 0 {
		t.Errorf("List = %v after failed creations", l)
	}
	if c, tasks, snaps := containerdObjects(t, rt); c+tasks+snaps != 0 {
		t.Errorf("left in containerd: %d containers, %d tasks, %d snapshots", c, tasks, snaps)
	}
}

// TestAdoption: a worker that crashed leaves its sandboxes running; the
// next runtime with its id adopts those whose task runs, removes the
// others, and reports and cleans up adopted ones as its own.
func TestAdoption(t *testing.T) {
	helloImage(t)
	cfg := testConfig(t)
	cfg.WorkerID = "adopt-worker"
	cfg.NetPool = 2
	needContainerd(t)
	rt1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() { // whatever rt2 did not adopt and delete
			rt3, err := New(cfg)
			if err == nil {
				rt3.Close(context.Background())
			}
		}
	}()
	var sbs []sandbox.Sandbox
	for i := range 3 {
		spec := helloSpec(t, fmt.Sprintf("adopt-%d", i))
		spec.Function = fmt.Sprintf("fn-%d", i)
		spec.Generation = uint64(i + 1)
		spec.CPUMillicores = 100
		spec.MemoryMiB = 32
		sb, err := rt1.Create(t.Context(), spec)
		if err != nil {
			t.Fatal(err)
		}
		sbs = append(sbs, sb)
	}
	// adopt-2 dies while nobody watches.
	rt1.abandon()
	client, err := containerd.New(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(t.Context(), testNS)
	_, err = client.TaskService().Kill(ctx, &tasks.KillRequest{ContainerID: "adopt-2", Signal: uint32(syscall.SIGKILL)})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)

	exits := make(chan sandbox.Exit, 10)
	cfg.OnExit = func(e sandbox.Exit) { exits <- e }
	rt2 := newRuntime(t, cfg)
	l, err := rt2.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 2 || l[0].ID != "adopt-0" || l[1].ID != "adopt-1" {
		t.Fatalf("adopted %+v, want adopt-0 and adopt-1", l)
	}
	for i, sb := range l {
		w := sbs[i]
		if sb.Function != w.Function || sb.Generation != w.Generation || sb.Address != w.Address ||
			sb.CPUMillicores != w.CPUMillicores || sb.MemoryMiB != w.MemoryMiB {
			t.Errorf("adopted %+v, created %+v", sb, w)
		}
		if body := get(t, sb.Address); !strings.Contains(body, sb.ID) {
			t.Errorf("adopted %s answers %q", sb.ID, body)
		}
	}
	if _, err := rt2.client.LoadContainer(ctx, "adopt-2"); err == nil {
		t.Error("the dead sandbox's container is still there")
	}
	// New sandboxes do not get adopted addresses.
	sb, err := rt2.Create(t.Context(), helloSpec(t, "adopt-new"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range l {
		if a.Address == sb.Address {
			t.Fatalf("new sandbox got the adopted address %s", sb.Address)
		}
	}
	// An adopted sandbox that exits is reported; one deleted is gone.
	kill(t, rt2, "adopt-0")
	select {
	case e := <-exits:
		if e.ID != "adopt-0" {
			t.Errorf("exit %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit reported for an adopted sandbox")
	}
	if err := rt2.Delete(t.Context(), "adopt-1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"adopt-0", "adopt-1"} {
		if _, err := rt2.client.LoadContainer(ctx, id); err == nil {
			t.Errorf("container %s still there", id)
		}
	}
}

// TestImport loads an archive made by image.WriteArchive and runs it.
func TestImport(t *testing.T) {
	needContainerd(t)
	bin, err := sandboxtest.BuildExample(buildDir, "hello")
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Build(image.BuildOptions{Binary: bin, Env: []string{"FUNCTION=imported"}})
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := image.ParseReference("baton.test/imported/hello:1", false)
	path := filepath.Join(t.TempDir(), "hello.tar")
	if err := image.WriteArchiveFile(path, ref, img); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names, err := Import(t.Context(), ImportConfig{Socket: socket, Namespace: testNS}, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "baton.test/imported/hello:1" {
		t.Fatalf("imported %v", names)
	}
	rt := newRuntime(t, testConfig(t))
	sb, err := rt.Create(t.Context(), sandbox.Spec{ID: "imp-1", Function: "x", Image: names[0]})
	if err != nil {
		t.Fatal(err)
	}
	if body := get(t, sb.Address); !strings.Contains(body, "function imported") {
		t.Errorf("body %q", body)
	}
}

// containerdObjects counts what the test namespace holds in containerd.
func containerdObjects(t testing.TB, rt *Runtime) (containers, tasks, snaps int) {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), testNS)
	cs, err := rt.client.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if _, err := c.Task(ctx, nil); err == nil {
			tasks++
		}
	}
	rt.client.SnapshotService(rt.cfg.Snapshotter).Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Kind == snapshots.KindActive {
			snaps++
		}
		return nil
	})
	return len(cs), tasks, snaps
}

func slogDebug() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// removeNamespace deletes the images of a containerd namespace and, once
// the garbage collector has removed their content, the namespace.
func removeNamespace(socket, ns string) {
	client, err := containerd.New(socket)
	if err != nil {
		return
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	imgs, _ := client.ImageService().List(ctx)
	for _, i := range imgs {
		client.ImageService().Delete(ctx, i.Name, ctrimages.SynchronousDelete())
	}
	for range 50 {
		if client.NamespaceService().Delete(ctx, ns) == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hostCounts is what sandboxes could leak on the host and in containerd.
type hostCounts struct {
	Netns, Links, Addrs, Mounts, Cgroups, Logs  int
	Containers, Tasks, Snapshots, Shims, Leases int
}

// grew names the counts that are higher in c than in before: what was left
// behind. Machine-wide counts (namespaces, links, addresses, mounts, shims)
// may also fall meanwhile, when something else on the machine cleans up;
// that is not a leak of ours.
func (c hostCounts) grew(before hostCounts) []string {
	a, b := reflect.ValueOf(c), reflect.ValueOf(before)
	var out []string
	for i := range a.NumField() {
		if a.Field(i).Int() > b.Field(i).Int() {
			out = append(out, fmt.Sprintf("%s %d -> %d", a.Type().Field(i).Name, b.Field(i).Int(), a.Field(i).Int()))
		}
	}
	return out
}

func countHost(t testing.TB, rt *Runtime, cfg Config) hostCounts {
	t.Helper()
	var c hostCounts
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if line == "" {
			continue
		}
		c.Mounts++
		if strings.Contains(line, " nsfs ") {
			c.Netns++
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	c.Links = len(links)
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	c.Addrs = len(addrs)
	cg, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", testNS, "*"))
	for _, d := range cg {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			c.Cgroups++
		}
	}
	logs, _ := os.ReadDir(filepath.Join(cfg.StateDir, "logs"))
	c.Logs = len(logs)
	c.Containers, c.Tasks, c.Snapshots = containerdObjects(t, rt)
	ctx := namespaces.WithNamespace(context.Background(), testNS)
	ls, _ := rt.client.LeasesService().List(ctx)
	c.Leases = len(ls)
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && strings.HasSuffix(exe, "/containerd-shim-runc-v2") {
			c.Shims++
		}
	}
	return c
}

// TestLeak runs create/delete cycles (BATON_LEAK_CYCLES, default 1000; 4
// at a time) and checks that nothing is left: network namespaces, links,
// addresses, mounts, cgroups, output files, and containers, tasks,
// snapshots and leases in containerd, and shims.
func TestLeak(t *testing.T) {
	img := helloImage(t)
	cycles := 1000
	if v := os.Getenv("BATON_LEAK_CYCLES"); v != "" {
		var err error
		if cycles, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testConfig(t)
	cfg.NetPool = 8
	// A first runtime makes the bridge (which Close keeps) and the
	// namespace's parent cgroups.
	rt0 := newRuntime(t, cfg)
	if _, err := rt0.Create(t.Context(), sandbox.Spec{ID: "leak-warm", Image: img}); err != nil {
		t.Fatal(err)
	}
	if err := rt0.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	client, err := containerd.New(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	counter := &Runtime{client: client, cfg: cfg}
	counter.cfg.Snapshotter = DefaultSnapshotter
	before := countHost(t, counter, cfg)
	rt := newRuntime(t, cfg)
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(cycles) || t.Failed() {
					return
				}
				id := fmt.Sprintf("leak-%d", i)
				spec := sandbox.Spec{ID: id, Function: "leak", Image: img, CPUMillicores: 100, MemoryMiB: 32}
				if _, err := rt.Create(t.Context(), spec); err != nil {
					t.Errorf("cycle %d: %v", i, err)
					return
				}
				if err := rt.Delete(t.Context(), id); err != nil {
					t.Errorf("cycle %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	t.Logf("%d create/delete cycles in %v (%.1f/s, 4 at a time)", cycles, el.Round(time.Millisecond), float64(cycles)/el.Seconds())
	st := rt.pool.Stats()
	if st.InUse != 0 {
		t.Errorf("%d network namespaces still in use", st.InUse)
	}
	// Recycled namespaces wait in the pool; Close destroys them.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := rt.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var after hostCounts
	deadline := time.Now().Add(10 * time.Second)
	for {
		after = countHost(t, counter, cfg)
		if len(after.grew(before)) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("before: %+v", before)
	t.Logf("after:  %+v", after)
	if grew := after.grew(before); len(grew) > 0 {
		t.Errorf("left behind after %d cycles: %s", cycles, strings.Join(grew, ", "))
	}
}

// TestOddIDs: sandbox ids containerd would refuse as container ids (a
// function name with "--", say) still work.
func TestOddIDs(t *testing.T) {
	for _, id := range []string{"fn--x-0a1b", "a_b.c", "ok-id"} {
		if err := identifiers.Validate(containerID(id)); err != nil {
			t.Errorf("containerID(%q) = %q: %v", id, containerID(id), err)
		}
	}
	if containerID("ok-id") != "ok-id" || containerID("a--b") == containerID("a-b") {
		t.Errorf("containerID: ok-id -> %s, a--b -> %s, a-b -> %s", containerID("ok-id"), containerID("a--b"), containerID("a-b"))
	}
	rt := newRuntime(t, testConfig(t))
	sb, err := rt.Create(t.Context(), sandbox.Spec{ID: "odd--fn-1", Function: "odd--fn", Image: helloImage(t)})
	if err != nil {
		t.Fatal(err)
	}
	if body := get(t, sb.Address); !strings.Contains(body, "Hello") {
		t.Errorf("body %q", body)
	}
	if l, _ := rt.List(t.Context()); len(l) != 1 || l[0].ID != "odd--fn-1" {
		t.Errorf("List = %+v", l)
	}
	if err := rt.Delete(t.Context(), "odd--fn-1"); err != nil {
		t.Fatal(err)
	}
	if c, tasks, snaps := containerdObjects(t, rt); c+tasks+snaps != 0 {
		t.Errorf("left in containerd: %d containers, %d tasks, %d snapshots", c, tasks, snaps)
	}
}

// htpasswdLine is user "baton", password "baton-pass" (bcrypt, cost 4).
const htpasswdLine = "baton:$2a$04$TF3rZQIw3D7nnVLlWsqRDOA.NR7y4E1AXcq3SZkJuop16m3rPBDqe\n"

// TestRegistryCredentials runs a second registry (Debian's docker-registry)
// that wants a password: the image is pushed with the credentials of a
// Docker config, a runtime without them is refused (ErrInvalid, 401), and
// one given the config pulls and runs the image.
func TestRegistryCredentials(t *testing.T) {
	needContainerd(t)
	regBin, err := exec.LookPath("docker-registry")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("docker-registry is not installed (scripts/containerd.sh install), and CI=true forbids skipping")
		}
		t.Skip("skipped: needs docker-registry (apt-get install docker-registry)")
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(htpasswdLine), 0o600)
	os.WriteFile(filepath.Join(dir, "registry.yml"), []byte(fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: %s/data}}
http: {addr: %s}
auth: {htpasswd: {realm: baton-test, path: %s/htpasswd}}
`, dir, addr, dir)), 0o600)
	reg := exec.Command(regBin, "serve", filepath.Join(dir, "registry.yml"))
	var regOut bytes.Buffer
	reg.Stdout, reg.Stderr = &regOut, &regOut
	if err := reg.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		reg.Process.Kill()
		reg.Wait()
		if t.Failed() {
			t.Logf("registry output:\n%s", regOut.String())
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry on %s does not answer", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}

	withCreds := filepath.Join(dir, "docker")
	os.MkdirAll(withCreds, 0o700)
	os.WriteFile(filepath.Join(withCreds, "config.json"),
		[]byte(fmt.Sprintf(`{"auths": {%q: {"username": "baton", "password": "baton-pass"}}}`, addr)), 0o600)
	noCreds := filepath.Join(dir, "empty.json")
	os.WriteFile(noCreds, []byte(`{"auths": {}}`), 0o600)
	t.Setenv("DOCKER_CONFIG", withCreds) // image.Push's keychain

	bin, err := sandboxtest.BuildExample(buildDir, "hello")
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Build(image.BuildOptions{Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	refStr := addr + "/private/hello:1"
	ref, _ := image.ParseReference(refStr, false)
	if err := image.Push(ref, img); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(t)
	cfg.RegistryConfig = noCreds
	rt := newRuntime(t, cfg)
	_, err = rt.Create(t.Context(), sandbox.Spec{ID: "cred-1", Image: refStr})
	if !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), "authorization") {
		t.Errorf("without credentials: %v, want ErrInvalid saying authorization failed", err)
	}
	cfg = testConfig(t)
	cfg.RegistryConfig = filepath.Join(withCreds, "config.json")
	rt = newRuntime(t, cfg)
	sb, err := rt.Create(t.Context(), sandbox.Spec{ID: "cred-2", Image: refStr})
	if err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	if body := get(t, sb.Address); !strings.Contains(body, "Hello") {
		t.Errorf("body %q", body)
	}
}

func TestHostCountsGrew(t *testing.T) {
	before := hostCounts{Netns: 2, Shims: 1, Mounts: 7}
	after := hostCounts{Netns: 1, Shims: 2, Mounts: 7}
	if got := after.grew(before); len(got) != 1 || got[0] != "Shims 1 -> 2" {
		t.Errorf("grew = %q, want [Shims 1 -> 2]", got)
	}
	if got := before.grew(before); len(got) != 0 {
		t.Errorf("nothing changed, grew = %q", got)
	}
}
