package containerd

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"

	"github.com/batonfaas/baton/internal/sandbox"
)

// recover adopts this worker's containers whose task still runs and
// removes its other containers, its snapshots that no container holds, and
// its namespaces and output files that no adopted sandbox uses.
func (r *Runtime) recover(ctx context.Context) error {
	filter := fmt.Sprintf("labels.%q==%q", labelWorker, r.cfg.WorkerID)
	cs, err := r.client.ContainerService().List(ctx, filter)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	keepSnapshots := map[string]bool{}
	keepLogs := map[string]bool{}
	for _, c := range cs {
		b, reason := r.adopt(ctx, c)
		if b == nil {
			r.log.Info("removing a sandbox left by an earlier run", "sandbox", c.ID, "reason", reason)
			rb := &box{Life: sandbox.Life{Sandbox: sandbox.Sandbox{ID: c.Labels[labelSandbox]}, Gone: make(chan struct{})},
				cid: c.ID, haveTask: true, haveContainer: true, haveSnapshot: c.SnapshotKey == c.ID, exited: make(chan struct{})}
			if err := r.remove(ctx, rb); err != nil {
				r.log.Warn("remove a sandbox left by an earlier run", "sandbox", c.ID, "err", err)
			}
			continue
		}
		keepSnapshots[c.SnapshotKey] = true
		keepLogs[filepath.Base(b.logPath)] = true
		r.log.Info("adopted a running sandbox", "sandbox", b.Sandbox.ID, "function", b.Sandbox.Function, "address", b.Sandbox.Address)
	}
	// Snapshots of ours that no container holds (a crash between preparing
	// one and making its container).
	sn := r.client.SnapshotService(r.cfg.Snapshotter)
	var orphans []string
	err = sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive && !keepSnapshots[info.Name] {
			orphans = append(orphans, info.Name)
		}
		return nil
	}, filter)
	if err != nil {
		r.log.Warn("list snapshots", "err", err)
	}
	for _, key := range orphans {
		if err := sn.Remove(ctx, key); err != nil && !errdefs.IsNotFound(err) {
			r.log.Warn("remove a snapshot left by an earlier run", "snapshot", key, "err", err)
		}
	}
	ents, _ := os.ReadDir(r.logDir)
	for _, e := range ents {
		if !keepLogs[e.Name()] {
			os.Remove(filepath.Join(r.logDir, e.Name()))
		}
	}
	r.pool.Cleanup()
	return nil
}

// adopt takes over c if its task runs and its namespace is still there; it
// returns nil and why not otherwise.
func (r *Runtime) adopt(ctx context.Context, c containers.Container) (*box, string) {
	l := c.Labels
	gen, _ := strconv.ParseUint(l[labelGeneration], 10, 64)
	cpu, _ := strconv.ParseInt(l[labelCPU], 10, 64)
	mem, _ := strconv.ParseInt(l[labelMemory], 10, 64)
	b := &box{
		Life: sandbox.Life{
			Sandbox: sandbox.Sandbox{ID: l[labelSandbox], Function: l[labelFunction], Generation: gen, Address: l[labelAddress],
				CPUMillicores: cpu, MemoryMiB: mem, Started: c.CreatedAt},
			Stage: sandbox.Running, Created: make(chan struct{}), Gone: make(chan struct{}),
		},
		cid:           c.ID,
		logPath:       filepath.Join(r.logDir, c.ID+".log"),
		haveSnapshot:  c.SnapshotKey == c.ID,
		haveContainer: true,
		haveTask:      true,
		exited:        make(chan struct{}),
	}
	close(b.Created)
	if b.Sandbox.ID == "" || containerID(b.Sandbox.ID) != c.ID || b.Sandbox.Address == "" {
		return nil, "its labels are incomplete"
	}
	resp, err := r.client.TaskService().Get(ctx, &tasks.GetRequest{ContainerID: c.ID})
	if err != nil {
		return nil, "no task: " + errdefs.FromGRPC(err).Error()
	}
	if st := resp.Process.GetStatus(); st != task.Status_RUNNING {
		return nil, "task is " + strings.ToLower(st.String())
	}
	ip := net.ParseIP(l[labelIP])
	if ip == nil || !strings.HasPrefix(b.Sandbox.Address, ip.String()+":") {
		return nil, "its address labels disagree"
	}
	b.slot, err = r.pool.Adopt(l[labelNetns], ip)
	if err != nil {
		return nil, "network namespace: " + err.Error()
	}
	// In the map before the watch starts: an exit the watch sees at once
	// must find the box there to release it.
	r.mu.Lock()
	r.boxes[b.Sandbox.ID] = b
	r.mu.Unlock()
	r.watch(b)
	return b, ""
}
