package image

import (
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// staticBinary builds a tiny static Go program.
func staticBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "fn")
	cmd := exec.Command("go", "build", "-o", out, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

func TestBuildArchivePush(t *testing.T) {
	bin := staticBinary(t)
	img, err := Build(BuildOptions{Binary: bin, Args: []string{"-v"}, Env: []string{"A=b"}})
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	cf, _ := img.ConfigFile()
	if cf.OS != "linux" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/fn" ||
		strings.Join(cf.Config.Cmd, " ") != "-v" || cf.Config.Env[1] != "A=b" {
		t.Errorf("config %+v", cf.Config)
	}
	again, _ := Build(BuildOptions{Binary: bin, Args: []string{"-v"}, Env: []string{"A=b"}})
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("the same executable gave two digests %s and %s", d1, d2)
	}

	ref, err := ParseReference("example.test/fn:1", false)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fn.tar")
	if err := WriteArchiveFile(path, ref, img); err != nil {
		t.Fatal(err)
	}
	back, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bcf, _ := back.ConfigFile(); bcf.Config.Entrypoint[0] != "/fn" {
		t.Errorf("archive's entrypoint %v", bcf.Config.Entrypoint)
	}

	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	pushRef, err := ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/fns/fn:1", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := Push(pushRef, img); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(pushRef)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := got.Digest(); d != d1 {
		t.Errorf("pulled %s, pushed %s", d, d1)
	}
}

func TestBuildRefuses(t *testing.T) {
	notELF := filepath.Join(t.TempDir(), "script")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	tests := []struct {
		name string
		o    BuildOptions
		want string
	}{
		{"nothing", BuildOptions{}, "no executable"},
		{"missing", BuildOptions{Binary: "/no/such/file"}, "no such file"},
		{"not ELF", BuildOptions{Binary: notELF}, "not an ELF"},
		{"dynamic", BuildOptions{Binary: "/bin/sh"}, "dynamically linked"},
	}
	for _, tc := range tests {
		if _, err := Build(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := Build(BuildOptions{Binary: "/bin/sh", AllowDynamic: true}); err != nil {
		t.Errorf("AllowDynamic: %v", err)
	}
}
