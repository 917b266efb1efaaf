package ipvs

import (
	"errors"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
)

// IPVSKernel programs the IPVS table of one network namespace. Lists return
// both families; callers filter.
type IPVSKernel interface {
	ListVirtualServers() ([]VirtualServer, error)
	// ListRealServers returns the destinations of vs with connection counts.
	ListRealServers(vs VSKey) ([]RealServer, error)
	AddVirtualServer(vs VirtualServer) error
	UpdateVirtualServer(vs VirtualServer) error
	DeleteVirtualServer(vs VSKey) error
	AddRealServer(vs VSKey, rs RealServer) error
	UpdateRealServer(vs VSKey, rs RealServer) error
	DeleteRealServer(vs VSKey, rs netip.AddrPort) error
	// SetTimeouts is `ipvsadm --set`; a zero value leaves that timeout.
	SetTimeouts(tcp, tcpFin, udp time.Duration) error
}

// Links manages the dummy interface and reads the node's addresses.
type Links interface {
	// EnsureDummy creates the dummy link name if missing and sets it up.
	EnsureDummy(name string) error
	// DeleteLink removes link name; a missing link is not an error.
	DeleteLink(name string) error
	// ListAddresses returns link's addresses of family; none if the link is missing.
	ListAddresses(link string, family v1.IPFamily) ([]netip.Addr, error)
	AddAddress(link string, addr netip.Addr) error
	DeleteAddress(link string, addr netip.Addr) error
	// LocalAddresses returns the addresses of family on every link but except.
	LocalAddresses(except string, family v1.IPFamily) ([]netip.Addr, error)
}

// IPSets reads and changes ipsets.
type IPSets interface {
	// List returns every ipset in the namespace, by name.
	List() (map[string]*IPSet, error)
	// Apply runs a batch: creates (identical existing sets are kept), then
	// adds and deletes of members (present/missing ones are fine), then
	// destroys. A *BatchError says which operation failed; those before it
	// were applied, those after it were not.
	Apply(batch *IPSetBatch) error
}

// IPSetBatch is a set of ipset changes applied in one call.
type IPSetBatch struct {
	Create  []*IPSet // Members ignored
	Add     []IPSetMember
	Del     []IPSetMember
	Flush   []string
	Destroy []string
}

// IPSetMember is a member of a set.
type IPSetMember struct{ Set, Member string }

// Len is the number of operations.
func (b *IPSetBatch) Len() int {
	return len(b.Create) + len(b.Add) + len(b.Del) + len(b.Flush) + len(b.Destroy)
}

// BatchError is a failed operation of an IPSetBatch, with Index counting
// operations in Create, Add, Del, Flush, Destroy order.
type BatchError struct {
	Index int
	Op    string
	Err   error
}

func (e *BatchError) Error() string { return "ipset " + e.Op + ": " + e.Err.Error() }
func (e *BatchError) Unwrap() error { return e.Err }

// ErrNoIPVS is returned where the kernel has no IPVS.
var ErrNoIPVS = errors.New("the kernel has no IPVS support (module ip_vs not loaded or not built)")

// Kernel bundles the kernel layers the IPVS data plane uses for one family.
type Kernel struct {
	Family   v1.IPFamily
	IPVS     IPVSKernel
	Links    Links
	IPSets   IPSets
	IPTables iptables.Kernel
}

// NewKernel opens the real kernel layers of family for the namespace at
// netnsPath ("" for the current one, as svcproxy runs). ipt is the
// iptables kernel of the family (iptables.NewKernel). It fails with
// ErrNoIPVS when the kernel lacks IPVS.
func NewKernel(family v1.IPFamily, netnsPath string, ipt iptables.Kernel) (Kernel, error) {
	k := Kernel{Family: family, IPTables: ipt}
	var err error
	if k.IPVS, err = NewIPVSKernel(netnsPath); err != nil {
		return Kernel{}, err
	}
	if k.Links, err = NewLinks(netnsPath); err != nil {
		return Kernel{}, err
	}
	if k.IPSets, err = NewIPSets(netnsPath); err != nil {
		return Kernel{}, err
	}
	return k, nil
}
