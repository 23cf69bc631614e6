// Package cli implements the baton command line: argument parsing and
// output. The daemons it starts live in internal/controlplane,
// internal/dataplane and internal/worker.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

const usage = `baton: a cluster manager for Functions as a Service

Cluster:
  baton up [flags]             a one-machine cluster (control plane, data plane, worker) in one process
  baton controlplane [flags]   the control-plane daemon
  baton dataplane [flags]      a data-plane daemon (the HTTP front door)
  baton worker [flags]         a worker daemon

Functions:
  baton fn deploy NAME (--binary PATH | --image REF) [flags]
  baton fn list | get NAME | delete NAME
  baton invoke NAME [-d DATA]
  baton status
  baton load trace|rps|closed [flags]   load generator: trace replay, fixed rate, closed loop

Images:
  baton image build --binary PATH --tag REF [--push] [--output FILE.tar]   a one-layer OCI image of a static executable
  baton image import FILE.tar [--containerd-socket PATH]                  load an image archive into a worker's containerd

Run "baton COMMAND -h" for a command's flags.
The CLI finds the control plane through --controlplane ADDR or BATON_CONTROLPLANE (default 127.0.0.1:9090).
`

// exitError carries an exit code through to Main.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// Main runs the command line args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	err := run(args, stdout, stderr)
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, flag.ErrHelp):
		return 2
	default:
		fmt.Fprintf(stderr, "baton: %v\n", err)
		return 1
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError{2}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "up":
		return cmdUp(rest, stdout, stderr)
	case "controlplane":
		return cmdControlPlane(rest, stderr)
	case "dataplane":
		return cmdDataPlane(rest, stderr)
	case "worker":
		return cmdWorker(rest, stderr)
	case "fn", "function":
		return cmdFn(rest, stdout, stderr)
	case "invoke":
		return cmdInvoke(rest, stdout, stderr)
	case "status":
		return cmdStatus(rest, stdout, stderr)
	case "image":
		return cmdImage(rest, stdout, stderr)
	case "load":
		return cmdLoad(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprintf(stderr, "baton: unknown command %q\n\n%s", cmd, usage)
		return exitError{2}
	}
}

// newFlags makes a flag set whose usage names the command.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: baton %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags and positional arguments in any order
// ("fn deploy NAME --binary X" as well as "fn deploy --binary X NAME").
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// defaultDataDir is a per-user directory: $XDG_DATA_HOME/baton or
// ~/.local/share/baton.
func defaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "baton")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "baton")
	}
	return filepath.Join(os.TempDir(), "baton")
}

func controlPlaneDefault() string {
	if v := os.Getenv("BATON_CONTROLPLANE"); v != "" {
		return v
	}
	return "127.0.0.1:9090"
}
