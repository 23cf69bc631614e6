package controlplane

import (
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/autoscaler"
)

// Soft state. Everything in this file lives in memory only and is rebuilt
// from workers and data planes after a restart; it is guarded by
// ControlPlane.mu.

type sandboxState int

const (
	sbPending  sandboxState = iota // CreateSandbox sent, not ready yet
	sbReady                        // serving; in every data plane's table
	sbDraining                     // out of the tables; deleted after its drain delay
	sbDeleting                     // DeleteSandbox sent
)

type sandbox struct {
	id           string
	fn           string
	generation   uint64
	worker       *worker
	state        sandboxState
	address      string
	cpu, memory  int64
	createMicros int64
	since        time.Time // entered its current state
}

type function struct {
	def        *pb.Function
	cfg        autoscaler.Config
	window     *autoscaler.Window
	windowSpan time.Duration
	scaler     autoscaler.State
	desired    int32
	active     bool // load seen since the last autoscaler decision
	sandboxes  map[string]*sandbox

	lastLoad  time.Time        // last report with non-zero load
	load      map[string]int32 // data plane id -> in flight + queued at its last report (nil: none)
	lastErr   string
	lastErrAt time.Time
	failures  int       // consecutive failed creations
	backoff   time.Time // no new creations before this
	retry     bool      // a retry after the back-off is scheduled

	prepullFailed map[string]*pb.PrepullFailure // worker id -> its last prepull of the image failed
}

// windowBucket is the resolution of the autoscaler's metric windows.
const windowBucket = time.Second

func newFunction(def *pb.Function, now time.Time) *function {
	fn := &function{sandboxes: make(map[string]*sandbox)}
	fn.update(def)
	return fn
}

// update applies a new definition (a deploy of an existing name).
func (fn *function) update(def *pb.Function) {
	fn.def = def
	fn.cfg = scalingConfig(def.Spec)
	// The window spans the stable window; a changed window starts afresh.
	if fn.window == nil || fn.windowSpan != fn.cfg.StableWindow {
		fn.window = autoscaler.NewWindow(windowBucket, max(fn.cfg.StableWindow, windowBucket))
		fn.windowSpan = fn.cfg.StableWindow
	}
	fn.failures, fn.lastErr, fn.backoff = 0, "", time.Time{}
}

func (fn *function) name() string { return fn.def.Spec.Name }

// setLoad records a data plane's latest in-flight+queued count for fn.
func (fn *function) setLoad(dp string, n int32) {
	if n == 0 {
		delete(fn.load, dp)
		return
	}
	if fn.load == nil {
		fn.load = make(map[string]int32, 1)
	}
	fn.load[dp] = n
}

// demand is the requests in flight and queued for fn over all data planes,
// as last reported.
func (fn *function) demand() int32 {
	var n int32
	for _, v := range fn.load {
		n += v
	}
	return n
}

// counts returns the current generation's pending and ready sandboxes.
func (fn *function) counts() (pending, ready int32) {
	for _, sb := range fn.sandboxes {
		if sb.generation != fn.def.Generation {
			continue
		}
		switch sb.state {
		case sbPending:
			pending++
		case sbReady:
			ready++
		}
	}
	return pending, ready
}

type worker struct {
	id        string
	hostname  string
	runtime   string
	capacity  *pb.Resources
	used      *pb.Resources // as the worker last reported it
	usedCPU   int64         // requested by the sandboxes placed there
	usedMem   int64
	sandboxes map[string]*sandbox
	session   *workerSession // nil while disconnected
	lastBeat  time.Time
	up        bool
}

func (w *worker) add(sb *sandbox) {
	w.sandboxes[sb.id] = sb
	w.usedCPU += sb.cpu
	w.usedMem += sb.memory
}

func (w *worker) remove(sb *sandbox) {
	if _, ok := w.sandboxes[sb.id]; !ok {
		return
	}
	delete(w.sandboxes, sb.id)
	w.usedCPU -= sb.cpu
	w.usedMem -= sb.memory
}
