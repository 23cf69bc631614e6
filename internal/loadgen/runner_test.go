package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/workload"
)

// fakeClock jumps to the time a sleeper asks for.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) SleepUntil(ctx context.Context, t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	return ctx.Err()
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fakeInvoker answers at once: cold for a function's first request, 503
// for function "bad".
type fakeInvoker struct {
	clock *fakeClock // advanced by each call when set
	step  time.Duration
	mu    sync.Mutex
	seen  map[string]bool
	calls atomic.Int64
}

func (f *fakeInvoker) Invoke(ctx context.Context, r Request) Answer {
	f.calls.Add(1)
	if f.clock != nil {
		f.clock.advance(f.step)
	}
	if r.Function == "bad" {
		return Answer{Status: 503, Err: "http 503"}
	}
	f.mu.Lock()
	temp := Warm
	if !f.seen[r.Function] {
		temp = Cold
		f.seen[r.Function] = true
	}
	f.mu.Unlock()
	return Answer{Status: 200, Exec: r.Exec, ExecKnown: true, Temp: temp}
}

func TestRunnerOpenKeepsTheSchedule(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	inv := &fakeInvoker{seen: map[string]bool{}}
	rec := NewRecorder(0)
	r := &Runner{Invoker: inv, Clock: clk, Recorder: rec}
	s := &RateSchedule{Rate: 100, Duration: 3 * time.Second, Functions: []string{"a", "b", "bad"}, Exec: 5 * time.Millisecond}
	if err := r.Open(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if !r.Started.Equal(time.Unix(1000, 0)) {
		t.Errorf("started %v", r.Started)
	}
	c := rec.Counts()
	if c.Issued != 300 || c.Done != 300 || c.Failed != 100 || c.Cold != 2 {
		t.Errorf("counts %+v", c)
	}
	// Every planned time once. (A sender reads the fake clock when its
	// goroutine runs, by which time the dispatcher may have moved it on:
	// Start is only known to be no earlier than Scheduled.)
	recs := rec.Records()
	planned := map[time.Duration]bool{}
	for _, x := range recs {
		if x.Start < x.Scheduled || x.Requested != 5*time.Millisecond || planned[x.Scheduled] ||
			x.Scheduled%(10*time.Millisecond) != 0 {
			t.Fatalf("record %+v", x)
		}
		planned[x.Scheduled] = true
	}
	sum := Summarize(&Result{OpenLoop: true, Planned: s.Planned(), PlannedPerSecond: PlannedPerSecond(s), Records: recs})
	if sum.Issued != 300 || sum.Errors["http 503"] != 100 || sum.Seconds[1].Planned != 100 {
		t.Errorf("summary %+v", sum)
	}
}

func TestRunnerOpenStopsWhenCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	inv := invokerFunc(func(ctx context.Context, r Request) Answer {
		cancel() // the first request ends the run
		<-ctx.Done()
		return Answer{Err: ErrorKind(ctx.Err())}
	})
	rec := NewRecorder(0)
	r := &Runner{Invoker: inv, Recorder: rec}
	err := r.Open(ctx, &RateSchedule{Rate: 1000, Duration: time.Minute, Functions: []string{"a"}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if n := len(rec.Records()); n == 0 || n > 10 {
		t.Errorf("%d records after cancel", n)
	}
	if rec.Records()[0].Err != "canceled" {
		t.Errorf("record %+v", rec.Records()[0])
	}
}

type invokerFunc func(ctx context.Context, r Request) Answer

func (f invokerFunc) Invoke(ctx context.Context, r Request) Answer { return f(ctx, r) }

func TestRunnerClosed(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	inv := &fakeInvoker{clock: clk, step: time.Millisecond, seen: map[string]bool{}}
	rec := NewRecorder(0)
	r := &Runner{Invoker: inv, Clock: clk, Recorder: rec}
	if err := r.Closed(context.Background(), 4, time.Second, Request{Function: "f"}); err != nil {
		t.Fatal(err)
	}
	// Each call moves the clock 1ms: about 1000 calls, a few more as the
	// clients that were already in flight at the deadline finish.
	if n := inv.calls.Load(); n < 1000 || n > 1004 || int(n) != len(rec.Records()) {
		t.Errorf("%d calls, %d records", n, len(rec.Records()))
	}
	if err := r.Closed(context.Background(), 0, time.Second, Request{}); err == nil {
		t.Error("0 clients: no error")
	}
}

// workloadServer serves the workload protocol like a data plane would:
// Host names the function, and answers carry X-Baton-Cold-Start.
func workloadServer(t *testing.T, h2c bool) (*httptest.Server, *sync.Map) {
	seen := &sync.Map{} // host -> last request
	wl := workload.Handler("test")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Host, r.Clone(context.Background()))
		switch r.Host {
		case "missing":
			http.Error(w, "no such function", http.StatusNotFound)
			return
		case "hello":
			io.WriteString(w, "Hello from Baton!")
			return
		}
		w.Header().Set("X-Baton-Cold-Start", strconv.FormatBool(r.Host == "cold"))
		wl.ServeHTTP(w, r)
	}))
	if h2c {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		srv.Config.Protocols = &p
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, seen
}

