package dataplane

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// One request through the HTTP/1.1 engine (see h1.go).

// maxRetries bounds sending a request again after sandbox connections that
// turned out closed when reused.
const maxRetries = 8

// handle serves one request and says whether the connection stays open.
func (hc *h1Conn) handle() bool {
	hc.e.noteStart()
	hc.pend, hc.bodyOff, hc.unread, hc.linger, hc.streamed = 0, 0, false, false, false
	keep := hc.request()
	if hc.held != nil {
		heldPool.Put(hc.held)
		hc.held = nil
	}
	if hc.pend > 0 { // what is left of the request in the reader
		hc.br.Discard(hc.pend)
		hc.pend = 0
	}
	// The answer was written to the buffer, and the slot released: the
	// client sees the end of its answer after the slot is free again.
	if hc.bw.Buffered() > 0 && hc.bw.Flush() != nil {
		keep = false
	}
	hc.e.active.Add(-1)
	return keep
}

func (hc *h1Conn) request() bool {
	e := hc.e
	req := &hc.req

	head, inBuf, err := readHead(hc.br, &hc.big, &req.fields)
	if err != nil {
		if pe, ok := err.(*protoError); ok {
			hc.replyProto(pe)
		}
		return false
	}
	req.head, req.inBuf = head, inBuf
	if inBuf {
		hc.pend, hc.bodyOff = len(head), len(head)
	}
	if pe := req.parse(); pe != nil {
		hc.replyProto(pe)
		return false
	}
	hc.unread = req.hasBody()

	fn, name, rest, viaPath := e.rt.resolve(b2s(req.host), b2s(req.path))
	if fn == nil {
		return hc.replyEarly(errNotFound(name), nil)
	}
	if req.contentLength > e.maxBody {
		return hc.replyEarly(errTooLarge(fn.name, e.maxBody), nil)
	}
	var arrived time.Time
	if hc.mayHold() {
		// Read before the request counts or takes a slot: a client slow
		// to send its body keeps no sandbox busy (see router.go).
		arrived = time.Now()
		timeout := fn.state.Load().timeout
		if err := hc.holdBody(arrived.Add(timeout).UnixNano(), tolerance(timeout)); err != nil {
			return hc.replyHoldFailed(fn.name, timeout, err)
		}
	}
	c := &hc.call
	*c = call{}
	e.rt.begin(fn, c)
	if !arrived.IsZero() {
		c.arrived = arrived // the request's time runs from its head, its body's read included
	}
	hc.since.Store(c.arrived.UnixNano())
	start := c.arrived
	if !e.rt.acquireNow(c) {
		if rerr := hc.wait(c); rerr != nil {
			t := timing{queue: time.Since(c.arrived)}
			keep := hc.replyEarly(rerr, &t)
			hc.end(c, time.Now())
			return keep
		}
		start = time.Now()
	}
	keep, now := hc.forward(c, start, rest, viaPath)
	hc.end(c, now)
	return keep
}

// end finishes the request in the router (the slot goes back).
func (hc *h1Conn) end(c *call, now time.Time) {
	hc.e.rt.endAt(c, now)
	hc.since.Store(0)
	hc.now = now.UnixNano()
}

// wait queues for a slot, bounded by the function's timeout and by the
// client staying (the sweeper cancels).
func (hc *h1Conn) wait(c *call) *reqError { return hc.waitFor(c, hc.e.rt.acquire) }

// reroute moves c off its dead endpoint to another (see router.reroute),
// bounded like wait.
func (hc *h1Conn) reroute(c *call) *reqError {
	hc.e.up.drop(c.ep.addr)
	return hc.waitFor(c, hc.e.rt.reroute)
}

func (hc *h1Conn) waitFor(c *call, acquire func(context.Context, *call) *reqError) *reqError {
	ctx, cancel := context.WithDeadline(context.Background(), c.arrived.Add(c.timeout))
	defer cancel()
	hc.cancel.Store(&cancel)
	if hc.gone.Load() {
		cancel()
	}
	err := acquire(ctx, c)
	hc.cancel.Store(nil)
	return err
}

