// Package sandboxtest is the conformance suite every sandbox.Runtime passes.
// A runtime's own tests call Run with a Harness that says how to make the
// runtime, a spec it can run, a spec it must refuse, and how to crash a
// sandbox:
//
//	func TestConformance(t *testing.T) {
//		sandboxtest.Run(t, sandboxtest.Harness{New: ..., Spec: ..., Invalid: ..., Kill: ...})
//	}
//
// Every wait in the suite is bounded, so a broken runtime fails rather than
// hangs.
package sandboxtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batonfaas/baton/internal/sandbox"
)

// Harness adapts a runtime to the suite.
type Harness struct {
	// New returns a fresh runtime that reports exits to onExit. The suite
	// closes it (and closes it again at cleanup: Close must be idempotent).
	New func(t *testing.T, onExit sandbox.ExitFunc) sandbox.Runtime
	// Spec returns a valid spec with the given id for an HTTP function
	// that answers GET on any path with 200 and, in its body, the value of
	// its FUNCTION environment variable, as examples/hello does (see
	// BuildExample). The suite may set Env["FUNCTION"].
	Spec func(t *testing.T, id string) sandbox.Spec
	// Invalid is a spec the runtime must refuse with ErrInvalid. An empty
	// ID is replaced by one of the suite's.
	Invalid sandbox.Spec
	// Kill makes the sandbox stop on its own (for example SIGKILL to its
	// process), so that the runtime must report an Exit.
	Kill func(t *testing.T, rt sandbox.Runtime, id string)
	// SharedAddress says the runtime's sandboxes are emulated behind one
	// address that outlives any one of them (the fake runtime): the suite
	// then does not expect a deleted sandbox's address to stop answering,
	// nor the Env to reach the function, nor addresses to differ. The
	// address must still stop answering when the runtime is closed.
	SharedAddress bool
}

// Bounds on the suite's waits.
const (
	opTimeout   = 60 * time.Second // one Create or Delete, generous for -race on 2 CPUs
	exitTimeout = 10 * time.Second // Kill until OnExit
	quietWait   = 5 * time.Second  // an address going quiet, List catching up
)

// Run runs the conformance suite against the runtime h describes.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil || h.Spec == nil || h.Kill == nil {
		t.Fatal("sandboxtest: Harness needs New, Spec and Kill")
	}
	tests := []struct {
		name string
		fn   func(*testing.T, *suite)
	}{
		{"CreateReady", testCreateReady},
		{"Env", testEnv},
		{"List", testList},
		{"Delete", testDelete},
		{"DeleteUnknown", testDeleteUnknown},
		{"CreateExisting", testCreateExisting},
		{"Invalid", testInvalid},
		{"Kill", testKill},
		{"ConcurrentCreate", testConcurrentCreate},
		{"Close", testClose},
		{"CancelledContext", testCancelledContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newSuite(t, h))
		})
	}
}

// suite is one subtest's fresh runtime and what it observed.
type suite struct {
	h     Harness
	rt    sandbox.Runtime
	exits chan sandbox.Exit
}

func newSuite(t *testing.T, h Harness) *suite {
	s := &suite{h: h, exits: make(chan sandbox.Exit, 100)}
	s.rt = h.New(t, func(e sandbox.Exit) {
		select {
		case s.exits <- e:
		default: // far more than any subtest expects; noExit catches the rest
		}
	})
	if s.rt == nil {
		t.Fatal("Harness.New returned nil")
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := s.rt.Close(ctx); err != nil {
			t.Errorf("Close at cleanup: %v", err)
		}
	})
	return s
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

func (s *suite) spec(t *testing.T, id string) sandbox.Spec {
	spec := s.h.Spec(t, id)
	spec.ID = id
	return spec
}

