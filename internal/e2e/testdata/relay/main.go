// Command relay is the floor of a proxy hop for the warm-path benchmark: it
// accepts TCP connections and pairs each with its own connection to one
// target, copying bytes both ways and nothing else (no parsing, no routing,
// no pooling). What the clients lose through it, against calling the target
// directly, is what any user-space proxy on the path costs at the least.
//
// Usage: relay TARGET; it prints its listening address on a line and
// serves until killed.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: relay HOST:PORT")
		os.Exit(2)
	}
	target := os.Args[1]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() {
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			go pipe(u, c)
			pipe(c, u)
		}()
	}
}

// pipe copies from src to dst with a plain read/write loop (io.Copy would
// splice between TCP sockets, two syscalls a message through a pipe).
func pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}
