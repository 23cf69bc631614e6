package netpool

import (
	"encoding/binary"
	"math/bits"
	"net"
)

// ipam hands out the addresses of an IPv4 subnet: the first host address
// is the gateway, the rest go to slots, next-fit (after the last one handed
// out) so that a freed address is reused as late as possible. Not safe for
// concurrent use.
type ipam struct {
	base  uint32 // the network address
	size  uint32 // addresses in the subnet
	used  []uint64
	next  uint32 // offset where the next search starts
	inUse int
}

func newIPAM(n *net.IPNet) *ipam {
	ones, _ := n.Mask.Size()
	size := uint32(1) << (32 - ones)
	a := &ipam{base: binary.BigEndian.Uint32(n.IP.To4()), size: size, used: make([]uint64, (size+63)/64)}
	// The network address, the gateway and the broadcast address are never
	// handed out.
	a.set(0)
	a.set(1)
	a.set(size - 1)
	a.next = 2
	return a
}

func (a *ipam) set(off uint32)        { a.used[off/64] |= 1 << (off % 64) }
func (a *ipam) clear(off uint32)      { a.used[off/64] &^= 1 << (off % 64) }
func (a *ipam) isSet(off uint32) bool { return a.used[off/64]&(1<<(off%64)) != 0 }

func (a *ipam) ip(off uint32) net.IP {
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, a.base+off)
	return ip
}

func (a *ipam) offset(ip net.IP) (uint32, bool) {
	v4 := ip.To4()
	if v4 == nil {
		return 0, false
	}
	off := binary.BigEndian.Uint32(v4) - a.base
	return off, off < a.size
}

func (a *ipam) gateway() net.IP { return a.ip(1) }

// alloc returns a free address, or nil when the subnet is full.
func (a *ipam) alloc() net.IP {
	words := uint32(len(a.used))
	start := a.next
	// Every word from the cursor's on, then the cursor's word again in
	// full (its bits below the cursor).
	for i := uint32(0); i <= words; i++ {
		w := (start/64 + i) % words
		free := ^a.used[w]
		if i == 0 {
			free &^= (1 << (start % 64)) - 1 // below the cursor: later
		}
		if free == 0 {
			continue
		}
		off := w*64 + uint32(bits.TrailingZeros64(free))
		if off >= a.size {
			continue
		}
		a.set(off)
		a.inUse++
		a.next = (off + 1) % a.size
		return a.ip(off)
	}
	return nil
}

// take marks ip used; false if it was already, or is not a slot address.
func (a *ipam) take(ip net.IP) bool {
	off, ok := a.offset(ip)
	if !ok || a.isSet(off) {
		return false
	}
	a.set(off)
	a.inUse++
	return true
}

// free returns ip.
func (a *ipam) free(ip net.IP) {
	off, ok := a.offset(ip)
	if !ok || off <= 1 || off == a.size-1 || !a.isSet(off) {
		return
	}
	a.clear(off)
	a.inUse--
}
