package dataplane

import (
	"bufio"
	"bytes"
	"errors"
	"github.com/batonfaas/baton/internal/httpwire"
)

// HTTP/1.x message heads, parsed just enough to route and frame: the start
// line, the fields that decide framing and connection handling, and the
// position of every field line so the others are forwarded as they came.
// Parsing works on bytes in place (the reader's buffer, or a copy when a
// head is larger than it) and allocates nothing.

// maxHeadBytes bounds a message head (net/http's DefaultMaxHeaderBytes).
const maxHeadBytes = 1 << 20

// field is one header field line of a head: the name is head[line:colon],
// the value (without surrounding whitespace) head[vs:ve], the whole line
// head[line:end] including its line terminator.
type field struct {
	line, colon, vs, ve, end int32
	id                       fieldID
	drop                     bool // not forwarded
	crlf                     bool // the line ends in CRLF (not a bare LF)
}

// fieldID names the fields the engine cares about.
type fieldID uint8

const (
	fOther fieldID = iota
	fHost
	fContentLength
	fTransferEncoding
	fConnection
	fExpect
	fHop // another hop-by-hop field: never forwarded
	fIdempotencyKey
	fColdStart // X-Baton-Cold-Start from a function: replaced by ours
	fDate
)

// protoError is a malformed or unsupported message: the status to answer
// (for requests) and why.
type protoError struct {
	status int
	msg    string
}

func (e *protoError) Error() string { return e.msg }

var (
	errHeadTooLarge     = &protoError{431, "request header too large"}
	errBadStartLine     = &protoError{400, "malformed request line"}
	errBadVersion       = &protoError{505, "HTTP version not supported"}
	errBadField         = &protoError{400, "malformed header field"}
	errObsFold          = &protoError{400, "obsolete line folding in header"}
	errFieldValue       = &protoError{400, "invalid character in header field value"}
	errBadLength        = &protoError{400, "invalid Content-Length"}
	errLengthAndChunked = &protoError{400, "both Content-Length and Transfer-Encoding"}
	errBadCoding        = &protoError{501, "unsupported Transfer-Encoding"}
	errCodingHTTP10     = &protoError{400, "Transfer-Encoding in an HTTP/1.0 request"}
	errNoHost           = &protoError{400, "missing Host header"}
	errManyHosts        = &protoError{400, "more than one Host header"}
	errConnect          = &protoError{501, "CONNECT not supported"}
	errExpectation      = &protoError{417, "unsupported expectation"}
	errBadChunk         = &protoError{400, "malformed chunked body"}
	errBadStatusLine    = errors.New("malformed status line")
)

// tchar marks the bytes allowed in a token (RFC 9110 §5.6.2).
var tchar = [256]bool{}

func init() {
	for c := '0'; c <= '9'; c++ {
		tchar[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		tchar[c] = true
		tchar[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		tchar[c] = true
	}
}

func idOf(name []byte) fieldID {
	switch len(name) {
	case 2:
		if httpwire.EqualFold(name, "te") {
			return fHop
		}
	case 4:
		switch {
		case httpwire.EqualFold(name, "host"):
			return fHost
		case httpwire.EqualFold(name, "date"):
			return fDate
		}
	case 6:
		if httpwire.EqualFold(name, "expect") {
			return fExpect
		}
	case 7:
		if httpwire.EqualFold(name, "trailer") || httpwire.EqualFold(name, "upgrade") {
			return fHop
		}
	case 10:
		switch {
		case httpwire.EqualFold(name, "connection"):
			return fConnection
		case httpwire.EqualFold(name, "keep-alive"):
			return fHop
		}
	case 14:
		if httpwire.EqualFold(name, "content-length") {
			return fContentLength
		}
	case 15:
		if httpwire.EqualFold(name, "idempotency-key") {
			return fIdempotencyKey
		}
	case 16:
		if httpwire.EqualFold(name, "proxy-connection") {
			return fHop
		}
	case 17:
		switch {
		case httpwire.EqualFold(name, "transfer-encoding"):
			return fTransferEncoding
		case httpwire.EqualFold(name, "x-idempotency-key"):
			return fIdempotencyKey
		}
	case 18:
		switch {
		case httpwire.EqualFold(name, "proxy-authenticate"):
			return fHop
		case httpwire.EqualFold(name, "x-baton-cold-start"):
			return fColdStart
		}
	case 19:
		if httpwire.EqualFold(name, "proxy-authorization") {
			return fHop
		}
	}
	return fOther
}

// parseFields parses the field lines of b from off up to the empty line that
// ends the head. It returns the length of the head, or 0 if b does not hold
// all of it yet.
func parseFields(b []byte, off int, fields []field) ([]field, int, error) {
	for {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return fields, 0, nil
		}
		end := off + i + 1
		le := off + i
		crlf := le > off && b[le-1] == '\r'
		if crlf {
			le--
		}
		if le == off {
			return fields, end, nil
		}
		line := b[off:le]
		if line[0] == ' ' || line[0] == '\t' {
			return fields, 0, errObsFold
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return fields, 0, errBadField
		}
		name := line[:colon]
		for _, c := range name {
			if !tchar[c] {
				return fields, 0, errBadField
			}
		}
		vs, ve := colon+1, len(line)
		for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
			vs++
		}
		for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
			ve--
		}
		if v := line[vs:ve]; bytes.IndexByte(v, '\r') >= 0 || bytes.IndexByte(v, 0) >= 0 {
			return fields, 0, errFieldValue
		}
		fields = append(fields, field{
			line: int32(off), colon: int32(off + colon), vs: int32(off + vs), ve: int32(off + ve), end: int32(end),
			id: idOf(name), crlf: crlf,
		})
		off = end
	}
}

