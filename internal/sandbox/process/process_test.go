package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/process/sandboxinit"
	"github.com/batonfaas/baton/internal/sandbox/sandboxtest"
)

// hello is examples/hello, built once by TestMain.
var hello string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips (or, under CI, fails) in needRoot
	}
	dir, err := os.MkdirTemp("", "baton-process-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	hello, err = sandboxtest.BuildExample(dir, "hello")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needRoot skips a test that needs root, unless under CI, where it fails.
func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("the process runtime needs root (namespaces, cgroups) and CI=true: run the tests as root")
	}
	tb.Skip("the process runtime needs root (namespaces, cgroups): skipped; run as root to test it")
}

var runtimes atomic.Int64

// testCgroupParent is a cgroup parent of the test binary's own, removed by
// Close.
func testCgroupParent() string {
	return fmt.Sprintf("baton-test-%d/rt-%d", os.Getpid(), runtimes.Add(1))
}

func newRuntime(tb testing.TB, cfg Config) *Runtime {
	tb.Helper()
	needRoot(tb)
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = testCgroupParent()
	}
	rt, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := rt.Close(ctx); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return rt
}

func helloSpec(id string) sandbox.Spec {
	return sandbox.Spec{ID: id, Function: "hello", Binary: hello}
}

// kill crashes a sandbox as if its function died.
func kill(t *testing.T, rt *Runtime, id string) {
	t.Helper()
	rt.mu.Lock()
	b := rt.boxes[id]
	rt.mu.Unlock()
	if b == nil {
		t.Fatalf("no sandbox %s to kill", id)
	}
	if err := b.proc.Kill(); err != nil {
		t.Fatalf("kill sandbox %s: %v", id, err)
	}
}

func TestConformance(t *testing.T) {
	needRoot(t)
	sandboxtest.Run(t, sandboxtest.Harness{
		New: func(t *testing.T, onExit sandbox.ExitFunc) sandbox.Runtime {
			return newRuntime(t, Config{OnExit: onExit})
		},
		Spec:    func(t *testing.T, id string) sandbox.Spec { return helloSpec(id) },
		Invalid: sandbox.Spec{Function: "missing", Binary: "/nonexistent/baton/function"},
		Kill: func(t *testing.T, rt sandbox.Runtime, id string) {
			kill(t, rt.(*Runtime), id)
		},
	})
}