// bodyBuffered says whether the whole request body (with Content-Length)
// is in the reader already, after the head (if the head is there).
func (hc *h1Conn) bodyBuffered() bool {
	r := &hc.req
	return !hc.streamed && !r.chunked && r.contentLength >= 0 && int64(hc.br.Buffered()-hc.bodyOff) >= r.contentLength
}

// resendable says whether the request may be sent again on another
// connection: nothing of it is lost (no body, or all of it still
// buffered or held), and the function's retry policy allows it.
func (hc *h1Conn) resendable(c *call) bool {
	return mayResend(c.retry, hc.req.idempotent) && !hc.streamed &&
		(!hc.req.hasBody() || hc.held != nil || hc.bodyBuffered())
}

// mayHold says whether the request's body is to be read whole before the
// request is routed: it has a length of at most maxHeldBody (the h2c engine
// holds the same bodies) and is not all in the reader already.
func (hc *h1Conn) mayHold() bool {
	r := &hc.req
	return r.hasBody() && !r.chunked && r.contentLength <= maxHeldBody && !hc.bodyBuffered()
}

// sendContinue tells a client that waits for it (Expect: 100-continue) to
// send its body.
func (hc *h1Conn) sendContinue(deadline, tol int64) error {
	if !hc.req.expect100 {
		return nil
	}
	setWriteDeadline(hc.c, &hc.wdl, deadline, tol)
	hc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	return hc.bw.Flush()
}

// holdBody reads the request body whole, by deadline: into the reader
// when it fits there with the head (it is then bodyBuffered), else into
// hc.held, from heldPool: what is in the reader after the head, then the
// rest straight from the connection (the head stays in the reader, where
// the request's fields point). The client gets its 100 Continue first if
// it waits for one.
func (hc *h1Conn) holdBody(deadline, tol int64) error {
	if err := hc.sendContinue(deadline, tol); err != nil {
		return err
	}
	if err := setReadDeadline(hc.c, &hc.rdl, deadline, tol); err != nil {
		return err
	}
	n := int(hc.req.contentLength)
	if hc.bodyOff+n <= hc.br.Size() {
		_, err := hc.br.Peek(hc.bodyOff + n)
		return err
	}
	hp := heldPool.Get().(*[]byte)
	hc.held = hp
	b := (*hp)[:n]
	in, _ := hc.br.Peek(hc.br.Buffered())
	got := copy(b, in[hc.bodyOff:]) // less than n: the body is not all there
	if _, err := io.ReadFull(hc.c, b[got:]); err != nil {
		return err
	}
	*hp = b
	hc.pend = len(in) // the head and the body's start, dropped after the answer
	hc.unread = false
	return nil
}

