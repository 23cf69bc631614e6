package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/benchloop"
)

// BenchmarkWarmPathProcess is issue 3's warm-path target as a user meets
// it: `baton up` (process runtime) in its own process, examples/workload
// as a process sandbox (one, allowed 2 cores and 1,000 requests at once),
// and closed-loop clients in this process sending `workload: empty`,
// alternately through the data plane and straight to the sandbox's port,
// in short rounds so that both see the same background load.
//
// ratio is throughput through Baton over throughput direct (target at
// least 0.65 with 16 clients), p99-µs the proxied 99th percentile (at most
// 1,500 µs), p50-added-µs the proxied median minus the direct one (one
// client: at most 40 µs). The same rounds also run through testdata/relay,
// a process that only copies bytes between each client connection and its
// own connection to the function: floor-ratio, floor-p50-added-µs and
// floor-p99-µs are what a proxy that did nothing else would get, the floor
// for these targets on the machine at hand, and relay-cpu-µs/op its CPU
// per request (all its threads). BATON_BENCH_UP_FLAGS adds flags to baton up (for
// example --busy-poll 0).
func BenchmarkWarmPathProcess(b *testing.B) {
	needRoot(b)
	u := startUp(b, b.TempDir(), fmt.Sprintf("warm-%d", os.Getpid()), strings.Fields(os.Getenv("BATON_BENCH_UP_FLAGS"))...)
	defer u.stop(b)
	wl := bin(b, "workload")
	if out, err := u.cli(b, "fn", "deploy", "wl", "--binary", wl, "--min-scale", "1", "--max-scale", "1",
		"--concurrency", "1000", "--cpu", "2000", "--memory", "256"); err != nil {
		b.Fatalf("deploy: %v\n%s", err, out)
	}
	direct, fnPID := waitSandboxAddr(b, wl)
	relay, relayPID := startRelay(b, direct)
	// CPU of each process: the client (this one), baton up, the function,
	// the relay.
	cpu := func() []time.Duration {
		return []time.Duration{benchloop.SelfCPU(), benchloop.ProcCPU(u.cmd.Process.Pid), benchloop.ProcCPU(fnPID),
			benchloop.ProcCPU(relayPID)}
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	loop := func(url string) *benchloop.Loop {
		return &benchloop.Loop{Client: &http.Client{Transport: tr}, CPU: cpu,
			NewRequest: func() *http.Request {
				req, _ := http.NewRequest("GET", url, nil)
				req.Host = "wl"
				req.Header.Set("workload", "empty")
				return req
			}}
	}
	for _, clients := range []int{16, 1} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			dr, pr, fr := loop("http://"+direct+"/"), loop("http://"+u.dp+"/"), loop("http://"+relay+"/")
			benchloop.Compare(b, dr, pr, fr, clients)
			// CPU per request of each process, through Baton and direct.
			for i, name := range []string{"client", "baton", "fn"} {
				b.ReportMetric(float64(pr.CPUUsed[i].Microseconds())/float64(pr.N), name+"-cpu-µs/op")
				if i != 1 {
					b.ReportMetric(float64(dr.CPUUsed[i].Microseconds())/float64(dr.N), "direct-"+name+"-cpu-µs/op")
				}
			}
			b.ReportMetric(float64(fr.CPUUsed[3].Microseconds())/float64(fr.N), "relay-cpu-µs/op")
		})
	}
}

// startRelay runs testdata/relay (or $BATON_BENCH_RELAY, another program
// that takes the target and prints its address on a line) in front of
// target and returns its address and process. It runs in its own process
// group, killed whole when b ends (a wrapper script and what it starts).
func startRelay(b *testing.B, target string) (string, int) {
	exe := os.Getenv("BATON_BENCH_RELAY")
	if exe == "" {
		exe = bin(b, "relay")
	}
	cmd := exec.Command(exe, target)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	select {
	case addr := <-line:
		if addr == "" {
			b.Fatalf("%s printed no address", exe)
		}
		return addr, cmd.Process.Pid
	case <-time.After(15 * time.Second):
		b.Fatalf("%s printed no address within 15s", exe)
		return "", 0
	}
}

// waitSandboxAddr finds the port the one sandbox running exe serves
// (its $PORT), and its process, waiting for it to start.
func waitSandboxAddr(b *testing.B, exe string) (string, int) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, pid := range sandboxProcs(b, exe) {
			env, _ := os.ReadFile(filepath.Join("/proc", pid, "environ"))
			for _, kv := range strings.Split(string(env), "\x00") {
				if port, ok := strings.CutPrefix(kv, "PORT="); ok {
					addr := "127.0.0.1:" + port
					if resp, err := http.Get("http://" + addr + "/"); err == nil {
						resp.Body.Close()
						n, _ := strconv.Atoi(pid)
						return addr, n
					}
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatalf("no sandbox of %s answering within 15s", exe)
	return "", 0
}
