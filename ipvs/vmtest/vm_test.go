package vmtest

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/vm"
)

// TestVM runs this package's Guest tests inside the VM.
func TestVM(t *testing.T) {
	if vm.InGuest() {
		t.Skip("already in the VM")
	}
	if testing.Short() {
		t.Skip("boots a VM (2-5 minutes); not in -short")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root (the VM harness builds an initramfs from host tools)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	args := []string{}
	if os.Getenv("SVCPROXY_IPVS_SCALE") != "" {
		args = append(args, "-scale="+os.Getenv("SVCPROXY_IPVS_SCALE"))
	}
	res := vm.Run(t, vm.Options{Package: "./ipvs/vmtest", Run: "TestGuest", Args: args, Timeout: 15 * time.Minute, MemoryMB: 2048})
	t.Logf("kernel %s, prepare %v, boot to payload %v, total %v", res.Kernel, res.Prepare, res.BootToPayload, res.Boot)
}
