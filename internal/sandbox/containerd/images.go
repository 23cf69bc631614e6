package containerd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/distribution/reference"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/batonfaas/baton/internal/sandbox"
)

// resolvedImage is what a creation needs of an image, resolved once per reference
// and runtime: its name in containerd, the chain id of its unpacked layers
// (the parent of each sandbox's snapshot) and its config.
type resolvedImage struct {
	name    string // normalized reference, as containerd stores it
	chainID string
	config  ocispec.ImageConfig
}

// imageEntry is one reference's resolution, shared by concurrent Creates.
type imageEntry struct {
	done chan struct{}
	img  *resolvedImage
	err  error
}

// images resolves and caches images: on first use of a reference it looks
// for it in containerd, pulls it if missing (once, however many Creates
// want it), unpacks it into the snapshotter, and keeps what creations need
// in memory. Failures are not cached: the next Create tries again (the
// control plane backs off).
type images struct {
	ctx         context.Context // the runtime's: Close cancels pulls
	wg          *sync.WaitGroup // the runtime's
	client      *containerd.Client
	snapshotter string
	insecure    map[string]bool
	creds       credentials
	pullTimeout time.Duration

	mu      sync.Mutex
	entries map[string]*imageEntry
}

// get returns the image for ref, pulling it if need be. Errors wrap
// sandbox.ErrInvalid when retrying cannot help (a malformed or unknown
// reference, refused credentials) and sandbox.ErrNotReady otherwise.
func (is *images) get(ctx context.Context, ref string) (*resolvedImage, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: image reference %q: %v", sandbox.ErrInvalid, ref, err)
	}
	name := named.String()
	is.mu.Lock()
	e := is.entries[name]
	if e != nil { // resolved, or being resolved: share the outcome
		is.mu.Unlock()
		select {
		case <-e.done:
			return e.img, e.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	e = &imageEntry{done: make(chan struct{})}
	is.entries[name] = e
	is.mu.Unlock()
	// The resolution outlives the Create that started it (others may wait
	// for it, and a pull cut short is wasted), not the runtime.
	rctx, cancel := context.WithTimeout(is.ctx, is.pullTimeout)
	is.wg.Add(1)
	go func() {
		defer is.wg.Done()
		defer cancel()
		e.img, e.err = is.resolve(rctx, name)
		if e.err != nil {
			is.mu.Lock()
			if is.entries[name] == e {
				delete(is.entries, name)
			}
			is.mu.Unlock()
		}
		close(e.done)
	}()
	select {
	case <-e.done:
		return e.img, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (is *images) resolve(ctx context.Context, name string) (*resolvedImage, error) {
	img, err := is.client.GetImage(ctx, name)
	switch {
	case errdefs.IsNotFound(err):
		img, err = is.pull(ctx, name)
		if err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("%w: look up image %s in containerd: %v", sandbox.ErrNotReady, name, err)
	default:
		unpacked, err := img.IsUnpacked(ctx, is.snapshotter)
		if err == nil && !unpacked {
			err = img.Unpack(ctx, is.snapshotter)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: unpack image %s: %v", sandbox.ErrNotReady, name, err)
		}
	}
	spec, err := img.Spec(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: config of image %s: %v", sandbox.ErrInvalid, name, err)
	}
	if len(spec.Config.Entrypoint) == 0 && len(spec.Config.Cmd) == 0 {
		return nil, fmt.Errorf("%w: image %s has neither an entrypoint nor a command", sandbox.ErrInvalid, name)
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: layers of image %s: %v", sandbox.ErrInvalid, name, err)
	}
	return &resolvedImage{name: name, chainID: identity.ChainID(diffIDs).String(), config: spec.Config}, nil
}

func (is *images) pull(ctx context.Context, name string) (containerd.Image, error) {
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(
		docker.WithPlainHTTP(func(host string) (bool, error) { return is.plainHTTP(host), nil }),
		docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(is.creds.lookup))),
	)})
	img, err := is.client.Pull(ctx, name, containerd.WithResolver(resolver), containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(is.snapshotter))
	if err != nil {
		class := sandbox.ErrNotReady
		msg := err.Error()
		if errdefs.IsNotFound(err) || strings.Contains(msg, "401 Unauthorized") || strings.Contains(msg, "403 Forbidden") ||
			strings.Contains(msg, "authorization failed") || strings.Contains(msg, "no match for platform") {
			class = sandbox.ErrInvalid
		}
		return nil, fmt.Errorf("%w: pull image %s: %v", class, name, err)
	}
	return img, nil
}

// plainHTTP says whether host (host[:port]) is reached over plain HTTP:
// loopback registries and those configured insecure.
func (is *images) plainHTTP(host string) bool {
	if is.insecure[host] {
		return true
	}
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	if is.insecure[h] || h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// credentials are registry credentials by host, from a Docker config file.
type credentials map[string]credential

type credential struct{ user, secret string }

func (c credentials) lookup(host string) (string, string, error) {
	if cr, ok := c[host]; ok {
		return cr.user, cr.secret, nil
	}
	if host == "registry-1.docker.io" {
		for _, k := range []string{"docker.io", "index.docker.io"} {
			if cr, ok := c[k]; ok {
				return cr.user, cr.secret, nil
			}
		}
	}
	return "", "", nil
}

// registryHost is the host[:port] of a Docker config "auths" key, which
// may be a URL ("https://index.docker.io/v1/").
func registryHost(key string) string {
	key = strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	host, _, _ := strings.Cut(key, "/")
	return host
}

// DefaultRegistryConfig is the Docker config file whose "auths" give
// registry credentials when Config.RegistryConfig is empty:
// $DOCKER_CONFIG/config.json, else ~/.docker/config.json (read only if it
// exists).
func DefaultRegistryConfig() string {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return filepath.Join(d, "config.json")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".docker", "config.json")
	}
	return ""
}

// loadCredentials reads the "auths" of a Docker config file: for each
// registry either "auth" (base64 of user:password) or "username" and
// "password". Credential helpers (credsStore) are not run.
func loadCredentials(path string, mustExist bool) (credentials, error) {
	out := credentials{}
	if path == "" {
		return out, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if !mustExist && errors.Is(err, os.ErrNotExist) {
			return out, nil
		}
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	var cfg struct {
		Auths map[string]struct {
			Auth     string `json:"auth"`
			Username string `json:"username"`
			Password string `json:"password"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("registry credentials %s: %w", path, err)
	}
	for host, a := range cfg.Auths {
		cr := credential{user: a.Username, secret: a.Password}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("registry credentials %s: auth of %s: %w", path, host, err)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("registry credentials %s: auth of %s is not user:password", path, host)
			}
			cr = credential{user: u, secret: p}
		}
		out[registryHost(host)] = cr
	}
	return out, nil
}
