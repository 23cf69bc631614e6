// Package benchloop runs the closed-loop clients of the warm-path
// benchmarks (the data plane's engine benchmark and the end-to-end one):
// the same clients against two targets, straight to the function and
// through Baton, in alternating short rounds so that both see the same
// background load, and the figures both report.
package benchloop

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/stats"
)

// Loop accumulates rounds of closed-loop clients against one target.
type Loop struct {
	Client *http.Client
	// NewRequest makes the request each client sends again and again.
	NewRequest func() *http.Request
	// CPU, if set, reads the CPU time of the processes being measured; the
	// loop adds up how much each used over its rounds.
	CPU func() []time.Duration

	Elapsed time.Duration
	N       int
	Lat     []time.Duration
	CPUUsed []time.Duration
}

// Run has clients closed-loop clients send n requests in all, each read to
// its end; a failed request or a status other than 200 fails b.
func (l *Loop) Run(b testing.TB, clients, n int) {
	var left atomic.Int64
	left.Store(int64(n))
	lats := make([][]time.Duration, clients)
	var cpu0 []time.Duration
	if l.CPU != nil {
		cpu0 = l.CPU()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			req := l.NewRequest()
			lat := make([]time.Duration, 0, n/clients+1)
			for left.Add(-1) >= 0 {
				t0 := time.Now()
				resp, err := l.Client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(t0))
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Errorf("status %d, %v", resp.StatusCode, err)
					return
				}
			}
			lats[i] = lat
		})
	}
	wg.Wait()
	l.Elapsed += time.Since(start)
	if l.CPU != nil {
		cpu1 := l.CPU()
		if l.CPUUsed == nil {
			l.CPUUsed = make([]time.Duration, len(cpu1))
		}
		for i := range cpu1 {
			l.CPUUsed[i] += cpu1[i] - cpu0[i]
		}
	}
	l.N += n
	for _, x := range lats {
		l.Lat = append(l.Lat, x...)
	}
}

// Summary is a loop's rate (requests/s) and latency percentiles (µs).
type Summary struct{ Rate, P50, P99 float64 }

func (l *Loop) Summary() Summary {
	p := stats.Percentiles(l.Lat, 50, 99)
	return Summary{Rate: float64(l.N) / l.Elapsed.Seconds(), P50: float64(p[0]) / 1e3, P99: float64(p[1]) / 1e3}
}

// Compare runs b.N requests through each of direct and proxy with clients
// clients, alternating in short rounds (a few tens of milliseconds), and
// reports the figures of the comparison: rates, their ratio, p50 and p99 of
// each and what the proxy adds at p50. floor, if not nil, is a third target
// run in the same rounds (the least any proxy could cost, for example a
// byte relay) and reported as floor-ratio, floor-p50-added-µs and
// floor-p99-µs.
func Compare(b *testing.B, direct, proxy, floor *Loop, clients int) {
	rounds := max(min(b.N/500, 50), 1)
	for r := range rounds {
		n := b.N / rounds
		if r == rounds-1 {
			n = b.N - n*(rounds-1)
		}
		direct.Run(b, clients, n)
		proxy.Run(b, clients, n)
		if floor != nil {
			floor.Run(b, clients, n)
		}
	}
	ds, ps := direct.Summary(), proxy.Summary()
	b.ReportMetric(float64(proxy.Elapsed.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(ds.Rate, "direct-req/s")
	b.ReportMetric(ps.Rate, "proxy-req/s")
	b.ReportMetric(ps.Rate/ds.Rate, "ratio")
	b.ReportMetric(ds.P50, "direct-p50-µs")
	b.ReportMetric(ps.P50, "p50-µs")
	b.ReportMetric(ps.P50-ds.P50, "p50-added-µs")
	b.ReportMetric(ds.P99, "direct-p99-µs")
	b.ReportMetric(ps.P99, "p99-µs")
	if floor != nil {
		fs := floor.Summary()
		b.ReportMetric(fs.Rate/ds.Rate, "floor-ratio")
		b.ReportMetric(fs.P50-ds.P50, "floor-p50-added-µs")
		b.ReportMetric(fs.P99, "floor-p99-µs")
	}
}
