package vm

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// CacheEnv overrides the cache directory (default <module root>/e2e/.cache/vm).
const CacheEnv = "SVCPROXY_VM_CACHE"

// moduleRoot walks up from the working directory to the directory holding go.mod;
// `go test` runs tests in their package directory, which lies inside the module.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func cacheDir(root string) (string, error) {
	dir := os.Getenv(CacheEnv)
	if dir == "" {
		dir = filepath.Join(root, "e2e", ".cache", "vm")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create cache dir: %w", err)
	}
	return dir, nil
}

// lockCache takes an exclusive flock on the cache so that test processes of
// different packages running at once do not build the same files twice.
func lockCache(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open cache lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock cache: %w", err)
	}
	return func() { f.Close() }, nil
}

// writeFileAtomic writes via a temporary file and rename, so an interrupted
// run never leaves a truncated cache entry behind.
func writeFileAtomic(name string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), ".tmp-"+filepath.Base(name))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}

// hasher accumulates the inputs of a cached artifact.
type hasher struct{ parts []string }

func (h *hasher) add(parts ...string) { h.parts = append(h.parts, parts...) }

// addFile records a host file by path, size and modification time: cheap, and
// any package upgrade changes at least one of them.
func (h *hasher) addFile(p string) {
	fi, err := os.Stat(p)
	if err != nil {
		h.add(p, "missing")
		return
	}
	h.add(p, fmt.Sprint(fi.Size()), fi.ModTime().UTC().String())
}

func (h *hasher) sum() string {
	s := sha256.Sum256([]byte(strings.Join(h.parts, "\x00")))
	return hex.EncodeToString(s[:8])
}

// run executes a command and returns its stdout, with stderr in the error.
func run(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
