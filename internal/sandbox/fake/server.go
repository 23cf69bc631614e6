package fake

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/batonfaas/baton/internal/httpwire"
	"github.com/batonfaas/baton/internal/workload"
)

// Server is the in-process function server behind fake sandboxes. It
// answers the workload protocol as machine "fake": over HTTP/1.1 with a
// small loop of its own, and over h2c (prior knowledge) with
// golang.org/x/net/http2. The HTTP/1.1 loop exists for cost: with net/http's
// server, the stub took about a seventh of the CPU of a cold start in the
// 8,000-function burst benchmark, which emulates sandboxes, not servers.
type Server struct {
	ln      net.Listener
	h2      http2.Server
	handler http.Handler // for h2c

	wg     sync.WaitGroup // the accept loop and a goroutine per connection
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	once   sync.Once
}

const (
	machineName = "fake"
	// serverIdleTimeout bounds an idle keep-alive connection and the
	// reading of a request head.
	serverIdleTimeout = 2 * time.Minute
	serverBufSize     = 4 << 10
	maxHeaderLines    = 100
)

// NewServer starts a server on listen.
func NewServer(listen string) (*Server, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("fake function server: %w", err)
	}
	s := &Server{ln: ln, handler: workload.Handler(machineName), conns: map[net.Conn]struct{}{}}
	s.wg.Go(s.accept)
	return s, nil
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, closes its connections and waits for their
// goroutines. A sleeping request ends with its connection; one spinning the
// CPU is waited for (its answer goes nowhere).
func (s *Server) Close() {
	s.once.Do(func() {
		s.ln.Close()
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	s.wg.Wait()
}

// accept runs the accept loop. A connection's goroutine is started while
// the loop holds its own count in s.wg, so Close's Wait cannot miss it.
func (s *Server) accept() {
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second) // out of descriptors, say
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			s.serve(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		})
	}
}

// serve runs one connection.
func (s *Server) serve(c net.Conn) {
	br := bufio.NewReaderSize(c, serverBufSize)
	c.SetReadDeadline(time.Now().Add(serverIdleTimeout))
	if h2, _ := httpwire.StartsH2(br); h2 {
		c.SetReadDeadline(time.Time{})
		s.serveH2(&peekedConn{Conn: c, r: br})
		return
	}
	bw := bufio.NewWriterSize(c, serverBufSize)
	var req request
	var body []byte
	for {
		c.SetReadDeadline(time.Now().Add(serverIdleTimeout))
		if err := req.read(br); err != nil {
			refuse(c, bw, err)
			return
		}
		if req.expect100 && (req.chunked || req.contentLength > 0) {
			bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if bw.Flush() != nil {
				return
			}
		}
		if err := req.discardBody(br); err != nil {
			refuse(c, bw, err)
			return
		}
		status, ctype := http.StatusOK, "application/json"
		switch {
		case req.health:
			ctype, body = "text/plain; charset=utf-8", append(body[:0], "ok"...)
		default:
			status, body = s.run(c, br, &req, body[:0])
			if status != http.StatusOK {
				ctype, body = "text/plain; charset=utf-8", append(body, '\n')
			}
		}
		writeAnswer(bw, status, ctype, body, req.head, !req.keep)
		if bw.Flush() != nil || !req.keep {
			return
		}
	}
}

// serveH2 runs an h2c connection. ServeConn returns when the connection
// ends without waiting for the handlers it started (their requests are
// cancelled then): each holds a read lock on running, which serveH2 waits
// for with the write lock; a handler that only starts after that answers
// nothing, for its stream is gone.
func (s *Server) serveH2(c net.Conn) {
	var running sync.RWMutex
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !running.TryRLock() {
			return
		}
		defer running.RUnlock()
		s.handler.ServeHTTP(w, r)
	})
	s.h2.ServeConn(c, &http2.ServeConnOpts{Handler: h})
	running.Lock()
}

// run answers a workload request. A sleep ends early if the client goes
// away, as with net/http (a background read watches the connection).
func (s *Server) run(c net.Conn, br *bufio.Reader, req *request, dst []byte) (int, []byte) {
	ctx := context.Background()
	kind, cpu := string(req.workload), string(req.cpu)
	if workload.Sleeps(kind, cpu) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		stop := watchGone(c, br, cancel)
		defer stop()
	}
	return workload.Run(ctx, dst, machineName, kind, cpu, string(req.function))
}

// watchGone reads ahead on c in the background and calls gone if the
// client closes it or it fails (or when stop wakes the read: gone must be
// harmless once the request is over, as a context's cancel is). stop ends
// the watch and leaves c and br ready for the next request (bytes read
// ahead stay in br).
func watchGone(c net.Conn, br *bufio.Reader, gone func()) (stop func()) {
	c.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := br.Peek(1); err != nil {
			gone()
		}
	}()
	return func() {
		c.SetReadDeadline(time.Unix(1, 0)) // wakes the read ahead
		<-done
	}
}

// refuse answers a malformed request (err a *badRequest; other errors,
// from the connection, get no answer) before the connection closes.
func refuse(c net.Conn, bw *bufio.Writer, err error) {
	var bad *badRequest
	if errors.As(err, &bad) {
		writeAnswer(bw, bad.status, "text/plain; charset=utf-8", []byte(bad.msg+"\n"), false, true)
		if bw.Flush() == nil {
			httpwire.LingerClose(c, 500*time.Millisecond, 256<<10)
		}
	}
}

