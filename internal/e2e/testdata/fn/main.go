// Command fn is the end-to-end tests' function: an HTTP server on $PORT with
// knobs. ?sleep=MS waits; /crash exits with status 3; every answer carries
// the process id, the path and query it saw, and the most requests it has
// served at once. FAIL_AT_START=MSG makes it print MSG and exit 1 at once;
// START_DELAY_MS=N makes it wait N ms before it listens. The sandbox is
// named by its hostname (its pid is 1 in its own PID namespace).
package main

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

func main() {
	if msg := os.Getenv("FAIL_AT_START"); msg != "" {
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(1)
	}
	if ms, _ := strconv.Atoi(os.Getenv("START_DELAY_MS")); ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	host, _ := os.Hostname()
	var (
		mu            sync.Mutex
		inflight, top int
	)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inflight++
		top = max(top, inflight)
		mu.Unlock()
		defer func() { mu.Lock(); inflight--; mu.Unlock() }()
		if r.URL.Path == "/crash" {
			os.Exit(3)
		}
		if ms, _ := strconv.Atoi(r.URL.Query().Get("sleep")); ms > 0 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		mu.Lock()
		t := top
		mu.Unlock()
		w.Header().Set("X-Max-Inflight", strconv.Itoa(t))
		w.Header().Set("X-Sandbox", host)
		fmt.Fprintf(w, "sandbox=%s pid=%d path=%s query=%s host=%s env=%s max=%d\n", host, os.Getpid(), r.URL.Path, r.URL.RawQuery, r.Host,
			os.Getenv("GREETING"), t)
	})
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
