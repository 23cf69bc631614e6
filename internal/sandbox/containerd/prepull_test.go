package containerd

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/namespaces"

	"github.com/batonfaas/baton/internal/sandbox"
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

// TestPrepull: after Prepull the image is in containerd's image store,
// unpacked for the snapshotter, so that Creates, in the same runtime and in
// a new one (a restarted worker, with an empty cache), start it without the
// registry. The image is pulled through a proxy that is then closed: a
// Create that still wanted to pull would fail.
func TestPrepull(t *testing.T) {
	needRegistry(t)
	// An image of its own (not shared with other tests of this binary,
	// which run in the same namespace), named through the proxy.
	repo := "/baton-test/prepull:" + strconv.Itoa(os.Getpid())
	pushFunction(t, repo, "prepulled")
	proxy := newRecordingProxy(t)
	refStr := proxy.addr() + repo

	rt := newRuntime(t, testConfig(t))
	ctx := namespaces.WithNamespace(t.Context(), testNS)
	if _, err := rt.client.GetImage(ctx, refStr); err == nil {
		t.Fatalf("%s is in containerd before the prepull", refStr)
	}
	if err := rt.Prepull(t.Context(), refStr); err != nil {
		t.Fatal(err)
	}
	if len(proxy.take()) == 0 {
		t.Fatal("Prepull did not reach the registry")
	}
	ci, err := rt.client.GetImage(ctx, refStr)
	if err != nil {
		t.Fatalf("after Prepull, %s is not in containerd's image store: %v", refStr, err)
	}
	if ok, err := ci.IsUnpacked(ctx, rt.cfg.Snapshotter); err != nil || !ok {
		t.Fatalf("after Prepull, %s is not unpacked for %s: %v %v", refStr, rt.cfg.Snapshotter, ok, err)
	}
	// Again: the tag is looked up (a deploy may follow a re-push), and
	// nothing is downloaded, for the image is there.
	if err := rt.Prepull(t.Context(), refStr); err != nil {
		t.Fatal(err)
	}
	onlyLookups(t, proxy.take(), "a second Prepull of an unchanged tag")

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
