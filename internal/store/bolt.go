package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/batonfaas/baton/internal/errdefs"
)

var bucketFunctions = []byte("functions")

// Bolt is the embedded single-node store: one bbolt file.
type Bolt struct {
	db *bolt.DB
}

// OpenBolt opens (or creates) the bbolt file at path. A second process
// opening the same file waits up to a second and then fails with a message
// saying the file is in use.
func OpenBolt(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s (is another control plane using this data directory?): %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketFunctions)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Bolt{db: db}, nil
}

func (b *Bolt) Put(_ context.Context, key string, value []byte) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFunctions).Put([]byte(key), value)
	})
}

func (b *Bolt) Delete(_ context.Context, key string) error {
	return b.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFunctions).Delete([]byte(key))
	})
}

func (b *Bolt) Get(_ context.Context, key string) ([]byte, error) {
	var out []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketFunctions).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("%q: %w", key, errdefs.ErrNotFound)
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

func (b *Bolt) List(_ context.Context, fn func(key string, value []byte) error) error {
	return b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFunctions).ForEach(func(k, v []byte) error {
			return fn(string(k), v)
		})
	})
}

func (b *Bolt) Close() error { return b.db.Close() }
