package dataplane

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
)

// echo answers with what it received: method, Host, request URI, and the
// headers the tests look for.
func echo(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	fmt.Fprintf(w, "%s %s %s body=%d x-test=%s proxy-auth=%s keep=%s",
		r.Method, r.Host, r.URL.RequestURI(), len(b), r.Header.Get("X-Test"),
		r.Header.Get("Proxy-Authorization"), r.Header.Get("X-Hop"))
}

type result struct {
	status int
	body   string
	header http.Header
	err    error
}

func do(c *http.Client, req *http.Request) result {
	resp, err := c.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, body: string(b), header: resp.Header, err: err}
}

func get(t testing.TB, c *http.Client, d *DataPlane, host, path string) result {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+d.Addr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	return do(c, req)
}

func TestHostRouting(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	c := newClient(t)

	req, _ := http.NewRequest("GET", "http://"+d.Addr()+"/a/b?x=1&y=2", nil)
	req.Host = "Echo:8080"
	req.Header.Set("X-Test", "kept")
	req.Header.Set("Proxy-Authorization", "secret")
	req.Header.Set("X-Hop", "named in Connection")
	req.Header.Set("Connection", "X-Hop")
	r := do(c, req)
	if r.err != nil || r.status != 200 {
		t.Fatalf("got %d %q %v", r.status, r.body, r.err)
	}
	want := "GET echo /a/b?x=1&y=2 body=0 x-test=kept proxy-auth= keep="
	if r.body != want {
		t.Errorf("upstream saw %q, want %q", r.body, want)
	}
	if got := r.header.Get(headerColdStart); got != "false" {
		t.Errorf("%s = %q, want false", headerColdStart, got)
	}
	st := r.header.Get(headerServerTiming)
	if !strings.HasPrefix(st, "queue;dur=") || !strings.Contains(st, ", proxy;dur=") || strings.Contains(st, "create") {
		t.Errorf("Server-Timing = %q", st)
	}
}

func TestPathRouting(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	c := newClient(t)
	for _, tc := range []struct{ path, want string }{
		{"/fn/echo/a/b?x=1", "GET echo /a/b?x=1 "},
		{"/fn/echo", "GET echo / "},
		{"/fn/echo/", "GET echo / "},
		{"/fn/ECHO/up?q=%20s", "GET echo /up?q=%20s "},
		{"/fn/echo/sp%20ace/x", "GET echo /sp%20ace/x "},
		{"/fn/echo/a%2Fb?c=d", "GET echo /a%2Fb?c=d "},
	} {
		r := get(t, c, d, "", tc.path)
		if r.err != nil || r.status != 200 || !strings.HasPrefix(r.body, tc.want) {
			t.Errorf("GET %s: %d %q %v, want prefix %q", tc.path, r.status, r.body, r.err, tc.want)
		}
	}
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t)
	d := startDP(t, cp, nil)
	c := newClient(t)
	for _, tc := range []struct{ host, path, want string }{
		{"foo", "/", "function \"foo\" not found\n"},
		{"foo:8080", "/x", "function \"foo\" not found\n"},
		{"", "/fn/bar/x", "function \"bar\" not found\n"},
	} {
		r := get(t, c, d, tc.host, tc.path)
		if r.status != 404 || r.body != tc.want {
			t.Errorf("host %q path %q: %d %q, want 404 %q", tc.host, tc.path, r.status, r.body, tc.want)
		}
	}
}

// hideLen hides a reader's length so the client streams it chunked.
type hideLen struct{ io.Reader }

func TestBodyTooLarge(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 10, 5000, ep("s1", addr)))
	d := startDP(t, cp, func(c *Config) { c.MaxBodyBytes = 1000 })
	c := newClient(t)
	post := func(body io.Reader) result {
		req, _ := http.NewRequest("POST", "http://"+d.Addr()+"/", body)
		req.Host = "echo"
		return do(c, req)
	}
	if r := post(strings.NewReader(strings.Repeat("x", 1000))); r.status != 200 || !strings.Contains(r.body, "body=1000") {
		t.Errorf("1000 bytes: %d %q", r.status, r.body)
	}
	if r := post(strings.NewReader(strings.Repeat("x", 1001))); r.status != 413 {
		t.Errorf("1001 bytes with Content-Length: %d %q, want 413", r.status, r.body)
	}
	if r := post(hideLen{strings.NewReader(strings.Repeat("x", 500))}); r.status != 200 || !strings.Contains(r.body, "body=500") {
		t.Errorf("500 bytes chunked: %d %q", r.status, r.body)
	}
	if r := post(hideLen{strings.NewReader(strings.Repeat("x", 100000))}); r.status != 413 {
		t.Errorf("100000 bytes chunked: %d %q, want 413", r.status, r.body)
	}
}

