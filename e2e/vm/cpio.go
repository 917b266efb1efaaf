package vm

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// archive is an in-memory description of an initramfs: paths (absolute,
// slash-separated) to entries. It is written in the kernel's "newc" cpio
// format. Parent directories are created implicitly.
type archive struct {
	entries map[string]entry
}

type entry struct {
	mode     uint32 // file type and permission bits, as in stat(2)
	data     []byte // file contents or symlink target
	hostPath string // when set, contents are read from this host file at write time
	rdev     [2]int // major, minor of a device node
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

func newArchive() *archive {
	return &archive{entries: map[string]entry{}}
}

func (a *archive) dir(p string) {
	p = path.Clean("/" + p)
	if p == "/" {
		return
	}
	if e, ok := a.entries[p]; ok && e.mode&0o170000 != modeDir {
		// A symlinked directory (e.g. /lib -> usr/lib) stays a symlink.
		return
	}
	a.dir(path.Dir(p))
	a.entries[p] = entry{mode: modeDir | 0o755}
}

func (a *archive) file(p string, perm uint32, data []byte) {
	p = path.Clean("/" + p)
	a.dir(path.Dir(p))
	a.entries[p] = entry{mode: modeFile | perm, data: data}
}

// hostFile adds a host file by reference; it is read when the archive is written.
func (a *archive) hostFile(p string, perm uint32, hostPath string) {
	p = path.Clean("/" + p)
	a.dir(path.Dir(p))
	a.entries[p] = entry{mode: modeFile | perm, hostPath: hostPath}
}

func (a *archive) symlink(p, target string) {
	p = path.Clean("/" + p)
	a.dir(path.Dir(p))
	a.entries[p] = entry{mode: modeSymlink | 0o777, data: []byte(target)}
}

func (a *archive) charDev(p string, perm uint32, major, minor int) {
	p = path.Clean("/" + p)
	a.dir(path.Dir(p))
	a.entries[p] = entry{mode: modeCharDev | perm, rdev: [2]int{major, minor}}
}

func (a *archive) has(p string) bool {
	_, ok := a.entries[path.Clean("/"+p)]
	return ok
}

// paths returns the entries sorted so that every parent precedes its children.
func (a *archive) paths() []string {
	ps := make([]string, 0, len(a.entries))
	for p := range a.entries {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// write writes the archive as an uncompressed newc cpio stream.
func (a *archive) write(w io.Writer) error {
	ino := uint32(1)
	for _, p := range a.paths() {
		e := a.entries[p]
		data := e.data
		if e.hostPath != "" {
			b, err := os.ReadFile(e.hostPath)
			if err != nil {
				return fmt.Errorf("read %s for %s: %w", e.hostPath, p, err)
			}
			data = b
		}
		if err := writeCpioEntry(w, ino, strings.TrimPrefix(p, "/"), e.mode, e.rdev, data); err != nil {
			return fmt.Errorf("write cpio entry %s: %w", p, err)
		}
		ino++
	}
	return writeCpioEntry(w, ino, "TRAILER!!!", 0, [2]int{}, nil)
}

func writeCpioEntry(w io.Writer, ino uint32, name string, mode uint32, rdev [2]int, data []byte) error {
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	// newc header: magic then 13 8-digit hex fields; mtime 0 keeps archives reproducible.
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+8)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	_, err := w.Write(make([]byte, (4-len(data)%4)%4))
	return err
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
