package image

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMayUsePlainHTTP(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:5000":          true,
		"localhost:5000":          true,
		"10.0.0.1:5000":           true,
		"172.20.0.3":              true,
		"192.168.1.5:5000":        true,
		"registry.localhost:5000": true,
		"172.32.0.1:5000":         false,
		"registry.example.com":    false,
		"index.docker.io":         false,
	} {
		if got := MayUsePlainHTTP(host); got != want {
			t.Errorf("MayUsePlainHTTP(%s) = %v, want %v", host, got, want)
		}
	}
}

func TestCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(path, []byte(`{"auths": {
		"reg.example:5000": {"auth": "dXNlcjpwYTpzcw=="},
		"tok.example": {"identitytoken": "refresh-me"},
		"https://index.docker.io/v1/": {"username": "hub", "password": "secret"}
	}}`), 0o600)
	kc, err := Keychain(path)
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string][2]string{
		"reg.example:5000":     {"user", "pa:ss"},
		"registry-1.docker.io": {"hub", "secret"},
		"tok.example":          {"", "refresh-me"},
		"other.example":        {"", ""},
	} {
		u, p, err := Credentials(t.Context(), kc, host)
		if err != nil || u != want[0] || p != want[1] {
			t.Errorf("Credentials(%s) = %q %q %v, want %q %q", host, u, p, err, want[0], want[1])
		}
	}

	// Edits take effect at the next use.
	os.WriteFile(path, []byte(`{"auths": {"reg.example:5000": {"username": "new", "password": "pw"}}}`), 0o600)
	if u, p, err := Credentials(t.Context(), kc, "reg.example:5000"); err != nil || u != "new" || p != "pw" {
		t.Errorf("after an edit: %q %q %v, want new pw", u, p, err)
	}

	if _, err := Keychain(filepath.Join(t.TempDir(), "none.json")); err == nil {
		t.Error("a missing configured file is not an error")
	}
	os.WriteFile(path, []byte(`{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}`), 0o600)
	if _, err := Keychain(path); err == nil {
		t.Error("an auth without a colon is not an error")
	}
	os.WriteFile(path, []byte(`{"auths": `), 0o600)
	if _, err := Keychain(path); err == nil {
		t.Error("a file that does not parse is not an error")
	}
}

// TestDefaultKeychain: with no file given, the credentials are those
// `image push` uses ($DOCKER_CONFIG/config.json here).
func TestDefaultKeychain(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", t.TempDir())
	t.Setenv("DOCKER_CONFIG", dir)
	os.WriteFile(filepath.Join(dir, "config.json"),
		[]byte(`{"auths": {"10.0.0.7:5000": {"username": "u", "password": "p"}}}`), 0o600)
	kc, err := Keychain("")
	if err != nil {
		t.Fatal(err)
	}
	if u, p, err := Credentials(t.Context(), kc, "10.0.0.7:5000"); err != nil || u != "u" || p != "p" {
		t.Errorf("Credentials = %q %q %v, want u p", u, p, err)
	}
}