func TestQueueFull(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t, route("cold", 1, 1, 10000))
	d := startDP(t, cp, func(c *Config) { c.QueueLimit = 2 })
	c := newClient(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx1, cancel1 := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, ctx := range []context.Context{ctx1, ctx} {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+d.Addr()+"/", nil)
		req.Host = "cold"
		wg.Go(func() { do(c, req) })
	}
	waitQueued(t, d, "cold", 2)
	r := get(t, c, d, "cold", "/")
	if want := "function \"cold\": queue full (2 waiting)\n"; r.status != 503 || r.body != want {
		t.Errorf("third request: %d %q, want 503 %q", r.status, r.body, want)
	}
	// A client that goes away leaves the queue.
	cancel1()
	waitQueued(t, d, "cold", 1)
	cancel()
	waitQueued(t, d, "cold", 0)
	wg.Wait()
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	_, slow := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	})
	cp := newFakeCP(t, route("nosandbox", 1, 1, 200), route("slow", 1, 1, 200, ep("s1", slow)))
	d := startDP(t, cp, nil)
	c := newClient(t)

	start := time.Now()
	r := get(t, c, d, "nosandbox", "/")
	if el := time.Since(start); el < 200*time.Millisecond || el > 2*time.Second {
		t.Errorf("queue timeout after %v, want ~200ms", el)
	}
	if want := "function \"nosandbox\": waited 200ms for a sandbox, none became available\n"; r.status != 504 || r.body != want {
		t.Errorf("no sandbox: %d %q, want 504 %q", r.status, r.body, want)
	}
	if st := r.header.Get(headerServerTiming); !strings.HasPrefix(st, "queue;dur=2") {
		t.Errorf("Server-Timing on queue timeout = %q", st)
	}

	r = get(t, c, d, "slow", "/")
	if want := "function \"slow\" did not answer within 200ms\n"; r.status != 504 || r.body != want {
		t.Errorf("slow sandbox: %d %q, want 504 %q", r.status, r.body, want)
	}
	if s, _ := d.Stats("slow"); s.Endpoints[0].InFlight != 0 || s.InFlight != 0 {
		t.Errorf("slot not released after timeout: %+v", s)
	}
}

// counting is a sandbox that records the most requests it ever held at once.
type counting struct {
	cur, max, total atomic.Int32
}

func (s *counting) handler(w http.ResponseWriter, r *http.Request) {
	n := s.cur.Add(1)
	for {
		m := s.max.Load()
		if n <= m || s.max.CompareAndSwap(m, n) {
			break
		}
	}
	s.total.Add(1)
	time.Sleep(2 * time.Millisecond)
	s.cur.Add(-1)
	io.WriteString(w, "ok")
}

func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	for _, bal := range []string{BalancerRoundRobin, BalancerRandom, BalancerLeastInFlight, BalancerPowerOfTwo} {
		t.Run(bal, func(t *testing.T) {
			t.Parallel()
			var s1, s2 counting
			_, a1 := sandbox(t, s1.handler)
			_, a2 := sandbox(t, s2.handler)
			cp := newFakeCP(t, route("f", 1, 2, 10000, ep("s1", a1), ep("s2", a2)))
			d := startDP(t, cp, func(c *Config) { c.Balancer = bal })
			c := newClient(t)
			var wg sync.WaitGroup
			var bad atomic.Int32
			for i := 0; i < 20; i++ {
				wg.Go(func() {
					for j := 0; j < 10; j++ {
						if r := get(t, c, d, "f", "/"); r.status != 200 {
							bad.Add(1)
						}
					}
				})
			}
			wg.Wait()
			if bad.Load() != 0 {
				t.Errorf("%d requests failed", bad.Load())
			}
			if s1.max.Load() > 2 || s2.max.Load() > 2 {
				t.Errorf("max concurrent per sandbox: %d, %d; limit 2", s1.max.Load(), s2.max.Load())
			}
			if s1.total.Load()+s2.total.Load() != 200 || s1.total.Load() == 0 || s2.total.Load() == 0 {
				t.Errorf("requests per sandbox: %d, %d", s1.total.Load(), s2.total.Load())
			}
		})
	}
}

