package loadgen

import (
	"context"
	"fmt"
	"sync"
	"time"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
)

// FunctionOptions is how the generator registers its functions. Zero
// fields take the control plane's defaults.
type FunctionOptions struct {
	Binary           string // absolute path of an executable serving HTTP on $PORT
	Image            string // image reference (used when Binary is empty)
	Concurrency      int32
	MinScale         int32
	MaxScale         int32
	ScaleToZeroGrace time.Duration
	StableWindow     time.Duration
	Timeout          time.Duration
}

// Spec returns the function spec for name.
func (o FunctionOptions) Spec(name string) *pb.FunctionSpec {
	s := &pb.FunctionSpec{Name: name, Concurrency: o.Concurrency, TimeoutMs: o.Timeout.Milliseconds(),
		Scaling: &pb.ScalingSpec{MinScale: o.MinScale, MaxScale: o.MaxScale,
			ScaleToZeroGraceMs: o.ScaleToZeroGrace.Milliseconds(), StableWindowMs: o.StableWindow.Milliseconds()}}
	if o.Binary != "" {
		s.Binary = o.Binary
	} else {
		s.Image = o.Image
	}
	return s
}

// matches reports whether a registered spec already says what want says:
// the same executable or image and scale bounds, and the same value for
// every other field want sets (a zero field means the default, which the
// registered spec holds filled in, so it is not compared).
func matches(want, have *pb.FunctionSpec) bool {
	ws, hs := want.GetScaling(), have.GetScaling()
	nz := func(w, h int64) bool { return w == 0 || w == h }
	return want.Binary == have.Binary && want.Image == have.Image &&
		ws.GetMinScale() == hs.GetMinScale() && ws.GetMaxScale() == hs.GetMaxScale() &&
		nz(int64(want.Concurrency), int64(have.Concurrency)) && nz(want.TimeoutMs, have.TimeoutMs) &&
		nz(ws.GetScaleToZeroGraceMs(), hs.GetScaleToZeroGraceMs()) && nz(ws.GetStableWindowMs(), hs.GetStableWindowMs())
}

// DeployStats counts what Deploy did.
type DeployStats struct{ Created, Updated, Unchanged int }

// Deploy registers specs through the control plane, parallel calls at a
// time; a function already registered with a matching spec is left alone
// (a redeploy would drain its sandboxes). progress, when set, is called
// after each function, never concurrently.
func Deploy(ctx context.Context, c pb.ControlPlaneClient, specs []*pb.FunctionSpec, parallel int,
	progress func(done, total int)) (DeployStats, error) {
	var st DeployStats
	list, err := c.ListFunctions(ctx, &pb.ListFunctionsRequest{})
	if err != nil {
		return st, fmt.Errorf("list functions: %w", err)
	}
	have := make(map[string]*pb.FunctionSpec, len(list.Functions))
	for _, f := range list.Functions {
		have[f.GetSpec().GetName()] = f.GetSpec()
	}
	var todo []*pb.FunctionSpec
	for _, s := range specs {
		if h := have[s.Name]; h != nil && matches(s, h) {
			st.Unchanged++
			continue
		}
		todo = append(todo, s)
	}
	if progress != nil {
		progress(st.Unchanged, len(specs))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		next     = make(chan *pb.FunctionSpec)
	)
	for range max(parallel, 1) {
		wg.Go(func() {
			for s := range next {
				resp, err := c.DeployFunction(ctx, &pb.DeployFunctionRequest{Spec: s})
				mu.Lock()
				switch {
				case err != nil:
					if firstErr == nil {
						firstErr = fmt.Errorf("deploy %s: %w", s.Name, err)
						cancel()
					}
				case resp.Created:
					st.Created++
				default:
					st.Updated++
				}
				if progress != nil && err == nil {
					progress(st.Created+st.Updated+st.Unchanged, len(specs))
				}
				mu.Unlock()
			}
		})
	}
feed:
	for _, s := range todo {
		select {
		case next <- s:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return st, firstErr
}

// WaitScale polls the control plane until cond holds for every named
// function's status, and returns how many still fail it when ctx ends
// (0 and nil on success).
func WaitScale(ctx context.Context, c pb.ControlPlaneClient, names []string, cond func(*pb.FunctionStatus) bool) (int, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := c.GetStatus(ctx, &pb.GetStatusRequest{})
		if err != nil {
			if ctx.Err() != nil {
				return len(names), ctx.Err()
			}
			return len(names), fmt.Errorf("get status: %w", err)
		}
		left := len(want)
		for _, f := range st.Functions {
			if want[f.GetSpec().GetName()] && cond(f.GetStatus()) {
				left--
			}
		}
		if left == 0 {
			return 0, nil
		}
		select {
		case <-ctx.Done():
			return left, ctx.Err()
		case <-tick.C:
		}
	}
}

// AtZero holds for a function without ready or starting sandboxes: its next
// request is a cold start.
func AtZero(s *pb.FunctionStatus) bool { return s.GetReady() == 0 && s.GetPending() == 0 }

// ReadyAtLeast returns a condition holding once n sandboxes are ready.
func ReadyAtLeast(n int32) func(*pb.FunctionStatus) bool {
	return func(s *pb.FunctionStatus) bool { return s.GetReady() >= n }
}
