// Package trace answers "where does this packet go?" for a node in either
// proxy mode. A Tracer follows the first packet of a connection through the
// node's rules (iptables, or IPVS with its ipsets and iptables rules) and
// returns a mode-neutral Result: the verdict, every possible endpoint with
// its probability, masquerading, session affinity, the rules it met, and
// why. Tracers do no I/O; live.go reads a node's state for them. The JSON
// form of Result is a stable schema, documented in README.md.
package trace

import (
	"errors"
	"math"
	"net/netip"
	"regexp"
)

// Tracer follows one packet through one node's rules.
type Tracer interface {
	Trace(Packet) (*Result, error)
}

// Where a packet comes from.
const (
	// OriginExternal: it arrives on a node interface from off the node.
	OriginExternal = "external"
	// OriginPod: it comes from a pod on this node.
	OriginPod = "pod"
	// OriginNode: a process on the node sends it (host network).
	OriginNode = "node"
)

// Packet is the first packet of a connection.
type Packet struct {
	Src      netip.Addr `json:"src"`
	SrcPort  uint16     `json:"srcPort"`
	Dst      netip.Addr `json:"dst"`
	DstPort  uint16     `json:"dstPort"`
	Protocol string     `json:"protocol"` // tcp, udp or sctp
	Origin   string     `json:"origin"`   // external, pod or node
	// InInterface is the interface it arrives on; empty for OriginNode.
	InInterface string `json:"inInterface,omitempty"`
}

// Verdicts. DNAT means the packet goes to a Service endpoint (by an
// iptables DNAT rule or an IPVS virtual server).
const (
	VerdictDNAT   = "DNAT"
	VerdictAccept = "ACCEPT"
	VerdictDrop   = "DROP"
	VerdictReject = "REJECT"
	VerdictMixed  = "MIXED"
)

// SchemaVersion is Result.SchemaVersion; it changes only when a field
// changes meaning or goes away (new fields may be added).
const SchemaVersion = 1

// Result is what becomes of a packet. Its JSON form is documented in
// README.md.
type Result struct {
	SchemaVersion int    `json:"schemaVersion"`
	Mode          string `json:"mode"` // iptables or ipvs
	Packet        Packet `json:"packet"`
	// Verdict is DNAT, ACCEPT (unchanged), DROP, REJECT, or MIXED when
	// probabilistic branches end differently (see Branches).
	Verdict string `json:"verdict"`
	// Handled is true when a Service's rule or an IPVS virtual server
	// decided the packet's fate; false means svcproxy leaves it alone.
	Handled bool `json:"handled"`
	// Service is the Service port ("ns/name:port") named by the rules'
	// comments, when the rules name one (iptables mode).
	Service string `json:"service,omitempty"`
	// VirtualServer is the IPVS virtual server ("ip:port/PROTO") that
	// handled the packet (IPVS mode).
	VirtualServer string `json:"virtualServer,omitempty"`
	// Endpoints are the possible destinations, in rule order, with the
	// probability of each for a new client; they sum to 1 when every
	// branch is DNAT.
	Endpoints []Endpoint `json:"endpoints"`
	// Masquerade: the packet's source is rewritten to the node's (SNAT)
	// on some path to an endpoint.
	Masquerade bool `json:"masquerade"`
	// Affinity: ClientIP session affinity applies; a returning client
	// goes to the endpoint it used before, not by the probabilities.
	Affinity bool `json:"affinity"`
	// Reason says why, in a sentence.
	Reason string `json:"reason"`
	// Path is the rules the first branch matched, in order.
	Path []Step `json:"path"`
	// Branches are the ways the packet may go, with their probabilities.
	Branches []Branch `json:"branches"`
	Notes    []string `json:"notes"`
}

// Endpoint is one destination of a Service.
type Endpoint struct {
	// Endpoint is "ip:port" ("[ip]:port" for IPv6).
	Endpoint    string  `json:"endpoint"`
	Probability float64 `json:"probability"`
	Masquerade  bool    `json:"masquerade"`
}

// Step is one rule a packet matched, or the policy or IPVS lookup that
// decided it.
type Step struct {
	Table string `json:"table"` // nat, filter, mangle; "ipvs" for the IPVS lookup
	Chain string `json:"chain"`
	// Rule is the 1-based rule number in the chain (iptables -L
	// --line-numbers); 0 for a chain policy or the IPVS lookup.
	Rule    int    `json:"rule"`
	Text    string `json:"text"`
	Comment string `json:"comment,omitempty"`
}

// Branch is one way the packet may go.
type Branch struct {
	Verdict     string  `json:"verdict"`
	Probability float64 `json:"probability"`
	// Endpoint is set when Verdict is DNAT.
	Endpoint   string `json:"endpoint,omitempty"`
	Masquerade bool   `json:"masquerade"`
}

// ErrIPVSUnavailable is returned when IPVS state cannot be read (no IPVS
// in the kernel, or no ipset tool).
var ErrIPVSUnavailable = errors.New("IPVS tracing is not available")

// roundProb rounds to 6 decimals, so JSON output is stable across float
// noise (1/3 + 1/3 + 1/3) and easy to compare.
func roundProb(p float64) float64 { return math.Round(p*1e6) / 1e6 }

// serviceComment matches the "ns/name[:port]" that starts kube-proxy's
// per-service rule comments.
var serviceComment = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/[^ ]+)`)

// serviceOf returns the first Service named by a comment on the path.
func serviceOf(path []Step) string {
	for _, s := range path {
		if m := serviceComment.FindStringSubmatch(s.Comment); m != nil {
			return m[1]
		}
	}
	return ""
}

// decidingStep is the last step of a path: the rule (or policy) that
// ended the packet's trip.
func decidingStep(path []Step) (Step, bool) {
	if len(path) == 0 {
		return Step{}, false
	}
	return path[len(path)-1], true
}
