package cli

import (
	"log/slog"
	"runtime"
	"strings"

	"github.com/batonfaas/baton/internal/sandbox"
	"github.com/batonfaas/baton/internal/sandbox/containerd"
	"github.com/batonfaas/baton/internal/sandbox/containerd/netpool"
	"github.com/batonfaas/baton/internal/worker"
)

// containerdFlags are the worker's flags for --runtime containerd (also on
// baton up).
type containerdFlags struct {
	socket, namespace, snapshotter string
	bridge, subnet, stateDir       string
	registryConfig                 string
	insecure                       multiFlag
	netPool, port                  int
}

func (f *containerdFlags) register(fs *flagSet) {
	fs.StringVar(&f.socket, "containerd-socket", containerd.DefaultSocket, "containerd runtime: containerd's socket")
	fs.StringVar(&f.namespace, "containerd-namespace", containerd.DefaultNamespace, "containerd runtime: the containerd namespace of Baton's containers")
	fs.StringVar(&f.snapshotter, "snapshotter", containerd.DefaultSnapshotter, "containerd runtime: snapshotter for images and root filesystems")
	fs.StringVar(&f.bridge, "bridge", netpool.DefaultBridge, "containerd runtime: the node bridge the sandboxes' network namespaces hang on")
	fs.StringVar(&f.subnet, "sandbox-subnet", netpool.DefaultSubnet, "containerd runtime: the node's sandbox subnet (the bridge gets its first address)")
	fs.StringVar(&f.stateDir, "containerd-state", "", "containerd runtime: directory of the sandboxes' namespaces and output (default /run/baton/containerd/NAMESPACE/WORKER)")
	fs.StringVar(&f.registryConfig, "registry-config", "", "containerd runtime: Docker config file with registry credentials (default: the one baton image push uses, $DOCKER_CONFIG/config.json or ~/.docker/config.json, if there)")
	fs.Var(&f.insecure, "insecure-registry", "containerd runtime: registry (host[:port]) reached over plain HTTP (repeatable; loopback registries always are, private addresses when they do not speak TLS)")
	fs.IntVar(&f.netPool, "netns-pool", netpool.DefaultSize, "containerd runtime: network namespaces kept ready")
	fs.IntVar(&f.port, "sandbox-port", containerd.DefaultPort, "containerd runtime: the port functions serve on ($PORT) in their network namespace")
}

// configure sets cfg up for the containerd runtime: capacity and creation
// cap defaults, and the runtime constructor.
func (f *containerdFlags) configure(cfg *worker.Config, log *slog.Logger) {
	if cfg.Capacity.CPUMillicores == 0 {
		cfg.Capacity.CPUMillicores = int64(runtime.NumCPU()) * 1000 * 8
	}
	if cfg.Capacity.MemoryMiB == 0 {
		cfg.Capacity.MemoryMiB = memTotalMiB()
	}
	if cfg.MaxCreations == 0 {
		cfg.MaxCreations = containerd.DefaultMaxCreations
	}
	ccfg := containerd.Config{
		Socket: f.socket, Namespace: f.namespace, Snapshotter: f.snapshotter, WorkerID: cfg.ID,
		StateDir: f.stateDir, Bridge: f.bridge, Subnet: f.subnet, NetPool: f.netPool, Port: f.port,
		InsecureRegistries: []string(f.insecure), RegistryConfig: strings.TrimSpace(f.registryConfig),
		Logger: log,
	}
	cfg.NewRuntime = func(onExit sandbox.ExitFunc) (sandbox.Runtime, error) {
		ccfg.OnExit = onExit
		return containerd.New(ccfg)
	}
}
