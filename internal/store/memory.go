package store

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/batonfaas/baton/internal/errdefs"
)

// Memory is a Store that keeps its records in memory only. It is for
// benchmarks that measure something else than persistence (deploying
// thousands of functions into bbolt costs an fsync each) and for emulated
// clusters; it never backs a real registry.
type Memory struct {
	mu sync.Mutex
	m  map[string][]byte
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return &Memory{m: map[string][]byte{}} }

func (s *Memory) Put(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[key] = append([]byte(nil), value...)
	return nil
}

func (s *Memory) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, key)
	return nil
}

func (s *Memory) Get(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, fmt.Errorf("%q: %w", key, errdefs.ErrNotFound)
	}
	return append([]byte(nil), v...), nil
}

func (s *Memory) List(_ context.Context, fn func(key string, value []byte) error) error {
	s.mu.Lock()
	keys := make([]string, 0, len(s.m))
	for k := range s.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	vals := make([][]byte, len(keys))
	for i, k := range keys {
		vals[i] = s.m[k]
	}
	s.mu.Unlock()
	for i, k := range keys {
		if err := fn(k, vals[i]); err != nil {
			return err
		}
	}
	return nil
}

func (s *Memory) Close() error { return nil }
