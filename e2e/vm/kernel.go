package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// KernelPackageEnv pins the Debian kernel package (e.g.
// linux-image-6.1.0-56-cloud-amd64) instead of the newest one apt knows.
const KernelPackageEnv = "SVCPROXY_VM_KERNEL_PACKAGE"

// preloadModules are loaded by /init before the payload runs, in this order
// (virtio_pci before virtio_net so the NIC is probed). Names the kernel does
// not have are skipped; built-in ones need no loading.
var preloadModules = []string{
	"virtio_pci", "virtio_net",
	"nf_conntrack", "nf_nat", "nf_conntrack_netlink", "nfnetlink_acct",
	"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_lblc", "ip_vs_lblcr",
	"ip_vs_dh", "ip_vs_sh", "ip_vs_sed", "ip_vs_nq", "ip_vs_fo", "ip_vs_ovf", "ip_vs_mh",
	"dummy", "veth", "bridge", "br_netfilter", "xfrm_user", "sctp",
	"ip_tables", "ip6_tables", "iptable_nat", "iptable_filter", "iptable_mangle", "iptable_raw",
	"ip6table_nat", "ip6table_filter", "ip6table_mangle", "ip6table_raw",
	"xt_statistic", "xt_recent", "xt_comment", "xt_mark", "xt_conntrack", "xt_MASQUERADE",
	"xt_addrtype", "xt_set", "xt_multiport", "xt_physdev", "xt_nat", "xt_REDIRECT", "xt_state",
	"xt_limit", "xt_LOG", "xt_NFLOG", "xt_CT", "xt_sctp", "xt_connmark", "xt_tcpudp",
	"ipt_REJECT", "ip6t_REJECT",
	"nf_tables", "nft_compat", "nft_chain_nat", "nft_ct", "nft_nat", "nft_masq", "nft_redir",
	"nft_reject_inet", "nft_reject_ipv4", "nft_reject_ipv6", "nft_limit", "nft_numgen",
	"nft_hash", "nft_fib_inet", "nft_fib_ipv4", "nft_fib_ipv6", "nft_log", "nft_quota",
	"ip_set", "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_hash_ipportip",
	"ip_set_hash_ipportnet", "ip_set_hash_net", "ip_set_hash_netport", "ip_set_hash_netiface",
	"ip_set_hash_ipmark", "ip_set_hash_mac", "ip_set_hash_netnet", "ip_set_hash_netportnet",
	"ip_set_bitmap_ip", "ip_set_bitmap_ipmac", "ip_set_bitmap_port", "ip_set_list_set",
}

// autoloadDirs are copied whole (with dependencies) so that modules the
// kernel requests at run time (/sbin/modprobe is busybox) are there too.
var autoloadDirs = []string{
	"kernel/net/netfilter", "kernel/net/ipv4/netfilter", "kernel/net/ipv6/netfilter",
	"kernel/net/bridge", "kernel/net/sctp",
}

// kernel is an extracted Debian kernel package ready to boot.
type kernel struct {
	pkg     string   // Debian package name
	version string   // uname -r
	root    string   // extracted package
	vmlinuz string   // path to the kernel image
	files   []string // module files to ship, relative to lib/modules/<version>
	preload []string // module names /init loads, in order
}

func (k *kernel) moduleDir() string { return filepath.Join(k.root, "lib", "modules", k.version) }

var kernelPkgRE = regexp.MustCompile(`^linux-image-6\.1\.0-(\d+)-cloud-amd64$`)

// aptLists changes (its mtime) whenever apt-get update brings new lists.
const aptLists = "/var/lib/apt/lists"

// newestKernelPackage asks apt's local lists for the newest 6.1 cloud kernel,
// refreshing the lists once when they know none. The answer is remembered
// in the cache until the lists change, as asking apt takes seconds.
func newestKernelPackage(cache string) (string, error) {
	if p := os.Getenv(KernelPackageEnv); p != "" {
		return p, nil
	}
	memo := filepath.Join(cache, "kernel", "newest")
	listsStamp := "unknown"
	if fi, err := os.Stat(aptLists); err == nil {
		listsStamp = fi.ModTime().UTC().String()
	}
	if b, err := os.ReadFile(memo); err == nil {
		if pkg, stamp, ok := strings.Cut(strings.TrimSpace(string(b)), "\n"); ok && stamp == listsStamp {
			return pkg, nil
		}
	}
	pkg, err := askAptNewest()
	if err == nil && os.MkdirAll(filepath.Dir(memo), 0o755) == nil {
		os.WriteFile(memo, []byte(pkg+"\n"+listsStamp+"\n"), 0o644)
	}
	return pkg, err
}

