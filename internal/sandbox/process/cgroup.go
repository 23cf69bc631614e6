package process

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupMount is the usual mount point of the cgroup file systems.
const cgroupMount = "/sys/fs/cgroup"

// cpuPeriodUS is the CFS period every sandbox gets; its quota is its
// millicores in the same unit (1000 millicores = one full period).
const cpuPeriodUS = 100000

// cgroupHierarchy is one mounted hierarchy Baton creates groups in.
type cgroupHierarchy struct {
	dir        string // the mount, for example /sys/fs/cgroup/memory
	controller string // v1: "cpu", "memory", ...; v2: "unified"
}

// cgroupSet is where a Runtime's sandboxes get their cgroups: below parent
// in either the unified (v2) hierarchy or in each v1 controller hierarchy.
type cgroupSet struct {
	v2          bool
	parent      string // relative to each hierarchy's root, for example "baton/worker-1"
	hierarchies []cgroupHierarchy
	enable      []string // v2: controllers to enable in subtree_control on the way down
}

// v1Controllers are the v1 hierarchies a sandbox joins. cpu and memory carry
// its limits; the others account for it (pids, cpuacct) or allow freezing
// the whole tree (freezer).
var v1Controllers = []string{"cpu", "memory", "cpuacct", "pids", "freezer"}

// detectCgroups picks v2 when mount is a unified hierarchy offering cpu and
// memory, else the v1 controllers mounted below it (cpu and memory are
// required, the rest are joined when present).
func detectCgroups(mount, parent string) (*cgroupSet, error) {
	if b, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers")); err == nil {
		avail := strings.Fields(string(b))
		if slices.Contains(avail, "cpu") && slices.Contains(avail, "memory") {
			enable := []string{"cpu", "memory"}
			if slices.Contains(avail, "pids") {
				enable = append(enable, "pids")
			}
			return &cgroupSet{
				v2:          true,
				parent:      parent,
				hierarchies: []cgroupHierarchy{{dir: mount, controller: "unified"}},
				enable:      enable,
			}, nil
		}
	}
	s := &cgroupSet{parent: parent}
	seen := map[string]bool{}
	for _, c := range v1Controllers {
		dir := filepath.Join(mount, c)
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
			continue
		}
		// "cpu" and "cpuacct" are often links to one "cpu,cpuacct" mount.
		real, err := filepath.EvalSymlinks(dir)
		if err != nil || seen[real] {
			continue
		}
		seen[real] = true
		s.hierarchies = append(s.hierarchies, cgroupHierarchy{dir: dir, controller: c})
	}
	if !s.has("cpu") || !s.has("memory") {
		return nil, fmt.Errorf("no usable cgroups below %s: need either cgroup v2 with the cpu and memory controllers or cgroup v1 cpu and memory hierarchies", mount)
	}
	return s, nil
}

func (s *cgroupSet) has(controller string) bool {
	return slices.ContainsFunc(s.hierarchies, func(h cgroupHierarchy) bool { return h.controller == controller })
}

// ensureParent creates the parent group in every hierarchy and, on v2,
// enables the controllers on the way down so the sandboxes' groups get them.
func (s *cgroupSet) ensureParent() error {
	for _, h := range s.hierarchies {
		dir := filepath.Join(h.dir, s.parent)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		if !s.v2 || len(s.enable) == 0 {
			continue
		}
		ctl := "+" + strings.Join(s.enable, " +")
		cur := h.dir
		for _, part := range append([]string{""}, strings.Split(s.parent, "/")...) {
			cur = filepath.Join(cur, part)
			if err := writeCgroupFile(filepath.Join(cur, "cgroup.subtree_control"), ctl); err != nil {
				return fmt.Errorf("enable cgroup controllers %s: %w", ctl, err)
			}
		}
	}
	return nil
}

// cgroup is one sandbox's group, a directory in each hierarchy.
type cgroup struct {
	dirs []string
}

