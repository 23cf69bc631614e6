package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	pb "github.com/batonfaas/baton/api/controlplane/v1"
	"github.com/batonfaas/baton/internal/loadgen"
)

const loadUsage = `usage: baton load trace --trace DIR [flags]     replay an Azure Functions trace (2019 folder or 2021 CSV)
       baton load rps --rate R[,R2,...] --duration D (--cold | --warm) [flags]
                                                a fixed arrival rate; a list of rates is a sweep
       baton load closed --clients N --duration D FUNCTION
                                                N clients sending as fast as they are answered

Each run writes PREFIX.csv (one row per invocation), PREFIX-summary.txt and
PREFIX-{latency,slowdown,timeline}.png to --out, PREFIX being
baton-load-DATE-TIME-LABEL, and prints the summary.
Run "baton load SUBCOMMAND -h" for its flags.
`

func cmdLoad(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, loadUsage)
		return exitError{2}
	}
	switch args[0] {
	case "trace":
		return cmdLoadTrace(args[1:], stdout, stderr)
	case "rps":
		return cmdLoadRPS(args[1:], stdout, stderr)
	case "closed":
		return cmdLoadClosed(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, loadUsage)
		return nil
	default:
		fmt.Fprintf(stderr, "baton load: unknown subcommand %q\n\n%s", args[0], loadUsage)
		return exitError{2}
	}
}

// loadFlags are the flags every load subcommand takes.
type loadFlags struct {
	cp, dp, out, workload, logLevel string
	h2c                             bool
	timeout                         time.Duration
}

func (l *loadFlags) register(fs *flag.FlagSet, workload string) {
	dp := os.Getenv("BATON_DATAPLANE")
	if dp == "" {
		dp = "127.0.0.1:8080"
	}
	fs.StringVar(&l.cp, "controlplane", controlPlaneDefault(), "control-plane address (gRPC)")
	fs.StringVar(&l.dp, "dataplane", dp, "data plane host:port the requests go to (or BATON_DATAPLANE)")
	fs.StringVar(&l.out, "out", ".", "directory for the CSV, summary and plots")
	fs.StringVar(&l.workload, "workload", workload, "workload header: sleep, empty, or anything else to spin the CPU (e.g. trace)")
	fs.BoolVar(&l.h2c, "h2c", false, "HTTP/2 cleartext instead of HTTP/1.1 keep-alive connections")
	fs.DurationVar(&l.timeout, "timeout", 2*time.Minute, "bound on one request")
	fs.StringVar(&l.logLevel, "log-level", "info", "debug, info, warn or error")
}

// fnOptFlags are the flags of the functions a load registers.
type fnOptFlags struct {
	binary, image                   string
	minScale, maxScale, concurrency int
	grace                           time.Duration
}

func (f *fnOptFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.binary, "binary", "", "register the functions with this executable (serving the workload protocol on $PORT)")
	fs.StringVar(&f.image, "image", "fake", "register the functions with this image (when --binary is not given; any image suits --runtime fake)")
	fs.IntVar(&f.minScale, "min-scale", 0, "fewest sandboxes per function (rps: --warm 1)")
	fs.IntVar(&f.maxScale, "max-scale", 0, "most sandboxes per function (0: no bound)")
	fs.IntVar(&f.concurrency, "concurrency", 0, "requests one sandbox serves at once (0: the default, 1)")
	fs.DurationVar(&f.grace, "scale-to-zero-grace", 0, "idle time before a function's last sandbox goes (0: the default, 30s; rps: --cold 2s)")
}

