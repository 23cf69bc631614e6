package containerd

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
)

func TestPlainHTTP(t *testing.T) {
	is := &images{insecure: map[string]bool{"insecure.example:5000": true, "bare.example": true}}
	for host, want := range map[string]bool{
		"127.0.0.1:5000":        true,
		"localhost:5000":        true,
		"[::1]:5000":            true,
		"insecure.example:5000": true,
		"bare.example:443":      true,
		"registry-1.docker.io":  false,
		"10.0.0.1:5000":         false,
	} {
		if got := is.plainHTTP(host); got != want {
			t.Errorf("plainHTTP(%s) = %v, want %v", host, got, want)
		}
	}
}

// TestResolverHosts: a registry at a private address is tried with TLS and
// then plain HTTP (as `image push` does), one configured insecure or on
// loopback gets plain HTTP only, a public one TLS only.
func TestResolverHosts(t *testing.T) {
	is := &images{ctx: t.Context(), insecure: map[string]bool{"10.0.0.9:5000": true}, keychain: authn.DefaultKeychain}
	hosts := is.hosts()
	for host, want := range map[string]struct {
		scheme   string
		fallback bool
	}{
		"10.1.2.3:5000":           {"https", true},
		"192.168.1.5":             {"https", true},
		"registry.localhost:5000": {"https", true},
		"10.0.0.9:5000":           {"http", false},
		"127.0.0.1:5000":          {"http", false},
		"registry.example.com":    {"https", false},
		"docker.io":               {"https", false},
	} {
		rh, err := hosts(host)
		if err != nil || len(rh) != 1 {
			t.Fatalf("hosts(%s) = %v, %v", host, rh, err)
		}
		fallback := rh[0].Client != nil && rh[0].Client != http.DefaultClient
		if rh[0].Scheme != want.scheme || fallback != want.fallback {
			t.Errorf("hosts(%s): scheme %s, fallback %v; want %s, %v", host, rh[0].Scheme, fallback, want.scheme, want.fallback)
		}
	}
}

// TestResolverFallsBackToPlainHTTP: through the fallback transport, a
// registry that answers plain HTTP on a port TLS was tried on is reached.
func TestResolverFallsBackToPlainHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
		if r.URL.Path == "/v2/" {
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	is := &images{ctx: t.Context(), keychain: authn.DefaultKeychain}
	rh, err := is.hosts()("10.1.2.3:5000")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://"+srv.Listener.Addr().String()+"/v2/", nil)
	resp, err := rh[0].Client.Do(req)
	if err != nil {
		t.Fatalf("through the fallback: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Scheme != "http" {
		t.Errorf("status %d over %s, want 200 over http", resp.StatusCode, resp.Request.URL.Scheme)
	}
}

// TestImageRefreshTrigger: a tag is looked up again on the first use of each
// generation of each function, and not by the uses in between.
func TestImageRefreshTrigger(t *testing.T) {
	is := &images{}
	const a, b = "reg.example/a:latest", "reg.example/b:latest"
	for i, tc := range []struct {
		name, function string
		generation     uint64
		want           bool
	}{
		{a, "f", 1, true},  // first use
		{a, "f", 1, false}, // a second sandbox of it
		{a, "f", 2, true},  // deployed again
		{a, "f", 1, false}, // rollout: an old sandbox interleaves
		{a, "f", 2, false},
		{a, "g", 2, true}, // another function's deploy of the same tag
		{b, "f", 2, true}, // another tag
		{a, "f", 3, true},
		{a, "f", 4, true},
		{a, "f", 5, true}, // forgets generation 1 (recentGenerations)
		{a, "f", 2, false},
		{a, "f", 1, true}, // deleted and deployed again: generations restart
		{a, "f", 1, false},
	} {
		if got := is.firstUse(tc.name, tc.function, tc.generation); got != tc.want {
			t.Errorf("%d: firstUse(%s, %s, %d) = %v, want %v", i, tc.name, tc.function, tc.generation, got, tc.want)
		}
	}
	if n := len(is.seen[seenKey{a, "f"}]); n != recentGenerations {
		t.Errorf("remembers %d generations of a function, want %d", n, recentGenerations)
	}
}
