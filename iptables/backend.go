package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// Backend is the iptables implementation whose tools svcproxy runs. It must
// match the one kubelet and the host use, so it is detected, never chosen.
type Backend string

const (
	Legacy Backend = "legacy"
	NFT    Backend = "nft"
)

// BackendEnv overrides detection (legacy or nft). It exists for tests and
// emergencies; kube-proxy has no such flag.
const BackendEnv = "SVCPROXY_IPTABLES_BACKEND"

// Chains kubelet creates in the mangle table; whichever backend holds them
// is the one the host uses.
var kubeletHintChains = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// CommandRunner runs a command and returns its stdout. Detection takes one so
// its decision logic can be tested without a kernel.
type CommandRunner func(name string, args ...string) ([]byte, error)

// ExecRunner runs the command on the host.
func ExecRunner(name string, args ...string) ([]byte, error) {
	path, err := lookTool(name)
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// DetectBackend picks the backend the way kubernetes-sigs/iptables-wrappers
// does, unless SVCPROXY_IPTABLES_BACKEND says otherwise.
func DetectBackend(family v1.IPFamily) (Backend, error) {
	if v := os.Getenv(BackendEnv); v != "" {
		b, err := ParseBackend(v)
		if err != nil {
			return "", fmt.Errorf("%s: %w", BackendEnv, err)
		}
		klog.InfoS("Detected iptables backend", "backend", b, "ipFamily", family, "reason", "set by "+BackendEnv)
		return b, nil
	}
	return DetectBackendWith(family, ExecRunner)
}

// ParseBackend accepts "legacy" or "nft".
func ParseBackend(s string) (Backend, error) {
	switch b := Backend(strings.TrimSpace(s)); b {
	case Legacy, NFT:
		return b, nil
	default:
		return "", fmt.Errorf("unknown iptables backend %q (want %q or %q)", s, Legacy, NFT)
	}
}

// DetectBackendWith decides with run:
//  1. kubelet's hint chain in nft's mangle table → nft;
//  2. else in legacy's mangle table → legacy;
//  3. else the backend with more rules; a tie (an empty host) → nft, Debian's default.
//
// Like the wrappers it looks at both families (the given one first), since
// one host has one backend; a family whose tools fail counts as empty.
func DetectBackendWith(family v1.IPFamily, run CommandRunner) (Backend, error) {
	b, reason, err := decideBackend(family, run)
	if err != nil {
		return "", err
	}
	klog.InfoS("Detected iptables backend", "backend", b, "ipFamily", family, "reason", reason)
	return b, nil
}

func decideBackend(family v1.IPFamily, run CommandRunner) (Backend, string, error) {
	families := []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	if family == v1.IPv6Protocol {
		families = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}
	}
	anyOK := false
	save := func(b Backend, args ...string) [][]byte {
		var outs [][]byte
		for _, f := range families {
			out, err := run(toolName(f, b, "-save"), args...)
			if err != nil {
				klog.V(2).InfoS("iptables-save failed during backend detection", "backend", b, "ipFamily", f, "err", err)
				continue
			}
			anyOK = true
			outs = append(outs, out)
		}
		return outs
	}
	for _, b := range []Backend{NFT, Legacy} {
		for _, out := range save(b, "-t", "mangle") {
			if chain := findChain(out, kubeletHintChains); chain != "" {
				return b, "kubelet chain " + chain + " found", nil
			}
		}
	}
	legacyRules := countRules(save(Legacy))
	nftRules := countRules(save(NFT))
	if !anyOK {
		return "", "", fmt.Errorf("detect iptables backend: no iptables-save of either backend ran for %s", family)
	}
	if legacyRules > nftRules {
		return Legacy, fmt.Sprintf("legacy has more rules (%d > %d)", legacyRules, nftRules), nil
	}
	return NFT, fmt.Sprintf("nft has as many or more rules (%d >= %d)", nftRules, legacyRules), nil
}

// findChain returns the first of chains declared (":NAME ...") in save output.
func findChain(save []byte, chains []string) string {
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, ":") {
			continue
		}
		name, _, _ := strings.Cut(line[1:], " ")
		for _, c := range chains {
			if name == c {
				return c
			}
		}
	}
	return ""
}

func countRules(saves [][]byte) int {
	n := 0
	for _, out := range saves {
		for _, line := range bytes.Split(out, []byte("\n")) {
			if bytes.HasPrefix(line, []byte("-A ")) {
				n++
			}
		}
	}
	return n
}

// toolName is e.g. "ip6tables-nft-restore" for (IPv6, NFT, "-restore").
func toolName(family v1.IPFamily, b Backend, suffix string) string {
	base := "iptables"
	if family == v1.IPv6Protocol {
		base = "ip6tables"
	}
	return base + "-" + string(b) + suffix
}

// lookTool finds an iptables tool in PATH or the sbin directories, which a
// non-login PATH often lacks.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := dir + "/" + name
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH, /usr/sbin or /sbin", name)
}
