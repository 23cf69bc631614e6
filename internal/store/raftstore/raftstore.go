// Package raftstore is the replicated backend of store.Store: the function
// registry of 3 or 5 control-plane replicas kept consistent by
// hashicorp/raft, with the raft log and stable state in a bbolt file
// (raft-boltdb), snapshots in files and a TCP transport between replicas.
//
// # Reads and writes
//
// Put and Delete go through the raft log and work on the leader only: they
// return once the entry is committed by a majority and applied to the
// leader's state. On any other replica they fail at once with a
// *NotLeaderError, which wraps ErrNotLeader and errdefs.ErrUnavailable and
// names the leader when one is known, so the caller can forward the write.
//
// Get and List read the local copy of the state, which is in memory and
// rebuilt from the snapshot and the log at Open. They never block on the
// network, and are therefore only as fresh as this replica:
//   - a follower applies an entry up to about 2×CommitTimeout after the
//     leader (it learns the commit index from the next replication message);
//   - after Open, a replica holds its latest snapshot at once but applies the
//     log entries after it only once a leader has committed something in its
//     term, so a just restarted cluster reads complete only after election;
//   - a leader cut off from the others keeps answering from its state for up
//     to LeaderLeaseTimeout before it steps down.
//
// A replica that has just become leader calls Barrier before acting on what
// it reads: Barrier returns once every entry of earlier terms is applied
// here, so its registry is complete.
//
// # Membership
//
// The set of replicas is static: Config.Peers names all of them, the first
// Open of every replica bootstraps the cluster with that set (all replicas
// bootstrap with the same configuration, which raft allows), and later
// Opens restart from the files and ignore Peers except to warn when they
// differ from the stored configuration. Adding or removing replicas is not
// supported. A replica whose data directory is lost rejoins with an empty
// one and catches up from the leader; it has forgotten its vote, though, so
// replace one replica's directory at a time, while the others have a leader.
//
// # Fail-over
//
// The timing defaults are tuned for replicas on one LAN: heartbeats every
// 10 ms, and a follower that has not heard from the leader for
// HeartbeatTimeout (100 ms) checks again at a random point of the next 100
// to 200 ms and then stands for election. On loopback, on a 2-core machine
// with the race detector, a crashed or SIGKILLed leader of 3 replicas is
// replaced in 130-350 ms (of 5 replicas with 2 crashed: 190-390 ms). A 50 ms
// HeartbeatTimeout halves that but deposed healthy leaders on the same
// machine under CPU load, so it is not the default. Close hands leadership
// over before it shuts down, so a stopped leader is replaced in 5-30 ms.
package raftstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/batonfaas/baton/internal/errdefs"
	"github.com/batonfaas/baton/internal/store"
)

// Default timing. Heartbeats go out every HeartbeatTimeout/10.
const (
	DefaultHeartbeatTimeout   = 100 * time.Millisecond
	DefaultElectionTimeout    = 100 * time.Millisecond
	DefaultLeaderLeaseTimeout = 50 * time.Millisecond
	DefaultCommitTimeout      = 10 * time.Millisecond
	DefaultRPCTimeout         = 2 * time.Second
)

// Files in Config.DataDir.
const (
	logFile      = "raft.db"   // bbolt: raft log and stable state (term, vote)
	snapshotsDir = "snapshots" // made by raft's file snapshot store
	keepSnaps    = 2
)

// ErrNotLeader is wrapped by the errors of writes and barriers on a replica
// that is not the leader. Use errors.As with *NotLeaderError to find out
// which replica is.
var ErrNotLeader = errors.New("not the raft leader")

// NotLeaderError says that a write needs the leader and this replica is not
// it. It wraps ErrNotLeader and errdefs.ErrUnavailable, and the raft error
// that caused it: raft.ErrLeadershipLost means this replica was leader and
// lost leadership before the entry committed, so it may or may not be
// applied (Put and Delete may be retried safely).
type NotLeaderError struct {
	LeaderID   string // "" while no leader is known (an election is on)
	LeaderAddr string // its raft address
	cause      error
}

func (e *NotLeaderError) Error() string {
	msg := ErrNotLeader.Error()
	if e.LeaderID == "" {
		msg += " (no leader known)"
	} else {
		msg += fmt.Sprintf(" (the leader is %s at %s)", e.LeaderID, e.LeaderAddr)
	}
	if e.cause != nil && !errors.Is(e.cause, raft.ErrNotLeader) {
		msg += ": " + e.cause.Error()
	}
	return msg
}

