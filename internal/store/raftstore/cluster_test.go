package raftstore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var raftLog = flag.Bool("raftlog", false, "write the replicas' logs (raft's included) to the test output")

// helperEnv, when set, makes the test binary run one replica described by
// the variable's JSON value until its standard input closes or it is killed.
const helperEnv = "RAFTSTORE_TEST_REPLICA"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runReplica(spec))
	}
	os.Exit(m.Run())
}

type replicaSpec struct {
	ID, DataDir, Bind string
	Peers             map[string]string
	Log               bool
}

func runReplica(spec string) int {
	var rs replicaSpec
	if err := json.Unmarshal([]byte(spec), &rs); err != nil {
		fmt.Fprintln(os.Stderr, "replica spec:", err)
		return 2
	}
	h := slog.DiscardHandler
	if rs.Log {
		h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	s, err := Open(Config{ID: rs.ID, DataDir: rs.DataDir, Bind: rs.Bind, Peers: rs.Peers, Logger: slog.New(h)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) // until the test closes it (or dies)
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func testLogger(t testing.TB) *slog.Logger {
	if !*raftLog {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// freeAddrs returns n loopback addresses whose ports were free a moment ago.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}

// cluster is n replicas in this process, r0 to r<n-1>, each with its own
// data directory and loopback port. A stopped replica has a nil store.
type cluster struct {
	t      testing.TB
	peers  map[string]string
	ids    []string
	dirs   []string
	stores []*Store
	tweak  func(*Config)
}

func newCluster(t testing.TB, n int, tweak func(*Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, peers: map[string]string{}, stores: make([]*Store, n), tweak: tweak}
	for i, addr := range freeAddrs(t, n) {
		id := fmt.Sprintf("r%d", i)
		c.ids = append(c.ids, id)
		c.peers[id] = addr
		c.dirs = append(c.dirs, t.TempDir())
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *cluster) config(i int) Config {
	cfg := Config{
		ID:      c.ids[i],
		DataDir: c.dirs[i],
		Bind:    c.peers[c.ids[i]],
		Peers:   c.peers,
		Logger:  testLogger(c.t).With("test", c.t.Name()),
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	return cfg
}

func (c *cluster) start(is ...int) {
	c.t.Helper()
	for _, i := range is {
		s, err := Open(c.config(i))
		if err != nil {
			c.t.Fatalf("open %s: %v", c.ids[i], err)
		}
		c.stores[i] = s
	}
}

func (c *cluster) startAll() {
	c.t.Helper()
	for i := range c.stores {
		c.start(i)
	}
}

// stop closes replica i the clean way (handing leadership over).
func (c *cluster) stop(i int) {
	c.t.Helper()
	if err := c.stores[i].Close(); err != nil {
		c.t.Errorf("close %s: %v", c.ids[i], err)
	}
	c.stores[i] = nil
}

// crash stops replica i the way a SIGKILL looks to the others: raft stops
// at once, without handing leadership over, and its listener closes; then
// its files are closed so that it can be started again.
func (c *cluster) crash(i int) {
	c.t.Helper()
	s := c.stores[i]
	if err := s.raft.Shutdown().Error(); err != nil {
		c.t.Errorf("crash %s: %v", c.ids[i], err)
	}
	s.trans.Close()
	if err := s.Close(); err != nil {
		c.t.Errorf("close crashed %s: %v", c.ids[i], err)
	}
	c.stores[i] = nil
}

func (c *cluster) stopAll() {
	for i, s := range c.stores {
		if s != nil {
			c.stop(i)
		}
	}
}

func (c *cluster) live() []int {
	var is []int
	for i, s := range c.stores {
		if s != nil {
			is = append(is, i)
		}
	}
	return is
}

// waitLeader waits until one live replica is leader in a term after
// minTerm and every live replica knows it, and returns its index.
func (c *cluster) waitLeader(timeout time.Duration, minTerm uint64) int {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		leader, ok := c.agreedLeader(minTerm)
		if ok {
			return leader
		}
		if time.Now().After(deadline) {
			var state []string
			for _, i := range c.live() {
				s := c.stores[i]
				state = append(state, fmt.Sprintf("%s: %s term %d leader %q", c.ids[i], s.raft.State(), s.Term(), s.Leader()))
			}
			c.t.Fatalf("no agreed leader after %v: %s", timeout, strings.Join(state, "; "))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (c *cluster) agreedLeader(minTerm uint64) (int, bool) {
	leader := -1
	for _, i := range c.live() {
		if c.stores[i].IsLeader() && c.stores[i].Term() > minTerm {
			if leader >= 0 {
				return -1, false
			}
			leader = i
		}
	}
	if leader < 0 {
		return -1, false
	}
	for _, i := range c.live() {
		if c.stores[i].Leader() != c.ids[leader] {
			return -1, false
		}
	}
	return leader, true
}

// firstLeader polls the live replicas until one is leader in a term after
// minTerm and returns it with the time since start.
func (c *cluster) firstLeader(start time.Time, timeout time.Duration, minTerm uint64) (int, time.Duration) {
	c.t.Helper()
	for time.Since(start) < timeout {
		for _, i := range c.live() {
			if c.stores[i].IsLeader() && c.stores[i].Term() > minTerm {
				return i, time.Since(start)
			}
		}
		time.Sleep(time.Millisecond)
	}
	c.t.Fatalf("no new leader within %v", timeout)
	return -1, 0
}

// drainLeaderChs empties every live replica's LeaderCh.
func (c *cluster) drainLeaderChs() {
	for _, i := range c.live() {
		select {
		case <-c.stores[i].LeaderCh():
		default:
		}
	}
}

// put writes records key-from .. key-(to-1) through replica i.
func (c *cluster) put(i int, prefix string, from, to int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for k := from; k < to; k++ {
		if err := c.stores[i].Put(ctx, key(prefix, k), value(prefix, k)); err != nil {
			c.t.Fatalf("put on %s: %v", c.ids[i], err)
		}
	}
}

func key(prefix string, k int) string   { return fmt.Sprintf("%s-%03d", prefix, k) }
func value(prefix string, k int) []byte { return []byte(fmt.Sprintf("spec of %s-%03d", prefix, k)) }

// want is the records expected in a replica: prefix -> count.
type want map[string]int

// checkRecords checks that replica i holds exactly the records of w, in
// key order, through Get and List.
func (c *cluster) checkRecords(i int, w want) {
	c.t.Helper()
	if err := c.recordsErr(i, w); err != nil {
		c.t.Fatal(err)
	}
}

// eventuallyRecords waits until replica i holds exactly the records of w.
func (c *cluster) eventuallyRecords(i int, w want, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := c.recordsErr(i, w)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (c *cluster) recordsErr(i int, w want) error {
	ctx := context.Background()
	s := c.stores[i]
	var wantKeys []string
	for prefix, n := range w {
		for k := range n {
			wantKeys = append(wantKeys, key(prefix, k))
			got, err := s.Get(ctx, key(prefix, k))
			if err != nil {
				return fmt.Errorf("%s: get: %w", c.ids[i], err)
			}
			if string(got) != string(value(prefix, k)) {
				return fmt.Errorf("%s: get %s = %q, want %q", c.ids[i], key(prefix, k), got, value(prefix, k))
			}
		}
	}
	slices.Sort(wantKeys)
	var gotKeys []string
	err := s.List(ctx, func(k string, v []byte) error {
		gotKeys = append(gotKeys, k)
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: list: %w", c.ids[i], err)
	}
	if !slices.Equal(gotKeys, wantKeys) {
		return fmt.Errorf("%s: list has %d keys %v, want %d", c.ids[i], len(gotKeys), abbrev(gotKeys), len(wantKeys))
	}
	return nil
}

func abbrev(keys []string) []string {
	if len(keys) > 6 {
		return append(slices.Clip(keys[:3]), "...", keys[len(keys)-2], keys[len(keys)-1])
	}
	return keys
}

// barrier runs a Barrier on replica i.
func (c *cluster) barrier(i int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.stores[i].Barrier(ctx); err != nil {
		c.t.Fatalf("barrier on %s: %v", c.ids[i], err)
	}
}

// wantNotLeader checks that err says "not the leader" and names leader.
func wantNotLeader(t testing.TB, err error, leader string) {
	t.Helper()
	var nl *NotLeaderError
	if !errors.As(err, &nl) || !errors.Is(err, ErrNotLeader) {
		t.Fatalf("error %v: want a NotLeaderError", err)
	}
	if nl.LeaderID != leader {
		t.Fatalf("error %v names leader %q, want %q", err, nl.LeaderID, leader)
	}
}

// subprocess runs replica i of c as a separate process of this test binary,
// so that it can be killed for real. It returns once the replica is open.
func (c *cluster) subprocess(i int) *exec.Cmd {
	c.t.Helper()
	spec, err := json.Marshal(replicaSpec{ID: c.ids[i], DataDir: c.dirs[i], Bind: c.peers[c.ids[i]], Peers: c.peers, Log: *raftLog})
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("replica said %q", line)
		}
		ready <- err
		io.Copy(io.Discard, stdout)
	}()
	select {
	case err := <-ready:
		if err != nil {
			c.t.Fatalf("replica process %s: %v", c.ids[i], err)
		}
	case <-time.After(10 * time.Second):
		c.t.Fatalf("replica process %s did not start", c.ids[i])
	}
	return cmd
}

// transferTo makes replica target (a subprocess) leader, from the leader
// among the live in-process replicas.
func (c *cluster) transferTo(target int) {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, i := range c.live() {
			s := c.stores[i]
			if !s.IsLeader() {
				continue
			}
			err := s.raft.LeadershipTransferToServer(raft.ServerID(c.ids[target]), raft.ServerAddress(c.peers[c.ids[target]])).Error()
			if err != nil {
				c.t.Logf("transfer to %s: %v (retrying)", c.ids[target], err)
			}
		}
		agreed := true
		for _, i := range c.live() {
			agreed = agreed && c.stores[i].Leader() == c.ids[target]
		}
		if agreed {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("could not make %s leader", c.ids[target])
}