// create makes the group name below the parent in every hierarchy and sets
// its limits; 0 leaves a resource unlimited. On error nothing is left.
func (s *cgroupSet) create(name string, cpuMillicores, memoryMiB int64) (*cgroup, error) {
	g := &cgroup{}
	for _, h := range s.hierarchies {
		dir := filepath.Join(h.dir, s.parent, name)
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, fs.ErrNotExist) {
			// Another runtime sharing an ancestor removed it while empty.
			if err = s.ensureParent(); err == nil {
				err = os.Mkdir(dir, 0o755)
			}
		}
		if err != nil {
			_ = g.remove()
			return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		g.dirs = append(g.dirs, dir)
		if err := setLimits(dir, h.controller, s.v2, cpuMillicores, memoryMiB); err != nil {
			_ = g.remove()
			return nil, err
		}
	}
	return g, nil
}

func setLimits(dir, controller string, v2 bool, cpuMillicores, memoryMiB int64) error {
	var files [][2]string
	quota := max(cpuMillicores*cpuPeriodUS/1000, 1000) // the kernel refuses quotas under 1 ms
	switch {
	case v2:
		if cpuMillicores > 0 {
			files = append(files, [2]string{"cpu.max", fmt.Sprintf("%d %d", quota, cpuPeriodUS)})
		}
		if memoryMiB > 0 {
			files = append(files, [2]string{"memory.max", strconv.FormatInt(memoryMiB<<20, 10)})
		}
	case controller == "cpu" && cpuMillicores > 0:
		files = append(files,
			[2]string{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS)},
			[2]string{"cpu.cfs_quota_us", strconv.FormatInt(quota, 10)},
			[2]string{"cpu.shares", strconv.FormatInt(max(cpuMillicores*1024/1000, 2), 10)})
	case controller == "memory" && memoryMiB > 0:
		files = append(files, [2]string{"memory.limit_in_bytes", strconv.FormatInt(memoryMiB<<20, 10)})
	}
	for _, f := range files {
		if err := writeCgroupFile(filepath.Join(dir, f[0]), f[1]); err != nil {
			return fmt.Errorf("set cgroup limit: %w", err)
		}
	}
	return nil
}

// join moves the process pid into the group in every hierarchy.
func (g *cgroup) join(pid int) error {
	p := strconv.Itoa(pid)
	for _, dir := range g.dirs {
		if err := writeCgroupFile(filepath.Join(dir, "cgroup.procs"), p); err != nil {
			return fmt.Errorf("join cgroup: %w", err)
		}
	}
	return nil
}

// pids lists the processes in the group (as seen from the host).
func (g *cgroup) pids() ([]int, error) {
	if len(g.dirs) == 0 {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(g.dirs[0], "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// removeTimeout bounds how long remove waits for exiting tasks to leave.
const removeTimeout = 2 * time.Second

// remove deletes the group from every hierarchy, retrying briefly while
// the tasks of a killed tree drain out.
func (g *cgroup) remove() error {
	var errs []error
	for _, dir := range g.dirs {
		if err := rmdirRetry(dir, removeTimeout); err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	g.dirs = nil
	return errors.Join(errs...)
}

func rmdirRetry(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	wait := 200 * time.Microsecond
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(wait)
		wait = min(wait*2, 50*time.Millisecond)
	}
}

// removeLeftovers deletes the groups a previous run left below the parent
// (their processes died with it). Groups that still hold processes are
// kept and reported.
func (s *cgroupSet) removeLeftovers(log *slog.Logger) {
	for _, h := range s.hierarchies {
		root := filepath.Join(h.dir, s.parent)
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() && path != root {
				dirs = append(dirs, path)
			}
			return nil
		})
		// Deepest first: a v1 group with children cannot be removed.
		slices.Reverse(dirs)
		for _, dir := range dirs {
			if err := syscall.Rmdir(dir); err != nil {
				log.Warn("cannot remove leftover cgroup", "cgroup", dir, "err", err)
				continue
			}
			log.Info("removed leftover cgroup", "cgroup", dir)
		}
	}
}

// removeParent removes the parent group and then its ancestors, as long as
// they are empty (other runtimes may share an ancestor).
func (s *cgroupSet) removeParent() {
	for _, h := range s.hierarchies {
		for rel := s.parent; rel != "." && rel != "/" && rel != ""; rel = filepath.Dir(rel) {
			if err := syscall.Rmdir(filepath.Join(h.dir, rel)); err != nil && !errors.Is(err, syscall.ENOENT) {
				break
			}
		}
	}
}

// writeCgroupFile writes an existing control file (never creating one).
func writeCgroupFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}
