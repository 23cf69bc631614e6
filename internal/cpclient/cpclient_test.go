package cpclient

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
)

// replica answers GetStatus as the leader, or refuses as a follower.
type replica struct {
	pb.UnimplementedControlPlaneServer
	name   string
	leader bool
	calls  int
}

func (r *replica) GetStatus(context.Context, *pb.GetStatusRequest) (*pb.ClusterStatus, error) {
	r.calls++
	if !r.leader {
		return nil, status.Errorf(codes.FailedPrecondition, "%s (this is replica %s)", NotLeader, r.name)
	}
	return &pb.ClusterStatus{Workers: []*pb.WorkerStatus{{WorkerId: r.name}}}, nil
}

func serve(t *testing.T, r *replica) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterControlPlaneServer(s, r)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// A generated client over the Client (its Invoke) finds the leader behind
// a follower and keeps calling it.
func TestGeneratedClientFollowsTheLeader(t *testing.T) {
	follower, leader := &replica{name: "a"}, &replica{name: "b", leader: true}
	c, err := Dial(serve(t, follower) + "," + serve(t, leader))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl := pb.NewControlPlaneClient(c)
	for i := range 3 {
		st, err := cl.GetStatus(context.Background(), &pb.GetStatusRequest{})
		if err != nil || len(st.Workers) != 1 || st.Workers[0].WorkerId != "b" {
			t.Fatalf("call %d: %v %v", i, st, err)
		}
	}
	if follower.calls != 1 || leader.calls != 3 {
		t.Errorf("follower called %d times, leader %d; want 1 and 3", follower.calls, leader.calls)
	}
	// With no leader at all, the call gives up with the followers' answer.
	leader.leader, follower.leader = false, false
	_, err = cl.GetStatus(context.Background(), &pb.GetStatusRequest{})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), NotLeader) {
		t.Errorf("no leader anywhere: %v", err)
	}
}
