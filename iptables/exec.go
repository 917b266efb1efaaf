package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"
)

// lockWaitSeconds is how long every tool waits for the xtables lock, as
// upstream does. The legacy tools take /run/xtables.lock (XTABLES_LOCKFILE
// moves it); the nft tools accept the flag and take no lock.
const lockWaitSeconds = 5

// Option configures NewKernel.
type Option func(*execKernel)

// WithNetNS runs every tool inside the named network namespace (one made by
// `ip netns add`). It is for tests: the proxy itself runs in the node's
// namespace and needs none.
func WithNetNS(name string) Option {
	return func(k *execKernel) { k.netns = name }
}

type execKernel struct {
	family  v1.IPFamily
	backend Backend
	bin     string // absolute path of <family>-<backend>
	restore string
	save    string
	ipt     *goipt.IPTables
	netns   string
}

// NewKernel returns the Kernel that runs the iptables tools of backend for family.
func NewKernel(family v1.IPFamily, backend Backend, opts ...Option) (Kernel, error) {
	if family != v1.IPv4Protocol && family != v1.IPv6Protocol {
		return nil, fmt.Errorf("new iptables kernel: unknown IP family %q", family)
	}
	if _, err := ParseBackend(string(backend)); err != nil {
		return nil, fmt.Errorf("new iptables kernel: %w", err)
	}
	k := &execKernel{family: family, backend: backend}
	for _, o := range opts {
		o(k)
	}
	var err error
	if k.restore, err = lookTool(toolName(family, backend, "-restore")); err != nil {
		return nil, fmt.Errorf("new iptables kernel: %w", err)
	}
	if k.save, err = lookTool(toolName(family, backend, "-save")); err != nil {
		return nil, fmt.Errorf("new iptables kernel: %w", err)
	}
	if k.bin, err = lookTool(toolName(family, backend, "")); err != nil {
		return nil, fmt.Errorf("new iptables kernel: %w", err)
	}
	proto := goipt.ProtocolIPv4
	if family == v1.IPv6Protocol {
		proto = goipt.ProtocolIPv6
	}
	k.ipt, err = goipt.New(goipt.IPFamily(proto), goipt.Path(k.bin), goipt.Timeout(lockWaitSeconds))
	if err != nil {
		return nil, fmt.Errorf("new iptables kernel %s: %w", k.bin, err)
	}
	return k, nil
}

func (k *execKernel) Family() v1.IPFamily { return k.family }

// Backend is the backend whose tools k runs.
func (k *execKernel) Backend() Backend { return k.backend }

// KernelBackend returns the backend of a Kernel made by NewKernel, or "" for
// other implementations (fakes). The cost of a restore differs by backend:
// nft is fast for many small COMMITs and very slow for one huge one, legacy
// the other way round.
func KernelBackend(k Kernel) Backend {
	if b, ok := k.(interface{ Backend() Backend }); ok {
		return b.Backend()
	}
	return ""
}

func (k *execKernel) Restore(data []byte) error {
	var out bytes.Buffer
	err := k.inNetNS(func() error {
		cmd := exec.Command(k.restore, "--noflush", "--counters", "-w", strconv.Itoa(lockWaitSeconds))
		cmd.Stdin = bytes.NewReader(data)
		cmd.Stdout = &out
		cmd.Stderr = &out
		return cmd.Run()
	})
	if err == nil {
		return nil
	}
	return newRestoreError(data, out.String(), err)
}

func (k *execKernel) Save(table Table) ([]byte, error) {
	var out, stderr bytes.Buffer
	err := k.inNetNS(func() error {
		cmd := exec.Command(k.save, "-t", string(table))
		cmd.Stdout = &out
		cmd.Stderr = &stderr
		return cmd.Run()
	})
	if err != nil {
		return nil, fmt.Errorf("save %s table: %w: %s", table, err, strings.TrimSpace(stderr.String()))
	}
	return out.Bytes(), nil
}

func (k *execKernel) EnsureChain(table Table, chain string) error {
	err := k.inNetNS(func() error { return k.ipt.NewChain(string(table), chain) })
	if err == nil || isExitStatus(err, 1) && strings.Contains(err.Error(), "Chain already exists") {
		return nil
	}
	return fmt.Errorf("ensure chain %s/%s: %w", table, chain, err)
}

func (k *execKernel) EnsureRule(pos Position, table Table, chain string, args ...string) error {
	err := k.inNetNS(func() error {
		if pos == Prepend {
			return k.ipt.InsertUnique(string(table), chain, 1, args...)
		}
		return k.ipt.AppendUnique(string(table), chain, args...)
	})
	if err != nil {
		return fmt.Errorf("ensure rule %s %s %s: %w", table, chain, strings.Join(args, " "), err)
	}
	return nil
}

func (k *execKernel) DeleteRule(table Table, chain string, args ...string) error {
	err := k.inNetNS(func() error { return k.ipt.Delete(string(table), chain, args...) })
	if err != nil && !isNotExist(err) {
		return fmt.Errorf("delete rule %s %s %s: %w", table, chain, strings.Join(args, " "), err)
	}
	return nil
}