func TestColdStart(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("cold", 1, 1, 10000))
	d := startDP(t, cp, nil)
	c := newClient(t)

	done := make(chan result, 1)
	go func() { done <- get(t, c, d, "cold", "/x") }()
	eventually(t, 5*time.Second, "scale request", func() bool { return len(cp.scaleRequests("cold")) > 0 })
	time.Sleep(50 * time.Millisecond)
	sr := cp.scaleRequests("cold")
	if len(sr) != 1 || sr[0].Queued != 1 || sr[0].InFlight != 0 || sr[0].Epoch != d.Epoch() {
		t.Fatalf("scale requests: %v", sr)
	}
	e := ep("s1", addr)
	e.CreateMicros = 40000
	cp.put(route("cold", 2, 1, 10000, e))
	r := <-done
	if r.status != 200 || r.header.Get(headerColdStart) != "true" {
		t.Fatalf("cold request: %d %q cold=%q", r.status, r.body, r.header.Get(headerColdStart))
	}
	if st := r.header.Get(headerServerTiming); !strings.Contains(st, ", create;dur=40.000, proxy;dur=") {
		t.Errorf("Server-Timing = %q", st)
	}
	r = get(t, c, d, "cold", "/x")
	if r.status != 200 || r.header.Get(headerColdStart) != "false" || strings.Contains(r.header.Get(headerServerTiming), "create") {
		t.Errorf("warm request: %d cold=%q timing=%q", r.status, r.header.Get(headerColdStart), r.header.Get(headerServerTiming))
	}
	if n := len(cp.scaleRequests("cold")); n != 1 {
		t.Errorf("%d scale requests, want 1", n)
	}
}

func TestScaleRequestCoalescing(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t, route("cold", 1, 1, 10000))
	d := startDP(t, cp, nil)
	c := newClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	start := func(n int) {
		for i := 0; i < n; i++ {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+d.Addr()+"/", nil)
			req.Host = "cold"
			wg.Go(func() { do(c, req) })
		}
	}
	// Queue lengths 1, 2, 3: one request at 1 and one more at 2 (doubled).
	start(1)
	waitQueued(t, d, "cold", 1)
	start(1)
	waitQueued(t, d, "cold", 2)
	start(1)
	waitQueued(t, d, "cold", 3)
	eventually(t, 5*time.Second, "2 scale requests", func() bool { return len(cp.scaleRequests("cold")) == 2 })
	time.Sleep(50 * time.Millisecond)
	if sr := cp.scaleRequests("cold"); len(sr) != 2 {
		t.Errorf("scale requests at queue 1..3: %v", sr)
	}
	start(1) // 4 = 2×2
	waitQueued(t, d, "cold", 4)
	eventually(t, 5*time.Second, "3rd scale request", func() bool { return len(cp.scaleRequests("cold")) == 3 })
}

func TestRouteError(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("bad", 1, 1, 10000))
	d := startDP(t, cp, nil)
	c := newClient(t)

	waiting := make(chan result, 1)
	go func() { waiting <- get(t, c, d, "bad", "/") }()
	waitQueued(t, d, "bad", 1)
	failed := route("bad", 2, 1, 10000)
	failed.Error = "image not found"
	cp.put(failed)
	want := "function \"bad\" failed to start: image not found\n"
	if r := <-waiting; r.status != 502 || r.body != want {
		t.Errorf("waiting request: %d %q, want 502 %q", r.status, r.body, want)
	}
	if r := get(t, c, d, "bad", "/"); r.status != 502 || r.body != want {
		t.Errorf("new request: %d %q, want 502 %q", r.status, r.body, want)
	}
	n := len(cp.scaleRequests("bad"))

	// The error is cleared: requests queue and ask for a sandbox again.
	cp.put(route("bad", 3, 1, 10000))
	waitEndpoints(t, d, "bad", 0)
	eventually(t, 5*time.Second, "error cleared", func() bool { s, _ := d.Stats("bad"); return s.Error == "" })
	go func() { waiting <- get(t, c, d, "bad", "/") }()
	waitQueued(t, d, "bad", 1)
	eventually(t, 5*time.Second, "new scale request", func() bool { return len(cp.scaleRequests("bad")) == n+1 })
	cp.put(route("bad", 4, 1, 10000, ep("s1", addr)))
	if r := <-waiting; r.status != 200 {
		t.Errorf("after recovery: %d %q", r.status, r.body)
	}
}

