package process

import (
	"os"
	"runtime"
)

// The parent-death signal of a child (SysProcAttr.Pdeathsig) fires when the
// OS thread that started it exits, not the process. Go ends a thread when a
// goroutine locked to it returns without unlocking, which other code in the
// worker may do (namespace switching does, when switching back fails). So
// every sandbox is started from one thread that is locked for the life of
// the runtime and ends only after Close has stopped all its sandboxes.

type spawnRequest struct {
	argv  []string
	attr  *os.ProcAttr
	reply chan spawnResult
}

type spawnResult struct {
	proc *os.Process
	err  error
}

// spawner starts the processes asked for on reqs from its own locked
// thread, until reqs is closed. The thread is never unlocked: it exits with
// the goroutine, by then without children.
func spawner(reqs <-chan spawnRequest) {
	runtime.LockOSThread()
	for req := range reqs {
		proc, err := os.StartProcess("/proc/self/exe", req.argv, req.attr)
		req.reply <- spawnResult{proc, err}
	}
}

// spawn starts the sandbox init through the spawner.
func (r *Runtime) spawn(argv []string, attr *os.ProcAttr) (*os.Process, error) {
	reply := make(chan spawnResult, 1)
	r.spawns <- spawnRequest{argv: argv, attr: attr, reply: reply}
	res := <-reply
	return res.proc, res.err
}