// peekedConn reads through the reader that peeked at the connection.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// request is what the HTTP/1.1 loop keeps of a request head.
type request struct {
	head, health, keep, chunked, expect100 bool
	contentLength                          int64
	workload, cpu, function                []byte // copies, reused
}

// badRequest is a request the loop answers with status and closes on.
type badRequest struct {
	status int
	msg    string
}

func (b *badRequest) Error() string { return b.msg }

func bad(status int, msg string) error { return &badRequest{status, msg} }

// read reads and parses a request head.
func (r *request) read(br *bufio.Reader) error {
	r.head, r.health, r.keep, r.chunked, r.expect100 = false, false, false, false, false
	r.contentLength = 0
	r.workload, r.cpu, r.function = r.workload[:0], r.cpu[:0], r.function[:0]
	var line []byte
	var err error
	for blank := 0; ; blank++ { // stray line ends before a request line are allowed
		if line, err = readLine(br); err != nil {
			return err
		}
		if len(line) > 0 {
			break
		}
		if blank == 4 {
			return bad(http.StatusBadRequest, "malformed request line")
		}
	}
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	target, version, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || len(method) == 0 || len(target) == 0 {
		return bad(http.StatusBadRequest, "malformed request line")
	}
	var http10 bool
	switch string(version) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		http10 = true
	default:
		return bad(http.StatusHTTPVersionNotSupported, "unsupported protocol version "+strconv.Quote(string(version)))
	}
	r.head = string(method) == http.MethodHead
	path, _, _ := bytes.Cut(target, []byte("?"))
	r.health = string(path) == "/health" && (r.head || string(method) == http.MethodGet)
	closeConn, keepAlive, haveLength := false, false, false
	for n := 0; ; n++ {
		if line, err = readLine(br); err != nil {
			return err
		}
		if len(line) == 0 {
			break
		}
		if n == maxHeaderLines {
			return bad(http.StatusRequestHeaderFieldsTooLarge, "too many header fields")
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			return bad(http.StatusBadRequest, "malformed header field")
		}
		value = bytes.Trim(value, " \t")
		switch {
		case httpwire.EqualFold(name, "content-length"):
			v, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || v < 0 || haveLength && v != r.contentLength {
				return bad(http.StatusBadRequest, "bad Content-Length")
			}
			r.contentLength, haveLength = v, true
		case httpwire.EqualFold(name, "transfer-encoding"):
			if !httpwire.EqualFold(value, "chunked") {
				return bad(http.StatusNotImplemented, "unsupported Transfer-Encoding "+strconv.Quote(string(value)))
			}
			r.chunked = true
		case httpwire.EqualFold(name, "connection"):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = bytes.Trim(tok, " \t")
				closeConn = closeConn || httpwire.EqualFold(tok, "close")
				keepAlive = keepAlive || httpwire.EqualFold(tok, "keep-alive")
			}
		case httpwire.EqualFold(name, "expect"):
			r.expect100 = httpwire.EqualFold(value, "100-continue")
		case httpwire.EqualFold(name, workload.HeaderWorkload):
			r.workload = appendFirst(r.workload, value)
		case httpwire.EqualFold(name, workload.HeaderRequestedCPU):
			r.cpu = appendFirst(r.cpu, value)
		case httpwire.EqualFold(name, workload.HeaderFunction):
			r.function = appendFirst(r.function, value)
		}
	}
	if r.chunked {
		r.contentLength = 0 // Transfer-Encoding wins (RFC 9112 6.3)
	}
	r.keep = !closeConn && (!http10 || keepAlive)
	return nil
}

// appendFirst keeps the first value of a repeated field (net/http's
// Header.Get).
func appendFirst(dst, v []byte) []byte {
	if len(dst) > 0 {
		return dst
	}
	return append(dst, v...)
}

// discardBody reads the request body and drops it.
func (r *request) discardBody(br *bufio.Reader) error {
	if !r.chunked {
		_, err := br.Discard(int(r.contentLength))
		return err
	}
	for {
		line, err := readLine(br)
		if err != nil {
			return err
		}
		size, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseInt(string(bytes.Trim(size, " \t")), 16, 64)
		if err != nil || n < 0 {
			return bad(http.StatusBadRequest, "malformed chunk size")
		}
		if n == 0 {
			for { // trailers, up to the empty line
				if line, err = readLine(br); err != nil || len(line) == 0 {
					return err
				}
			}
		}
		if _, err := br.Discard(int(n)); err != nil {
			return err
		}
		if line, err = readLine(br); err != nil || len(line) != 0 {
			return bad(http.StatusBadRequest, "malformed chunk")
		}
	}
}

// readLine returns the next line without its line end; it is valid until
// the next read.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, bad(http.StatusRequestHeaderFieldsTooLarge, "header line longer than 4 KiB")
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// writeAnswer writes an answer with a Content-Length (and no body for a
// HEAD request).
func writeAnswer(bw *bufio.Writer, status int, ctype string, body []byte, head, closing bool) {
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(status), 10))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(status))
	bw.WriteString("\r\nContent-Type: ")
	bw.WriteString(ctype)
	bw.WriteString("\r\nContent-Length: ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(body)), 10))
	if closing {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	if !head {
		bw.Write(body)
	}
}
