package vmdatapath

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"github.com/svcproxy/svcproxy/e2e/vm"
)

// The shared apiserver serves both families: e2e/datapath's DualStackIPv6 needs an IPv6
// service range, and IPv4-only scenarios do not mind it.
func TestMain(m *testing.M) { os.Exit(bed.Main(m, bed.DualStack())) }

const (
	// GateEnv must be "1" for the VM to boot.
	GateEnv = "SVCPROXY_VM_TESTS"
	// ModesEnv overrides the modes run in the guest (SVCPROXY_E2E_MODES there).
	ModesEnv = "SVCPROXY_VM_E2E_MODES"
	// FilterEnv overrides which scenarios each mode runs in the guest
	// (SVCPROXY_E2E_FILTER there).
	FilterEnv = "SVCPROXY_VM_E2E_FILTER"
	// RunEnv overrides the -test.run pattern in the guest, e.g. TestDatapath/ipvs/Churn.
	RunEnv = "SVCPROXY_VM_E2E_RUN"
	// TimeoutEnv overrides the bound on the whole VM run (a Go duration).
	TimeoutEnv = "SVCPROXY_VM_E2E_TIMEOUT"
)

// defaultModes: IPVS is what the host cannot test. iptables on the host already runs
// every scenario but the SCTP ones (the host kernel has no SCTP), so the guest's
// iptables pass runs only those (defaultFilter).
const (
	defaultModes  = "ipvs,iptables"
	defaultFilter = "iptables=SCTP"
)

func TestDatapathInVM(t *testing.T) {
	modes := envOr(ModesEnv, defaultModes)
	run := envOr(RunEnv, "TestDatapath")
	timeout, err := time.ParseDuration(envOr(TimeoutEnv, "25m"))
	if err != nil {
		t.Fatalf("%s: %v", TimeoutEnv, err)
	}
	res, err := runInGuest(t, vm.Options{
		Package: "./e2e/datapath",
		Run:     run,
		Env: map[string]string{
			"SVCPROXY_E2E_MODES":  modes,
			"SVCPROXY_E2E_FILTER": envOr(FilterEnv, defaultFilter),
		},
		Timeout: timeout,
	})
	sum := summarize(res.Console)
	t.Logf("vm: kernel %s, prepare %v, boot to payload %v, VM total %v\n%s", res.Kernel,
		res.Prepare.Round(time.Second), res.BootToPayload.Round(time.Second), res.Boot.Round(time.Second), sum.table())
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("vm: test binary exited with code %d; failed: %v", res.ExitCode, sum.failed)
	}
	if len(sum.failed) > 0 {
		t.Fatalf("vm: scenarios failed: %v", sum.failed)
	}
	for _, m := range strings.Split(modes, ",") {
		if sum.passed[m] == 0 && run == "TestDatapath" {
			t.Errorf("vm: no scenario passed in mode %s (did the guest run any?)", m)
		}
	}
}

// runInGuest boots the VM (when GateEnv allows) with svcproxy and a test binary of
// opts.Package, against the host's apiserver, with what every bed test in the guest
// needs in its environment besides opts.Env. Console lines carry the time since boot
// start: the guest's test logs have no clock of their own.
func runInGuest(t *testing.T, opts vm.Options) (vm.Result, error) {
	t.Helper()
	if vm.InGuest() {
		t.Skip("boots the VM from the host; nothing to do inside it")
	}
	if os.Getenv(GateEnv) != "1" {
		t.Skipf("boots a qemu VM for several minutes: run `make test-vm` (or set %s=1)", GateEnv)
	}
	bed.RequireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("%s=1 but qemu is missing (hack/install-deps.sh installs it): %v", GateEnv, err)
	}
	api := bed.API(t)
	ca, err := os.ReadFile(api.CAFile)
	if err != nil {
		t.Fatalf("read apiserver CA: %v", err)
	}
	opts.Svcproxy = true
	opts.APIServer = &vm.APIServer{Port: api.Port, CA: ca, Token: api.AdminToken}
	opts.MemoryMB = 2048
	opts.Env["SVCPROXY_BIN"] = vm.SvcproxyPath
	opts.Env[bed.ProxyTokenEnv] = api.ProxyToken
	opts.Env[bed.TimeScaleEnv] = "3"
	start := time.Now()
	logf := func(format string, args ...any) {
		t.Logf("[%6.1fs] "+format, append([]any{time.Since(start).Seconds()}, args...)...)
	}
	return vm.Exec(opts, t.TempDir(), logf)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// resultRE matches go test -v verdict lines of scenarios, e.g.
// "    --- PASS: TestDatapath/ipvs/ClusterIPTCP (3.21s)".
var resultRE = regexp.MustCompile(`--- (PASS|FAIL|SKIP): TestDatapath/([^/\s]+)/(\S+) \(([0-9.]+)s\)`)

type result struct{ mode, name, verdict, secs string }

type summary struct {
	results []result
	passed  map[string]int // by mode
	failed  []string
}

func summarize(console string) summary {
	s := summary{passed: map[string]int{}}
	for _, m := range resultRE.FindAllStringSubmatch(console, -1) {
		r := result{verdict: m[1], mode: m[2], name: m[3], secs: m[4]}
		s.results = append(s.results, r)
		switch r.verdict {
		case "PASS":
			s.passed[r.mode]++
		case "FAIL":
			s.failed = append(s.failed, r.mode+"/"+r.name)
		}
	}
	sort.SliceStable(s.results, func(i, j int) bool { return s.results[i].mode < s.results[j].mode })
	return s
}

func (s summary) table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %-28s %-5s %s\n", "mode", "scenario", "", "seconds")
	for _, r := range s.results {
		fmt.Fprintf(&b, "%-10s %-28s %-5s %s\n", r.mode, r.name, r.verdict, r.secs)
	}
	return b.String()
}