func (s *suite) create(t *testing.T, spec sandbox.Spec) sandbox.Sandbox {
	t.Helper()
	sb, err := s.rt.Create(s.ctx(t), spec)
	if err != nil {
		t.Fatalf("Create(%s): %v", spec.ID, err)
	}
	return sb
}

func (s *suite) list(t *testing.T) []sandbox.Sandbox {
	t.Helper()
	l, err := s.rt.List(s.ctx(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return l
}

// ids returns the ids in l, checking there are no duplicates.
func ids(t *testing.T, l []sandbox.Sandbox) map[string]sandbox.Sandbox {
	t.Helper()
	m := make(map[string]sandbox.Sandbox, len(l))
	for _, sb := range l {
		if _, dup := m[sb.ID]; dup {
			t.Errorf("List has %s twice", sb.ID)
		}
		m[sb.ID] = sb
	}
	return m
}

// waitListDrops waits until List no longer has id.
func (s *suite) waitListDrops(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(quietWait)
	for {
		if _, ok := ids(t, s.list(t))[id]; !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("List still has %s after %v", id, quietWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// noExit checks that no exit is reported for a short while.
func (s *suite) noExit(t *testing.T) {
	t.Helper()
	select {
	case e := <-s.exits:
		t.Errorf("OnExit(%+v) called for a sandbox that was deleted, not crashed", e)
	case <-time.After(200 * time.Millisecond):
	}
}

var client = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// get fetches http://addr/ and returns the body, failing on any error.
func get(t *testing.T, addr string) string {
	t.Helper()
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, body %q", addr, resp.StatusCode, body)
	}
	return string(body)
}

// waitQuiet waits until nothing accepts connections on addr.
func waitQuiet(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(quietWait)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections %v after its sandbox was stopped", addr, quietWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testCreateReady(t *testing.T, s *suite) {
	if s.rt.Name() == "" {
		t.Error("Name() is empty")
	}
	spec := s.spec(t, "ready-1")
	spec.Function = "fn-ready"
	spec.Generation = 7
	spec.CPUMillicores = 500
	spec.MemoryMiB = 128
	before := time.Now()
	sb := s.create(t, spec)
	// At once: Create returns only when the sandbox answers.
	get(t, sb.Address)
	if sb.ID != spec.ID || sb.Function != spec.Function || sb.Generation != spec.Generation ||
		sb.CPUMillicores != spec.CPUMillicores || sb.MemoryMiB != spec.MemoryMiB {
		t.Errorf("Create returned %+v for spec %+v", sb, spec)
	}
	if _, _, err := net.SplitHostPort(sb.Address); err != nil {
		t.Errorf("Address %q is not host:port: %v", sb.Address, err)
	}
	if sb.Started.Before(before.Add(-time.Second)) || sb.Started.After(time.Now().Add(time.Second)) {
		t.Errorf("Started %v is not the time of creation (%v)", sb.Started, before)
	}
}

func testEnv(t *testing.T, s *suite) {
	if s.h.SharedAddress {
		t.Skip("emulated sandboxes run no function of their own")
	}
	spec := s.spec(t, "env-1")
	want := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	env := map[string]string{"FUNCTION": want}
	for k, v := range spec.Env {
		if k != "FUNCTION" {
			env[k] = v
		}
	}
	spec.Env = env
	sb := s.create(t, spec)
	if body := get(t, sb.Address); !strings.Contains(body, want) {
		t.Errorf("body %q does not show FUNCTION=%s: the spec's Env did not reach the function", body, want)
	}
}

func testList(t *testing.T, s *suite) {
	if l := s.list(t); len(l) != 0 {
		t.Fatalf("fresh runtime lists %v", l)
	}
	want := map[string]sandbox.Sandbox{}
	for i := range 3 {
		spec := s.spec(t, fmt.Sprintf("list-%d", i))
		spec.Function = fmt.Sprintf("fn-%d", i)
		spec.Generation = uint64(i + 1)
		spec.CPUMillicores = int64(100 * (i + 1))
		spec.MemoryMiB = int64(64 * (i + 1))
		want[spec.ID] = s.create(t, spec)
	}
	got := ids(t, s.list(t))
	if len(got) != len(want) {
		t.Errorf("List has %d sandboxes, want %d", len(got), len(want))
	}
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			t.Errorf("List lacks %s", id)
			continue
		}
		if g.ID != w.ID || g.Function != w.Function || g.Generation != w.Generation || g.Address != w.Address ||
			g.CPUMillicores != w.CPUMillicores || g.MemoryMiB != w.MemoryMiB || !g.Started.Equal(w.Started) {
			t.Errorf("List has %+v, Create returned %+v", g, w)
		}
	}
}

func testDelete(t *testing.T, s *suite) {
	keep := s.create(t, s.spec(t, "del-keep"))
	sb := s.create(t, s.spec(t, "del-1"))
	if err := s.rt.Delete(s.ctx(t), sb.ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if !s.h.SharedAddress {
		waitQuiet(t, sb.Address)
	}
	if _, ok := ids(t, s.list(t))[sb.ID]; ok {
		t.Errorf("List still has %s after Delete returned", sb.ID)
	}
	if err := s.rt.Delete(s.ctx(t), sb.ID); err != nil {
		t.Errorf("second Delete: %v, want nil", err)
	}
	get(t, keep.Address) // the other one is untouched
	s.noExit(t)
	// The id is free again.
	again := s.create(t, s.spec(t, "del-1"))
	get(t, again.Address)
}

func testDeleteUnknown(t *testing.T, s *suite) {
	if err := s.rt.Delete(s.ctx(t), "no-such-sandbox"); err != nil {
		t.Errorf("Delete(unknown) = %v, want nil", err)
	}
}

func testCreateExisting(t *testing.T, s *suite) {
	sb := s.create(t, s.spec(t, "dup-1"))
	_, err := s.rt.Create(s.ctx(t), s.spec(t, "dup-1"))
	if !errors.Is(err, sandbox.ErrExists) {
		t.Fatalf("second Create(dup-1) = %v, want ErrExists", err)
	}
	if l := s.list(t); len(l) != 1 || l[0].Address != sb.Address {
		t.Errorf("List after the refused Create = %+v, want only the first %+v", l, sb)
	}
	get(t, sb.Address)
}

func testInvalid(t *testing.T, s *suite) {
	spec := s.h.Invalid
	if spec.ID == "" {
		spec.ID = "invalid-1"
	}
	_, err := s.rt.Create(s.ctx(t), spec)
	if !errors.Is(err, sandbox.ErrInvalid) {
		t.Fatalf("Create(%+v) = %v, want ErrInvalid", spec, err)
	}
	if !strings.Contains(err.Error(), spec.ID) {
		t.Errorf("error %q does not name the sandbox %s", err, spec.ID)
	}
	if l := s.list(t); len(l) != 0 {
		t.Errorf("List after a refused Create = %+v, want nothing", l)
	}
	// The id was not kept either.
	sb := s.create(t, s.spec(t, spec.ID))
	get(t, sb.Address)
}

func testKill(t *testing.T, s *suite) {
	keep := s.create(t, s.spec(t, "kill-keep"))
	sb := s.create(t, s.spec(t, "kill-1"))
	s.h.Kill(t, s.rt, sb.ID)
	select {
	case e := <-s.exits:
		if e.ID != sb.ID {
			t.Errorf("OnExit(%+v), want id %s", e, sb.ID)
		}
		if e.Reason == "" {
			t.Errorf("OnExit(%+v) gives no reason", e)
		}
	case <-time.After(exitTimeout):
		t.Fatalf("OnExit not called within %v of killing %s", exitTimeout, sb.ID)
	}
	s.waitListDrops(t, sb.ID)
	if err := s.rt.Delete(s.ctx(t), sb.ID); err != nil {
		t.Errorf("Delete after the exit: %v, want nil", err)
	}
	get(t, keep.Address)
	s.noExit(t)
}

func testConcurrentCreate(t *testing.T, s *suite) {
	const n = 20
	var wg sync.WaitGroup
	sbs := make([]sandbox.Sandbox, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			sbs[i], errs[i] = s.rt.Create(s.ctx(t), s.spec(t, fmt.Sprintf("conc-%02d", i)))
		})
	}
	wg.Wait()
	addrs := map[string]string{}
	for i, err := range errs {
		if err != nil {
			t.Errorf("Create(conc-%02d): %v", i, err)
			continue
		}
		if want := fmt.Sprintf("conc-%02d", i); sbs[i].ID != want {
			t.Errorf("Create(%s) returned id %s", want, sbs[i].ID)
		}
		if other, dup := addrs[sbs[i].Address]; dup && !s.h.SharedAddress {
			t.Errorf("%s and %s share the address %s", other, sbs[i].ID, sbs[i].Address)
		}
		addrs[sbs[i].Address] = sbs[i].ID
	}
	if t.Failed() {
		return
	}
	if got := ids(t, s.list(t)); len(got) != n {
		t.Errorf("List has %d sandboxes, want %d", len(got), n)
	}
	for _, sb := range sbs {
		get(t, sb.Address)
	}
}

func testClose(t *testing.T, s *suite) {
	var sbs []sandbox.Sandbox
	for i := range 3 {
		sbs = append(sbs, s.create(t, s.spec(t, fmt.Sprintf("close-%d", i))))
	}
	if err := s.rt.Close(s.ctx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, sb := range sbs {
		waitQuiet(t, sb.Address)
	}
	if l, err := s.rt.List(s.ctx(t)); err == nil && len(l) != 0 {
		t.Errorf("List after Close = %+v, want nothing (or an error)", l)
	}
	if _, err := s.rt.Create(s.ctx(t), s.spec(t, "after-close")); err == nil {
		t.Error("Create after Close succeeded")
	}
	if err := s.rt.Close(s.ctx(t)); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	s.noExit(t)
}

func testCancelledContext(t *testing.T, s *suite) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.rt.Create(ctx, s.spec(t, "cancel-1"))
	if err == nil {
		t.Fatal("Create with a cancelled context succeeded")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Create with a cancelled context = %v, want context.Canceled", err)
	}
	if l := s.list(t); len(l) != 0 {
		t.Errorf("List after a cancelled Create = %+v, want nothing", l)
	}

	// Cancelled part way: it either failed and left nothing, or succeeded.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(time.Millisecond, cancel)
	sb, err := s.rt.Create(ctx, s.spec(t, "cancel-2"))
	l := ids(t, s.list(t))
	if err != nil {
		if _, ok := l["cancel-2"]; ok {
			t.Errorf("Create failed (%v) but List has cancel-2", err)
		}
	} else if _, ok := l["cancel-2"]; !ok {
		t.Errorf("Create succeeded (%+v) but List lacks it", sb)
	}
	// Either way the id can be used now.
	if err == nil {
		if err := s.rt.Delete(s.ctx(t), "cancel-2"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	sb = s.create(t, s.spec(t, "cancel-2"))
	get(t, sb.Address)
	s.noExit(t)
}

var builds sync.Map // example name -> *build

type build struct {
	once sync.Once
	path string
	err  error
}

// BuildExample builds the main package examples/<name> of this module once
// per test binary into dir (which the caller removes, typically in
// TestMain) and returns the executable's path.
func BuildExample(dir, name string) (string, error) {
	v, _ := builds.LoadOrStore(name, &build{})
	b := v.(*build)
	b.once.Do(func() {
		b.path = filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", b.path,
			"github.com/batonfaas/baton/examples/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build examples/%s: %v\n%s", name, err, out)
		}
	})
	return b.path, b.err
}
