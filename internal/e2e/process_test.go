package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
)

func fnSpec(t *testing.T, name string) *pb.FunctionSpec {
	return &pb.FunctionSpec{Name: name, Binary: bin(t, "fn"), Env: map[string]string{"GREETING": "hi-" + name},
		CpuMillicores: 100, MemoryMib: 64, Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 60_000}}
}

// Deploy, a cold invocation, a warm one, routing by Host and by path, the
// environment reaching the function, and the data plane's headers.
func TestColdThenWarmAndRouting(t *testing.T) {
	c := startCluster(t, clusterOpts{})
	c.deploy(t, fnSpec(t, "echo"))

	first := c.invoke(t, "echo", "/a/b?x=1")
	first.want(t, 200, "path=/a/b query=x=1 host=echo env=hi-echo")
	if first.cold() != "true" {
		t.Fatalf("first invocation: X-Baton-Cold-Start %q, want true", first.cold())
	}
	st := first.header.Get("Server-Timing")
	for _, part := range []string{"queue;dur=", "create;dur=", "proxy;dur="} {
		if !strings.Contains(st, part) {
			t.Fatalf("cold Server-Timing %q lacks %s", st, part)
		}
	}
	warm := c.invoke(t, "echo:8080", "/") // a port suffix on Host is ignored
	warm.want(t, 200, "host=echo")
	if warm.cold() != "false" {
		t.Fatalf("second invocation: X-Baton-Cold-Start %q, want false", warm.cold())
	}
	if strings.Contains(warm.header.Get("Server-Timing"), "create;") {
		t.Fatalf("warm Server-Timing %q has a create entry", warm.header.Get("Server-Timing"))
	}
	if first.header.Get("X-Sandbox") != warm.header.Get("X-Sandbox") {
		t.Fatalf("warm request served by another sandbox (pid %s, then %s)", first.header.Get("X-Sandbox"), warm.header.Get("X-Sandbox"))
	}

	// By path: /fn/NAME/rest forwards /rest and the query.
	req, _ := http.NewRequest(http.MethodPost, "http://"+c.dp.Addr()+"/fn/echo/deep/path?q=2", strings.NewReader("body"))
	c.do(t, req).want(t, 200, "path=/deep/path query=q=2")

	f := c.function(t, "echo")
	if f.Status.Ready != 1 || f.Generation != 1 {
		t.Fatalf("status after two requests: ready %d generation %d, want 1 and 1", f.Status.Ready, f.Generation)
	}
}

func TestUnknownFunction404(t *testing.T) {
	c := startCluster(t, clusterOpts{})
	a := c.invoke(t, "nosuchfn", "/")
	a.want(t, 404, `"nosuchfn"`)
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.dp.Addr()+"/fn/other/x", nil)
	req.Host = "127.0.0.1"
	c.do(t, req).want(t, 404, `"other"`)
}

// A function scales to zero after its grace period and starts cold again.
func TestScaleToZeroAndColdAgain(t *testing.T) {
	c := startCluster(t, clusterOpts{})
	spec := fnSpec(t, "sleepy")
	spec.Scaling = &pb.ScalingSpec{ScaleToZeroGraceMs: 1000, StableWindowMs: 2000}
	c.deploy(t, spec)
	a := c.invoke(t, "sleepy", "/")
	a.want(t, 200, "pid=")
	pid := a.header.Get("X-Sandbox")
	if n := len(sandboxProcs(t, bin(t, "fn"))); n != 1 {
		t.Fatalf("%d sandbox processes while warm, want 1", n)
	}
	waitFor(t, 15*time.Second, "scale to zero", func() bool {
		st := c.function(t, "sleepy").Status
		return st.Ready == 0 && st.Pending == 0 && st.Draining == 0
	})
	waitFor(t, 5*time.Second, "the sandbox process gone", func() bool {
		return len(sandboxProcs(t, bin(t, "fn"))) == 0
	})
	b := c.invoke(t, "sleepy", "/")
	b.want(t, 200, "pid=")
	if b.cold() != "true" || b.header.Get("X-Sandbox") == pid {
		t.Fatalf("after scale to zero: cold %q pid %s (old %s), want a cold start in a new sandbox", b.cold(), b.header.Get("X-Sandbox"), pid)
	}
}

