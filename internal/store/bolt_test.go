package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/batonfaas/baton/internal/errdefs"
)

func TestBoltRoundTripAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "baton.db")
	b, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	s := NewCounting(b)
	if err := s.Put(ctx, "b", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Fatalf("delete of a missing key: %v", err)
	}
	if _, err := s.Get(ctx, "missing"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get missing: %v, want ErrNotFound", err)
	}
	if got := s.Writes(); got != 3 {
		t.Fatalf("writes = %d, want 3", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A second open of the same file sees the same records, in key order.
	b, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var keys, vals []string
	if err := b.List(ctx, func(k string, v []byte) error {
		keys, vals = append(keys, k), append(vals, string(v))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0] != "a" || vals[0] != "1" || keys[1] != "b" || vals[1] != "2" {
		t.Fatalf("after reopen: keys %v vals %v", keys, vals)
	}
	if err := b.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "a"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("deleted key still there: %v", err)
	}
}

func TestMemoryStore(t *testing.T) {
	ctx := context.Background()
	s := NewMemory()
	s.Put(ctx, "b", []byte("2"))
	s.Put(ctx, "a", []byte("1"))
	var keys []string
	s.List(ctx, func(k string, _ []byte) error { keys = append(keys, k); return nil })
	if len(keys) != 2 || keys[0] != "a" {
		t.Fatalf("list: %v", keys)
	}
	s.Delete(ctx, "a")
	if _, err := s.Get(ctx, "a"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
}
