package ipvssmoke

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	vip = net.ParseIP("198.51.100.10")
	rip = net.ParseIP("203.0.113.2")
)

// moby/ipvs silently does nothing without IPVS, so the family must be probed.
func TestIPVSFamilyPresent(t *testing.T) {
	guest(t)
	fam, err := netlink.GenlFamilyGet("IPVS")
	if err != nil {
		t.Fatalf("generic netlink family IPVS: %v", err)
	}
	if fam.ID == 0 {
		t.Fatalf("IPVS family has ID 0: %+v", fam)
	}
}

func TestIPVSServiceInNamespace(t *testing.T) {
	guest(t)
	newNS(t, "smoke-ipvs")
	// IPVS refuses (EINVAL) a real server whose address is not routable in
	// the namespace, so give it a route as a node would have.
	sh(t, "ip", "-n", "smoke-ipvs", "link", "add", "pods", "type", "dummy")
	sh(t, "ip", "-n", "smoke-ipvs", "addr", "add", "203.0.113.1/24", "dev", "pods")
	sh(t, "ip", "-n", "smoke-ipvs", "link", "set", "pods", "up")
	h, err := ipvs.New("/run/netns/smoke-ipvs")
	if err != nil {
		t.Fatalf("ipvs handle: %v", err)
	}
	defer h.Close()
	svc := &ipvs.Service{Address: vip, Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "rr", AddressFamily: unix.AF_INET, Netmask: 0xffffffff}
	if err := h.NewService(svc); err != nil {
		t.Fatalf("create virtual server: %v", err)
	}
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatalf("list virtual servers: %v", err)
	}
	if len(svcs) != 1 || !svcs[0].Address.Equal(vip) || svcs[0].Port != 80 || svcs[0].SchedName != "rr" {
		t.Fatalf("virtual servers read back = %+v, want one %s:80 rr", svcs, vip)
	}
	dst := &ipvs.Destination{Address: rip, Port: 8080, Weight: 1, ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: unix.AF_INET}
	if err := h.NewDestination(svc, dst); err != nil {
		t.Fatalf("add real server: %v", err)
	}
	dsts, err := h.GetDestinations(svc)
	if err != nil {
		t.Fatalf("list real servers: %v", err)
	}
	if len(dsts) != 1 || !dsts[0].Address.Equal(rip) || dsts[0].Port != 8080 || dsts[0].Weight != 1 {
		t.Fatalf("real servers read back = %+v, want one %s:8080 weight 1", dsts, rip)
	}
	// The tool must agree, and the VM's own namespace must stay untouched.
	if out := sh(t, "ip", "netns", "exec", "smoke-ipvs", "ipvsadm", "-Ln"); !strings.Contains(out, "203.0.113.2:8080") {
		t.Fatalf("ipvsadm -Ln in the namespace misses the real server:\n%s", out)
	}
	if out := sh(t, "ipvsadm", "-Ln"); strings.Contains(out, "198.51.100.10") {
		t.Fatalf("virtual server leaked into the VM's root namespace:\n%s", out)
	}
}

