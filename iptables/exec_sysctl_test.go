package iptables

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/sysctl"
)

func TestSetupIPTablesMode(t *testing.T) {
	all := map[string]string{
		"net/ipv4/ip_forward":                 "0",
		"net/ipv6/conf/all/forwarding":        "0",
		"net/ipv4/conf/all/route_localnet":    "0",
		"net/bridge/bridge-nf-call-iptables":  "0",
		"net/bridge/bridge-nf-call-ip6tables": "0",
	}
	noBridge := map[string]string{
		"net/ipv4/ip_forward":              "1",
		"net/ipv6/conf/all/forwarding":     "0",
		"net/ipv4/conf/all/route_localnet": "0",
	}
	cases := []struct {
		name       string
		values     map[string]string
		readOnly   string // "" none, "*" the whole tree, else one key
		family     v1.IPFamily
		localhost  bool
		wantWrites []string
		wantErr    error
	}{{
		name: "ipv4 with localhost nodeports", values: all, family: v1.IPv4Protocol, localhost: true,
		wantWrites: []string{"net/ipv4/ip_forward=1", "net/bridge/bridge-nf-call-iptables=1", "net/ipv4/conf/all/route_localnet=1"},
	}, {
		name: "ipv4 without localhost nodeports", values: all, family: v1.IPv4Protocol,
		wantWrites: []string{"net/ipv4/ip_forward=1", "net/bridge/bridge-nf-call-iptables=1"},
	}, {
		name: "ipv6 ignores localhost nodeports", values: all, family: v1.IPv6Protocol, localhost: true,
		wantWrites: []string{"net/ipv6/conf/all/forwarding=1", "net/bridge/bridge-nf-call-ip6tables=1"},
	}, {
		name: "missing bridge key and values already set", values: noBridge, family: v1.IPv4Protocol, localhost: true,
		wantWrites: []string{"net/ipv4/conf/all/route_localnet=1"},
	}, {
		name: "read-only tree", values: all, readOnly: "*", family: v1.IPv4Protocol, localhost: true,
		wantErr: sysctl.ErrReadOnly,
	}, {
		name: "read-only route_localnet still sets the rest", values: all, readOnly: "net/ipv4/conf/all/route_localnet",
		family: v1.IPv4Protocol, localhost: true,
		wantWrites: []string{"net/ipv4/ip_forward=1", "net/bridge/bridge-nf-call-iptables=1"},
		wantErr:    sysctl.ErrReadOnly,
	}, {
		name: "missing forwarding key", values: map[string]string{}, family: v1.IPv6Protocol,
		wantErr: sysctl.ErrNotExist,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := sysctl.NewFake(tc.values)
			switch tc.readOnly {
			case "":
			case "*":
				f.SetReadOnly("")
			default:
				f.SetReadOnly(tc.readOnly)
			}
			err := SetupIPTablesMode(f, tc.family, tc.localhost)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("SetupIPTablesMode error = %v, want %v", err, tc.wantErr)
			}
			if got := f.Writes(); !slices.Equal(got, tc.wantWrites) {
				t.Errorf("writes %q, want %q", got, tc.wantWrites)
			}
		})
	}
}

func TestSetupIPTablesModeInNetNS(t *testing.T) {
	for _, tc := range []struct {
		family v1.IPFamily
		want   []string
	}{
		{v1.IPv4Protocol, []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet"}},
		{v1.IPv6Protocol, []string{"net/ipv6/conf/all/forwarding"}},
	} {
		t.Run(string(tc.family), func(t *testing.T) {
			ns := newNetNS(t)
			// Borrow the kernel's namespace switch: sysctls under net/ are
			// per namespace of the thread that writes them.
			k := &execKernel{netns: ns}
			if err := k.inNetNS(func() error { return SetupIPTablesMode(sysctl.New(), tc.family, true) }); err != nil {
				t.Fatalf("SetupIPTablesMode in %s: %v", ns, err)
			}
			for _, name := range tc.want {
				out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/sys/"+name).Output()
				if err != nil || strings.TrimSpace(string(out)) != "1" {
					t.Errorf("%s in %s = %q, %v; want 1", name, ns, out, err)
				}
			}
		})
	}
}
