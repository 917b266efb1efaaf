package conntrack

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/sysctl"
)

func openHandle(t *testing.T, ns *testNetns) *NetlinkHandle {
	t.Helper()
	h, err := NewNetlinkHandleAt(ns.h)
	if err != nil {
		t.Fatalf("open conntrack handle in %s: %v", ns.name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// waitFlows polls the table until every wanted original destination shows
// up. Bounded: packets cross a veth and wait for ARP, which is quick but
// asynchronous.
func waitFlows(t *testing.T, h *NetlinkHandle, family v1.IPFamily, dsts ...string) []Flow {
	t.Helper()
	var flows []Flow
	for range 250 {
		var err error
		flows, err = h.List(family)
		if err != nil {
			t.Fatalf("list conntrack table: %v", err)
		}
		if !slices.ContainsFunc(dsts, func(d string) bool { return !hasDst(flows, d) }) {
			return flows
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("conntrack flows to %v never appeared; table: %v", dsts, flows)
	return nil
}

func hasDst(flows []Flow, dst string) bool {
	return slices.ContainsFunc(flows, func(f Flow) bool { return f.OrigDst.String() == dst })
}

// TestKernelCleanStaleUDP sends real UDP packets through a DNAT rule and
// checks that CleanStale removes exactly the flow of the lost endpoint.
//
//	client ns 192.0.2.101 (c0) ── veth ── (n0) 192.0.2.11 node ns
//	node ns: 198.51.100.10:53 DNAT→ 203.0.113.5:5353 (endpoint lost)
//	         198.51.100.11:53 DNAT→ 203.0.113.6:5353 (unrelated, stays)
func TestKernelCleanStaleUDP(t *testing.T) {
	requireKernel(t, "iptables", "conntrack")
	node := newNetns(t, "node")
	client := newNetns(t, "client")

	node.run(t, "ip", "link", "add", "n0", "type", "veth", "peer", "name", "c0", "netns", client.name)
	node.run(t, "ip", "addr", "add", "192.0.2.11/24", "dev", "n0")
	node.run(t, "ip", "link", "set", "n0", "up")
	// The endpoints are local addresses of the node: the DNATed packet is
	// delivered, nobody listens, and the flow stays in the table.
	node.run(t, "ip", "addr", "add", "203.0.113.5/32", "dev", "lo")
	node.run(t, "ip", "addr", "add", "203.0.113.6/32", "dev", "lo")
	for _, r := range [][2]string{{"198.51.100.10", "203.0.113.5:5353"}, {"198.51.100.11", "203.0.113.6:5353"}} {
		node.run(t, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", r[0]+"/32", "-p", "udp", "--dport", "53",
			"-j", "DNAT", "--to-destination", r[1])
	}
	client.run(t, "ip", "addr", "add", "192.0.2.101/24", "dev", "c0")
	client.run(t, "ip", "link", "set", "c0", "up")
	client.run(t, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.11")

	err := client.do(func() error {
		for i, dst := range []string{"198.51.100.10:53", "198.51.100.11:53"} {
			conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("192.0.2.101"), uint16(40001+i))),
				net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
			if err != nil {
				return err
			}
			_, err = conn.Write([]byte("query"))
			conn.Close()
			if err != nil {
				return fmt.Errorf("send to %s: %w", dst, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send UDP from client: %v", err)
	}
	h := openHandle(t, node)
	for _, f := range waitFlows(t, h, v1.IPv4Protocol, "198.51.100.10:53", "198.51.100.11:53") {
		if f.OrigDst.String() == "198.51.100.10:53" && f.ReplySrc.String() != "203.0.113.5:5353" {
			t.Fatalf("flow to the service was not DNATed to the endpoint: %s", f)
		}
	}

	dns := svc(dnsName, "198.51.100.10", 53)
	other := svc("default.other:dns/UDP", "198.51.100.11", 53)
	snap := snapshot(v1.IPv4Protocol, change{
		services: []*proxier.ServicePort{dns, other},
		lost:     map[string][]string{dnsName: {"203.0.113.5:5353"}},
	})
	snap.Endpoints[dns.Name] = []*proxier.Endpoint{{IP: netip.MustParseAddr("203.0.113.7"), Port: 5353, Ready: true, Serving: true}}
	snap.Endpoints[other.Name] = []*proxier.Endpoint{{IP: netip.MustParseAddr("203.0.113.6"), Port: 5353, Ready: true, Serving: true}}

	n, err := NewCleaner(v1.IPv4Protocol, h).CleanStale(snap)
	if err != nil {
		t.Fatalf("CleanStale: %v", err)
	}
	if n != 1 {
		t.Errorf("CleanStale deleted %d flows, want 1", n)
	}
	out := node.run(t, "conntrack", "-L", "-p", "udp")
	if strings.Contains(out, "dst=198.51.100.10 ") {
		t.Errorf("flow to the lost endpoint is still in the table:\n%s", out)
	}
	if !strings.Contains(out, "dst=198.51.100.11 ") {
		t.Errorf("unrelated flow was deleted:\n%s", out)
	}
}

// TestKernelCleanStaleInserted covers SCTP, TCP, NodePorts, zones and IPv6
// on the real netlink handle, with flows inserted by conntrack -I.
func TestKernelCleanStaleInserted(t *testing.T) {
	requireKernel(t, "conntrack")
	node := newNetns(t, "ins")
	type entry struct {
		name, proto, src, dst string
		sport, dport          int
		endpoint              string
		endpointPort          int
		extra                 []string
	}
	entries := []entry{
		{"udp lost", "udp", "192.0.2.101", "198.51.100.10", 40000, 53, "203.0.113.5", 5353, nil},
		{"udp kept", "udp", "192.0.2.102", "198.51.100.10", 40000, 53, "203.0.113.6", 5353, nil},
		{"udp nodeport lost", "udp", "192.0.2.103", "192.0.2.11", 40000, 30053, "203.0.113.5", 5353, nil},
		{"udp lost in zone 7", "udp", "192.0.2.104", "198.51.100.10", 40000, 53, "203.0.113.5", 5353, []string{"--zone", "7"}},
		{"sctp lost", "sctp", "192.0.2.101", "198.51.100.20", 40001, 3868, "203.0.113.7", 3868,
			[]string{"--state", "ESTABLISHED", "--orig-vtag", "1", "--reply-vtag", "2"}},
		{"sctp kept", "sctp", "192.0.2.102", "198.51.100.20", 40001, 3868, "203.0.113.8", 3868,
			[]string{"--state", "ESTABLISHED", "--orig-vtag", "3", "--reply-vtag", "4"}},
		{"tcp lost", "tcp", "192.0.2.101", "198.51.100.30", 40002, 80, "203.0.113.9", 8080,
			[]string{"--state", "ESTABLISHED"}},
		{"udp6 lost", "udp", "2001:db8:2::101", "2001:db8:5::10", 40000, 53, "2001:db8:1::5", 5353, nil},
		{"udp6 kept", "udp", "2001:db8:2::102", "2001:db8:5::10", 40000, 53, "2001:db8:1::6", 5353, nil},
	}
	for _, e := range entries {
		args := []string{"conntrack", "-I", "-p", e.proto, "-s", e.src, "-d", e.dst,
			"--sport", fmt.Sprint(e.sport), "--dport", fmt.Sprint(e.dport),
			"-r", e.endpoint, "-q", e.src, "--reply-port-src", fmt.Sprint(e.endpointPort), "--reply-port-dst", fmt.Sprint(e.sport),
			"-t", "120"}
		node.run(t, append(args, e.extra...)...)
	}
	h := openHandle(t, node)

	v4 := snapshot(v1.IPv4Protocol, change{
		services: []*proxier.ServicePort{
			svc(dnsName, "198.51.100.10", 53, nodePort(30053)),
			svc(sigName, "198.51.100.20", 3868),
			svc(webName, "198.51.100.30", 80),
		},
		lost: map[string][]string{
			dnsName: {"203.0.113.5:5353"},
			sigName: {"203.0.113.7:3868"},
			webName: {"203.0.113.9:8080"},
		},
	})
	v6 := snapshot(v1.IPv6Protocol, change{
		services: []*proxier.ServicePort{svc(dnsName, "2001:db8:5::10", 53)},
		lost:     map[string][]string{dnsName: {"[2001:db8:1::5]:5353"}},
	})
	for _, tc := range []struct {
		family v1.IPFamily
		snap   *proxier.Snapshot
		want   int
	}{{v1.IPv4Protocol, v4, 4}, {v1.IPv6Protocol, v6, 1}} {
		n, err := NewCleaner(tc.family, h).CleanStale(tc.snap)
		if err != nil || n != tc.want {
			t.Errorf("%s CleanStale = %d, %v; want %d, nil", tc.family, n, err, tc.want)
		}
	}

	var left []string
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		flows, err := h.List(family)
		if err != nil {
			t.Fatalf("list %s: %v", family, err)
		}
		for _, f := range flows {
			left = append(left, fmt.Sprintf("%s %s %s", protoName(f.Protocol), f.OrigSrc.Addr(), f.ReplySrc))
		}
	}
	slices.Sort(left)
	want := []string{
		"sctp 192.0.2.102 203.0.113.8:3868",
		"tcp 192.0.2.101 203.0.113.9:8080",
		"udp 192.0.2.102 203.0.113.6:5353",
		"udp 2001:db8:2::102 [2001:db8:1::6]:5353",
	}
	if !slices.Equal(left, want) {
		t.Errorf("flows left (proto, client, endpoint) = %q, want %q", left, want)
	}
}

// TestKernelSysctls applies the per-namespace conntrack sysctls inside a
// fresh namespace and reads them back from a separate process in it.
func TestKernelSysctls(t *testing.T) {
	requireKernel(t, "cat")
	ns := newNetns(t, "sysctl")
	keys := []string{sysctlTCPEstablished, sysctlTCPCloseWait, sysctlTCPBeLiberal, sysctlUDPTimeout, sysctlUDPTimeoutStream}
	host := readSysctls(t, nil, keys)

	cfg := v1alpha1.KubeProxyConntrackConfiguration{
		MaxPerCore:            i32(0), // nf_conntrack_max is global: never in a test
		TCPEstablishedTimeout: dur(2 * time.Hour),
		TCPCloseWaitTimeout:   dur(30 * time.Minute),
		TCPBeLiberal:          true,
		UDPTimeout:            metav1.Duration{Duration: 45 * time.Second},
		UDPStreamTimeout:      metav1.Duration{Duration: 150 * time.Second},
	}
	hs := &fakeHashSize{value: 1} // the real one is global too
	if err := ns.do(func() error { return applySysctls(sysctl.New(), hs, cfg, 2) }); err != nil {
		t.Fatalf("applySysctls in %s: %v", ns.name, err)
	}
	got := readSysctls(t, ns, keys)
	want := map[string]string{
		sysctlTCPEstablished:   "7200",
		sysctlTCPCloseWait:     "1800",
		sysctlTCPBeLiberal:     "1",
		sysctlUDPTimeout:       "45",
		sysctlUDPTimeoutStream: "150",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s in the namespace = %q, want %q", k, got[k], v)
		}
	}
	for k, v := range readSysctls(t, nil, keys) {
		if host[k] != v {
			t.Errorf("%s changed in the test's own namespace: %q → %q", k, host[k], v)
		}
	}
	if len(hs.writes) != 0 {
		t.Errorf("hashsize written with maxPerCore 0: %v", hs.writes)
	}
}

// TestKernelConntrackMaxReadOnlyInNamespace checks the non-init namespace
// case kube-proxy users hit: nf_conntrack_max cannot be raised there, and
// that is a warning, not an error.
func TestKernelConntrackMaxReadOnlyInNamespace(t *testing.T) {
	requireKernel(t)
	ns := newNetns(t, "max")
	var writable bool
	err := ns.do(func() error {
		fi, err := os.Stat("/proc/sys/" + sysctlMax)
		writable = err == nil && fi.Mode().Perm()&0o200 != 0
		return err
	})
	if err != nil {
		t.Skipf("skipping: nf_conntrack_max not present in a new namespace: %v", err)
	}
	if writable {
		t.Skip("skipping: this kernel lets a non-init namespace write nf_conntrack_max; not risking the host's value")
	}
	before := readSysctls(t, ns, []string{sysctlMax})[sysctlMax]
	hs := &fakeHashSize{value: 1}
	cfg := v1alpha1.KubeProxyConntrackConfiguration{MaxPerCore: i32(1 << 20), Min: i32(1 << 20)}
	if err := ns.do(func() error { return applySysctls(sysctl.New(), hs, cfg, 2) }); err != nil {
		t.Errorf("applySysctls = %v, want a warning only", err)
	}
	if after := readSysctls(t, ns, []string{sysctlMax})[sysctlMax]; after != before {
		t.Errorf("nf_conntrack_max changed %s → %s", before, after)
	}
	if len(hs.writes) != 0 {
		t.Errorf("hashsize written although nf_conntrack_max could not be raised: %v", hs.writes)
	}
}

// readSysctls reads keys with cat, in ns or (nil) in the test's namespace.
func readSysctls(t *testing.T, ns *testNetns, keys []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range keys {
		v, err := runCmd(ns, "cat", "/proc/sys/"+k)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out
}