func (f *fnOptFlags) options() (loadgen.FunctionOptions, error) {
	o := loadgen.FunctionOptions{Image: f.image, MinScale: int32(f.minScale), MaxScale: int32(f.maxScale),
		Concurrency: int32(f.concurrency), ScaleToZeroGrace: f.grace}
	if f.binary != "" {
		abs, err := filepath.Abs(f.binary)
		if err != nil {
			return o, fmt.Errorf("--binary: %w", err)
		}
		st, err := os.Stat(abs)
		if err != nil {
			return o, fmt.Errorf("--binary: %w", err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return o, fmt.Errorf("--binary %s: not an executable file", abs)
		}
		o.Binary, o.Image = abs, ""
	}
	return o, nil
}

func loadSignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// deployAll registers the load's functions and logs what it did.
func deployAll(ctx context.Context, c pb.ControlPlaneClient, cp string, specs []*pb.FunctionSpec, log *slog.Logger) error {
	t0 := time.Now()
	last := t0
	st, err := loadgen.Deploy(ctx, c, specs, 16, func(done, total int) {
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			log.Info("registering functions", "done", done, "total", total)
		}
	})
	if err != nil {
		return rpcErr(cp, err)
	}
	log.Info("functions registered", "created", st.Created, "updated", st.Updated, "unchanged", st.Unchanged,
		"took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// loadRun is one run to send and report.
type loadRun struct {
	label, title string
	sched        loadgen.Schedule // open loop; nil for closed
	clients      int              // closed loop
	duration     time.Duration    // closed loop
	req          loadgen.Request  // closed loop
}

// run sends one load, writes its outputs and prints its summary.
func (l *loadFlags) run(ctx context.Context, r loadRun, stdout, stderr io.Writer, log *slog.Logger) error {
	inv := loadgen.NewHTTPInvoker(loadgen.HTTPConfig{Addr: l.dp, H2C: l.h2c, Timeout: l.timeout, Workload: l.workload})
	defer inv.Close()
	res := &loadgen.Result{Title: r.title, OpenLoop: r.sched != nil}
	if r.sched != nil {
		res.Planned, res.Length = r.sched.Planned(), r.sched.Length()
		res.PlannedPerSecond = loadgen.PlannedPerSecond(r.sched)
	} else {
		res.Length = r.duration
	}
	rec := loadgen.NewRecorder(res.Planned)
	runner := &loadgen.Runner{Invoker: inv, Recorder: rec}
	prog := &loadgen.Progress{W: stderr, Label: r.label, Planned: res.Planned, Length: res.Length, Counts: rec.Counts}
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		prog.Terminal = true
		if w, _, err := term.GetSize(int(f.Fd())); err == nil {
			prog.Width = w
		}
	}
	start := time.Now()
	out, err := loadgen.CreateOutput(l.out, r.label, start) // before the run: a bad --out wastes no run
	if err != nil {
		return err
	}
	defer out.CSV.Close()
	log.Info("load starting", "run", r.title, "dataplane", l.dp, "h2c", l.h2c)
	prog.Start(start)
	if r.sched != nil {
		err = runner.Open(ctx, r.sched)
	} else {
		err = runner.Closed(ctx, r.clients, r.duration, r.req)
	}
	prog.Stop()
	res.Started, res.Records = runner.Started, rec.Records()
	interrupted := err != nil && ctx.Err() != nil
	if err != nil && !interrupted {
		return fmt.Errorf("load %s: %w", r.label, err)
	}
	sum := loadgen.Summarize(res)
	werr := loadgen.WriteCSV(out.CSV, res)
	if cerr := out.CSV.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write %s.csv: %w", out.Prefix, werr)
	}
	files := []string{out.Prefix + ".csv"}
	pngs, err := loadgen.WritePlots(out.Prefix, res, sum)
	if err != nil {
		return err
	}
	files = append(files, pngs...)
	files = append(files, out.Prefix+"-summary.txt")
	var text strings.Builder
	if err := sum.WriteText(&text, files); err != nil {
		return err
	}
	if err := os.WriteFile(out.Prefix+"-summary.txt", []byte(text.String()), 0o644); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	fmt.Fprint(stdout, text.String())
	if interrupted {
		return fmt.Errorf("load %s: interrupted (the results so far are written)", r.label)
	}
	return nil
}

