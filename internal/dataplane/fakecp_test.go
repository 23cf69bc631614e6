package dataplane

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
)

// fakeCP is an in-process control plane that implements only
// DataPlaneSession. It holds a route table (sent as the snapshot of every
// new session), records what data planes send, and lets a test push updates
// to the current session.
type fakeCP struct {
	controlplanev1.UnimplementedControlPlaneServer
	t    testing.TB
	addr string

	mu     sync.Mutex
	srv    *grpc.Server
	serveD chan struct{}
	epoch  uint64
	routes map[string]*controlplanev1.FunctionRoute
	sess   *fakeSession
	hellos []*controlplanev1.DataPlaneHello
	scales []*controlplanev1.ScaleRequest
	loads  []*controlplanev1.LoadReport
}

type fakeSession struct {
	epoch uint64
	out   chan *controlplanev1.RouteUpdate
}

func newFakeCP(t testing.TB, routes ...*controlplanev1.FunctionRoute) *fakeCP {
	t.Helper()
	f := &fakeCP{t: t, routes: make(map[string]*controlplanev1.FunctionRoute)}
	for _, r := range routes {
		f.routes[r.Name] = r
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	f.serve(ln)
	t.Cleanup(f.stop)
	return f
}

func (f *fakeCP) serve(ln net.Listener) {
	srv := grpc.NewServer()
	controlplanev1.RegisterControlPlaneServer(srv, f)
	done := make(chan struct{})
	f.mu.Lock()
	f.srv, f.serveD = srv, done
	f.mu.Unlock()
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
}

// stop stops the server, breaking every session.
func (f *fakeCP) stop() {
	f.mu.Lock()
	srv, done := f.srv, f.serveD
	f.srv, f.sess = nil, nil
	f.mu.Unlock()
	if srv != nil {
		srv.Stop()
		<-done
	}
}

// start serves again on the same address.
func (f *fakeCP) start() {
	f.t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port may linger for a moment
		if ln, err = net.Listen("tcp", f.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		f.t.Fatalf("relisten on %s: %v", f.addr, err)
	}
	f.serve(ln)
}

func (f *fakeCP) DataPlaneSession(stream grpc.BidiStreamingServer[controlplanev1.DataPlaneMessage, controlplanev1.RouteUpdate]) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := m.GetHello()
	f.mu.Lock()
	f.hellos = append(f.hellos, hello)
	f.epoch = max(f.epoch, hello.GetLastEpoch()) + 1
	s := &fakeSession{epoch: f.epoch, out: make(chan *controlplanev1.RouteUpdate, 64)}
	snap := &controlplanev1.RouteUpdate{Epoch: s.epoch, Full: true}
	for _, r := range f.routes {
		snap.Functions = append(snap.Functions, r)
	}
	f.sess = s
	f.mu.Unlock()
	if err := stream.Send(snap); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			f.mu.Lock()
			switch {
			case m.GetScale() != nil:
				f.scales = append(f.scales, m.GetScale())
			case m.GetScales() != nil:
				f.scales = append(f.scales, m.GetScales().Requests...)
			case m.GetLoad() != nil:
				f.loads = append(f.loads, m.GetLoad())
			}
			f.mu.Unlock()
		}
	}()
	for {
		select {
		case u := <-s.out:
			if err := stream.Send(u); err != nil {
				return err
			}
		case err := <-errc:
			return err
		case <-stream.Context().Done():
			return nil
		}
	}
}

// put stores r (the next snapshot includes it) and pushes it as an
// incremental update to the current session.
func (f *fakeCP) put(r *controlplanev1.FunctionRoute) {
	f.mu.Lock()
	f.routes[r.Name] = r
	s := f.sess
	f.mu.Unlock()
	if s != nil {
		s.out <- &controlplanev1.RouteUpdate{Epoch: s.epoch, Functions: []*controlplanev1.FunctionRoute{r}}
	}
}

// push sends u as is; a zero epoch is replaced by the session's.
func (f *fakeCP) push(u *controlplanev1.RouteUpdate) {
	f.mu.Lock()
	s := f.sess
	f.mu.Unlock()
	if s == nil {
		f.t.Fatal("push: no session")
	}
	if u.Epoch == 0 {
		u.Epoch = s.epoch
	}
	s.out <- u
}

func (f *fakeCP) sessionEpoch() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sess == nil {
		return 0
	}
	return f.sess.epoch
}

func (f *fakeCP) scaleRequests(name string) []*controlplanev1.ScaleRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*controlplanev1.ScaleRequest
	for _, s := range f.scales {
		if s.Function == name {
			out = append(out, s)
		}
	}
	return out
}

// loadsOf returns every FunctionLoad reported for name, in order.
func (f *fakeCP) loadsOf(name string) []*controlplanev1.FunctionLoad {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*controlplanev1.FunctionLoad
	for _, r := range f.loads {
		for _, l := range r.Functions {
			if l.Function == name {
				out = append(out, l)
			}
		}
	}
	return out
}

func (f *fakeCP) helloList() []*controlplanev1.DataPlaneHello {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*controlplanev1.DataPlaneHello(nil), f.hellos...)
}

// route builds a FunctionRoute.
func route(name string, version uint64, concurrency int32, timeoutMs int64, eps ...*controlplanev1.Endpoint) *controlplanev1.FunctionRoute {
	return &controlplanev1.FunctionRoute{
		Name: name, Version: version, Concurrency: concurrency, TimeoutMs: timeoutMs,
		Generation: 1, Endpoints: eps,
	}
}

func ep(id, addr string) *controlplanev1.Endpoint {
	return &controlplanev1.Endpoint{SandboxId: id, Address: addr, WorkerId: "w1"}
}

// sandbox starts an upstream HTTP server standing in for a sandbox.
func sandbox(t testing.TB, h http.HandlerFunc) (*httptest.Server, string) {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s, s.Listener.Addr().String()
}

// startDP runs a data plane connected to cp and waits for its first
// snapshot.
func startDP(t testing.TB, cp *fakeCP, mod func(*Config)) *DataPlane {
	t.Helper()
	cfg := Config{
		Listen:         "127.0.0.1:0",
		ControlPlane:   cp.addr,
		ReportInterval: 20 * time.Millisecond,
		Logger:         discard(),
	}
	if mod != nil {
		mod(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	eventually(t, 5*time.Second, "first snapshot", func() bool { return d.Epoch() > 0 })
	return d
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitEndpoints waits until the data plane routes name to n endpoints.
func waitEndpoints(t testing.TB, d *DataPlane, name string, n int) {
	t.Helper()
	eventually(t, 5*time.Second, name+" endpoints", func() bool {
		s, ok := d.Stats(name)
		return ok && len(s.Endpoints) == n
	})
}

func waitQueued(t testing.TB, d *DataPlane, name string, n int) {
	t.Helper()
	eventually(t, 5*time.Second, name+" queued", func() bool {
		s, ok := d.Stats(name)
		return ok && s.Queued == n
	})
}

func newClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
