package vm

import (
	"bufio"
	"bytes"
	_ "embed"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

//go:embed init.sh
var initScript []byte

// rootfsFormat changes whenever the layout below changes, invalidating caches.
const rootfsFormat = "rootfs-v1"

// hostTools are the user-space tools shipped in the VM, with the symlinks
// (Debian alternatives included) that lead to them. Missing ones are skipped.
var hostTools = []string{
	"/usr/sbin/iptables", "/usr/sbin/iptables-save", "/usr/sbin/iptables-restore",
	"/usr/sbin/ip6tables", "/usr/sbin/ip6tables-save", "/usr/sbin/ip6tables-restore",
	"/usr/sbin/iptables-legacy", "/usr/sbin/iptables-legacy-save", "/usr/sbin/iptables-legacy-restore",
	"/usr/sbin/ip6tables-legacy", "/usr/sbin/ip6tables-legacy-save", "/usr/sbin/ip6tables-legacy-restore",
	"/usr/sbin/iptables-nft", "/usr/sbin/iptables-nft-save", "/usr/sbin/iptables-nft-restore",
	"/usr/sbin/ip6tables-nft", "/usr/sbin/ip6tables-nft-save", "/usr/sbin/ip6tables-nft-restore",
	"/usr/sbin/xtables-legacy-multi", "/usr/sbin/xtables-nft-multi",
	"/usr/sbin/ipset", "/usr/sbin/ipvsadm", "/usr/sbin/ipvsadm-save", "/usr/sbin/ipvsadm-restore",
	"/usr/sbin/conntrack", "/usr/sbin/nft", "/usr/bin/ip", "/usr/bin/ss",
	// HAProxy is the real load balancer of the LoadBalancerHAProxy scenario.
	"/usr/sbin/haproxy",
	// util-linux's flock holds the xtables lock in e2e/faults (busybox has none).
	"/usr/bin/flock",
}

// hostDataDirs hold files the tools read at run time (xtables extensions are
// dlopened, so ldd of the binaries does not name them).
var hostDataDirs = []string{"/usr/lib/x86_64-linux-gnu/xtables", "/etc/iproute2"}

var hostDataFiles = []string{"/etc/protocols", "/etc/services", "/etc/ethertypes"}

// buildBase assembles the run-independent part of the initramfs (busybox,
// tools and their libraries, kernel modules, /init) and caches it as a cpio
// named by a hash of its inputs. It returns the cached file. The archive is
// not compressed: gunzip of ~23 MB took the emulated guest ~5 s per boot.
func buildBase(cache string, k *kernel, logf func(string, ...any)) (string, error) {
	// Assembling runs ldd ~150 times (seconds under TCG-loaded CPUs); any
	// package change on the host goes through dpkg, so its status file
	// stands in for the libraries in a quick first check; the lists of what
	// to ship are part of it.
	quick := &hasher{}
	quick.add(rootfsFormat, k.pkg, string(initScript), strings.Join(k.preload, ","), strings.Join(k.files, ","),
		strings.Join(hostTools, ","), strings.Join(hostDataDirs, ","), strings.Join(hostDataFiles, ","))
	quick.addFile("/var/lib/dpkg/status")
	quick.addFile("/usr/bin/busybox")
	memo := filepath.Join(cache, "initramfs-base-"+quick.sum()+".name")
	if b, err := os.ReadFile(memo); err == nil {
		if name := strings.TrimSpace(string(b)); fileExists(name) {
			return name, nil
		}
	}
	name, err := assembleBase(cache, k, logf)
	if err == nil {
		os.WriteFile(memo, []byte(name+"\n"), 0o644)
	}
	return name, err
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func assembleBase(cache string, k *kernel, logf func(string, ...any)) (string, error) {
	a, err := baseArchive(k)
	if err != nil {
		return "", err
	}
	h := &hasher{}
	h.add(rootfsFormat, k.pkg, string(initScript))
	for _, p := range a.paths() {
		e := a.entries[p]
		h.add(p, fmt.Sprint(e.mode), string(e.data))
		if e.hostPath != "" {
			h.addFile(e.hostPath)
		}
	}
	name := filepath.Join(cache, "initramfs-base-"+h.sum()+".cpio")
	if _, err := os.Stat(name); err == nil {
		return name, nil
	}
	logf("vm: building base initramfs %s (%d entries)", filepath.Base(name), len(a.entries))
	if err := writeFileAtomic(name, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		if err := a.write(bw); err != nil {
			return err
		}
		return bw.Flush()
	}); err != nil {
		return "", fmt.Errorf("write base initramfs: %w", err)
	}
	old, _ := filepath.Glob(filepath.Join(cache, "initramfs-base-*"))
	for _, o := range old {
		if o != name && !strings.HasSuffix(o, ".name") {
			os.Remove(o)
		}
	}
	return name, nil
}

func baseArchive(k *kernel) (*archive, error) {
	a := newArchive()
	// Debian merged /usr: the tools' compiled-in paths work either way.
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		a.symlink("/"+d, "usr/"+d)
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/vm", "/usr/local/bin", "/var/tmp"} {
		a.dir(d)
	}
	a.charDev("/dev/console", 0o600, 5, 1)
	a.charDev("/dev/null", 0o666, 1, 3)
	a.symlink("/var/run", "../run")
	a.file("/init", 0o755, initScript)
	a.file("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	a.file("/etc/group", 0o644, []byte("root:x:0:\n"))
	a.file("/etc/hosts", 0o644, []byte("127.0.0.1 localhost\n::1 localhost\n"))
	a.file("/etc/resolv.conf", 0o644, []byte("nameserver 198.18.0.3\n"))
	a.file("/etc/vm/modules", 0o644, []byte(strings.Join(k.preload, "\n")+"\n"))

	if err := addModules(a, k); err != nil {
		return nil, err
	}
	for _, t := range hostTools {
		if _, err := os.Lstat(t); err != nil {
			continue
		}
		if err := addHostPath(a, t); err != nil {
			return nil, err
		}
	}
	for _, d := range hostDataDirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if e.Type().IsRegular() || e.Type()&os.ModeSymlink != 0 {
				if err := addHostPath(a, filepath.Join(d, e.Name())); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, f := range hostDataFiles {
		if _, err := os.Stat(f); err == nil {
			if err := addHostPath(a, f); err != nil {
				return nil, err
			}
		}
	}
	return a, addBusybox(a)
}

func addModules(a *archive, k *kernel) error {
	dst := "/usr/lib/modules/" + k.version
	for _, rel := range k.files {
		a.hostFile(dst+"/"+rel, 0o644, filepath.Join(k.moduleDir(), rel))
	}
	// busybox modprobe reads the text indexes; the .bin ones are kmod's.
	idx, err := filepath.Glob(filepath.Join(k.moduleDir(), "modules.*"))
	if err != nil {
		return err
	}
	for _, f := range idx {
		if !strings.HasSuffix(f, ".bin") {
			a.hostFile(dst+"/"+filepath.Base(f), 0o644, f)
		}
	}
	return nil
}

// addBusybox installs busybox-static and links every applet that no real
// tool already provides; /sbin/modprobe thereby becomes busybox.
func addBusybox(a *archive) error {
	bb := "/usr/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		return fmt.Errorf("busybox-static is not installed: %w", err)
	}
	a.hostFile(bb, 0o755, bb)
	out, err := run("", bb, "--list-full")
	if err != nil {
		return err
	}
	for _, p := range strings.Fields(out) {
		p = "/" + p
		for _, d := range []string{"/bin/", "/sbin/"} {
			if strings.HasPrefix(p, d) {
				p = "/usr" + p
			}
		}
		name := path.Base(p)
		if a.has("/usr/bin/"+name) || a.has("/usr/sbin/"+name) || a.has(p) {
			continue
		}
		a.symlink(p, bb)
	}
	return nil
}

// addHostPath copies a host file into the archive at the same path (with
// directory symlinks resolved), following file symlinks and adding every
// shared library ldd names for ELF files.
func addHostPath(a *archive, p string) error {
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return fmt.Errorf("resolve %s: %w", p, err)
	}
	p = filepath.Join(dir, filepath.Base(p))
	if a.has(p) {
		return nil
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("stat %s: %w", p, err)
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		a.symlink(p, target)
		if !filepath.IsAbs(target) {
			target = filepath.Join(dir, target)
		}
		return addHostPath(a, target)
	case fi.Mode().IsRegular():
		a.hostFile(p, uint32(fi.Mode().Perm()), p)
		libs, err := sharedLibs(p)
		if err != nil {
			return err
		}
		for _, l := range libs {
			if err := addHostPath(a, l); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("%s: not a file or symlink", p)
	}
}

// sharedLibs lists the libraries ldd resolves for an ELF file; it returns
// nothing for scripts, data and static binaries.
func sharedLibs(p string) ([]string, error) {
	head := make([]byte, 4)
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	_, err = io.ReadFull(f, head)
	f.Close()
	if err != nil || !bytes.Equal(head, []byte("\x7fELF")) {
		return nil, nil
	}
	out, err := run("", "ldd", p)
	if err != nil {
		if strings.Contains(err.Error(), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w", p, err)
	}
	var libs []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		case len(f) >= 2 && f[1] == "=>" && f[2] == "not":
			return nil, fmt.Errorf("ldd %s: %s not found", p, f[0])
		}
	}
	return libs, nil
}
