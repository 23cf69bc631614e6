package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/benchloop"
	"github.com/batonfaas/baton/internal/stats"
)

// Benchmarks of whole clusters in one process, talking through their real
// APIs. Each reports latency percentiles next to ns/op.

func reportLatencies(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	p := stats.Percentiles(lat, 50, 99)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "cold/s")
	b.ReportMetric(float64(p[0].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p[1].Microseconds())/1000, "p99-ms")
}

// BenchmarkColdStartBurstFake: one request to each of b.N functions at zero,
// 100 in flight at a time (BATON_BENCH_INFLIGHT), on the fake runtime (40 ms
// creation). The floor is 40 ms per cold start; the rest is Baton.
// BATON_BENCH_DUMP=FILE writes one line per request: its start (µs after
// the clock started), its latency (µs) and the data plane's Server-Timing.
// BATON_BENCH_PROFILE=FILE writes a CPU profile of the burst,
// BATON_BENCH_HEAPPROFILE=FILE a heap profile taken after it.
func BenchmarkColdStartBurstFake(b *testing.B) {
	c := startCluster(b, clusterOpts{fake: true, memStore: true, queueLimit: 100000, defaultIntervals: true})
	for i := range b.N {
		c.deploy(b, &pb.FunctionSpec{Name: fmt.Sprintf("cold-%d", i), Image: "fake",
			Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 600_000}})
	}
	inFlight := 100
	if v, err := strconv.Atoi(os.Getenv("BATON_BENCH_INFLIGHT")); err == nil && v > 0 {
		inFlight = v
	}
	openConnections(b, c, inFlight)
	lat := make([]time.Duration, b.N)
	timings := make([]string, b.N) // Server-Timing of each answer
	starts := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	if path := os.Getenv("BATON_BENCH_PROFILE"); path != "" { // the burst alone, without the set-up
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer f.Close()
		defer pprof.StopCPUProfile() // at the latest; right after the burst below
	}
	cpu0 := benchloop.SelfCPU()
	b.ResetTimer()
	start := time.Now()
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				req, _ := http.NewRequest(http.MethodGet, "http://"+c.dp.Addr()+"/", nil)
				req.Host = fmt.Sprintf("cold-%d", i)
				req.Header.Set("workload", "empty")
				t0 := time.Now()
				resp, err := c.client.Do(req)
				lat[i] = time.Since(t0)
				starts[i] = t0.Sub(start)
				if err != nil || resp.StatusCode != 200 || resp.Header.Get("X-Baton-Cold-Start") != "true" {
					failed.Add(1)
				} else {
					timings[i] = resp.Header.Get("Server-Timing")
				}
				if resp != nil {
					// Read to the end, or the client closes the
					// connection and dials a new one for the next request.
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	pprof.StopCPUProfile() // the burst alone (a no-op without BATON_BENCH_PROFILE)
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d cold starts failed or were not cold", f, b.N)
	}
	cpu := benchloop.SelfCPU() - cpu0
	if path := os.Getenv("BATON_BENCH_HEAPPROFILE"); path != "" { // what the cluster holds after the burst
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		pprof.WriteHeapProfile(f)
		f.Close()
	}
	dump(b, starts, lat, timings)
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "cores")
	reportStages(b, lat, timings)
	reportLatencies(b, lat, elapsed)
}