// forward sends the request to the endpoint c holds and relays the answer.
// It says whether the connection stays open, and when it ended.
func (hc *h1Conn) forward(c *call, start time.Time, rest string, viaPath bool) (bool, time.Time) {
	e := hc.e
	deadline := c.arrived.UnixNano() + int64(c.timeout)
	tol := tolerance(c.timeout)
	var uc *upConn
	var err error
	for attempt := 0; ; attempt++ {
		uc, err = e.up.get(c.ep.addr, start.UnixNano(), deadline)
		if err != nil {
			if isDialError(err) && c.resent < maxResends && time.Now().UnixNano() < deadline {
				// Nothing was sent: the sandbox is gone and the route
				// does not know yet. Send it to another.
				if rerr := hc.reroute(c); rerr != nil {
					return hc.replyRerouteFailed(c, start, rerr), time.Now()
				}
				continue
			}
			return hc.replyFailed(c, start, err, deadline), time.Now()
		}
		if !hc.own(uc) {
			uc.discard()
			return false, time.Now()
		}
		err = hc.send(uc, c, rest, viaPath, deadline, tol)
		if err == nil {
			if uc.br.Buffered() == 0 {
				e.spin(uc.poll, 1) // the answer takes a while
			}
			err = readResponseHead(uc, deadline, tol)
		}
		if err == nil {
			break
		}
		nothingBack := uc.br.Buffered() == 0
		hc.disown(uc)
		uc.discard()
		if p := hc.pump; p != nil {
			stopped := hc.stopPump(p, uc)
			ours := stopped && isTimeout(p.rerr) // the pump's read, woken by stopPump
			if p.rerr != nil && !ours {          // the client's body failed: that says it all
				return hc.replyBodyFailed(c, start, p.rerr), time.Now()
			}
			hc.unread = stopped || p.werr != nil
		}
		if hc.gone.Load() {
			return false, time.Now()
		}
		if nothingBack && !isTimeout(err) && hc.resendable(c) {
			switch {
			case uc.reused && attempt < maxRetries:
				continue // most likely a connection the sandbox had closed
			case !uc.reused && c.resent < maxResends:
				// A fresh connection dropped: the sandbox died under the
				// request. The retry policy allows sending it elsewhere.
				if rerr := hc.reroute(c); rerr != nil {
					return hc.replyRerouteFailed(c, start, rerr), time.Now()
				}
				continue
			}
		}
		return hc.replyFailed(c, start, err, deadline), time.Now()
	}

	now := time.Now()
	t := c.timing(start, now)
	upOK, keep := hc.relayResponse(uc, &t, now, deadline, tol)
	if p := hc.pump; p != nil {
		if hc.stopPump(p, uc) { // the function answered without reading the whole body
			upOK = false
		}
		if p.rerr != nil || p.werr != nil {
			upOK, keep = false, false
		} else {
			hc.unread = false
		}
	}
	end := time.Now()
	if hc.disown(uc) && upOK {
		uc.put(end.UnixNano())
	} else {
		uc.discard()
	}
	return keep && !hc.unread, end
}

var aLongTimeAgo = time.Unix(1, 0)

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// send writes the request head to the sandbox, with the body when it has
// arrived whole; a body still arriving is sent by a pump.
func (hc *h1Conn) send(uc *upConn, c *call, rest string, viaPath bool, deadline, tol int64) error {
	req := &hc.req
	bw := uc.bw
	writeRequestHead(bw, req, c.fn.name, rest, viaPath)
	if err := setWriteDeadline(uc.c, &uc.wdl, deadline, tol); err != nil {
		return err
	}
	switch {
	case !req.hasBody():
	case hc.held != nil:
		bw.Write(*hc.held)
	case hc.bodyBuffered():
		// Left in the reader until the answer comes, so that it can be
		// sent again.
		b, _ := hc.br.Peek(hc.bodyOff + int(req.contentLength))
		bw.Write(b[hc.bodyOff:])
		hc.pend = hc.bodyOff + int(req.contentLength)
		hc.unread = false
	default:
		// The head is written: let go of it and stream the body.
		hc.br.Discard(hc.pend)
		hc.pend, hc.bodyOff = 0, 0
		// The pump reads the client's body under the request's deadline;
		// set here, so that an abort (a deadline in the past) cannot be
		// overwritten by a pump starting late.
		if err := setReadDeadline(hc.c, &hc.rdl, deadline, tol); err != nil {
			return err
		}
		if err := hc.sendContinue(deadline, tol); err != nil {
			return err
		}
		p := &pump{done: make(chan struct{})}
		hc.pump, hc.streamed = p, true
		hc.e.wg.Go(func() { hc.pumpBody(p, uc) })
		return nil
	}
	return bw.Flush()
}

