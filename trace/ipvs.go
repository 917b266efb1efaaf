package trace

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables/dump"
	"github.com/svcproxy/svcproxy/iptables/tracer"
	"github.com/svcproxy/svcproxy/ipvs"
)

// IPVSState is what decides a packet's fate on an IPVS-mode node, as read
// from the kernel (live.go) or rendered (render package). Its JSON form is
// what `svcproxy render --proxy-mode ipvs --format state` prints and
// `svcproxy trace --mode ipvs --rules FILE` reads.
type IPVSState struct {
	Family         v1.IPFamily         `json:"family"`
	VirtualServers []IPVSVirtualServer `json:"virtualServers"`
	// IPSets maps each set's name to its members (`ipset save` form).
	IPSets map[string][]string `json:"ipsets"`
	// DummyAddresses are the addresses on kube-ipvs0; LocalAddresses the
	// node's other addresses. Both are local to the node.
	DummyAddresses []netip.Addr `json:"dummyAddresses"`
	LocalAddresses []netip.Addr `json:"localAddresses"`
	// IPTables is iptables-save text of nat, filter (and mangle).
	IPTables string `json:"iptables"`
}

// IPVSVirtualServer is an IPVS service with its destinations.
type IPVSVirtualServer struct {
	Address     netip.Addr       `json:"address"`
	Protocol    string           `json:"protocol"` // TCP, UDP or SCTP
	Port        uint16           `json:"port"`
	Scheduler   string           `json:"scheduler"`
	Persistent  bool             `json:"persistent"`
	Timeout     uint32           `json:"timeout,omitempty"`
	RealServers []IPVSRealServer `json:"realServers"`
}

// IPVSRealServer is a destination of a virtual server.
type IPVSRealServer struct {
	Address netip.AddrPort `json:"address"`
	Weight  int            `json:"weight"`
}

// Key is "ip:port/PROTO", as ipvs.VSKey prints it.
func (vs *IPVSVirtualServer) Key() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(vs.Address, vs.Port), vs.Protocol)
}

// NewIPVSVirtualServer converts the ipvs package's types.
func NewIPVSVirtualServer(vs ipvs.VirtualServer, rss []ipvs.RealServer) IPVSVirtualServer {
	out := IPVSVirtualServer{
		Address: vs.Address, Protocol: string(vs.Protocol), Port: vs.Port, Scheduler: vs.Scheduler,
		Persistent: vs.Flags&ipvs.FlagPersistent != 0, Timeout: vs.Timeout, RealServers: []IPVSRealServer{},
	}
	for _, rs := range rss {
		out.RealServers = append(out.RealServers, IPVSRealServer{Address: rs.Addr, Weight: rs.Weight})
	}
	slices.SortFunc(out.RealServers, func(a, b IPVSRealServer) int { return a.Address.Compare(b.Address) })
	return out
}

// IPVS traces packets on an IPVS-mode node. A packet first goes through
// the iptables rules (with ipset matches expanded, see expandIPVSRules) up
// to the node's INPUT (or, sent by the node, through OUTPUT): that decides
// firewalling and the masquerade mark. If it is still alive and its
// destination is a virtual server, IPVS sends it to a real server: each
// with weight > 0 gets weight/sum of new connections (the schedulers'
// long-run split). It is masqueraded if it was marked, or if it goes back
// to the pod that sent it (KUBE-LOOP-BACK).
type IPVS struct {
	state *IPVSState
	ipt   *tracer.Tracer
	vs    map[string]*IPVSVirtualServer
}

var _ Tracer = (*IPVS)(nil)

// NewIPVS returns a tracer over state.
func NewIPVS(state *IPVSState) (*IPVS, error) {
	d, err := dump.Parse([]byte(state.IPTables))
	if err != nil {
		return nil, fmt.Errorf("parse iptables rules: %w", err)
	}
	if err := expandIPVSRules(d, state.IPSets); err != nil {
		return nil, fmt.Errorf("expand ipset matches: %w", err)
	}
	local := append(slices.Clone(state.LocalAddresses), state.DummyAddresses...)
	x := &IPVS{state: state, ipt: tracer.NewFromDump(d, local), vs: map[string]*IPVSVirtualServer{}}
	for i := range state.VirtualServers {
		vs := &state.VirtualServers[i]
		x.vs[vs.Key()] = vs
	}
	return x, nil
}

