package cli

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
)

// flagSet is a flag.FlagSet with the flags every daemon shares.
type flagSet struct {
	*flag.FlagSet
	stderr   io.Writer
	config   string
	logLevel string
}

func newFlagSet(name, synopsis string, stderr io.Writer) *flagSet {
	fs := &flagSet{FlagSet: newFlags(name, synopsis, stderr), stderr: stderr}
	fs.StringVar(&fs.config, "config", "", "JSON file whose keys are these flags' names; the command line wins")
	fs.StringVar(&fs.logLevel, "log-level", "info", "debug, info, warn or error")
	return fs
}

// parseDaemon parses a daemon's flags (no positional arguments), applies the
// config file and returns the logger.
func (fs *flagSet) parseDaemon(args []string) (*slog.Logger, error) {
	pos, err := parse(fs.FlagSet, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		return nil, fmt.Errorf("%s: unexpected argument %q", fs.Name(), pos[0])
	}
	if err := applyConfigFile(fs.FlagSet, fs.config); err != nil {
		return nil, err
	}
	return newLogger(fs.logLevel, fs.stderr)
}
