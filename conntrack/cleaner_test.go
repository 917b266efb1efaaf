package conntrack

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxier"
)

const (
	dnsName = "default.dns:dns/UDP"
	sigName = "default.sig:sig/SCTP"
	webName = "default.web:http/TCP"
)

// table is a node's conntrack table shared by the cleaner cases: flows of
// several services, protocols and families, each named by what it is.
var table = map[string]string{
	"dns via ClusterIP to lost":     "udp 192.0.2.101:40000 198.51.100.10:53 203.0.113.5:5353",
	"dns via ClusterIP to kept":     "udp 192.0.2.102:40000 198.51.100.10:53 203.0.113.6:5353",
	"dns via NodePort to lost":      "udp 192.0.2.103:40000 192.0.2.11:30053 203.0.113.5:5353",
	"dns via NodePort to kept":      "udp 192.0.2.104:40000 192.0.2.11:30053 203.0.113.6:5353",
	"dns via external IP to lost":   "udp 192.0.2.105:40000 203.0.113.200:53 203.0.113.5:5353",
	"dns via LB IP to lost":         "udp 192.0.2.106:40000 203.0.113.201:53 203.0.113.5:5353",
	"dns not NATed (REJECT era)":    "udp 192.0.2.107:40000 198.51.100.10:53 198.51.100.10:53",
	"dns other port to lost":        "udp 192.0.2.108:40000 198.51.100.10:54 203.0.113.5:5353",
	"sig SCTP to lost":              "sctp 192.0.2.101:40001 198.51.100.20:3868 203.0.113.7:3868",
	"sig SCTP to kept":              "sctp 192.0.2.102:40001 198.51.100.20:3868 203.0.113.8:3868",
	"web TCP to lost":               "tcp 192.0.2.101:40002 198.51.100.30:80 203.0.113.9:8080",
	"unrelated UDP":                 "udp 192.0.2.101:40003 192.0.2.12:53 192.0.2.12:53",
	"dns6 via ClusterIP to lost":    "udp [2001:db8:2::101]:40000 [2001:db8:5::10]:53 [2001:db8:1::5]:5353",
	"dns6 via ClusterIP to kept":    "udp [2001:db8:2::102]:40000 [2001:db8:5::10]:53 [2001:db8:1::6]:5353",
	"dns6 via NodePort to lost":     "udp [2001:db8:2::103]:40000 [2001:db8:2::11]:30053 [2001:db8:1::5]:5353",
	"dns6 via NodePort, other port": "udp [2001:db8:2::103]:40000 [2001:db8:2::11]:30054 [2001:db8:1::5]:5353",
}

func tableFlows() []Flow {
	var out []Flow
	for _, f := range table {
		out = append(out, flow(f))
	}
	return out
}

func dnsService() *proxier.ServicePort {
	return svc(dnsName, "198.51.100.10", 53, nodePort(30053), externalIPs("203.0.113.200"), lbIPs("203.0.113.201"))
}

