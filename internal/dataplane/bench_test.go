package dataplane

import (
	"context"
	"io"
	"net/http"
	"testing"
)

// BenchmarkAcquireRelease is the router's share of the warm path: resolve,
// balance, take and give back a slot, count the load. Must be 0 allocs/op.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, bal := range []string{BalancerRoundRobin, BalancerRandom, BalancerLeastInFlight, BalancerPowerOfTwo} {
		b.Run(bal, func(b *testing.B) {
			rt := testRouter(b, bal, 10000)
			rt.applyRoutes(upd(1, true, route("f", 1, 1000,
				1000, ep("s1", "a:1"), ep("s2", "a:2"), ep("s3", "a:3"), ep("s4", "a:4"))))
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					fn, _, _, _ := rt.resolve("f", "/")
					var c call
					rt.begin(fn, &c)
					if err := rt.acquire(ctx, &c); err != nil {
						b.Fatal(err)
					}
					rt.end(&c)
				}
			})
		})
	}
}

// BenchmarkPick measures one policy decision over 16 endpoints.
func BenchmarkPick(b *testing.B) {
	loads := make([]int32, 16)
	for i := range loads {
		loads[i] = int32(i % 4)
	}
	eps := endpoints(loads...)
	for _, bal := range []string{BalancerRoundRobin, BalancerRandom, BalancerLeastInFlight, BalancerPowerOfTwo} {
		pol, _ := policyByName(bal)
		b.Run(bal, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if pol.pick(eps, 4, uint64(i), globalRand{}) < 0 {
					b.Fatal("no pick")
				}
			}
		})
	}
}

// BenchmarkWarmPath is a full HTTP/1.1 round trip through the data plane to
// an in-process function, with 8 closed-loop clients per core; "direct" is
// the same client straight to the function, for the ratio.
func BenchmarkWarmPath(b *testing.B) {
	_, addr := sandbox(b, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	})
	cp := newFakeCP(b, route("f", 1, 10000, 10000, ep("s1", addr)))
	d := startDP(b, cp, nil)
	run := func(b *testing.B, target, host string) {
		c := newClient(b)
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			req, _ := http.NewRequest("GET", "http://"+target+"/", nil)
			req.Host = host
			for pb.Next() {
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
	b.Run("direct", func(b *testing.B) { run(b, addr, "f") })
	b.Run("proxy", func(b *testing.B) { run(b, d.Addr(), "f") })
}
