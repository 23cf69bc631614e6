package chaos

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/cpclient"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chaos tests need root (process sandboxes, network namespaces), and CI=true forbids skipping them")
	}
	t.Skip("skipped: chaos tests need root (run as root, or CI=true to make this a failure)")
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func bin(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "baton-chaos-bin-")
		if buildErr != nil {
			return
		}
		for out, pkg := range map[string]string{"baton": "../../cmd/baton", "hello": "../../examples/hello",
			"workload": "../../examples/workload"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, out), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, name)
}

// workerIDs are the worker ids the tests use; their cgroups are removed at
// the end.
var workerIDs = []string{"chaos-w1", "chaos-w2", "chaos-k1", "chaos-k2", "chaos-host", "chaos-netns"}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, id := range workerIDs {
		removeCgroups(id)
	}
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is one baton daemon running as its own process.
type proc struct {
	name string
	wrap []string // a command and its arguments that run baton (nsenter), or none
	args []string
	tmp  string // its $TMPDIR, removed with the test: a killed worker leaves files there
	cmd  *exec.Cmd
	done chan struct{}
	logs *tailBuffer // its last log lines, printed when a test fails
}

// tailBuffer keeps the last lines written to it.
type tailBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		b.lines = append(b.lines, l)
	}
	if len(b.lines) > 60 {
		b.lines = b.lines[len(b.lines)-60:]
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

// chaosPorts is the chaos tests' own port range for process sandboxes:
// go test runs packages in parallel, and other packages' process runtimes
// use the default range on the same machine.
const chaosPorts = "20000-24999"

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startWrapped(t, nil, name, args...)
}

// startWrapped is start with baton run by the command wrap (with its
// arguments), as in nsenter --net=PATH baton worker ….
func startWrapped(t *testing.T, wrap []string, name string, args ...string) *proc {
	t.Helper()
	if len(args) > 0 && args[0] == "worker" {
		args = append(args, "--port-range", chaosPorts)
	}
	// The test's temporary directory is removed after the process is
	// killed (cleanups run last first).
	p := &proc{name: name, wrap: wrap, args: args, tmp: t.TempDir(), logs: &tailBuffer{}}
	p.start(t)
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("last log lines of %s:\n%s", p.name, p.logs)
		}
	})
	return p
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	argv := slices.Concat(p.wrap, []string{bin(t, "baton")}, p.args)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	if len(p.wrap) == 0 {
		p.cmd.Args[0] = "baton-" + p.name // visible in ps
	}
	p.cmd.Env = append(os.Environ(), "TMPDIR="+p.tmp)
	p.cmd.Stderr = p.logs
	if os.Getenv("BATON_TEST_LOG") != "" {
		p.cmd.Stderr = io.MultiWriter(p.logs, prefixWriter{p.name, os.Stderr})
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func() { p.cmd.Wait(); close(p.done) }()
}

func (p *proc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Kill()
		<-p.done
	}
}

// stop sends SIGTERM and waits for the exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not stop within 20s of SIGTERM", p.name)
	}
}

type prefixWriter struct {
	name string
	w    io.Writer
}

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		fmt.Fprintf(p.w, "[%s] %s\n", p.name, l)
	}
	return len(b), nil
}

// replicas is a replicated control plane of n processes.
type replicas struct {
	procs []*proc
	addrs []string
}

func (r *replicas) list() string { return strings.Join(r.addrs, ",") }

func startReplicas(t *testing.T, n int) *replicas {
	t.Helper()
	r := &replicas{}
	var peers []string
	rafts := make([]string, n)
	for i := range n {
		rafts[i] = freeAddr(t)
		peers = append(peers, fmt.Sprintf("cp%d=%s", i, rafts[i]))
		r.addrs = append(r.addrs, freeAddr(t))
	}
	base := t.TempDir()
	for i := range n {
		r.procs = append(r.procs, start(t, fmt.Sprintf("cp%d", i), "controlplane", "--id", fmt.Sprintf("cp%d", i),
			"--listen", r.addrs[i], "--dirigent-listen", "", "--raft-listen", rafts[i], "--raft-peers", strings.Join(peers, ","),
			"--data-dir", filepath.Join(base, fmt.Sprintf("cp%d", i)), "--heartbeat-interval", "200ms", "--heartbeat-timeout", "1s",
			"--autoscale-interval", "500ms", "--log-level", "debug"))
	}
	return r
}

