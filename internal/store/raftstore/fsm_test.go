package raftstore

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func TestCommandCodec(t *testing.T) {
	tests := []struct {
		op    byte
		key   string
		value []byte
	}{
		{opPut, "fn", []byte("spec")},
		{opPut, "", nil},
		{opPut, "k", bytes.Repeat([]byte{0xff}, 300)},
		{opPut, strings.Repeat("long key ", 40), []byte{0}},
		{opDelete, "fn", nil},
	}
	for _, tt := range tests {
		b := encodeCommand(tt.op, tt.key, tt.value)
		op, key, value, err := decodeCommand(b)
		if err != nil || op != tt.op || key != tt.key || !bytes.Equal(value, tt.value) {
			t.Errorf("decode(encode(%d, %q, %q)) = %d, %q, %q, %v", tt.op, tt.key, tt.value, op, key, value, err)
		}
	}
	if n := len(encodeCommand(opPut, "fn", []byte("spec"))); n != 1+1+2+4 {
		t.Errorf("a put of a 2-byte key and a 4-byte value takes %d bytes", n)
	}
}

func TestCommandCorrupt(t *testing.T) {
	for _, b := range [][]byte{
		nil,
		{opPut},
		{9, 0},                  // unknown op
		{opPut, 5, 'a'},         // key longer than the entry
		{opPut, 0x80},           // truncated varint
		{opDelete, 1, 'k', 'v'}, // delete with a value
		{opPut, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, // huge length
	} {
		if _, _, _, err := decodeCommand(b); !errors.Is(err, errCorrupt) {
			t.Errorf("decode %v: %v, want errCorrupt", b, err)
		}
	}
}

func TestFSMApply(t *testing.T) {
	f := newFSM()
	apply := func(i uint64, typ raft.LogType, data []byte) any {
		return f.Apply(&raft.Log{Index: i, Type: typ, Data: data})
	}
	data := encodeCommand(opPut, "a", []byte("1"))
	if r := apply(1, raft.LogCommand, data); r != nil {
		t.Fatalf("apply put: %v", r)
	}
	data[len(data)-1] = '2' // the FSM keeps its own copy
	apply(2, raft.LogCommand, encodeCommand(opPut, "b", []byte("2")))
	apply(3, raft.LogNoop, nil)
	apply(4, raft.LogCommand, encodeCommand(opDelete, "b", nil))
	apply(5, raft.LogCommand, encodeCommand(opDelete, "missing", nil))
	if r, ok := apply(6, raft.LogCommand, []byte{42, 0}).(error); !ok || !errors.Is(r, errCorrupt) {
		t.Errorf("apply of a corrupt entry returned %v", r)
	}
	keys, values := f.records()
	if len(keys) != 1 || keys[0] != "a" || string(values[0]) != "1" {
		t.Errorf("state %q %q, want a=1", keys, values)
	}
}

// sink is a raft.SnapshotSink in memory.
type sink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Close() error  { s.closed = true; return nil }
func (s *sink) Cancel() error { s.cancelled = true; return nil }

func TestFSMSnapshotRestore(t *testing.T) {
	f := newFSM()
	want := map[string]string{"a": "1", "b": "", "c": strings.Repeat("x", 1000)}
	for k, v := range want {
		f.Apply(&raft.Log{Type: raft.LogCommand, Data: encodeCommand(opPut, k, []byte(v))})
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Writes after Snapshot do not change it.
	f.Apply(&raft.Log{Type: raft.LogCommand, Data: encodeCommand(opPut, "d", []byte("4"))})
	var s sink
	if err := snap.Persist(&s); err != nil || !s.closed {
		t.Fatalf("persist: %v (closed %v)", err, s.closed)
	}
	snap.Release()
	encoded := bytes.Clone(s.Bytes())

	g := newFSM()
	g.Apply(&raft.Log{Type: raft.LogCommand, Data: encodeCommand(opPut, "stale", nil)})
	if err := g.Restore(io.NopCloser(&s.Buffer)); err != nil {
		t.Fatal(err)
	}
	keys, values := g.records()
	got := map[string]string{}
	for i, k := range keys {
		got[k] = string(values[i])
	}
	if len(got) != len(want) {
		t.Fatalf("restored %d records %q, want %d", len(got), keys, len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("restored %s = %q, want %q", k, got[k], v)
		}
	}

	// Damaged snapshots are refused and leave the state alone.
	for name, b := range map[string][]byte{
		"empty":         nil,
		"version":       append([]byte{9}, encoded[1:]...),
		"truncated":     encoded[:len(encoded)-3],
		"trailing data": append(bytes.Clone(encoded), 0),
		"huge field":    {snapshotVersion, 1, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		if err := g.Restore(io.NopCloser(bytes.NewReader(b))); err == nil {
			t.Errorf("%s: restore succeeded", name)
		}
	}
	if k, _ := g.records(); len(k) != len(want) {
		t.Errorf("a failed restore changed the state: %q", k)
	}
	if _, err := readSnapshot(bufio.NewReader(bytes.NewReader(encoded))); err != nil {
		t.Errorf("read intact snapshot: %v", err)
	}
}

type failingSink struct{ sink }

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestFSMSnapshotPersistError(t *testing.T) {
	f := newFSM()
	f.Apply(&raft.Log{Type: raft.LogCommand, Data: encodeCommand(opPut, "a", []byte("1"))})
	snap, _ := f.Snapshot()
	var s failingSink
	err := snap.Persist(&s)
	if err == nil || !strings.Contains(err.Error(), "disk full") || !s.cancelled {
		t.Errorf("persist to a failing sink: %v (cancelled %v)", err, s.cancelled)
	}
}