func (e *NotLeaderError) Unwrap() []error {
	errs := []error{ErrNotLeader, errdefs.ErrUnavailable}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// Config configures one replica.
type Config struct {
	ID      string // this replica's name, a key of Peers
	DataDir string // holds raft.db (bbolt: log, term, vote) and snapshots/
	// Bind is the raft TCP address to listen on, e.g. 127.0.0.1:7001.
	Bind string
	// Advertise is the address the other replicas reach this one at; it
	// must equal Peers[ID]. Default: Bind.
	Advertise string
	// Peers maps every replica's name to its raft address, this one
	// included. Only the first Open on an empty DataDir uses it (see the
	// package documentation).
	Peers  map[string]string
	Logger *slog.Logger // default slog.Default(); raft's own logs go here too

	// HeartbeatTimeout is how long a follower waits without hearing from
	// the leader before it starts an election (randomised up to twice
	// that). The leader sends heartbeats every HeartbeatTimeout/10.
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a candidate waits for votes before it
	// tries again (randomised up to twice that). At least HeartbeatTimeout.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader stays leader without hearing
	// from a majority. At most HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout bounds how long a follower may wait to learn that an
	// entry has committed when no other write follows it.
	CommitTimeout time.Duration
	// RPCTimeout is the I/O deadline of one raft RPC between replicas.
	RPCTimeout time.Duration
	// SnapshotThreshold is the number of new log entries after which a
	// replica snapshots its state and compacts its log, keeping
	// TrailingLogs entries for slow followers. Zero means raft's defaults
	// (8192 and 10240).
	SnapshotThreshold uint64
	TrailingLogs      uint64
}

func (c Config) withDefaults() (Config, error) {
	invalid := func(format string, args ...any) (Config, error) {
		return c, fmt.Errorf("raft store config: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalid)
	}
	if c.ID == "" {
		return invalid("empty replica ID")
	}
	if c.DataDir == "" {
		return invalid("empty data directory")
	}
	if c.Bind == "" {
		return invalid("empty bind address")
	}
	if c.Advertise == "" {
		c.Advertise = c.Bind
	}
	addrs := map[string]string{}
	for id, addr := range c.Peers {
		if id == "" {
			return invalid("peer with an empty ID")
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return invalid("peer %s address %q: %v", id, addr, err)
		}
		if other, ok := addrs[addr]; ok {
			return invalid("peers %s and %s share address %s", min(id, other), max(id, other), addr)
		}
		addrs[addr] = id
	}
	if self, ok := c.Peers[c.ID]; !ok {
		return invalid("peers do not include this replica %s", c.ID)
	} else if self != c.Advertise {
		return invalid("peer %s is at %s but this replica advertises %s", c.ID, self, c.Advertise)
	}
	c.Peers = maps.Clone(c.Peers)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	def(&c.ElectionTimeout, max(DefaultElectionTimeout, c.HeartbeatTimeout))
	def(&c.LeaderLeaseTimeout, min(DefaultLeaderLeaseTimeout, c.HeartbeatTimeout))
	def(&c.CommitTimeout, DefaultCommitTimeout)
	def(&c.RPCTimeout, DefaultRPCTimeout)
	return c, nil
}

// configuration is the raft cluster configuration Peers describe.
func (c Config) configuration() raft.Configuration {
	var conf raft.Configuration
	for _, id := range slices.Sorted(maps.Keys(c.Peers)) {
		conf.Servers = append(conf.Servers, raft.Server{
			Suffrage: raft.Voter,
			ID:       raft.ServerID(id),
			Address:  raft.ServerAddress(c.Peers[id]),
		})
	}
	return conf
}

// Store is one replica of the replicated registry. It implements
// store.Store.
type Store struct {
	cfg   Config
	log   *slog.Logger
	fsm   *fsm
	raft  *raft.Raft
	trans *raft.NetworkTransport
	logs  *raftboltdb.BoltStore

	leaderCh chan bool     // see LeaderCh
	stop     chan struct{} // closed by Close after raft has shut down

	mu     sync.Mutex // guards closed and wg.Add
	closed bool
	wg     sync.WaitGroup // every goroutine this Store starts

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open starts a replica. On an empty DataDir it bootstraps the cluster from
// cfg.Peers; otherwise it restarts from its files. It returns without
// waiting for an election.
func Open(cfg Config) (_ *Store, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "raftstore", "replica", cfg.ID)
	hl := newHCLog(log)
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	rc.Logger = hl
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft store config: %w: %w", err, errdefs.ErrInvalid)
	}

	var closers []func() error
	defer func() {
		if err != nil {
			for _, c := range slices.Backward(closers) {
				c()
			}
		}
	}()

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("open raft store: %w", err)
	}
	path := filepath.Join(cfg.DataDir, logFile)
	logs, err := raftboltdb.New(raftboltdb.Options{
		Path:        path,
		BoltOptions: &bolt.Options{Timeout: time.Second},
	})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s (is another replica using this data directory?): %w", path, err)
	}
	closers = append(closers, logs.Close)
	cache, err := raft.NewLogCache(512, logs)
	if err != nil {
		return nil, fmt.Errorf("open raft log cache: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, keepSnaps, hl.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("open raft snapshots in %s: %w", cfg.DataDir, err)
	}

	advertise, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
	if err != nil {
		return nil, fmt.Errorf("resolve raft advertise address %s: %w", cfg.Advertise, err)
	}
	trans, err := raft.NewTCPTransportWithConfig(cfg.Bind, advertise, &raft.NetworkTransportConfig{
		MaxPool: 3,
		Timeout: cfg.RPCTimeout,
		Logger:  hl.Named("transport"),
	})
	if err != nil {
		return nil, fmt.Errorf("listen for raft on %s: %w", cfg.Bind, err)
	}
	closers = append(closers, trans.Close)

	// Every replica bootstraps with the same configuration; on a restart
	// (or a replica that already received the log) raft refuses, which is
	// what we want.
	switch err := raft.BootstrapCluster(rc, logs, logs, snaps, trans, cfg.configuration()); {
	case err == nil:
		log.Info("bootstrapped raft cluster", "peers", len(cfg.Peers))
	case errors.Is(err, raft.ErrCantBootstrap):
	default:
		return nil, fmt.Errorf("bootstrap raft cluster: %w", err)
	}

	f := newFSM()
	r, err := raft.NewRaft(rc, f, cache, logs, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s := &Store{
		cfg:      cfg,
		log:      log,
		fsm:      f,
		raft:     r,
		trans:    trans,
		logs:     logs,
		leaderCh: make(chan bool, 1),
		stop:     make(chan struct{}),
	}
	s.checkConfiguration()
	s.wg.Add(1)
	go s.forwardLeadership()
	return s, nil
}

// checkConfiguration warns when the stored cluster configuration is not
// the one Peers describes: membership changes are not supported, so the
// stored one stays in force.
func (s *Store) checkConfiguration() {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		s.log.Warn("read raft configuration", "err", err)
		return
	}
	stored := map[string]string{}
	for _, srv := range f.Configuration().Servers {
		stored[string(srv.ID)] = string(srv.Address)
	}
	if len(stored) > 0 && !maps.Equal(stored, s.cfg.Peers) {
		s.log.Warn("the stored raft configuration differs from the configured peers; it stays in force (membership changes are not supported)",
			"stored", stored, "configured", s.cfg.Peers)
	}
}

