package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/cpclient"
	"github.com/batonfaas/baton/internal/errdefs"
)

// cpCall runs one call against the control plane at addrs (a
// comma-separated list of replicas: the leader answers).
func cpCall[T any](addrs string, timeout time.Duration, call func(context.Context, pb.ControlPlaneClient) (T, error)) (T, error) {
	var zero T
	c, closeCP, err := dialCP(addrs)
	if err != nil {
		return zero, err
	}
	defer closeCP()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := call(ctx, c) // unary calls go to the leader (cpclient.Client.Invoke)
	if err != nil {
		return zero, rpcErr(addrs, err)
	}
	return out, nil
}

// rpcErr turns a gRPC error into one a user can read.
func rpcErr(addr string, err error) error {
	err = errdefs.FromGRPC(err)
	if strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "Unavailable") {
		return fmt.Errorf("cannot reach the control plane at %s (is it running? set --controlplane or BATON_CONTROLPLANE): %w", addr, err)
	}
	return err
}

func cmdFn(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, "usage: baton fn deploy|list|get|delete ...\n")
		return exitError{2}
	}
	switch args[0] {
	case "deploy":
		return cmdDeploy(args[1:], stdout, stderr)
	case "list", "ls":
		return cmdList(args[1:], stdout, stderr)
	case "get":
		return cmdGet(args[1:], stdout, stderr)
	case "delete", "rm":
		return cmdDelete(args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "baton fn: unknown subcommand %q (deploy, list, get, delete)\n", args[0])
		return exitError{2}
	}
}

func cmdDeploy(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fn deploy", "fn deploy NAME (--binary PATH | --image REF) [flags]", stderr)
	cp := fs.String("controlplane", controlPlaneDefault(), "control-plane address")
	spec := &pb.FunctionSpec{Scaling: &pb.ScalingSpec{}}
	sc := spec.Scaling
	var env, fargs multiFlag
	var timeout, stable, grace time.Duration
	var minScale, maxScale, conc int
	fs.StringVar(&spec.Binary, "binary", "", "executable serving HTTP on $PORT (made absolute)")
	fs.StringVar(&spec.Image, "image", "", "image reference")
	fs.BoolVar(&spec.Prepull, "prepull", false, "every worker fetches the image now (and when it connects), before the first cold start")
	fs.IntVar(&minScale, "min-scale", 0, "fewest sandboxes (0: scale to zero)")
	fs.IntVar(&maxScale, "max-scale", 0, "most sandboxes (0: no bound)")
	fs.IntVar(&conc, "concurrency", 0, "requests one sandbox serves at once (default 1)")
	fs.Int64Var(&spec.CpuMillicores, "cpu", 0, "CPU request and limit in millicores (default 100)")
	fs.Int64Var(&spec.MemoryMib, "memory", 0, "memory request and limit in MiB (default 128)")
	fs.Var(&env, "env", "K=V environment variable (repeatable)")
	fs.Var(&fargs, "arg", "argument passed to the function (repeatable)")
	fs.DurationVar(&timeout, "timeout", 0, "bound on a request's life in the data plane, queueing included (default 60s)")
	retry := fs.String("retry", "", "which requests a sandbox died under are sent to another: idempotent (GET, HEAD, OPTIONS, TRACE, or an Idempotency-Key; the default), always, never")
	fs.Float64Var(&sc.TargetConcurrency, "target-concurrency", 0, "autoscaler: requests per sandbox aimed at (default: --concurrency)")
	fs.Float64Var(&sc.TargetUtilization, "target-utilization", 0, "autoscaler: share of the target aimed at, (0,1] (default 1)")
	fs.DurationVar(&stable, "stable-window", 0, "autoscaler: stable window (default 60s)")
	fs.Float64Var(&sc.PanicWindowPercent, "panic-window-percent", 0, "autoscaler: panic window as % of the stable one (default 10)")
	fs.Float64Var(&sc.PanicThresholdPercent, "panic-threshold-percent", 0, "autoscaler: panic at this % of ready capacity (default 200)")
	fs.Float64Var(&sc.MaxScaleUpRate, "max-scale-up-rate", 0, "autoscaler: growth factor per decision (default 1000)")
	fs.Float64Var(&sc.MaxScaleDownRate, "max-scale-down-rate", 0, "autoscaler: shrink factor per decision (default 2)")
	fs.DurationVar(&grace, "scale-to-zero-grace", 0, "autoscaler: idle time before scaling to zero (default 30s)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitError{2}
	}
	spec.Name = pos[0]
	if spec.Retry, err = parseRetry(*retry); err != nil {
		return err
	}
	spec.Concurrency, sc.MinScale, sc.MaxScale = int32(conc), int32(minScale), int32(maxScale)
	spec.TimeoutMs, sc.StableWindowMs, sc.ScaleToZeroGraceMs = timeout.Milliseconds(), stable.Milliseconds(), grace.Milliseconds()
	spec.Args = fargs
	if len(env) > 0 {
		spec.Env = map[string]string{}
		for _, kv := range env {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("--env %q: want K=V", kv)
			}
			spec.Env[k] = v
		}
	}
	if spec.Binary != "" {
		abs, err := filepath.Abs(spec.Binary)
		if err != nil {
			return err
		}
		st, err := os.Stat(abs)
		if err != nil {
			return fmt.Errorf("--binary: %w", err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("--binary %s: not an executable file", abs)
		}
		spec.Binary = abs
	}
	resp, err := cpCall(*cp, 30*time.Second, func(ctx context.Context, c pb.ControlPlaneClient) (*pb.DeployFunctionResponse, error) {
		return c.DeployFunction(ctx, &pb.DeployFunctionRequest{Spec: spec})
	})
	if err != nil {
		return err
	}
	verb := "updated"
	if resp.Created {
		verb = "created"
	}
	fmt.Fprintf(stdout, "function %s %s (generation %d)\n", spec.Name, verb, resp.Function.Generation)
	if spec.Prepull {
		fmt.Fprintf(stdout, "prepull of %s asked of every worker (baton fn get %s shows failures)\n", spec.Image, spec.Name)
	}
	return nil
}

