package loadgen_test

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/cli"
	"github.com/batonfaas/baton/internal/loadgen"
)

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startFakeCluster builds the baton binary and runs "baton up --runtime
// fake" on free loopback ports until the test ends.
func startFakeCluster(t *testing.T) (cp, dp string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "baton")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/baton")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cp, dp = freeAddr(t), freeAddr(t)
	// Every listener on a free port: the default ones may be taken by a
	// cluster someone runs on this machine.
	cmd := exec.Command(bin, "up", "--runtime", "fake", "--listen", dp, "--controlplane-listen", cp,
		"--dirigent-listen", freeAddr(t), "--data-dir", t.TempDir(), "--worker-id", "loadgen-test", "--log-level", "warn")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if os.Getenv("BATON_TEST_LOG") != "" {
		cmd.Stderr = os.Stderr
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed once the process is waited for
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Error("baton up did not stop within 15s of SIGTERM")
		}
	})
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case first <- sc.Text():
			default:
			}
		}
		close(first)
		cmd.Wait()
		close(exited)
	}()
	select {
	case l, ok := <-first:
		if !ok {
			<-exited
			t.Fatalf("baton up exited before it started: %s", stderr.String())
		}
		if !strings.Contains(l, "data plane on http://"+dp) {
			t.Fatalf("baton up said %q", l)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("baton up did not start within 30s: %s", stderr.String())
	}
	return cp, dp
}

// TestReplayExample4OneMinute replays the first minute of example_4 through
// "baton load trace" against a real cluster on the fake runtime: every
// planned invocation is sent once and answered without error.
func TestReplayExample4OneMinute(t *testing.T) {
	t.Parallel()
	dir := filepath.Join("../../../shared/traces", "example_4")
	if _, err := os.Stat(dir); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("sample trace %s missing (%v), and CI=true forbids skipping", dir, err)
		}
		t.Skipf("skipped: sample trace %s not found (%v); check out shared/ beside the repository", dir, err)
	}
	tr, err := loadgen.ReadTrace(dir)
	if err != nil {
		t.Fatal(err)
	}
	sched, err := loadgen.NewTraceSchedule(tr, loadgen.TraceOptions{Minutes: 1, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	planned := sched.Planned()
	if planned == 0 {
		t.Fatal("the first minute of example_4 plans nothing")
	}
	fns := map[string]bool{}
	for _, f := range sched.Functions() {
		fns[f.Name] = true
	}

	cp, dp := startFakeCluster(t)
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := cli.Main([]string{"load", "trace", "--trace", dir, "--minutes", "1", "--seed", "3", "--controlplane", cp,
		"--dataplane", dp, "--out", out, "--log-level", "warn"}, &stdout, &stderr)
	t.Logf("summary:\n%s", stdout.String())
	if code != 0 {
		t.Fatalf("baton load trace exited %d:\n%s", code, stderr.String())
	}

	csvs, _ := filepath.Glob(filepath.Join(out, "baton-load-*-trace-example_4.csv"))
	if len(csvs) != 1 {
		t.Fatalf("CSV files %v", csvs)
	}
	f, err := os.Open(csvs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows)-1 != planned {
		t.Fatalf("%d invocations in the CSV, %d planned", len(rows)-1, planned)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, r := range rows[1:] {
		if r[col["status"]] != "200" || r[col["error"]] != "" || r[col["exec_ms"]] == "" || !fns[r[col["function"]]] {
			t.Errorf("invocation %v", r)
		}
	}
	prefix := strings.TrimSuffix(csvs[0], ".csv")
	for _, suffix := range []string{"-latency.png", "-slowdown.png", "-timeline.png", "-summary.txt"} {
		if st, err := os.Stat(prefix + suffix); err != nil || st.Size() == 0 {
			t.Errorf("%s%s: %v", prefix, suffix, err)
		}
	}
	for _, want := range []string{"errors       none", "requests     " + strconv.Itoa(planned) + " planned, " + strconv.Itoa(planned) + " sent, " +
		strconv.Itoa(planned) + " answered"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q", want)
		}
	}
}
