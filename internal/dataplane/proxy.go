package dataplane

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The h2c engine: net/http's server for the connections the HTTP/1.1
// engine (h1.go) found to start with the HTTP/2 preface (h2c with prior
// knowledge, as research load generators speak it), and a lean forwarder
// over a tuned http.Transport. It is the only file that knows net/http;
// everything it decides about a request it asks the router.
// httputil.ReverseProxy is not used: it was measured at a third of the
// direct throughput on this machine (design.md), and HTTP/1.1 is not served
// by net/http at all: its server and transport together reached 0.43.

// Response headers the data plane adds.
const (
	headerColdStart    = "X-Baton-Cold-Start"
	headerServerTiming = "Server-Timing"
)

var (
	coldTrue  = []string{"true"}
	coldFalse = []string{"false"}
	textPlain = []string{"text/plain; charset=utf-8"}
	nosniff   = []string{"nosniff"}
)

const copyBufSize = 32 << 10

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

type httpEngine struct {
	rt        *router
	transport *http.Transport
	maxBody   int64
	active    atomic.Int64 // handlers running, so shutdown can wait for them
}

func newTransport() *http.Transport {
	d := &net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:               nil, // never from the environment
		DialContext:         d.DialContext,
		MaxIdleConns:        0, // no global cap
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		WriteBufferSize:     copyBufSize,
		ReadBufferSize:      copyBufSize,
	}
}

func newServer(h http.Handler, errLog *log.Logger) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           h,
		Protocols:         &p,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
		ErrorLog:          errLog,
	}
	return srv
}

func (e *httpEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.active.Add(1)
	defer e.active.Add(-1)

	fn, name, rest, viaPath := e.rt.resolve(r.Host, r.URL.Path)
	if fn == nil {
		writeError(w, errNotFound(name), nil)
		return
	}
	if r.ContentLength > e.maxBody {
		writeError(w, errTooLarge(fn.name, e.maxBody), nil)
		return
	}
	timeout := fn.state.Load().timeout
	arrived := time.Now()
	var held []byte
	if r.ContentLength > 0 && r.ContentLength <= maxHeldBody {
		// Read a body to be held (see router.go) before the request
		// counts or takes a slot: a client slow to send it keeps no
		// sandbox busy.
		http.NewResponseController(w).SetReadDeadline(arrived.Add(timeout))
		held = make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, held); err != nil {
			switch {
			case r.Context().Err() != nil: // the client went away
			case isTimeout(err):
				writeError(w, errBodyTimeout(fn.name, timeout), nil)
			default:
				writeError(w, &reqError{400, "function " + strconv.Quote(fn.name) + ": reading the request body: " + err.Error() + "\n"}, nil)
			}
			return
		}
	}
	var c call
	e.rt.begin(fn, &c)
	defer e.rt.end(&c)
	c.arrived = arrived // the request's time runs from its head, its body's read included
	ctx, cancel := context.WithDeadline(r.Context(), arrived.Add(timeout))
	defer cancel()
	if err := e.rt.acquire(ctx, &c); err != nil {
		var t timing
		t.queue = time.Since(c.arrived)
		writeError(w, err, &t)
		return
	}
	e.forward(ctx, w, r, &c, rest, viaPath, held)
}

