// Command workload is the benchmark function used by research load
// generators (see package internal/workload for the protocol). It serves
// HTTP/1.1 and h2c on $PORT and answers as the machine's hostname.
package main

import (
	"fmt"
	"net/http"
	"os"

	"github.com/batonfaas/baton/internal/workload"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		fmt.Fprintln(os.Stderr, "workload: PORT is not set; a function serves HTTP on $PORT (for example PORT=8080 workload)")
		os.Exit(2)
	}
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Addr: ":" + port, Handler: workload.Handler(host), Protocols: &protocols}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintf(os.Stderr, "workload: %v\n", err)
		os.Exit(1)
	}
}
