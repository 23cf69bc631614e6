// Package sandboxinit is the first process of a process-runtime sandbox. Any
// binary that imports it (package process does) becomes that init when it
// is started under the argv[0] Arg0:
//
//	baton-sandbox-init HOSTNAME BINARY [ARG...]
//
// already in its new PID, mount, UTS and IPC namespaces. It waits on the
// descriptor SyncFD until the runtime has placed it in its cgroups, makes
// its mounts private, mounts a fresh /proc, sets the hostname and execs
// BINARY with ARGs, which becomes PID 1 of the namespace. If any step fails
// it writes the reason to stderr and exits with ExitCode.
//
// It is a package of its own, importing only os and syscall, so that its Go
// init function runs before the heavier packages of the binary are
// initialized: every sandbox start pays for what runs before it.
package sandboxinit

import (
	"os"
	"syscall"
)

const (
	// Arg0 is the argv[0] that makes a binary the sandbox init.
	Arg0 = "baton-sandbox-init"
	// SyncFD is where the init waits for the runtime: one byte means
	// "you are in your cgroups, go on"; end of file means "give up".
	SyncFD = 3
	// ExitCode is the status of an init that could not start the function.
	ExitCode = 126
)

func init() {
	if len(os.Args) < 3 || os.Args[0] != Arg0 {
		return
	}
	run(os.Args[1], os.Args[2], os.Args[2:])
}

// run never returns: it execs the function or exits with the reason.
func run(hostname, binary string, argv []string) {
	var b [1]byte
	n, err := syscall.Read(SyncFD, b[:])
	if n != 1 {
		reason := "the runtime gave up"
		if err != nil {
			reason = err.Error()
		}
		fail("wait for the runtime", reason)
	}
	_ = syscall.Close(SyncFD)
	// Mounts made here must not propagate back to the host.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		fail("make mounts private", err.Error())
	}
	if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		fail("mount /proc", err.Error())
	}
	if err := syscall.Sethostname([]byte(hostname)); err != nil {
		fail("set hostname", err.Error())
	}
	err = syscall.Exec(binary, argv, os.Environ())
	fail("exec "+binary, err.Error())
}

func fail(step, reason string) {
	_, _ = os.Stderr.WriteString(Arg0 + ": " + step + ": " + reason + "\n")
	os.Exit(ExitCode)
}
