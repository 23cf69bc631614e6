package raftstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
)

// Commands in the raft log: one op byte, the key's length as a uvarint, the
// key, then the value (the rest of the entry; empty for a delete).
const (
	opPut    byte = 1
	opDelete byte = 2
)

// snapshotVersion is the first byte of every snapshot this package writes.
// After it: the record count as a uvarint, then per record (in key order)
// the key's length, the key, the value's length and the value, lengths as
// uvarints.
const snapshotVersion byte = 1

// maxField bounds a key or value read from a snapshot or a command, so that
// a corrupt length cannot make Restore allocate without limit. Function
// definitions are a few kilobytes.
const maxField = 64 << 20

var errCorrupt = errors.New("corrupt raftstore data")

// encodeCommand returns the log entry for op on key (value only for a put).
func encodeCommand(op byte, key string, value []byte) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(key)+len(value))
	b = append(b, op)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return append(b, value...)
}

// decodeCommand reverses encodeCommand. value aliases b.
func decodeCommand(b []byte) (op byte, key string, value []byte, err error) {
	if len(b) < 2 {
		return 0, "", nil, fmt.Errorf("command of %d bytes: %w", len(b), errCorrupt)
	}
	op, b = b[0], b[1:]
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return 0, "", nil, fmt.Errorf("command key length: %w", errCorrupt)
	}
	b = b[w:]
	key, value = string(b[:n]), b[n:]
	switch op {
	case opPut:
	case opDelete:
		if len(value) != 0 {
			return 0, "", nil, fmt.Errorf("delete %q carries a value: %w", key, errCorrupt)
		}
	default:
		return 0, "", nil, fmt.Errorf("command op %d: %w", op, errCorrupt)
	}
	return op, key, value, nil
}

// fsm is the replicated state: a map from key to value, rebuilt from the
// log and snapshots. Values in the map are never modified in place (a put
// stores a fresh copy), so readers and snapshots may share them.
type fsm struct {
	mu sync.RWMutex
	m  map[string][]byte
}

func newFSM() *fsm { return &fsm{m: map[string][]byte{}} }

// Apply applies one committed entry. Its result (nil or an error) is the
// ApplyFuture's response on the replica that proposed it.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	op, key, value, err := decodeCommand(l.Data)
	if err != nil {
		return fmt.Errorf("apply log entry %d: %w", l.Index, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch op {
	case opPut:
		v := make([]byte, len(value))
		copy(v, value)
		f.m[key] = v
	case opDelete:
		delete(f.m, key)
	}
	return nil
}

// get returns the value at key; the caller must not modify it.
func (f *fsm) get(key string) ([]byte, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v, ok := f.m[key]
	return v, ok
}

// records returns the keys in order and their values (shared, read-only).
func (f *fsm) records() ([]string, [][]byte) {
	f.mu.RLock()
	keys := slices.Sorted(maps.Keys(f.m))
	values := make([][]byte, len(keys))
	for i, k := range keys {
		values[i] = f.m[k]
	}
	f.mu.RUnlock()
	return keys, values
}

// Snapshot captures the map. Only the map itself is copied: the values are
// immutable and shared.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	keys, values := f.records()
	return &snapshot{keys: keys, values: values}, nil
}

// Restore replaces the whole map with the snapshot's records.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	m, err := readSnapshot(bufio.NewReader(rc))
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.m = m
	f.mu.Unlock()
	return nil
}

type snapshot struct {
	keys   []string
	values [][]byte
}

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot %s: %w", sink.ID(), err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot %s: %w", sink.ID(), err)
	}
	return nil
}

func (s *snapshot) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	var n [binary.MaxVarintLen64]byte
	uvarint := func(x int) {
		bw.Write(n[:binary.PutUvarint(n[:], uint64(x))])
	}
	bw.WriteByte(snapshotVersion)
	uvarint(len(s.keys))
	for i, k := range s.keys {
		uvarint(len(k))
		bw.WriteString(k)
		uvarint(len(s.values[i]))
		bw.Write(s.values[i])
	}
	return bw.Flush() // bufio.Writer keeps the first error and returns it here
}

func (s *snapshot) Release() {}

func readSnapshot(r *bufio.Reader) (map[string][]byte, error) {
	version, err := r.ReadByte()
	if err != nil {
		return nil, fmt.Errorf("read version: %w", err)
	}
	if version != snapshotVersion {
		return nil, fmt.Errorf("snapshot version %d, want %d: %w", version, snapshotVersion, errCorrupt)
	}
	count, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("read record count: %w", err)
	}
	field := func(what string, i uint64) ([]byte, error) {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, fmt.Errorf("record %d %s length: %w", i, what, noEOF(err))
		}
		if n > maxField {
			return nil, fmt.Errorf("record %d %s of %d bytes: %w", i, what, n, errCorrupt)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, fmt.Errorf("record %d %s: %w", i, what, noEOF(err))
		}
		return b, nil
	}
	m := make(map[string][]byte, min(count, 1<<16))
	for i := range count {
		k, err := field("key", i)
		if err != nil {
			return nil, err
		}
		v, err := field("value", i)
		if err != nil {
			return nil, err
		}
		m[string(k)] = v
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return nil, fmt.Errorf("data after %d records: %w", count, errCorrupt)
	}
	return m, nil
}

// noEOF turns a plain EOF inside a snapshot into ErrUnexpectedEOF: the
// snapshot ended before its record count said it would.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
