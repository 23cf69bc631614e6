package containerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/remotes"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/batonfaas/baton/internal/image"
	"github.com/batonfaas/baton/internal/sandbox"
)

// resolvedImage is what a creation needs of an image, as images.get
// resolved it: its name in containerd, the chain id of its unpacked layers
// (the parent of each sandbox's snapshot) and its config.
type resolvedImage struct {
	name    string        // normalized reference, as containerd stores it
	digest  digest.Digest // of the manifest (or index) name resolved to
	chainID string
	config  ocispec.ImageConfig
}

// imageEntry is one resolution of a reference, shared by concurrent Creates.
type imageEntry struct {
	done chan struct{}
	img  *resolvedImage
	err  error
}

func (e *imageEntry) resolved() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

func (e *imageEntry) wait(ctx context.Context) (*resolvedImage, error) {
	select {
	case <-e.done:
		return e.img, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// use is who wants an image, which decides whether a tag is looked up in
// the registry again (see images.get).
type use struct {
	function   string
	generation uint64
	prepull    bool // a Prepull (sent on deploy, and to a worker that connects): look the tag up
}

// recentGenerations is how many generations of a function images.get
// remembers per reference: a generation among them is not new. More than
// one, so that Creates of an old and a new generation interleaving during
// a rollout do not look the tag up in turn; a function deleted and
// deployed again starts at generation 1, which is new again.
const recentGenerations = 4

// lookupTimeout bounds the registry lookup that refreshes a tag: past it,
// the image containerd has is used (a cold start waits for no more).
const lookupTimeout = 10 * time.Second

// images resolves and caches images. The pull policy:
//
//   - A reference pinned by digest (name@sha256:...) is immutable: it is
//     looked for in containerd, pulled if missing, and never asked of the
//     registry again.
//   - A tag is looked up in the registry (one manifest HEAD) on the first
//     use in this runtime of each generation of each function that uses it,
//     and by every Prepull (sent on deploy), and pulled only if it
//     names another image than containerd has. Creates in between use the
//     cached resolution and reach no registry.
//   - If the lookup fails (registry unreachable, or refusing), the image
//     containerd has is used, with a warning; without one, it is an error.
//
// A resolution is shared by the Creates that want the image while it runs
// (one in flight counts as the refresh a new generation asks for), and
// outlives them: its pull is not cut short. Failures are not cached: the
// next Create tries again (the control plane backs off).
type images struct {
	ctx         context.Context // the runtime's: Close cancels pulls
	wg          *sync.WaitGroup // the runtime's
	client      *containerd.Client
	snapshotter string
	insecure    map[string]bool
	keychain    authn.Keychain
	pullTimeout time.Duration

	mu      sync.Mutex
	entries map[string]*imageEntry // by normalized reference: the newest resolution
	seen    map[seenKey][]uint64   // the recent generations of a function that used a tag, oldest first
}

type seenKey struct{ name, function string }

// get returns the image for ref, pulling it if need be, under the pull
// policy above; log takes the warnings. Errors wrap sandbox.ErrInvalid when
// retrying cannot help (a malformed or unknown reference, refused
// credentials) and sandbox.ErrNotReady otherwise.
func (is *images) get(ctx context.Context, log *slog.Logger, ref string, u use) (*resolvedImage, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: image reference %q: %v", sandbox.ErrInvalid, ref, err)
	}
	name := named.String()
	_, pinned := named.(reference.Digested)
	is.mu.Lock()
	refresh := !pinned && (u.prepull || is.firstUse(name, u.function, u.generation))
	e := is.entries[name]
	if e != nil && (!refresh || !e.resolved()) { // current, or being resolved: share the outcome
		is.mu.Unlock()
		return e.wait(ctx)
	}
	var prev *resolvedImage // what a refresh keeps if the tag has not moved
	if e != nil {
		prev = e.img
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
		e.img, e.err = is.resolve(rctx, log, name, pinned, prev)
		if e.err != nil {
			is.mu.Lock()
			if is.entries[name] == e {
				delete(is.entries, name)
			}
			is.mu.Unlock()
		}
		close(e.done)
	}()
	return e.wait(ctx)
}

// firstUse records that generation of function uses the tag name, and
// says whether it had not yet (among its recentGenerations). is.mu held.
func (is *images) firstUse(name, function string, generation uint64) bool {
	if is.seen == nil {
		is.seen = map[seenKey][]uint64{}
	}
	k := seenKey{name, function}
	gens := is.seen[k]
	if slices.Contains(gens, generation) {
		return false
	}
	if len(gens) == recentGenerations {
		gens = slices.Delete(gens, 0, 1)
	}
	is.seen[k] = append(gens, generation)
	return true
}

// resolve finds name's image in containerd, or pulls it, and unpacks it. A
// tag (not pinned) that containerd has is looked up in the registry and
// pulled again if it now names another image; when the registry cannot be
// reached (for the lookup or the pull), the image containerd has is used,
// with a warning. prev, the last resolution of name, is kept as it is when
// the tag still names it (or cannot be looked up): a refresh then costs the
// lookup alone. A tag containerd lacks is pulled at once (the pull's own
// lookup is the only one), and a moved tag is pulled with what the lookup
// found (one lookup, one token).
func (is *images) resolve(ctx context.Context, log *slog.Logger, name string, pinned bool, prev *resolvedImage) (*resolvedImage, error) {
	img, err := is.client.GetImage(ctx, name)
	have := err == nil
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("%w: look up image %s in containerd: %v", sandbox.ErrNotReady, name, err)
	}
	res := is.resolver()
	pull := !have
	if have && !pinned {
		had := img.Target().Digest
		if prev != nil {
			had = prev.digest
		}
		desc, err := is.lookup(ctx, res, name)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, pullError(name, err)
		case err != nil:
			log.Warn(lookupFailed, "image", name, "digest", had, "err", err)
		case prev != nil && desc.Digest == prev.digest:
			return prev, nil
		case desc.Digest != img.Target().Digest:
			log.Info("image tag moved: pulling it", "image", name, "had", img.Target().Digest, "now", desc.Digest)
			res, pull = knownResolver{res, name, desc}, true
		}
		if err != nil && prev != nil {
			return prev, nil
		}
	}
	if pull {
		pulled, err := is.pull(ctx, res, name)
		switch {
		case err == nil:
			img = pulled
		case have && errors.Is(err, sandbox.ErrNotReady) && ctx.Err() == nil:
			log.Warn(pullFailed, "image", name, "digest", img.Target().Digest, "err", err)
			pull = false
		default:
			return nil, err
		}
	}
	if !pull {
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
	return &resolvedImage{name: name, digest: img.Target().Digest, chainID: identity.ChainID(diffIDs).String(), config: spec.Config}, nil
}

