package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// floorResult is the time iptables-restore takes for a ruleset in an empty namespace.
type floorResult struct {
	Wall     time.Duration
	CPU      time.Duration // user+system of iptables-restore
	TimedOut bool
	Err      error
}

// restoreFloor feeds input to `iptables-<backend>-restore --noflush` in a new, empty
// network namespace (CLONE_NEWNET: it disappears with the process), bounded by timeout.
func restoreFloor(backend, input string, timeout time.Duration) floorResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := []string{"--noflush"}
	if backend == "legacy" {
		args = append(args, "-w", "60")
	}
	cmd := exec.CommandContext(ctx, iptablesTool(backend, "iptables-restore"), args...)
	cmd.Stdin = strings.NewReader(input)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err := cmd.Run()
	r := floorResult{Wall: time.Since(start)}
	if cmd.ProcessState != nil {
		r.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if ctx.Err() != nil {
		r.TimedOut = true
	} else if err != nil {
		r.Err = fmt.Errorf("restore: %w: %s", err, tail(out.String(), 400))
	}
	return r
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// splitLikeProxy rewrites an iptables-save dump the way svcproxy feeds a large sync on
// nft: the nat per-service chains in blocks of batch services (the first block also
// holding KUBE-POSTROUTING and KUBE-MARK-MASQ), then one last block with the other
// tables and the remaining nat chains (KUBE-SERVICES, built-in jumps, ...).
func splitLikeProxy(dump string, batch int) string {
	var other strings.Builder
	var nat []string
	for _, block := range strings.SplitAfter(dump, "COMMIT\n") {
		lines := strings.Split(block, "\n")
		table := ""
		for _, l := range lines {
			if strings.HasPrefix(l, "*") {
				table = l[1:]
				break
			}
		}
		switch table {
		case "":
		case "nat":
			nat = lines
		default:
			other.WriteString(block)
		}
	}
	decl := map[string]string{}
	rules := map[string][]string{}
	var order []string // service chains in order of first rule
	group := map[string]int{}
	for _, l := range nat {
		switch {
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			decl[name] = l
		case strings.HasPrefix(l, "-A "):
			chain, _, _ := strings.Cut(l[3:], " ")
			rules[chain] = append(rules[chain], l)
			if _, ok := group[chain]; !ok && (strings.HasPrefix(chain, "KUBE-SVC-") || strings.HasPrefix(chain, "KUBE-SVL-")) {
				group[chain] = len(order)
				order = append(order, chain)
			}
		}
	}
	// Chains jumped to from a service chain (KUBE-SEP) join its group; chains that jump
	// to one (KUBE-EXT, KUBE-FW) too.
	for range 2 {
		for chain, rs := range rules {
			for _, r := range rs {
				_, target, ok := strings.Cut(r, " -j ")
				if !ok {
					continue
				}
				target, _, _ = strings.Cut(target, " ")
				g1, ok1 := group[chain]
				g2, ok2 := group[target]
				switch {
				case ok1 && !ok2 && strings.HasPrefix(target, "KUBE-SEP-"):
					group[target] = g1
				case !ok1 && ok2 && (strings.HasPrefix(chain, "KUBE-EXT-") || strings.HasPrefix(chain, "KUBE-FW-")):
					group[chain] = g2
				}
			}
		}
	}
	blocks := (len(order) + batch - 1) / batch
	members := make([][]string, blocks+1)
	for _, l := range nat {
		if !strings.HasPrefix(l, ":") {
			continue
		}
		name, _, _ := strings.Cut(l[1:], " ")
		b := blocks
		if g, ok := group[name]; ok {
			b = g / batch
		} else if (name == "KUBE-POSTROUTING" || name == "KUBE-MARK-MASQ") && blocks > 0 {
			b = 0
		}
		members[b] = append(members[b], name)
	}
	var out strings.Builder
	writeNAT := func(chains []string) {
		out.WriteString("*nat\n")
		for _, c := range chains {
			out.WriteString(decl[c] + "\n")
		}
		for _, c := range chains {
			for _, r := range rules[c] {
				out.WriteString(r + "\n")
			}
		}
		out.WriteString("COMMIT\n")
	}
	for b := range blocks {
		writeNAT(members[b])
	}
	out.WriteString(other.String())
	writeNAT(members[blocks])
	return out.String()
}
