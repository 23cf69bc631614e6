package dataplane

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/benchloop"
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

// BenchmarkWarmPath measures HTTP/1.1 keep-alive round trips through the
// data plane to an in-process net/http function, against the same clients
// calling the function directly, in the same run: the two alternate in
// rounds, so that a change in the machine's load (it is shared) hits both.
//
//   - clients=16: 16 closed-loop clients. ratio is the throughput through
//     the proxy divided by the throughput direct (issue 3: at least 0.65);
//     p99-µs the proxy's 99th percentile latency (at most 1,500 µs); ns/op
//     is per proxied request; B/op and allocs/op count both phases, clients
//     and function included, per proxied request (the data plane's own
//     share is 0: TestWarmPathAllocs, BenchmarkWarmPathRaw).
//   - clients=1: one client. p50-added-µs is the proxy's median latency minus
//     the direct one (at most 40 µs).
//
// This is the engine's benchmark; the user's view, with the data plane,
// the function and the clients in processes of their own, is e2e's
// BenchmarkWarmPathProcess.
//
// cpu-ratio is the CPU time the process spends per request direct divided
// by that through the proxy. With 16 clients both phases keep the two
// cores busy, so it is what ratio would be if the machine were not shared:
// it does not depend on how much CPU other processes leave (on a loaded
// machine ratio swings by ±0.1 from run to run, cpu-ratio much less).
func BenchmarkWarmPath(b *testing.B) {
	_, addr := sandbox(b, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	})
	cp := newFakeCP(b, route("f", 1, 10000, 10000, ep("s1", addr)))
	// No busy-polling: with the clients and the function in its process,
	// a polling connection only takes a CPU from them (it pays off when
	// they are other processes: e2e's BenchmarkWarmPathProcess).
	d := startDP(b, cp, func(c *Config) { c.BusyPoll = -1 })
	direct, proxy := loop(b, addr), loop(b, d.Addr())
	for _, clients := range []int{16, 1} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			b.ReportAllocs()
			dr, pr := *direct, *proxy // fresh figures, same clients
			benchloop.Compare(b, &dr, &pr, nil, clients)
			b.ReportMetric(dr.CPUUsed[0].Seconds()/pr.CPUUsed[0].Seconds(), "cpu-ratio")
		})
	}
}

// loop is closed-loop clients of function f at addr, with their own HTTP
// client, measuring this process's CPU (clients and function included).
func loop(b *testing.B, addr string) *benchloop.Loop {
	c := newClient(b)
	return &benchloop.Loop{Client: c,
		NewRequest: func() *http.Request {
			req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			req.Host = "f"
			return req
		},
		CPU: func() []time.Duration { return []time.Duration{benchloop.SelfCPU()} },
	}
}

// BenchmarkWarmPathRaw is the data plane alone: raw-socket clients and a
// raw-socket sandbox that allocate nothing and parse almost nothing, so
// what is measured is the engine (and the loopback it cannot avoid).
func BenchmarkWarmPathRaw(b *testing.B) {
	answer := []byte("HTTP/1.1 200 OK\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
	addr := rawUpstream(b, func(c net.Conn, br *bufio.Reader) {
		for skipHead(br) {
			if _, err := c.Write(answer); err != nil {
				return
			}
		}
	})
	cp := newFakeCP(b, route("f", 1, 10000, 10000, ep("s1", addr)))
	d := startDP(b, cp, func(c *Config) { c.ReportInterval = time.Hour })
	req := []byte("GET / HTTP/1.1\r\nHost: f\r\nUser-Agent: bench\r\n\r\n")
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", d.Addr())
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for pb.Next() {
			c.Write(req)
			if _, ok := readRawAnswer(br); !ok {
				b.Error("bad answer")
				return
			}
		}
	})
}
