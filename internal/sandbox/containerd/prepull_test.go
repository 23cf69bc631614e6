package containerd

import (
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/namespaces"

	"github.com/batonfaas/baton/internal/image"
	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/sandboxtest"
)

// needRegistry skips a test that pulls without BATON_REGISTRY, except under
// CI=true where it must run.
func needRegistry(t testing.TB) {
	t.Helper()
	needContainerd(t)
	if registry != "" {
		return
	}
	const why = "needs a registry to pull from: set BATON_REGISTRY (eval \"$(scripts/containerd.sh start DIR)\" starts one, and a containerd)"
	if os.Getenv("CI") == "true" {
		t.Fatal("this test " + why + ", and CI=true forbids skipping it")
	}
	t.Skip("skipped: this test " + why)
}

// registryProxy forwards TCP connections to the test registry and counts
// them, so that a test sees whether a runtime reached the registry and can
// take the registry away.
type registryProxy struct {
	ln    net.Listener
	conns atomic.Int32
	mu    sync.Mutex
	open  []net.Conn
	wg    sync.WaitGroup
}

func newRegistryProxy(t testing.TB) *registryProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &registryProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			up, err := net.Dial("tcp", registry)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.open = append(p.open, c, up)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(up, c); up.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *registryProxy) addr() string { return p.ln.Addr().String() }

// close stops forwarding: the registry is out of reach through the proxy.
func (p *registryProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestPrepull: after Prepull the image is in containerd's image store,
// unpacked for the snapshotter, so that Creates, in the same runtime and in
// a new one (a restarted worker, with an empty cache), start it without the
// registry. The image is pulled through a proxy that is then closed: a
// Create that still wanted to pull would fail.
func TestPrepull(t *testing.T) {
	needRegistry(t)
	bin, err := sandboxtest.BuildExample(buildDir, "hello")
	if err != nil {
		t.Fatal(err)
	}
	// An image of its own (not shared with other tests of this binary,
	// which run in the same namespace), named through the proxy.
	img, err := image.Build(image.BuildOptions{Binary: bin, Env: []string{"FUNCTION=prepulled"}})
	if err != nil {
		t.Fatal(err)
	}
	repo := "/baton-test/prepull:" + strconv.Itoa(os.Getpid())
	ref, err := image.ParseReference(registry+repo, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	proxy := newRegistryProxy(t)
	refStr := proxy.addr() + repo

	rt := newRuntime(t, testConfig(t))
	ctx := namespaces.WithNamespace(t.Context(), testNS)
	if _, err := rt.client.GetImage(ctx, refStr); err == nil {
		t.Fatalf("%s is in containerd before the prepull", refStr)
	}
	if err := rt.Prepull(t.Context(), refStr); err != nil {
		t.Fatal(err)
	}
	if proxy.conns.Load() == 0 {
		t.Fatal("Prepull did not reach the registry")
	}
	ci, err := rt.client.GetImage(ctx, refStr)
	if err != nil {
		t.Fatalf("after Prepull, %s is not in containerd's image store: %v", refStr, err)
	}
	if ok, err := ci.IsUnpacked(ctx, rt.cfg.Snapshotter); err != nil || !ok {
		t.Fatalf("after Prepull, %s is not unpacked for %s: %v %v", refStr, rt.cfg.Snapshotter, ok, err)
	}
	// Again: the image is there, and nothing is pulled.
	conns := proxy.conns.Load()
	if err := rt.Prepull(t.Context(), refStr); err != nil {
		t.Fatal(err)
	}
	if n := proxy.conns.Load(); n != conns {
		t.Errorf("a second Prepull reached the registry (%d connections, then %d)", conns, n)
	}

	proxy.close()
	rt2 := newRuntime(t, testConfig(t)) // a worker restarted: no cache in memory
	for i, r := range []*Runtime{rt, rt2} {
		sb, err := r.Create(t.Context(), sandbox.Spec{ID: "prepulled-" + strconv.Itoa(i), Function: "p", Image: refStr})
		if err != nil {
			t.Fatalf("Create after Prepull, without the registry (runtime %d): %v", i, err)
		}
		if body := get(t, sb.Address); !strings.Contains(body, "function prepulled") {
			t.Errorf("body %q", body)
		}
		if err := r.Delete(t.Context(), sb.ID); err != nil {
			t.Error(err)
		}
	}
}

// TestPrepullErrors: a prepull that cannot succeed says why, with the class
// Create would give, and a closed runtime refuses it.
func TestPrepullErrors(t *testing.T) {
	needRegistry(t)
	rt := newRuntime(t, testConfig(t))
	missing := registry + "/baton-test/no-such-image:1"
	for _, tc := range []struct {
		ref  string
		want string
	}{
		{missing, "not found"},
		{"Not A Valid Reference!", "Not A Valid Reference!"},
	} {
		err := rt.Prepull(t.Context(), tc.ref)
		if !errors.Is(err, sandbox.ErrInvalid) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "prepull") {
			t.Errorf("Prepull(%q) = %v, want ErrInvalid saying prepull and %q", tc.ref, err, tc.want)
		}
	}
	rt2 := newRuntime(t, testConfig(t))
	if err := rt2.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := rt2.Prepull(t.Context(), missing); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Prepull on a closed runtime: %v", err)
	}
}
