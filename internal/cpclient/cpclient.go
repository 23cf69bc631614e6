// Package cpclient connects to the control plane when it may be several
// replicas: it takes a comma-separated list of addresses, keeps one gRPC
// connection per address, and sends each call to the replica that answered
// last, moving on to the next when a replica is unreachable or says it is
// not the leader (gRPC FailedPrecondition). Replies from the leader are
// final, errors included.
package cpclient

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// NotLeader is the message prefix of a follower's FailedPrecondition answer.
const NotLeader = "not the leader"

// Client is a set of connections to the control-plane replicas.
type Client struct {
	addrs []string
	conns []*grpc.ClientConn

	mu      sync.Mutex
	current int // the replica that answered last
}

// Split parses a comma-separated address list.
func Split(addrs string) []string {
	var out []string
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Dial makes a client for the comma-separated addresses. It does not wait
// for any connection.
func Dial(addrs string) (*Client, error) {
	c := &Client{addrs: Split(addrs)}
	if len(c.addrs) == 0 {
		return nil, fmt.Errorf("no control-plane address given")
	}
	for _, a := range c.addrs {
		conn, err := grpc.NewClient(a,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
		)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("control plane %s: %w", a, err)
		}
		c.conns = append(c.conns, conn)
	}
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() {
	for _, conn := range c.conns {
		conn.Close()
	}
}

// Addrs are the replicas' addresses.
func (c *Client) Addrs() []string { return c.addrs }

// Current is the index of the replica that answered last.
func (c *Client) Current() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Next moves on from replica i (if it is still the current one) and returns
// the new current replica's index and address.
func (c *Client) Next(i int) (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current == i {
		c.current = (i + 1) % len(c.conns)
	}
	return c.current, c.addrs[c.current]
}

// Retryable reports whether err means "try another replica".
func Retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable:
		return true
	case codes.FailedPrecondition:
		return strings.Contains(status.Convert(err).Message(), NotLeader)
	}
	return false
}

// Invoke makes Client a grpc.ClientConnInterface whose unary calls go to
// the leader: they run against the replicas until one that is the leader
// answers, going round the list at most a few times (a fail-over in
// progress is given time to finish) and never past ctx. Through
// pb.NewControlPlaneClient(c), every call follows fail-overs.
func (c *Client) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.do(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		return conn.Invoke(ctx, method, args, reply, opts...)
	})
}

// NewStream opens a stream on the replica that answered last; a stream is
// not moved, so its owner reopens it (on Next) when it breaks.
func (c *Client) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	c.mu.Lock()
	conn := c.conns[c.current]
	c.mu.Unlock()
	return conn.NewStream(ctx, desc, method, opts...)
}

func (c *Client) do(ctx context.Context, call func(context.Context, *grpc.ClientConn) error) error {
	c.mu.Lock()
	i := c.current
	c.mu.Unlock()
	var err error
	for try := 0; try < 4*len(c.conns)+2; try++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = call(actx, c.conns[i])
		cancel()
		if err == nil || !Retryable(err) || ctx.Err() != nil {
			return err
		}
		i, _ = c.Next(i)
		if (try+1)%len(c.conns) == 0 {
			select { // round the list once: give an election time
			case <-ctx.Done():
				return err
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return err
}