func get(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestIsolation checks the namespaces, the hostname, the environment and
// the cgroup limits of a sandbox.
func TestIsolation(t *testing.T) {
	rt := newRuntime(t, Config{})
	spec := helloSpec("iso-1")
	spec.Env = map[string]string{"FUNCTION": "iso", "PORT": "1"}
	spec.Args = []string{"-flag", "two words"}
	spec.CPUMillicores = 250
	spec.MemoryMiB = 64
	sb, err := rt.Create(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if body, want := get(t, sb.Address), "Hello from Baton! (function iso, sandbox iso-1)\n"; body != want {
		t.Errorf("body %q, want %q", body, want)
	}
	if !strings.HasPrefix(sb.Address, "127.0.0.1:") || strings.HasSuffix(sb.Address, ":1") {
		t.Errorf("address %s: want 127.0.0.1 and a port of the runtime's (PORT from the spec must not win)", sb.Address)
	}
	b := rt.boxes[sb.ID]
	pid := b.proc.Pid
	for _, ns := range []string{"pid", "mnt", "uts", "ipc", "net"} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err1 != nil || err2 != nil {
			t.Fatalf("read namespaces: %v %v", err1, err2)
		}
		if same := mine == its; same != (ns == "net") {
			t.Errorf("%s namespace shared with the host: %v, want %v", ns, same, ns == "net")
		}
	}
	// The function is PID 1 of its namespace and sees only its own /proc.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "\nNSpid:\t"+strconv.Itoa(pid)+"\t1\n") {
		t.Errorf("sandbox is not PID 1 of its namespace:\n%s", status)
	}
	// Its /proc is its own, and shows it as PID 1 with its arguments.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/proc/1/cmdline", pid))
	if want := hello + "\x00-flag\x00two words\x00"; err != nil || string(cmdline) != want {
		t.Errorf("its /proc/1/cmdline = %q (%v), want %q", cmdline, err, want)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/proc/%d", pid, os.Getpid())); err == nil {
		t.Errorf("the sandbox's /proc shows the host's processes")
	}
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	envs := strings.Split(strings.TrimRight(string(environ), "\x00"), "\x00")
	port := sb.Address[strings.LastIndexByte(sb.Address, ':')+1:]
	want := []string{"FUNCTION=iso", "PATH=" + sandbox.DefaultPath, "PORT=" + port}
	if fmt.Sprint(envs) != fmt.Sprint(want) {
		t.Errorf("environment %q, want %q", envs, want)
	}
	cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if cwd != filepath.Dir(hello) {
		t.Errorf("cwd %s, want %s", cwd, filepath.Dir(hello))
	}
	for _, dir := range b.cg.dirs {
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if strings.TrimSpace(string(procs)) != strconv.Itoa(pid) {
			t.Errorf("%s has %q, want the sandbox's pid %d", dir, procs, pid)
		}
	}
	if !rt.cg.v2 {
		for file, want := range map[string]string{
			"cpu/" + rt.cfg.CgroupParent + "/iso-1/cpu.cfs_quota_us":         "25000",
			"cpu/" + rt.cfg.CgroupParent + "/iso-1/cpu.shares":               "256",
			"memory/" + rt.cfg.CgroupParent + "/iso-1/memory.limit_in_bytes": strconv.Itoa(64 << 20),
		} {
			if got := readTrim(t, filepath.Join(cgroupMount, file)); got != want {
				t.Errorf("%s = %s, want %s", file, got, want)
			}
		}
	}
	dirs := append([]string(nil), b.cg.dirs...)
	if err := rt.Delete(t.Context(), sb.ID); err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s still there after Delete (%v)", dir, err)
		}
	}
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// script writes an executable shell script into a temporary directory.
func script(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fn.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTreeKilled checks that Delete kills the function's children too.
func TestTreeKilled(t *testing.T) {
	rt := newRuntime(t, Config{})
	fn := script(t, "sleep 1000 &\nsleep 1000 &\nexec "+hello)
	sb, err := rt.Create(t.Context(), sandbox.Spec{ID: "tree-1", Function: "tree", Binary: fn})
	if err != nil {
		t.Fatal(err)
	}
	pids, err := rt.boxes[sb.ID].cg.pids()
	if err != nil || len(pids) != 3 {
		t.Fatalf("cgroup has pids %v (%v), want the function and two children", pids, err)
	}
	if err := rt.Delete(t.Context(), sb.ID); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d of the sandbox still exists after Delete (kill 0: %v)", pid, err)
		}
	}
}

func TestInvalidSpecs(t *testing.T) {
	rt := newRuntime(t, Config{ImageMap: map[string]string{"docker.io/library/hello:latest": hello}})
	notExec := filepath.Join(t.TempDir(), "notexec")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		spec sandbox.Spec
		want []string // in the error text
	}{
		{"missing binary", sandbox.Spec{ID: "a", Binary: "/no/such/fn"}, []string{"/no/such/fn"}},
		{"not executable", sandbox.Spec{ID: "a", Binary: notExec}, []string{notExec, "not executable"}},
		{"directory", sandbox.Spec{ID: "a", Binary: "/tmp"}, []string{"/tmp", "not a regular file"}},
		{"relative", sandbox.Spec{ID: "a", Binary: "fn"}, []string{`"fn"`, "absolute"}},
		{"nothing to run", sandbox.Spec{ID: "a"}, []string{"neither a binary nor an image"}},
		{"unknown image", sandbox.Spec{ID: "a", Image: "ghcr.io/x/y:1"}, []string{"ghcr.io/x/y:1", "--image-map"}},
		{"bad id", sandbox.Spec{ID: "a/b", Binary: hello}, []string{"a/b"}},
		{"empty id", sandbox.Spec{Binary: hello}, []string{"empty sandbox id"}},
		{"negative cpu", sandbox.Spec{ID: "a", Binary: hello, CPUMillicores: -1}, []string{"negative"}},
	}
	for _, tc := range tests {
		_, err := rt.Create(t.Context(), tc.spec)
		if !errors.Is(err, sandbox.ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.name, err, w)
			}
		}
	}
	// A mapped image runs its executable.
	sb, err := rt.Create(t.Context(), sandbox.Spec{ID: "img", Function: "img", Image: "docker.io/library/hello:latest"})
	if err != nil {
		t.Fatal(err)
	}
	if body := get(t, sb.Address); !strings.Contains(body, "Hello from Baton!") {
		t.Errorf("image sandbox answered %q", body)
	}
}

