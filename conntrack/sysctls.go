package conntrack

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/sysctl"
)

// Conntrack sysctls kube-proxy sets, under /proc/sys.
const (
	sysctlMax                 = "net/netfilter/nf_conntrack_max"
	sysctlTCPEstablished      = "net/netfilter/nf_conntrack_tcp_timeout_established"
	sysctlTCPCloseWait        = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	sysctlTCPBeLiberal        = "net/netfilter/nf_conntrack_tcp_be_liberal"
	sysctlUDPTimeout          = "net/netfilter/nf_conntrack_udp_timeout"
	sysctlUDPTimeoutStream    = "net/netfilter/nf_conntrack_udp_timeout_stream"
	hashSizePath              = "/sys/module/nf_conntrack/parameters/hashsize"
	maxConntrackCap           = 1 << 20
	maxPerCoreNonInitNSAdvice = "nf_conntrack_max can only be set from the host's initial network namespace and with a writable /proc/sys; run with --conntrack-max-per-core=0 (conntrack.maxPerCore: 0) to leave it alone"
)

// ConntrackMax is the nf_conntrack_max kube-proxy aims for: maxPerCore per
// CPU, capped at 1,048,576, but never below min. 0 means leave it alone.
func ConntrackMax(cfg v1alpha1.KubeProxyConntrackConfiguration, numCPU int) int {
	if cfg.MaxPerCore == nil || *cfg.MaxPerCore <= 0 {
		return 0
	}
	numCPU = max(numCPU, 1)
	v := min(int(*cfg.MaxPerCore)*numCPU, maxConntrackCap)
	if cfg.Min != nil {
		v = max(v, int(*cfg.Min))
	}
	return v
}

// hashSize is the nf_conntrack hash table size module parameter. It lives
// in /sys, not /proc/sys, and the kernel only accepts writes from the
// initial network namespace.
type hashSize interface {
	Get() (int, error)
	Set(int) error
}

// ApplySysctls sets the conntrack sysctls of cfg the way kube-proxy does.
// Keys that are read-only (a read-only /proc/sys, or nf_conntrack_max from
// a non-init namespace) or missing (nf_conntrack not loaded, a namespace
// without the key) are logged and skipped; so is any failure on
// nf_conntrack_max and the hash size. Other errors are returned, joined,
// after every key was tried.
func ApplySysctls(s sysctl.Setter, cfg v1alpha1.KubeProxyConntrackConfiguration, numCPU int) error {
	return applySysctls(s, sysfsHashSize(hashSizePath), cfg, numCPU)
}

func applySysctls(s sysctl.Setter, hs hashSize, cfg v1alpha1.KubeProxyConntrackConfiguration, numCPU int) error {
	if want := ConntrackMax(cfg, numCPU); want > 0 {
		if err := sysctl.SetIfLower(s, sysctlMax, want); err != nil {
			klog.InfoS("Warning: cannot raise nf_conntrack_max; busy nodes may drop new connections when the table fills",
				"want", want, "err", err, "hint", maxPerCoreNonInitNSAdvice)
		} else {
			raiseHashSize(hs, want/4)
		}
	}
	var errs []error
	set := func(name string, value int) {
		changed, err := sysctl.EnsureValue(s, name, strconv.Itoa(value))
		switch {
		case errors.Is(err, sysctl.ErrReadOnly), errors.Is(err, sysctl.ErrNotExist):
			klog.InfoS("Warning: cannot set conntrack sysctl, leaving it as is", "name", name, "value", value, "err", err)
		case err != nil:
			errs = append(errs, fmt.Errorf("set conntrack sysctl %s=%d: %w", name, value, err))
		case changed:
			klog.InfoS("Set conntrack sysctl", "name", name, "value", value)
		}
	}
	if sec := seconds(cfg.TCPEstablishedTimeout); sec > 0 {
		set(sysctlTCPEstablished, sec)
	}
	if sec := seconds(cfg.TCPCloseWaitTimeout); sec > 0 {
		set(sysctlTCPCloseWait, sec)
	}
	if cfg.TCPBeLiberal {
		set(sysctlTCPBeLiberal, 1)
	}
	if sec := int(cfg.UDPTimeout.Duration / time.Second); sec > 0 {
		set(sysctlUDPTimeout, sec)
	}
	if sec := int(cfg.UDPStreamTimeout.Duration / time.Second); sec > 0 {
		set(sysctlUDPTimeoutStream, sec)
	}
	return errors.Join(errs...)
}

func seconds(d *metav1.Duration) int {
	if d == nil {
		return 0
	}
	return int(d.Duration / time.Second)
}

// raiseHashSize raises the hash size to want, never lowers it. Failures are
// warnings: a small hash table costs lookup time, not correctness.
func raiseHashSize(hs hashSize, want int) {
	cur, err := hs.Get()
	if err != nil {
		klog.InfoS("Warning: cannot read conntrack hashsize", "path", hashSizePath, "err", err)
		return
	}
	if cur >= want {
		return
	}
	if err := hs.Set(want); err != nil {
		// Docker has been known to mount /sys read-only (moby issue #24000).
		klog.InfoS("Warning: cannot raise conntrack hashsize; /sys may be read-only or we are not in the initial network namespace",
			"path", hashSizePath, "current", cur, "want", want, "err", err)
		return
	}
	klog.InfoS("Raised conntrack hashsize", "old", cur, "value", want)
}

// sysfsHashSize is the hashsize module parameter file.
type sysfsHashSize string

func (p sysfsHashSize) Get() (int, error) {
	b, err := os.ReadFile(string(p))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", p, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", p, err)
	}
	return n, nil
}

func (p sysfsHashSize) Set(v int) error {
	f, err := os.OpenFile(string(p), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, readOnly(err))
	}
	_, werr := f.WriteString(strconv.Itoa(v))
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", p, readOnly(err))
	}
	return nil
}

// readOnly tags the errnos of a read-only /sys or a non-init namespace
// (the kernel answers EOPNOTSUPP there) with sysctl.ErrReadOnly.
func readOnly(err error) error {
	for _, e := range []error{syscall.EROFS, syscall.EACCES, syscall.EPERM, syscall.EOPNOTSUPP} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", sysctl.ErrReadOnly, err)
		}
	}
	return err
}
