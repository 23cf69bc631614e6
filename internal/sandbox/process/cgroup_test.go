package process

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// TestCgroupLimits creates a group on this host's hierarchies, sets limits,
// reads them back, puts a process in it and removes it.
func TestCgroupLimits(t *testing.T) {
	needRoot(t)
	parent := testCgroupParent()
	s, err := detectCgroups(cgroupMount, parent)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.removeParent)
	if err := s.ensureParent(); err != nil {
		t.Fatal(err)
	}
	g, err := s.create("limits", 1500, 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.remove() })

	want := map[string]string{}
	if s.v2 {
		want["cpu.max"] = "150000 100000"
		want["memory.max"] = strconv.Itoa(100 << 20)
	} else {
		want["cpu.cfs_period_us"] = "100000"
		want["cpu.cfs_quota_us"] = "150000"
		want["cpu.shares"] = "1536"
		want["memory.limit_in_bytes"] = strconv.Itoa(100 << 20)
	}
	for file, v := range want {
		found := false
		for _, dir := range g.dirs {
			if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil {
				found = true
				if got := string(b[:len(b)-1]); got != v {
					t.Errorf("%s = %q, want %q", file, got, v)
				}
			}
		}
		if !found {
			t.Errorf("no %s in %v", file, g.dirs)
		}
	}

	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if err := g.join(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	pids, err := g.pids()
	if err != nil || !slices.Equal(pids, []int{cmd.Process.Pid}) {
		t.Errorf("pids() = %v, %v; want [%d]", pids, err, cmd.Process.Pid)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	dirs := slices.Clone(g.dirs)
	if err := g.remove(); err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists (%v)", dir, err)
		}
	}
	s.removeParent()
	for _, h := range s.hierarchies {
		if _, err := os.Stat(filepath.Join(h.dir, parent)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("parent %s still exists (%v)", filepath.Join(h.dir, parent), err)
		}
	}
}

// TestCgroupNoLimits checks that a 0 request leaves the defaults.
func TestCgroupNoLimits(t *testing.T) {
	needRoot(t)
	s, err := detectCgroups(cgroupMount, testCgroupParent())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.removeParent)
	g, err := s.create("nolimits", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.remove() })
	for _, dir := range g.dirs {
		for file, want := range map[string]string{"cpu.cfs_quota_us": "-1", "cpu.max": "max 100000", "memory.max": "max"} {
			if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil && string(b[:len(b)-1]) != want {
				t.Errorf("%s/%s = %q, want %q", dir, file, b, want)
			}
		}
	}
}

// TestCgroupV2 runs the v2 code on a unified hierarchy. Where the host's
// only cgroup2 mount has no controllers (as on hybrid v1 hosts) it checks
// what needs none: create, join, remove, and refusing limits cleanly.
func TestCgroupV2(t *testing.T) {
	needRoot(t)
	mount := cgroupMount
	if _, err := os.Stat(filepath.Join(mount, "cgroup.controllers")); err != nil {
		mount = filepath.Join(cgroupMount, "unified")
		if _, err := os.Stat(filepath.Join(mount, "cgroup.controllers")); err != nil {
			t.Skip("no cgroup2 mount")
		}
	}
	s := &cgroupSet{v2: true, parent: testCgroupParent(), hierarchies: []cgroupHierarchy{{dir: mount, controller: "unified"}}}
	if full, err := detectCgroups(mount, s.parent); err == nil && full.v2 {
		s = full
	}
	t.Cleanup(s.removeParent)
	if err := s.ensureParent(); err != nil {
		t.Fatal(err)
	}
	g, err := s.create("v2", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.join(cmd.Process.Pid); err != nil {
		t.Error(err)
	}
	if pids, _ := g.pids(); !slices.Equal(pids, []int{cmd.Process.Pid}) {
		t.Errorf("pids() = %v, want [%d]", pids, cmd.Process.Pid)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err := g.remove(); err != nil {
		t.Fatal(err)
	}
	if len(s.enable) == 0 {
		// No cpu controller: a limit must fail and leave nothing.
		if _, err := s.create("v2-limited", 100, 0); err == nil {
			t.Error("cpu limit on a hierarchy without the cpu controller succeeded")
		}
		if _, err := os.Stat(filepath.Join(mount, s.parent, "v2-limited")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("failed create left its group (%v)", err)
		}
	}
}