// forwardLeadership copies raft's leadership notifications to s.leaderCh
// (keeping only the latest value when nobody reads) and closes it after
// raft has shut down.
func (s *Store) forwardLeadership() {
	defer s.wg.Done()
	in := s.raft.LeaderCh()
	for {
		select {
		case v := <-in:
			s.notifyLeader(v)
		case <-s.stop:
			select {
			case v := <-in: // the "false" of a leader that shut down
				s.notifyLeader(v)
			default:
			}
			close(s.leaderCh)
			return
		}
	}
}

// notifyLeader puts v in leaderCh, replacing an unread value. Only
// forwardLeadership sends on leaderCh, so the second send cannot block.
func (s *Store) notifyLeader(v bool) {
	select {
	case s.leaderCh <- v:
	case <-s.leaderCh:
		s.leaderCh <- v
	}
}

// Put stores value at key through the raft log. It returns once the entry
// is committed and applied on this replica (the leader); see NotLeaderError
// for what a follower answers. If ctx ends first, the write may still
// commit.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	if err := s.apply(ctx, encodeCommand(opPut, key, value)); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// Delete removes key through the raft log, like Put. Deleting a missing key
// is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.apply(ctx, encodeCommand(opDelete, key, nil)); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return nil
}

func (s *Store) apply(ctx context.Context, cmd []byte) error {
	if s.raft.State() != raft.Leader {
		return s.notLeader(raft.ErrNotLeader)
	}
	return s.wait(ctx, func() error {
		f := s.raft.Apply(cmd, enqueueTimeout(ctx))
		if err := f.Error(); err != nil {
			return err
		}
		if err, ok := f.Response().(error); ok {
			return err
		}
		return nil
	})
}