func TestSnapshotRemovesFunction(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("gone", 1, 1, 10000), route("stays", 1, 1, 10000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	c := newClient(t)

	waiting := make(chan result, 1)
	go func() { waiting <- get(t, c, d, "gone", "/") }()
	waitQueued(t, d, "gone", 1)
	cp.push(&controlplanev1.RouteUpdate{Full: true, Functions: []*controlplanev1.FunctionRoute{route("stays", 2, 1, 10000, ep("s1", addr))}})
	if r := <-waiting; r.status != 404 || r.body != "function \"gone\" deleted\n" {
		t.Errorf("waiting request: %d %q", r.status, r.body)
	}
	if r := get(t, c, d, "gone", "/"); r.status != 404 || r.body != "function \"gone\" not found\n" {
		t.Errorf("new request: %d %q", r.status, r.body)
	}
	if r := get(t, c, d, "stays", "/"); r.status != 200 {
		t.Errorf("other function: %d %q", r.status, r.body)
	}
	if fs := d.Functions(); len(fs) != 1 || fs[0].Name != "stays" || fs[0].Version != 2 {
		t.Errorf("functions: %+v", fs)
	}
}

func TestStaleUpdatesOverSession(t *testing.T) {
	t.Parallel()
	cp := newFakeCP(t, route("f", 5, 1, 10000))
	d := startDP(t, cp, nil)
	epoch := d.Epoch()
	cp.push(&controlplanev1.RouteUpdate{Epoch: epoch - 1, Full: true}) // older epoch: would delete f
	cp.push(&controlplanev1.RouteUpdate{Epoch: epoch, Functions: []*controlplanev1.FunctionRoute{route("f", 4, 7, 10000)}})
	cp.push(&controlplanev1.RouteUpdate{Epoch: epoch, Functions: []*controlplanev1.FunctionRoute{route("f", 6, 3, 10000)}})
	eventually(t, 5*time.Second, "version 6", func() bool { s, _ := d.Stats("f"); return s.Version == 6 })
	if s, ok := d.Stats("f"); !ok || s.Concurrency != 3 {
		t.Errorf("f: %+v", s)
	}
}

func TestReconnect(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("f", 1, 10, 10000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	c := newClient(t)
	first := d.Epoch()

	cp.stop()
	// Warm traffic does not depend on the control plane.
	for i := 0; i < 5; i++ {
		if r := get(t, c, d, "f", "/"); r.status != 200 {
			t.Fatalf("during outage: %d %q", r.status, r.body)
		}
	}
	cp.put(route("g", 1, 10, 10000, ep("s2", addr))) // in the next snapshot
	cp.start()
	eventually(t, 5*time.Second, "new session", func() bool { return d.Epoch() > first })
	hellos := cp.helloList()
	if len(hellos) != 2 || hellos[0].LastEpoch != 0 || hellos[1].LastEpoch != first ||
		hellos[1].DataPlaneId != d.Config().ID || hellos[1].Address != d.Addr() {
		t.Errorf("hellos: %v", hellos)
	}
	for _, name := range []string{"f", "g"} {
		if r := get(t, c, d, name, "/"); r.status != 200 {
			t.Errorf("%s after reconnect: %d %q", name, r.status, r.body)
		}
	}
}

func TestLoadReport(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	_, addr := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "ok")
	})
	cp := newFakeCP(t, route("f", 1, 10, 10000, ep("s1", addr)), route("idle", 1, 10, 10000, ep("s2", addr)))
	d := startDP(t, cp, nil)
	c := newClient(t)

	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Go(func() { get(t, c, d, "f", "/") })
	}
	eventually(t, 5*time.Second, "3 in flight", func() bool { s, _ := d.Stats("f"); return s.InFlight == 3 })
	// A whole interval with 3 in flight and no arrivals.
	eventually(t, 5*time.Second, "steady report", func() bool {
		for _, l := range cp.loadsOf("f") {
			if l.Arrivals == 0 && l.InFlight == 3 && l.Queued == 0 {
				if l.Concurrency < 2.99 || l.Concurrency > 3.01 {
					t.Errorf("concurrency %v with 3 in flight, want 3", l.Concurrency)
				}
				return true
			}
		}
		return false
	})
	var arrivals uint64
	for _, l := range cp.loadsOf("f") {
		arrivals += l.Arrivals
	}
	if arrivals != 3 {
		t.Errorf("arrivals reported: %d, want 3", arrivals)
	}
	close(release)
	wg.Wait()
	zero := func(l *controlplanev1.FunctionLoad) bool {
		return l.InFlight == 0 && l.Queued == 0 && l.Arrivals == 0 && l.Concurrency == 0
	}
	eventually(t, 5*time.Second, "zero report", func() bool {
		ls := cp.loadsOf("f")
		return len(ls) > 0 && zero(ls[len(ls)-1])
	})
	n := len(cp.loadsOf("f"))
	time.Sleep(100 * time.Millisecond) // 5 intervals
	ls := cp.loadsOf("f")
	if len(ls) != n {
		t.Errorf("reports after the zero one: %v", ls[n:])
	}
	zeros := 0
	for _, l := range ls {
		if zero(l) {
			zeros++
		}
	}
	if zeros != 1 {
		t.Errorf("%d all-zero reports, want 1", zeros)
	}
	if ls := cp.loadsOf("idle"); len(ls) != 0 {
		t.Errorf("idle function reported: %v", ls)
	}
}

