// Package workload implements the benchmark-function protocol used by FaaS
// research load generators (Dirigent, the Azure-trace tools): a request says
// in headers how long to run and how (spin the CPU, sleep, or return at
// once), and the answer is a small JSON object saying what was done.
//
// examples/workload serves it as a real function; the fake sandbox runtime
// serves it in-process for emulated sandboxes.
package workload

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Request headers of the protocol.
const (
	HeaderWorkload     = "workload"      // "empty", "sleep", anything else spins the CPU
	HeaderFunction     = "function"      // echoed back as Function
	HeaderRequestedCPU = "requested_cpu" // milliseconds, integer
	HeaderMultiplier   = "multiplier"    // accepted and ignored (see Handler)
)

// Response is the JSON body of every workload answer. Field order and names
// are part of the protocol.
type Response struct {
	Status        string
	Function      string
	MachineName   string
	ExecutionTime int64 // microseconds spent in the handler
}

// Handler returns the workload function, answering as machineName.
//
// The header workload is matched by substring: one containing "empty"
// returns at once, one containing "sleep" sleeps requested_cpu milliseconds,
// and anything else (including "trace", an image name, or no header) spins
// the CPU for requested_cpu milliseconds. The multiplier header, which some
// generators send to scale an iteration count, is ignored: the CPU is spun
// by wall-clock time, so there is nothing to scale. GET /health answers
// "ok".
func Handler(machineName string) http.Handler {
	return &handler{machine: machineName}
}

type handler struct {
	machine string
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.URL.Path == "/health" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
		return
	}
	var d time.Duration
	if v := r.Header.Get(HeaderRequestedCPU); v != "" {
		ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || ms < 0 {
			http.Error(w, "requested_cpu must be a non-negative integer number of milliseconds, got "+strconv.Quote(v), http.StatusBadRequest)
			return
		}
		d = time.Duration(ms) * time.Millisecond
	}
	switch kind := r.Header.Get(HeaderWorkload); {
	case strings.Contains(kind, "empty"):
	case strings.Contains(kind, "sleep"):
		sleep(r, d)
	default:
		Spin(d)
	}
	body, err := json.Marshal(Response{
		Status:        "OK",
		Function:      r.Header.Get(HeaderFunction),
		MachineName:   h.machine,
		ExecutionTime: time.Since(start).Microseconds(),
	})
	if err != nil { // cannot happen: strings and an integer
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// sleep waits d, or less if the client goes away.
func sleep(r *http.Request, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

// sink keeps the compiler from removing Spin's arithmetic.
var sink atomic.Uint64

// Spin keeps one CPU busy for d of wall-clock time.
func Spin(d time.Duration) {
	if d <= 0 {
		return
	}
	deadline := time.Now().Add(d)
	x := uint64(88172645463325252)
	for time.Now().Before(deadline) {
		for range 1000 { // xorshift: real work between clock reads
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
		}
	}
	sink.Store(x)
}
