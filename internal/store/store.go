// Package store persists what users gave Baton: function definitions. It is
// a small key/value interface so that the embedded bbolt backend can be
// replaced by a replicated one without touching its users. Nothing on the
// invocation path writes here.
package store

import (
	"context"
	"sync/atomic"
)

// Store keeps records by key. Values are opaque bytes (the control plane
// stores encoded function definitions).
type Store interface {
	// Put creates or replaces the value at key.
	Put(ctx context.Context, key string, value []byte) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// Get returns the value at key, or an error wrapping errdefs.ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// List calls fn for every record in key order; fn must not keep value.
	List(ctx context.Context, fn func(key string, value []byte) error) error
	Close() error
}

// Counting wraps a Store and counts the writes that reach it, so tests and
// metrics can prove that nothing on the invocation path persists anything.
type Counting struct {
	Store
	writes atomic.Uint64
}

// NewCounting wraps s.
func NewCounting(s Store) *Counting { return &Counting{Store: s} }

// Writes is the number of Put and Delete calls so far.
func (c *Counting) Writes() uint64 { return c.writes.Load() }

func (c *Counting) Put(ctx context.Context, key string, value []byte) error {
	c.writes.Add(1)
	return c.Store.Put(ctx, key, value)
}

func (c *Counting) Delete(ctx context.Context, key string) error {
	c.writes.Add(1)
	return c.Store.Delete(ctx, key)
}
