package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/image"
	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/sandboxtest"
)

// The pull policy (images.get) against a real containerd and registry: a
// tag is pushed twice under the same name, as two builds of examples/hello
// that answer with different function names, and the tests watch which one
// a sandbox runs and what the runtime asked of the registry.

// recordingProxy is an HTTP proxy in front of the test registry that
// records every request. It counts requests rather than connections: a
// lookup may reuse a kept-alive connection.
type recordingProxy struct {
	srv   *httptest.Server
	delay atomic.Int64 // nanoseconds each request waits before it is forwarded
	fail  atomic.Bool  // answer every GET 503 (lookups still pass)
	mu    sync.Mutex
	reqs  []string // "METHOD /path"
}

func newRecordingProxy(t testing.TB) *recordingProxy {
	t.Helper()
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: registry})
	p := &recordingProxy{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.reqs = append(p.reqs, r.Method+" "+r.URL.Path)
		p.mu.Unlock()
		time.Sleep(time.Duration(p.delay.Load()))
		if r.Method == http.MethodGet && p.fail.Load() {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.close)
	return p
}

func (p *recordingProxy) addr() string { return p.srv.Listener.Addr().String() }

// take returns the requests since the last take.
func (p *recordingProxy) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.reqs
	p.reqs = nil
	return r
}

// close takes the registry away: connections to the proxy are refused.
func (p *recordingProxy) close() { p.srv.Close() }

