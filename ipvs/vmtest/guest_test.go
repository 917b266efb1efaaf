package vmtest

import (
	"errors"
	"flag"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/e2e/vm"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/sysctl"
)

var scale = flag.String("scale", "", "comma-separated service counts to measure (e.g. 1000,10000)")

func guestOnly(t *testing.T) {
	t.Helper()
	if !vm.InGuest() {
		t.Skip("runs inside the test VM (see TestVM)")
	}
}

// node is a node namespace with the real kernel layer.
type node struct {
	name   string
	kernel ipvs.Kernel
}

func newNode(t *testing.T, name string) *node {
	t.Helper()
	path := addNetNS(t, name)
	sh(t, name, "ip link add eth0 type dummy")
	sh(t, name, "ip addr add 192.0.2.11/24 dev eth0")
	sh(t, name, "ip link set eth0 up")
	sh(t, name, "ip route add default dev eth0")
	k := ipvs.Kernel{Family: v1.IPv4Protocol}
	var err error
	if k.IPVS, err = ipvs.NewIPVSKernel(path); err != nil {
		t.Fatal(err)
	}
	if k.Links, err = ipvs.NewLinks(path); err != nil {
		t.Fatal(err)
	}
	if k.IPSets, err = ipvs.NewIPSets(path); err != nil {
		t.Fatal(err)
	}
	if k.IPTables, err = iptables.NewKernel(v1.IPv4Protocol, iptables.Legacy, iptables.WithNetNS(name)); err != nil {
		t.Fatal(err)
	}
	return &node{name: name, kernel: k}
}

func (n *node) setup(t *testing.T, opts ipvs.Options) {
	t.Helper()
	if err := ipvs.CanUseIPVS("/run/netns/"+n.name, opts.Scheduler); err != nil {
		t.Fatal(err)
	}
	// /proc/sys/net belongs to the namespace of the thread opening it.
	if err := inNS(n.name, func() error { return ipvs.Setup(n.kernel.IPVS, sysctl.New(), opts) }); err != nil {
		t.Fatal(err)
	}
}

type svcDef struct {
	name      string
	ip        string
	port      int32
	proto     v1.Protocol
	endpoints []string // ip:port
}

func snapshotOf(defs ...svcDef) *proxier.Snapshot {
	snap := &proxier.Snapshot{
		Family:    v1.IPv4Protocol,
		Services:  map[proxier.ServicePortName]*proxier.ServicePort{},
		Endpoints: map[proxier.ServicePortName][]*proxier.Endpoint{},
		Node:      proxier.Node{Name: "node1", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.11")}, Eligible: true},
		Changed:   sets.New[proxier.ServicePortName](),
	}
	for _, d := range defs {
		name := proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "vm", Name: d.name}, Port: "p", Protocol: d.proto}
		snap.Services[name] = &proxier.ServicePort{Name: name, ClusterIP: netip.MustParseAddr(d.ip), Port: d.port, Protocol: d.proto}
		for _, e := range d.endpoints {
			ap := netip.MustParseAddrPort(e)
			snap.Endpoints[name] = append(snap.Endpoints[name], &proxier.Endpoint{
				IP: ap.Addr(), Port: int32(ap.Port()), Ready: true, Serving: true, NodeName: "node1", IsLocal: true})
		}
	}
	return snap
}

func sync(t *testing.T, p *ipvs.Proxier, snap *proxier.Snapshot) ipvs.SyncStats {
	t.Helper()
	if _, err := p.Sync(snap); err != nil {
		t.Fatalf("sync: %v", err)
	}
	st := p.LastSync()
	t.Logf("sync: full=%v reads=%d writes=%d ensures=%d in %v (build %v)", st.Full, st.Calls.Reads, st.Calls.Writes, st.Calls.Ensures, st.Duration, st.Build)
	return st
}

