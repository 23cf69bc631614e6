// Command baton is Baton's single binary: the control plane, data plane and
// worker daemons, a one-machine cluster (baton up), and the CLI.
package main

import (
	"os"

	"github.com/batonfaas/baton/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
