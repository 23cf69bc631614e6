package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type upProc struct {
	cmd      *exec.Cmd
	dp, cp   string
	dirigent string
	workerID string
}

// startUp runs the baton binary's "up" (with flags added) as its own
// process and waits until it says where it listens.
func startUp(t testing.TB, dataDir, workerID string, flags ...string) *upProc {
	t.Helper()
	u := &upProc{dp: freePort(t), cp: freePort(t), dirigent: freePort(t), workerID: workerID}
	u.cmd = exec.Command(bin(t, "baton"), append([]string{"up", "--data-dir", dataDir, "--listen", u.dp,
		"--controlplane-listen", u.cp, "--dirigent-listen", u.dirigent, "--worker-id", workerID}, flags...)...)
	u.cmd.Stderr = os.Stderr
	if os.Getenv("BATON_TEST_LOG") == "" {
		u.cmd.Stderr = nil
	}
	out, err := u.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if u.cmd.ProcessState == nil {
			u.cmd.Process.Kill()
			u.cmd.Wait()
		}
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if !strings.Contains(l, "data plane on http://"+u.dp) {
			t.Fatalf("baton up said %q", l)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("baton up did not start in 15s")
	}
	go func() {
		for range lines {
		}
	}()
	// Started is not ready: wait until the data plane and the worker have
	// registered with the control plane.
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := u.cli(t, "status")
		if err == nil && strings.Contains(out, u.dp+"  true") && strings.Contains(out, workerID) {
			return u
		}
		if time.Now().After(deadline) {
			t.Fatalf("baton up: data plane or worker not registered within 15s:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (u *upProc) cli(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin(t, "baton"), args...)
	cmd.Env = append(os.Environ(), "BATON_CONTROLPLANE="+u.cp, "BATON_DATAPLANE="+u.dp)
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// stop sends SIGTERM and waits for a clean exit.
func (u *upProc) stop(t testing.TB) {
	t.Helper()
	u.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- u.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("baton up exited with %v after SIGTERM", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("baton up did not stop within 20s of SIGTERM")
	}
}

// The quick start as a user runs it: baton up, deploy, invoke, status; after
// SIGTERM no sandbox process or cgroup is left; a restart keeps the
// functions.
func TestBatonUpRestartKeepsFunctionsAndCleansUp(t *testing.T) {
	needRoot(t)
	dataDir := t.TempDir()
	workerID := fmt.Sprintf("up-e2e-%d", os.Getpid())
	u := startUp(t, dataDir, workerID)
	hello := bin(t, "hello")

	out, err := u.cli(t, "fn", "deploy", "hello", "--binary", hello, "--env", "FUNCTION=hello")
	if err != nil || !strings.Contains(out, "function hello created") {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	out, err = u.cli(t, "invoke", "hello")
	if err != nil || !strings.Contains(out, "Hello from Baton") {
		t.Fatalf("invoke: %v\n%s", err, out)
	}
	out, err = u.cli(t, "status")
	if err != nil || !strings.Contains(out, workerID) || !strings.Contains(out, "hello") || !strings.Contains(out, u.dp) {
		t.Fatalf("status: %v\n%s", err, out)
	}
	if procs := sandboxProcs(t, hello); len(procs) != 1 {
		t.Fatalf("%d hello sandbox processes running, want 1", len(procs))
	}
	out, err = u.cli(t, "fn", "deploy", "bad", "--binary", "/no/such/file")
	if err == nil || !strings.Contains(out, "/no/such/file") {
		t.Fatalf("deploy of a missing binary: %v\n%s", err, out)
	}

	u.stop(t)
	if procs := sandboxProcs(t, hello); len(procs) != 0 {
		t.Fatalf("sandbox processes left after shutdown: %v", procs)
	}
	if left := cgroupsUnder("baton/" + workerID); len(left) != 0 {
		t.Fatalf("cgroups left after shutdown: %v", left)
	}

	u = startUp(t, dataDir, workerID)
	out, err = u.cli(t, "fn", "list")
	if err != nil || !strings.Contains(out, "hello") {
		t.Fatalf("fn list after restart: %v\n%s", err, out)
	}
	out, err = u.cli(t, "invoke", "hello")
	if err != nil || !strings.Contains(out, "Hello from Baton") {
		t.Fatalf("invoke after restart: %v\n%s", err, out)
	}
	out, err = u.cli(t, "fn", "delete", "hello")
	if err != nil {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	out, _ = u.cli(t, "invoke", "hello")
	if !strings.Contains(out, "not found") {
		t.Fatalf("invoke after delete: %s", out)
	}
	u.stop(t)
	if procs := sandboxProcs(t, hello); len(procs) != 0 {
		t.Fatalf("sandbox processes left after the second shutdown: %v", procs)
	}
}
