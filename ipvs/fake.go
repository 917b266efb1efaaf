package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

// fakeCalls records calls and lets a test inject errors by call text.
type fakeCalls struct {
	calls []string
	// FailCall, when set, is asked before each change; a non-nil error
	// fails that call without changing state.
	FailCall func(call string) error
}

func (c *fakeCalls) record(call string) error {
	c.calls = append(c.calls, call)
	if c.FailCall != nil {
		return c.FailCall(call)
	}
	return nil
}

// FakeIPVS is an IPVSKernel in memory. Errors mimic the kernel's errnos.
type FakeIPVS struct {
	mu sync.Mutex
	fakeCalls
	services map[VSKey]*fakeVS
	Timeouts [3]time.Duration
}

type fakeVS struct {
	vs   VirtualServer
	dsts map[netip.AddrPort]RealServer
}

var _ IPVSKernel = (*FakeIPVS)(nil)

func NewFakeIPVS() *FakeIPVS { return &FakeIPVS{services: map[VSKey]*fakeVS{}} }

// Calls returns the calls made since the last ResetCalls (lists included).
func (f *FakeIPVS) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *FakeIPVS) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// SetConnections sets a real server's connection counts, as traffic would.
func (f *FakeIPVS) SetConnections(vs VSKey, rs netip.AddrPort, active, inactive int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.services[vs]; ok {
		if d, ok := s.dsts[rs]; ok {
			d.ActiveConns, d.InactiveConns = active, inactive
			s.dsts[rs] = d
		}
	}
}

// State returns every virtual server with its real servers.
func (f *FakeIPVS) State() map[VirtualServer][]RealServer {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[VirtualServer][]RealServer{}
	for _, s := range f.services {
		rs := slices.Collect(maps.Values(s.dsts))
		slices.SortFunc(rs, func(a, b RealServer) int { return a.Addr.Compare(b.Addr) })
		out[s.vs] = rs
	}
	return out
}

func (f *FakeIPVS) ListVirtualServers() ([]VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("ListVirtualServers"); err != nil {
		return nil, err
	}
	var out []VirtualServer
	for _, s := range f.services {
		out = append(out, s.vs)
	}
	return out, nil
}

func (f *FakeIPVS) ListRealServers(vs VSKey) ([]RealServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("ListRealServers " + vs.String()); err != nil {
		return nil, err
	}
	s, ok := f.services[vs]
	if !ok {
		return nil, syscall.ESRCH
	}
	return slices.Collect(maps.Values(s.dsts)), nil
}

func (f *FakeIPVS) AddVirtualServer(vs VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("AddVirtualServer %s %s flags=%#x timeout=%d", vs.VSKey, vs.Scheduler, vs.Flags, vs.Timeout)); err != nil {
		return err
	}
	if _, ok := f.services[vs.VSKey]; ok {
		return syscall.EEXIST
	}
	vs.Flags |= FlagHashed
	f.services[vs.VSKey] = &fakeVS{vs: vs, dsts: map[netip.AddrPort]RealServer{}}
	return nil
}

func (f *FakeIPVS) UpdateVirtualServer(vs VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("UpdateVirtualServer %s %s flags=%#x timeout=%d", vs.VSKey, vs.Scheduler, vs.Flags, vs.Timeout)); err != nil {
		return err
	}
	s, ok := f.services[vs.VSKey]
	if !ok {
		return syscall.ESRCH
	}
	vs.Flags |= FlagHashed
	s.vs = vs
	return nil
}

func (f *FakeIPVS) DeleteVirtualServer(vs VSKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteVirtualServer " + vs.String()); err != nil {
		return err
	}
	if _, ok := f.services[vs]; !ok {
		return syscall.ESRCH
	}
	delete(f.services, vs)
	return nil
}

func (f *FakeIPVS) AddRealServer(vs VSKey, rs RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("AddRealServer %s %s weight=%d", vs, rs.Addr, rs.Weight)); err != nil {
		return err
	}
	s, ok := f.services[vs]
	if !ok {
		return syscall.ESRCH
	}
	if _, ok := s.dsts[rs.Addr]; ok {
		return syscall.EEXIST
	}
	s.dsts[rs.Addr] = RealServer{Addr: rs.Addr, Weight: rs.Weight}
	return nil
}

