package raftstore

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/errdefs"
	"github.com/batonfaas/baton/internal/stats"
)

// Bounds for the waits in these tests. Elections on loopback take a few
// hundred milliseconds at most; the bounds leave room for a loaded machine
// and the race detector.
const (
	electionBound = 3 * time.Second
	failoverBound = time.Second // issue 5: "a new leader within ~1 s"
	applyBound    = 2 * time.Second
)

func TestConfigValidation(t *testing.T) {
	peers := map[string]string{"a": "127.0.0.1:7001", "b": "127.0.0.1:7002"}
	ok := Config{ID: "a", DataDir: "/tmp/x", Bind: "127.0.0.1:7001", Peers: peers}
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string
	}{
		{"ok", func(*Config) {}, ""},
		{"no id", func(c *Config) { c.ID = "" }, "empty replica ID"},
		{"no dir", func(c *Config) { c.DataDir = "" }, "empty data directory"},
		{"no bind", func(c *Config) { c.Bind = "" }, "empty bind address"},
		{"not a peer", func(c *Config) { c.ID = "c" }, "do not include this replica c"},
		{"advertise differs", func(c *Config) { c.Advertise = "127.0.0.1:9" }, "advertises 127.0.0.1:9"},
		{"bad address", func(c *Config) { c.Peers = map[string]string{"a": "127.0.0.1:7001", "b": "nope"} }, "peer b address"},
		{"shared address", func(c *Config) { c.Peers = map[string]string{"a": "127.0.0.1:7001", "b": "127.0.0.1:7001"} }, "share address"},
		{"lease above heartbeat", func(c *Config) {
			c.HeartbeatTimeout = 20 * time.Millisecond
			c.LeaderLeaseTimeout = 30 * time.Millisecond
		}, "LeaderLeaseTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.change(&cfg)
			cfg, err := cfg.withDefaults()
			if err == nil && tt.wantErr != "" {
				// Some limits are raft's own, checked by Open.
				cfg.DataDir = t.TempDir()
				var s *Store
				if s, err = Open(cfg); err == nil {
					s.Close()
				}
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one saying %q", err, tt.wantErr)
			case tt.wantErr != "" && !errors.Is(err, errdefs.ErrInvalid):
				t.Fatalf("error %v does not wrap errdefs.ErrInvalid", err)
			}
		})
	}
	cfg, _ := ok.withDefaults()
	if cfg.HeartbeatTimeout != DefaultHeartbeatTimeout || cfg.ElectionTimeout != DefaultElectionTimeout ||
		cfg.LeaderLeaseTimeout != DefaultLeaderLeaseTimeout || cfg.Advertise != cfg.Bind {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

func TestThreeReplicas(t *testing.T) {
	c := newCluster(t, 3, nil)
	start := time.Now()
	c.startAll()
	leader := c.waitLeader(electionBound, 0)
	t.Logf("first leader %s after %v", c.ids[leader], time.Since(start).Round(time.Millisecond))
	for _, i := range c.live() {
		if i != leader && c.stores[i].IsLeader() {
			t.Fatalf("%s and %s are both leader", c.ids[leader], c.ids[i])
		}
	}
	ctx := context.Background()

	// Writes on the leader reach every replica. (How long they take is
	// BenchmarkPut's.)
	const n = 20
	c.put(leader, "fn", 0, n)
	for _, i := range c.live() {
		c.eventuallyRecords(i, want{"fn": n}, applyBound)
	}

	// Writes on a follower fail and name the leader.
	follower := (leader + 1) % 3
	err := c.stores[follower].Put(ctx, "fn-x", []byte("x"))
	wantNotLeader(t, err, c.ids[leader])
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("error %v does not wrap errdefs.ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), c.peers[c.ids[leader]]) {
		t.Errorf("error %q does not give the leader's address", err)
	}
	wantNotLeader(t, c.stores[follower].Delete(ctx, "fn-000"), c.ids[leader])
	wantNotLeader(t, c.stores[follower].Barrier(ctx), c.ids[leader])

	// Deletes, and what a missing key looks like.
	if err := c.stores[leader].Delete(ctx, key("fn", n-1)); err != nil {
		t.Fatal(err)
	}
	if err := c.stores[leader].Delete(ctx, "never-there"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	for _, i := range c.live() {
		c.eventuallyRecords(i, want{"fn": n - 1}, applyBound)
		if _, err := c.stores[i].Get(ctx, key("fn", n-1)); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s: get of a deleted key: %v, want ErrNotFound", c.ids[i], err)
		}
	}

	// Values are copies; an empty value is a value.
	v, _ := c.stores[leader].Get(ctx, key("fn", 0))
	v[0] = 'X'
	c.checkRecords(leader, want{"fn": n - 1})
	if err := c.stores[leader].Put(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if v, err := c.stores[leader].Get(ctx, "empty"); err != nil || len(v) != 0 {
		t.Errorf("get empty = %q, %v", v, err)
	}

	// List stops at fn's error.
	stop := errors.New("stop")
	var seen int
	err = c.stores[leader].List(ctx, func(string, []byte) error { seen++; return stop })
	if err != stop || seen != 1 {
		t.Errorf("List returned %v after %d calls, want stop after 1", err, seen)
	}

	// A cancelled context is honoured.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.stores[leader].Put(cctx, "late", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("put with a cancelled context: %v", err)
	}
}

func TestSecondOpenOfDataDirFails(t *testing.T) {
	c := newCluster(t, 1, nil)
	c.startAll()
	cfg := c.config(0)
	cfg.Bind = freeAddrs(t, 1)[0]
	cfg.Peers = map[string]string{cfg.ID: cfg.Bind}
	s, err := Open(cfg)
	if err == nil {
		s.Close()
		t.Fatal("a second replica opened the same data directory")
	}
	if !strings.Contains(err.Error(), "another replica") {
		t.Errorf("error %q does not say why", err)
	}
}

func TestSingleReplica(t *testing.T) {
	c := newCluster(t, 1, nil)
	c.startAll()
	c.waitLeader(electionBound, 0)
	c.put(0, "fn", 0, 3)
	c.checkRecords(0, want{"fn": 3})
	c.stop(0)

	// Peers only count at the first start; a change is reported.
	var logs syncBuffer
	cfg := c.config(0)
	cfg.Peers = map[string]string{"r0": cfg.Bind, "r9": "127.0.0.1:1"}
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.stores[0] = s
	c.waitLeader(electionBound, 0)
	c.barrier(0)
	c.checkRecords(0, want{"fn": 3})
	if !strings.Contains(logs.String(), "differs from the configured peers") {
		t.Errorf("no warning about changed peers in %q", logs.String())
	}
}

// TestFailover kills the leader of three replicas three ways and checks
// that the other two elect a new one quickly and lose nothing.
func TestFailover(t *testing.T) {
	for _, how := range []string{"close", "crash", "sigkill"} {
		t.Run(how, func(t *testing.T) {
			c := newCluster(t, 3, nil)
			var proc interface{ Signal(os.Signal) error }
			old := -1
			if how == "sigkill" {
				// r0 runs in its own process and is made leader.
				c.start(1, 2)
				leader := c.waitLeader(electionBound, 0)
				c.put(leader, "fn", 0, 10)
				cmd := c.subprocess(0)
				proc = cmd.Process
				c.transferTo(0)
				old = 0
			} else {
				c.startAll()
				old = c.waitLeader(electionBound, 0)
				c.put(old, "fn", 0, 10)
			}
			var oldTerm uint64
			for _, i := range c.live() {
				oldTerm = max(oldTerm, c.stores[i].Term())
			}
			c.drainLeaderChs()
			var oldCh <-chan bool
			if how != "sigkill" {
				oldCh = c.stores[old].LeaderCh()
			}

			start := time.Now()
			switch how {
			case "close":
				c.stop(old)
			case "crash":
				c.crash(old)
			case "sigkill":
				if err := proc.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			leader, elected := c.firstLeader(start, failoverBound, oldTerm)
			ctx, cancel := context.WithTimeout(context.Background(), applyBound)
			defer cancel()
			if err := c.stores[leader].Barrier(ctx); err != nil {
				t.Fatal(err)
			}
			ready := time.Since(start)
			if err := c.stores[leader].Put(ctx, key("after", 0), value("after", 0)); err != nil {
				t.Fatal(err)
			}
			written := time.Since(start)
			t.Logf("%s of leader %s: %s elected after %v (term %d -> %d), barrier done after %v, first write after %v",
				how, c.ids[old], c.ids[leader], elected.Round(time.Millisecond), oldTerm, c.stores[leader].Term(),
				ready.Round(time.Millisecond), written.Round(time.Millisecond))

			select {
			case v := <-c.stores[leader].LeaderCh():
				if !v {
					t.Errorf("new leader's LeaderCh said false")
				}
			case <-time.After(time.Second):
				t.Errorf("new leader's LeaderCh said nothing")
			}
			if oldCh != nil {
				// The old leader's channel says false and is closed.
				var got []bool
				for v := range oldCh {
					got = append(got, v)
				}
				if !slices.Equal(got, []bool{false}) {
					t.Errorf("old leader's LeaderCh said %v before closing, want [false]", got)
				}
			}
			w := want{"fn": 10, "after": 1}
			c.checkRecords(leader, w)
			for _, i := range c.live() {
				c.eventuallyRecords(i, w, applyBound)
			}
		})
	}
}

// TestRestartAll stops every replica and starts them again on the same
// files (issue 5, chaos scenario 5, in one process).
func TestRestartAll(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.startAll()
	leader := c.waitLeader(electionBound, 0)
	c.put(leader, "fn", 0, 30)
	ctx := context.Background()
	if err := c.stores[leader].Delete(ctx, key("fn", 29)); err != nil {
		t.Fatal(err)
	}
	term := c.stores[leader].Term()
	for _, i := range c.live() {
		c.eventuallyRecords(i, want{"fn": 29}, applyBound)
	}
	c.stopAll()

	start := time.Now()
	c.startAll()
	leader = c.waitLeader(electionBound, term)
	elected := time.Since(start)
	c.barrier(leader)
	t.Logf("restarted: %s leader after %v, registry complete after %v", c.ids[leader],
		elected.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	c.checkRecords(leader, want{"fn": 29})
	c.put(leader, "fn", 29, 31)
	for _, i := range c.live() {
		c.eventuallyRecords(i, want{"fn": 31}, applyBound)
	}
}

// TestSnapshotRestore checks state restored from snapshots: at restart, and
// sent by the leader to a replica that missed compacted log entries.
func TestSnapshotRestore(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.TrailingLogs = 1 // compact the log down to nothing at each snapshot
	})
	c.startAll()
	leader := c.waitLeader(electionBound, 0)
	c.put(leader, "a", 0, 20)
	for _, i := range c.live() {
		c.eventuallyRecords(i, want{"a": 20}, applyBound)
		if err := c.stores[i].raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot %s: %v", c.ids[i], err)
		}
		snaps, _ := filepath.Glob(filepath.Join(c.dirs[i], snapshotsDir, "*", "state.bin"))
		if len(snaps) != 1 {
			t.Fatalf("%s has snapshots %v, want one", c.ids[i], snaps)
		}
	}
	c.put(leader, "b", 0, 5) // after the snapshot: from the log at restart

	// A follower misses writes the leader then compacts away.
	lagging := (leader + 1) % 3
	c.stop(lagging)
	c.put(leader, "c", 0, 10)
	if err := c.stores[leader].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	c.start(lagging)
	w := want{"a": 20, "b": 5, "c": 10}
	c.eventuallyRecords(lagging, w, applyBound)

	var term uint64
	for _, i := range c.live() {
		term = max(term, c.stores[i].Term())
	}
	c.stopAll()
	c.startAll()
	// Each replica restores its latest snapshot before any election.
	for _, i := range c.live() {
		if _, err := c.stores[i].Get(context.Background(), key("a", 19)); err != nil {
			t.Errorf("%s right after Open: %v", c.ids[i], err)
		}
	}
	leader = c.waitLeader(electionBound, term)
	c.barrier(leader)
	c.checkRecords(leader, w)
	for _, i := range c.live() {
		c.eventuallyRecords(i, w, applyBound)
	}
}