func TestH2C(t *testing.T) {
	t.Parallel()
	_, addr := sandbox(t, echo)
	cp := newFakeCP(t, route("echo", 1, 100, 5000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}

	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", "http://"+d.Addr()+"/h2?i=1", strings.NewReader("abc"))
			req.Host = "echo"
			resp, err := c.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.ProtoMajor != 2 || resp.StatusCode != 200 || !strings.HasPrefix(string(b), "POST echo /h2?i=1 body=3") {
				t.Errorf("h2c: proto %s status %d body %q", resp.Proto, resp.StatusCode, b)
			}
			if resp.Header.Get(headerColdStart) != "false" {
				t.Errorf("h2c: no %s header", headerColdStart)
			}
		})
	}
	wg.Wait()
}

func TestRetryDeadEndpoint(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	_, live := sandbox(t, echo)
	cp := newFakeCP(t,
		route("f", 1, 10, 5000, ep("dead-1", dead), ep("live-1", live)),
		route("g", 1, 10, 5000, ep("dead-2", dead)))
	d := startDP(t, cp, nil)
	c := newClient(t)
	for i := 0; i < 10; i++ {
		if r := get(t, c, d, "f", "/"); r.status != 200 {
			t.Fatalf("request %d: %d %q", i, r.status, r.body)
		}
	}
	// The refused dial took dead-1 out of routing without the control
	// plane's word.
	if s, _ := d.Stats("f"); len(s.Endpoints) != 1 || s.Endpoints[0].SandboxID != "live-1" {
		t.Errorf("f routes to %+v, want live-1 only", s.Endpoints)
	}

	// g's only sandbox is dead: the request waits for another, as a cold
	// start, and asks for one.
	res := make(chan result, 1)
	go func() { res <- get(t, c, d, "g", "/") }()
	waitQueued(t, d, "g", 1)
	eventually(t, 5*time.Second, "a scale request for g", func() bool { return len(cp.scaleRequests("g")) > 0 })
	// The control plane has not heard of the death yet: an update that
	// still lists dead-2 does not bring it back.
	cp.put(route("g", 2, 10, 5000, ep("dead-2", dead)))
	waitQueued(t, d, "g", 1)
	if s, _ := d.Stats("g"); len(s.Endpoints) != 0 {
		t.Errorf("g routes to %+v after an update listing the dead sandbox", s.Endpoints)
	}
	cp.put(route("g", 3, 10, 5000, ep("dead-2", dead), ep("live-2", live)))
	if r := <-res; r.status != 200 || r.header.Get(headerColdStart) != "true" {
		t.Errorf("g after its sandbox died: %d %q cold=%q", r.status, r.body, r.header.Get(headerColdStart))
	}
	for _, name := range []string{"f", "g"} {
		s, _ := d.Stats(name)
		for _, e := range s.Endpoints {
			if e.InFlight != 0 {
				t.Errorf("%s: slot leaked on %s", name, e.SandboxID)
			}
		}
	}
}

// dropper stands in for a sandbox that dies under each request: it reads
// the request head and resets the connection without answering. It counts
// the requests it got.
func dropper(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 4096)
				var got []byte
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				for !strings.Contains(string(got), "\r\n\r\n") {
					k, err := c.Read(buf)
					if err != nil {
						c.Close()
						return
					}
					got = append(got, buf[:k]...)
				}
				n.Add(1)
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}()
		}
	}()
	return ln.Addr().String(), &n
}

