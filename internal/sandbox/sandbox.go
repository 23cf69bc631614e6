// Package sandbox defines the Runtime interface that every sandbox runtime
// (process, fake, containerd) implements. The conformance suite they all
// pass is package sandboxtest.
//
// A sandbox is one isolated instance of a function: something that serves
// HTTP on an address the data plane can dial. The worker owns the lifecycle;
// a runtime only knows how to create, delete, list and watch sandboxes.
package sandbox

import (
	"context"
	"errors"
	"time"
)

// DefaultPath is the PATH of a function whose spec (and image) sets none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Errors a runtime returns; callers test them with errors.Is.
var (
	// ErrInvalid: the spec cannot be run by this runtime (missing binary,
	// image without a mapping, ...). Retrying does not help.
	ErrInvalid = errors.New("invalid sandbox spec")
	// ErrExists: a sandbox with this id already exists.
	ErrExists = errors.New("sandbox already exists")
	// ErrNotReady: the sandbox started but did not become ready (exited, or
	// did not answer on its port in time).
	ErrNotReady = errors.New("sandbox did not become ready")
)

// Spec says what to run.
type Spec struct {
	ID         string // unique on the worker; chosen by the control plane
	Function   string
	Generation uint64
	Binary     string // absolute path of an executable (process runtime)
	Image      string // image reference (containerd; mapped by process)
	Args       []string
	Env        map[string]string
	// Resources requested; 0 means no limit.
	CPUMillicores int64
	MemoryMiB     int64
}

// Sandbox is a running sandbox.
type Sandbox struct {
	ID            string
	Function      string
	Generation    uint64
	Address       string // host:port, where it serves HTTP
	CPUMillicores int64
	MemoryMiB     int64
	Started       time.Time
}

// Exit reports a sandbox that stopped without Delete being called.
type Exit struct {
	ID     string
	Reason string // for example "exit status 2: <last lines of stderr>"
}

// Runtime creates and destroys sandboxes. Implementations are safe for
// concurrent use.
type Runtime interface {
	// Name is the runtime's name as flags spell it ("process", "fake").
	Name() string
	// Create starts a sandbox and returns once it is ready, that is once it
	// answers on its address. On error nothing is left behind. The error
	// wraps ErrInvalid, ErrExists or ErrNotReady when one of them applies,
	// and its text says what to fix.
	Create(ctx context.Context, spec Spec) (Sandbox, error)
	// Delete stops the sandbox and frees everything it held (processes,
	// cgroups, ports, namespaces). Deleting an unknown id returns nil.
	Delete(ctx context.Context, id string) error
	// List returns the sandboxes that are running, including those found
	// again after a restart of the worker (where the runtime can adopt them).
	List(ctx context.Context) ([]Sandbox, error)
	// Close deletes every sandbox and releases the runtime.
	Close(ctx context.Context) error
}

// Prepuller is implemented by runtimes that fetch images (containerd), so
// that a function's image can be made ready before its first cold start.
// Runtimes without images (process, fake) do not implement it, and the
// worker ignores prepull requests for them.
type Prepuller interface {
	// Prepull fetches and unpacks image, so that a later Create of it does
	// not wait for a pull. It is idempotent: an image the runtime has is
	// not downloaded again (a tag is only looked up, to see whether it moved),
	// and one being pulled (for a Create, or another Prepull) is pulled
	// once. The error wraps ErrInvalid when retrying
	// cannot help (a malformed or unknown reference, refused credentials).
	Prepull(ctx context.Context, image string) error
}

// ExitFunc is called by a runtime, from its own goroutine, when a ready
// sandbox stops without Delete. Runtimes take it in their constructors.
type ExitFunc func(Exit)