// TestFiveReplicas loses two replicas, leader included, and keeps working;
// a third loss stops writes.
func TestFiveReplicas(t *testing.T) {
	c := newCluster(t, 5, nil)
	c.startAll()
	old := c.waitLeader(electionBound, 0)
	c.put(old, "fn", 0, 10)
	term := c.stores[old].Term()
	for _, i := range c.live() {
		c.eventuallyRecords(i, want{"fn": 10}, applyBound)
	}

	start := time.Now()
	c.crash(old)
	c.crash((old + 1) % 5)
	leader, elected := c.firstLeader(start, failoverBound, term)
	t.Logf("5 replicas, 2 crashed: %s elected after %v", c.ids[leader], elected.Round(time.Millisecond))
	c.barrier(leader)
	c.checkRecords(leader, want{"fn": 10})
	c.put(leader, "fn", 10, 12)
	for _, i := range c.live() {
		c.eventuallyRecords(i, want{"fn": 12}, applyBound)
	}

	// Two of five left: no majority, so no write commits.
	c.crash(leader)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	for _, i := range c.live() {
		if err := c.stores[i].Put(ctx, "lost", nil); err == nil {
			t.Fatalf("%s accepted a write with 2 of 5 replicas", c.ids[i])
		}
	}
}

// syncBuffer is a bytes.Buffer that replicas may log to while a test reads
// it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// BenchmarkPut: a write on the leader of three replicas on loopback, until
// every replica's majority has it (Put returns).
func BenchmarkPut(b *testing.B) {
	c := newCluster(b, 3, nil)
	c.startAll()
	leader := c.waitLeader(electionBound, 0)
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for k := range b.N {
		t0 := time.Now()
		c.put(leader, "bench", k, k+1)
		took = append(took, time.Since(t0))
	}
	b.StopTimer()
	p := stats.Percentiles(took, 50, 99)
	b.ReportMetric(float64(p[0].Microseconds())/1e3, "p50-ms")
	b.ReportMetric(float64(p[1].Microseconds())/1e3, "p99-ms")
}
