package sysctl

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func TestEnsureValue(t *testing.T) {
	cases := []struct {
		name        string
		values      map[string]string
		readOnly    bool
		wantChanged bool
		wantErr     error
		wantValue   string
	}{
		{"changes", map[string]string{"a/b": "0"}, false, true, nil, "1"},
		{"already set", map[string]string{"a/b": "1"}, false, false, nil, "1"},
		{"already set with whitespace", map[string]string{"a/b": " 1\n"}, true, false, nil, " 1\n"},
		{"missing", map[string]string{}, false, false, ErrNotExist, ""},
		{"read-only", map[string]string{"a/b": "0"}, true, false, ErrReadOnly, "0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(tc.values)
			if tc.readOnly {
				f.SetReadOnly("a/b")
			}
			changed, err := EnsureValue(f, "a/b", "1")
			if changed != tc.wantChanged || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("EnsureValue = %v, %v; want %v, %v", changed, err, tc.wantChanged, tc.wantErr)
			}
			if got, _ := f.Get("a/b"); got != tc.wantValue {
				t.Errorf("value %q, want %q", got, tc.wantValue)
			}
		})
	}
}

func TestSetIfLower(t *testing.T) {
	const key = "net/netfilter/nf_conntrack_max"
	cases := []struct {
		name    string
		current string
		value   int
		want    string
		wantErr bool
	}{
		{"raises", "65536", 131072, "131072", false},
		{"never lowers", "262144", 131072, "262144", false},
		{"equal is left alone", "131072", 131072, "131072", false},
		{"trailing newline", "1024\n", 2048, "2048", false},
		{"not a number", "lots", 2048, "lots", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(map[string]string{key: tc.current})
			err := SetIfLower(f, key, tc.value)
			if (err != nil) != tc.wantErr {
				t.Errorf("SetIfLower error = %v, want error %v", err, tc.wantErr)
			}
			if got, _ := f.Get(key); got != tc.want {
				t.Errorf("value %q, want %q", got, tc.want)
			}
		})
	}
	if err := SetIfLower(NewFake(nil), key, 1); !errors.Is(err, ErrNotExist) {
		t.Errorf("SetIfLower of a missing key = %v, want ErrNotExist", err)
	}
	ro := NewFake(map[string]string{key: "1"})
	ro.SetReadOnly("")
	if err := SetIfLower(ro, key, 2); !errors.Is(err, ErrReadOnly) {
		t.Errorf("SetIfLower on a read-only tree = %v, want ErrReadOnly", err)
	}
}

func TestFakeKeepsState(t *testing.T) {
	f := NewFake(map[string]string{"x/y": "0", "x/z": "0"})
	if err := f.Set("x/y", "5"); err != nil {
		t.Fatal(err)
	}
	if v, err := f.Get("x/y"); v != "5" || err != nil {
		t.Errorf("Get after Set = %q, %v", v, err)
	}
	if err := f.Set("x/new", "1"); !errors.Is(err, ErrNotExist) {
		t.Errorf("Set of an unknown key = %v, want ErrNotExist", err)
	}
	if want := []string{"x/y=5"}; !slices.Equal(f.Writes(), want) {
		t.Errorf("Writes = %q, want %q", f.Writes(), want)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		want  error
	}{
		{syscall.ENOENT, ErrNotExist},
		{syscall.EROFS, ErrReadOnly},
		{syscall.EACCES, ErrReadOnly},
		{syscall.EPERM, ErrReadOnly},
		{syscall.EINVAL, nil},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			orig := &fs.PathError{Op: "open", Path: "/proc/sys/x", Err: tc.errno}
			err := classify(orig)
			if !errors.Is(err, orig) {
				t.Errorf("classify lost the original error: %v", err)
			}
			for _, s := range []error{ErrNotExist, ErrReadOnly} {
				if errors.Is(err, s) != (s == tc.want) {
					t.Errorf("classify(%v) is %v: %v, want only %v", tc.errno, s, errors.Is(err, s), tc.want)
				}
			}
		})
	}
}

func TestProcOnDirectory(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "net/ipv4/ip_forward"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := NewAt(root)
	if err := p.Set("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if v, err := p.Get("net/ipv4/ip_forward"); v != "1" || err != nil {
		t.Errorf("Get = %q, %v; want 1", v, err)
	}
	if err := p.Set("net/ipv4/missing", "1"); !errors.Is(err, ErrNotExist) {
		t.Errorf("Set of a missing key = %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Join(root, "net/ipv4/missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Set created a missing key: %v", err)
	}
	if _, err := p.Get("net/ipv4/missing"); !errors.Is(err, ErrNotExist) {
		t.Errorf("Get of a missing key = %v, want ErrNotExist", err)
	}
	for _, bad := range []string{"", "/", "../etc/passwd", "net/../../etc/passwd", "net//ipv4/ip_forward"} {
		if _, err := p.Get(bad); err == nil || errors.Is(err, ErrNotExist) {
			t.Errorf("Get(%q) = %v, want an invalid-name error", bad, err)
		}
	}
}
