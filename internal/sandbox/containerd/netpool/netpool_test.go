package netpool

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (network namespaces, veths, a bridge), and CI=true forbids skipping it")
	}
	t.Skip("skipped: needs root for network namespaces (run as root, or CI=true to make this a failure)")
}

// testConfig is a pool of its own: a bridge and subnet per test, so that
// tests (and packages) running at once do not meet.
func testConfig(t testing.TB, n int) Config {
	return Config{
		Bridge: fmt.Sprintf("btest%d%d", os.Getpid()%10000, n),
		Subnet: fmt.Sprintf("10.%d.%d.0/24", 200+os.Getpid()%50, n),
		Dir:    filepath.Join(t.TempDir(), "netns"),
		Size:   4,
	}
}

func newPool(t testing.TB, cfg Config) *Pool {
	t.Helper()
	needRoot(t)
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(func() {
		p.Close()
		if err := RemoveBridge(cfg.Bridge); err != nil {
			t.Errorf("remove bridge: %v", err)
		}
	})
	return p
}

// listenIn opens a TCP listener inside the namespace at path.
func listenIn(t testing.TB, path string, port int) net.Listener {
	t.Helper()
	type res struct {
		l   net.Listener
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		host, _ := netns.Get()
		defer host.Close()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{nil, err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			ch <- res{nil, err}
			return
		}
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if netns.Set(host) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{l, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.l
}

// snapshot is what a pool may leave behind on the host.
type snapshot struct {
	links, mounts, files int
}

func take(t testing.TB, dir string) snapshot {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	ents, _ := os.ReadDir(dir)
	return snapshot{links: len(links), mounts: bytes.Count(mi, []byte("\n")), files: len(ents)}
}

func TestSlotsReachableAndRecycled(t *testing.T) {
	cfg := testConfig(t, 1)
	before := take(t, cfg.Dir)
	p := newPool(t, cfg)
	ctx := context.Background()
	seen := map[string]bool{}
	var slots []*Slot
	for range 6 {
		s, err := p.Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if seen[s.IP.String()] {
			t.Fatalf("address %s handed out twice", s.IP)
		}
		seen[s.IP.String()] = true
		slots = append(slots, s)
	}
	for _, s := range slots {
		l := listenIn(t, s.Path, 8080)
		go func() {
			c, err := l.Accept()
			if err == nil {
				c.Write([]byte(s.IP.String()))
				c.Close()
			}
		}()
		c, err := net.DialTimeout("tcp", net.JoinHostPort(s.IP.String(), "8080"), 2*time.Second)
		if err != nil {
			t.Fatalf("dial slot %s: %v", s.IP, err)
		}
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		c.Close()
		l.Close()
		if string(buf[:n]) != s.IP.String() {
			t.Errorf("slot %s answered %q", s.IP, buf[:n])
		}
	}
	for _, s := range slots {
		p.Put(s)
	}
	if st := p.Stats(); st.InUse != 0 || st.Ready < len(slots) {
		t.Errorf("stats after Put: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(cfg.Bridge); err != nil {
		t.Errorf("bridge %s gone after Close: %v", cfg.Bridge, err)
	}
	if err := RemoveBridge(cfg.Bridge); err != nil {
		t.Fatal(err)
	}
	after := take(t, cfg.Dir)
	if after.links != before.links || after.mounts != before.mounts || after.files != 0 {
		t.Errorf("after Close: %+v, before: %+v", after, before)
	}
}

// TestAdoptAndCleanup: a second pool on the same bridge and Dir (a
// restarted worker) keeps the adopted slot and removes the rest.
func TestAdoptAndCleanup(t *testing.T) {
	cfg := testConfig(t, 2)
	p1 := newPool(t, cfg)
	ctx := context.Background()
	keep, err := p1.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	drop, err := p1.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// p1 "crashes": its state is gone, its namespaces stay.
	p1.Detach()

	p2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer RemoveBridge(cfg.Bridge)
	defer p2.Close()
	got, err := p2.Adopt(keep.Path, keep.IP)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p2.Adopt(keep.Path, keep.IP); err == nil {
		t.Error("adopting the same address twice succeeded")
	}
	p2.Cleanup()
	if !isNetns(keep.Path) {
		t.Errorf("adopted %s was removed", keep.Path)
	}
	if isNetns(drop.Path) {
		t.Errorf("unadopted %s is still there", drop.Path)
	}
	deadline := time.Now().Add(5 * time.Second) // the kernel destroys it asynchronously
	for {
		if _, err := netlink.LinkByName(drop.Veth); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("veth %s of an unadopted slot is still there", drop.Veth)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p2.Start()
	for range 8 {
		s, err := p2.Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.IP.Equal(keep.IP) {
			t.Fatalf("adopted address %s handed out again", keep.IP)
		}
		defer p2.Put(s)
	}
	p2.Release(got)
	if isNetns(keep.Path) {
		t.Errorf("released %s is still there", keep.Path)
	}
}

func TestIPAM(t *testing.T) {
	_, n, _ := net.ParseCIDR("10.1.2.0/29") // 8 addresses: 5 for slots
	a := newIPAM(n)
	if gw := a.gateway().String(); gw != "10.1.2.1" {
		t.Fatalf("gateway %s", gw)
	}
	var got []string
	for {
		ip := a.alloc()
		if ip == nil {
			break
		}
		got = append(got, ip.String())
	}
	want := []string{"10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"}
	if !slices.Equal(got, want) {
		t.Fatalf("alloc gave %v, want %v", got, want)
	}
	a.free(net.ParseIP("10.1.2.4"))
	a.free(net.ParseIP("10.1.2.3"))
	a.free(net.ParseIP("10.1.2.1")) // the gateway is never freed
	if ip := a.alloc().String(); ip != "10.1.2.3" {
		t.Errorf("after wrapping: %s, want 10.1.2.3", ip)
	}
	if ip := a.alloc().String(); ip != "10.1.2.4" {
		t.Errorf("next: %s, want 10.1.2.4", ip)
	}
	if ip := a.alloc(); ip != nil {
		t.Errorf("full subnet gave %s", ip)
	}
	if a.take(net.ParseIP("10.1.2.5")) {
		t.Error("took a used address")
	}
	a.free(net.ParseIP("10.1.2.5"))
	if !a.take(net.ParseIP("10.1.2.5")) || a.inUse != 5 {
		t.Errorf("take of a free address failed (in use %d)", a.inUse)
	}
}

// TestFirstConnection measures the first connection to fresh slots: none
// may stall (the bridge's MAC is fixed and slots are made ahead).
func TestFirstConnection(t *testing.T) {
	cfg := testConfig(t, 3)
	cfg.Size = 50
	p := newPool(t, cfg)
	deadline := time.Now().Add(10 * time.Second)
	for p.Stats().Ready < 50 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var worst time.Duration
	for range 50 {
		s, err := p.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		l := listenIn(t, s.Path, 8080)
		go func() {
			if c, err := l.Accept(); err == nil {
				c.Close()
			}
		}()
		start := time.Now()
		c, err := net.DialTimeout("tcp", net.JoinHostPort(s.IP.String(), "8080"), 3*time.Second)
		d := time.Since(start)
		if err != nil {
			t.Fatalf("dial %s: %v", s.IP, err)
		}
		c.Close()
		l.Close()
		worst = max(worst, d)
		p.Release(s)
	}
	t.Logf("slowest first connection of 50: %v", worst)
	if worst > 500*time.Millisecond {
		t.Errorf("a first connection took %v", worst)
	}
}

// BenchmarkSlot: one slot made (namespace, veth on the bridge, address,
// routes) and destroyed through netlink.
func BenchmarkSlot(b *testing.B) {
	cfg := testConfig(b, 4)
	cfg.Size = 1
	p, err := func() (*Pool, error) { needRoot(b); return New(cfg) }()
	if err != nil {
		b.Fatal(err)
	}
	defer RemoveBridge(cfg.Bridge)
	defer p.Close()
	var mk, del time.Duration
	for b.Loop() {
		t0 := time.Now()
		s, err := p.make()
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		p.destroy(s)
		mk += t1.Sub(t0)
		del += time.Since(t1)
	}
	b.ReportMetric(float64(mk.Microseconds())/1000/float64(b.N), "make-ms/op")
	b.ReportMetric(float64(del.Microseconds())/1000/float64(b.N), "destroy-ms/op")
}

// BenchmarkCNI: the same through the CNI bridge and host-local plugin
// binaries (containernetworking-plugins, /usr/lib/cni), for the
// comparison in the package comment: ip netns add, ADD, DEL, ip netns del.
func BenchmarkCNI(b *testing.B) {
	needRoot(b)
	plugins := "/usr/lib/cni"
	if _, err := os.Stat(filepath.Join(plugins, "bridge")); err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatal("the CNI plugins are not in /usr/lib/cni (apt-get install containernetworking-plugins)")
		}
		b.Skip("skipped: no CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)")
	}
	dir := b.TempDir()
	br := fmt.Sprintf("bcni%d", os.Getpid()%10000)
	conf, _ := json.Marshal(map[string]any{
		"cniVersion": "0.4.0", "name": "batonbench", "type": "bridge", "bridge": br, "isGateway": true,
		"ipam": map[string]any{"type": "host-local", "subnet": fmt.Sprintf("10.%d.250.0/24", 200+os.Getpid()%50),
			"dataDir": filepath.Join(dir, "ipam")},
	})
	defer func() {
		if l, err := netlink.LinkByName(br); err == nil {
			netlink.LinkDel(l)
		}
	}()
	cni := func(cmd, ns string) {
		c := exec.Command(filepath.Join(plugins, "bridge"))
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=bench", "CNI_NETNS=" + ns, "CNI_IFNAME=eth0",
			"CNI_PATH=" + plugins}
		c.Stdin = bytes.NewReader(conf)
		if out, err := c.CombinedOutput(); err != nil {
			b.Fatalf("CNI %s: %v: %s", cmd, err, out)
		}
	}
	var add, del time.Duration
	n := 0
	for b.Loop() {
		n++
		name := fmt.Sprintf("batoncni%d-%d", os.Getpid(), n)
		path := "/run/netns/" + name
		t0 := time.Now()
		runtime.LockOSThread()
		host, _ := netns.Get()
		ns, err := netns.NewNamed(name) // switches this thread into it
		if e := netns.Set(host); e != nil {
			b.Fatal(e) // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		host.Close()
		if err != nil {
			b.Fatal(err)
		}
		ns.Close()
		cni("ADD", path)
		t1 := time.Now()
		cni("DEL", path)
		if err := netns.DeleteNamed(name); err != nil {
			b.Fatal(err)
		}
		add += t1.Sub(t0)
		del += time.Since(t1)
	}
	b.ReportMetric(float64(add.Microseconds())/1000/float64(n), "make-ms/op")
	b.ReportMetric(float64(del.Microseconds())/1000/float64(n), "destroy-ms/op")
}
