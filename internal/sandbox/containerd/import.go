package containerd

import (
	"context"
	"fmt"
	"io"
	"time"

	containerd "github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
)

// ImportConfig says which containerd an archive goes into.
type ImportConfig struct {
	Socket      string // default DefaultSocket
	Namespace   string // default DefaultNamespace
	Snapshotter string // default DefaultSnapshotter
}

// Import loads the images of an OCI or Docker archive (docker save, baton
// image build --output) into containerd and unpacks them for the
// snapshotter, so that sandboxes start from them without a registry. It
// returns the images' names.
func Import(ctx context.Context, cfg ImportConfig, archive io.Reader) ([]string, error) {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = DefaultSnapshotter
	}
	client, err := containerd.New(cfg.Socket, containerd.WithDefaultNamespace(cfg.Namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", cfg.Socket, err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, cfg.Namespace)
	imgs, err := client.Import(ctx, archive)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	var names []string
	for _, i := range imgs {
		img := containerd.NewImage(client, i)
		if err := img.Unpack(ctx, cfg.Snapshotter); err != nil {
			return names, fmt.Errorf("unpack %s: %w", i.Name, err)
		}
		names = append(names, i.Name)
	}
	return names, nil
}