func cmdLoadTrace(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("load trace", "load trace --trace DIR [flags]", stderr)
	var lf loadFlags
	var ff fnOptFlags
	lf.register(fs, "sleep")
	ff.register(fs)
	dir := fs.String("trace", "", "trace: a folder in the Azure Functions 2019 format, or a 2021 per-invocation CSV file")
	minutes := fs.Int("minutes", 0, "minutes to measure after the warm-up (0: the rest of the trace)")
	warmup := fs.Int("warmup-minutes", 0, "first minutes replayed but left out of the results")
	iat := fs.String("iat", "exponential", "inter-arrival times within a minute: exponential, uniform or equidistant")
	seed := fs.Uint64("seed", 1, "seed of arrivals, execution times and memory sizes")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 || *dir == "" {
		fs.Usage()
		return exitError{2}
	}
	log, err := newLogger(lf.logLevel, stderr)
	if err != nil {
		return err
	}
	dist, err := loadgen.ParseIAT(*iat)
	if err != nil {
		return fmt.Errorf("--iat: %w", err)
	}
	opts, err := ff.options()
	if err != nil {
		return err
	}
	tr, err := loadgen.ReadTrace(*dir)
	if err != nil {
		return err
	}
	if tr.Skipped > 0 {
		log.Warn("trace functions without durations or memory rows left out", "count", tr.Skipped)
	}
	sched, err := loadgen.NewTraceSchedule(tr, loadgen.TraceOptions{WarmupMinutes: *warmup, Minutes: *minutes, IAT: dist,
		Seed: *seed})
	if err != nil {
		return fmt.Errorf("trace %s: %w", *dir, err)
	}
	fns := sched.Functions()
	specs := make([]*pb.FunctionSpec, len(fns))
	for i, f := range fns {
		specs[i] = opts.Spec(f.Name)
	}
	ctx, stop := loadSignalContext()
	defer stop()
	c, closeFn, err := dialCP(lf.cp)
	if err != nil {
		return err
	}
	defer closeFn()
	if err := deployAll(ctx, c, lf.cp, specs, log); err != nil {
		return err
	}
	o := sched.Options()
	name := filepath.Base(filepath.Clean(*dir))
	if tr.Format == loadgen.FormatAzure2021 {
		name = strings.TrimSuffix(name, filepath.Ext(name))
	}
	title := fmt.Sprintf("trace %s: %d functions, %d min", name, len(fns), o.Minutes)
	if o.WarmupMinutes > 0 {
		title += fmt.Sprintf(" after %d min warm-up", o.WarmupMinutes)
	}
	if tr.Format == loadgen.FormatAzure2019 {
		title += ", " + dist.String() + " arrivals"
	}
	title += fmt.Sprintf(", seed %d, workload %s", *seed, lf.workload)
	return lf.run(ctx, loadRun{label: "trace-" + name, title: title, sched: sched}, stdout, stderr, log)
}

// parseRates parses "200,500,1000".
func parseRates(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || !(r > 0) || math.IsInf(r, 0) {
			return nil, fmt.Errorf("--rate %q: want positive requests per second, separated by commas", s)
		}
		out = append(out, r)
	}
	return out, nil
}