// Trace follows p; see Tracer and IPVS.
func (x *IPVS) Trace(p Packet) (*Result, error) {
	tr, err := x.ipt.Trace(tracerPacket(p))
	if err != nil {
		return nil, fmt.Errorf("trace iptables rules: %w", err)
	}
	r := fromTracer(tr, p)
	r.Mode = "ipvs"
	r.Service = ""
	r.Notes = append(r.Notes, "ipset matches are shown expanded, one rule per set member; rule numbers count the expanded rules")
	key := fmt.Sprintf("%s/%s", netip.AddrPortFrom(p.Dst, p.DstPort), strings.ToUpper(p.Protocol))
	vs := x.vs[key]
	if vs == nil {
		r.Handled = false
		r.Reason = ipvsUnhandledReason(r, key)
		return r, nil
	}
	r.VirtualServer = key
	r.Handled = true
	if tr.Verdict == tracer.Drop || tr.Verdict == tracer.Reject {
		r.Reason = fmt.Sprintf("%s before IPVS by %s", map[string]string{VerdictDrop: "dropped", VerdictReject: "rejected"}[tr.Verdict], describeStep(r.Path))
		return r, nil
	}
	if tr.Verdict != tracer.Accept {
		return nil, fmt.Errorf("iptables rules ended %s before IPVS; the IPVS tracer only handles ACCEPT, DROP or REJECT there", tr.Verdict)
	}
	x.dispatch(r, tr, vs, p)
	return r, nil
}

// dispatch applies the virtual server vs to an accepted packet.
func (x *IPVS) dispatch(r *Result, tr *tracer.Result, vs *IPVSVirtualServer, p Packet) {
	hook := "LOCAL_IN"
	if p.Origin == OriginNode {
		hook = "LOCAL_OUT"
	}
	r.Path = append(r.Path, Step{Table: "ipvs", Chain: hook, Text: fmt.Sprintf("virtual server %s %s", vs.Key(), vs.Scheduler)})
	total := 0
	for _, rs := range vs.RealServers {
		total += max(rs.Weight, 0)
	}
	if total == 0 {
		r.Verdict = VerdictReject
		r.Branches = []Branch{{Verdict: VerdictReject, Probability: 1}}
		r.Reason = fmt.Sprintf("virtual server %s has no real server with weight > 0: IPVS answers ICMP port unreachable", vs.Key())
		return
	}
	marked := tr.Masquerade || pathMarksMasq(r.Path)
	loop := x.state.IPSets[ipvs.SetName(ipvs.SetLoopBack, x.state.Family)]
	r.Verdict, r.Endpoints, r.Branches, r.Masquerade = VerdictDNAT, []Endpoint{}, []Branch{}, false
	for _, rs := range vs.RealServers {
		if rs.Weight <= 0 {
			continue
		}
		prob := roundProb(float64(rs.Weight) / float64(total))
		ep := rs.Address
		// Hairpin: a pod reaching itself through the service must be
		// masqueraded or its reply would skip IPVS.
		hairpin := ep.Addr() == p.Src && slices.Contains(loop,
			fmt.Sprintf("%s,%s:%d,%s", ep.Addr(), strings.ToLower(p.Protocol), ep.Port(), ep.Addr()))
		masq := marked || hairpin
		r.Masquerade = r.Masquerade || masq
		r.Endpoints = append(r.Endpoints, Endpoint{Endpoint: ep.String(), Probability: prob, Masquerade: masq})
		r.Branches = append(r.Branches, Branch{Verdict: VerdictDNAT, Probability: prob, Endpoint: ep.String(), Masquerade: masq})
	}
	r.Affinity = vs.Persistent
	if vs.Persistent {
		r.Notes = append(r.Notes, fmt.Sprintf("virtual server %s is persistent (timeout %ds): a returning client keeps its real server", vs.Key(), vs.Timeout))
	}
	if len(r.Endpoints) > 1 {
		r.Notes = append(r.Notes, fmt.Sprintf("scheduler %s: probabilities are its long-run split of new connections (weight/sum)", vs.Scheduler))
	}
	r.Reason = fmt.Sprintf("IPVS virtual server %s: to %s", vs.Key(), endpointCount(len(r.Endpoints)))
}

// pathMarksMasq reports whether the path jumped to KUBE-MARK-MASQ.
func pathMarksMasq(path []Step) bool {
	for _, s := range path {
		if strings.HasSuffix(s.Text, "-j "+ipvs.ChainMarkMasq) {
			return true
		}
	}
	return false
}

func ipvsUnhandledReason(r *Result, key string) string {
	switch r.Verdict {
	case VerdictDrop:
		return fmt.Sprintf("no IPVS virtual server for %s; dropped by %s", key, describeStep(r.Path))
	case VerdictReject:
		return fmt.Sprintf("no IPVS virtual server for %s; rejected by %s", key, describeStep(r.Path))
	}
	return fmt.Sprintf("not handled by svcproxy: no IPVS virtual server for %s; the packet goes on unchanged (%s)", key, strings.ToLower(r.Verdict))
}