// stopPump ends the body pump p: if it is still sending (the sandbox
// answered early, or dropped the connection, while the client's body was
// still coming), it closes the sandbox connection and wakes the pump's read
// of the client (which then fails with a timeout), and says so; the body is
// then unread.
func (hc *h1Conn) stopPump(p *pump, uc *upConn) (stopped bool) {
	hc.pump = nil
	select {
	case <-p.done:
		return false
	default:
	}
	uc.c.Close()
	hc.c.SetReadDeadline(aLongTimeAgo)
	<-p.done
	hc.rdl = 0
	return true
}

// pump sends a request body to the sandbox while the connection's goroutine
// waits for the answer.
type pump struct {
	done chan struct{}
	rerr error // reading the client's body failed
	werr error // writing to the sandbox failed
}

func (hc *h1Conn) pumpBody(p *pump, uc *upConn) {
	defer close(p.done)
	req := &hc.req
	if req.chunked {
		p.rerr, p.werr = relayChunked(uc.bw, hc.br, true, hc.e.maxBody)
	} else {
		p.rerr, p.werr = relay(uc.bw, hc.br, req.contentLength)
	}
	if p.rerr == nil && p.werr == nil {
		p.werr = uc.bw.Flush()
	}
	if p.rerr != nil {
		uc.c.Close() // the sandbox got part of a request: end the wait for its answer
	}
}

// writeRequestHead writes the head to forward: the request line with the
// path for the function, Host: the function's name, the client's fields but
// the hop-by-hop ones, and our framing.
func writeRequestHead(bw *bufio.Writer, req *request, fn, rest string, viaPath bool) {
	bw.Write(req.method)
	bw.WriteByte(' ')
	if viaPath {
		bw.WriteString(rest)
		bw.Write(req.query)
	} else {
		if req.slash {
			bw.WriteByte('/')
		}
		bw.Write(req.target)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(fn)
	bw.WriteString("\r\n")
	writeFields(bw, req.head, req.fields)
	switch {
	case req.chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	case req.contentLength >= 0:
		b := scratch(bw, 48)
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, req.contentLength, 10)
		b = append(b, "\r\n\r\n"...)
		bw.Write(b)
	default:
		bw.WriteString("\r\n")
	}
}

// writeFields writes the fields not dropped, as they came: runs of lines
// in one write.
func writeFields(bw *bufio.Writer, head []byte, fields []field) {
	run := -1 // start of the current run of lines
	var runEnd int32
	for i := range fields {
		f := &fields[i]
		if !f.drop && f.crlf {
			if run < 0 {
				run = int(f.line)
			}
			runEnd = f.end
			continue
		}
		if run >= 0 {
			bw.Write(head[run:runEnd])
			run = -1
		}
		if !f.drop { // a bare LF line: end it properly
			bw.Write(f.name(head))
			bw.WriteString(": ")
			bw.Write(f.value(head))
			bw.WriteString("\r\n")
		}
	}
	if run >= 0 {
		bw.Write(head[run:runEnd])
	}
}

// readResponseHead reads the sandbox's answer head, skipping informational
// (1xx) answers.
func readResponseHead(uc *upConn, deadline, tol int64) error {
	if err := setReadDeadline(uc.c, &uc.rdl, deadline, tol); err != nil {
		return err
	}
	resp := &uc.resp
	for i := 0; ; i++ {
		head, inBuf, err := readHead(uc.br, &uc.big, &resp.fields)
		if err != nil {
			if pe, ok := err.(*protoError); ok {
				return errors.New("malformed response: " + pe.msg)
			}
			return err
		}
		resp.head, resp.inBuf = head, inBuf
		if err := resp.parse(); err != nil {
			return errors.New("malformed response: " + err.Error())
		}
		if resp.status >= 200 {
			return nil
		}
		if resp.status == 101 || i == 8 {
			return errors.New("unexpected informational response " + strconv.Itoa(resp.status))
		}
		if inBuf {
			uc.br.Discard(len(head))
		}
	}
}

