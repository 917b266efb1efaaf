package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/render"
)

// Exit codes of the render and trace subcommands (see render/README.md and
// trace/README.md). execute maps errors to them with exitCode.
const (
	exitOK      = 0
	exitFailure = 1 // I/O or runtime error
	exitUsage   = 2 // bad flags or arguments
	exitPartial = 3 // render: some objects or values were skipped
)

// codedError carries an exit code other than exitFailure.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// ExitCode is the process exit code the error asks for.
func (e *codedError) ExitCode() int { return e.code }

func usageError(format string, args ...any) error {
	return &codedError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode maps a command's error to the process exit code: 0 for none,
// the code an error carries (ExitCode() int), else 1.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var c interface{ ExitCode() int }
	if errors.As(err, &c) {
		return c.ExitCode()
	}
	return exitFailure
}

// flagErrors makes cmd's flag parsing errors usage errors (exit 2).
func flagErrors(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &codedError{code: exitUsage, err: err}
	})
}

type renderFlags struct {
	files         []string
	mode          string
	format        string
	nodeName      string
	nodeIP        string
	clusterCIDR   string
	family        string
	masqueradeAll bool
	scheduler     string
}

func newRenderCommand() *cobra.Command {
	f := &renderFlags{}
	cmd := &cobra.Command{
		Use:   "render -f FILE_OR_DIR [flags]",
		Short: "Print the rules svcproxy would program for Services and EndpointSlices read from YAML",
		Long: `render reads Services, EndpointSlices and optionally a Node from YAML or JSON
(single documents, multi-document files, kind: List as "kubectl get -o yaml"
prints it, or directories of such files) and prints what the data plane would
program on that node. It needs no cluster and no kernel.

iptables mode prints the filter, nat and mangle tables as the kernel holds them
after a full sync (iptables-save text, restorable with iptables-restore and
readable by "svcproxy trace --rules -"); --format restore prints the exact
iptables-restore input of the sync instead. ipvs mode prints the virtual and
real servers (ipvsadm -Ln layout), kube-ipvs0 addresses, ipsets and iptables
rules; --format state prints them as JSON for "svcproxy trace --mode ipvs --rules".

Objects that cannot be used are reported on stderr, one line each
("Kind namespace/name (source): reason"); the rest is rendered.

Exit codes: 0 everything rendered; 3 some objects or values were skipped
(reported on stderr; the output holds the rest); 1 I/O or internal error;
2 bad flags.`,
		Example: `  svcproxy render -f manifests/examples/ --node-name node1 --node-ip 192.0.2.11 --cluster-cidr 203.0.113.0/25
  kubectl get svc,endpointslices -A -o yaml | svcproxy render -f - --proxy-mode ipvs`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError("render takes no arguments (got %q); use -f", args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRender(cmd, f)
		},
	}
	flagErrors(cmd)
	fs := cmd.Flags()
	fs.StringSliceVarP(&f.files, "filename", "f", nil, "files or directories to read (repeatable; - is stdin)")
	fs.StringVar(&f.mode, "proxy-mode", "iptables", "data plane to render: iptables or ipvs")
	fs.StringVar(&f.format, "format", "", "iptables: save (default) or restore; ipvs: text (default) or state (JSON)")
	fs.StringVar(&f.nodeName, "node-name", "", "node to render for: decides which endpoints are local (default: the only Node in the input)")
	fs.StringVar(&f.nodeIP, "node-ip", "", "the node's primary IP (NodePort and load balancer rules use it)")
	fs.StringVar(&f.clusterCIDR, "cluster-cidr", "", "pod CIDRs, comma-separated: traffic from elsewhere to a ClusterIP is masqueraded")
	fs.StringVar(&f.family, "ip-family", "IPv4", "IP family to render: IPv4 or IPv6")
	fs.BoolVar(&f.masqueradeAll, "masquerade-all", false, "masquerade all Service traffic (--masquerade-all)")
	fs.StringVar(&f.scheduler, "ipvs-scheduler", "", "IPVS scheduler (default rr)")
	return cmd
}

// config validates the flags into a render.Config.
func (f *renderFlags) config() (render.Config, error) {
	cfg := render.Config{NodeName: f.nodeName, MasqueradeAll: f.masqueradeAll, IPVSScheduler: f.scheduler}
	if len(f.files) == 0 {
		return cfg, usageError("render needs -f FILE_OR_DIR")
	}
	switch strings.ToLower(f.family) {
	case "ipv4", "4":
		cfg.Family = v1.IPv4Protocol
	case "ipv6", "6":
		cfg.Family = v1.IPv6Protocol
	default:
		return cfg, usageError("--ip-family %q: want IPv4 or IPv6", f.family)
	}
	if f.mode != "iptables" && f.mode != "ipvs" {
		return cfg, usageError("--proxy-mode %q: want iptables or ipvs", f.mode)
	}
	formats := map[string][]string{"iptables": {"", "save", "restore"}, "ipvs": {"", "text", "state"}}
	if !slices.Contains(formats[f.mode], f.format) {
		return cfg, usageError("--format %q is not one of %s mode's: %s", f.format, f.mode, strings.Join(formats[f.mode][1:], ", "))
	}
	if f.nodeIP != "" {
		ip, err := netip.ParseAddr(f.nodeIP)
		if err != nil {
			return cfg, usageError("--node-ip: %v", err)
		}
		if ip.Unmap().Is4() != (cfg.Family == v1.IPv4Protocol) {
			return cfg, usageError("--node-ip %s is not an %s address", ip, cfg.Family)
		}
		cfg.NodeIP = ip.Unmap()
	}
	for _, s := range strings.Split(f.clusterCIDR, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, usageError("--cluster-cidr: %v", err)
		}
		cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, p.Masked())
	}
	return cfg, nil
}

func runRender(cmd *cobra.Command, f *renderFlags) error {
	cfg, err := f.config()
	if err != nil {
		return err
	}
	objs, problems, err := render.Load(f.files, cmd.InOrStdin())
	if err != nil {
		return err
	}
	snap, more := render.Snapshot(objs, cfg)
	render.SortProblems(more)
	problems = append(problems, more...)
	out, err := renderOutput(f, snap, cfg)
	if err != nil {
		return err
	}
	if _, err := cmd.OutOrStdout().Write(out); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return reportProblems(cmd.ErrOrStderr(), problems)
}

func renderOutput(f *renderFlags, snap *proxier.Snapshot, cfg render.Config) ([]byte, error) {
	switch {
	case f.mode == "iptables" && f.format == "restore":
		return render.IPTablesRestore(snap, cfg)
	case f.mode == "iptables":
		return render.IPTables(snap, cfg)
	}
	st, err := render.IPVS(snap, cfg)
	if err != nil {
		return nil, err
	}
	if f.format == "state" {
		data, err := json.MarshalIndent(st, "", "  ")
		return append(data, '\n'), err
	}
	return render.FormatIPVS(st), nil
}

// reportProblems prints one line per problem and returns the exit-3 error
// when there are any.
func reportProblems(w io.Writer, problems []render.Problem) error {
	for _, p := range problems {
		fmt.Fprintf(w, "skipped: %s\n", p)
	}
	if len(problems) == 0 {
		return nil
	}
	return &codedError{code: exitPartial, err: fmt.Errorf("render: %d objects or values skipped (listed above); the rest was rendered", len(problems))}
}