func (f *field) name(head []byte) []byte  { return head[f.line:f.colon] }
func (f *field) value(head []byte) []byte { return head[f.vs:f.ve] }

// readHead returns the next message head from br: in place in br's buffer
// when it fits (inBuf: the caller discards len(head) bytes once done with
// it, and reads nothing from br before), else copied into *big. fields
// receives the parsed field lines; startLine parses the first line.
func readHead(br *bufio.Reader, big *[]byte, fields *[]field) (head []byte, inBuf bool, err error) {
	for {
		buf, _ := br.Peek(br.Buffered())
		n, ferr := scanHead(buf, fields)
		if ferr != nil {
			return nil, false, ferr
		}
		if n > 0 {
			return buf[:n], true, nil
		}
		if len(buf) >= br.Size() {
			break // larger than the buffer
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, false, err
		}
	}
	// A head larger than the reader's buffer: collect it line by line.
	b := (*big)[:0]
	for {
		line, err := br.ReadSlice('\n')
		if len(b)+len(line) > maxHeadBytes {
			*big = b
			return nil, false, errHeadTooLarge
		}
		b = append(b, line...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			*big = b
			return nil, false, err
		}
		if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') && len(b) > len(line) {
			break // the empty line
		}
	}
	*big = b
	n, err := scanHead(b, fields)
	if err == nil && n != len(b) {
		err = errBadField
	}
	return b, false, err
}

// scanHead finds the end of the head in b (0: not all there) and parses its
// field lines; the start line is left to the caller.
func scanHead(b []byte, fields *[]field) (int, error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return 0, nil
	}
	fs, n, err := parseFields(b, i+1, (*fields)[:0])
	*fields = fs
	return n, err
}

// startLine returns the first line of head without its terminator.
func startLine(head []byte) []byte {
	i := bytes.IndexByte(head, '\n')
	if i > 0 && head[i-1] == '\r' {
		i--
	}
	return head[:i]
}

// parseLength parses a Content-Length value.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// forEachToken calls f for every comma-separated token of v, trimmed.
func forEachToken(v []byte, f func(tok []byte)) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		tok = bytes.TrimSpace(tok)
		if len(tok) > 0 {
			f(tok)
		}
	}
}

// framing is what requests and responses alike say about their body and
// their connection (RFC 9112 §6, §9): Content-Length, Transfer-Encoding,
// Connection and the other hop-by-hop fields, none of which is forwarded.
type framing struct {
	contentLength int64 // -1: none
	chunked       bool
	close         bool // the sender closes the connection after this message
	connValue     bool // some Connection header names other fields
	http10        bool // closes unless it says keep-alive
}

// start resets fr for a message of HTTP/1.minor.
func (fr *framing) start(minor int) {
	*fr = framing{contentLength: -1, close: minor == 0, http10: minor == 0}
}

// field takes f into fr if it is a framing field, marking it dropped, and
// says whether it was one; the error is for a value it cannot use.
func (fr *framing) field(head []byte, f *field) (bool, *protoError) {
	switch f.id {
	case fContentLength:
		n, ok := parseLength(f.value(head))
		if !ok || (fr.contentLength >= 0 && n != fr.contentLength) {
			return true, errBadLength
		}
		fr.contentLength = n
	case fTransferEncoding:
		if fr.chunked || !httpwire.EqualFold(f.value(head), "chunked") {
			return true, errBadCoding
		}
		fr.chunked = true
	case fConnection:
		forEachToken(f.value(head), func(tok []byte) {
			switch {
			case httpwire.EqualFold(tok, "close"):
				fr.close = true
			case httpwire.EqualFold(tok, "keep-alive"):
				if fr.http10 {
					fr.close = false
				}
			default:
				fr.connValue = true
			}
		})
	case fHop:
	default:
		return false, nil
	}
	f.drop = true
	return true, nil
}

// dropNamed marks the fields that a Connection header names for dropping,
// once every field was seen.
func (fr *framing) dropNamed(head []byte, fields []field) {
	if !fr.connValue {
		return
	}
	for i := range fields {
		if fields[i].id != fConnection {
			continue
		}
		forEachToken(fields[i].value(head), func(tok []byte) {
			for j := range fields {
				f := &fields[j]
				if f.id != fConnection && bytes.EqualFold(f.name(head), tok) {
					f.drop = true
				}
			}
		})
	}
}