func (f *FakeIPVS) UpdateRealServer(vs VSKey, rs RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("UpdateRealServer %s %s weight=%d", vs, rs.Addr, rs.Weight)); err != nil {
		return err
	}
	s, ok := f.services[vs]
	if !ok {
		return syscall.ESRCH
	}
	d, ok := s.dsts[rs.Addr]
	if !ok {
		return syscall.ENOENT
	}
	d.Weight = rs.Weight
	s.dsts[rs.Addr] = d
	return nil
}

func (f *FakeIPVS) DeleteRealServer(vs VSKey, rs netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("DeleteRealServer %s %s", vs, rs)); err != nil {
		return err
	}
	s, ok := f.services[vs]
	if !ok {
		return syscall.ESRCH
	}
	if _, ok := s.dsts[rs]; !ok {
		return syscall.ENOENT
	}
	delete(s.dsts, rs)
	return nil
}

func (f *FakeIPVS) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("SetTimeouts %v %v %v", tcp, tcpFin, udp)); err != nil {
		return err
	}
	for i, d := range []time.Duration{tcp, tcpFin, udp} {
		if d > 0 {
			f.Timeouts[i] = d
		}
	}
	return nil
}

// FakeLinks is a Links in memory: links with their addresses.
type FakeLinks struct {
	mu sync.Mutex
	fakeCalls
	links map[string]sets.Set[netip.Addr]
}

var _ Links = (*FakeLinks)(nil)

// NewFakeLinks returns links holding addrs (link name → addresses), e.g.
// {"eth0": node IPs, "lo": loopback}.
func NewFakeLinks(addrs map[string][]netip.Addr) *FakeLinks {
	f := &FakeLinks{links: map[string]sets.Set[netip.Addr]{}}
	for l, a := range addrs {
		f.links[l] = sets.New(a...)
	}
	return f
}

func (f *FakeLinks) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *FakeLinks) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// Addresses returns a link's addresses, sorted; nil if it does not exist.
func (f *FakeLinks) Addresses(link string) []netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.links[link]
	if !ok {
		return nil
	}
	out := s.UnsortedList()
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// HasLink reports whether link exists.
func (f *FakeLinks) HasLink(link string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.links[link]
	return ok
}

func (f *FakeLinks) EnsureDummy(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("EnsureDummy " + name); err != nil {
		return err
	}
	if _, ok := f.links[name]; !ok {
		f.links[name] = sets.New[netip.Addr]()
	}
	return nil
}

func (f *FakeLinks) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteLink " + name); err != nil {
		return err
	}
	delete(f.links, name)
	return nil
}

func familyOf(a netip.Addr) v1.IPFamily {
	if a.Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

func (f *FakeLinks) ListAddresses(link string, family v1.IPFamily) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("ListAddresses " + link); err != nil {
		return nil, err
	}
	var out []netip.Addr
	for a := range f.links[link] {
		if familyOf(a) == family {
			out = append(out, a)
		}
	}
	return out, nil
}

func (f *FakeLinks) AddAddress(link string, addr netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("AddAddress %s %s", link, addr)); err != nil {
		return err
	}
	s, ok := f.links[link]
	if !ok {
		return syscall.ENODEV
	}
	if s.Has(addr) {
		return syscall.EEXIST
	}
	s.Insert(addr)
	return nil
}

func (f *FakeLinks) DeleteAddress(link string, addr netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(fmt.Sprintf("DeleteAddress %s %s", link, addr)); err != nil {
		return err
	}
	s, ok := f.links[link]
	if !ok || !s.Has(addr) {
		return syscall.EADDRNOTAVAIL
	}
	s.Delete(addr)
	return nil
}

func (f *FakeLinks) LocalAddresses(except string, family v1.IPFamily) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("LocalAddresses"); err != nil {
		return nil, err
	}
	var out []netip.Addr
	for l, s := range f.links {
		if l == except {
			continue
		}
		for a := range s {
			if familyOf(a) == family {
				out = append(out, a)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}
