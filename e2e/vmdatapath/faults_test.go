package vmdatapath

import (
	"regexp"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/vm"
)

// FaultsRunEnv overrides the -test.run pattern of the faults package in the guest.
const FaultsRunEnv = "SVCPROXY_VM_FAULTS_RUN"

// topRE matches go test -v verdict lines of top-level tests and their subtests, e.g.
// "--- PASS: TestAPIServerOutage (75.20s)".
var topRE = regexp.MustCompile(`--- (PASS|FAIL|SKIP): (Test\S+) \(([0-9.]+)s\)`)

// TestFaultsInVM runs e2e/faults in IPVS mode inside the VM: the apiserver outage (as a
// cut of the node's link to it), netlink failures, the xtables lock at start, SIGKILL in
// the middle of a sync, and bad input. The host runs the same package in iptables mode.
func TestFaultsInVM(t *testing.T) {
	res, err := runInGuest(t, vm.Options{
		Package: "./e2e/faults",
		Run:     envOr(FaultsRunEnv, "Test"),
		Env:     map[string]string{"SVCPROXY_FAULTS_MODE": "ipvs"},
		Timeout: 20 * time.Minute,
	})
	passed, failed := 0, []string{}
	for _, m := range topRE.FindAllStringSubmatch(res.Console, -1) {
		switch m[1] {
		case "PASS":
			passed++
		case "FAIL":
			failed = append(failed, m[2])
		}
		t.Logf("%-5s %-45s %ss", m[1], m[2], m[3])
	}
	t.Logf("vm: prepare %v, VM total %v", res.Prepare.Round(time.Second), res.Boot.Round(time.Second))
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	if res.ExitCode != 0 || len(failed) > 0 {
		t.Fatalf("vm: faults tests failed (exit code %d): %v", res.ExitCode, failed)
	}
	if passed == 0 {
		t.Fatalf("vm: no faults test passed (did the guest run any?)")
	}
}