// TestNotReady checks the reasons given for sandboxes that never answer,
// and that they leave nothing behind.
func TestNotReady(t *testing.T) {
	rt := newRuntime(t, Config{ReadyTimeout: 300 * time.Millisecond})
	tests := []struct {
		name   string
		script string
		want   []string
	}{
		{"exits", "#!/bin/sh\necho starting; echo 'boom: no config' >&2; exit 3\n", []string{"exit status 3", "boom: no config", "starting"}},
		{"never listens", "#!/bin/sh\necho waiting forever; exec sleep 1000\n", []string{"no answer", "300ms", "waiting forever"}},
		{"bad interpreter", "#!/no/such/interpreter\n", []string{sandboxinit.Arg0, "exec ", "no such file"}},
	}
	for i, tc := range tests {
		fn := filepath.Join(t.TempDir(), "fn")
		if err := os.WriteFile(fn, []byte(tc.script), 0o755); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := rt.Create(t.Context(), sandbox.Spec{ID: fmt.Sprintf("nr-%d", i), Function: "nr", Binary: fn})
		if !errors.Is(err, sandbox.ErrNotReady) {
			t.Errorf("%s: err %v, want ErrNotReady", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.name, err, w)
			}
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: took %v to fail", tc.name, d)
		}
	}
	if l, _ := rt.List(t.Context()); len(l) != 0 {
		t.Errorf("List = %v after failed creations", l)
	}
	rt.mu.Lock()
	n := len(rt.boxes)
	rt.mu.Unlock()
	if n != 0 {
		t.Errorf("%d boxes kept after failed creations", n)
	}
	for _, h := range rt.cg.hierarchies {
		entries, _ := os.ReadDir(filepath.Join(h.dir, rt.cfg.CgroupParent))
		for _, e := range entries {
			if e.IsDir() {
				t.Errorf("cgroup %s left in %s", e.Name(), h.dir)
			}
		}
	}
}

// TestPorts checks that ports in use are skipped, that the range can run
// out, and that Delete frees a port.
func TestPorts(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	p := busy.Addr().(*net.TCPAddr).Port
	lo := p - 1
	if p == 65535 {
		lo = p - 2
	}
	// Range [lo, lo+2] minus the busy port leaves two (assuming the
	// neighbours are free, which bindable checks too).
	rt := newRuntime(t, Config{PortMin: lo, PortMax: lo + 2})
	var got []sandbox.Sandbox
	for i := 0; ; i++ {
		sb, err := rt.Create(t.Context(), helloSpec(fmt.Sprintf("port-%d", i)))
		if err != nil {
			if !strings.Contains(err.Error(), "no free port") {
				t.Fatalf("create %d: %v, want no free port", i, err)
			}
			break
		}
		if sb.Address == busy.Addr().String() {
			t.Fatalf("sandbox got the busy port %s", sb.Address)
		}
		got = append(got, sb)
	}
	if len(got) == 0 || len(got) > 2 {
		t.Fatalf("got %d sandboxes from a range of two free ports", len(got))
	}
	if err := rt.Delete(t.Context(), got[0].ID); err != nil {
		t.Fatal(err)
	}
	sb, err := rt.Create(t.Context(), helloSpec("port-again"))
	if err != nil {
		t.Fatalf("create after Delete freed a port: %v", err)
	}
	if sb.Address != got[0].Address {
		t.Errorf("got %s, want the freed %s", sb.Address, got[0].Address)
	}
}

