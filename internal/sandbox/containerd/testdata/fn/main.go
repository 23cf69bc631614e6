// Command fn is the containerd runtime tests' misbehaving function: with
// MODE=exit it prints a line on stdout and on stderr and exits with status
// 3; with MODE=sleep it never listens; otherwise it answers on $PORT.
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	switch os.Getenv("MODE") {
	case "exit":
		fmt.Println("fn: starting")
		fmt.Fprintln(os.Stderr, "fn: boom: no config")
		os.Exit(3)
	case "sleep":
		fmt.Println("fn: waiting forever")
		for {
			time.Sleep(time.Hour)
		}
	}
	http.ListenAndServe(":"+os.Getenv("PORT"), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "fn")
	}))
}
