package controlplane

import (
	"context"
	"fmt"
	"sort"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/errdefs"
)

// The unary API. Errors are mapped to gRPC codes here and nowhere else.

func (cp *ControlPlane) DeployFunction(ctx context.Context, req *pb.DeployFunctionRequest) (*pb.DeployFunctionResponse, error) {
	f, created, err := cp.deploy(ctx, req.GetSpec())
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &pb.DeployFunctionResponse{Function: f, Created: created}, nil
}

func (cp *ControlPlane) GetFunction(_ context.Context, req *pb.GetFunctionRequest) (*pb.Function, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	fn := cp.functions[req.GetName()]
	if fn == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("function %q: %w", req.GetName(), errdefs.ErrNotFound))
	}
	return cp.functionView(fn), nil
}

func (cp *ControlPlane) ListFunctions(context.Context, *pb.ListFunctionsRequest) (*pb.ListFunctionsResponse, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return &pb.ListFunctionsResponse{Functions: cp.functionList()}, nil
}

func (cp *ControlPlane) functionList() []*pb.Function {
	out := make([]*pb.Function, 0, len(cp.functions))
	for _, fn := range cp.functions {
		out = append(out, cp.functionView(fn))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Name < out[j].Spec.Name })
	return out
}

func (cp *ControlPlane) DeleteFunction(ctx context.Context, req *pb.DeleteFunctionRequest) (*pb.DeleteFunctionResponse, error) {
	if err := cp.deleteFunction(ctx, req.GetName()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &pb.DeleteFunctionResponse{}, nil
}

func (cp *ControlPlane) GetStatus(context.Context, *pb.GetStatusRequest) (*pb.ClusterStatus, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	st := &pb.ClusterStatus{Functions: cp.functionList(), PlacementPolicy: cp.placer.Name()}
	for _, w := range cp.workers {
		st.Workers = append(st.Workers, &pb.WorkerStatus{
			WorkerId: w.id, Runtime: w.runtime, Capacity: w.capacity, Hostname: w.hostname,
			Used:      &pb.Resources{CpuMillicores: w.usedCPU, MemoryMib: w.usedMem, Sandboxes: int32(len(w.sandboxes))},
			Sandboxes: int32(len(w.sandboxes)), Up: w.up, LastHeartbeatUnixMs: w.lastBeat.UnixMilli(),
		})
	}
	sort.Slice(st.Workers, func(i, j int) bool { return st.Workers[i].WorkerId < st.Workers[j].WorkerId })
	for _, d := range cp.dataPlanes {
		st.DataPlanes = append(st.DataPlanes, &pb.DataPlaneStatus{DataPlaneId: d.id, Address: d.address, Connected: !d.closed})
	}
	sort.Slice(st.DataPlanes, func(i, j int) bool { return st.DataPlanes[i].DataPlaneId < st.DataPlanes[j].DataPlaneId })
	return st, nil
}