// TestResendAfterSandboxDied checks the retry policy: a request a sandbox
// took and dropped without answering goes to another sandbox when its
// function's policy allows (GET, or any method under ALWAYS) and its body
// was held (up to maxHeldBody), over both engines, with its body; otherwise
// it gets 502 at once.
func TestResendAfterSandboxDied(t *testing.T) {
	t.Parallel()
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h2 := &http.Transport{Protocols: &p}
	t.Cleanup(h2.CloseIdleConnections)
	clients := map[string]*http.Client{"h1": newClient(t), "h2c": {Transport: h2}}
	_, live := sandbox(t, echo)
	const (
		def    = controlplanev1.RetryPolicy_RETRY_POLICY_UNSPECIFIED
		always = controlplanev1.RetryPolicy_RETRY_POLICY_ALWAYS
		never  = controlplanev1.RetryPolicy_RETRY_POLICY_NEVER
	)
	cases := []struct {
		name   string
		policy controlplanev1.RetryPolicy
		method string
		key    bool // sends an Idempotency-Key
		size   int  // of the body
		resend bool
	}{
		{"get-default", def, "GET", false, 5, true},
		{"post-default", def, "POST", false, 5, false},
		{"post-key", def, "POST", true, 5, true},
		{"post-always", always, "POST", false, 5, true},
		{"get-never", never, "GET", false, 5, false},
		// Bodies up to maxHeldBody are held by both engines, larger
		// ones streamed and never sent twice.
		{"post-always-20k", always, "POST", false, 20 << 10, true},
		{"post-key-held", def, "POST", true, maxHeldBody, true},
		{"post-always-over", always, "POST", false, maxHeldBody + 1, false},
	}
	for proto, c := range clients {
		for i, tc := range cases {
			t.Run(proto+"/"+tc.name, func(t *testing.T) {
				drop, dropped := dropper(t)
				r := route("f", 1, 10, 5000, ep("drop", drop))
				r.Retry = tc.policy
				cp := newFakeCP(t, r)
				d := startDP(t, cp, nil)
				res := make(chan result, 1)
				go func() {
					req, _ := http.NewRequest(tc.method, "http://"+d.Addr()+"/x", strings.NewReader(strings.Repeat("h", tc.size)))
					req.Host = "f"
					if tc.key {
						req.Header.Set("Idempotency-Key", fmt.Sprint(i))
					}
					res <- do(c, req)
				}()
				if !tc.resend {
					r := <-res
					if r.status != 502 || !strings.Contains(r.body, "sandbox drop") {
						t.Errorf("got %d %q, want 502 naming the sandbox", r.status, r.body)
					}
					if n := dropped.Load(); n != 1 {
						t.Errorf("the sandbox got the request %d times, want once", n)
					}
					return
				}
				waitQueued(t, d, "f", 1)
				r2 := route("f", 2, 10, 5000, ep("drop", drop), ep("live", live))
				r2.Retry = tc.policy
				cp.put(r2)
				got := <-res
				want := fmt.Sprintf("%s f /x body=%d ", tc.method, tc.size)
				if got.status != 200 || !strings.HasPrefix(got.body, want) {
					t.Errorf("got %d %q, want 200 %q...", got.status, got.body, want)
				}
				if n := dropped.Load(); n < 1 {
					t.Errorf("the dying sandbox never got the request")
				}
				if s, _ := d.Stats("f"); len(s.Endpoints) != 1 || s.Endpoints[0].InFlight != 0 {
					t.Errorf("after the resend f routes to %+v, want live alone with no slot held", s.Endpoints)
				}
			})
		}
	}
}

// TestEvictedSandboxComesBack: a sandbox the data plane took out of
// routing (a fresh connection dropped) while the control plane still lists
// it serves again once its mark expires, without a route update: here the
// request that found it dropping waits for it and gets its answer.
func TestEvictedSandboxComesBack(t *testing.T) {
	t.Parallel()
	var conns atomic.Int32
	addr := rawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		if conns.Add(1) == 1 { // the first connection drops its request
			http.ReadRequest(br)
			c.(*net.TCPConn).SetLinger(0)
			return
		}
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nback")
		}
	})
	cp := newFakeCP(t, route("f", 1, 10, 10000, ep("s1", addr)))
	d := startDP(t, cp, nil)
	d.rt.deadTTL = 300 * time.Millisecond
	start := time.Now()
	r := get(t, newClient(t), d, "f", "/")
	if r.status != 200 || r.body != "back" {
		t.Fatalf("got %d %q %v, want 200 back once the mark expired", r.status, r.body, r.err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("answered after %v, before the mark expired: was the sandbox taken out?", took)
	}
	if s, _ := d.Stats("f"); len(s.Endpoints) != 1 {
		t.Errorf("after the mark expired f routes to %+v, want s1", s.Endpoints)
	}
}

