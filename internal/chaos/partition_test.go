package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/cpclient"
)

// netHost is a test host: a network namespace of the test's own, linked to
// the machine by a veth pair on a /24 of its own.
type netHost struct {
	ns, hostIf, nsIf string
	hostIP, nsIP     string
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newNetHost(t *testing.T) *netHost {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the partition test needs iproute2's ip (apt-get install iproute2)")
	}
	id := os.Getpid() % 200
	h := &netHost{ns: fmt.Sprintf("baton-chaos-%d", os.Getpid()), hostIf: fmt.Sprintf("bch%d", os.Getpid()),
		nsIf: fmt.Sprintf("bcn%d", os.Getpid()), hostIP: fmt.Sprintf("10.231.%d.1", id), nsIP: fmt.Sprintf("10.231.%d.2", id)}
	ipCmd(t, "netns", "add", h.ns)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", h.hostIf).Run()
		exec.Command("ip", "netns", "del", h.ns).Run()
	})
	ipCmd(t, "link", "add", h.hostIf, "type", "veth", "peer", "name", h.nsIf)
	ipCmd(t, "link", "set", h.nsIf, "netns", h.ns)
	ipCmd(t, "addr", "add", h.hostIP+"/24", "dev", h.hostIf)
	ipCmd(t, "link", "set", h.hostIf, "up")
	ipCmd(t, "-n", h.ns, "addr", "add", h.nsIP+"/24", "dev", h.nsIf)
	ipCmd(t, "-n", h.ns, "link", "set", h.nsIf, "up")
	ipCmd(t, "-n", h.ns, "link", "set", "lo", "up")
	return h
}

// link sets the namespace's side of the link up or down.
func (h *netHost) link(t *testing.T, up bool) {
	state := "down"
	if up {
		state = "up"
	}
	ipCmd(t, "-n", h.ns, "link", "set", h.nsIf, state)
}

// Scenario 4: a worker cut off from the control plane (its link down) is
// declared down and its sandboxes replaced; when the link heals it
// reconnects, the sandboxes nobody expects any more are stopped, and every
// function has exactly what its scale says.
func TestPartitionedWorkerReconciles(t *testing.T) {
	needRoot(t)
	h := newNetHost(t)
	cpAddr := h.hostIP + ":" + strings.Split(freeAddr(t), ":")[1]
	start(t, "cp", "controlplane", "--listen", cpAddr, "--dirigent-listen", "", "--data-dir", filepath.Join(t.TempDir(), "cp"),
		"--heartbeat-interval", "200ms", "--heartbeat-timeout", "1s", "--placement", "least-loaded")
	c, err := cpclient.Dial(cpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dp := freeAddr(t)
	start(t, "dp", "dataplane", "--listen", dp, "--controlplane", cpAddr)
	start(t, "w-host", "worker", "--controlplane", cpAddr, "--worker-id", "chaos-host")
	// The other worker lives on the test host behind the veth link; its
	// sandboxes listen on that host's address.
	// nsenter switches only the network namespace ("ip netns exec" would
	// also remount /sys, hiding the cgroup hierarchies).
	startWrapped(t, []string{"nsenter", "--net=/var/run/netns/" + h.ns}, "w-netns", "worker", "--controlplane", cpAddr,
		"--worker-id", "chaos-netns", "--sandbox-host", h.nsIP)
	workersUp(t, c, 2, 1)

	deploy(t, c, helloSpec(t, "f", 2))
	perWorker := func() map[string]int32 {
		m := map[string]int32{}
		for _, w := range status(t, c).Workers {
			if w.Up {
				m[w.WorkerId] = w.Sandboxes
			}
		}
		return m
	}
	waitFor(t, 15*time.Second, "one ready sandbox on each worker", func() bool {
		m := perWorker()
		ready := readyOf(t, c, "f")
		return m["chaos-host"] == 1 && m["chaos-netns"] == 1 && ready == 2
	})
	if code, _, err := invoke(dp, "f"); code != 200 {
		t.Fatalf("before the cut: %d %v", code, err)
	}
	if before := len(sandboxProcs(bin(t, "hello"))); before != 2 {
		t.Fatalf("%d sandbox processes before the cut, want 2", before)
	}

	h.link(t, false)
	cut := time.Now()
	replaced := waitFor(t, 15*time.Second, "the cut-off worker declared down and its sandbox replaced", func() bool {
		m := perWorker()
		_, netnsUp := m["chaos-netns"]
		ready := readyOf(t, c, "f")
		return !netnsUp && m["chaos-host"] == 2 && ready == 2
	})
	if code, _, err := invoke(dp, "f"); code != 200 {
		t.Fatalf("during the cut: %d %v", code, err)
	}
	// The cut-off worker's sandbox still runs: it cannot hear anyone.
	if n := len(sandboxProcs(bin(t, "hello"))); n != 3 {
		t.Fatalf("%d sandbox processes during the cut, want 3 (2 on the host, 1 cut off)", n)
	}

	h.link(t, true)
	healed := time.Now()
	converged := waitFor(t, 30*time.Second, "convergence after the heal", func() bool {
		m := perWorker()
		st := status(t, c)
		var ready int32
		for _, f := range st.Functions {
			if f.Spec.Name == "f" {
				ready = f.Status.Ready + f.Status.Pending + f.Status.Draining
			}
		}
		_, netnsUp := m["chaos-netns"]
		return netnsUp && m["chaos-host"]+m["chaos-netns"] == 2 && ready == 2 && len(sandboxProcs(bin(t, "hello"))) == 2
	})
	t.Logf("partition: worker declared down and replaced %s after the cut; converged %s after the heal (%s since the cut)",
		replaced.Round(time.Millisecond), converged.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond)-0*time.Since(healed))
	if code, _, err := invoke(dp, "f"); code != 200 {
		t.Fatalf("after the heal: %d %v", code, err)
	}
	fns, err := pb.NewControlPlaneClient(c).GetFunction(context.Background(), &pb.GetFunctionRequest{Name: "f"})
	if err != nil || fns.Status.Ready != 2 {
		t.Fatalf("f after convergence: %v %v, want 2 ready", fns.GetStatus(), err)
	}
}

// sandboxProcs lists the live processes running the given executable.
func sandboxProcs(exe string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && target == exe {
			out = append(out, e.Name())
		}
	}
	return out
}
