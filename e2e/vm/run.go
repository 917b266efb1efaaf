// Package vm boots a Debian cloud kernel in qemu with a generated initramfs
// and runs a Go test binary inside, so tests can use kernel features the host
// lacks (IPVS, dummy links, SCTP). The serial console is the only channel
// back: /init prints markers carrying a per-run nonce around the payload.
package vm

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// AccelEnv selects the qemu accelerator ("tcg" by default; "kvm" where /dev/kvm works).
const AccelEnv = "SVCPROXY_VM_ACCEL"

// Options describes one VM run.
type Options struct {
	// Package is the Go package whose tests run inside the VM, relative to
	// the module root ("./e2e/vm/ipvssmoke") or as an import path.
	Package string
	// Run is the -test.run pattern; Args are further test binary flags.
	Run  string
	Args []string
	// Svcproxy builds ./cmd/svcproxy (static) into the VM at SvcproxyPath.
	Svcproxy bool
	// Tags are build tags for the test binary and svcproxy.
	Tags []string
	// Script, when set, is run by sh instead of the test binary.
	Script string
	// Env is exported to the payload.
	Env map[string]string
	// Files are extra files (guest path -> contents, mode 0755).
	Files map[string][]byte
	// APIServer, when set, is written as a kubeconfig to KubeconfigPath.
	APIServer *APIServer
	// Timeout bounds the whole VM run; qemu is killed after it. Default 10m.
	Timeout time.Duration
	// MemoryMB and CPUs size the VM; defaults 1024 and 2.
	MemoryMB, CPUs int
}

// Result is what a finished VM run reported.
type Result struct {
	ExitCode      int           // the payload's exit code
	Console       string        // the whole serial console output
	Kernel        string        // kernel release that ran
	Prepare       time.Duration // kernel, initramfs and payload build
	BootToPayload time.Duration // qemu start until the payload started
	Boot          time.Duration // qemu start until qemu exited
}

// Run boots the VM, streams its console to t.Log and fails t when the VM
// could not be prepared, the payload exited non-zero, the end marker is
// missing, the VM did not power off, or the time bound was hit.
func Run(t *testing.T, opts Options) Result {
	t.Helper()
	res, err := Exec(opts, t.TempDir(), t.Logf)
	if err != nil {
		t.Fatalf("vm: %v", err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("vm: payload exited with code %d", res.ExitCode)
	}
	return res
}

// Exec is Run without a testing.T: it builds into tmp (which the caller
// removes), logs console lines through logf and returns an error for any
// failure except a non-zero payload exit code, which is in Result.ExitCode.
func Exec(opts Options, tmp string, logf func(string, ...any)) (Result, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Minute
	}
	if opts.MemoryMB == 0 {
		opts.MemoryMB = 1024
	}
	if opts.CPUs == 0 {
		opts.CPUs = 2
	}
	start := time.Now()
	k, initrd, nonce, err := prepare(opts, tmp, logf)
	if err != nil {
		return Result{}, err
	}
	res := Result{Kernel: k.version, Prepare: time.Since(start)}
	logf("vm: prepared kernel %s and initramfs in %v", k.version, res.Prepare.Round(time.Millisecond))
	err = boot(k.vmlinuz, initrd, nonce, opts, logf, &res)
	return res, err
}

func prepare(opts Options, tmp string, logf func(string, ...any)) (*kernel, string, string, error) {
	for _, bin := range []string{"qemu-system-x86_64", "apt-get", "dpkg-deb", "depmod", "modprobe", "ldd"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, "", "", fmt.Errorf("%s is needed (hack/install-deps.sh installs it): %w", bin, err)
		}
	}
	root, err := moduleRoot()
	if err != nil {
		return nil, "", "", err
	}
	cache, err := cacheDir(root)
	if err != nil {
		return nil, "", "", err
	}
	unlock, err := lockCache(cache)
	if err != nil {
		return nil, "", "", err
	}
	t0 := time.Now()
	k, err := prepareKernel(cache)
	t1 := time.Now()
	var base string
	if err == nil {
		base, err = buildBase(cache, k, logf)
	}
	unlock()
	if err != nil {
		return nil, "", "", err
	}
	t2 := time.Now()
	defer func() {
		logf("vm: kernel %v, base initramfs %v, payload build %v", t1.Sub(t0).Round(time.Millisecond),
			t2.Sub(t1).Round(time.Millisecond), time.Since(t2).Round(time.Millisecond))
	}()
	nonceBytes := make([]byte, 8)
	rand.Read(nonceBytes)
	nonce := hex.EncodeToString(nonceBytes)
	payload, err := payloadArchive(root, tmp, nonce, opts)
	if err != nil {
		return nil, "", "", err
	}
	// The kernel unpacks concatenated cpio archives in order; the payload
	// stays uncompressed because gunzip in an emulated CPU is slow.
	initrd := filepath.Join(tmp, "initrd.img")
	f, err := os.Create(initrd)
	if err != nil {
		return nil, "", "", err
	}
	defer f.Close()
	bf, err := os.Open(base)
	if err != nil {
		return nil, "", "", err
	}
	defer bf.Close()
	n, err := io.Copy(f, bf)
	if err != nil {
		return nil, "", "", fmt.Errorf("write initrd: %w", err)
	}
	// An uncompressed archive must start 4-byte aligned; the kernel skips zeros.
	if _, err := f.Write(make([]byte, (4-n%4)%4)); err != nil {
		return nil, "", "", err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := payload.write(w); err != nil {
		return nil, "", "", fmt.Errorf("write payload: %w", err)
	}
	if err := w.Flush(); err != nil {
		return nil, "", "", err
	}
	return k, initrd, nonce, f.Close()
}

