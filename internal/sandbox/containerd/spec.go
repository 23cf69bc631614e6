package containerd

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/batonfaas/baton/internal/sandbox"
)

// cpuPeriod is the CFS period of the cpu limit, in microseconds.
const cpuPeriod = 100_000

// ociSpec is the OCI runtime spec of a sandbox: containerd's defaults, the
// image's entrypoint, command, environment and working directory (the
// spec's Args replace the image's command, as docker run's do), the spec's
// environment and PORT, the hostname, the slot's network namespace, and the
// cpu and memory limits.
func (r *Runtime) ociSpec(ctx context.Context, spec sandbox.Spec, img *resolvedImage, b *box) (*oci.Spec, error) {
	ic := img.config
	args := slices.Clone(ic.Entrypoint)
	if len(spec.Args) > 0 {
		args = append(args, spec.Args...)
	} else {
		args = append(args, ic.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("%w: image %s has neither an entrypoint nor a command", sandbox.ErrInvalid, img.name)
	}
	cwd := ic.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	hostname := spec.ID
	if len(hostname) > 64 { // HOST_NAME_MAX
		hostname = hostname[:64]
	}
	opts := []oci.SpecOpts{
		oci.WithProcessArgs(args...),
		oci.WithProcessCwd(cwd),
		withEnv(env(ic.Env, spec.Env, r.cfg.Port)),
		oci.WithHostname(hostname),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: b.slot.Path}),
	}
	if ic.User != "" {
		uid, gid, err := numericUser(ic.User)
		if err != nil {
			return nil, fmt.Errorf("%w: image %s: %v", sandbox.ErrInvalid, img.name, err)
		}
		opts = append(opts, oci.WithUIDGID(uid, gid))
	}
	if m := spec.CPUMillicores; m > 0 {
		opts = append(opts, oci.WithCPUShares(uint64(max(2, m*1024/1000))), oci.WithCPUCFS(m*cpuPeriod/1000, cpuPeriod))
	}
	if m := spec.MemoryMiB; m > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(m)<<20))
	}
	s, err := oci.GenerateSpec(ctx, r.client, &containers.Container{ID: b.cid}, opts...)
	if err != nil {
		return nil, fmt.Errorf("OCI spec: %w", err)
	}
	return s, nil
}

// env is the function's environment: the image's, then the spec's, PATH
// and HOME if neither sets them, and PORT (which the spec cannot override).
func env(image []string, spec map[string]string, port int) []string {
	m := map[string]string{}
	for _, kv := range image {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	for k, v := range spec {
		m[k] = v
	}
	if _, ok := m["PATH"]; !ok {
		m["PATH"] = sandbox.DefaultPath
	}
	if _, ok := m["HOME"]; !ok {
		m["HOME"] = "/" // as runc would set it, made explicit
	}
	m["PORT"] = strconv.Itoa(port)
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

func withEnv(env []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Process.Env = env
		return nil
	}
}

// numericUser parses an image's "uid" or "uid:gid". Names would need the
// image's /etc/passwd, which images of static executables do not have.
func numericUser(u string) (uint32, uint32, error) {
	us, gs, hasGroup := strings.Cut(u, ":")
	uid, err := strconv.ParseUint(us, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: only numeric users (uid or uid:gid) are supported", u)
	}
	gid := uid
	if hasGroup {
		if gid, err = strconv.ParseUint(gs, 10, 32); err != nil {
			return 0, 0, fmt.Errorf("user %q: only numeric groups are supported", u)
		}
	}
	return uint32(uid), uint32(gid), nil
}