func TestCleanStale(t *testing.T) {
	tests := []struct {
		name    string
		family  v1.IPFamily
		change  change
		deleted []string
	}{
		{
			name:   "nothing stale",
			change: change{services: []*proxier.ServicePort{dnsService()}},
		},
		{
			name: "UDP lost endpoint: every address and the NodePort, only flows to it",
			change: change{
				services: []*proxier.ServicePort{dnsService()},
				lost:     map[string][]string{dnsName: {"203.0.113.5:5353"}},
			},
			deleted: []string{"dns via ClusterIP to lost", "dns via NodePort to lost", "dns via external IP to lost", "dns via LB IP to lost"},
		},
		{
			name: "UDP first endpoint: every flow to the service",
			change: change{
				services: []*proxier.ServicePort{dnsService()},
				first:    []string{dnsName},
			},
			deleted: []string{"dns via ClusterIP to lost", "dns via ClusterIP to kept", "dns via NodePort to lost",
				"dns via NodePort to kept", "dns via external IP to lost", "dns via LB IP to lost", "dns not NATed (REJECT era)"},
		},
		{
			name: "SCTP lost endpoint",
			change: change{
				services: []*proxier.ServicePort{svc(sigName, "198.51.100.20", 3868)},
				lost:     map[string][]string{sigName: {"203.0.113.7:3868"}},
			},
			deleted: []string{"sig SCTP to lost"},
		},
		{
			name: "TCP is left alone",
			change: change{
				services: []*proxier.ServicePort{svc(webName, "198.51.100.30", 80)},
				lost:     map[string][]string{webName: {"203.0.113.9:8080"}},
			},
		},
		{
			name:    "removed UDP service: every flow to its addresses",
			change:  change{removed: []*proxier.ServicePort{dnsService()}},
			deleted: []string{"dns via ClusterIP to lost", "dns via ClusterIP to kept", "dns via NodePort to lost", "dns via NodePort to kept", "dns via external IP to lost", "dns via LB IP to lost", "dns not NATed (REJECT era)"},
		},
		{
			name:   "removed TCP service is left alone",
			change: change{removed: []*proxier.ServicePort{svc(webName, "198.51.100.30", 80)}},
		},
		{
			name:   "IPv6 lost endpoint touches only IPv6 flows",
			family: v1.IPv6Protocol,
			change: change{
				services: []*proxier.ServicePort{svc(dnsName, "2001:db8:5::10", 53, nodePort(30053))},
				lost:     map[string][]string{dnsName: {"[2001:db8:1::5]:5353"}},
			},
			deleted: []string{"dns6 via ClusterIP to lost", "dns6 via NodePort to lost"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			family := tc.family
			if family == "" {
				family = v1.IPv4Protocol
			}
			fake := NewFake(tableFlows()...)
			deletedBefore := counterValue(t, metrics.ConntrackReconcilerDeletedTotal.WithLabelValues(string(family)))

			n, err := NewCleaner(family, fake).CleanStale(snapshot(family, tc.change))
			if err != nil {
				t.Fatalf("CleanStale: %v", err)
			}
			if n != len(tc.deleted) {
				t.Errorf("CleanStale deleted %d flows, want %d", n, len(tc.deleted))
			}
			gone := map[Flow]bool{}
			for _, name := range tc.deleted {
				gone[flow(table[name])] = true
			}
			for name, f := range table {
				fl := flow(f)
				left := slices.Contains(fake.Flows(fl.Family()), fl)
				if left == gone[fl] {
					t.Errorf("flow %q (%s): left in table = %v, want %v", name, f, left, !gone[fl])
				}
			}
			got := counterValue(t, metrics.ConntrackReconcilerDeletedTotal.WithLabelValues(string(family))) - deletedBefore
			if got != float64(len(tc.deleted)) {
				t.Errorf("deleted-entries metric grew by %v, want %d", got, len(tc.deleted))
			}
		})
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatalf("read counter: %v", err)
	}
	return m.GetCounter().GetValue()
}

func lostDNS() *proxier.Snapshot {
	return snapshot(v1.IPv4Protocol, change{
		services: []*proxier.ServicePort{dnsService()},
		lost:     map[string][]string{dnsName: {"203.0.113.5:5353"}},
	})
}

func TestCleanStaleListsOncePerCall(t *testing.T) {
	fake := NewFake(tableFlows()...)
	c := NewCleaner(v1.IPv4Protocol, fake)
	if _, err := c.CleanStale(snapshot(v1.IPv4Protocol, change{services: []*proxier.ServicePort{dnsService()}})); err != nil {
		t.Fatal(err)
	}
	if l, d := fake.Calls(); l != 0 || d != 0 {
		t.Errorf("with nothing stale: %d lists, %d deletes; want none", l, d)
	}
	if _, err := c.CleanStale(lostDNS()); err != nil {
		t.Fatal(err)
	}
	if l, d := fake.Calls(); l != 1 || d != 1 {
		t.Errorf("with stale flows: %d lists, %d deletes; want 1 and 1", l, d)
	}
	// The same change again finds nothing left to delete.
	n, err := c.CleanStale(lostDNS())
	if err != nil || n != 0 {
		t.Errorf("second CleanStale = %d, %v; want 0, nil", n, err)
	}
	if l, d := fake.Calls(); l != 2 || d != 1 {
		t.Errorf("after second call: %d lists, %d deletes; want 2 and 1", l, d)
	}
}

