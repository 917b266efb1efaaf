package proxier

import (
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	netutils "k8s.io/utils/net"
)

// ReasonInvalidValue is the reason of the Warning events recorded on Services
// and EndpointSlices whose data svcproxy ignores.
const ReasonInvalidValue = "SvcproxyIgnoredInvalidValue"

// fieldProblem is one value of an API object that svcproxy ignores.
type fieldProblem struct {
	Field  string
	Value  string
	Reason string
}

func (p fieldProblem) String() string {
	return fmt.Sprintf("ignoring %s %q: %s", p.Field, p.Value, p.Reason)
}

// reportProblems logs and records as Warning events the problems of obj that
// its previous version did not have, so resyncs and unrelated updates do not
// repeat the same event.
func reportProblems(recorder record.EventRecorder, obj runtime.Object, kind, key string, problems, previous []fieldProblem) {
	if len(problems) == 0 {
		return
	}
	seen := make(map[fieldProblem]bool, len(previous))
	for _, p := range previous {
		seen[p] = true
	}
	for _, p := range problems {
		if seen[p] {
			continue
		}
		klog.InfoS("Ignoring invalid value", "kind", kind, "object", key, "field", p.Field, "value", p.Value, "reason", p.Reason)
		if recorder != nil {
			recorder.Eventf(obj, v1.EventTypeWarning, ReasonInvalidValue, "svcproxy is %s", p.String())
		}
	}
}

// parseIP accepts the legacy forms (leading zeros) the API server still lets
// through in old objects, like kube-proxy's sloppy parser, and returns the
// address unmapped.
func parseIP(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.Addr{}, false
		}
		return a.Unmap(), true
	}
	ip := netutils.ParseIPSloppy(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// parsePrefix is parseIP for CIDRs; host bits are cleared.
func parsePrefix(s string) (netip.Prefix, bool) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		addr := p.Addr()
		bits := p.Bits()
		if addr.Is4In6() {
			if bits < 96 {
				return netip.Prefix{}, false
			}
			addr, bits = addr.Unmap(), bits-96
		}
		return netip.PrefixFrom(addr, bits).Masked(), true
	}
	_, ipnet, err := netutils.ParseCIDRSloppy(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	addr, ok := netip.AddrFromSlice(ipnet.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := ipnet.Mask.Size()
	addr = addr.Unmap()
	return netip.PrefixFrom(addr, ones).Masked(), true
}
