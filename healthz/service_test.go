package healthz

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
)

var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	svcA      = types.NamespacedName{Namespace: "default", Name: "web"}
	svcB      = types.NamespacedName{Namespace: "shop", Name: "cart"}
)

// client never reuses connections, so a closed server is seen at once.
var client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

type response struct {
	code   int
	header http.Header
	body   string
}

// probe GETs url; err is set when nothing answers.
func probe(url string) (response, error) {
	resp, err := client.Get(url)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, header: resp.Header, body: string(body)}, err
}

func mustProbe(t *testing.T, url string) response {
	t.Helper()
	r, err := probe(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

func mustNotAnswer(t *testing.T, url string) {
	t.Helper()
	if r, err := probe(url); err == nil {
		t.Fatalf("GET %s answered %d, want no listener", url, r.code)
	}
}

// freePort finds a port free on 127.0.0.1 and [::] for the test to use.
func freePort(t *testing.T) uint16 {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if l6, err := net.Listen("tcp6", net.JoinHostPort("::", strconv.Itoa(port))); err == nil {
			l6.Close()
			return uint16(port)
		}
	}
	t.Fatal("no free port")
	return 0
}

func url(host string, port uint16, path string) string {
	return "http://" + net.JoinHostPort(host, strconv.Itoa(int(port))) + path
}

func newLoopbackServer(t *testing.T, recorder record.EventRecorder, healthy func() bool, addrs ...netip.Addr) *ServiceHealthServer {
	t.Helper()
	if len(addrs) == 0 {
		addrs = []netip.Addr{loopback4}
	}
	s := NewServiceHealthServer(addrs, recorder, healthy)
	t.Cleanup(s.Close)
	return s
}

func TestServiceHealthResponses(t *testing.T) {
	tests := []struct {
		name       string
		endpoints  map[types.NamespacedName]int
		healthy    bool
		wantCode   int
		wantBody   string
		wantWeight string
	}{
		{
			name: "local endpoints and healthy proxy", endpoints: map[types.NamespacedName]int{svcA: 2}, healthy: true,
			wantCode: 200, wantWeight: "2",
			wantBody: "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}",
		},
		{
			name: "no local endpoints", endpoints: map[types.NamespacedName]int{svcA: 0}, healthy: true,
			wantCode: 503, wantWeight: "0",
			wantBody: "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": true\n}",
		},
		{
			name: "service missing from endpoints", endpoints: map[types.NamespacedName]int{svcB: 4}, healthy: true,
			wantCode: 503, wantWeight: "0",
			wantBody: "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": true\n}",
		},
		{
			name: "unhealthy proxy", endpoints: map[types.NamespacedName]int{svcA: 3}, healthy: false,
			wantCode: 503, wantWeight: "3",
			wantBody: "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 3,\n\t\"serviceProxyHealthy\": false\n}",
		},
	}
	var healthy atomic.Bool
	s := newLoopbackServer(t, nil, healthy.Load)
	port := freePort(t)
	if err := s.SyncServices(map[types.NamespacedName]uint16{svcA: port}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			healthy.Store(tc.healthy)
			if err := s.SyncEndpoints(tc.endpoints); err != nil {
				t.Fatal(err)
			}
			// Any path is answered.
			for _, path := range []string{"/", "/healthz", "/any/thing?x=1"} {
				r := mustProbe(t, url("127.0.0.1", port, path))
				if r.code != tc.wantCode {
					t.Errorf("%s: status %d, want %d", path, r.code, tc.wantCode)
				}
				if r.body != tc.wantBody {
					t.Errorf("%s: body\n got %q\nwant %q", path, r.body, tc.wantBody)
				}
				wantHeaders := map[string]string{
					"Content-Type":                     "application/json",
					"X-Content-Type-Options":           "nosniff",
					"X-Load-Balancing-Endpoint-Weight": tc.wantWeight,
				}
				for k, v := range wantHeaders {
					if got := r.header.Get(k); got != v {
						t.Errorf("%s: header %s = %q, want %q", path, k, got, v)
					}
				}
			}
		})
	}
}

