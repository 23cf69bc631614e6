// Package fake is the emulated sandbox runtime for scale experiments. A
// sandbox costs a map entry: Create waits a configurable delay and returns
// the address of one in-process HTTP server (HTTP/1.1 and h2c) that answers
// every request with the workload protocol (package workload), shared by all
// the sandboxes of a runtime, or of many runtimes when emulated workers run
// in one process. It lets one machine emulate a large cluster; it never
// stands in for testing the process runtime.
package fake

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
)

// DefaultDelay is the default time Create takes.
const DefaultDelay = 40 * time.Millisecond

// Config configures a fake Runtime.
type Config struct {
	// Delay is how long Create takes; 0 means DefaultDelay, a negative
	// value none.
	Delay time.Duration
	// Listen is where the runtime's own function server listens when
	// Server is nil; default "127.0.0.1:0".
	Listen string
	// Server, when set, is a function server shared with other runtimes;
	// the runtime does not close it.
	Server *Server
	// OnExit is told about sandboxes that stop without Delete (see Kill).
	OnExit sandbox.ExitFunc
}

// Runtime is the fake runtime. It is safe for concurrent use.
type Runtime struct {
	delay     time.Duration
	server    *Server
	ownServer bool
	onExit    sandbox.ExitFunc

	mu     sync.Mutex
	boxes  map[string]*box
	closed bool
	wg     sync.WaitGroup // OnExit calls in flight
}

var _ sandbox.Runtime = (*Runtime)(nil)

type box struct {
	sb    sandbox.Sandbox
	ready bool
}

// New returns a fake runtime, starting its own function server unless
// cfg.Server is set.
func New(cfg Config) (*Runtime, error) {
	r := &Runtime{delay: cfg.Delay, server: cfg.Server, onExit: cfg.OnExit, boxes: map[string]*box{}}
	if r.delay == 0 {
		r.delay = DefaultDelay
	}
	if r.onExit == nil {
		r.onExit = func(sandbox.Exit) {}
	}
	if r.server == nil {
		listen := cfg.Listen
		if listen == "" {
			listen = "127.0.0.1:0"
		}
		s, err := NewServer(listen)
		if err != nil {
			return nil, fmt.Errorf("fake runtime: %w", err)
		}
		r.server, r.ownServer = s, true
	}
	return r, nil
}

// Name returns "fake".
func (r *Runtime) Name() string { return "fake" }

// Create waits the configured delay and returns a sandbox served by the
// shared function server.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	sb, err := r.create(ctx, spec)
	if err != nil {
		return sandbox.Sandbox{}, fmt.Errorf("create sandbox %s: %w", spec.ID, err)
	}
	return sb, nil
}

func (r *Runtime) create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	switch {
	case spec.ID == "":
		return sandbox.Sandbox{}, fmt.Errorf("%w: empty sandbox id", sandbox.ErrInvalid)
	case spec.Function == "":
		return sandbox.Sandbox{}, fmt.Errorf("%w: empty function name", sandbox.ErrInvalid)
	case spec.Binary == "" && spec.Image == "":
		return sandbox.Sandbox{}, fmt.Errorf("%w: the spec names neither a binary nor an image", sandbox.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return sandbox.Sandbox{}, err
	}
	b := &box{sb: sandbox.Sandbox{
		ID:            spec.ID,
		Function:      spec.Function,
		Generation:    spec.Generation,
		Address:       r.server.Addr(),
		CPUMillicores: spec.CPUMillicores,
		MemoryMiB:     spec.MemoryMiB,
	}}
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return sandbox.Sandbox{}, errors.New("runtime is closed")
	case r.boxes[spec.ID] != nil:
		r.mu.Unlock()
		return sandbox.Sandbox{}, sandbox.ErrExists
	}
	r.boxes[spec.ID] = b
	r.mu.Unlock()

	if r.delay > 0 {
		t := time.NewTimer(r.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			r.mu.Lock()
			if r.boxes[spec.ID] == b {
				delete(r.boxes, spec.ID)
			}
			r.mu.Unlock()
			return sandbox.Sandbox{}, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.boxes[spec.ID] != b {
		return sandbox.Sandbox{}, fmt.Errorf("%w: deleted while it was being created", sandbox.ErrNotReady)
	}
	b.ready = true
	b.sb.Started = time.Now()
	return b.sb, nil
}

// Delete forgets the sandbox; a Create in progress for id then fails.
func (r *Runtime) Delete(ctx context.Context, id string) error {
	r.mu.Lock()
	delete(r.boxes, id)
	r.mu.Unlock()
	return nil
}

// Kill is for tests and fault injection: the sandbox exits as if it
// crashed. It is forgotten and OnExit is called from another goroutine.
// Unknown ids and sandboxes still being created are ignored.
func (r *Runtime) Kill(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.boxes[id]
	if b == nil || !b.ready || r.closed {
		return
	}
	delete(r.boxes, id)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.onExit(sandbox.Exit{ID: id, Reason: "killed (fault injection)"})
	}()
}

// List returns the ready sandboxes, ordered by id.
func (r *Runtime) List(ctx context.Context) ([]sandbox.Sandbox, error) {
	r.mu.Lock()
	out := make([]sandbox.Sandbox, 0, len(r.boxes))
	for _, b := range r.boxes {
		if b.ready {
			out = append(out, b.sb)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b sandbox.Sandbox) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Close forgets every sandbox and closes the runtime's own server (not a
// shared one). Later Creates fail; a second Close returns nil.
func (r *Runtime) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	clear(r.boxes)
	r.mu.Unlock()
	r.wg.Wait()
	if r.ownServer {
		r.server.Close()
	}
	return nil
}