// A client that sends a head with a body and then stalls. A body of at
// most maxHeldBody is read before the request counts or takes a slot,
// whatever the retry policy (a plain POST here): the function's one slot
// stays free for others, and the stalled request is answered 408 when the
// function's timeout passes, the connection closed. A larger body is
// streamed: the request holds the slot and is answered 504 at the timeout.
// Either way the slot is free again afterwards. Over h2c (its body read
// bounded by a deadline) and HTTP/1.1; 10 bytes fit the HTTP/1.1 engine's
// reader with the head, 64 KiB does not.
func TestStalledBody(t *testing.T) {
	t.Parallel()
	_, live := sandbox(t, echo)
	cp := newFakeCP(t, route("f", 1, 1, 400, ep("s1", live)))
	d := startDP(t, cp, nil)
	for _, h2 := range []bool{false, true} {
		for _, size := range []int64{10, maxHeldBody, maxHeldBody + 1} {
			c := newClient(t)
			c.Timeout = 5 * time.Second
			if h2 {
				var p http.Protocols
				p.SetUnencryptedHTTP2(true)
				c.Transport.(*http.Transport).Protocols = &p
			}
			held := size <= maxHeldBody
			name := fmt.Sprintf("h2=%v size=%d", h2, size)
			pr, pw := io.Pipe()
			t.Cleanup(func() { pw.Close() })
			go pw.Write([]byte("0123456789")[:min(size/2, 10)]) // a start, then nothing
			req, _ := http.NewRequest("POST", "http://"+d.Addr()+"/", pr)
			req.Host, req.ContentLength = "f", size
			got := make(chan result, 1)
			go func() { got <- do(c, req) }()
			if held {
				// While the body stalls, the request takes no slot and
				// the one slot serves others.
				time.Sleep(50 * time.Millisecond)
				if s, _ := d.Stats("f"); s.InFlight != 0 {
					t.Errorf("%s: %d in flight while the body stalls, want 0", name, s.InFlight)
				}
				if r := get(t, newClient(t), d, "f", "/other"); r.status != 200 {
					t.Errorf("%s: another request while the body stalls: %d %q %v, want 200", name, r.status, r.body, r.err)
				}
				select {
				case r := <-got:
					t.Errorf("%s: the stalled request was answered (%d) before another could take the slot", name, r.status)
					got <- r
				default:
				}
			}
			r := <-got
			want, wantBody := http.StatusGatewayTimeout, "function \"f\" did not answer within 400ms\n"
			if held {
				want, wantBody = http.StatusRequestTimeout, "function \"f\": the request body did not arrive within 400ms\n"
			}
			if r.status != want || r.body != wantBody {
				t.Errorf("%s: body that never comes: %d %q %v, want %d %q", name, r.status, r.body, r.err, want, wantBody)
			}
			eventually(t, 2*time.Second, "the slot free again", func() bool { s, _ := d.Stats("f"); return s.InFlight == 0 })
		}
	}
	// Over HTTP/1.1 the 408 closes the connection: the rest of the body
	// must not be read as the next request.
	rc := dialRaw(t, d)
	rc.send("POST / HTTP/1.1\r\nHost: f\r\nContent-Length: 10\r\n\r\n01234")
	if resp, body := rc.response("POST"); resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
		t.Errorf("raw: %d %q close=%v, want 408 and Connection: close", resp.StatusCode, body, resp.Close)
	}
	if !rc.closed() {
		t.Error("raw: the connection stays open after the 408")
	}
}

// The time a body takes to arrive counts in the request's timeout: a body
// that comes after 250 ms leaves a function that takes 300 ms 150 ms of a
// 400 ms timeout, and the answer is 504, not 200 after 550 ms.
func TestHeldBodyCountsInTimeout(t *testing.T) {
	t.Parallel()
	_, slow := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		time.Sleep(300 * time.Millisecond)
		io.WriteString(w, "late")
	})
	cp := newFakeCP(t, route("f", 1, 1, 400, ep("s1", slow)))
	d := startDP(t, cp, nil)
	for _, h2 := range []bool{false, true} {
		c := newClient(t)
		if h2 {
			var p http.Protocols
			p.SetUnencryptedHTTP2(true)
			c.Transport.(*http.Transport).Protocols = &p
		}
		pr, pw := io.Pipe()
		go func() {
			time.Sleep(250 * time.Millisecond)
			pw.Write([]byte("0123456789"))
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", "http://"+d.Addr()+"/", pr)
		req.Host, req.ContentLength = "f", 10
		req.Header.Set("Idempotency-Key", "k") // resendable too: the body's read is still in the timeout
		if r := do(c, req); r.status != http.StatusGatewayTimeout {
			t.Errorf("h2=%v: %d %q %v, want 504: the body's 250 ms and the function's 300 ms exceed the 400 ms timeout", h2, r.status, r.body, r.err)
		}
	}
}