func TestServiceHealthStartStop(t *testing.T) {
	s := newLoopbackServer(t, nil, nil)
	portA, portB, portB2 := freePort(t), freePort(t), freePort(t)
	for portB == portA {
		portB = freePort(t)
	}
	for portB2 == portA || portB2 == portB {
		portB2 = freePort(t)
	}
	if err := s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1, svcB: 1}); err != nil {
		t.Fatal(err)
	}

	sync := func(services map[types.NamespacedName]uint16) {
		t.Helper()
		if err := s.SyncServices(services); err != nil {
			t.Fatal(err)
		}
	}
	expectServing := func(port uint16, name types.NamespacedName) {
		t.Helper()
		r := mustProbe(t, url("127.0.0.1", port, "/"))
		if r.code != 200 || !strings.Contains(r.body, fmt.Sprintf("%q", name.Name)) {
			t.Fatalf("port %d: %d %s, want 200 for %s", port, r.code, r.body, name)
		}
	}

	sync(map[types.NamespacedName]uint16{svcA: portA, svcB: portB})
	expectServing(portA, svcA)
	expectServing(portB, svcB)
	listenerB := s.services[svcB]

	// Removing A leaves B's server untouched.
	sync(map[types.NamespacedName]uint16{svcB: portB})
	mustNotAnswer(t, url("127.0.0.1", portA, "/"))
	expectServing(portB, svcB)
	if s.services[svcB] != listenerB {
		t.Error("B's server was restarted when A was removed")
	}

	// A changed port moves the server.
	sync(map[types.NamespacedName]uint16{svcB: portB2})
	mustNotAnswer(t, url("127.0.0.1", portB, "/"))
	expectServing(portB2, svcB)

	// A comes back on its old port.
	sync(map[types.NamespacedName]uint16{svcA: portA, svcB: portB2})
	expectServing(portA, svcA)
	expectServing(portB2, svcB)

	sync(nil)
	mustNotAnswer(t, url("127.0.0.1", portA, "/"))
	mustNotAnswer(t, url("127.0.0.1", portB2, "/"))
}

func TestServiceHealthBindFailure(t *testing.T) {
	port := freePort(t)
	// The port is taken on the second address only: nothing may stay open on
	// the first, or the retry would fail on our own socket.
	second := netip.MustParseAddr("127.0.0.2")
	busy, err := net.Listen("tcp4", net.JoinHostPort(second.String(), strconv.Itoa(int(port))))
	if err != nil {
		t.Fatal(err)
	}
	recorder := record.NewFakeRecorder(10)
	recorder.IncludeObject = true
	s := newLoopbackServer(t, recorder, nil, loopback4, second)
	if err := s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1}); err != nil {
		t.Fatal(err)
	}
	services := map[types.NamespacedName]uint16{svcA: port}

	if err := s.SyncServices(services); err != nil {
		t.Fatalf("SyncServices() = %v; bind failures are events, not errors", err)
	}
	select {
	case ev := <-recorder.Events:
		wantPrefix := fmt.Sprintf(`Warning FailedToStartServiceHealthcheck failed to start healthcheck "default/web" on port %d: listen on 127.0.0.2:%d:`, port, port)
		if !strings.HasPrefix(ev, wantPrefix) {
			t.Errorf("event %q, want prefix %q", ev, wantPrefix)
		}
		if !strings.HasSuffix(ev, "involvedObject{kind=Service,apiVersion=v1}") {
			t.Errorf("event %q not on a v1 Service", ev)
		}
	default:
		t.Fatal("no event for the bind failure")
	}
	mustNotAnswer(t, url("127.0.0.1", port, "/"))
	wantErr := fmt.Sprintf("service health check ports not open, retried on next sync: default/web:%d", port)
	if err := s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1}); err == nil || err.Error() != wantErr {
		t.Errorf("SyncEndpoints() = %v, want %q so that the caller retries", err, wantErr)
	}

	busy.Close()
	if err := s.SyncServices(services); err != nil {
		t.Fatal(err)
	}
	if err := s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1}); err != nil {
		t.Errorf("SyncEndpoints() after a successful retry = %v", err)
	}
	for _, host := range []string{"127.0.0.1", "127.0.0.2"} {
		if r := mustProbe(t, url(host, port, "/")); r.code != 200 {
			t.Errorf("%s after retry: status %d, want 200", host, r.code)
		}
	}
	select {
	case ev := <-recorder.Events:
		t.Errorf("unexpected event after a successful retry: %q", ev)
	default:
	}
}

