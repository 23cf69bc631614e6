package dataplane

import (
	"sync"
	"sync/atomic"
	"time"

	controlplanev1 "github.com/batonfaas/baton/api/controlplane/v1"
)

// The routing table: function name -> *function, read on every request
// without a lock. The map is split into shards, each an immutable Go map
// behind an atomic pointer; a writer copies only the shards it changes
// (copy-on-write), so adding one function among thousands costs one small
// copy and readers never wait. Only adding or removing a function touches the
// map: endpoint changes swap the function's own routeState pointer.

const tableShards = 64

type table struct {
	shards [tableShards]atomic.Pointer[map[string]*function]
}

// shardOf hashes a name (FNV-1a) to its shard.
func shardOf(name string) int {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return int(h % tableShards)
}

func shardOfBytes(name []byte) int {
	h := uint32(2166136261)
	for _, c := range name {
		h ^= uint32(c)
		h *= 16777619
	}
	return int(h % tableShards)
}

// get returns the function called name, or nil.
func (t *table) get(name string) *function {
	m := t.shards[shardOf(name)].Load()
	if m == nil {
		return nil
	}
	return (*m)[name]
}

// lookup is get for a name as it came off the wire: function names are
// lower case, so an upper-case name is folded first (on the stack for names
// of ordinary length, so the lookup does not allocate).
func (t *table) lookup(name string) *function {
	upper := false
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			upper = true
			break
		}
	}
	if !upper {
		return t.get(name)
	}
	var buf [128]byte
	var b []byte
	if len(name) <= len(buf) {
		b = buf[:len(name)]
	} else {
		b = make([]byte, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	m := t.shards[shardOfBytes(b)].Load()
	if m == nil {
		return nil
	}
	return (*m)[string(b)] // does not allocate: the compiler borrows b
}

// each calls f for every function (a snapshot per shard).
func (t *table) each(f func(*function)) {
	for i := range t.shards {
		if m := t.shards[i].Load(); m != nil {
			for _, fn := range *m {
				f(fn)
			}
		}
	}
}

// tableTxn batches writes: the first write to a shard copies it, later writes
// in the same transaction change the copy, and commit publishes every copied
// shard. Callers serialise transactions (router.wmu).
type tableTxn struct {
	t     *table
	dirty [tableShards]map[string]*function
}

func (x *tableTxn) get(name string) *function {
	if m := x.dirty[shardOf(name)]; m != nil {
		return m[name]
	}
	return x.t.get(name)
}

func (x *tableTxn) writable(s int) map[string]*function {
	if m := x.dirty[s]; m != nil {
		return m
	}
	var m map[string]*function
	if old := x.t.shards[s].Load(); old != nil {
		m = make(map[string]*function, len(*old)+1)
		for k, v := range *old {
			m[k] = v
		}
	} else {
		m = make(map[string]*function)
	}
	x.dirty[s] = m
	return m
}

func (x *tableTxn) put(fn *function) { x.writable(shardOf(fn.name))[fn.name] = fn }

func (x *tableTxn) del(name string) { delete(x.writable(shardOf(name)), name) }

func (x *tableTxn) commit() {
	for s, m := range x.dirty {
		if m != nil {
			x.t.shards[s].Store(&m)
		}
	}
}

// endpoint is one sandbox of a function as the data plane sees it. It
// survives route updates that keep its sandbox, so its in-flight counter
// stays true across them.
type endpoint struct {
	inflight atomic.Int32 // requests holding one of its slots
	_        [60]byte     // keep other endpoints' counters off this cache line

	id           string
	addr         string
	worker       string
	createMicros int64
	added        time.Time // when it entered the table: decides X-Baton-Cold-Start
}

// tryAcquire takes a slot if fewer than limit are taken.
func (ep *endpoint) tryAcquire(limit int32) bool {
	for {
		n := ep.inflight.Load()
		if n >= limit {
			return false
		}
		if ep.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// routeState is an immutable snapshot of a function's route; an update
// replaces it whole.
type routeState struct {
	version     uint64
	generation  uint64
	concurrency int32         // slots per endpoint, >= 1
	timeout     time.Duration // bounds a request's whole life, > 0
	err         string        // why sandboxes fail to start, if they do
	retry       controlplanev1.RetryPolicy
	eps         []*endpoint
	// dead lists sandboxes this data plane found dead (refused or dropped a
	// fresh connection) and took out of eps before the control plane said
	// so; an update that still lists one leaves it out until its mark
	// expires, when it comes back (router.revive). Written under the
	// router's wmu.
	dead []deadMark
}

// deadMark is a sandbox taken out of routing by the data plane itself.
type deadMark struct {
	id    string
	until time.Time
	ep    *endpoint // as the latest route lists it; nil if it does not
}

// function is one routing-table entry. Fields are grouped by who writes
// them, with padding between the groups written on every request.
type function struct {
	name  string
	state atomic.Pointer[routeState]

	_          [48]byte
	rr         atomic.Uint64 // rotation counter for round-robin and least-in-flight
	_          [56]byte
	load       loadMeter
	_          [48]byte
	queued     atomic.Int32 // len(q), written under mu, read without it
	reporting  atomic.Bool  // in the router's active set (see load.go)
	scaleDirty atomic.Bool  // in the router's scale set (see router.go)

	mu        sync.Mutex // guards the fields below
	q         waitQueue
	gone      *reqError // set when the function is deleted: answer for waiters
	scaleMark int       // queue length when the last ScaleRequest was queued; 0: none outstanding

	// Owned by the load reporter (one goroutine at a time).
	rep reportState
}

func newFunction(name string) *function {
	return &function{name: name}
}