// waitIdle waits up to d for every handler to return and says whether they
// did.
func (e *httpEngine) waitIdle(d time.Duration) bool {
	for deadline := time.Now().Add(d); e.active.Load() > 0; {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// timing is what goes into Server-Timing.
type timing struct {
	queue, create, proxy time.Duration
	cold, proxied        bool
}

// timing is the Server-Timing of a forwarded request: queued from its
// arrival until start, proxied from start until now, and its sandbox's
// creation if this was a cold start.
func (c *call) timing(start, now time.Time) timing {
	t := timing{queue: start.Sub(c.arrived), proxy: now.Sub(start), proxied: true, cold: c.cold}
	if c.cold && c.ep != nil { // a failed reroute holds no endpoint
		t.create = time.Duration(c.ep.createMicros) * time.Microsecond
	}
	return t
}

func (t *timing) header() string {
	var buf [96]byte
	return string(t.appendTo(buf[:0]))
}

// appendTo appends the Server-Timing value.
func (t *timing) appendTo(b []byte) []byte {
	b = append(b, "queue;dur="...)
	b = appendMillis(b, t.queue)
	if t.cold {
		b = append(b, ", create;dur="...)
		b = appendMillis(b, t.create)
	}
	if t.proxied {
		b = append(b, ", proxy;dur="...)
		b = appendMillis(b, t.proxy)
	}
	return b
}

// appendMillis appends d in milliseconds with three decimals.
func appendMillis(b []byte, d time.Duration) []byte {
	us := max(d.Microseconds(), 0)
	b = strconv.AppendInt(b, us/1000, 10)
	f := us % 1000
	return append(b, '.', byte('0'+f/100), byte('0'+f/10%10), byte('0'+f%10))
}

func (t *timing) set(h http.Header) {
	if t.proxied {
		if t.cold {
			h[headerColdStart] = coldTrue
		} else {
			h[headerColdStart] = coldFalse
		}
	}
	if vv := h[headerServerTiming]; len(vv) > 0 { // the function's own, then ours
		h[headerServerTiming] = append(vv[:len(vv):len(vv)], t.header())
	} else {
		h[headerServerTiming] = []string{t.header()}
	}
}

func errTooLarge(name string, limit int64) *reqError {
	return &reqError{413, "function " + strconv.Quote(name) + ": request body larger than " + strconv.FormatInt(limit, 10) + " bytes\n"}
}

func errUpstream(c *call, err error) *reqError {
	if isDialError(err) {
		return &reqError{502, "function " + strconv.Quote(c.fn.name) + ": sandbox " + c.ep.id + " unreachable: " + err.Error() + "\n"}
	}
	return &reqError{502, "function " + strconv.Quote(c.fn.name) + ": sandbox " + c.ep.id + ": " + err.Error() + "\n"}
}

// errBodyTimeout answers a request whose body, to be held before the
// request is routed, did not arrive within the function's timeout.
func errBodyTimeout(name string, d time.Duration) *reqError {
	return &reqError{408, "function " + strconv.Quote(name) + ": the request body did not arrive within " + d.String() + "\n"}
}

func errDidNotAnswer(name string, d time.Duration) *reqError {
	return &reqError{504, "function " + strconv.Quote(name) + " did not answer within " + d.String() + "\n"}
}

// writeError answers a request the data plane failed itself.
func writeError(w http.ResponseWriter, e *reqError, t *timing) {
	if e.status == statusClientClosed {
		return
	}
	h := w.Header()
	h["Content-Type"] = textPlain
	h["X-Content-Type-Options"] = nosniff
	h["Content-Length"] = []string{strconv.Itoa(len(e.body))}
	if t != nil {
		t.set(h)
	}
	w.WriteHeader(e.status)
	io.WriteString(w, e.body)
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// forward sends the request to c.ep and streams the answer back. If the
// sandbox turns out dead before answering anything, the request goes to
// another when nothing was sent (the dial failed) or when the function's
// retry policy allows it and the body is held (held: read whole before
// the request was routed; a body not held is streamed).
func (e *httpEngine) forward(ctx context.Context, w http.ResponseWriter, r *http.Request, c *call, rest string, viaPath bool, held []byte) {
	u := *r.URL
	u.Scheme = "http"
	if viaPath {
		u.Path, u.RawPath = rest, rawRest(r.URL.RawPath)
	}
	removeHopHeaders(r.Header) // the inbound request is ours to change
	var body *bodyReader
	if held == nil && r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		if dl, ok := ctx.Deadline(); ok {
			// The client's body is read within the request's time, like
			// the HTTP/1.1 engine's: a client that stalls does not keep
			// the slot past it.
			http.NewResponseController(w).SetReadDeadline(dl)
		}
		body = &bodyReader{r: r.Body, remaining: e.maxBody}
	}
	resend := body == nil && mayResend(c.retry, isIdempotent(r)) // a streamed body is never sent twice

	start := time.Now()
	var resp *http.Response
	var err error
	var reused bool // the last attempt went over a kept-alive connection
	rctx := ctx
	if resend {
		rctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		})
	}
	for {
		u.Host = c.ep.addr
		out := r.WithContext(rctx) // shallow copy sharing Header
		out.URL, out.Host, out.RequestURI, out.Close = &u, c.fn.name, "", false
		switch {
		case held != nil:
			out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(held)), int64(len(held))
		case body != nil:
			out.Body = body
		default:
			out.Body, out.ContentLength = nil, 0
		}
		reused = false
		resp, err = e.transport.RoundTrip(out)
		if err == nil || ctx.Err() != nil || c.resent >= maxResends || body.exceeded() {
			break
		}
		dial := isDialError(err) && !body.started()
		if !dial && !resend {
			break
		}
		// The sandbox is gone (or dropped the request) and the route does
		// not know yet: send it to another. A refused dial or a fresh
		// connection dropped takes the sandbox out of routing at once; a
		// kept-alive connection that failed may just have been closed by
		// the sandbox, so that only moves this request.
		reroute := e.rt.reroute
		if !dial && reused {
			reroute = e.rt.resend
		}
		if rerr := reroute(ctx, c); rerr != nil {
			t := c.timing(start, time.Now())
			writeError(w, rerr, &t)
			return
		}
	}
	t := c.timing(start, time.Now())
	if err != nil {
		switch {
		case body.exceeded():
			writeError(w, errTooLarge(c.fn.name, e.maxBody), &t)
		case r.Context().Err() != nil:
			// The client went away; nobody to answer.
		case errors.Is(ctx.Err(), context.DeadlineExceeded) || body.stalled():
			writeError(w, errDidNotAnswer(c.fn.name, c.timeout), &t)
		default:
			writeError(w, errUpstream(c, err), &t)
		}
		return
	}
	defer resp.Body.Close()

	h := w.Header()
	for k, vv := range resp.Header {
		if !isHopHeader(k) {
			h[k] = vv
		}
	}
	t.set(h)
	w.WriteHeader(resp.StatusCode)
	if err := copyBody(w, resp.Body, resp.ContentLength < 0); err != nil && !errors.Is(err, errClientWrite) {
		// The answer broke off midway: make the client see a broken
		// response rather than a short one that looks whole.
		panic(http.ErrAbortHandler)
	}
}