// parseRetry reads --retry.
func parseRetry(s string) (pb.RetryPolicy, error) {
	switch s {
	case "":
		return pb.RetryPolicy_RETRY_POLICY_UNSPECIFIED, nil
	case "idempotent":
		return pb.RetryPolicy_RETRY_POLICY_IDEMPOTENT, nil
	case "always":
		return pb.RetryPolicy_RETRY_POLICY_ALWAYS, nil
	case "never":
		return pb.RetryPolicy_RETRY_POLICY_NEVER, nil
	}
	return 0, fmt.Errorf("--retry %q: want idempotent, always or never", s)
}

func cmdList(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fn list", "fn list", stderr)
	cp := fs.String("controlplane", controlPlaneDefault(), "control-plane address")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	resp, err := cpCall(*cp, 10*time.Second, func(ctx context.Context, c pb.ControlPlaneClient) (*pb.ListFunctionsResponse, error) {
		return c.ListFunctions(ctx, &pb.ListFunctionsRequest{})
	})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGEN\tREADY\tPENDING\tDESIRED\tCONCURRENCY\tSOURCE\tLAST ERROR")
	for _, f := range resp.Functions {
		s, st := f.Spec, f.Status
		src := s.Binary
		if s.Image != "" {
			src = s.Image
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Name, f.Generation, st.GetReady(), st.GetPending(),
			st.GetDesired(), s.Concurrency, src, oneLine(st.GetLastError()))
	}
	return tw.Flush()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

func cmdGet(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fn get", "fn get NAME", stderr)
	cp := fs.String("controlplane", controlPlaneDefault(), "control-plane address")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitError{2}
	}
	f, err := cpCall(*cp, 10*time.Second, func(ctx context.Context, c pb.ControlPlaneClient) (*pb.Function, error) {
		return c.GetFunction(ctx, &pb.GetFunctionRequest{Name: pos[0]})
	})
	if err != nil {
		return err
	}
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(f)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", b)
	// Also in the JSON (status.prepullFailures); said on stderr so that
	// stdout stays one JSON document.
	for _, pf := range f.GetStatus().GetPrepullFailures() {
		fmt.Fprintf(stderr, "baton: prepull of %s failed on worker %s: %s\n", pf.Image, pf.WorkerId, strings.Join(strings.Fields(pf.Reason), " "))
	}
	return nil
}