// request is a parsed request head. Spans index head.
type request struct {
	head       []byte
	inBuf      bool // head is in the connection's reader buffer
	fields     []field
	method     []byte
	target     []byte // as forwarded: origin-form path and query
	slash      bool   // forward "/" before target (absolute-form with an empty path)
	host       []byte // the routing host: Host, or the authority of an absolute-form target
	path       []byte // target without the query
	query      []byte // "?..." or empty
	minor      int    // HTTP/1.minor
	framing           // close: the client wants the connection closed after this
	expect100  bool
	idempotent bool // may be sent again after a failure (RFC 9110 §9.2.2)
	isHead     bool
}

// hasBody says whether a body follows the head.
func (r *request) hasBody() bool { return r.chunked || r.contentLength > 0 }

// parse interprets the head read by readHead.
func (r *request) parse() *protoError {
	line := startLine(r.head)
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return errBadStartLine
	}
	r.method = line[:sp1]
	for _, c := range r.method {
		if !tchar[c] {
			return errBadStartLine
		}
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return errBadStartLine
	}
	target, version := rest[:sp2], rest[sp2+1:]
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return errBadStartLine
		}
	}
	// HTTP-version = "HTTP/" DIGIT "." DIGIT
	if len(version) != 8 || string(version[:5]) != "HTTP/" || version[6] != '.' ||
		version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9' {
		return errBadStartLine
	}
	if version[5] != '1' {
		return errBadVersion
	}
	r.minor = int(version[7] - '0')
	if string(r.method) == "CONNECT" {
		return errConnect
	}
	r.isHead = string(r.method) == "HEAD"
	r.idempotent = safeMethod(string(r.method))

	// Fields.
	r.framing.start(r.minor)
	r.expect100 = false
	hosts := 0
	r.host = nil
	head, fields := r.head, r.fields
	for i := range fields {
		f := &fields[i]
		if ok, pe := r.framing.field(head, f); ok {
			if pe != nil {
				return pe
			}
			continue
		}
		switch f.id {
		case fHost:
			hosts++
			r.host = f.value(head)
			f.drop = true
		case fExpect:
			f.drop = true
			if !httpwire.EqualFold(f.value(head), "100-continue") {
				return errExpectation
			}
			r.expect100 = r.minor >= 1
		case fIdempotencyKey:
			r.idempotent = true
			f.drop = false
		default:
			f.drop = false
		}
	}
	r.framing.dropNamed(head, fields)
	if r.chunked {
		if r.contentLength >= 0 {
			return errLengthAndChunked
		}
		if r.minor == 0 {
			return errCodingHTTP10
		}
	}
	if hosts > 1 {
		return errManyHosts
	}
	if hosts == 0 && r.minor >= 1 {
		return errNoHost
	}

	// Target: origin-form, absolute-form (its authority routes), or "*".
	r.slash = false
	if len(target) > 7 && (httpwire.EqualFold(target[:7], "http://") || (len(target) > 8 && httpwire.EqualFold(target[:8], "https://"))) {
		t := target[bytes.IndexByte(target, ':')+3:]
		end := bytes.IndexAny(t, "/?")
		if end < 0 {
			end = len(t)
		}
		if end > 0 {
			r.host = t[:end]
		}
		target = t[end:]
		r.slash = len(target) == 0 || target[0] == '?' // forward "/" + target
	}
	r.target = target
	if q := bytes.IndexByte(target, '?'); q >= 0 {
		r.path, r.query = target[:q], target[q:]
	} else {
		r.path, r.query = target, nil
	}
	return nil
}

// response is a parsed response head from a sandbox.
type response struct {
	head       []byte
	inBuf      bool
	fields     []field
	status     int
	statusRest []byte // the status line after "HTTP/1.x ": code and reason
	minor      int
	framing    // close: the sandbox closes the connection after it
	hasDate    bool
}

// parse interprets a response head.
func (r *response) parse() error {
	line := startLine(r.head)
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[8] != ' ' ||
		line[7] < '0' || line[7] > '9' || (len(line) > 12 && line[12] != ' ') {
		return errBadStatusLine
	}
	r.minor = int(line[7] - '0')
	code := line[9:12]
	r.status = 0
	for _, c := range code {
		if c < '0' || c > '9' {
			return errBadStatusLine
		}
		r.status = r.status*10 + int(c-'0')
	}
	if r.status < 100 {
		return errBadStatusLine
	}
	r.statusRest = line[9:]
	r.framing.start(r.minor)
	r.hasDate = false
	head, fields := r.head, r.fields
	for i := range fields {
		f := &fields[i]
		if ok, pe := r.framing.field(head, f); ok {
			if pe != nil {
				return pe
			}
			continue
		}
		f.drop = false
		switch f.id {
		case fColdStart:
			f.drop = true
		case fDate:
			r.hasDate = true
		}
	}
	r.framing.dropNamed(head, fields)
	if r.chunked {
		r.contentLength = -1 // Transfer-Encoding overrides (RFC 9112 §6.3)
	}
	return nil
}
