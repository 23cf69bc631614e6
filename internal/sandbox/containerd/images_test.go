package containerd

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{"auths": {
		"reg.example:5000": {"auth": "dXNlcjpwYTpzcw=="},
		"https://index.docker.io/v1/": {"username": "hub", "password": "secret"}
	}}`), 0o600)
	c, err := loadCredentials(path, true)
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string][2]string{
		"reg.example:5000":     {"user", "pa:ss"},
		"registry-1.docker.io": {"hub", "secret"},
		"other.example":        {"", ""},
	} {
		u, p, err := c.lookup(host)
		if err != nil || u != want[0] || p != want[1] {
			t.Errorf("lookup(%s) = %q %q %v, want %q %q", host, u, p, err, want[0], want[1])
		}
	}
	if _, err := loadCredentials(filepath.Join(t.TempDir(), "none.json"), false); err != nil {
		t.Errorf("a missing default config: %v", err)
	}
	if _, err := loadCredentials(filepath.Join(t.TempDir(), "none.json"), true); err == nil {
		t.Error("a missing configured file is not an error")
	}
	os.WriteFile(path, []byte(`{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}`), 0o600)
	if _, err := loadCredentials(path, true); err == nil {
		t.Error("an auth without a colon is not an error")
	}
}

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