func TestDummyLinkInNamespace(t *testing.T) {
	guest(t)
	ns := newNS(t, "smoke-dummy")
	// NETLINK_ROUTE only: the default families also open an XFRM socket.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "kube-ipvs0"}}); err != nil {
		t.Fatalf("add dummy link: %v", err)
	}
	link, err := h.LinkByName("kube-ipvs0")
	if err != nil {
		t.Fatalf("read dummy link back: %v", err)
	}
	if link.Type() != "dummy" {
		t.Fatalf("kube-ipvs0 has type %q, want dummy", link.Type())
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: vip, Mask: net.CIDRMask(32, 32)}}
	if err := h.AddrAdd(link, addr); err != nil {
		t.Fatalf("add address to dummy link: %v", err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || !addrs[0].IP.Equal(vip) {
		t.Fatalf("addresses on kube-ipvs0 = %v (%v), want %s", addrs, err, vip)
	}
}

func TestIPSetInNamespace(t *testing.T) {
	guest(t)
	newNS(t, "smoke-ipset")
	ipset := func(args ...string) string {
		return sh(t, "ip", append([]string{"netns", "exec", "smoke-ipset", "ipset"}, args...)...)
	}
	ipset("create", "KUBE-CLUSTER-IP", "hash:ip,port", "family", "inet", "hashsize", "1024", "maxelem", "65536")
	ipset("create", "KUBE-NODE-PORT-TCP", "bitmap:port", "range", "0-65535")
	ipset("add", "KUBE-CLUSTER-IP", "198.51.100.10,tcp:80")
	ipset("test", "KUBE-CLUSTER-IP", "198.51.100.10,tcp:80") // judged by exit code
	if err := exec.Command("ip", "netns", "exec", "smoke-ipset", "ipset", "test", "KUBE-CLUSTER-IP", "198.51.100.11,tcp:80").Run(); err == nil {
		t.Fatalf("ipset test of an absent entry succeeded")
	}
	if out := ipset("list", "-n"); !strings.Contains(out, "KUBE-CLUSTER-IP") || !strings.Contains(out, "KUBE-NODE-PORT-TCP") {
		t.Fatalf("ipset list -n = %q, want both sets", out)
	}
	if out := sh(t, "ipset", "list", "-n"); strings.Contains(out, "KUBE-") {
		t.Fatalf("ipset leaked into the VM's root namespace: %q", out)
	}
}

// kube-proxy's rules use these matches and targets; each backend must accept
// them and show them back.
func TestIptablesBackends(t *testing.T) {
	guest(t)
	newNS(t, "smoke-ipt")
	sh(t, "ip", "netns", "exec", "smoke-ipt", "ipset", "create", "KUBE-LOOP-BACK", "hash:ip,port,ip")
	rules := [][]string{
		{"-t", "nat", "-N", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "KUBE-SERVICES", "-m", "comment", "--comment", "ns/svc:http", "-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "RETURN"},
		{"-t", "nat", "-A", "KUBE-SERVICES", "-p", "tcp", "-m", "multiport", "--dports", "80,443", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DNAT", "--to-destination", "203.0.113.2:8080"},
		{"-t", "nat", "-A", "KUBE-SERVICES", "-m", "recent", "--name", "aff", "--rcheck", "--seconds", "10", "--reap", "-j", "RETURN"},
		{"-t", "nat", "-A", "KUBE-SERVICES", "-m", "set", "--match-set", "KUBE-LOOP-BACK", "dst,dst,src", "-j", "MARK", "--set-xmark", "0x4000/0x4000"},
		{"-t", "nat", "-A", "POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE", "--random-fully"},
		{"-t", "filter", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"},
		{"-t", "filter", "-A", "INPUT", "-p", "tcp", "-d", "198.51.100.10", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"},
		{"-t", "filter", "-A", "FORWARD", "-m", "physdev", "--physdev-is-bridged", "-j", "ACCEPT"},
	}
	for _, backend := range []string{"legacy", "nft"} {
		t.Run(backend, func(t *testing.T) {
			ipt := "iptables-" + backend
			for _, r := range rules {
				sh(t, "ip", append([]string{"netns", "exec", "smoke-ipt", ipt}, r...)...)
			}
			saved := sh(t, "ip", "netns", "exec", "smoke-ipt", ipt+"-save")
			for _, want := range []string{"--probability 0.5", "--to-destination 203.0.113.2:8080", "--match-set KUBE-LOOP-BACK dst,dst,src", "MASQUERADE --random-fully", "--reject-with icmp-port-unreachable", "--rcheck --seconds 10"} {
				if !strings.Contains(saved, want) {
					t.Errorf("%s-save misses %q:\n%s", ipt, want, saved)
				}
			}
			ip6t := "ip6tables-" + backend
			sh(t, "ip", "netns", "exec", "smoke-ipt", ip6t, "-t", "nat", "-N", "KUBE-SERVICES")
			sh(t, "ip", "netns", "exec", "smoke-ipt", ip6t, "-A", "INPUT", "-p", "tcp", "-d", "2001:db8:5::10", "-j", "REJECT")
			if saved := sh(t, "ip", "netns", "exec", "smoke-ipt", ip6t+"-save"); !strings.Contains(saved, "2001:db8:5::10/128") {
				t.Errorf("%s-save misses the IPv6 rule:\n%s", ip6t, saved)
			}
		})
	}
}
