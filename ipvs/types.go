package ipvs

import (
	"fmt"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
)

// IPVS service flags, as in the kernel's ip_vs.h.
const (
	FlagPersistent = 0x0001
	FlagHashed     = 0x0002
	// FlagSourceHash is IP_VS_SVC_F_SCHED2, which for mh is
	// IP_VS_SVC_F_SCHED_MH_PORT (hash the source port too); kube-proxy sets
	// it with the mh scheduler.
	FlagSourceHash = 0x0010
)

// VSKey identifies a virtual server.
type VSKey struct {
	Address  netip.Addr
	Protocol v1.Protocol
	Port     uint16
}

func (k VSKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Address, k.Port), k.Protocol)
}

// VirtualServer is an IPVS service.
type VirtualServer struct {
	VSKey
	Scheduler string
	// Flags holds FlagPersistent/FlagSourceHash; the kernel's FlagHashed is
	// masked off when comparing.
	Flags uint32
	// Timeout is the persistence timeout in seconds (ClientIP affinity).
	Timeout uint32
}

// sameConfig reports whether the kernel's vs needs no update to be want.
func (vs VirtualServer) sameConfig(want VirtualServer) bool {
	return vs.Scheduler == want.Scheduler && vs.Flags&^FlagHashed == want.Flags&^FlagHashed &&
		vs.Timeout == want.Timeout
}

// RealServer is an IPVS destination, always masqueraded (NAT).
type RealServer struct {
	Addr   netip.AddrPort
	Weight int
	// ActiveConns and InactiveConns are read from the kernel; ignored on write.
	ActiveConns, InactiveConns int
}

// DesiredVS is a virtual server and the real servers it should have.
type DesiredVS struct {
	VirtualServer
	// RealServers maps each destination to its weight (always 1 today).
	RealServers map[netip.AddrPort]int
	// Service names the ServicePort, for logs.
	Service proxier.ServicePortName
}

// DesiredState is everything the IPVS mode wants the kernel to hold for
// one IP family.
type DesiredState struct {
	Family         v1.IPFamily
	VirtualServers map[VSKey]*DesiredVS
	// Addresses are bound to kube-ipvs0.
	Addresses sets.Set[netip.Addr]
	// IPSets are keyed by kernel name; every owned set is present, empty or not.
	IPSets map[string]*IPSet
	// IPTables is an iptables-restore input (filter and nat) that rewrites
	// every chain this mode owns; Jumps lead to them from built-in chains.
	IPTables []byte
	Jumps    []Jump
	// NoLocalEndpoints counts services with a Local policy and no local
	// endpoint (with endpoints elsewhere), by "internal"/"external".
	NoLocalEndpoints map[string]int
}

// IPSet is an ipset with its members in `ipset save` form.
type IPSet struct {
	Name    string
	Type    string
	Family  v1.IPFamily
	Members sets.Set[string]
}

// createArgs are the options of `ipset create` after name and type.
func (s *IPSet) createArgs() string {
	if s.Type == setTypeBitmapPort {
		return "range 0-65535"
	}
	fam := "inet"
	if s.Family == v1.IPv6Protocol {
		fam = "inet6"
	}
	return fmt.Sprintf("family %s hashsize 1024 maxelem %d", fam, setMaxElem)
}

// Options configure the IPVS data plane of one IP family.
type Options struct {
	// Scheduler is --ipvs-scheduler; "" means rr. mh also sets FlagSourceHash.
	Scheduler string
	// StrictARP (--ipvs-strict-arp) sets arp_ignore=1 and arp_announce=2.
	StrictARP bool
	// TCPTimeout, TCPFinTimeout, UDPTimeout are IPVS connection timeouts;
	// 0 leaves the kernel's value.
	TCPTimeout, TCPFinTimeout, UDPTimeout time.Duration
	// ExcludeCIDRs are never cleaned up (--ipvs-exclude-cidrs).
	ExcludeCIDRs []netip.Prefix
	// NodePortAddresses selects the node addresses serving NodePorts; nil
	// means all (loopback and IPv6 link-local addresses never serve them).
	NodePortAddresses *proxier.NodePortAddresses
	// MasqueradeBit is the fwmark bit for SNAT (kube-proxy default 14).
	MasqueradeBit int
	// MasqueradeAll SNATs all ClusterIP traffic.
	MasqueradeAll bool
	// MasqueradeRandomFully adds --random-fully to MASQUERADE.
	MasqueradeRandomFully bool
	// LocalDetector tells pod traffic apart; the zero value detects nothing.
	LocalDetector iptables.LocalDetector
	// GracePeriod bounds how long a removed TCP real server is kept at
	// weight 0 while it still has connections; 0 means DefaultGracePeriod.
	GracePeriod time.Duration
	// GraceCheckPeriod is how often Sync re-reads connection counts of
	// real servers being terminated; 0 means DefaultGraceCheckPeriod.
	GraceCheckPeriod time.Duration
	// FullResyncPeriod: a Sync re-reads the kernel and rewrites the
	// iptables rules when the last full one is older; 0 means
	// DefaultFullResyncPeriod.
	FullResyncPeriod time.Duration
}

const (
	DefaultScheduler        = "rr"
	DefaultGracePeriod      = 15 * time.Minute
	DefaultGraceCheckPeriod = 10 * time.Second
	DefaultFullResyncPeriod = 5 * time.Minute
)

// DefaultOptions are kube-proxy's defaults.
func DefaultOptions() Options {
	return Options{Scheduler: DefaultScheduler, MasqueradeBit: 14}
}

func (o Options) scheduler() string {
	if o.Scheduler == "" {
		return DefaultScheduler
	}
	return o.Scheduler
}

func (o Options) masqMark() string {
	m := uint32(1) << uint(o.MasqueradeBit)
	return fmt.Sprintf("0x%x", m)
}

// excluded reports whether addr is inside ExcludeCIDRs.
func (o Options) excluded(addr netip.Addr) bool {
	for _, p := range o.ExcludeCIDRs {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
