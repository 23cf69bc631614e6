package controlplane

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/store"
)

// leaderStore is a memory store that says it leads a one-member Raft group:
// it makes the control plane run its leadership path (barrier, rebuild
// grace) without Raft.
type leaderStore struct {
	*store.Memory
	ch chan bool
}

func (l *leaderStore) IsLeader() bool                    { return true }
func (l *leaderStore) Leader() string                    { return "r1" }
func (l *leaderStore) Term() uint64                      { return 1 }
func (l *leaderStore) LeaderCh() <-chan bool             { return l.ch }
func (l *leaderStore) Barrier(ctx context.Context) error { return nil }

// A new leader sends a data plane its first snapshot as soon as the workers
// that data plane's table routes to have reconnected, not after the whole
// rebuild grace; one listing a worker that never comes back waits for the
// grace; one routing to no worker gets it at once.
func TestFirstSnapshotWaitsForTheDataPlanesWorkers(t *testing.T) {
	const grace = 3 * time.Second
	ls := &leaderStore{Memory: store.NewMemory(), ch: make(chan bool, 1)}
	ls.ch <- true
	cp, err := New(Config{Listen: "127.0.0.1:0", Store: ls, RebuildGrace: grace,
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cp.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	conn, err := grpc.NewClient(cp.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewControlPlaneClient(conn)
	waitUntil(t, "leadership", func() bool { return cp.leading.Load() })
	became := time.Now()

	// firstSnapshot opens a data-plane session with a hello listing
	// workers and returns when its first snapshot arrives.
	firstSnapshot := func(id string, workers ...string) <-chan time.Time {
		at := make(chan time.Time, 1)
		go func() {
			s, err := c.DataPlaneSession(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			s.Send(&pb.DataPlaneMessage{Msg: &pb.DataPlaneMessage_Hello{Hello: &pb.DataPlaneHello{
				DataPlaneId: id, Address: "127.0.0.1:1", Workers: workers}}})
			if u, err := s.Recv(); err != nil || !u.Full {
				t.Errorf("%s: first update %v %v", id, u, err)
			}
			at <- time.Now()
		}()
		return at
	}
	none := firstSnapshot("dp-none")
	mine := firstSnapshot("dp-w1", "w1")
	ghost := firstSnapshot("dp-ghost", "w1", "ghost")
	select {
	case <-none:
	case <-time.After(grace / 2):
		t.Fatal("a data plane routing to no worker waited for the rebuild grace")
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case <-mine:
		t.Fatal("the snapshot went out before the data plane's worker reconnected")
	default:
	}
	connectWorker(t, c, "w1")
	select {
	case <-mine:
	case <-time.After(grace / 2):
		t.Fatal("no snapshot after the data plane's only worker reconnected")
	}
	if at := <-ghost; at.Sub(became) < grace-100*time.Millisecond {
		t.Errorf("a data plane waiting for a worker that never came got its snapshot %s after leadership, before the grace (%s)",
			at.Sub(became), grace)
	}
}