// leader returns the index of the replica that answers as the leader, or -1.
func (r *replicas) leader() int {
	for i, a := range r.addrs {
		select {
		case <-r.procs[i].done:
			continue // exited
		default:
		}
		conn, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err = pb.NewControlPlaneClient(conn).GetStatus(ctx, &pb.GetStatusRequest{})
		cancel()
		conn.Close()
		if err == nil {
			return i
		}
	}
	return -1
}

func (r *replicas) client(t *testing.T) *cpclient.Client {
	t.Helper()
	c, err := cpclient.Dial(r.list())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func deploy(t *testing.T, c *cpclient.Client, spec *pb.FunctionSpec) {
	t.Helper()
	_, err := pb.NewControlPlaneClient(c).DeployFunction(context.Background(), &pb.DeployFunctionRequest{Spec: spec})
	if err != nil {
		t.Fatalf("deploy %s: %v", spec.Name, err)
	}
}

func status(t *testing.T, c *cpclient.Client) *pb.ClusterStatus {
	t.Helper()
	st, err := pb.NewControlPlaneClient(c).GetStatus(context.Background(), &pb.GetStatusRequest{})
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// invoke sends one request for fn to the data plane at dp.
func invoke(dp, fn string) (int, string, error) { return invokeWith(dp, fn, nil) }

// invokeWith is invoke with request headers.
func invokeWith(dp, fn string, h http.Header) (int, string, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+dp+"/", nil)
	req.Host = fn
	maps.Copy(req.Header, h)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return resp.StatusCode, "", fmt.Errorf("%s", strings.TrimSpace(string(b)))
	}
	return resp.StatusCode, resp.Header.Get("X-Baton-Cold-Start"), nil
}

// load sends requests for fn to the data planes in turn, one at a time,
// until stopped, counting successes and failures.
type load struct {
	ok, failed atomic.Int64
	lastErr    atomic.Value
	stop       chan struct{}
	done       chan struct{}
}

func startLoad(dps []string, fn string, every time.Duration) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-time.After(every):
			}
			code, _, err := invoke(dps[i%len(dps)], fn)
			l.record(code, err)
		}
	}()
	return l
}

// startSlowLoad runs clients closed-loop clients, each sending GET requests
// for fn that sleep for d in the function (the workload protocol), so that
// requests are always in flight in the sandboxes.
func startSlowLoad(dp, fn string, clients int, d time.Duration) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{})}
	h := http.Header{"workload": {"sleep"}, "requested_cpu": {fmt.Sprint(d.Milliseconds())}}
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				code, _, err := invokeWith(dp, fn, h)
				l.record(code, err)
			}
		})
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

// record counts one request's outcome.
func (l *load) record(code int, err error) {
	if err != nil || code != 200 {
		l.failed.Add(1)
		l.lastErr.Store(fmt.Sprintf("%d %v", code, err))
	} else {
		l.ok.Add(1)
	}
}

func (l *load) end() (ok, failed int64) {
	close(l.stop)
	<-l.done
	return l.ok.Load(), l.failed.Load()
}

// removeCgroups removes the cgroups a worker with this id left behind when
// it was killed (its sandboxes died with it; their empty groups remain).
func removeCgroups(workerID string) {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/baton/" + workerID) // cgroup v1: one tree per controller
	dirs = append(dirs, "/sys/fs/cgroup/baton/"+workerID)          // v2: the unified tree
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if e.IsDir() {
				os.Remove(filepath.Join(d, e.Name()))
			}
		}
		os.Remove(d)
	}
}
