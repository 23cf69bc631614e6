package containerd

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/stats"
)

// BenchmarkCreateDelete measures one examples/hello sandbox from Create
// until its port answers, and its Delete, one at a time.
func BenchmarkCreateDelete(b *testing.B) {
	img := helloImage(b)
	rt := newRuntime(b, testConfig(b))
	ctx := context.Background()
	var create, del []time.Duration
	n := 0
	for b.Loop() {
		n++
		id := "bench-" + strconv.Itoa(n)
		start := time.Now()
		if _, err := rt.Create(ctx, sandbox.Spec{ID: id, Function: "hello", Image: img}); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := rt.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		create = append(create, mid.Sub(start))
		del = append(del, time.Since(mid))
	}
	p := stats.Percentiles(create, 50, 99)
	b.ReportMetric(ms(p[0]), "create-p50-ms")
	b.ReportMetric(ms(p[1]), "create-p99-ms")
	b.ReportMetric(ms(stats.Percentiles(del, 50)[0]), "delete-p50-ms")
}

// BenchmarkSustained keeps C creations in flight (each followed by its
// sandbox's Delete, so the node stays at C sandboxes or fewer), for the
// creation cap: creations/s and creation latency against concurrency.
// BATON_BENCH_CONC lists the concurrencies (see benchConcs).
func BenchmarkSustained(b *testing.B) {
	img := helloImage(b)
	rt := newRuntime(b, testConfig(b))
	for _, c := range benchConcs(b) {
		b.Run(fmt.Sprintf("conc=%d", c), func(b *testing.B) {
			var next atomic.Int64
			var mu sync.Mutex
			var lat []time.Duration
			ctx := context.Background()
			start := time.Now()
			var wg sync.WaitGroup
			for range c {
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						id := fmt.Sprintf("sus-%d-%d", c, i)
						t0 := time.Now()
						_, err := rt.Create(ctx, sandbox.Spec{ID: id, Function: "hello", Image: img})
						d := time.Since(t0)
						if err != nil {
							b.Error(err)
							return
						}
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
						if err := rt.Delete(ctx, id); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			el := time.Since(start)
			b.ReportMetric(float64(len(lat))/el.Seconds(), "creations/s")
			p := stats.Percentiles(lat, 50, 99)
			b.ReportMetric(ms(p[0]), "create-p50-ms")
			b.ReportMetric(ms(p[1]), "create-p99-ms")
		})
	}
}

// BenchmarkBurst creates b.N sandboxes with C creations in flight and no
// deletions meanwhile (a burst of cold starts), then deletes them all with
// C deletions in flight: creations/s and deletions/s against concurrency.
func BenchmarkBurst(b *testing.B) {
	img := helloImage(b)
	rt := newRuntime(b, testConfig(b))
	for _, c := range benchConcs(b) {
		b.Run(fmt.Sprintf("conc=%d", c), func(b *testing.B) {
			ctx := context.Background()
			var lat []time.Duration
			var mu sync.Mutex
			run := func(f func(i int) error) time.Duration {
				var next atomic.Int64
				var wg sync.WaitGroup
				start := time.Now()
				for range c {
					wg.Go(func() {
						for {
							i := int(next.Add(1))
							if i > b.N {
								return
							}
							if err := f(i); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				return time.Since(start)
			}
			id := func(i int) string { return fmt.Sprintf("burst-%d-%d", c, i) }
			created := run(func(i int) error {
				t0 := time.Now()
				_, err := rt.Create(ctx, sandbox.Spec{ID: id(i), Function: "hello", Image: img})
				mu.Lock()
				lat = append(lat, time.Since(t0))
				mu.Unlock()
				return err
			})
			deleted := run(func(i int) error { return rt.Delete(ctx, id(i)) })
			b.ReportMetric(float64(b.N)/created.Seconds(), "creations/s")
			b.ReportMetric(float64(b.N)/deleted.Seconds(), "deletions/s")
			p := stats.Percentiles(lat, 50, 99)
			b.ReportMetric(ms(p[0]), "create-p50-ms")
			b.ReportMetric(ms(p[1]), "create-p99-ms")
		})
	}
}

// benchConcs is BATON_BENCH_CONC (comma-separated concurrencies), default
// DefaultMaxCreations alone (BENCHMARKS.md has the sweep 1,2,4,6,8,12,16).
func benchConcs(b *testing.B) []int {
	v := os.Getenv("BATON_BENCH_CONC")
	if v == "" {
		return []int{DefaultMaxCreations}
	}
	var concs []int
	for _, f := range splitComma(v) {
		c, err := strconv.Atoi(f)
		if err != nil {
			b.Fatal(err)
		}
		concs = append(concs, c)
	}
	return concs
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
