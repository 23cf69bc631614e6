package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/batonfaas/baton/internal/workload"
)

// HTTPConfig configures an HTTPInvoker.
type HTTPConfig struct {
	Addr     string        // data plane host:port
	H2C      bool          // HTTP/2 cleartext (prior knowledge) instead of HTTP/1.1
	Timeout  time.Duration // bound on one request; 0: none
	Workload string        // value of the workload header ("sleep", "empty", "trace", ...); "": not sent
}

// HTTPInvoker sends invocations to a data plane, naming the function in the
// Host header and asking for work with the workload protocol's headers.
// Over HTTP/1.1 it keeps as many keep-alive connections as there are
// requests in flight (no per-host bound), so the connection pool is never
// the bottleneck; over h2c the transport multiplexes and opens more
// connections when the server's stream limit is reached.
type HTTPInvoker struct {
	client   *http.Client
	url      string
	workload string
}

// NewHTTPInvoker returns an invoker for cfg.
func NewHTTPInvoker(cfg HTTPConfig) *HTTPInvoker {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0, // no bound
		MaxIdleConnsPerHost: 1 << 16,
		MaxConnsPerHost:     0, // no bound
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	if cfg.H2C {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	return &HTTPInvoker{client: &http.Client{Transport: tr, Timeout: cfg.Timeout}, url: "http://" + cfg.Addr + "/",
		workload: cfg.Workload}
}

// Close closes idle connections.
func (h *HTTPInvoker) Close() { h.client.CloseIdleConnections() }

// Invoke implements Invoker.
func (h *HTTPInvoker) Invoke(ctx context.Context, r Request) Answer {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return Answer{Err: "bad request"}
	}
	req.Host = r.Function
	if h.workload != "" {
		req.Header[workload.HeaderWorkload] = []string{h.workload}
	}
	req.Header[workload.HeaderFunction] = []string{r.Function}
	req.Header[workload.HeaderRequestedCPU] = []string{strconv.FormatInt(r.Exec.Milliseconds(), 10)}
	if r.MemoryMiB > 0 {
		req.Header["requested_memory"] = []string{strconv.Itoa(r.MemoryMiB)}
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return Answer{Err: ErrorKind(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	a := Answer{Status: resp.StatusCode}
	switch v := resp.Header.Get("X-Baton-Cold-Start"); v {
	case "true":
		a.Temp = Cold
	case "false":
		a.Temp = Warm
	}
	if err != nil {
		a.Err = ErrorKind(err)
		return a
	}
	if resp.StatusCode/100 != 2 {
		a.Err = fmt.Sprintf("http %d", resp.StatusCode)
		return a
	}
	// The workload protocol's answer; other functions answer what they
	// like, and their execution time stays unknown.
	var w struct{ ExecutionTime *int64 }
	if json.Unmarshal(body, &w) == nil && w.ExecutionTime != nil {
		a.Exec, a.ExecKnown = time.Duration(*w.ExecutionTime)*time.Microsecond, true
	}
	return a
}

// ErrorKind names the class of a transport error for the summary.
func ErrorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too many open files"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "out of local ports"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	}
	return "transport"
}