// pushFunction pushes examples/hello, answering as function fn, to the
// test registry as repo ("/name:tag") and returns its manifest digest.
// Each build is new (its environment numbers it), so that containerd's
// content store has none of its blobs from an earlier test or run.
func pushFunction(t testing.TB, repo, fn string) string {
	t.Helper()
	bin, err := sandboxtest.BuildExample(buildDir, "hello")
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Build(image.BuildOptions{Binary: bin, Env: []string{"FUNCTION=" + fn,
		"BATON_TEST_BUILD=" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(refreshSeq.Add(1), 10)}})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := image.ParseReference(registry+repo, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// refreshRepo is a repository of this test binary's own.
func refreshRepo(name string) string {
	return "/baton-test/refresh-" + name + ":" + strconv.Itoa(os.Getpid())
}

var refreshSeq atomic.Int64

// serve creates a sandbox of image for generation of function, returns
// what it answers, and deletes it. It may run outside the test goroutine.
func serve(rt *Runtime, image, function string, generation uint64) (string, error) {
	id := "refresh-" + strconv.FormatInt(refreshSeq.Add(1), 10)
	sb, err := rt.Create(context.Background(), sandbox.Spec{ID: id, Function: function, Generation: generation, Image: image})
	if err != nil {
		return "", err
	}
	defer rt.Delete(context.Background(), id)
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + sb.Address + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// wantServes creates a sandbox and checks that it is the build answering
// as function fn.
func wantServes(t *testing.T, rt *Runtime, image, function string, generation uint64, fn, why string) {
	t.Helper()
	body, err := serve(rt, image, function, generation)
	if err != nil {
		t.Fatalf("%s: %v", why, err)
	}
	if !strings.Contains(body, "(function "+fn+",") {
		t.Errorf("%s: the sandbox answers %q, want the build of function %s", why, body, fn)
	}
}

// lookups counts the manifest HEADs among reqs: the tag looked up.
func lookups(reqs []string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, "HEAD ") && strings.Contains(r, "/manifests/") {
			n++
		}
	}
	return n
}

// onlyLookups checks that reqs is exactly one manifest HEAD: a tag looked
// up, nothing downloaded.
func onlyLookups(t *testing.T, reqs []string, why string) {
	t.Helper()
	if len(reqs) != 1 || !strings.HasPrefix(reqs[0], "HEAD ") || !strings.Contains(reqs[0], "/manifests/") {
		t.Errorf("%s: the registry got %q, want one manifest HEAD", why, reqs)
	}
}

// refreshSetup pushes the build of function refresh-a to repo (a
// refreshRepo), puts a recording proxy in front of the registry, starts a
// runtime of cfg and checks that generation 1 of function f serves the
// build from ref, the image named through the proxy: by its tag, or by its
// digest if pinned. What that first Create asked of the registry is left
// in reg.
func refreshSetup(t *testing.T, repo string, pinned bool, cfg Config) (reg *recordingProxy, ref string, rt *Runtime) {
	t.Helper()
	needRegistry(t)
	dgst := pushFunction(t, repo, "refresh-a")
	reg = newRecordingProxy(t)
	ref = reg.addr() + repo
	if pinned {
		repoName, _, _ := strings.Cut(repo, ":")
		ref = fmt.Sprintf("%s%s@%s", reg.addr(), repoName, dgst)
	}
	rt = newRuntime(t, cfg)
	wantServes(t, rt, ref, "f", 1, "refresh-a", "generation 1")
	return reg, ref, rt
}

// TestRefreshTag: a tag pushed again is picked up by the first Create of a
// new generation, and not before; Creates in between reach no registry; a
// lookup that finds the tag unchanged downloads nothing; concurrent uses
// share one lookup.
func TestRefreshTag(t *testing.T) {
	repo := refreshRepo("tag")
	reg, ref, rt := refreshSetup(t, repo, false, testConfig(t))
	if reqs := reg.take(); lookups(reqs) != 1 {
		t.Fatalf("the first Create (a pull) asked the registry for the tag %d times, want once: %q", lookups(reqs), reqs)
	}
	pushFunction(t, repo, "refresh-b") // straight to the registry

	wantServes(t, rt, ref, "f", 1, "refresh-a", "generation 1 again, after the push")
	if reqs := reg.take(); len(reqs) != 0 {
		t.Errorf("a Create of a generation already used reached the registry: %q", reqs)
	}
	wantServes(t, rt, ref, "f", 2, "refresh-b", "generation 2")
	if reqs := reg.take(); !strings.Contains(strings.Join(reqs, "\n"), "GET ") || lookups(reqs) != 1 {
		t.Errorf("generation 2 did not pull the new image after one lookup of the tag: the registry got %q", reqs)
	}
	wantServes(t, rt, ref, "f", 2, "refresh-b", "generation 2 again")
	wantServes(t, rt, ref, "f", 1, "refresh-b", "generation 1 during a rollout")
	if reqs := reg.take(); len(reqs) != 0 {
		t.Errorf("Creates of generations already used reached the registry: %q", reqs)
	}
	wantServes(t, rt, ref, "g", 1, "refresh-b", "another function deployed with the tag")
	onlyLookups(t, reg.take(), "a new generation of an unchanged tag")

	// While a lookup is in flight (the registry slowed down so that they
	// overlap), every use that would start one shares it: the other
	// Creates of the generation, new generations of other functions, a
	// Prepull.
	reg.delay.Store(int64(500 * time.Millisecond))
	var wg sync.WaitGroup
	for _, u := range []struct {
		function   string
		generation uint64
	}{{"f", 3}, {"f", 3}, {"f", 3}, {"g", 2}, {"h", 1}} {
		wg.Go(func() {
			body, err := serve(rt, ref, u.function, u.generation)
			if err != nil || !strings.Contains(body, "(function refresh-b,") {
				t.Errorf("concurrent Create of generation %d of %s: %q %v", u.generation, u.function, body, err)
			}
		})
	}
	wg.Go(func() {
		if err := rt.Prepull(context.Background(), ref); err != nil {
			t.Errorf("concurrent Prepull: %v", err)
		}
	})
	wg.Wait()
	onlyLookups(t, reg.take(), "concurrent first uses")
}

// TestRefreshPrepull: a Prepull (which comes with a deploy) looks a tag up
// whatever the generation, so that the image it pulls is there for the
// Creates that follow, without the registry.
func TestRefreshPrepull(t *testing.T) {
	repo := refreshRepo("prepull")
	reg, ref, rt := refreshSetup(t, repo, false, testConfig(t))
	pushFunction(t, repo, "refresh-b")
	reg.take()
	if err := rt.Prepull(t.Context(), ref); err != nil {
		t.Fatal(err)
	}
	if reqs := reg.take(); !strings.Contains(strings.Join(reqs, "\n"), "GET ") {
		t.Errorf("Prepull of a tag pushed again did not pull it: the registry got %q", reqs)
	}
	if err := rt.Prepull(t.Context(), ref); err != nil {
		t.Fatal(err)
	}
	onlyLookups(t, reg.take(), "Prepull of an unchanged tag")

	reg.close()
	wantServes(t, rt, ref, "f", 1, "refresh-b", "after the Prepull, without the registry")
	rt2 := newRuntime(t, testConfig(t)) // restarted: the image is in containerd
	wantServes(t, rt2, ref, "f", 2, "refresh-b", "a restarted runtime, without the registry")
}

// warnings records a runtime's log records of level Warn and above.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	var sb strings.Builder
	sb.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		sb.WriteString(" " + a.String())
		return true
	})
	w.mu.Lock()
	w.msgs = append(w.msgs, sb.String())
	w.mu.Unlock()
	return nil
}

