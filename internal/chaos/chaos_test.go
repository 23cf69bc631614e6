package chaos

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/cpclient"
)

func helloSpec(t *testing.T, name string, minScale int32) *pb.FunctionSpec {
	return &pb.FunctionSpec{Name: name, Binary: bin(t, "hello"), CpuMillicores: 50, MemoryMib: 32,
		Scaling: &pb.ScalingSpec{MinScale: minScale, ScaleToZeroGraceMs: 600_000}}
}

// workersUp waits until n workers and the given data planes are registered.
func workersUp(t *testing.T, c *cpclient.Client, n, dps int) {
	t.Helper()
	waitFor(t, 15*time.Second, fmt.Sprintf("%d workers and %d data planes", n, dps), func() bool {
		st, err := pb.NewControlPlaneClient(c).GetStatus(context.Background(), &pb.GetStatusRequest{})
		if err != nil {
			return false
		}
		up := 0
		for _, w := range st.Workers {
			if w.Up {
				up++
			}
		}
		return up == n && len(st.DataPlanes) == dps
	})
}

func readyOf(t *testing.T, c *cpclient.Client, fn string) int32 {
	for _, f := range status(t, c).Functions {
		if f.Spec.Name == fn {
			return f.Status.Ready
		}
	}
	return 0
}

// sandboxesOn counts the sandboxes of fn that worker runs, by the cgroups
// its process runtime made for them (baton/WORKER/FN-ID; one tree per
// controller on cgroup v1, the unified tree on v2).
func sandboxesOn(worker, fn string) int {
	seen := map[string]bool{}
	for _, root := range []string{"/sys/fs/cgroup/*/baton/", "/sys/fs/cgroup/baton/"} {
		dirs, _ := filepath.Glob(root + worker + "/" + fn + "-*")
		for _, d := range dirs {
			seen[filepath.Base(d)] = true
		}
	}
	return len(seen)
}

