package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Stage is where a runtime's sandbox is in its life.
type Stage int

const (
	Creating Stage = iota // Create is running; it cleans up on failure
	Running               // ready; Delete or the exit watcher may claim it
	Stopping              // claimed by Delete or the exit watcher, which release it
)

// Life is the part of a runtime's record of a sandbox that its life cycle
// goes by, the same in every runtime that makes real sandboxes (process,
// containerd): a runtime embeds it in its record, keeps the records in a
// map by id under one mutex, and lets the functions of this file work on
// them: Register, EndCreate and MarkRunning in Create, ClaimExit in the
// exit watcher, Claim in Delete, Forget when a record is released,
// ListRunning in List and CloseAll in Close.
type Life struct {
	Sandbox Sandbox
	Stage   Stage              // guarded by the runtime's mutex
	Cancel  context.CancelFunc // cancels a Create in progress
	Created chan struct{}      // closed when Create has finished, either way
	Gone    chan struct{}      // closed when everything is released
}

// NewLife is the Life of a sandbox that Create is about to make from spec;
// cancel cancels that Create.
func NewLife(spec Spec, cancel context.CancelFunc) Life {
	return Life{
		Sandbox: Sandbox{
			ID:            spec.ID,
			Function:      spec.Function,
			Generation:    spec.Generation,
			CPUMillicores: spec.CPUMillicores,
			MemoryMiB:     spec.MemoryMiB,
		},
		Cancel:  cancel,
		Created: make(chan struct{}),
		Gone:    make(chan struct{}),
	}
}

func (l *Life) life() *Life { return l }

// record is a runtime's record of a sandbox: a pointer to a struct
// embedding Life.
type record interface {
	comparable
	life() *Life
}

// Register adds b, a sandbox Create is about to make, to boxes under mu,
// which guards boxes and closed. It fails if closed is set or the id is
// taken (ErrExists). Once it succeeds, Create must defer EndCreate.
func Register[B record](mu *sync.Mutex, boxes map[string]B, closed *bool, b B) error {
	id := b.life().Sandbox.ID
	mu.Lock()
	defer mu.Unlock()
	if *closed {
		return errors.New("runtime is closed")
	}
	if _, taken := boxes[id]; taken {
		return ErrExists
	}
	boxes[id] = b
	return nil
}

// EndCreate ends the Create of b, which returns *err: if it failed, abort
// releases b; then Created is closed, so that a Claim waiting for the
// Create looks again.
func EndCreate[B record](b B, err *error, abort func(B)) {
	if *err != nil {
		abort(b)
	}
	close(b.life().Created)
}

// MarkRunning marks b Running, under mu, once its Create has succeeded. It
// returns false, leaving b to Create to release, if exited is closed: the
// sandbox exited after it answered, and its exit watcher, which saw it
// still Creating, left it alone.
func MarkRunning[B record](mu *sync.Mutex, b B, exited <-chan struct{}) bool {
	mu.Lock()
	defer mu.Unlock()
	select {
	case <-exited:
		return false
	default:
	}
	b.life().Stage = Running
	return true
}

// ClaimExit claims b, under mu, for its exit watcher, which has seen it
// exit: it returns true, b now Stopping, if b was Running, and false if
// Create or Delete owns its release.
func ClaimExit[B record](mu *sync.Mutex, b B) bool {
	mu.Lock()
	defer mu.Unlock()
	l := b.life()
	if l.Stage != Running {
		return false
	}
	l.Stage = Stopping
	return true
}

// Forget removes b from boxes, under mu, unless another record took its id
// since, and closes Gone: the last step of releasing b.
func Forget[B record](mu *sync.Mutex, boxes map[string]B, b B) {
	l := b.life()
	mu.Lock()
	if boxes[l.Sandbox.ID] == b {
		delete(boxes, l.Sandbox.ID)
	}
	mu.Unlock()
	close(l.Gone)
}

// Claim claims sandbox id for Delete, under mu, which guards boxes and
// every record's Stage. A Create in progress is cancelled and waited for;
// a deletion in progress is waited for. It returns the record, now
// Stopping, for the caller to release, or ok false when there is nothing
// left to release (no such sandbox, or another deletion released it).
func Claim[B record](ctx context.Context, mu *sync.Mutex, boxes map[string]B, id string) (b B, ok bool, err error) {
	for {
		mu.Lock()
		b, found := boxes[id]
		if !found {
			mu.Unlock()
			return b, false, nil
		}
		l := b.life()
		switch l.Stage {
		case Creating:
			mu.Unlock()
			l.Cancel()
			select {
			case <-l.Created:
				continue // gone, or running: look again
			case <-ctx.Done():
				return b, false, fmt.Errorf("delete sandbox %s: %w", id, ctx.Err())
			}
		case Stopping:
			mu.Unlock()
			select {
			case <-l.Gone:
				return b, false, nil
			case <-ctx.Done():
				return b, false, fmt.Errorf("delete sandbox %s: %w", id, ctx.Err())
			}
		}
		l.Stage = Stopping
		mu.Unlock()
		return b, true, nil
	}
}

// ListRunning returns the running sandboxes of boxes, ordered by id. mu
// guards boxes.
func ListRunning[B record](mu *sync.Mutex, boxes map[string]B) []Sandbox {
	mu.Lock()
	out := make([]Sandbox, 0, len(boxes))
	for _, b := range boxes {
		if l := b.life(); l.Stage == Running {
			out = append(out, l.Sandbox)
		}
	}
	mu.Unlock()
	slices.SortFunc(out, func(a, b Sandbox) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// CloseAll sets closed, under mu, so that no Register succeeds any more,
// and deletes every sandbox of boxes with del (the runtime's Delete),
// concurrently, at most limit at once (0: no limit), waiting for them all.
// It returns the deletions' errors joined, and first false if closed was
// already set (doing nothing then).
func CloseAll[B record](ctx context.Context, mu *sync.Mutex, boxes map[string]B, closed *bool, limit int,
	del func(context.Context, string) error) (first bool, err error) {
	mu.Lock()
	if *closed {
		mu.Unlock()
		return false, nil
	}
	*closed = true
	ids := make([]string, 0, len(boxes))
	for id := range boxes {
		ids = append(ids, id)
	}
	mu.Unlock()
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	var sem chan struct{}
	if limit > 0 {
		sem = make(chan struct{}, limit)
	}
	for i, id := range ids {
		wg.Go(func() {
			if sem != nil {
				sem <- struct{}{}
				defer func() { <-sem }()
			}
			errs[i] = del(ctx, id)
		})
	}
	wg.Wait()
	return true, errors.Join(errs...)
}