func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

// about returns the warnings that mention s.
func (w *warnings) about(s string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, m := range w.msgs {
		if strings.Contains(m, s) {
			out = append(out, m)
		}
	}
	return out
}

// TestRefreshRegistryDown: when the registry cannot be reached for a new
// generation, sandboxes start from the image containerd has, with one
// warning per lookup; without one, Create fails as before.
func TestRefreshRegistryDown(t *testing.T) {
	t.Setenv("BATON_TEST_LOG", "") // newRuntime would replace the logger
	repo := refreshRepo("down")
	warn := &warnings{}
	cfg := testConfig(t)
	cfg.Logger = slog.New(warn)
	reg, ref, rt := refreshSetup(t, repo, false, cfg)
	pushFunction(t, repo, "refresh-b") // unseen: the registry goes away
	reg.close()
	if w := warn.about(ref); len(w) != 0 {
		t.Fatalf("warnings with the registry up: %q", w)
	}
	wantServes(t, rt, ref, "f", 2, "refresh-a", "generation 2 without the registry")
	if w := warn.about(ref); len(w) != 1 || !strings.Contains(w[0], "registry") {
		t.Errorf("warnings: %q, want one saying the registry could not be asked", w)
	}
	wantServes(t, rt, ref, "f", 2, "refresh-a", "generation 2 again")
	if w := warn.about(ref); len(w) != 1 {
		t.Errorf("a Create from the cache warned again: %q", w)
	}
	if err := rt.Prepull(t.Context(), ref); err != nil {
		t.Errorf("Prepull of an image containerd has, without the registry: %v", err)
	}

	cfg2 := testConfig(t)
	cfg2.Logger = cfg.Logger
	rt2 := newRuntime(t, cfg2) // restarted: nothing in memory
	wantServes(t, rt2, ref, "f", 2, "refresh-a", "a restarted runtime without the registry")

	missing := reg.addr() + refreshRepo("never-pushed")
	_, err := rt.Create(t.Context(), sandbox.Spec{ID: "refresh-missing", Function: "f", Generation: 3, Image: missing})
	if !errors.Is(err, sandbox.ErrNotReady) || !strings.Contains(err.Error(), "pull image") {
		t.Errorf("Create of an image containerd lacks, without the registry: %v, want ErrNotReady saying pull image", err)
	}
}

// TestRefreshPullFails: a tag that moved but whose new image cannot be
// pulled (the registry answers lookups, not downloads) starts sandboxes
// from the image containerd has, with a warning, as when the registry
// cannot be reached at all.
func TestRefreshPullFails(t *testing.T) {
	t.Setenv("BATON_TEST_LOG", "") // newRuntime would replace the logger
	repo := refreshRepo("pullfails")
	warn := &warnings{}
	cfg := testConfig(t)
	cfg.Logger = slog.New(warn)
	reg, ref, rt := refreshSetup(t, repo, false, cfg)
	pushFunction(t, repo, "refresh-b")
	reg.fail.Store(true)
	wantServes(t, rt, ref, "f", 2, "refresh-a", "generation 2, the new image failing to download")
	if w := warn.about(ref); len(w) != 1 || !strings.Contains(w[0], "cannot pull") {
		t.Errorf("warnings: %q, want one saying the new image could not be pulled", w)
	}
	reg.fail.Store(false)
	wantServes(t, rt, ref, "f", 3, "refresh-b", "generation 3, downloads back")
}

// TestRefreshDigest: a reference pinned by digest is never asked of the
// registry once containerd has it, whatever the generation, a Prepull or a
// restart, and whatever its tag became.
func TestRefreshDigest(t *testing.T) {
	repo := refreshRepo("digest")
	reg, ref, rt := refreshSetup(t, repo, true, testConfig(t))
	if reqs := reg.take(); lookups(reqs) != 1 {
		t.Fatalf("the first Create (a pull) asked the registry for the tag %d times, want once: %q", lookups(reqs), reqs)
	}
	pushFunction(t, repo, "refresh-b") // the tag moves, not the digest
	wantServes(t, rt, ref, "f", 2, "refresh-a", "generation 2")
	if err := rt.Prepull(t.Context(), ref); err != nil {
		t.Fatal(err)
	}
	rt2 := newRuntime(t, testConfig(t))
	wantServes(t, rt2, ref, "f", 3, "refresh-a", "a restarted runtime")
	if reqs := reg.take(); len(reqs) != 0 {
		t.Errorf("a digest reference containerd has reached the registry: %q", reqs)
	}
}
