package process

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// holdsSocket reports whether process pid has a descriptor open on one of
// the sockets inodes. A process that is gone holds nothing.
func holdsSocket(pid int, inodes []uint64) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	names, _ := f.Readdirnames(-1)
	f.Close()
	for _, name := range names {
		link, err := os.Readlink(dir + name)
		if err != nil {
			continue // closed since
		}
		if inode, ok := socketLink(link); ok && slices.Contains(inodes, inode) {
			return true
		}
	}
	return false
}

// socketLink parses the target of a descriptor link, "socket:[INODE]".
func socketLink(link string) (uint64, bool) {
	s, ok := strings.CutPrefix(link, "socket:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	inode, err := strconv.ParseUint(s, 10, 64)
	return inode, err == nil
}

// socketHolder finds a process of the host that holds one of the sockets
// inodes and describes it ("pid 42, comm nginx"). It reads every process's
// descriptors, so it is only for the reason of a failure.
func socketHolder(inodes []uint64) string {
	d, err := os.Open("/proc")
	if err != nil {
		return "holder unknown"
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		if !holdsSocket(pid, inodes) {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + name + "/comm")
		return "pid " + name + ", comm " + strings.TrimSpace(string(comm))
	}
	return "holder not found"
}

// listening reports whether connections to the sandbox's address reach a
// socket that one of its processes holds. inodes are the sockets they
// reach (none while nothing listens there).
func (r *Runtime) listening(b *box) (ok bool, inodes []uint64, err error) {
	inodes, err = r.listeners(r.host, b.port)
	if err != nil || len(inodes) == 0 {
		return false, inodes, err
	}
	// Usually the function is the sandbox's first process (the init
	// execs it); the processes it starts are in its cgroup.
	if holdsSocket(b.proc.Pid, inodes) {
		return true, inodes, nil
	}
	pids, err := b.cg.pids()
	if err != nil {
		return false, inodes, fmt.Errorf("list the sandbox's processes: %w", err)
	}
	for _, pid := range pids {
		if pid != b.proc.Pid && holdsSocket(pid, inodes) {
			return true, inodes, nil
		}
	}
	return false, inodes, nil
}