func (k *execKernel) ChainExists(table Table, chain string) (bool, error) {
	var ok bool
	err := k.inNetNS(func() (err error) {
		ok, err = k.ipt.ChainExists(string(table), chain)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("chain exists %s/%s: %w", table, chain, err)
	}
	return ok, nil
}

func (k *execKernel) CountRules(table Table, chain string) (int, error) {
	var rules []string
	err := k.inNetNS(func() (err error) {
		rules, err = k.ipt.List(string(table), chain)
		return err
	})
	if err != nil {
		if isNotExist(err) {
			return 0, nil
		}
		return 0, fmt.Errorf("list chain %s/%s: %w", table, chain, err)
	}
	n := 0
	for _, r := range rules {
		if strings.HasPrefix(r, "-A ") {
			n++
		}
	}
	return n, nil
}

func (k *execKernel) FlushChain(table Table, chain string) error {
	// Not go-iptables' ClearChain, which creates a missing chain; it has no
	// plain flush, so run the tool directly.
	var out bytes.Buffer
	err := k.inNetNS(func() error {
		cmd := exec.Command(k.bin, "-w", strconv.Itoa(lockWaitSeconds), "-t", string(table), "-F", chain)
		cmd.Stdout = &out
		cmd.Stderr = &out
		return cmd.Run()
	})
	if err == nil || strings.Contains(out.String(), "No chain/target/match by that name") ||
		strings.Contains(out.String(), "does not exist") {
		return nil
	}
	return fmt.Errorf("flush chain %s/%s: %w: %s", table, chain, err, strings.TrimSpace(out.String()))
}

func (k *execKernel) DeleteChain(table Table, chain string) error {
	err := k.inNetNS(func() error { return k.ipt.DeleteChain(string(table), chain) })
	if err != nil && !isNotExist(err) {
		return fmt.Errorf("delete chain %s/%s: %w", table, chain, err)
	}
	return nil
}

// inNetNS runs f, and the tools f starts, in k's namespace if it has one.
// Children inherit the namespace of the thread that forks them, so f runs on
// a locked thread switched into the namespace. The thread is never unlocked:
// it exits with the goroutine, so the switch cannot leak to other goroutines.
func (k *execKernel) inNetNS(f func() error) error {
	if k.netns == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(k.netns)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", k.netns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", k.netns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func isExitStatus(err error, code int) bool {
	var e *goipt.Error
	return errors.As(err, &e) && e.ExitStatus() == code
}

// isNotExist is true when the tool said the chain, rule, jump target or
// table is missing, in the words of either backend.
func isNotExist(err error) bool {
	var e *goipt.Error
	return errors.As(err, &e) && e.IsNotExist()
}

// Where the tools blame a line, most specific first. Legacy says "Error
// occurred at line: N" for parse errors and "iptables-restore: line N failed"
// when a table's commit fails; nft says the same two with
// "iptables-nft-restore" and a reason, and "COMMIT expected at line N" for a
// missing COMMIT; "line N table name 'x' invalid" for unknown tables.
var restoreLineREs = []*regexp.Regexp{
	regexp.MustCompile(`Error occurred at line: (\d+)`),
	regexp.MustCompile(`line (\d+) failed`),
	regexp.MustCompile(`at line:? (\d+)`),
	regexp.MustCompile(`line (\d+)`),
}

// nft reports a jump to a missing chain when the table commits, blaming the
// COMMIT line; the offending rule is the last one naming that chain.
var missingChainRE = regexp.MustCompile(`Chain '([^']+)' does not exist`)

func newRestoreError(data []byte, output string, err error) *RestoreError {
	re := &RestoreError{Output: strings.TrimSpace(output), Err: err}
	for _, r := range restoreLineREs {
		if m := r.FindStringSubmatch(output); m != nil {
			re.Line, _ = strconv.Atoi(m[1])
			break
		}
	}
	if re.Line <= 0 {
		return re
	}
	lines := strings.Split(string(data), "\n")
	if re.Line > len(lines) {
		return re
	}
	re.Rule = lines[re.Line-1]
	if m := missingChainRE.FindStringSubmatch(output); m != nil && strings.TrimSpace(re.Rule) == "COMMIT" {
		if n := lastJumpTo(lines[:re.Line-1], m[1]); n > 0 {
			re.Line, re.Rule = n, lines[n-1]
		}
	}
	return re
}

// lastJumpTo returns the 1-based line of the last rule in the current table
// block of lines that jumps or goes to chain, or 0.
func lastJumpTo(lines []string, chain string) int {
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "*") {
			return 0
		}
		f := strings.Fields(lines[i])
		for j := 0; j+1 < len(f); j++ {
			if (f[j] == "-j" || f[j] == "--jump" || f[j] == "-g" || f[j] == "--goto") && f[j+1] == chain {
				return i + 1
			}
		}
	}
	return 0
}