func TestCleanStaleErrors(t *testing.T) {
	boom := errors.New("boom")
	t.Run("list error is wrapped and nothing is deleted", func(t *testing.T) {
		fake := NewFake(tableFlows()...)
		fake.ListErr = boom
		_, err := NewCleaner(v1.IPv4Protocol, fake).CleanStale(lostDNS())
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "clean stale IPv4 conntrack flows") {
			t.Errorf("err = %v, want wrapped boom", err)
		}
		if got := len(fake.Flows(v1.IPv4Protocol)); got != 12 {
			t.Errorf("table has %d IPv4 flows, want all 12", got)
		}
	})
	t.Run("delete error is wrapped", func(t *testing.T) {
		fake := NewFake(tableFlows()...)
		fake.DeleteErr = boom
		_, err := NewCleaner(v1.IPv4Protocol, fake).CleanStale(lostDNS())
		if !errors.Is(err, boom) {
			t.Errorf("err = %v, want wrapped boom", err)
		}
	})
	t.Run("snapshot of the other family is refused", func(t *testing.T) {
		fake := NewFake(tableFlows()...)
		_, err := NewCleaner(v1.IPv6Protocol, fake).CleanStale(lostDNS())
		if err == nil {
			t.Errorf("err = nil, want a family mismatch")
		}
		if l, _ := fake.Calls(); l != 0 {
			t.Errorf("listed the table %d times, want 0", l)
		}
	})
}

func TestDisableFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env         string
		wantDeleted int
	}{
		{"1", 0},
		{"0", 4},
		{"", 4},
	} {
		t.Run("env="+tc.env, func(t *testing.T) {
			t.Setenv(DisableEnv, tc.env)
			fake := NewFake(tableFlows()...)
			c := NewCleaner(v1.IPv4Protocol, fake, DisableFromEnv())
			t.Setenv(DisableEnv, "flipped later") // read once, at construction
			n, err := c.CleanStale(lostDNS())
			if err != nil {
				t.Fatal(err)
			}
			left := len(fake.Flows(v1.IPv4Protocol))
			if n != tc.wantDeleted || left != 12-tc.wantDeleted {
				t.Errorf("deleted %d, %d IPv4 flows left; want %d deleted, %d left", n, left, tc.wantDeleted, 12-tc.wantDeleted)
			}
		})
	}
}

// dataPlane is a stub data plane failing when err is set.
type dataPlane struct {
	err   error
	syncs int
}

func (d *dataPlane) Sync(*proxier.Snapshot) (proxier.SyncResult, error) {
	d.syncs++
	return proxier.SyncResult{Full: true}, d.err
}

func TestWrap(t *testing.T) {
	boom := errors.New("restore failed")
	tests := []struct {
		name        string
		syncErr     error
		deleteErr   error
		wantErr     error
		wantDeleted int
	}{
		{name: "cleans after a successful sync", wantDeleted: 4},
		{name: "does not clean after a failed sync", syncErr: boom, wantErr: boom},
		{name: "a cleanup failure does not fail the sync", deleteErr: errors.New("netlink")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := NewFake(tableFlows()...)
			fake.DeleteErr = tc.deleteErr
			inner := &dataPlane{err: tc.syncErr}
			res, err := NewCleaner(v1.IPv4Protocol, fake).Wrap(inner).Sync(lostDNS())
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("Sync err = %v, want %v", err, tc.wantErr)
			}
			if inner.syncs != 1 || !reflect.DeepEqual(res, proxier.SyncResult{Full: true}) {
				t.Errorf("inner data plane: %d syncs, result %+v; want 1 and its result", inner.syncs, res)
			}
			if left := len(fake.Flows(v1.IPv4Protocol)); left != 12-tc.wantDeleted {
				t.Errorf("%d IPv4 flows left, want %d", left, 12-tc.wantDeleted)
			}
		})
	}
}

type verifyingPlane struct{ need bool }

func (v *verifyingPlane) Sync(*proxier.Snapshot) (proxier.SyncResult, error) {
	return proxier.SyncResult{}, nil
}
func (v *verifyingPlane) Verify() (bool, error) { return v.need, nil }

func TestWrapKeepsVerifier(t *testing.T) {
	inner := &verifyingPlane{need: true}
	wrapped := NewCleaner(v1.IPv4Protocol, NewFake()).Wrap(inner)
	v, ok := wrapped.(proxier.Verifier)
	if !ok {
		t.Fatal("wrapped data plane does not implement proxier.Verifier")
	}
	if need, err := v.Verify(); err != nil || !need {
		t.Errorf("Verify() = %v, %v; want the inner plane's true", need, err)
	}
}
