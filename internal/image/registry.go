package image

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Registry access is shared by `baton image push` (go-containerregistry)
// and the containerd runtime's pulls (containerd's resolver), so that an
// image one pushes, the other pulls: one rule for plain HTTP and one source
// of credentials.

// MayUsePlainHTTP says whether a registry (host[:port]) that answers plain
// HTTP may be used without being configured insecure: loopback addresses,
// localhost and *.localhost names, RFC 1918 private addresses. It is
// go-containerregistry's rule, which `image push` follows: TLS is tried
// first, plain HTTP when the registry answers it.
func MayUsePlainHTTP(host string) bool {
	r, err := name.NewRegistry(host)
	return err == nil && r.Scheme() == "http"
}

// Keychain gives registry credentials from a Docker config file (its
// "auths", credHelpers and credsStore). An empty path is the usual search
// (authn.DefaultKeychain: $DOCKER_CONFIG/config.json, ~/.docker/config.json,
// then Podman's auth.json; none found means anonymous). A given path must
// exist and parse; it is read again at each use, so edits take effect.
func Keychain(path string) (authn.Keychain, error) {
	if path == "" {
		return authn.DefaultKeychain, nil
	}
	k := fileKeychain(path)
	if _, err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

type fileKeychain string

func (k fileKeychain) load() (*configfile.ConfigFile, error) {
	f, err := os.Open(string(k))
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	defer f.Close()
	cf, err := config.LoadFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("registry credentials %s: %w", string(k), err)
	}
	return cf, nil
}

// Resolve looks the registry up as authn.DefaultKeychain does: by the
// repository, then by the registry, Docker Hub under its historical key.
func (k fileKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	cf, err := k.load()
	if err != nil {
		return nil, err
	}
	keys := []string{target.String()}
	if r := target.RegistryStr(); r != keys[0] {
		keys = append(keys, r)
	}
	for _, key := range keys {
		if key == name.DefaultRegistry {
			key = authn.DefaultAuthKey
		}
		// The file's "auth" is decoded into Username and Password on load.
		ac, err := cf.GetAuthConfig(key)
		if err != nil {
			return nil, fmt.Errorf("registry credentials %s for %s: %w", string(k), key, err)
		}
		if ac.Username != "" || ac.Password != "" || ac.IdentityToken != "" || ac.RegistryToken != "" {
			return authn.FromConfig(authn.AuthConfig{Username: ac.Username, Password: ac.Password,
				IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}), nil
		}
	}
	return authn.Anonymous, nil
}

// Credentials gives the user and secret kc holds for registry host
// (host[:port], as containerd's resolver names it: registry-1.docker.io for
// Docker Hub), in the form containerd's authorizer takes: an identity token
// is a secret with an empty user. None is two empty strings.
func Credentials(ctx context.Context, kc authn.Keychain, host string) (user, secret string, err error) {
	if host == "registry-1.docker.io" {
		host = name.DefaultRegistry
	}
	reg, err := name.NewRegistry(host)
	if err != nil {
		return "", "", fmt.Errorf("registry credentials for %s: %w", host, err)
	}
	a, err := authn.Resolve(ctx, kc, reg)
	if err != nil {
		return "", "", err
	}
	ac, err := authn.Authorization(ctx, a)
	if err != nil {
		return "", "", fmt.Errorf("registry credentials for %s: %w", host, err)
	}
	// Both keychains load Docker config files, which decode "auth" into
	// Username and Password, and credential helpers answer with those.
	switch {
	case ac.IdentityToken != "":
		return "", ac.IdentityToken, nil
	case ac.Username != "" || ac.Password != "":
		return ac.Username, ac.Password, nil
	case ac.RegistryToken != "":
		return "", "", errors.New("registry credentials for " + host + ": a registry token (bearer) cannot be used for pulls; give a user and password or an identity token")
	}
	return "", "", nil
}