// Scenarios 1 and 5 of issue 5: SIGKILL the leader of three control-plane
// replicas under steady warm load (zero failed warm requests; cold starts
// succeed again; no function lost), then stop and restart all replicas
// together (every function still registered, its spec intact).
func TestKillLeaderThenRestartAllReplicas(t *testing.T) {
	needRoot(t)
	r := startReplicas(t, 3)
	c := r.client(t)
	waitFor(t, 10*time.Second, "a leader", func() bool { return r.leader() >= 0 })
	dp := freeAddr(t)
	start(t, "dp", "dataplane", "--listen", dp, "--controlplane", r.list(), "--dataplane-id", "dp")
	start(t, "worker", "worker", "--controlplane", r.list(), "--worker-id", "chaos-w1", "--log-level", "debug")
	workersUp(t, c, 1, 1)

	deploy(t, c, helloSpec(t, "warm", 1))
	const colds = 40
	for i := range colds {
		deploy(t, c, helloSpec(t, fmt.Sprintf("cold-%d", i), 0))
	}
	waitFor(t, 10*time.Second, "warm ready", func() bool { n := readyOf(t, c, "warm"); return n == 1 })
	if code, _, err := invoke(dp, "cold-0"); code != 200 {
		t.Fatalf("cold start before the kill: %d %v", code, err)
	}

	l := startLoad([]string{dp}, "warm", 2*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	old := r.leader()
	killed := time.Now()
	r.procs[old].kill() // SIGKILL
	leaderAt := make(chan time.Duration, 1)
	go func() { // time until another replica answers as the leader
		for time.Since(killed) < 30*time.Second {
			if i := r.leader(); i >= 0 && i != old {
				leaderAt <- time.Since(killed)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		leaderAt <- -1
	}()

	// New cold starts: one request every 20 ms, each to a function at zero.
	type result struct {
		sent, done time.Duration
		ok         bool
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	for i := 1; i < colds; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent := time.Since(killed)
			code, cold, err := invoke(dp, fmt.Sprintf("cold-%d", i))
			mu.Lock()
			results = append(results, result{sent, time.Since(killed), err == nil && code == 200 && cold == "true"})
			mu.Unlock()
		}()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	newLeader := <-leaderAt
	if newLeader < 0 {
		t.Fatal("no new leader within 30s of the kill")
	}
	time.Sleep(300 * time.Millisecond)
	ok, failed := l.end()

	firstCold := time.Duration(-1)
	coldFailures := 0
	for _, res := range results {
		if !res.ok {
			coldFailures++
		} else if firstCold < 0 || res.done < firstCold {
			firstCold = res.done
		}
	}
	t.Logf("leader SIGKILL: new leader answering after %s; first cold start after the kill answered at %s; "+
		"cold requests failed %d of %d; warm requests during the event: %d ok, %d failed",
		newLeader.Round(time.Millisecond), firstCold.Round(time.Millisecond), coldFailures, len(results), ok, failed)
	if failed > 0 {
		t.Errorf("%d warm requests failed during the fail-over (last: %v)", failed, l.lastErr.Load())
	}
	if firstCold < 0 || coldFailures > 0 {
		t.Errorf("cold starts after the kill: %d of %d failed", coldFailures, len(results))
	}
	st := status(t, c)
	if len(st.Functions) != colds+1 {
		t.Fatalf("%d functions after the fail-over, want %d", len(st.Functions), colds+1)
	}

	// Scenario 5: stop every replica and start them again.
	for i, p := range r.procs {
		if i != old {
			p.stop(t)
		}
	}
	for _, p := range r.procs {
		p.start(t)
	}
	waitFor(t, 15*time.Second, "a leader after restarting all replicas", func() bool { return r.leader() >= 0 })
	fns, err := pb.NewControlPlaneClient(c).ListFunctions(context.Background(), &pb.ListFunctionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fns.Functions) != colds+1 {
		t.Fatalf("%d functions after restarting all replicas, want %d", len(fns.Functions), colds+1)
	}
	for _, f := range fns.Functions {
		if f.Spec.Binary != bin(t, "hello") || f.Spec.CpuMillicores != 50 || (f.Spec.Name == "warm") != (f.Spec.Scaling.MinScale == 1) {
			t.Fatalf("spec of %s changed across the restart: %+v", f.Spec.Name, f.Spec)
		}
	}
	if code, _, err := invoke(dp, "warm"); code != 200 {
		t.Fatalf("warm after restarting all replicas: %d %v", code, err)
	}
	t.Logf("all replicas restarted: %d functions intact", len(fns.Functions))
}

// Scenario 2: kill a data plane and restart it: the other keeps serving,
// the restarted one serves within a second.
func TestKillAndRestartDataPlane(t *testing.T) {
	needRoot(t)
	cp := freeAddr(t)
	start(t, "cp", "controlplane", "--listen", cp, "--dirigent-listen", "", "--data-dir", filepath.Join(t.TempDir(), "cp"))
	c, err := cpclient.Dial(cp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dpA, dpB := freeAddr(t), freeAddr(t)
	a := start(t, "dpA", "dataplane", "--listen", dpA, "--controlplane", cp, "--dataplane-id", "a")
	start(t, "dpB", "dataplane", "--listen", dpB, "--controlplane", cp, "--dataplane-id", "b")
	start(t, "worker", "worker", "--controlplane", cp, "--worker-id", "chaos-w2")
	workersUp(t, c, 1, 2)
	deploy(t, c, helloSpec(t, "f", 1))
	waitFor(t, 10*time.Second, "f ready", func() bool { n := readyOf(t, c, "f"); return n == 1 })

	l := startLoad([]string{dpB}, "f", 2*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	a.kill()
	time.Sleep(500 * time.Millisecond)
	restarted := time.Now()
	a.start(t)
	waitFor(t, 10*time.Second, "the restarted data plane serving", func() bool {
		code, _, _ := invoke(dpA, "f")
		return code == 200
	})
	serving := time.Since(restarted) // from its start
	time.Sleep(200 * time.Millisecond)
	ok, failed := l.end()
	t.Logf("data plane SIGKILL: the other served %d requests, %d failed; the restarted one served after %s (from its start)",
		ok, failed, serving.Round(time.Millisecond))
	if failed > 0 {
		t.Errorf("%d requests failed on the surviving data plane (last: %v)", failed, l.lastErr.Load())
	}
	if serving > 5*time.Second {
		t.Errorf("the restarted data plane took %s to serve", serving)
	}
}

// Scenario 3: SIGKILL a worker running process sandboxes: its function is
// served from the other worker within the heartbeat timeout plus a second.
func TestKillWorker(t *testing.T) {
	needRoot(t)
	cp := freeAddr(t)
	start(t, "cp", "controlplane", "--listen", cp, "--dirigent-listen", "", "--data-dir", filepath.Join(t.TempDir(), "cp"),
		"--heartbeat-interval", "200ms", "--heartbeat-timeout", "1s", "--placement", "least-loaded")
	c, err := cpclient.Dial(cp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dp := freeAddr(t)
	start(t, "dp", "dataplane", "--listen", dp, "--controlplane", cp)
	w1 := start(t, "w1", "worker", "--controlplane", cp, "--worker-id", "chaos-k1")
	w2 := start(t, "w2", "worker", "--controlplane", cp, "--worker-id", "chaos-k2")
	workersUp(t, c, 2, 1)
	deploy(t, c, helloSpec(t, "f", 2))
	// slow keeps requests in flight in its sandboxes: those on the killed
	// worker die under them, and the data plane must send them to the
	// other (GET: the default retry policy allows it).
	deploy(t, c, &pb.FunctionSpec{Name: "slow", Binary: bin(t, "workload"), CpuMillicores: 50, MemoryMib: 32,
		Concurrency: 8, Scaling: &pb.ScalingSpec{MinScale: 2, ScaleToZeroGraceMs: 600_000}})
	onWorkers := func() map[string]int32 { // sandboxes on each worker that is up
		m := map[string]int32{}
		for _, w := range status(t, c).Workers {
			if w.Up {
				m[w.WorkerId] = w.Sandboxes
			}
		}
		return m
	}
	waitFor(t, 10*time.Second, "two sandboxes on each worker", func() bool {
		m := onWorkers()
		return m["chaos-k1"] == 2 && m["chaos-k2"] == 2
	})
	// The worker to kill is one that runs a sandbox of slow: placement
	// decides where they go, and a kill elsewhere would leave no request
	// in flight on the dead worker.
	waitFor(t, 10*time.Second, "both sandboxes of slow ready", func() bool {
		return readyOf(t, c, "slow") == 2 && sandboxesOn("chaos-k1", "slow")+sandboxesOn("chaos-k2", "slow") == 2
	})
	slowOn := fmt.Sprintf("chaos-k1: %d, chaos-k2: %d", sandboxesOn("chaos-k1", "slow"), sandboxesOn("chaos-k2", "slow"))
	victim, victimID, survivorID := w1, "chaos-k1", "chaos-k2"
	if sandboxesOn(victimID, "slow") == 0 {
		victim, victimID, survivorID = w2, "chaos-k2", "chaos-k1"
	}

	l := startLoad([]string{dp}, "f", 2*time.Millisecond)
	slow := startSlowLoad(dp, "slow", 12, 200*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	if sandboxesOn(victimID, "slow") == 0 {
		l.end()
		slow.end()
		t.Fatalf("slow has no sandbox on %s, the worker about to be killed (%s before the load): "+
			"no request of slow would be in flight on the dead worker", victimID, slowOn)
	}
	victim.kill()
	recovered := waitFor(t, 10*time.Second, "four sandboxes on the surviving worker", func() bool {
		m := onWorkers()
		return m[victimID] == 0 && m[survivorID] == 4 && readyOf(t, c, "f") == 2 && readyOf(t, c, "slow") == 2
	})
	time.Sleep(300 * time.Millisecond)
	ok, failed := l.end()
	sok, sfailed := slow.end()
	t.Logf("worker SIGKILL (%s; slow's sandboxes were on %v): back to all ready sandboxes after %s (heartbeat timeout 1s); "+
		"fast requests: %d ok, %d failed; slow requests (in flight at the kill): %d ok, %d failed",
		victimID, slowOn, recovered.Round(time.Millisecond), ok, failed, sok, sfailed)
	if recovered > 1*time.Second+time.Second {
		t.Errorf("replacement took %s, want within the heartbeat timeout (1s) plus 1s", recovered)
	}
	if failed+sfailed > 0 {
		t.Errorf("%d requests failed around the worker's death (last: %v / %v)", failed+sfailed, l.lastErr.Load(), slow.lastErr.Load())
	}
	if code, _, err := invoke(dp, "f"); code != 200 {
		t.Fatalf("after recovery: %d %v", code, err)
	}
}
