package fake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/sandboxtest"
	"github.com/batonfaas/baton/internal/workload"
)

func newRuntime(t testing.TB, cfg Config) *Runtime {
	t.Helper()
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close(context.Background()) })
	return rt
}

func spec(id string) sandbox.Spec {
	return sandbox.Spec{ID: id, Function: "fn", Image: "docker.io/example/fn:latest"}
}

func TestConformance(t *testing.T) {
	sandboxtest.Run(t, sandboxtest.Harness{
		New: func(t *testing.T, onExit sandbox.ExitFunc) sandbox.Runtime {
			return newRuntime(t, Config{OnExit: onExit})
		},
		Spec:          func(t *testing.T, id string) sandbox.Spec { return spec(id) },
		Invalid:       sandbox.Spec{Binary: "/bin/fn"}, // no function name
		Kill:          func(t *testing.T, rt sandbox.Runtime, id string) { rt.(*Runtime).Kill(id) },
		SharedAddress: true,
	})
}

func TestInvalid(t *testing.T) {
	rt := newRuntime(t, Config{Delay: -1})
	for _, s := range []sandbox.Spec{
		{Function: "f", Binary: "/x"},
		{ID: "a", Binary: "/x"},
		{ID: "a", Function: "f"},
	} {
		if _, err := rt.Create(t.Context(), s); !errors.Is(err, sandbox.ErrInvalid) {
			t.Errorf("Create(%+v) = %v, want ErrInvalid", s, err)
		}
	}
}

func TestDelay(t *testing.T) {
	rt := newRuntime(t, Config{Delay: 30 * time.Millisecond})
	start := time.Now()
	if _, err := rt.Create(t.Context(), spec("a")); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("Create took %v, want at least the 30ms delay", d)
	}
	// Delete during the delay fails the Create.
	done := make(chan error, 1)
	go func() { _, err := rt.Create(context.Background(), spec("b")); done <- err }()
	time.Sleep(5 * time.Millisecond)
	_ = rt.Delete(t.Context(), "b")
	if err := <-done; !errors.Is(err, sandbox.ErrNotReady) {
		t.Errorf("Create deleted while waiting = %v, want ErrNotReady", err)
	}
}

// TestWorkloadOverH2C checks the shared server speaks the workload
// protocol over h2c, and outlives runtimes that share it.
func TestWorkloadOverH2C(t *testing.T) {
	srv, err := NewServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	a := newRuntime(t, Config{Server: srv, Delay: -1})
	b := newRuntime(t, Config{Server: srv, Delay: -1})
	sa, err := a.Create(t.Context(), spec("x"))
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.Create(t.Context(), spec("x")) // ids are per runtime
	if err != nil {
		t.Fatal(err)
	}
	if sa.Address != srv.Addr() || sb.Address != srv.Addr() {
		t.Errorf("addresses %s and %s, want the shared %s", sa.Address, sb.Address, srv.Addr())
	}
	if err := a.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &protocols}, Timeout: 5 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, "http://"+sb.Address+"/", nil)
	req.Header.Set("workload", "sleep")
	req.Header.Set("function", "fn-3")
	req.Header.Set("requested_cpu", "5")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 {
		t.Errorf("answered over %s, want HTTP/2 (h2c)", resp.Proto)
	}
	var w workload.Response
	if err := json.Unmarshal(body, &w); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	if w.Status != "OK" || w.Function != "fn-3" || w.MachineName != "fake" || w.ExecutionTime < 5000 {
		t.Errorf("got %+v", w)
	}
}

// TestScale checks the fake holds 10,000 live sandboxes and creates
// thousands per second.
func TestScale(t *testing.T) {
	rt := newRuntime(t, Config{Delay: -1})
	const n = 10000
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				if _, err := rt.Create(context.Background(), spec(fmt.Sprintf("s-%05d", i))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	rate := n / time.Since(start).Seconds()
	l, err := rt.List(t.Context())
	if err != nil || len(l) != n {
		t.Fatalf("List: %d sandboxes, %v; want %d", len(l), err, n)
	}
	if rate < 2000 {
		t.Errorf("%.0f creations/s, want thousands", rate)
	}
	t.Logf("%.0f creations/s without delay", rate)

	// With the default delay, concurrency is what bounds the rate.
	rt2 := newRuntime(t, Config{})
	start = time.Now()
	for i := range 2000 {
		wg.Go(func() {
			if _, err := rt2.Create(context.Background(), spec(fmt.Sprint(i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("2000 concurrent creations with a 40ms delay took %v", d)
	}
}

func TestListenAddress(t *testing.T) {
	rt := newRuntime(t, Config{Listen: "127.0.0.1:0", Delay: -1})
	sb, err := rt.Create(t.Context(), spec("a"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", sb.Address, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := New(Config{Listen: "256.0.0.1:0"}); err == nil {
		t.Error("New with a bad listen address succeeded")
	}
}

func BenchmarkCreateDelete(b *testing.B) {
	rt := newRuntime(b, Config{Delay: -1})
	ctx := context.Background()
	s := spec("bench")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rt.Create(ctx, s); err != nil {
			b.Fatal(err)
		}
		if err := rt.Delete(ctx, s.ID); err != nil {
			b.Fatal(err)
		}
	}
}
