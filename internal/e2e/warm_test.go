package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/stats"
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
// client: at most 40 µs). BATON_BENCH_UP_FLAGS adds flags to baton up (for
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
	pids := [3]int{os.Getpid(), u.cmd.Process.Pid, fnPID}
	proxy := "http://" + u.dp + "/"
	for _, clients := range []int{16, 1} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			rounds := max(min(b.N/500, 50), 1)
			var dr, pr closedLoop
			for r := range rounds {
				n := b.N / rounds
				if r == rounds-1 {
					n = b.N - n*(rounds-1)
				}
				dr.run(b, "http://"+direct+"/", clients, n, pids)
				pr.run(b, proxy, clients, n, pids)
			}
			ds, ps := dr.summary(), pr.summary()
			b.ReportMetric(float64(pr.elapsed.Nanoseconds())/float64(b.N), "ns/op")
			b.ReportMetric(ds.rate, "direct-req/s")
			b.ReportMetric(ps.rate, "proxy-req/s")
			b.ReportMetric(ps.rate/ds.rate, "ratio")
			b.ReportMetric(ds.p50, "direct-p50-µs")
			b.ReportMetric(ps.p50, "p50-µs")
			b.ReportMetric(ps.p50-ds.p50, "p50-added-µs")
			b.ReportMetric(ds.p99, "direct-p99-µs")
			b.ReportMetric(ps.p99, "p99-µs")
			// CPU per request of each process (the client, baton up, the
			// function), through Baton and direct.
			for i, name := range []string{"client", "baton", "fn"} {
				b.ReportMetric(float64(pr.cpu[i].Microseconds())/float64(pr.n), name+"-cpu-µs/op")
				if i != 1 {
					b.ReportMetric(float64(dr.cpu[i].Microseconds())/float64(dr.n), "direct-"+name+"-cpu-µs/op")
				}
			}
		})
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

// closedLoop accumulates rounds of closed-loop clients.
type closedLoop struct {
	client  *http.Client
	elapsed time.Duration
	n       int
	lat     []time.Duration
	cpu     [3]time.Duration // of each of the processes run was given
}

// run has clients closed-loop clients send n GET requests to url in all,
// naming function wl and asking for no work.
func (l *closedLoop) run(b *testing.B, url string, clients, n int, pids [3]int) {
	if l.client == nil {
		tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
		b.Cleanup(tr.CloseIdleConnections)
		l.client = &http.Client{Transport: tr}
	}
	var left atomic.Int64
	left.Store(int64(n))
	lats := make([][]time.Duration, clients)
	var cpu0 [3]time.Duration
	for i, pid := range pids {
		cpu0[i] = procCPU(pid)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", url, nil)
			req.Host = "wl"
			req.Header.Set("workload", "empty")
			lat := make([]time.Duration, 0, n/clients+1)
			for left.Add(-1) >= 0 {
				t0 := time.Now()
				resp, err := l.client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(t0))
				if err != nil || resp.StatusCode != 200 {
					b.Errorf("status %d, %v", resp.StatusCode, err)
					return
				}
			}
			lats[i] = lat
		})
	}
	wg.Wait()
	l.elapsed += time.Since(start)
	for i, pid := range pids {
		l.cpu[i] += procCPU(pid) - cpu0[i]
	}
	l.n += n
	for _, x := range lats {
		l.lat = append(l.lat, x...)
	}
}

type loopStats struct{ rate, p50, p99 float64 } // requests/s, µs

func (l *closedLoop) summary() loopStats {
	p := stats.Percentiles(l.lat, 50, 99)
	return loopStats{rate: float64(l.n) / l.elapsed.Seconds(), p50: float64(p[0]) / 1e3, p99: float64(p[1]) / 1e3}
}

// procCPU is the CPU time (user and system) process pid has used.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

const clockTicks = 100 // USER_HZ on Linux