var errClientWrite = errors.New("write to client failed")

// copyBody streams src to w with a pooled buffer, flushing after each write
// when the length is unknown (streamed answers).
func copyBody(w http.ResponseWriter, src io.Reader, flush bool) error {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	var fl http.Flusher
	if flush {
		fl, _ = w.(http.Flusher)
	}
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return errClientWrite
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// rawRest strips "/fn/NAME" from an escaped path (RawPath of a /fn/ route);
// "" stays "" (the path needs no special escaping).
func rawRest(raw string) string {
	if raw == "" {
		return ""
	}
	p := strings.TrimPrefix(raw, "/fn/")
	if i := strings.IndexByte(p, '/'); i >= 0 {
		return p[i:]
	}
	return "/"
}

// isIdempotent says whether r may be sent twice: a safe method, or a
// client's idempotency key (the rule the HTTP/1.1 parser applies too).
func isIdempotent(r *http.Request) bool {
	return safeMethod(r.Method) || r.Header.Get("Idempotency-Key") != "" || r.Header.Get("X-Idempotency-Key") != ""
}

// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded either way.
var hopHeaders = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

func removeHopHeaders(h http.Header) {
	if c := h["Connection"]; len(c) > 0 {
		for _, v := range c {
			for _, f := range strings.Split(v, ",") {
				if f = strings.TrimSpace(f); f != "" {
					delete(h, http.CanonicalHeaderKey(f))
				}
			}
		}
	}
	for _, k := range hopHeaders {
		if _, ok := h[k]; ok {
			delete(h, k)
		}
	}
}

// bodyReader passes the request body to the transport, enforcing the size
// limit while streaming. Close does nothing: the server closes the real body,
// and a body the transport closed could not be sent again on a retry.
type bodyReader struct {
	r         io.Reader
	remaining int64 // bytes still allowed
	read      atomic.Bool
	tooLarge  atomic.Bool
	timedOut  atomic.Bool // the client's body did not come within the request's time
}

var errBodyTooLarge = errors.New("request body too large")

func (b *bodyReader) started() bool { return b != nil && b.read.Load() }

// exceeded says whether the body went over the limit (false for none).
func (b *bodyReader) exceeded() bool { return b != nil && b.tooLarge.Load() }

// stalled says whether reading the body hit the request's deadline.
func (b *bodyReader) stalled() bool { return b != nil && b.timedOut.Load() }

func (b *bodyReader) Read(p []byte) (int, error) {
	if !b.read.Load() {
		b.read.Store(true)
	}
	if int64(len(p)) > b.remaining+1 {
		p = p[:b.remaining+1]
	}
	n, err := b.r.Read(p)
	if int64(n) > b.remaining {
		n = int(b.remaining)
		b.remaining = 0
		b.tooLarge.Store(true)
		return n, errBodyTooLarge
	}
	b.remaining -= int64(n)
	if err != nil && isTimeout(err) {
		b.timedOut.Store(true)
	}
	return n, err
}

func (b *bodyReader) Close() error { return nil }