const (
	lookupFailed = "cannot look the image tag up in its registry: using the image containerd has"
	pullFailed   = "cannot pull the image the tag names now: using the image containerd has"
)

// lookup asks the registry which manifest the tag name names now: a HEAD
// request (after a token fetch, where the registry wants one), no download.
func (is *images) lookup(ctx context.Context, res remotes.Resolver, name string) (ocispec.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	_, desc, err := res.Resolve(ctx, name)
	return desc, err
}

// knownResolver answers a lookup of name with what one just found, so
// that the pull that follows it does not ask the registry again.
type knownResolver struct {
	remotes.Resolver
	name string
	desc ocispec.Descriptor
}

func (k knownResolver) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	if ref == k.name {
		return ref, k.desc, nil
	}
	return k.Resolver.Resolve(ctx, ref)
}

func (is *images) pull(ctx context.Context, res remotes.Resolver, name string) (containerd.Image, error) {
	img, err := is.client.Pull(ctx, name, containerd.WithResolver(res), containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(is.snapshotter))
	if err != nil {
		return nil, pullError(name, err)
	}
	return img, nil
}

// resolver is made for each resolution (its lookup and pull share it, and
// its token): it reads the credentials afresh, and its fallback transport
// remembers only this pull's host.
func (is *images) resolver() remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{Hosts: is.hosts()})
}

func (is *images) hosts() docker.RegistryHosts {
	creds := func(host string) (string, string, error) { return image.Credentials(is.ctx, is.keychain, host) }
	hosts := docker.ConfigureDefaultRegistries(
		docker.WithPlainHTTP(func(host string) (bool, error) { return is.plainHTTP(host), nil }),
		docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(creds))),
	)
	fallback := &http.Client{Transport: docker.NewHTTPFallback(http.DefaultTransport)}
	return func(host string) ([]docker.RegistryHost, error) {
		rh, err := hosts(host)
		if err == nil && !is.plainHTTP(host) && image.MayUsePlainHTTP(host) {
			for i := range rh {
				rh[i].Client = fallback
			}
		}
		return rh, err
	}
}

// pullError classifies a failure to look up or pull name: ErrInvalid when
// retrying cannot help, ErrNotReady otherwise.
func pullError(name string, err error) error {
	class := sandbox.ErrNotReady
	msg := err.Error()
	if errdefs.IsNotFound(err) || strings.Contains(msg, "401 Unauthorized") || strings.Contains(msg, "403 Forbidden") ||
		strings.Contains(msg, "authorization failed") || strings.Contains(msg, "no match for platform") {
		class = sandbox.ErrInvalid
	}
	return fmt.Errorf("%w: pull image %s: %v", class, name, err)
}

// plainHTTP says whether host (host[:port]) is reached over plain HTTP
// only: loopback registries and those configured insecure. Other hosts
// image.MayUsePlainHTTP allows (private addresses, *.localhost) are tried with
// TLS first and plain HTTP when they answer it, as `image push` does.
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
