package process

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// freeRange finds n consecutive ports that bind now.
func freeRange(t *testing.T, n int) int {
	t.Helper()
	for base := 21000; base < 29000; base += n {
		ok := true
		for p := base; p < base+n && ok; p++ {
			ok = bindable(p)
		}
		if ok {
			return base
		}
	}
	t.Skip("no free port range found")
	return 0
}

func TestPortsPreferNonEphemeral(t *testing.T) {
	base := freeRange(t, 6)
	// Pretend the first four are the kernel's ephemeral range.
	p := &ports{min: base, max: base + 5, ephemMin: base, ephemMax: base + 3}
	var got []int
	for range 6 {
		port, err := p.get()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, port)
	}
	defer func() {
		for _, port := range got {
			release(port)
		}
	}()
	for i, port := range got {
		if eph := p.ephemeral(port); eph != (i >= 2) {
			t.Errorf("port %d (#%d) ephemeral=%v: the two others must come first (got %v)", port, i, eph, got)
		}
	}
	if _, err := p.get(); err == nil || !strings.Contains(err.Error(), "no free port") {
		t.Errorf("seventh get = %v, want no free port", err)
	}
	// A second allocator in this process does not hand out the same ports.
	q := &ports{min: base, max: base + 5}
	if port, err := q.get(); err == nil {
		release(port)
		t.Errorf("second allocator got %d, held by the first", port)
	}
	// Released ports come back; ports bound elsewhere are skipped.
	release(got[0])
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(got[0]))
	if err != nil {
		t.Fatal(err)
	}
	if port, err := p.get(); err == nil {
		release(port)
		t.Errorf("got %d, which is in use", port)
	}
	l.Close()
	port, err := p.get()
	if err != nil || port != got[0] {
		t.Errorf("get = %d, %v; want the released %d", port, err, got[0])
	}
	got[0] = port
}