// Requests over a sandbox's concurrency wait; no sandbox ever serves more
// than its concurrency at once.
func TestPerSandboxConcurrency(t *testing.T) {
	c := startCluster(t, clusterOpts{})
	spec := fnSpec(t, "conc")
	spec.Concurrency = 2
	spec.Scaling.MaxScale = 2
	c.deploy(t, spec)
	var wg sync.WaitGroup
	answers := make([]answer, 12)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = c.invoke(t, "conc", "/?sleep=150")
		}()
	}
	wg.Wait()
	pids := map[string]bool{}
	for _, a := range answers {
		a.want(t, 200, "pid=")
		pids[a.header.Get("X-Sandbox")] = true
		if m, _ := strconv.Atoi(a.header.Get("X-Max-Inflight")); m > 2 || m < 1 {
			t.Fatalf("a sandbox served %d requests at once, concurrency is 2", m)
		}
	}
	if len(pids) > 2 {
		t.Fatalf("%d sandboxes served, max scale is 2", len(pids))
	}
}

// A full queue answers 503; a request that waits longer than the function's
// timeout answers 504.
func TestQueueFull503AndTimeout504(t *testing.T) {
	c := startCluster(t, clusterOpts{queueLimit: 1})
	spec := fnSpec(t, "slow")
	spec.Scaling.MaxScale = 1
	spec.TimeoutMs = 1500
	c.deploy(t, spec)
	c.invoke(t, "slow", "/").want(t, 200, "pid=") // warm it

	results := make(chan answer, 3)
	go func() { results <- c.invoke(t, "slow", "/?sleep=1000") }() // occupies the only slot
	waitFor(t, 5*time.Second, "one request in flight", func() bool { st, _ := c.dp.Stats("slow"); return st.InFlight == 1 })
	go func() { results <- c.invoke(t, "slow", "/?sleep=10") }() // waits in the queue (limit 1)
	waitFor(t, 5*time.Second, "one request queued", func() bool { st, _ := c.dp.Stats("slow"); return st.Queued == 1 })
	c.invoke(t, "slow", "/").want(t, 503, "queue full")
	got := map[int]int{}
	for range 2 {
		got[(<-results).status]++
	}
	if got[200] != 2 {
		t.Fatalf("queued requests: %v, want two 200s", got)
	}

	// A request that runs past the timeout gets 504.
	start := time.Now()
	c.invoke(t, "slow", "/?sleep=3000").want(t, 504, "")
	if el := time.Since(start); el > 2500*time.Millisecond {
		t.Fatalf("504 came after %s, the timeout is 1.5s", el)
	}

	// A request waiting for a sandbox that takes longer than the timeout to
	// start gets 504 too.
	late := fnSpec(t, "late")
	late.TimeoutMs = 500
	late.Env["START_DELAY_MS"] = "2000"
	c.deploy(t, late)
	start = time.Now()
	c.invoke(t, "late", "/").want(t, 504, "late")
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Fatalf("504 came after %s, the timeout is 0.5s", el)
	}
}

// A sandbox that crashes is replaced (min scale 1 keeps one).
func TestCrashedSandboxReplaced(t *testing.T) {
	c := startCluster(t, clusterOpts{})
	spec := fnSpec(t, "crashy")
	spec.Scaling.MinScale = 1
	c.deploy(t, spec)
	waitFor(t, 10*time.Second, "min scale reached", func() bool { return c.function(t, "crashy").Status.Ready == 1 })
	a := c.invoke(t, "crashy", "/")
	pid := a.header.Get("X-Sandbox")
	c.invoke(t, "crashy", "/crash") // the sandbox exits mid-request
	waitFor(t, 10*time.Second, "a replacement sandbox", func() bool {
		b := c.invoke(t, "crashy", "/")
		return b.status == 200 && b.header.Get("X-Sandbox") != pid
	})
	if st := c.function(t, "crashy").Status; st.Ready != 1 {
		t.Fatalf("after the crash: %d ready, want 1", st.Ready)
	}
}