func TestGuestTraffic(t *testing.T) {
	guestOnly(t)
	n := newNode(t, "node")
	addPod(t, "node", "pod1", "203.0.113.1")
	addPod(t, "node", "pod2", "203.0.113.2")
	addPod(t, "node", "client", "203.0.113.3")
	serveEcho(t, "pod1", ":8080", "pod1")
	serveEcho(t, "pod2", ":8080", "pod2")
	opts := ipvs.DefaultOptions()
	opts.TCPFinTimeout = 2 * time.Second
	opts.GraceCheckPeriod = time.Second
	n.setup(t, opts)
	p := ipvs.NewProxier(n.kernel, opts, nil)
	t.Cleanup(func() {
		if err := ipvs.Cleanup(n.kernel, opts); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	both := []string{"203.0.113.1:8080", "203.0.113.2:8080"}
	snap := snapshotOf(
		svcDef{"web", "198.51.100.10", 80, v1.ProtocolTCP, both},
		svcDef{"dns", "198.51.100.11", 53, v1.ProtocolUDP, both},
		svcDef{"empty", "198.51.100.12", 80, v1.ProtocolTCP, nil},
		// Only the graceful-termination test uses "long": its real servers
		// carry no TIME_WAIT connections of other tests.
		svcDef{"long", "198.51.100.13", 80, v1.ProtocolTCP, both},
	)
	sync(t, p, snap)

	t.Run("TCP and UDP reach both pods", func(t *testing.T) {
		for _, c := range []struct{ network, addr string }{{"tcp", "198.51.100.10:80"}, {"udp", "198.51.100.11:53"}} {
			got := hits("client", c.network, c.addr, 40)
			if got["pod1"] < 10 || got["pod2"] < 10 || got["error"] > 0 {
				t.Errorf("%s %s: %v", c.network, c.addr, got)
			}
		}
	})
	t.Run("service without endpoints is refused", func(t *testing.T) {
		start := time.Now()
		_, err := dial("client", "tcp", "198.51.100.12:80")
		if err == nil || !strings.Contains(err.Error(), "refused") || time.Since(start) > time.Second {
			t.Errorf("dial: %v after %v", err, time.Since(start))
		}
	})
	t.Run("kube-ipvs0 address on a non-service port is rejected", func(t *testing.T) {
		if _, err := dial("client", "tcp", "198.51.100.10:22"); err == nil {
			t.Error("connected")
		}
	})
	t.Run("reads back what it wrote", func(t *testing.T) {
		if st := sync(t, p, snap); st.Calls.Total() != 0 {
			t.Errorf("no-op sync made %d calls", st.Calls.Total())
		}
		p.ForceFullSync()
		st := sync(t, p, snap)
		// Ensures (dummy link, iptables restore and jumps) are rewrites
		// of the same content; IPVS, ipsets and addresses are diffed.
		if st.Calls.Writes != 0 || st.Calls.Reads == 0 {
			t.Errorf("full re-read: %+v", st.Calls)
		}
	})
	t.Run("one-endpoint change", func(t *testing.T) {
		one := snapshotOf(
			svcDef{"web", "198.51.100.10", 80, v1.ProtocolTCP, both},
			svcDef{"dns", "198.51.100.11", 53, v1.ProtocolUDP, both[:1]},
			svcDef{"empty", "198.51.100.12", 80, v1.ProtocolTCP, nil},
			svcDef{"long", "198.51.100.13", 80, v1.ProtocolTCP, both},
		)
		st := sync(t, p, one)
		// One netlink delete (UDP needs no grace) and one ipset restore
		// for the hairpin member.
		if st.Calls.Writes != 2 || st.Calls.Reads != 0 {
			t.Errorf("calls %+v", st.Calls)
		}
		if got := hits("client", "udp", "198.51.100.11:53", 10); got["pod1"] != 10 {
			t.Errorf("after removing pod2: %v", got)
		}
		sync(t, p, snap)
	})
	t.Run("graceful termination keeps a long TCP connection", func(t *testing.T) {
		c, err := dial("client", "tcp", "198.51.100.13:80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		who, err := ask(c)
		if err != nil {
			t.Fatal(err)
		}
		other, keep := "203.0.113.2:8080", "pod2"
		if who == "pod2" {
			other, keep = "203.0.113.1:8080", "pod1"
		}
		gone := snapshotOf(
			svcDef{"web", "198.51.100.10", 80, v1.ProtocolTCP, both},
			svcDef{"dns", "198.51.100.11", 53, v1.ProtocolUDP, both},
			svcDef{"empty", "198.51.100.12", 80, v1.ProtocolTCP, nil},
			svcDef{"long", "198.51.100.13", 80, v1.ProtocolTCP, []string{other}},
		)
		st := sync(t, p, gone)
		// One netlink call: the hairpin member is shared with "web".
		if st.Calls.Writes != 1 || st.Terminating != 1 {
			t.Errorf("quiesce: %+v, terminating %d", st.Calls, st.Terminating)
		}
		for i := range 5 {
			time.Sleep(1100 * time.Millisecond)
			sync(t, p, gone) // graceful checks run; the connection is active
			if got, err := ask(c); err != nil || got != who {
				t.Fatalf("long connection, round %d: %q %v", i, got, err)
			}
		}
		if got := hits("client", "tcp", "198.51.100.13:80", 10); got[keep] != 10 {
			t.Errorf("new connections during termination: %v", got)
		}
		if p.LastSync().Terminating != 1 {
			t.Fatalf("terminated with an open connection")
		}
		// Reset rather than close: IPVS keeps a closed connection in
		// TIME_WAIT for 2 minutes but a reset one only 10 s (CLOSE).
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		deadline := time.Now().Add(40 * time.Second)
		for p.LastSync().Terminating != 0 {
			if time.Now().After(deadline) {
				t.Fatal("real server not deleted after its connection closed")
			}
			time.Sleep(time.Second)
			sync(t, p, gone)
		}
		rss, err := n.kernel.IPVS.ListRealServers(ipvs.VSKey{Address: netip.MustParseAddr("198.51.100.13"), Protocol: v1.ProtocolTCP, Port: 80})
		if err != nil || len(rss) != 1 || rss[0].Addr.String() != other {
			t.Errorf("real servers %v %v", rss, err)
		}
	})
	t.Run("cleanup", func(t *testing.T) {
		for range 2 {
			if err := ipvs.Cleanup(n.kernel, opts); err != nil {
				t.Fatal(err)
			}
		}
		vss, err := n.kernel.IPVS.ListVirtualServers()
		if err != nil || len(vss) != 0 {
			t.Errorf("virtual servers left: %v %v", vss, err)
		}
		sets, err := n.kernel.IPSets.List()
		if err != nil || len(sets) != 0 {
			t.Errorf("ipsets left: %v %v", sets, err)
		}
		if addrs, _ := n.kernel.Links.ListAddresses(ipvs.DummyDevice, v1.IPv4Protocol); len(addrs) != 0 {
			t.Errorf("kube-ipvs0 left with %v", addrs)
		}
	})
}

func TestGuestCanUseIPVS(t *testing.T) {
	guestOnly(t)
	addNetNS(t, "probe")
	if err := ipvs.CanUseIPVS("/run/netns/probe", "rr"); err != nil {
		t.Errorf("rr: %v", err)
	}
	err := ipvs.CanUseIPVS("/run/netns/probe", "nosuch")
	if err == nil || !strings.Contains(err.Error(), `scheduler "nosuch" is not available`) {
		t.Errorf("unknown scheduler: %v", err)
	}
	if errors.Is(err, ipvs.ErrNoIPVS) {
		t.Error("IPVS reported missing")
	}
}