func qemuArgs(vmlinuz, initrd string, opts Options) []string {
	accel, cpu := os.Getenv(AccelEnv), "max"
	if accel == "" {
		accel = "tcg"
	}
	if accel == "kvm" {
		cpu = "host"
	}
	return []string{
		"-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(opts.MemoryMB), "-smp", strconv.Itoa(opts.CPUs),
		"-nographic", "-no-reboot",
		"-kernel", vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet rdinit=/init",
		// A non-10.x user network: the guest reaches host loopback as 198.18.0.2
		// and qemu creates no link on the host.
		"-netdev", "user,id=n0,net=198.18.0.0/24,host=" + HostAddr + ",dhcpstart=" + GuestAddr,
		// No option ROM: iPXE would wait for a key press at boot.
		"-device", "virtio-net-pci,netdev=n0,romfile=",
	}
}

var (
	endRE  = regexp.MustCompile(`SVCPROXY-VM-END ([0-9a-f]+) rc=(\d+)`)
	ansiRE = regexp.MustCompile("\x1b(\\[[0-9;?]*[a-zA-Z]|c)")
)

// boot runs qemu to completion or the time bound, filling res.
func boot(vmlinuz, initrd, nonce string, opts Options, logf func(string, ...any), res *Result) error {
	cmd := exec.Command("qemu-system-x86_64", qemuArgs(vmlinuz, initrd, opts)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	var mu sync.Mutex
	timedOut := false
	timer := time.AfterFunc(opts.Timeout, func() {
		mu.Lock()
		timedOut = true
		mu.Unlock()
		cmd.Process.Kill() // by PID: only the qemu we started
	})
	defer timer.Stop()

	con := &console{nonce: nonce, start: start}
	con.read(stdout, logf)
	waitErr := cmd.Wait()
	res.Boot = time.Since(start)
	res.Console = con.text.String()
	res.ExitCode = con.exitCode
	res.BootToPayload = con.payloadAt
	logf("vm: qemu exited after %v (boot to payload %v)", res.Boot.Round(time.Millisecond), res.BootToPayload.Round(time.Millisecond))
	mu.Lock()
	defer mu.Unlock()
	var bound error
	if timedOut {
		bound = fmt.Errorf("killed qemu after the %v time bound", opts.Timeout)
	} else if waitErr != nil {
		bound = fmt.Errorf("qemu: %w: %s", waitErr, strings.TrimSpace(stderr.String()))
	}
	return con.verdict(bound, timedOut)
}

// console follows the serial output of one run.
type console struct {
	nonce      string
	start      time.Time
	text       strings.Builder
	payloadAt  time.Duration // since start, when the payload began
	ended      bool          // the end marker with our nonce was seen
	exitCode   int
	poweredOff bool
}

func (c *console) read(r io.Reader, logf func(string, ...any)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		// SeaBIOS clears the screen with escape sequences; keep the log plain.
		line := ansiRE.ReplaceAllString(strings.TrimRight(sc.Text(), "\r"), "")
		c.text.WriteString(line + "\n")
		if strings.TrimSpace(line) != "" {
			logf("%s", line)
		}
		switch {
		case strings.Contains(line, "SVCPROXY-VM-PAYLOAD-START "+c.nonce):
			c.payloadAt = time.Since(c.start)
		case strings.Contains(line, "reboot: Power down"):
			c.poweredOff = true
		}
		// The nonce keeps a payload that prints a marker from faking success.
		if m := endRE.FindStringSubmatch(line); m != nil && m[1] == c.nonce {
			c.ended = true
			c.exitCode, _ = strconv.Atoi(m[2])
		}
	}
}

// verdict joins the problems of a run: bound (time bound or qemu failure),
// a missing end marker, and a VM that ended without powering off.
func (c *console) verdict(bound error, timedOut bool) error {
	var errs []error
	if bound != nil {
		errs = append(errs, bound)
	}
	if !c.ended {
		errs = append(errs, errors.New("the VM printed no end marker (payload did not finish)"))
	}
	if !c.poweredOff && !timedOut {
		errs = append(errs, errors.New("the VM did not power off (kernel panic or crash; see console)"))
	}
	return errors.Join(errs...)
}