func TestServiceHealthEndpointsBeforeServices(t *testing.T) {
	s := newLoopbackServer(t, nil, nil)
	port := freePort(t)
	if err := s.SyncEndpoints(map[types.NamespacedName]int{svcA: 5}); err != nil {
		t.Fatal(err)
	}
	if err := s.SyncServices(map[types.NamespacedName]uint16{svcA: port}); err != nil {
		t.Fatal(err)
	}
	r := mustProbe(t, url("127.0.0.1", port, "/"))
	if r.code != 200 || r.header.Get("X-Load-Balancing-Endpoint-Weight") != "5" {
		t.Errorf("got %d weight %q, want 200 weight 5", r.code, r.header.Get("X-Load-Balancing-Endpoint-Weight"))
	}
}

// TestServiceHealthAllAddresses checks the unrestricted sockets: IPv4 and
// IPv6 wildcards, as kube-proxy's per-family servers open them.
func TestServiceHealthAllAddresses(t *testing.T) {
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("this host has no IPv6 loopback: %v", err)
	} else {
		l.Close()
	}
	s := NewServiceHealthServer(nil, nil, nil)
	t.Cleanup(s.Close)
	port := freePort(t)
	if err := s.SyncServices(map[types.NamespacedName]uint16{svcA: port}); err != nil {
		t.Fatal(err)
	}
	if err := s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range s.services[svcA].listeners {
		got = append(got, l.Addr().Network()+" "+l.Addr().String())
	}
	want := []string{"tcp 0.0.0.0:" + strconv.Itoa(int(port)), "tcp [::]:" + strconv.Itoa(int(port))}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("listeners %v, want %v", got, want)
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		if r := mustProbe(t, url(host, port, "/")); r.code != 200 {
			t.Errorf("%s: status %d, want 200", host, r.code)
		}
	}
}

func TestListenAddrsFor(t *testing.T) {
	a4 := netip.MustParseAddr("192.0.2.11")
	a6 := netip.MustParseAddr("2001:db8:2::11")
	mapped := netip.MustParseAddr("::ffff:192.0.2.11")
	tests := []struct {
		name   string
		family v1.IPFamily
		addrs  []netip.Addr
		want   []listenAddr
	}{
		{name: "all addresses, both families", want: []listenAddr{{"tcp4", "0.0.0.0", false}, {"tcp6", "::", true}}},
		{name: "all addresses, IPv4", family: v4, want: []listenAddr{{"tcp4", "0.0.0.0", false}}},
		{name: "all addresses, IPv6", family: v6, want: []listenAddr{{"tcp6", "::", false}}},
		{
			name: "restricted, both families", addrs: []netip.Addr{a4, a6, mapped},
			want: []listenAddr{{"tcp4", "192.0.2.11", false}, {"tcp6", "2001:db8:2::11", false}},
		},
		{name: "restricted, one family", family: v6, addrs: []netip.Addr{a4, a6}, want: []listenAddr{{"tcp6", "2001:db8:2::11", false}}},
		{name: "nothing left for the family", family: v6, addrs: []netip.Addr{a4}, want: []listenAddr{{"tcp6", "::", false}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := listenAddrsFor(tc.family, tc.addrs); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("listenAddrsFor() = %v, want %v", got, tc.want)
			}
		})
	}
}