// Framing of the answer towards the client.
const (
	frameNone    = iota // no body (HEAD, 204, 304)
	frameLength         // Content-Length
	frameChunked        // chunked
	frameClose          // until the connection closes (HTTP/1.0 clients)
)

// relayResponse writes the answer's head and relays its body, leaving the
// end of it in the buffer for the caller to flush. upOK says
// whether the sandbox connection can serve another request, keep whether
// the client's can.
func (hc *h1Conn) relayResponse(uc *upConn, t *timing, now time.Time, deadline, tol int64) (upOK, keep bool) {
	req, resp := &hc.req, &uc.resp
	bw := hc.bw
	noBody := req.isHead || resp.status == 204 || resp.status == 304
	var frame int
	switch {
	case noBody:
		frame = frameNone
	case resp.contentLength >= 0:
		frame = frameLength
	case req.minor >= 1:
		frame = frameChunked
	default:
		frame = frameClose
	}
	upOK = !resp.close && (noBody || resp.chunked || resp.contentLength >= 0)
	// With a body still being sent, whether the connection can stay is
	// known only at the end (forward closes it then if need be).
	keep = !req.close && frame != frameClose && !hc.e.shutting.Load() && (!hc.unread || hc.pump != nil)

	if err := setWriteDeadline(hc.c, &hc.wdl, deadline, tol); err != nil {
		return false, false
	}
	bw.WriteString("HTTP/1.1 ")
	bw.Write(resp.statusRest)
	if len(resp.statusRest) == 3 { // no reason phrase: the space stays
		bw.WriteByte(' ')
	}
	bw.WriteString("\r\n")
	writeFields(bw, resp.head, resp.fields)
	b := scratch(bw, 256)
	switch {
	case frame == frameLength || frame == frameNone && resp.contentLength >= 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, resp.contentLength, 10)
		b = append(b, "\r\n"...)
	case frame == frameChunked:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	b = t.appendHeaders(b)
	if !resp.hasDate {
		b = appendDate(b, now)
	}
	switch {
	case !keep:
		b = append(b, "Connection: close\r\n"...)
	case req.minor == 0:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	b = append(b, "\r\n"...)
	bw.Write(b)
	if resp.inBuf {
		uc.br.Discard(len(resp.head))
	}

	var rerr, werr error
	switch {
	case noBody:
	case resp.chunked:
		rerr, werr = relayChunked(bw, uc.br, frame == frameChunked, -1)
	case resp.contentLength >= 0:
		rerr, werr = relay(bw, uc.br, resp.contentLength)
	default:
		rerr, werr = relayToEOF(bw, uc.br, frame == frameChunked)
	}
	if rerr != nil || werr != nil {
		// The answer broke off midway (the client's connection is closed
		// rather than given a short body that looks whole: what is
		// buffered is dropped), or the client went away before it was all
		// read.
		bw.Reset(hc.c)
		return false, false
	}
	return upOK, keep // the caller flushes after releasing the slot
}

// replyFailed answers a request whose forwarding failed before an answer
// came back.
func (hc *h1Conn) replyFailed(c *call, start time.Time, err error, deadline int64) bool {
	if hc.gone.Load() {
		return false
	}
	t := c.timing(start, time.Now())
	switch {
	case time.Now().UnixNano() >= deadline:
		return hc.replyEarly(errDidNotAnswer(c.fn.name, c.timeout), &t)
	case isDialError(err): // including a dial timeout: unreachable
		return hc.replyEarly(errUpstream(c, err), &t)
	case isTimeout(err):
		return hc.replyEarly(errDidNotAnswer(c.fn.name, c.timeout), &t)
	}
	return hc.replyEarly(errUpstream(c, err), &t)
}

// replyRerouteFailed answers a request whose sandbox died and that found
// no other in time (or whose function went away meanwhile).
func (hc *h1Conn) replyRerouteFailed(c *call, start time.Time, rerr *reqError) bool {
	if hc.gone.Load() {
		return false
	}
	t := c.timing(start, time.Now())
	return hc.replyEarly(rerr, &t)
}

// replyBodyFailed answers a request whose body could not be read or was
// too large.
func (hc *h1Conn) replyBodyFailed(c *call, start time.Time, err error) bool {
	hc.unread = true
	t := c.timing(start, time.Now())
	var pe *protoError
	switch {
	case errors.Is(err, errBodyTooLarge):
		hc.replyEarly(errTooLarge(c.fn.name, hc.e.maxBody), &t)
	case errors.As(err, &pe):
		hc.replyProto(pe)
	case isTimeout(err):
		hc.replyEarly(errDidNotAnswer(c.fn.name, c.timeout), &t)
	}
	// Else the client went away: nobody to answer.
	return false
}

// replyHoldFailed answers a request whose body to be read before routing
// (mayHold) did not arrive whole within the function's timeout: 408, the
// connection closed.
// A client that went away gets nothing.
func (hc *h1Conn) replyHoldFailed(name string, timeout time.Duration, err error) bool {
	hc.unread = true
	if isTimeout(err) {
		hc.replyEarly(errBodyTimeout(name, timeout), nil)
	}
	return false
}

// replyEarly answers with an error of the data plane's own, before or
// instead of forwarding. The connection stays open only if the request's
// body is out of the way.
func (hc *h1Conn) replyEarly(e *reqError, t *timing) bool {
	if e.status == statusClientClosed || hc.gone.Load() {
		return false
	}
	if hc.unread && hc.bodyBuffered() {
		hc.pend = hc.bodyOff + int(hc.req.contentLength) // skip it
		hc.unread = false
	}
	keep := !hc.unread && !hc.req.close && !hc.e.shutting.Load()
	hc.linger = hc.unread
	hc.writeError(e.status, e.body, t, keep, hc.req.minor == 0)
	return keep
}

// replyProto answers a request that could not be parsed, and closes.
func (hc *h1Conn) replyProto(pe *protoError) {
	hc.linger = true
	hc.writeError(pe.status, pe.msg+"\n", nil, false, false)
}

func (hc *h1Conn) writeError(status int, body string, t *timing, keep, http10 bool) {
	now := time.Now()
	if setWriteDeadline(hc.c, &hc.wdl, now.UnixNano()+int64(errorWriteTimeout), int64(time.Second)) != nil {
		return
	}
	bw := hc.bw
	b := scratch(bw, 512)
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	if t != nil {
		b = t.appendHeaders(b)
	}
	b = appendDate(b, now)
	switch {
	case !keep:
		b = append(b, "Connection: close\r\n"...)
	case http10:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	b = append(b, "\r\n"...)
	bw.Write(b)
	bw.WriteString(body) // flushed by handle, after the slot is released
}

// appendHeaders appends X-Baton-Cold-Start (for a forwarded request) and
// Server-Timing header lines.
func (t *timing) appendHeaders(b []byte) []byte {
	if t.proxied {
		if t.cold {
			b = append(b, headerColdStart+": true\r\n"...)
		} else {
			b = append(b, headerColdStart+": false\r\n"...)
		}
	}
	b = append(b, headerServerTiming+": "...)
	b = t.appendTo(b)
	return append(b, "\r\n"...)
}

type dateLine struct {
	sec  int64
	line []byte // "Date: ...\r\n"
}

var dateCache atomic.Pointer[dateLine]

// appendDate appends a Date header line for now; the line is formatted
// once a second.
func appendDate(b []byte, now time.Time) []byte {
	sec := now.Unix()
	d := dateCache.Load()
	if d == nil || d.sec != sec {
		l := append(make([]byte, 0, 40), "Date: "...)
		l = now.UTC().AppendFormat(l, http.TimeFormat)
		d = &dateLine{sec: sec, line: append(l, "\r\n"...)}
		dateCache.Store(d)
	}
	return append(b, d.line...)
}
