// Package workload implements the benchmark-function protocol used by FaaS
// research load generators (Dirigent, the Azure-trace tools): a request says
// in headers how long to run and how (spin the CPU, sleep, or return at
// once), and the answer is a small JSON object saying what was done.
//
// examples/workload serves it as a real function; the fake sandbox runtime
// serves it in-process for emulated sandboxes.
package workload

import (
	"context"
	"encoding/json"
	"errors"
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
	if r.URL.Path == "/health" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
		return
	}
	status, body := Run(r.Context(), nil, h.machine, r.Header.Get(HeaderWorkload), r.Header.Get(HeaderRequestedCPU),
		r.Header.Get(HeaderFunction))
	if status != http.StatusOK {
		http.Error(w, string(body), status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// Run does what a request with these header values asks (see Handler) and
// appends the answer to dst: 200 and the JSON Response, or 400 and what to
// fix. A sleep ends early when ctx is done (the client went away).
func Run(ctx context.Context, dst []byte, machine, kind, requestedCPU, function string) (int, []byte) {
	start := time.Now()
	a, d, err := plan(kind, requestedCPU)
	if err != nil {
		return http.StatusBadRequest, append(dst, err.Error()...)
	}
	switch a {
	case sleeping:
		sleep(ctx, d)
	case spinning:
		Spin(d)
	}
	return http.StatusOK, AppendResponse(dst, Response{
		Status:        "OK",
		Function:      function,
		MachineName:   machine,
		ExecutionTime: time.Since(start).Microseconds(),
	})
}

// Sleeps says whether a request with these header values sleeps, and so
// may want to learn that its client went away.
func Sleeps(kind, requestedCPU string) bool {
	a, d, err := plan(kind, requestedCPU)
	return err == nil && a == sleeping && d > 0
}

// action is what a request does before its answer.
type action int

const (
	answering action = iota // nothing ("empty" wins over the rest)
	sleeping
	spinning // the CPU, the default
)

// plan reads the headers' values: what to do, and for how long.
func plan(kind, requestedCPU string) (action, time.Duration, error) {
	d, err := duration(requestedCPU)
	switch {
	case err != nil:
		return 0, 0, err
	case strings.Contains(kind, "empty"):
		return answering, 0, nil
	case strings.Contains(kind, "sleep"):
		return sleeping, d, nil
	}
	return spinning, d, nil
}

// duration is the requested_cpu header's value (0 if absent).
func duration(requestedCPU string) (time.Duration, error) {
	if requestedCPU == "" {
		return 0, nil
	}
	ms, err := strconv.ParseInt(strings.TrimSpace(requestedCPU), 10, 64)
	if err != nil || ms < 0 {
		return 0, errors.New("requested_cpu must be a non-negative integer number of milliseconds, got " + strconv.Quote(requestedCPU))
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// AppendResponse appends r as JSON, byte for byte as encoding/json writes
// it, without its reflection on the common path.
func AppendResponse(b []byte, r Response) []byte {
	b = append(b, `{"Status":`...)
	b = appendJSONString(b, r.Status)
	b = append(b, `,"Function":`...)
	b = appendJSONString(b, r.Function)
	b = append(b, `,"MachineName":`...)
	b = appendJSONString(b, r.MachineName)
	b = append(b, `,"ExecutionTime":`...)
	b = strconv.AppendInt(b, r.ExecutionTime, 10)
	return append(b, '}')
}

// appendJSONString appends s quoted: plain printable ASCII as it is,
// anything encoding/json would escape through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(strings.Clone(s)) // a string always encodes; the clone keeps s off the heap
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// sleep waits d, or less if ctx is done (the client went away).
func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
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