func cmdLoadRPS(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("load rps", "load rps --rate R[,R2,...] --duration D (--cold | --warm) [flags]", stderr)
	var lf loadFlags
	var ff fnOptFlags
	lf.register(fs, "empty")
	ff.register(fs)
	rates := fs.String("rate", "", "requests per second; a comma-separated list is a sweep, one result set per rate")
	duration := fs.Duration("duration", 0, "how long to send at each rate")
	cold := fs.Bool("cold", false, "send every request to a function at zero (a pool used in rotation)")
	warm := fs.Bool("warm", false, "send every request to one function kept warm (--min-scale, default 1)")
	exec := fs.Duration("exec", 0, "execution time asked of the function (requested_cpu, whole milliseconds)")
	pool := fs.Int("pool", 0, "--cold: functions in the pool (0: rate x cooldown, at most the requests planned)")
	cooldown := fs.Duration("cooldown", 0, "--cold: least time between two requests to one function of the pool (0: grace and stable window + 4s)")
	stable := fs.Duration("stable-window", 0, "autoscaler stable window of the functions (0: --cold 2s, --warm the default)")
	prefix := fs.String("name-prefix", "load", "function names: PREFIX-cold-N (pool) or PREFIX-warm")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 || *rates == "" || *duration <= 0 || *cold == *warm {
		if *cold && *warm {
			fmt.Fprintln(stderr, "baton load rps: give --cold or --warm, not both")
		}
		fs.Usage()
		return exitError{2}
	}
	log, err := newLogger(lf.logLevel, stderr)
	if err != nil {
		return err
	}
	rs, err := parseRates(*rates)
	if err != nil {
		return err
	}
	// Defaults that depend on the mode.
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if *warm && !given["min-scale"] {
		ff.minScale = 1
	}
	if *cold && !given["scale-to-zero-grace"] {
		ff.grace = 2 * time.Second
	}
	if *cold && ff.minScale > 0 {
		return errors.New("--cold needs --min-scale 0: the pool's functions must scale to zero")
	}
	opts, err := ff.options()
	if err != nil {
		return err
	}
	opts.StableWindow = *stable
	if *cold && opts.StableWindow == 0 {
		opts.StableWindow = 2 * time.Second
	}
	ctx, stop := loadSignalContext()
	defer stop()
	c, closeFn, err := dialCP(lf.cp)
	if err != nil {
		return err
	}
	defer closeFn()

	var names []string
	mode := "warm"
	if *cold {
		mode = "cold"
		cd := *cooldown
		if cd == 0 {
			// Back at zero: the stable window empties and the grace passes
			// (together), then the next autoscaler tick (2s by default) acts.
			cd = max(opts.ScaleToZeroGrace, opts.StableWindow) + 4*time.Second
		}
		n := *pool
		if n == 0 {
			for _, r := range rs {
				s := loadgen.RateSchedule{Rate: r, Duration: *duration, Functions: []string{""}}
				n = max(n, min(int(math.Ceil(r*cd.Seconds())), s.Planned()))
			}
		}
		for i := range n {
			names = append(names, fmt.Sprintf("%s-cold-%d", *prefix, i))
		}
		log.Info("cold pool", "functions", n, "cooldown", cd, "scale_to_zero_grace", opts.ScaleToZeroGrace,
			"stable_window", opts.StableWindow)
	} else {
		names = []string{*prefix + "-warm"}
	}
	specs := make([]*pb.FunctionSpec, len(names))
	for i, n := range names {
		specs[i] = opts.Spec(n)
	}
	if err := deployAll(ctx, c, lf.cp, specs, log); err != nil {
		return err
	}
	for _, r := range rs {
		cond, what := loadgen.AtZero, "at zero"
		if *warm {
			// With --min-scale 0 the first request starts the sandbox.
			cond, what = loadgen.ReadyAtLeast(int32(ff.minScale)), "ready"
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		left, err := loadgen.WaitScale(wctx, c, names, cond)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			log.Warn("functions not "+what+" before the run", "left", left, "err", err)
		}
		rate := strconv.FormatFloat(r, 'f', -1, 64)
		sched := &loadgen.RateSchedule{Rate: r, Duration: *duration, Functions: names, Exec: *exec}
		title := fmt.Sprintf("rps %s/s for %s, %s", rate, *duration, mode)
		if *cold {
			title += fmt.Sprintf(" (pool of %d functions)", len(names))
		}
		title += ", workload " + lf.workload
		if err := lf.run(ctx, loadRun{label: "rps-" + mode + "-" + rate, title: title, sched: sched}, stdout, stderr, log); err != nil {
			return err
		}
	}
	return nil
}

func cmdLoadClosed(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("load closed", "load closed --clients N --duration D FUNCTION", stderr)
	var lf loadFlags
	lf.register(fs, "empty")
	clients := fs.Int("clients", 1, "concurrent clients, each sending its next request when the last is answered")
	duration := fs.Duration("duration", 0, "how long to send")
	exec := fs.Duration("exec", 0, "execution time asked of the function (requested_cpu, whole milliseconds)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *duration <= 0 || *clients <= 0 {
		fs.Usage()
		return exitError{2}
	}
	log, err := newLogger(lf.logLevel, stderr)
	if err != nil {
		return err
	}
	ctx, stop := loadSignalContext()
	defer stop()
	fn := pos[0]
	title := fmt.Sprintf("closed loop, %d clients for %s on %s, workload %s", *clients, *duration, fn, lf.workload)
	return lf.run(ctx, loadRun{label: fmt.Sprintf("closed-%d-%s", *clients, fn), title: title, clients: *clients,
		duration: *duration, req: loadgen.Request{Function: fn, Exec: *exec}}, stdout, stderr, log)
}