func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			_, addr := sandbox(t, func(w http.ResponseWriter, r *http.Request) {
				<-release
				io.WriteString(w, "finished")
			})
			cp := newFakeCP(t, route("f", 1, 10, 10000, ep("s1", addr)))
			d, err := New(Config{Listen: "127.0.0.1:0", ControlPlane: cp.addr, Logger: discard()})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()
			eventually(t, 5*time.Second, "snapshot", func() bool { return d.Epoch() > 0 })
			c := newClient(t)
			if h2 {
				var p http.Protocols
				p.SetUnencryptedHTTP2(true)
				c.Transport.(*http.Transport).Protocols = &p
			}
			got := make(chan result, 1)
			go func() { got <- get(t, c, d, "f", "/") }()
			eventually(t, 5*time.Second, "in flight", func() bool { s, _ := d.Stats("f"); return s.InFlight == 1 })
			cancel()
			time.Sleep(50 * time.Millisecond)
			select {
			case err := <-done:
				t.Fatalf("Run returned with a request in flight: %v", err)
			default:
			}
			close(release)
			if r := <-got; r.status != 200 || r.body != "finished" {
				t.Errorf("in-flight request: %d %q %v", r.status, r.body, r.err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return")
			}
			if n := d.handling(); n != 0 {
				t.Errorf("%d handlers still running after Run", n)
			}
		})
	}
}

func TestShutdownCutsOffAfterGrace(t *testing.T) {
	t.Parallel()
	_, hang := sandbox(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	cp := newFakeCP(t, route("hang", 1, 10, 60000, ep("s1", hang)), route("cold", 1, 1, 60000))
	d, err := New(Config{Listen: "127.0.0.1:0", ControlPlane: cp.addr, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	d.grace = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	eventually(t, 5*time.Second, "snapshot", func() bool { return d.Epoch() > 0 })
	c := newClient(t)
	hung, queued := make(chan result, 1), make(chan result, 1)
	go func() { hung <- get(t, c, d, "hang", "/") }()
	go func() { queued <- get(t, c, d, "cold", "/") }()
	eventually(t, 5*time.Second, "in flight", func() bool { s, _ := d.Stats("hang"); return s.InFlight == 1 })
	waitQueued(t, d, "cold", 1)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 2*time.Second {
		t.Errorf("Run took %v to return, grace 300ms", el)
	}
	if r := <-queued; r.status != 503 || r.body != "function \"cold\": data plane shutting down\n" {
		t.Errorf("queued request: %d %q %v", r.status, r.body, r.err)
	}
	if r := <-hung; r.err == nil {
		t.Errorf("hung request answered: %d %q", r.status, r.body)
	}
	if n := d.handling(); n != 0 {
		t.Errorf("%d handlers still running after Run", n)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{Balancer: "fastest"},
		{MaxBodyBytes: -1},
		{QueueLimit: -1},
		{ReportInterval: -time.Second},
		{Listen: "256.0.0.1:99999"},
	} {
		if cfg.Listen == "" {
			cfg.Listen = "127.0.0.1:0"
		}
		if d, err := New(cfg); err == nil {
			d.ln.Close()
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	d, err := New(Config{Listen: "127.0.0.1:0", Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.ln.Close()
	cfg := d.Config()
	_, port, _ := net.SplitHostPort(d.Addr())
	if cfg.ControlPlane != DefaultControlPlane || cfg.Balancer != BalancerRoundRobin || cfg.MaxBodyBytes != DefaultMaxBodyBytes ||
		cfg.QueueLimit != DefaultQueueLimit || cfg.ReportInterval != DefaultReportInterval || cfg.Advertise != d.Addr() ||
		!strings.HasSuffix(cfg.ID, ":"+port) {
		t.Errorf("defaults: %+v", cfg)
	}
}
