package sandbox

import (
	"context"
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
// map by id under one mutex, and lets Claim and ListRunning work on them.
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

// record is a runtime's record of a sandbox: a struct embedding Life.
type record interface{ life() *Life }

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