// A function that cannot start answers 502 with the reason, and fn get shows it.
func TestFailedStart502(t *testing.T) {
	c := startCluster(t, clusterOpts{})
	spec := fnSpec(t, "broken")
	spec.Env["FAIL_AT_START"] = "missing configuration XYZ"
	c.deploy(t, spec)
	a := c.invoke(t, "broken", "/")
	a.want(t, 502, "missing configuration XYZ")
	if !strings.Contains(a.body, `"broken"`) {
		t.Fatalf("502 body %q does not name the function", a.body)
	}
	f := c.function(t, "broken")
	if !strings.Contains(f.Status.LastError, "missing configuration XYZ") {
		t.Fatalf("fn get last error %q does not carry the reason", f.Status.LastError)
	}
	// Backing off: a second request is answered at once, without a tight retry loop.
	c.invoke(t, "broken", "/").want(t, 502, "missing configuration XYZ")
}

// Nothing reaches the store during a burst of cold starts: sandbox state is
// soft state. Counted at the store interface and checked on the bbolt file.
func TestNoStoreWritesDuringColdStarts(t *testing.T) {
	c := startCluster(t, clusterOpts{workers: 2})
	const n = 16
	for i := range n {
		c.deploy(t, fnSpec(t, fmt.Sprintf("burst-%d", i)))
	}
	writes := c.cp.StoreWrites()
	if writes != n {
		t.Fatalf("%d store writes for %d deploys", writes, n)
	}
	db := filepath.Join(c.dataDir, "baton.db")
	before, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	answers := make([]answer, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); answers[i] = c.invoke(t, fmt.Sprintf("burst-%d", i), "/") }()
	}
	wg.Wait()
	for i, a := range answers {
		a.want(t, 200, "pid=")
		if a.cold() != "true" {
			t.Fatalf("burst-%d was not a cold start", i)
		}
	}
	if got := c.cp.StoreWrites(); got != writes {
		t.Fatalf("store writes went from %d to %d during %d cold starts", writes, got, n)
	}
	after, _ := os.Stat(db)
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Fatalf("the bbolt file changed during cold starts: %v/%d -> %v/%d", before.ModTime(), before.Size(), after.ModTime(), after.Size())
	}
}

// A redeploy updates the function: new sandboxes run the new spec, the old
// ones are drained.
func TestRedeployDrainsOldGeneration(t *testing.T) {
	c := startCluster(t, clusterOpts{})
	spec := fnSpec(t, "upd")
	c.deploy(t, spec)
	c.invoke(t, "upd", "/").want(t, 200, "env=hi-upd")
	spec.Env["GREETING"] = "v2"
	c.deploy(t, spec)
	waitFor(t, 10*time.Second, "new generation answering", func() bool {
		return strings.Contains(c.invoke(t, "upd", "/").body, "env=v2")
	})
	if f := c.function(t, "upd"); f.Generation != 2 {
		t.Fatalf("generation %d after redeploy, want 2", f.Generation)
	}
}

// Bad specs are refused with InvalidArgument and change nothing.
func TestDeployValidation(t *testing.T) {
	c := startCluster(t, clusterOpts{})
	for _, spec := range []*pb.FunctionSpec{
		{Name: "Bad_Name", Binary: "/bin/true"},
		{Name: "nosource"},
		{Name: "both", Binary: "/bin/true", Image: "x"},
		{Name: "relative", Binary: "bin/true"},
		{Name: "minmax", Binary: "/bin/true", Scaling: &pb.ScalingSpec{MinScale: 3, MaxScale: 2}},
		{Name: "port", Binary: "/bin/true", Env: map[string]string{"PORT": "1"}},
	} {
		_, err := c.cpc.DeployFunction(context.Background(), &pb.DeployFunctionRequest{Spec: spec})
		if err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
			t.Errorf("deploy %+v: %v, want InvalidArgument", spec, err)
		}
	}
	l, _ := c.cpc.ListFunctions(context.Background(), &pb.ListFunctionsRequest{})
	if len(l.Functions) != 0 || c.cp.StoreWrites() != 0 {
		t.Fatalf("refused deploys left %d functions and %d writes", len(l.Functions), c.cp.StoreWrites())
	}
}