// TestLeftoverCgroups checks that New removes the empty groups a previous
// run left, and Close the parent.
func TestLeftoverCgroups(t *testing.T) {
	needRoot(t)
	parent := testCgroupParent()
	cg, err := detectCgroups(cgroupMount, parent)
	if err != nil {
		t.Fatal(err)
	}
	if err := cg.ensureParent(); err != nil {
		t.Fatal(err)
	}
	old, err := cg.create("old-sandbox", 100, 10)
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t, Config{CgroupParent: parent})
	for _, dir := range old.dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s not removed by New (%v)", dir, err)
		}
	}
	if err := rt.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, h := range cg.hierarchies {
		if _, err := os.Stat(filepath.Join(h.dir, parent)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("parent %s not removed by Close (%v)", filepath.Join(h.dir, parent), err)
		}
	}
}

// TestDeleteWhileCreating checks that Delete cancels a Create in progress.
func TestDeleteWhileCreating(t *testing.T) {
	rt := newRuntime(t, Config{})
	fn := script(t, "exec sleep 1000")
	done := make(chan error, 1)
	go func() {
		_, err := rt.Create(context.Background(), sandbox.Spec{ID: "slow", Function: "slow", Binary: fn})
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rt.mu.Lock()
		b := rt.boxes["slow"]
		rt.mu.Unlock()
		if b != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Create did not start")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if err := rt.Delete(t.Context(), "slow"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Create = %v, want cancelled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Create still running 5s after Delete")
	}
}

func TestNewChecks(t *testing.T) {
	needRoot(t)
	for _, cfg := range []Config{
		{Host: "localhost"},
		{PortMin: 40000, PortMax: 30000},
		{CgroupParent: "/abs"},
		{CgroupParent: "../up"},
	} {
		if rt, err := New(cfg); err == nil {
			rt.Close(context.Background())
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// BenchmarkCreateDelete measures one examples/hello sandbox from Create
// until its port answers, and its Delete.
func BenchmarkCreateDelete(b *testing.B) {
	rt := newRuntime(b, Config{})
	ctx := context.Background()
	var create time.Duration
	n := 0
	for b.Loop() {
		n++
		id := "bench-" + strconv.Itoa(n)
		start := time.Now()
		if _, err := rt.Create(ctx, helloSpec(id)); err != nil {
			b.Fatal(err)
		}
		create += time.Since(start)
		if err := rt.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(n), "ms/op")
	b.ReportMetric(float64(create.Microseconds())/1000/float64(n), "create-ms/op")
}

// TestSurvivesThreadExit checks that a sandbox outlives the OS thread of
// the goroutine that created it (Pdeathsig follows threads, not processes).
func TestSurvivesThreadExit(t *testing.T) {
	rt := newRuntime(t, Config{OnExit: func(e sandbox.Exit) { t.Errorf("sandbox exited: %+v", e) }})
	type result struct {
		sb  sandbox.Sandbox
		err error
	}
	done := make(chan result, 1)
	create := func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		sb, err := rt.Create(context.Background(), helloSpec("thread-1"))
		done <- result{sb, err}
	}
	go func() {
		runtime.LockOSThread()
		if syscall.Gettid() != os.Getpid() {
			create()
			return
		}
		// The main thread is never ended: create from another one, which
		// it cannot be while this goroutine holds it.
		go create()
		time.Sleep(time.Second)
		runtime.UnlockOSThread()
	}()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	time.Sleep(100 * time.Millisecond) // the thread has exited by now
	if body := get(t, res.sb.Address); !strings.Contains(body, "thread-1") {
		t.Errorf("body %q", body)
	}
	if err := rt.Delete(t.Context(), "thread-1"); err != nil {
		t.Fatal(err)
	}
}
