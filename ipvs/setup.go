package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"syscall"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/sysctl"
)

// probeVS is created and deleted at start-up to check the scheduler. It is
// in TEST-NET-1, so it cannot shadow a real service.
var probeVS = VSKey{Address: netip.MustParseAddr("192.0.2.254"), Protocol: "TCP", Port: 20000}

// CanUseIPVS checks, for the namespace at netnsPath ("" for the current
// one), that the kernel has IPVS, that scheduler ("" means rr) is
// available, and that the ipset tool exists. The error is one line fit for
// a start-up failure.
func CanUseIPVS(netnsPath, scheduler string) error {
	if scheduler == "" {
		scheduler = DefaultScheduler
	}
	if _, err := exec.LookPath("ipset"); err != nil {
		return errors.New("cannot use IPVS mode: the ipset tool is not installed")
	}
	k, err := NewIPVSKernel(netnsPath)
	if err != nil {
		return fmt.Errorf("cannot use IPVS mode: %w", err)
	}
	defer k.(*netlinkIPVS).h.Close()
	err = k.AddVirtualServer(VirtualServer{VSKey: probeVS, Scheduler: scheduler})
	switch {
	case errors.Is(err, syscall.EEXIST):
		return nil
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("cannot use IPVS mode: IPVS scheduler %q is not available (kernel module ip_vs_%s missing)", scheduler, scheduler)
	case err != nil:
		return fmt.Errorf("cannot use IPVS mode: probe virtual server with scheduler %q: %w", scheduler, err)
	}
	if err := k.DeleteVirtualServer(probeVS); err != nil {
		return fmt.Errorf("cannot use IPVS mode: delete probe virtual server: %w", err)
	}
	return nil
}

// Sysctls are the values IPVS mode needs, kube-proxy's: conntrack for
// IPVS traffic (so iptables can masquerade it), dropping connections to
// deleted real servers and persistence templates of quiesced ones, and
// forwarding.
func Sysctls(opts Options) [][2]string {
	out := [][2]string{
		{"net/ipv4/vs/conntrack", "1"},
		{"net/ipv4/vs/expire_nodest_conn", "1"},
		{"net/ipv4/vs/expire_quiescent_template", "1"},
		{"net/ipv4/ip_forward", "1"},
	}
	if opts.StrictARP {
		// Do not answer ARP for kube-ipvs0 addresses on other interfaces.
		out = append(out, [2]string{"net/ipv4/conf/all/arp_ignore", "1"}, [2]string{"net/ipv4/conf/all/arp_announce", "2"})
	}
	return out
}

// Setup applies the sysctls and IPVS timeouts; run.go calls it once at
// start-up (also for --init-only). The IPVS sysctls exist only once
// ip_vs is loaded, so call CanUseIPVS first.
func Setup(ipvsKernel IPVSKernel, s sysctl.Setter, opts Options) error {
	var errs []error
	for _, kv := range Sysctls(opts) {
		changed, err := sysctl.EnsureValue(s, kv[0], kv[1])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if changed {
			klog.InfoS("Set sysctl", "name", kv[0], "value", kv[1])
		}
	}
	if opts.TCPTimeout > 0 || opts.TCPFinTimeout > 0 || opts.UDPTimeout > 0 {
		if err := ipvsKernel.SetTimeouts(opts.TCPTimeout, opts.TCPFinTimeout, opts.UDPTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes what IPVS mode programs for k's family: its iptables
// jumps and chains, virtual servers of the family outside ExcludeCIDRs,
// kube-ipvs0, and the ipsets. Missing objects are fine, so it is
// idempotent. Run it for each family; the link goes with the first.
func Cleanup(k Kernel, opts Options) error {
	var errs []error
	if k.IPTables != nil {
		errs = append(errs, cleanupIPTables(k.IPTables)...)
	}
	if k.IPVS != nil {
		vss, err := k.IPVS.ListVirtualServers()
		if err != nil {
			errs = append(errs, err)
		}
		for _, vs := range vss {
			if vs.Address.Is4() != (k.Family == v1.IPv4Protocol) || opts.excluded(vs.Address) {
				continue
			}
			if err := k.IPVS.DeleteVirtualServer(vs.VSKey); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if k.Links != nil {
		if err := k.Links.DeleteLink(DummyDevice); err != nil {
			errs = append(errs, err)
		}
	}
	if k.IPSets != nil {
		have, err := k.IPSets.List()
		if err != nil {
			errs = append(errs, err)
		}
		b := &IPSetBatch{}
		for _, name := range SetNames(k.Family) {
			if have[name] != nil {
				b.Destroy = append(b.Destroy, name)
			}
		}
		if b.Len() > 0 {
			if err := k.IPSets.Apply(b); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func cleanupIPTables(ipt iptables.Kernel) []error {
	var errs []error
	for _, j := range Jumps {
		if err := ipt.DeleteRule(iptables.Table(j.Table), j.From, j.Args()...); err != nil {
			errs = append(errs, err)
		}
	}
	// Flush every chain first: they jump to each other.
	for _, pass := range []func(iptables.Table, string) error{ipt.FlushChain, ipt.DeleteChain} {
		for _, c := range natChains {
			if err := pass(iptables.TableNAT, c); err != nil {
				errs = append(errs, err)
			}
		}
		for _, c := range filterChains {
			if err := pass(iptables.TableFilter, c); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}
