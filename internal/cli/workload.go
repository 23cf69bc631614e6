package cli

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/batonfaas/baton/internal/workload"
)

// The baton binary doubles as the benchmark workload function, busybox
// style: run under the name "baton-workload" it serves the workload protocol
// on $PORT. Workers link that name to their own executable, so that the
// process runtime can run the images research tooling registers
// (DefaultWorkloadImages) without any other file on the machine.

// WorkloadArg0 is the executable name under which baton is the workload
// function.
const WorkloadArg0 = "baton-workload"

// DefaultWorkloadImages are the image references the process runtime maps
// to the built-in workload function unless --image-map says otherwise: the
// images Dirigent's tooling registers, and a short name.
var DefaultWorkloadImages = []string{
	"docker.io/cvetkovic/dirigent_empty_function:latest",
	"docker.io/cvetkovic/dirigent_trace_function:latest",
	"workload",
}

// IsWorkload reports whether argv0 asks for the workload function.
func IsWorkload(argv0 string) bool { return filepath.Base(argv0) == WorkloadArg0 }

// ServeWorkload serves the workload function on $PORT and returns the exit
// code.
func ServeWorkload() int {
	port := os.Getenv("PORT")
	if port == "" {
		fmt.Fprintln(os.Stderr, "baton-workload: PORT is not set (it is the port to serve on)")
		return 2
	}
	host, _ := os.Hostname()
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Addr: ":" + port, Handler: workload.Handler(host), Protocols: &p}
	fmt.Fprintln(os.Stderr, srv.ListenAndServe())
	return 1
}

// workloadLink makes a directory holding a "baton-workload" link to this
// executable and returns the link's path and a function removing it.
func workloadLink() (string, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "baton-worker-")
	if err != nil {
		return "", nil, err
	}
	link := filepath.Join(dir, WorkloadArg0)
	if err := os.Symlink(exe, link); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return link, func() { os.RemoveAll(dir) }, nil
}
