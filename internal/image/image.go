// Package image makes OCI images for Baton functions without Docker: a
// static executable becomes a one-layer image whose entrypoint is that
// executable (github.com/google/go-containerregistry does the OCI work). The
// image is written as an archive that `baton image import` (or docker load,
// or ctr images import) takes, or pushed to a registry.
//
// Loading an archive into a worker's containerd is the containerd runtime's
// business (package internal/sandbox/containerd): only that package talks to
// containerd.
package image

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"github.com/batonfaas/baton/internal/sandbox"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BuildOptions say what goes into an image.
type BuildOptions struct {
	// Binary is the executable to package; it should be statically linked
	// (the image has no libc). Required.
	Binary string
	// Name is the executable's name in the image, at /Name; default the
	// binary's base name.
	Name string
	// Args are default arguments after the entrypoint (the image's Cmd).
	Args []string
	// Env is extra environment (KEY=VALUE) besides PATH.
	Env []string
	// AllowDynamic packages a dynamically linked executable anyway (it
	// will not start unless the image somehow has its loader and libraries).
	AllowDynamic bool
}

// Build makes the image: one layer holding /Name (mode 0755) and an empty
// /tmp (mode 1777); a config whose entrypoint is /Name, for linux and the
// executable's architecture. File times are zero, so the same executable
// always gives the same image digest.
func Build(o BuildOptions) (v1.Image, error) {
	if o.Binary == "" {
		return nil, errors.New("build image: no executable given")
	}
	data, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	arch, err := checkExecutable(o.Binary, data, o.AllowDynamic)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	nm := o.Name
	if nm == "" {
		nm = filepath.Base(o.Binary)
	}
	if nm == "" || strings.ContainsAny(nm, "/\x00") || nm == "." || nm == ".." {
		return nil, fmt.Errorf("build image: bad executable name %q", nm)
	}
	layerTar, err := layerTar(nm, data)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("build image: layer: %w", err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = []string{"/" + nm}
	cf.Config.Cmd = o.Args
	cf.Config.Env = append([]string{"PATH=" + sandbox.DefaultPath}, o.Env...)
	cf.Config.WorkingDir = "/"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	return img, nil
}

// goArch maps ELF machines to GOARCH names, as OCI platforms spell them.
var goArch = map[elf.Machine]string{
	elf.EM_X86_64:  "amd64",
	elf.EM_AARCH64: "arm64",
	elf.EM_386:     "386",
	elf.EM_ARM:     "arm",
	elf.EM_RISCV:   "riscv64",
	elf.EM_PPC64:   "ppc64le",
	elf.EM_S390:    "s390x",
}

// checkExecutable checks that data is an ELF executable, static unless
// allowDynamic, and returns its architecture.
func checkExecutable(file string, data []byte, allowDynamic bool) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("%s is not an ELF executable (%v): package a Linux binary", file, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("%s is an ELF %v, not an executable", file, f.Type)
	}
	if !allowDynamic {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				return "", fmt.Errorf("%s is dynamically linked, and the image has no libc: build it statically (for Go: CGO_ENABLED=0 go build)", file)
			}
		}
	}
	arch, ok := goArch[f.Machine]
	if !ok {
		arch = runtime.GOARCH
	}
	return arch, nil
}

// layerTar is the layer's uncompressed tar: /tmp and /name.
func layerTar(name string, data []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	hdrs := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: epoch, Format: tar.FormatPAX},
		{Typeflag: tar.TypeReg, Name: path.Clean(name), Mode: 0o755, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX},
	}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ParseReference parses an image reference ("127.0.0.1:5000/hello:1",
// "hello" for docker.io/library/hello:latest). insecure allows plain HTTP
// to its registry; registries on loopback, localhost and private addresses
// get plain HTTP anyway.
func ParseReference(ref string, insecure bool) (name.Reference, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	return r, nil
}

// WriteArchive writes img, tagged ref, as a Docker-format archive (the
// format of docker save; containerd and Docker both load it).
func WriteArchive(w io.Writer, ref name.Reference, img v1.Image) error {
	if err := tarball.Write(ref, img, w); err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	return nil
}

// WriteArchiveFile is WriteArchive to a new file at path.
func WriteArchiveFile(path string, ref name.Reference, img v1.Image) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	if err := WriteArchive(f, ref, img); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("write image archive: %w", err)
	}
	return nil
}

// Push uploads img to ref's registry, with the credentials of the Docker
// config ($DOCKER_CONFIG/config.json or ~/.docker/config.json) if it has
// some for that registry.
func Push(ref name.Reference, img v1.Image) error {
	if err := remote.Write(ref, img, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}
