package controlplane

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/autoscaler"
	"github.com/batonfaas/baton/internal/errdefs"
)

// Function defaults suited to FaaS: one request per sandbox at a time.
const (
	DefaultConcurrency   = 1
	DefaultCPUMillicores = 100
	DefaultMemoryMiB     = 128
	DefaultTimeout       = 60 * time.Second
	maxConcurrency       = 10000
	maxTimeout           = time.Hour
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidName reports whether name can name a function: a DNS label, since
// clients address functions by the Host header.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("function name %q: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit: %w", name, errdefs.ErrInvalid)
	}
	return nil
}

// normalize checks a spec from a user and fills in the defaults, so that the
// stored spec says exactly what runs. It returns a copy.
func normalize(in *pb.FunctionSpec) (*pb.FunctionSpec, error) {
	if in == nil {
		return nil, fmt.Errorf("no function spec: %w", errdefs.ErrInvalid)
	}
	s := proto.Clone(in).(*pb.FunctionSpec)
	bad := func(format string, a ...any) error {
		return fmt.Errorf("function %q: %s: %w", s.Name, fmt.Sprintf(format, a...), errdefs.ErrInvalid)
	}
	if err := ValidName(s.Name); err != nil {
		return nil, err
	}
	switch {
	case s.Binary == "" && s.Image == "":
		return nil, bad("give a binary (--binary PATH) or an image (--image REF)")
	case s.Binary != "" && s.Image != "":
		return nil, bad("give a binary or an image, not both")
	case s.Binary != "" && !filepath.IsAbs(s.Binary):
		return nil, bad("binary path %q must be absolute", s.Binary)
	case s.Prepull && s.Image == "":
		return nil, bad("prepull fetches an image: give --image REF, or drop --prepull")
	}
	if s.Concurrency < 0 || s.Concurrency > maxConcurrency {
		return nil, bad("concurrency %d out of range 1..%d", s.Concurrency, maxConcurrency)
	}
	if s.Concurrency == 0 {
		s.Concurrency = DefaultConcurrency
	}
	if s.CpuMillicores < 0 || s.MemoryMib < 0 {
		return nil, bad("cpu and memory must not be negative")
	}
	if s.CpuMillicores == 0 {
		s.CpuMillicores = DefaultCPUMillicores
	}
	if s.MemoryMib == 0 {
		s.MemoryMib = DefaultMemoryMiB
	}
	if s.TimeoutMs < 0 || time.Duration(s.TimeoutMs)*time.Millisecond > maxTimeout {
		return nil, bad("timeout %dms out of range (at most %s)", s.TimeoutMs, maxTimeout)
	}
	if s.TimeoutMs == 0 {
		s.TimeoutMs = DefaultTimeout.Milliseconds()
	}
	switch s.Retry {
	case pb.RetryPolicy_RETRY_POLICY_UNSPECIFIED:
		s.Retry = pb.RetryPolicy_RETRY_POLICY_IDEMPOTENT
	case pb.RetryPolicy_RETRY_POLICY_IDEMPOTENT, pb.RetryPolicy_RETRY_POLICY_ALWAYS, pb.RetryPolicy_RETRY_POLICY_NEVER:
	default:
		return nil, bad("retry policy %d unknown (want IDEMPOTENT, ALWAYS or NEVER)", s.Retry)
	}
	for k := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, bad("environment variable name %q is invalid", k)
		}
		if k == "PORT" {
			return nil, bad("environment variable PORT is set by Baton")
		}
	}
	if s.Scaling == nil {
		s.Scaling = &pb.ScalingSpec{}
	}
	cfg := scalingConfig(s)
	if err := cfg.Validate(); err != nil {
		return nil, bad("%v", err)
	}
	s.Scaling = scalingSpec(cfg)
	return s, nil
}

// scalingConfig turns a spec's scaling section into an autoscaler config,
// zero fields taking the defaults (the target concurrency defaults to the
// function's concurrency).
func scalingConfig(s *pb.FunctionSpec) autoscaler.Config {
	c := autoscaler.DefaultConfig()
	in := s.GetScaling()
	c.TargetConcurrency = float64(max(s.Concurrency, 1))
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	c.MinScale, c.MaxScale = in.GetMinScale(), in.GetMaxScale()
	if v := in.GetTargetConcurrency(); v != 0 {
		c.TargetConcurrency = v
	}
	if v := in.GetTargetUtilization(); v != 0 {
		c.TargetUtilization = v
	}
	if v := in.GetStableWindowMs(); v != 0 {
		c.StableWindow = ms(v)
	}
	if v := in.GetPanicWindowPercent(); v != 0 {
		c.PanicWindowPercent = v
	}
	if v := in.GetPanicThresholdPercent(); v != 0 {
		c.PanicThresholdPercent = v
	}
	if v := in.GetMaxScaleUpRate(); v != 0 {
		c.MaxScaleUpRate = v
	}
	if v := in.GetMaxScaleDownRate(); v != 0 {
		c.MaxScaleDownRate = v
	}
	if v := in.GetScaleToZeroGraceMs(); v != 0 {
		c.ScaleToZeroGrace = ms(v)
	}
	return c
}

