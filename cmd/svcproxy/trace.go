package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/trace"
)

type traceFlags struct {
	src, dst    string
	srcPort     uint16
	dstPort     uint16
	protocol    string
	fromPod     bool
	fromNode    bool
	inInterface string
	mode        string
	output      string
	rules       string
	localAddrs  []string
}

// Interfaces a packet arrives on when --in-interface is not given.
const (
	defaultExternalInterface = "eth0"
	defaultPodInterface      = "veth0"
)

func newTraceCommand() *cobra.Command {
	f := &traceFlags{}
	cmd := &cobra.Command{
		Use:   "trace --src IP --dst IP --port N [flags]",
		Short: "Show where a packet goes on this node: matched rules, endpoints and their probabilities",
		Long: `trace follows the first packet of a connection through this node's LIVE
rules (iptables-save of the current network namespace: filter, nat, mangle; in
IPVS mode also the IPVS table, ipsets and kube-ipvs0 addresses) and prints
which rules it matched (their comments name the Service), every endpoint it may
go to with its probability, whether ClientIP affinity applies, whether it is
masqueraded, or that it is dropped, rejected or not handled by svcproxy, and
why. It reads the kernel only; it needs no API server.

--rules FILE (or - for stdin) traces iptables-save/iptables-restore text
instead of the live kernel, e.g. "svcproxy render ... | svcproxy trace
--rules - ...", or, with --mode ipvs, the JSON of "render --format state".
The node's local addresses (what --dst-type LOCAL matches, e.g. for NodePorts)
are read with netlink unless --local-address gives them.

A packet comes from outside the node (on eth0 unless --in-interface), from a
pod on this node (--from-pod, on veth0 unless --in-interface), or from the
node itself (--from-node).

Exit codes: 0 the trace ran (whatever the verdict: see "verdict" in -o json);
1 the rules could not be read or traced; 2 bad flags.
The JSON schema is documented in trace/README.md.`,
		Example: `  svcproxy trace --src 203.0.113.5 --dst 198.51.100.10 --port 80 --from-pod
  svcproxy trace --src 192.0.2.101 --dst 192.0.2.11 --port 30080 -o json
  svcproxy render -f manifests/examples/ --node-name node1 | \
    svcproxy trace --rules - --local-address 192.0.2.11 --src 192.0.2.101 --dst 192.0.2.11 --port 30080`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError("trace takes no arguments (got %q)", args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runTrace(cmd, f)
		},
	}
	flagErrors(cmd)
	fs := cmd.Flags()
	fs.StringVar(&f.src, "src", "", "source IP (required)")
	fs.Uint16Var(&f.srcPort, "src-port", 40000, "source port")
	fs.StringVar(&f.dst, "dst", "", "destination IP (required)")
	fs.Uint16Var(&f.dstPort, "port", 0, "destination port (required)")
	fs.StringVar(&f.protocol, "protocol", "tcp", "tcp, udp or sctp")
	fs.BoolVar(&f.fromPod, "from-pod", false, "the packet comes from a pod on this node")
	fs.BoolVar(&f.fromNode, "from-node", false, "the packet is sent by a process on this node (host network)")
	fs.StringVar(&f.inInterface, "in-interface", "", "interface the packet arrives on (default eth0, or veth0 with --from-pod)")
	fs.StringVar(&f.mode, "mode", "auto", "auto, iptables or ipvs; auto picks ipvs when the kernel has IPVS virtual servers")
	fs.StringVarP(&f.output, "output", "o", "text", "text or json")
	fs.StringVar(&f.rules, "rules", "", "trace this file (- for stdin) instead of the live kernel")
	fs.StringSliceVar(&f.localAddrs, "local-address", nil, "the node's local addresses (repeatable; default: read with netlink)")
	return cmd
}

