// Command baton is Baton's single binary: the control plane, data plane and
// worker daemons, a one-machine cluster (baton up), and the CLI. Run as
// "baton-workload" it is the benchmark workload function.
package main

import (
	"os"

	"github.com/batonfaas/baton/internal/cli"
)

func main() {
	if cli.IsWorkload(os.Args[0]) {
		os.Exit(cli.ServeWorkload())
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