// dump writes, if BATON_BENCH_DUMP names a file, one line per request: its
// start (µs after the clock started), its latency (µs) and the data plane's
// Server-Timing.
func dump(b *testing.B, starts, lat []time.Duration, timings []string) {
	p := os.Getenv("BATON_BENCH_DUMP")
	if p == "" {
		return
	}
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for i := range lat {
		fmt.Fprintf(w, "%d %d %s\n", starts[i].Microseconds(), lat[i].Microseconds(), timings[i])
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
}

// openConnections opens n keep-alive connections from the benchmark's
// client to the data plane before the clock starts, as a load generator's
// warm-up does: n requests at once for a function that does not exist
// (404), so that the burst measures cold starts, not n TCP handshakes at
// the same instant (which took the first wave's requests 60-70 ms).
func openConnections(b *testing.B, c *cluster, n int) {
	var wg, got sync.WaitGroup
	var fresh atomic.Int64
	start := make(chan struct{})
	got.Add(n)
	for range n {
		wg.Go(func() {
			<-start
			req, _ := http.NewRequest(http.MethodGet, "http://"+c.dp.Addr()+"/", nil)
			req.Host = "no-such-function"
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotConn: func(i httptrace.GotConnInfo) {
					if !i.Reused {
						fresh.Add(1)
					}
				}}))
			resp, err := c.client.Do(req)
			got.Done()
			if err != nil {
				b.Error(err)
				return
			}
			got.Wait() // every answer in before any connection goes back: n connections
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				b.Errorf("warm-up request: %s", resp.Status)
			}
		})
	}
	close(start)
	wg.Wait()
	if f := fresh.Load(); f < int64(n) {
		b.Fatalf("the warm-up opened %d connections, want %d", f, n)
	}
}

// reportStages reports where a cold start's time went, from the data
// plane's Server-Timing (queue;dur=, create;dur=, proxy;dur=): the medians
// of the orchestration (queued but not creating: scale request, placement,
// messages, route update), of the proxy (data plane to the function and
// back) and of what the data plane did not time (the client, its
// connection, reading and writing the request).
func reportStages(b *testing.B, lat []time.Duration, timings []string) {
	var orch, proxy, outside []float64
	for i, st := range timings {
		d := map[string]float64{}
		for part := range strings.SplitSeq(st, ",") {
			name, dur, ok := strings.Cut(strings.TrimSpace(part), ";dur=")
			if v, err := strconv.ParseFloat(dur, 64); ok && err == nil {
				d[name] = v
			}
		}
		orch = append(orch, d["queue"]-d["create"])
		proxy = append(proxy, d["proxy"])
		outside = append(outside, float64(lat[i].Microseconds())/1000-d["queue"]-d["proxy"])
	}
	b.ReportMetric(stats.Percentiles(orch, 50)[0], "orch-p50-ms")
	b.ReportMetric(stats.Percentiles(proxy, 50)[0], "proxy-p50-ms")
	b.ReportMetric(stats.Percentiles(outside, 50)[0], "outside-p50-ms")
}

// BenchmarkColdStartProcess: sequential cold starts on the process runtime
// (examples/hello), request in to answer out, each to a function at zero.
// BATON_BENCH_DUMP as for BenchmarkColdStartBurstFake.
func BenchmarkColdStartProcess(b *testing.B) {
	c := startCluster(b, clusterOpts{memStore: true})
	hello := bin(b, "hello")
	for i := range b.N {
		c.deploy(b, &pb.FunctionSpec{Name: fmt.Sprintf("pcold-%d", i), Binary: hello, MemoryMib: 64, CpuMillicores: benchCPU(),
			Scaling: &pb.ScalingSpec{ScaleToZeroGraceMs: 600_000}})
	}
	lat := make([]time.Duration, b.N)
	starts := make([]time.Duration, b.N)
	timings := make([]string, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		t0 := time.Now()
		a := c.invoke(b, fmt.Sprintf("pcold-%d", i), "/")
		lat[i], starts[i], timings[i] = time.Since(t0), t0.Sub(start), a.header.Get("Server-Timing")
		if a.status != 200 || a.cold() != "true" {
			b.Fatalf("request %d: %d cold=%s %q", i, a.status, a.cold(), a.body)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	dump(b, starts, lat, timings)
	reportLatencies(b, lat, elapsed)
}

// benchCPU is the CPU request (and cgroup limit) of benchmark functions:
// BATON_BENCH_CPU millicores, default 1000 (one core).
func benchCPU() int64 {
	if v, err := strconv.ParseInt(os.Getenv("BATON_BENCH_CPU"), 10, 64); err == nil && v > 0 {
		return v
	}
	return 1000
}