func scalingSpec(c autoscaler.Config) *pb.ScalingSpec {
	return &pb.ScalingSpec{
		MinScale:              c.MinScale,
		MaxScale:              c.MaxScale,
		TargetConcurrency:     c.TargetConcurrency,
		TargetUtilization:     c.TargetUtilization,
		StableWindowMs:        c.StableWindow.Milliseconds(),
		PanicWindowPercent:    c.PanicWindowPercent,
		PanicThresholdPercent: c.PanicThresholdPercent,
		MaxScaleUpRate:        c.MaxScaleUpRate,
		MaxScaleDownRate:      c.MaxScaleDownRate,
		ScaleToZeroGraceMs:    c.ScaleToZeroGrace.Milliseconds(),
	}
}

// loadFunctions reads every stored definition.
func (cp *ControlPlane) loadFunctions(ctx context.Context) error {
	return cp.store.List(ctx, func(key string, value []byte) error {
		if strings.HasPrefix(key, memberPrefix) {
			return nil
		}
		var f pb.Function
		if err := proto.Unmarshal(value, &f); err != nil {
			return fmt.Errorf("decode function %q: %w", key, err)
		}
		fn := newFunction(&f, cp.cfg.Now())
		cp.functions[key] = fn
		cp.notePrepull(fn)
		return nil
	})
}

// deploy stores a function definition and applies it. Writes go through
// cp.writeMu so that the store and memory agree on the order of deploys.
func (cp *ControlPlane) deploy(ctx context.Context, spec *pb.FunctionSpec) (*pb.Function, bool, error) {
	s, err := normalize(spec)
	if err != nil {
		return nil, false, err
	}
	cp.writeMu.Lock()
	defer cp.writeMu.Unlock()

	now := cp.cfg.Now()
	cp.mu.Lock()
	old := cp.functions[s.Name]
	def := &pb.Function{Spec: s, Generation: 1, CreatedUnixMs: now.UnixMilli(), UpdatedUnixMs: now.UnixMilli()}
	if old != nil {
		def.Generation = old.def.Generation + 1
		def.CreatedUnixMs = old.def.CreatedUnixMs
	}
	cp.mu.Unlock()

	b, err := proto.Marshal(def)
	if err != nil {
		return nil, false, fmt.Errorf("deploy %s: %w", s.Name, err)
	}
	if err := cp.store.Put(ctx, s.Name, b); err != nil {
		return nil, false, fmt.Errorf("deploy %s: store: %w", s.Name, err)
	}

	cp.mu.Lock()
	fn := cp.functions[s.Name]
	if fn != nil {
		fn.update(def)
		fn.prepullFailed = nil // about an earlier image, or asked again below
		cp.drainOldGenerations(fn)
	} else {
		fn = newFunction(def, now)
		cp.functions[s.Name] = fn
	}
	cp.reconcile(fn)
	cp.notePrepull(fn)
	if s.Prepull {
		for _, w := range cp.workers {
			cp.sendPrepull(w, fn)
		}
	}
	cp.markDirty(s.Name)
	view := cp.functionView(fn)
	wait := cp.routeBarrier()
	cp.mu.Unlock()
	cp.log.Info("function deployed", "function", s.Name, "generation", def.Generation)
	cp.awaitRoutes(wait, s.Name)
	return view, old == nil, nil
}

// routeWait bounds how long deploy and delete wait for the data planes.
const routeWait = 2 * time.Second

// awaitRoutes waits until the data planes have applied a change, so that a
// client that saw the deploy (or delete) succeed sees it take effect at once.
func (cp *ControlPlane) awaitRoutes(wait func(time.Duration) bool, name string) {
	if !wait(routeWait) {
		cp.log.Warn("a data plane did not confirm a route change in time", "function", name, "waited", routeWait)
	}
}

func (cp *ControlPlane) deleteFunction(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	cp.writeMu.Lock()
	defer cp.writeMu.Unlock()
	cp.mu.Lock()
	_, ok := cp.functions[name]
	cp.mu.Unlock()
	if !ok {
		return fmt.Errorf("function %q: %w", name, errdefs.ErrNotFound)
	}
	if err := cp.store.Delete(ctx, name); err != nil {
		return fmt.Errorf("delete %s: store: %w", name, err)
	}
	cp.mu.Lock()
	fn := cp.functions[name]
	delete(cp.functions, name)
	delete(cp.prepulls, name)
	for _, sb := range fn.sandboxes {
		cp.stopSandbox(sb)
	}
	cp.markDirty(name)
	wait := cp.routeBarrier()
	cp.mu.Unlock()
	cp.log.Info("function deleted", "function", name)
	cp.awaitRoutes(wait, name)
	return nil
}

// functionView is the API form of a function with its status. cp.mu held.
func (cp *ControlPlane) functionView(fn *function) *pb.Function {
	f := proto.Clone(fn.def).(*pb.Function)
	st := &pb.FunctionStatus{Desired: fn.desired, Panic: fn.scaler.PanicSince != (time.Time{})}
	for _, sb := range fn.sandboxes {
		switch {
		case sb.state == sbDraining:
			st.Draining++
		case sb.state == sbReady:
			st.Ready++
		case sb.state == sbPending:
			st.Pending++
		}
	}
	if fn.lastErr != "" {
		st.LastError = fn.lastErr
		st.LastErrorUnixMs = fn.lastErrAt.UnixMilli()
	}
	for _, pf := range fn.prepullFailed {
		st.PrepullFailures = append(st.PrepullFailures, proto.Clone(pf).(*pb.PrepullFailure))
	}
	sort.Slice(st.PrepullFailures, func(i, j int) bool { return st.PrepullFailures[i].WorkerId < st.PrepullFailures[j].WorkerId })
	f.Status = st
	return f
}
