package process

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
)

// strangerCase is a case of TestStrangerOnPort.
type strangerCase struct {
	name    string
	then    string        // what the function does once released
	leave   bool          // the stranger closes before the function is released
	timeout time.Duration // ReadyTimeout
	want    []string      // in the error; none: the sandbox becomes ready
}

// TestStrangerOnPort puts a stranger (this test) on a sandbox's port after
// the runtime allocated it and before the function binds it: the probe
// reaches the stranger, and the sandbox must not be declared ready for it.
// Each case runs with every listener finder the kernel supports.
func TestStrangerOnPort(t *testing.T) {
	needRoot(t)
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	holder := fmt.Sprintf("held by another process (pid %d, comm %s)", os.Getpid(), strings.TrimSpace(string(comm)))
	tests := []strangerCase{
		{"function cannot bind", "exec " + hello, false, 30 * time.Second,
			[]string{"exited before answering", "address already in use", holder}},
		{"function never listens", "exec sleep 1000", false, time.Second,
			[]string{holder, "did not listen", "within 1s"}},
		{"stranger leaves", "exec " + hello, true, 30 * time.Second, nil},
		{"a child of the function listens", hello + " & wait", true, 30 * time.Second, nil},
	}
	n := 0
	for _, f := range testFinders() {
		for _, tc := range tests {
			n++
			id := fmt.Sprintf("stranger-%d", n)
			t.Run(f.name+"/"+tc.name, func(t *testing.T) { strangerOnPort(t, id, f.find, tc) })
		}
	}
}

// namedFinder is a listenerFinder for a test.
type namedFinder struct {
	name string
	find listenerFinder
}

// testFinders are the listener finders this kernel supports.
func testFinders() []namedFinder {
	fs := []namedFinder{{"proc", procListeners}}
	if _, how := newListenerFinder(); how == "sock_diag" {
		fs = append([]namedFinder{{"sock_diag", diagListeners}}, fs...)
	}
	return fs
}

func strangerOnPort(t *testing.T, id string, finder listenerFinder, tc strangerCase) {
	rt := newRuntime(t, Config{ReadyTimeout: tc.timeout})
	rt.listeners = finder // before any Create
	dir := t.TempDir()
	// The function says its port, then waits to be released.
	fn := script(t, `echo "$PORT" > "$DIR/port.tmp" && mv "$DIR/port.tmp" "$DIR/port"
while [ ! -e "$DIR/go" ]; do sleep 0.01; done
`+tc.then)
	done := make(chan createResult, 1)
	go func() {
		sb, err := rt.Create(t.Context(), sandbox.Spec{ID: id, Function: "stranger", Binary: fn, Env: map[string]string{"DIR": dir}})
		done <- createResult{sb, err}
	}()
	port := waitPortFile(t, filepath.Join(dir, "port"), done)
	stranger, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("stranger cannot listen on the sandbox's port: %v", err)
	}
	defer stranger.Close()
	// The probe connects to the stranger...
	_ = stranger.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := stranger.Accept()
	if err != nil {
		t.Fatalf("the readiness probe never reached the stranger: %v", err)
	}
	c.Close()
	// ...and the sandbox is not ready for it.
	select {
	case res := <-done:
		t.Fatalf("Create returned while a stranger held the port: %+v, %v", res.sb, res.err)
	case <-time.After(50 * time.Millisecond):
	}
	if tc.leave {
		stranger.Close()
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var res createResult
	select {
	case res = <-done:
	case <-time.After(tc.timeout + 10*time.Second):
		t.Fatal("Create did not return")
	}
	if len(tc.want) == 0 {
		if res.err != nil {
			t.Fatalf("Create: %v", res.err)
		}
		if body := get(t, res.sb.Address); !strings.Contains(body, "sandbox "+id) {
			t.Errorf("the sandbox answered %q", body)
		}
		return
	}
	t.Logf("Create: %v", res.err)
	if !errors.Is(res.err, sandbox.ErrNotReady) {
		t.Fatalf("Create = %+v, %v; want ErrNotReady", res.sb, res.err)
	}
	for _, w := range tc.want {
		if !strings.Contains(res.err.Error(), w) {
			t.Errorf("error %q does not say %q", res.err, w)
		}
	}
	if l, _ := rt.List(t.Context()); len(l) != 0 {
		t.Errorf("List = %v after the failed creation", l)
	}
}

type createResult struct {
	sb  sandbox.Sandbox
	err error
}

// waitPortFile waits for the function to write its PORT into path.
func waitPortFile(t *testing.T, path string, done <-chan createResult) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil {
			port, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatalf("the function wrote port %q", b)
			}
			return port
		}
		select {
		case res := <-done:
			t.Fatalf("Create returned before the function said its port: %+v, %v", res.sb, res.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the function did not say its port")
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkListening measures the check readiness adds after the port
// answers, on a running examples/hello sandbox, with each finder.
func BenchmarkListening(b *testing.B) {
	rt := newRuntime(b, Config{})
	sb, err := rt.Create(b.Context(), helloSpec("bench-owner"))
	if err != nil {
		b.Fatal(err)
	}
	rt.mu.Lock()
	box := rt.boxes[sb.ID]
	rt.mu.Unlock()
	for _, f := range testFinders() {
		b.Run(f.name, func(b *testing.B) {
			rt.listeners = f.find // no Create runs now
			b.ReportAllocs()
			for b.Loop() {
				if ok, _, err := rt.listening(box); !ok || err != nil {
					b.Fatalf("the sandbox does not hold its listener (%v)", err)
				}
			}
		})
	}
}