// packet validates the flags into a packet.
func (f *traceFlags) packet() (trace.Packet, error) {
	var p trace.Packet
	if f.src == "" || f.dst == "" || f.dstPort == 0 {
		return p, usageError("trace needs --src, --dst and --port")
	}
	src, err := netip.ParseAddr(f.src)
	if err != nil {
		return p, usageError("--src: %v", err)
	}
	dst, err := netip.ParseAddr(f.dst)
	if err != nil {
		return p, usageError("--dst: %v", err)
	}
	src, dst = src.Unmap(), dst.Unmap()
	if src.Is4() != dst.Is4() {
		return p, usageError("--src %s and --dst %s are of different IP families", src, dst)
	}
	proto := strings.ToLower(f.protocol)
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return p, usageError("--protocol %q: want tcp, udp or sctp", f.protocol)
	}
	if f.fromPod && f.fromNode {
		return p, usageError("--from-pod and --from-node exclude each other")
	}
	if f.fromNode && f.inInterface != "" {
		return p, usageError("--in-interface makes no sense with --from-node")
	}
	if f.mode != "auto" && f.mode != "iptables" && f.mode != "ipvs" {
		return p, usageError("--mode %q: want auto, iptables or ipvs", f.mode)
	}
	if f.output != "text" && f.output != "json" {
		return p, usageError("-o %q: want text or json", f.output)
	}
	p = trace.Packet{Src: src, SrcPort: f.srcPort, Dst: dst, DstPort: f.dstPort, Protocol: proto,
		Origin: trace.OriginExternal, InInterface: defaultExternalInterface}
	switch {
	case f.fromNode:
		p.Origin, p.InInterface = trace.OriginNode, ""
	case f.fromPod:
		p.Origin, p.InInterface = trace.OriginPod, defaultPodInterface
	}
	if f.inInterface != "" {
		p.InInterface = f.inInterface
	}
	return p, nil
}

func (f *traceFlags) localAddresses(family v1.IPFamily) ([]netip.Addr, error) {
	if f.localAddrs == nil {
		return trace.LiveLocalAddresses(family)
	}
	var out []netip.Addr
	for _, s := range f.localAddrs {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return nil, usageError("--local-address: %v", err)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

func runTrace(cmd *cobra.Command, f *traceFlags) error {
	p, err := f.packet()
	if err != nil {
		return err
	}
	family := v1.IPv4Protocol
	if p.Dst.Is6() {
		family = v1.IPv6Protocol
	}
	t, err := f.tracer(cmd.InOrStdin(), family)
	if err != nil {
		return err
	}
	r, err := t.Trace(p)
	if err != nil {
		return err
	}
	if f.output == "json" {
		return trace.WriteJSON(cmd.OutOrStdout(), r)
	}
	return trace.WriteText(cmd.OutOrStdout(), r)
}

// tracer builds the tracer of the chosen mode over the live kernel or
// the --rules input.
func (f *traceFlags) tracer(stdin io.Reader, family v1.IPFamily) (trace.Tracer, error) {
	if f.rules != "" {
		return f.fileTracer(stdin, family)
	}
	mode := f.mode
	if mode == "auto" {
		mode = "iptables"
		if n, err := trace.LiveIPVSVirtualServers(family); err == nil && n > 0 {
			mode = "ipvs"
		}
	}
	if mode == "ipvs" {
		st, err := trace.LiveIPVS(family)
		if err != nil {
			return nil, err
		}
		if f.localAddrs != nil {
			if st.LocalAddresses, err = f.localAddresses(family); err != nil {
				return nil, err
			}
		}
		return trace.NewIPVS(st)
	}
	save, err := trace.LiveIPTables(family)
	if err != nil {
		return nil, err
	}
	local, err := f.localAddresses(family)
	if err != nil {
		return nil, err
	}
	return trace.NewIPTables(save, local)
}

// fileTracer reads --rules: iptables text, or IPVS state JSON.
func (f *traceFlags) fileTracer(stdin io.Reader, family v1.IPFamily) (trace.Tracer, error) {
	var data []byte
	var err error
	if f.rules == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(f.rules)
	}
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	isJSON := bytes.HasPrefix(bytes.TrimSpace(data), []byte("{"))
	if f.mode == "ipvs" || (f.mode == "auto" && isJSON) {
		if !isJSON {
			return nil, errors.New("--mode ipvs --rules wants the JSON of \"svcproxy render --proxy-mode ipvs --format state\"")
		}
		st := &trace.IPVSState{}
		if err := json.Unmarshal(data, st); err != nil {
			return nil, fmt.Errorf("read IPVS state: %w", err)
		}
		if st.Family != family {
			return nil, fmt.Errorf("IPVS state is of family %s, the packet of %s", st.Family, family)
		}
		if f.localAddrs != nil {
			if st.LocalAddresses, err = f.localAddresses(family); err != nil {
				return nil, err
			}
		}
		return trace.NewIPVS(st)
	}
	local, err := f.localAddresses(family)
	if err != nil {
		return nil, err
	}
	return trace.NewIPTables(data, local)
}
