// Command hello is the quick-start function: an HTTP server on $PORT
// (HTTP/1.1 and h2c) that greets on every path, naming its function (the
// FUNCTION environment variable, default "hello") and its sandbox (the
// hostname, which the process runtime sets to the sandbox id).
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		fmt.Fprintln(os.Stderr, "hello: PORT is not set; a function serves HTTP on $PORT (for example PORT=8080 hello)")
		os.Exit(2)
	}
	function := os.Getenv("FUNCTION")
	if function == "" {
		function = "hello"
	}
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	greeting := []byte(fmt.Sprintf("Hello from Baton! (function %s, sandbox %s)\n", function, host))
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Addr: ":" + port,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = w.Write(greeting)
		}),
		Protocols: &protocols,
	}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintf(os.Stderr, "hello: %v\n", err)
		os.Exit(1)
	}
}