func cmdDelete(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fn delete", "fn delete NAME", stderr)
	cp := fs.String("controlplane", controlPlaneDefault(), "control-plane address")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitError{2}
	}
	if _, err := cpCall(*cp, 10*time.Second, func(ctx context.Context, c pb.ControlPlaneClient) (*pb.DeleteFunctionResponse, error) {
		return c.DeleteFunction(ctx, &pb.DeleteFunctionRequest{Name: pos[0]})
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "function %s deleted\n", pos[0])
	return nil
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "status", stderr)
	cp := fs.String("controlplane", controlPlaneDefault(), "control-plane address")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	st, err := cpCall(*cp, 10*time.Second, func(ctx context.Context, c pb.ControlPlaneClient) (*pb.ClusterStatus, error) {
		return c.GetStatus(ctx, &pb.GetStatusRequest{})
	})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "WORKERS (placement: %s)\n", st.PlacementPolicy)
	fmt.Fprintln(tw, "ID\tSTATE\tRUNTIME\tSANDBOXES\tCPU USED/CAP (m)\tMEMORY USED/CAP (MiB)")
	for _, w := range st.Workers {
		state := "up"
		if !w.Up {
			state = "down"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%d/%d\n", w.WorkerId, state, w.Runtime, w.Sandboxes,
			w.Used.GetCpuMillicores(), w.Capacity.GetCpuMillicores(), w.Used.GetMemoryMib(), w.Capacity.GetMemoryMib())
	}
	fmt.Fprintln(tw, "\nFUNCTIONS")
	fmt.Fprintln(tw, "NAME\tREADY\tPENDING\tDRAINING\tDESIRED\tLAST ERROR")
	for _, f := range st.Functions {
		s := f.Status
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", f.Spec.Name, s.GetReady(), s.GetPending(), s.GetDraining(),
			s.GetDesired(), oneLine(s.GetLastError()))
	}
	fmt.Fprintln(tw, "\nDATA PLANES")
	fmt.Fprintln(tw, "ID\tADDRESS\tCONNECTED")
	for _, d := range st.DataPlanes {
		fmt.Fprintf(tw, "%s\t%s\t%v\n", d.DataPlaneId, d.Address, d.Connected)
	}
	return tw.Flush()
}

func cmdInvoke(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("invoke", "invoke NAME [-d DATA]", stderr)
	cp := fs.String("controlplane", controlPlaneDefault(), "control-plane address (to find a data plane)")
	dpAddr := fs.String("dataplane", os.Getenv("BATON_DATAPLANE"), "data plane host:port (default: the first one the control plane knows, else 127.0.0.1:8080)")
	data := fs.String("d", "", "request body (sent with POST; without it the request is a GET)")
	path := fs.String("path", "/", "path to request")
	var headers multiFlag
	fs.Var(&headers, "H", "'Name: value' request header (repeatable)")
	verbose := fs.Bool("v", false, "print the status line and Baton's response headers to stderr")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitError{2}
	}
	addr := *dpAddr
	if addr == "" {
		addr = findDataPlane(*cp)
	}
	method := http.MethodGet
	var body io.Reader
	if *data != "" {
		method, body = http.MethodPost, strings.NewReader(*data)
	}
	req, err := http.NewRequest(method, "http://"+addr+*path, body)
	if err != nil {
		return err
	}
	req.Host = pos[0]
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return fmt.Errorf("-H %q: want 'Name: value'", h)
		}
		req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := (&http.Client{Timeout: 10 * time.Minute}).Do(req)
	if err != nil {
		return fmt.Errorf("invoke %s through the data plane at %s: %w", pos[0], addr, err)
	}
	defer resp.Body.Close()
	if *verbose {
		fmt.Fprintf(stderr, "%s\nX-Baton-Cold-Start: %s\nServer-Timing: %s\n", resp.Status,
			resp.Header.Get("X-Baton-Cold-Start"), resp.Header.Get("Server-Timing"))
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		fmt.Fprintf(stderr, "baton: invoke %s: %s\n", pos[0], resp.Status)
		return exitError{1}
	}
	return nil
}

// findDataPlane asks the control plane for a data plane's address.
func findDataPlane(cp string) string {
	const fallback = "127.0.0.1:8080"
	st, err := cpCall(cp, 2*time.Second, func(ctx context.Context, c pb.ControlPlaneClient) (*pb.ClusterStatus, error) {
		return c.GetStatus(ctx, &pb.GetStatusRequest{})
	})
	if err != nil {
		return fallback
	}
	for _, d := range st.DataPlanes {
		if d.Connected && d.Address != "" {
			if _, _, err := net.SplitHostPort(d.Address); err == nil {
				return d.Address
			}
		}
	}
	return fallback
}

// dialCP connects to the control plane at addrs (one address or a
// comma-separated list of replicas) and returns a client whose calls go to
// the leader, across fail-overs, with a function closing it. Long running
// commands (baton load) use it; one-shot ones use cpCall.
func dialCP(addrs string) (pb.ControlPlaneClient, func(), error) {
	c, err := cpclient.Dial(addrs)
	if err != nil {
		return nil, nil, err
	}
	return pb.NewControlPlaneClient(c), c.Close, nil
}
