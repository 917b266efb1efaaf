package ipvs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
)

func mustNPA(t *testing.T, family v1.IPFamily, values ...string) *proxier.NodePortAddresses {
	t.Helper()
	npa, err := proxier.NewNodePortAddresses(family, values, node1IP)
	if err != nil {
		t.Fatal(err)
	}
	return npa
}

func eq[T comparable](t *testing.T, what string, got, want []T) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
}

func TestBuild(t *testing.T) {
	web := func(opts ...svcOpt) *proxier.ServicePort {
		return svc("ns/web", append([]svcOpt{clusterIP("198.51.100.10")}, opts...)...)
	}
	tcp := v1.ProtocolTCP
	cases := []struct {
		name  string
		snap  *proxier.Snapshot
		opts  func(*Options)
		check func(t *testing.T, ds *DesiredState)
	}{{
		name: "cluster IP with two endpoints",
		snap: snapshot(web(), ep("203.0.113.1:8080"), ep("203.0.113.70:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			key := vsKey("198.51.100.10:80", tcp)
			vs := ds.VirtualServers[key]
			if vs == nil || vs.Scheduler != "rr" || vs.Flags != 0 || vs.Timeout != 0 {
				t.Fatalf("virtual server %+v", vs)
			}
			eq(t, "real servers", realServers(ds, key), []string{"203.0.113.1:8080", "203.0.113.70:8080"})
			eq(t, "addresses", addrList(ds), []string{"198.51.100.10"})
			eq(t, "cluster ip set", members(ds, SetClusterIP), []string{"198.51.100.10,tcp:80"})
			eq(t, "ipvs ips", members(ds, SetIPVSIPs), []string{"198.51.100.10"})
			eq(t, "loopback", members(ds, SetLoopBack), []string{"203.0.113.1,tcp:8080,203.0.113.1", "203.0.113.70,tcp:8080,203.0.113.70"})
			if len(ds.VirtualServers) != 1 || len(ds.IPSets) != len(setInfo) {
				t.Errorf("%d virtual servers, %d ipsets", len(ds.VirtualServers), len(ds.IPSets))
			}
		},
	}, {
		name: "no endpoints keeps an empty virtual server (ICMP unreachable, as REJECT)",
		snap: snapshot(web()),
		check: func(t *testing.T, ds *DesiredState) {
			if vs := ds.VirtualServers[vsKey("198.51.100.10:80", tcp)]; vs == nil || len(vs.RealServers) != 0 {
				t.Errorf("virtual server %+v", vs)
			}
		},
	}, {
		name: "mh scheduler sets the source-hash flag",
		snap: snapshot(web(), ep("203.0.113.1:8080")),
		opts: func(o *Options) { o.Scheduler = "mh" },
		check: func(t *testing.T, ds *DesiredState) {
			vs := ds.VirtualServers[vsKey("198.51.100.10:80", tcp)]
			if vs.Scheduler != "mh" || vs.Flags != FlagSourceHash {
				t.Errorf("got %s flags %#x", vs.Scheduler, vs.Flags)
			}
		},
	}, {
		name: "ClientIP affinity is persistence with the service timeout",
		snap: snapshot(web(affinity(10800)), ep("203.0.113.1:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			vs := ds.VirtualServers[vsKey("198.51.100.10:80", tcp)]
			if vs.Flags != FlagPersistent || vs.Timeout != 10800 {
				t.Errorf("flags %#x timeout %d", vs.Flags, vs.Timeout)
			}
		},
	}, {
		name: "external IPs: bound unless already local, masquerade set by policy",
		snap: snapshot(web(externalIPs("203.0.113.200", "198.18.0.15")), ep("203.0.113.1:8080"),
			svc("ns/local", clusterIP("198.51.100.11"), externalIPs("203.0.113.201"), etpLocal(0)), ep("203.0.113.2:8080", local())),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "addresses", addrList(ds), []string{"198.51.100.10", "198.51.100.11", "203.0.113.200", "203.0.113.201"})
			eq(t, "external", members(ds, SetExternalIP), []string{"198.18.0.15,tcp:80", "203.0.113.200,tcp:80"})
			eq(t, "external local", members(ds, SetExternalIPLocal), []string{"203.0.113.201,tcp:80"})
			eq(t, "ext vs", realServers(ds, vsKey("198.18.0.15:80", tcp)), []string{"203.0.113.1:8080"})
			eq(t, "local vs", realServers(ds, vsKey("203.0.113.201:80", tcp)), []string{"203.0.113.2:8080"})
		},
	}, {
		name: "load balancer with source ranges that include the node",
		snap: snapshot(web(lbIPs("203.0.113.210"), sourceRanges("192.0.2.0/24", "198.51.100.77/32")), ep("203.0.113.1:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "lb", members(ds, SetLoadBalancer), []string{"203.0.113.210,tcp:80"})
			eq(t, "fw", members(ds, SetLoadBalancerFW), []string{"203.0.113.210,tcp:80"})
			eq(t, "cidr", members(ds, SetLoadBalancerSourceCIDR), []string{"203.0.113.210,tcp:80,192.0.2.0/24", "203.0.113.210,tcp:80,198.51.100.77"})
			eq(t, "source ip", members(ds, SetLoadBalancerSourceIP), []string{"203.0.113.210,tcp:80,203.0.113.210"})
			if strings.Contains(string(ds.IPTables), "--vaddr") {
				t.Error("node may use this LB, yet an out-filter rule blocks it")
			}
			eq(t, "lb vs", realServers(ds, vsKey("203.0.113.210:80", tcp)), []string{"203.0.113.1:8080"})
		},
	}, {
		name: "load balancer with source ranges excluding the node",
		snap: snapshot(web(lbIPs("203.0.113.210"), sourceRanges("192.0.2.101/32")), ep("203.0.113.1:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "source ip", members(ds, SetLoadBalancerSourceIP), nil)
			want := "-A KUBE-IPVS-OUT-FILTER -s 203.0.113.210 -m ipvs --vaddr 203.0.113.210 --vproto tcp --vport 80 -j DROP"
			if !strings.Contains(string(ds.IPTables), want) {
				t.Errorf("missing %q", want)
			}
		},
	}, {
		// Found by FuzzIPVS: ipset refuses a zero prefix length in hash:ip,port,net,
		// so a 0.0.0.0/0 member failed every ipset restore.
		name: "load balancer with a /0 source range is not filtered",
		snap: snapshot(web(lbIPs("203.0.113.210"), sourceRanges("192.0.2.101/32", "0.0.0.0/0")), ep("203.0.113.1:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "lb", members(ds, SetLoadBalancer), []string{"203.0.113.210,tcp:80"})
			eq(t, "fw", members(ds, SetLoadBalancerFW), nil)
			eq(t, "cidr", members(ds, SetLoadBalancerSourceCIDR), nil)
			eq(t, "source ip", members(ds, SetLoadBalancerSourceIP), nil)
			if strings.Contains(string(ds.IPTables), "--vaddr") {
				t.Error("everyone may use this LB, yet an out-filter rule blocks the node")
			}
		},
	}, {
		name: "NodePort on every non-loopback node address",
		snap: snapshot(web(nodePort(30080)), ep("203.0.113.1:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "tcp ports", members(ds, SetNodePortTCP), []string{"30080"})
			eq(t, "node ip vs", realServers(ds, vsKey("192.0.2.11:30080", tcp)), []string{"203.0.113.1:8080"})
			eq(t, "second ip vs", realServers(ds, vsKey("198.18.0.15:30080", tcp)), []string{"203.0.113.1:8080"})
			if ds.VirtualServers[vsKey("127.0.0.1:30080", tcp)] != nil {
				t.Error("NodePort on loopback")
			}
			if ds.Addresses.Has(node1IP) {
				t.Error("node IP bound to kube-ipvs0")
			}
		},
	}, {
		name: "NodePort only on nodePortAddresses",
		snap: snapshot(web(nodePort(30080), proto(v1.ProtocolSCTP)), ep("203.0.113.1:8080")),
		opts: func(o *Options) { o.NodePortAddresses = mustNPA(t, v1.IPv4Protocol, "192.0.2.0/24", "127.0.0.0/8") },
		check: func(t *testing.T, ds *DesiredState) {
			if len(ds.VirtualServers) != 2 || ds.VirtualServers[vsKey("192.0.2.11:30080", v1.ProtocolSCTP)] == nil {
				t.Errorf("virtual servers %v", ds.VirtualServers)
			}
			eq(t, "sctp set", members(ds, SetNodePortSCTP), []string{"192.0.2.11,sctp:30080"})
		},
	}, {
		name: "eTP=Local with local endpoints: external traffic to them, cluster IP to all",
		snap: snapshot(web(nodePort(30080), lbIPs("203.0.113.210"), etpLocal(31000)),
			ep("203.0.113.1:8080", local()), ep("203.0.113.70:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "cluster", realServers(ds, vsKey("198.51.100.10:80", tcp)), []string{"203.0.113.1:8080", "203.0.113.70:8080"})
			eq(t, "nodeport", realServers(ds, vsKey("192.0.2.11:30080", tcp)), []string{"203.0.113.1:8080"})
			eq(t, "lb", realServers(ds, vsKey("203.0.113.210:80", tcp)), []string{"203.0.113.1:8080"})
			eq(t, "local nodeports", members(ds, SetNodePortLocalTCP), []string{"30080"})
			eq(t, "lb local", members(ds, SetLoadBalancerLocal), []string{"203.0.113.210,tcp:80"})
			eq(t, "health check", members(ds, SetHealthCheckNodePort), []string{"31000"})
			eq(t, "no local", members(ds, SetNoLocalEndpoints), nil)
			if ds.NoLocalEndpoints["external"] != 0 {
				t.Error("counted as no local endpoints")
			}
		},
	}, {
		name: "eTP=Local without local endpoints: cluster fallback, external traffic dropped",
		snap: snapshot(web(nodePort(30080), lbIPs("203.0.113.210"), externalIPs("203.0.113.200"), etpLocal(31000)), ep("203.0.113.70:8080")),
		opts: func(o *Options) {
			o.LocalDetector = iptables.LocalDetectorByCIDR(netip.MustParsePrefix("203.0.113.0/25"))
		},
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "nodeport", realServers(ds, vsKey("192.0.2.11:30080", tcp)), []string{"203.0.113.70:8080"})
			eq(t, "no local", members(ds, SetNoLocalEndpoints), []string{
				"192.0.2.11,tcp:30080", "198.18.0.15,tcp:30080", "203.0.113.200,tcp:80", "203.0.113.210,tcp:80"})
			if ds.NoLocalEndpoints["external"] != 1 {
				t.Errorf("no local endpoints %v", ds.NoLocalEndpoints)
			}
			want := `-A KUBE-PROXY-FIREWALL -m comment --comment "` + noLocalEndpointsSetComment +
				`" -m set --match-set KUBE-NO-LOCAL-EXTERNAL dst,dst ! -s 203.0.113.0/25 -m addrtype ! --src-type LOCAL -m conntrack --ctstate NEW -j DROP`
			if !strings.Contains(string(ds.IPTables), want) {
				t.Errorf("missing %s in\n%s", want, ds.IPTables)
			}
		},
	}, {
		name: "iTP=Local: local endpoints, else cluster fallback when externally reachable",
		snap: snapshot(web(itpLocal()), ep("203.0.113.1:8080", local()), ep("203.0.113.70:8080"),
			svc("ns/ext", clusterIP("198.51.100.11"), itpLocal(), nodePort(30081)), ep("203.0.113.71:8080"),
			svc("ns/none", clusterIP("198.51.100.12"), itpLocal()), ep("203.0.113.72:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "local", realServers(ds, vsKey("198.51.100.10:80", tcp)), []string{"203.0.113.1:8080"})
			eq(t, "fallback", realServers(ds, vsKey("198.51.100.11:80", tcp)), []string{"203.0.113.71:8080"})
			eq(t, "no cluster endpoints", realServers(ds, vsKey("198.51.100.12:80", tcp)), nil)
			if ds.NoLocalEndpoints["internal"] != 2 {
				t.Errorf("no local endpoints %v", ds.NoLocalEndpoints)
			}
		},
	}, {
		name: "only terminating endpoints serve",
		snap: snapshot(web(), ep("203.0.113.1:8080", terminating()), ep("203.0.113.2:8080", func(e *proxier.Endpoint) { e.Ready, e.Serving = false, false })),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "rs", realServers(ds, vsKey("198.51.100.10:80", tcp)), []string{"203.0.113.1:8080"})
		},
	}, {
		name: "duplicate address:port goes to the first service by name",
		snap: snapshot(svc("ns/b", clusterIP("198.51.100.11"), externalIPs("203.0.113.200")), ep("203.0.113.2:8080"),
			svc("ns/a", clusterIP("198.51.100.10"), externalIPs("203.0.113.200")), ep("203.0.113.1:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			eq(t, "rs", realServers(ds, vsKey("203.0.113.200:80", tcp)), []string{"203.0.113.1:8080"})
		},
	}, {
		name: "IPv6 uses KUBE-6- sets and never link-local NodePorts",
		snap: snapshot(svc("ns/v6", clusterIP("2001:db8:5::10"), nodePort(30080)), ep("[2001:db8:1::5]:8080")),
		check: func(t *testing.T, ds *DesiredState) {
			if ds.IPSets["KUBE-6-CLUSTER-IP"] == nil || ds.IPSets["KUBE-6-LOAD-BALANCER-SOURCE-CID"] == nil {
				t.Fatalf("sets %v", sets.KeySet(ds.IPSets))
			}
			eq(t, "cluster", members(ds, SetClusterIP), []string{"2001:db8:5::10,tcp:80"})
			if len(ds.VirtualServers) != 2 || ds.VirtualServers[vsKey("[2001:db8:2::11]:30080", tcp)] == nil {
				t.Errorf("virtual servers %v", ds.VirtualServers)
			}
			if !strings.Contains(string(ds.IPTables), "-A KUBE-SERVICES -s ::1/128 -j RETURN") {
				t.Error("no IPv6 loopback rule")
			}
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := DefaultOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			addrs := nodeAddrs
			if tc.snap.Family == v1.IPv6Protocol {
				addrs = nodeAddrs6
			}
			tc.check(t, Build(tc.snap, addrs, opts))
		})
	}
}

func TestSetName(t *testing.T) {
	for base, want := range map[string]string{
		SetClusterIP:                   "KUBE-6-CLUSTER-IP",
		SetLoadBalancerSourceCIDR:      "KUBE-6-LOAD-BALANCER-SOURCE-CID",
		SetNodePortLocalSCTP:           "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS",
		"OTHER":                        "OTHER",
		"KUBE-LOAD-BALANCER-SOURCE-IP": "KUBE-6-LOAD-BALANCER-SOURCE-IP",
	} {
		if got := SetName(base, v1.IPv6Protocol); got != want {
			t.Errorf("SetName(%s) = %s, want %s", base, got, want)
		}
		if got := SetName(base, v1.IPv4Protocol); got != base {
			t.Errorf("IPv4 SetName(%s) = %s", base, got)
		}
	}
}

func addrList(ds *DesiredState) []string {
	var out []string
	for a := range ds.Addresses {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}
