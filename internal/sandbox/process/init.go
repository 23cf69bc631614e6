package process

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// initArg0 is the argv[0] under which the runtime re-executes its own
// binary as the first process of a sandbox.
const initArg0 = "baton-sandbox-init"

// syncFD is the descriptor on which the sandbox init waits for the runtime:
// one byte means "you are in your cgroups, go on"; end of file means "give
// up".
const syncFD = 3

// initExitCode is the status the sandbox init exits with when it cannot
// start the function.
const initExitCode = 126

// init turns any binary that imports this package into the sandbox init
// when it is started as initArg0, so neither the worker's main nor a test
// binary needs to do anything. The command line is
//
//	baton-sandbox-init HOSTNAME BINARY [ARG...]
//
// and the process is already in its new PID, mount, UTS and IPC namespaces.
func init() {
	if len(os.Args) < 3 || os.Args[0] != initArg0 {
		return
	}
	sandboxInit(os.Args[1], os.Args[2], os.Args[2:])
}

// sandboxInit never returns: it execs the function or exits with the reason
// on stderr, which the runtime reports.
func sandboxInit(hostname, binary string, argv []string) {
	fail := func(step string, err error) {
		fmt.Fprintf(os.Stderr, "%s: %s: %v\n", initArg0, step, err)
		os.Exit(initExitCode)
	}
	var b [1]byte
	n, err := syscall.Read(syncFD, b[:])
	if n != 1 {
		if err == nil {
			err = errors.New("the runtime gave up")
		}
		fail("wait for the runtime", err)
	}
	_ = syscall.Close(syncFD)
	// Mounts made here must not propagate back to the host.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		fail("make mounts private", err)
	}
	if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		fail("mount /proc", err)
	}
	if err := syscall.Sethostname([]byte(hostname)); err != nil {
		fail("set hostname", err)
	}
	fail("exec "+binary, syscall.Exec(binary, argv, os.Environ()))
}
