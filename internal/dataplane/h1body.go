package dataplane

import (
	"bufio"
	"io"
	"strconv"
)

// Message bodies between two buffered connections. Every copy flushes the
// destination before it would block reading the source, so a streamed body
// is passed on as it comes and a body that arrived whole leaves in one
// write. The functions say which side failed: rerr is the source's (the
// peer sending the body), werr the destination's.

// errShortBody is a body that ended before its framing said.
var errShortBody = io.ErrUnexpectedEOF

// needFlush flushes dst when src has nothing buffered: the next read from
// src may block, and what dst holds must not wait for it.
func needFlush(dst *bufio.Writer, src *bufio.Reader) error {
	if src.Buffered() == 0 && dst.Buffered() > 0 {
		return dst.Flush()
	}
	return nil
}

// relay copies exactly n bytes from src to dst.
func relay(dst *bufio.Writer, src *bufio.Reader, n int64) (rerr, werr error) {
	if int64(src.Buffered()) >= n { // the common case: all there
		b, _ := src.Peek(int(n))
		_, werr = dst.Write(b)
		src.Discard(int(n))
		return nil, werr
	}
	var bp *[]byte
	for n > 0 {
		if k := int64(src.Buffered()); k > 0 {
			k = min(k, n)
			b, _ := src.Peek(int(k))
			if _, werr = dst.Write(b); werr != nil {
				break
			}
			src.Discard(int(k))
			n -= k
			continue
		}
		if werr = needFlush(dst, src); werr != nil {
			break
		}
		if n < int64(src.Size()) {
			if _, rerr = src.Peek(1); rerr != nil {
				break
			}
			continue
		}
		// Large: read past src's buffer into a big one (bufio reads
		// straight into it) and write it out the same way.
		if bp == nil {
			bp = copyBufPool.Get().(*[]byte)
		}
		buf := *bp
		k, err := src.Read(buf[:min(int64(len(buf)), n)])
		if k > 0 {
			if _, werr = dst.Write(buf[:k]); werr != nil {
				break
			}
			n -= int64(k)
		}
		if err != nil {
			rerr = err
			break
		}
	}
	if bp != nil {
		copyBufPool.Put(bp)
	}
	if rerr == io.EOF {
		rerr = errShortBody
	}
	return rerr, werr
}

// relayToEOF copies src to dst until src ends (a response delimited by the
// close of its connection); chunked frames it for dst.
func relayToEOF(dst *bufio.Writer, src *bufio.Reader, chunked bool) (rerr, werr error) {
	for {
		if werr = needFlush(dst, src); werr != nil {
			return nil, werr
		}
		if _, err := src.Peek(1); err != nil {
			if err == io.EOF {
				if chunked {
					_, werr = dst.WriteString("0\r\n\r\n")
				}
				return nil, werr
			}
			return err, nil
		}
		b, _ := src.Peek(src.Buffered())
		if chunked {
			writeChunkHeader(dst, len(b))
		}
		if _, werr = dst.Write(b); werr != nil {
			return nil, werr
		}
		if chunked {
			dst.WriteString("\r\n")
		}
		src.Discard(len(b))
	}
}

func writeChunkHeader(w *bufio.Writer, n int) {
	b := scratch(w, 20)
	b = strconv.AppendInt(b, int64(n), 16)
	b = append(b, '\r', '\n')
	w.Write(b)
}

// scratch returns w's free buffer with room for n bytes (flushing first if
// need be), to append to and Write back without a copy or an allocation. A
// stack array would escape: bufio hands large writes to an interface.
func scratch(w *bufio.Writer, n int) []byte {
	if w.Available() < n {
		w.Flush()
	}
	return w.AvailableBuffer()
}

// maxTrailers bounds a chunked body's trailer section (the reader's
// buffer bounds each of its lines, and a chunk-size line).
const maxTrailers = 64 << 10

// readChunkSize reads a chunk-size line (extensions are ignored).
func readChunkSize(br *bufio.Reader) (int64, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if err == bufio.ErrBufferFull {
			return 0, errBadChunk
		}
		if err == io.EOF {
			return 0, errShortBody
		}
		return 0, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	for i, c := range line {
		if c == ';' {
			line = line[:i]
			break
		}
	}
	for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
		line = line[:len(line)-1]
	}
	if len(line) == 0 || len(line) > 15 {
		return 0, errBadChunk
	}
	var n int64
	for _, c := range line {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, errBadChunk
		}
		n = n<<4 | int64(c)
	}
	return n, nil
}

// readCRLF reads the line end after a chunk's data.
func readCRLF(br *bufio.Reader) error {
	b, err := br.ReadByte()
	if err == nil && b == '\r' {
		b, err = br.ReadByte()
	}
	switch {
	case err == io.EOF:
		return errShortBody
	case err != nil:
		return err
	case b != '\n':
		return errBadChunk
	}
	return nil
}

// skipTrailers reads the trailer section up to its empty line; trailers are
// not forwarded.
func skipTrailers(br *bufio.Reader) error {
	total := 0
	for {
		line, err := br.ReadSlice('\n')
		total += len(line)
		switch {
		case err == bufio.ErrBufferFull || total > maxTrailers:
			return errBadChunk
		case err == io.EOF:
			return errShortBody
		case err != nil:
			return err
		}
		if len(line) == 1 || len(line) == 2 && line[0] == '\r' {
			return nil
		}
	}
}

// relayChunked decodes a chunked body from src and writes it to dst, chunked
// again (the chunk sizes may differ) or, for an HTTP/1.0 client, raw.
// limit bounds the decoded size (< 0: no bound).
func relayChunked(dst *bufio.Writer, src *bufio.Reader, rechunk bool, limit int64) (rerr, werr error) {
	var total int64
	for {
		if werr = needFlush(dst, src); werr != nil {
			return nil, werr
		}
		size, err := readChunkSize(src)
		if err != nil {
			return err, nil
		}
		if size == 0 {
			if err := skipTrailers(src); err != nil {
				return err, nil
			}
			if rechunk {
				_, werr = dst.WriteString("0\r\n\r\n")
			}
			return nil, werr
		}
		if limit >= 0 && total+size > limit {
			return errBodyTooLarge, nil
		}
		total += size
		if rechunk {
			writeChunkHeader(dst, int(size))
		}
		if rerr, werr = relay(dst, src, size); rerr != nil || werr != nil {
			return rerr, werr
		}
		if rechunk {
			dst.WriteString("\r\n")
		}
		if werr = needFlush(dst, src); werr != nil {
			return nil, werr
		}
		if err := readCRLF(src); err != nil {
			return err, nil
		}
	}
}