func askAptNewest() (string, error) {
	for attempt := 0; attempt < 2; attempt++ {
		out, err := run("", "apt-cache", "search", "--names-only", `^linux-image-6\.1\.0-[0-9]+-cloud-amd64$`)
		if err != nil {
			return "", err
		}
		best, bestABI := "", -1
		for _, line := range strings.Split(out, "\n") {
			name, _, _ := strings.Cut(line, " ")
			if m := kernelPkgRE.FindStringSubmatch(name); m != nil {
				if abi, _ := strconv.Atoi(m[1]); abi > bestABI {
					best, bestABI = name, abi
				}
			}
		}
		if best != "" {
			return best, nil
		}
		if attempt == 0 {
			if _, err := run("", "apt-get", "update"); err != nil {
				return "", err
			}
		}
	}
	return "", fmt.Errorf("apt knows no linux-image-6.1.0-*-cloud-amd64 package")
}

// prepareKernel downloads and unpacks the kernel package into the cache (once
// per package) and computes which module files to ship.
func prepareKernel(cache string) (*kernel, error) {
	pkg, err := newestKernelPackage(cache)
	if err != nil {
		// Offline, an already unpacked kernel is as good as any.
		cached, _ := filepath.Glob(filepath.Join(cache, "kernel", "linux-image-*", ".ready"))
		if len(cached) == 0 {
			return nil, fmt.Errorf("find kernel package: %w", err)
		}
		sort.Strings(cached)
		pkg = filepath.Base(filepath.Dir(cached[len(cached)-1]))
	}
	root := filepath.Join(cache, "kernel", pkg)
	if _, err := os.Stat(filepath.Join(root, ".ready")); err != nil {
		if err := unpackKernel(cache, pkg, root); err != nil {
			return nil, err
		}
	}
	k := &kernel{pkg: pkg, root: root}
	vers, err := filepath.Glob(filepath.Join(root, "lib", "modules", "*"))
	if err != nil || len(vers) != 1 {
		return nil, fmt.Errorf("kernel package %s: want one lib/modules/* dir, have %v", pkg, vers)
	}
	k.version = filepath.Base(vers[0])
	k.vmlinuz = filepath.Join(root, "boot", "vmlinuz-"+k.version)
	if err := k.selectModules(); err != nil {
		return nil, err
	}
	return k, nil
}

func unpackKernel(cache, pkg, root string) error {
	debDir := filepath.Join(cache, "deb")
	if err := os.MkdirAll(debDir, 0o755); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(debDir, pkg+"_*.deb"))
	if len(debs) == 0 {
		// The sandbox user _apt cannot write here; root downloading is fine for a cache.
		if _, err := run(debDir, "apt-get", "download", "-o", "APT::Sandbox::User=root", pkg); err != nil {
			return fmt.Errorf("download kernel: %w", err)
		}
		debs, _ = filepath.Glob(filepath.Join(debDir, pkg+"_*.deb"))
		if len(debs) == 0 {
			return fmt.Errorf("apt-get download %s left no .deb in %s", pkg, debDir)
		}
	}
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(filepath.Dir(tmp), 0o755); err != nil {
		return err
	}
	if _, err := run("", "dpkg-deb", "-x", debs[0], tmp); err != nil {
		return fmt.Errorf("unpack kernel: %w", err)
	}
	vers, _ := filepath.Glob(filepath.Join(tmp, "lib", "modules", "*"))
	if len(vers) != 1 {
		return fmt.Errorf("kernel package %s: want one lib/modules/* dir, have %v", pkg, vers)
	}
	if _, err := run("", "depmod", "-b", tmp, filepath.Base(vers[0])); err != nil {
		return fmt.Errorf("depmod: %w", err)
	}
	os.RemoveAll(root)
	if err := os.Rename(tmp, root); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(root, ".ready"), []byte(debs[0]+"\n"), 0o644)
}

// selectModules fills k.preload with the wanted modules this kernel builds as
// modules and k.files with everything modprobe says they and the autoload
// directories need.
func (k *kernel) selectModules() error {
	dep, err := os.ReadFile(filepath.Join(k.moduleDir(), "modules.dep"))
	if err != nil {
		return err
	}
	byName := map[string]string{} // module name -> relative path
	for _, line := range strings.Split(string(dep), "\n") {
		rel, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		byName[moduleName(rel)] = rel
	}
	want := map[string]bool{}
	var names []string
	for _, m := range preloadModules {
		if _, ok := byName[moduleName(m)]; ok {
			k.preload = append(k.preload, m)
			names = append(names, m)
		}
	}
	for name, rel := range byName {
		for _, d := range autoloadDirs {
			if strings.HasPrefix(rel, d+"/") {
				names = append(names, name)
			}
		}
	}
	out, err := run("", "modprobe", append([]string{"-d", k.root, "-S", k.version, "--show-depends", "-a"}, names...)...)
	if err != nil {
		return fmt.Errorf("resolve module dependencies: %w", err)
	}
	prefix := k.moduleDir() + "/"
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "insmod" {
			want[strings.TrimPrefix(f[1], prefix)] = true
		}
	}
	for rel := range want {
		k.files = append(k.files, rel)
	}
	sort.Strings(k.files)
	return nil
}

func moduleName(p string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(p), ".ko"), "-", "_")
}