func TestHTTPInvoker(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2c=%v", h2c), func(t *testing.T) {
			srv, seen := workloadServer(t, h2c)
			inv := NewHTTPInvoker(HTTPConfig{Addr: strings.TrimPrefix(srv.URL, "http://"), H2C: h2c, Timeout: 5 * time.Second,
				Workload: "sleep"})
			defer inv.Close()
			a := inv.Invoke(context.Background(), Request{Function: "cold", Exec: 20 * time.Millisecond, MemoryMiB: 128})
			if a.Err != "" || a.Status != 200 || a.Temp != Cold || !a.ExecKnown || a.Exec < 20*time.Millisecond || a.Exec > time.Second {
				t.Fatalf("answer %+v", a)
			}
			v, _ := seen.Load("cold")
			r := v.(*http.Request)
			wantMajor := 1
			if h2c {
				wantMajor = 2
			}
			if r.ProtoMajor != wantMajor || r.Header.Get("workload") != "sleep" || r.Header.Get("function") != "cold" ||
				r.Header.Get("requested_cpu") != "20" || r.Header.Get("requested_memory") != "128" {
				t.Errorf("request %s headers %v", r.Proto, r.Header)
			}
			if a := inv.Invoke(context.Background(), Request{Function: "warm"}); a.Temp != Warm || a.Err != "" || !a.ExecKnown {
				t.Errorf("warm answer %+v", a)
			}
			if a := inv.Invoke(context.Background(), Request{Function: "missing"}); a.Status != 404 || a.Err != "http 404" {
				t.Errorf("404 answer %+v", a)
			}
			if a := inv.Invoke(context.Background(), Request{Function: "hello"}); a.Err != "" || a.ExecKnown || a.Temp != Unknown {
				t.Errorf("a function outside the workload protocol: %+v", a)
			}
		})
	}
}

func TestHTTPInvokerErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	inv := NewHTTPInvoker(HTTPConfig{Addr: addr, Timeout: 5 * time.Second})
	if a := inv.Invoke(context.Background(), Request{Function: "f"}); a.Err != "connection refused" || a.Status != 0 {
		t.Errorf("closed port: %+v", a)
	}
	srv, _ := workloadServer(t, false)
	inv = NewHTTPInvoker(HTTPConfig{Addr: strings.TrimPrefix(srv.URL, "http://"), Timeout: 50 * time.Millisecond,
		Workload: "sleep"})
	if a := inv.Invoke(context.Background(), Request{Function: "f", Exec: time.Second}); a.Err != "timeout" {
		t.Errorf("slow answer: %+v", a)
	}
}
