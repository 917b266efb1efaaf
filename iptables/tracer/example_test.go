package tracer_test

import (
	"fmt"
	"net/netip"

	"github.com/svcproxy/svcproxy/iptables/tracer"
)

func ExampleTrace() {
	save := []byte(`*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment "ns1/svc1:http cluster IP" -p tcp -d 198.51.100.10/32 --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 203.0.113.11:8080
-A KUBE-SVC-A -j DNAT --to-destination 203.0.113.70:8080
COMMIT
`)
	r, err := tracer.Trace(save, []netip.Addr{netip.MustParseAddr("192.0.2.11")}, tracer.Packet{
		Src: netip.MustParseAddr("203.0.113.5"), SrcPort: 40000,
		Dst: netip.MustParseAddr("198.51.100.10"), DstPort: 80,
		Protocol: "tcp", InInterface: "cbr0",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.Verdict)
	for _, e := range r.Endpoints {
		fmt.Printf("%s %.2f\n", e.Addr, e.Probability)
	}
	for _, s := range r.Path {
		fmt.Println(s)
	}
	// Output:
	// DNAT
	// 203.0.113.11:8080 0.50
	// 203.0.113.70:8080 0.50
	// nat/PREROUTING#1 -A PREROUTING -j KUBE-SERVICES
	// nat/KUBE-SERVICES#1 -A KUBE-SERVICES -m comment --comment "ns1/svc1:http cluster IP" -p tcp -d 198.51.100.10/32 --dport 80 -j KUBE-SVC-A
	// nat/KUBE-SVC-A#1 -A KUBE-SVC-A -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 203.0.113.11:8080
}
