package containerd

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/namespaces"

	"github.com/batonfaas/baton/internal/sandbox"
)

var _ sandbox.Prepuller = (*Runtime)(nil)

// Prepull makes image ready for Create ahead of the first one: through the
// same cache as Create (images.get) it looks a tag up in the registry (a
// deploy may follow a re-push; a digest is never looked up again), pulls
// the image if containerd lacks that digest and unpacks it for the
// snapshotter. A Create of the image afterwards, or during the pull, waits
// for no other pull.
//
// The pull outlives ctx (a Create may be waiting for it too) but not the
// runtime: Close cancels it and waits for it.
func (r *Runtime) Prepull(ctx context.Context, image string) error {
	// Counted in r.wg before Close can wait for it, so that the pull
	// images.get starts is never added to a WaitGroup being waited for.
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return fmt.Errorf("prepull %s: runtime is closed", image)
	}
	r.wg.Add(1)
	r.mu.Unlock()
	defer r.wg.Done()

	start := time.Now()
	img, err := r.images.get(namespaces.WithNamespace(ctx, r.cfg.Namespace), r.log, image, use{prepull: true})
	if err != nil {
		return fmt.Errorf("prepull %s: %w", image, err)
	}
	r.log.Debug("image ready", "image", img.name, "took_ms", ms(time.Since(start)))
	return nil
}
