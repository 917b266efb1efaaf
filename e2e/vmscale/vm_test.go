// Package vmscale runs the scale harness (e2e/scale) inside the qemu VM, whose kernel
// has IPVS, against the host's kube-apiserver. It is a benchmark run by hand (see
// BENCHMARKS.md), not part of make test:
//
//	SVCPROXY_VM_SCALE=1 SVCPROXY_SCALE_SERVICES=1000 go test -count=1 -v -timeout 90m ./e2e/vmscale/
package vmscale

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/bed"
	"github.com/svcproxy/svcproxy/e2e/vm"
)

// The harness's service range (e2e/scale ServiceCIDR; that package is a command and
// cannot be imported).
const serviceCIDR = "198.18.0.0/16"

func TestMain(m *testing.M) { os.Exit(bed.Main(m, bed.ServiceCIDRs(serviceCIDR))) }

// GateEnv must be "1" for the VM to boot.
const GateEnv = "SVCPROXY_VM_SCALE"

// passed on to the guest's TestScaleGuest (e2e/scale/guest_test.go).
var guestKeys = []string{"SVCPROXY_SCALE_SERVICES", "SVCPROXY_SCALE_RUNS", "SVCPROXY_SCALE_CHURN", "SVCPROXY_SCALE_MODE"}

func TestScaleInVM(t *testing.T) {
	if vm.InGuest() {
		t.Skip("boots the VM from the host; nothing to do inside it")
	}
	if os.Getenv(GateEnv) != "1" {
		t.Skipf("a benchmark that boots the VM for up to an hour: set %s=1 (BENCHMARKS.md)", GateEnv)
	}
	bed.RequireRoot(t)
	api := bed.API(t)
	ca, err := os.ReadFile(api.CAFile)
	if err != nil {
		t.Fatalf("read apiserver CA: %v", err)
	}
	env := map[string]string{
		"SVCPROXY_SCALE_GUEST": "1",
		"SVCPROXY_BIN":         vm.SvcproxyPath,
		bed.ProxyTokenEnv:      api.ProxyToken,
	}
	for _, k := range guestKeys {
		if v := os.Getenv(k); v != "" {
			env[k] = v
		}
	}
	start := time.Now()
	logf := func(format string, args ...any) {
		t.Logf("[%6.1fs] "+format, append([]any{time.Since(start).Seconds()}, args...)...)
	}
	res, err := vm.Exec(vm.Options{
		Package:   "./e2e/scale",
		Run:       "TestScaleGuest",
		Svcproxy:  true,
		APIServer: &vm.APIServer{Port: api.Port, CA: ca, Token: api.AdminToken},
		Env:       env,
		Timeout:   80 * time.Minute,
		MemoryMB:  6144,
	}, t.TempDir(), logf)
	if table := between(res.Console, "SVCPROXY-SCALE-TABLE"); table != "" {
		t.Logf("kernel %s\n%s", res.Kernel, table)
	}
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("vm: the harness exited with code %d", res.ExitCode)
	}
}

// between returns the text between the first two lines equal to marker.
func between(console, marker string) string {
	parts := strings.Split(console, "\n"+marker+"\n")
	if len(parts) < 3 {
		return ""
	}
	return parts[1]
}