// Barrier waits until every log entry before it, those of earlier terms
// included, is applied to this replica's state. Only the leader can issue
// one; a new leader calls it before it trusts Get and List.
func (s *Store) Barrier(ctx context.Context) error {
	err := s.wait(ctx, func() error {
		return s.raft.Barrier(enqueueTimeout(ctx)).Error()
	})
	if err != nil {
		return fmt.Errorf("raft barrier: %w", err)
	}
	return nil
}

// wait runs fn, which blocks on a raft future, in a tracked goroutine and
// returns its error, translated, or ctx's. Raft answers every future by the
// time it has shut down, so Close waits for these goroutines.
func (s *Store) wait(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.translate(raft.ErrRaftShutdown)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer s.wg.Done()
		done <- fn()
	}()
	select {
	case err := <-done:
		return s.translate(err)
	case <-ctx.Done():
		return fmt.Errorf("%w (the operation may still complete)", ctx.Err())
	}
}

// enqueueTimeout is how long raft may take to accept a command: until ctx's
// deadline, or as long as it takes.
func enqueueTimeout(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return 0
}

// translate maps raft's errors to Baton's classes.
func (s *Store) translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader),
		errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return s.notLeader(err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("raft store %s closed: %w: %w", s.cfg.ID, err, errdefs.ErrUnavailable)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	return err
}

func (s *Store) notLeader(cause error) error {
	addr, id := s.raft.LeaderWithID()
	if id == raft.ServerID(s.cfg.ID) {
		// Leadership is being lost or handed over right now.
		addr, id = "", ""
	}
	return &NotLeaderError{LeaderID: string(id), LeaderAddr: string(addr), cause: cause}
}

// Get returns the value at key in this replica's state (see the package
// documentation for how fresh it is), or an error wrapping
// errdefs.ErrNotFound.
func (s *Store) Get(_ context.Context, key string) ([]byte, error) {
	v, ok := s.fsm.get(key)
	if !ok {
		return nil, fmt.Errorf("%q: %w", key, errdefs.ErrNotFound)
	}
	return slices.Clone(v), nil
}

// List calls fn for every record of this replica's state in key order. The
// records are those present when List started; fn may call the Store.
func (s *Store) List(ctx context.Context, fn func(key string, value []byte) error) error {
	keys, values := s.fsm.records()
	var buf []byte
	for i, k := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf = append(buf[:0], values[i]...) // fn must not keep it, nor change ours
		if err := fn(k, buf); err != nil {
			return err
		}
	}
	return nil
}

// IsLeader says whether this replica is the leader now.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the leader's ID as this replica knows it, or "" when it
// knows none (during an election).
func (s *Store) Leader() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}

// Term returns the current raft term. Every election increments it, so it
// can serve as the epoch of a leadership.
func (s *Store) Term() uint64 { return s.raft.CurrentTerm() }

// LeaderCh delivers true when this replica becomes leader and false when it
// stops being leader. It never blocks raft: it holds one value, and a value
// nobody has read yet is replaced by the next one, so a slow reader sees the
// latest state but may miss a lost-and-regained leadership (two trues in a
// row mean just that). Read it from one goroutine; check Term when the
// leadership's identity matters. It is closed when Close has shut raft
// down.
func (s *Store) LeaderCh() <-chan bool { return s.leaderCh }

// Close shuts the replica down. A leader first hands leadership to the most
// up-to-date follower (bounded by ElectionTimeout), so the cluster does not
// wait for a heartbeat timeout. Writes in progress fail with an error
// wrapping errdefs.ErrUnavailable. Close is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Store) close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()

	if s.raft.State() == raft.Leader && len(s.cfg.Peers) > 1 {
		start := time.Now()
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			s.log.Info("could not hand leadership over before shutting down", "err", err)
		} else {
			s.log.Info("handed leadership over before shutting down", "took", time.Since(start))
		}
	}
	var errs []error
	if err := s.raft.Shutdown().Error(); err != nil {
		errs = append(errs, fmt.Errorf("shut raft down: %w", err))
	}
	close(s.stop)
	s.wg.Wait()
	if err := s.trans.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close raft transport: %w", err))
	}
	if err := s.logs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close raft log: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close raft store %s: %w", s.cfg.ID, err)
	}
	return nil
}
