package healthz

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// EventFailedToStart is the reason of the Warning event emitted on a Service
// whose healthCheckNodePort cannot be bound (kube-proxy's reason).
const EventFailedToStart = "FailedToStartServiceHealthcheck"

// serviceBody is kube-proxy's per-service response, byte for byte: it builds
// it from an indented template, not with encoding/json.
const serviceBody = "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}"

// ServiceHealthServer runs one HTTP server per Service with
// externalTrafficPolicy=Local on its healthCheckNodePort. Load balancers probe
// it to send traffic only to nodes with local ready endpoints. It implements
// the core's ServiceHealthSyncer.
type ServiceHealthServer struct {
	listenAddrs []listenAddr
	recorder    record.EventRecorder // may be nil
	healthy     func() bool

	mu       sync.RWMutex
	services map[types.NamespacedName]*serviceListener
	// endpoints is kept apart from services so that a server opened after
	// SyncEndpoints (a retried bind, say) answers with the known count.
	endpoints map[types.NamespacedName]int
	// unbound lists services whose port could not be bound in the last
	// SyncServices; SyncEndpoints reports them so the caller retries.
	unbound map[types.NamespacedName]uint16
}

// listenAddr is one socket each service opens.
type listenAddr struct {
	network string // tcp4 or tcp6
	host    string
	// optional sockets are skipped when the host has no IPv6.
	optional bool
}

// serviceListener is one service's open sockets.
type serviceListener struct {
	port      uint16
	servers   []*http.Server
	listeners []net.Listener
}

// NewServiceHealthServer serves health checks on every address in
// nodePortAddresses, or on all addresses of both families when it is empty:
// 0.0.0.0 (tcp4) and [::] (tcp6), the sockets kube-proxy's two per-family
// servers open. healthy reports proxy health (ProxyHealthServer.IsHealthy).
// Use one such server for both families, or NewServiceHealthServerForFamily
// per family; not both.
func NewServiceHealthServer(nodePortAddresses []netip.Addr, recorder record.EventRecorder, healthy func() bool) *ServiceHealthServer {
	return newServiceHealthServer(listenAddrsFor("", nodePortAddresses), recorder, healthy)
}

// NewServiceHealthServerForFamily is NewServiceHealthServer restricted to one
// IP family, as kube-proxy runs one per family proxier: it listens on the
// family's wildcard, or on the given addresses of that family.
func NewServiceHealthServerForFamily(family v1.IPFamily, nodePortAddresses []netip.Addr, recorder record.EventRecorder, healthy func() bool) *ServiceHealthServer {
	return newServiceHealthServer(listenAddrsFor(family, nodePortAddresses), recorder, healthy)
}

func newServiceHealthServer(addrs []listenAddr, recorder record.EventRecorder, healthy func() bool) *ServiceHealthServer {
	if healthy == nil {
		healthy = func() bool { return true }
	}
	return &ServiceHealthServer{
		listenAddrs: addrs,
		recorder:    recorder,
		healthy:     healthy,
		services:    map[types.NamespacedName]*serviceListener{},
		endpoints:   map[types.NamespacedName]int{},
		unbound:     map[types.NamespacedName]uint16{},
	}
}

// listenAddrsFor picks the sockets: the given addresses of family (both
// families when family is ""), or the wildcard when none is left, as a
// nodePortAddresses list with nothing for a family matches all its addresses.
func listenAddrsFor(family v1.IPFamily, addrs []netip.Addr) []listenAddr {
	var out []listenAddr
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || seen[a] || (family != "" && addrFamily(a) != family) {
			continue
		}
		seen[a] = true
		out = append(out, listenAddr{network: network(a), host: a.String()})
	}
	if len(out) > 0 {
		return out
	}
	switch family {
	case v1.IPv4Protocol:
		return []listenAddr{{network: "tcp4", host: "0.0.0.0"}}
	case v1.IPv6Protocol:
		return []listenAddr{{network: "tcp6", host: "::"}}
	}
	return []listenAddr{{network: "tcp4", host: "0.0.0.0"}, {network: "tcp6", host: "::", optional: true}}
}

func addrFamily(a netip.Addr) v1.IPFamily {
	if a.Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

func network(a netip.Addr) string {
	if a.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// SyncServices makes the open health checks match services (name →
// healthCheckNodePort): it closes removed services and changed ports, opens
// new ones, and leaves the rest serving. A port that cannot be bound is
// reported as an Event on the Service and retried on the next call. Like
// kube-proxy it returns nil then, so the caller still goes on to
// SyncEndpoints for the services that did open; SyncEndpoints returns the
// error instead.
func (s *ServiceHealthServer) SyncServices(services map[types.NamespacedName]uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	for nsn, sl := range s.services {
		if port, ok := services[nsn]; !ok || port != sl.port {
			klog.V(2).InfoS("Closing service health check", "service", nsn, "port", sl.port)
			sl.close()
			delete(s.services, nsn)
		}
	}

	// Sorted so that events and logs come in a stable order.
	names := make([]types.NamespacedName, 0, len(services))
	for nsn := range services {
		if s.services[nsn] == nil {
			names = append(names, nsn)
		}
	}
	slices.SortFunc(names, func(a, b types.NamespacedName) int {
		if a.Namespace != b.Namespace {
			return cmp.Compare(a.Namespace, b.Namespace)
		}
		return cmp.Compare(a.Name, b.Name)
	})
	s.unbound = map[types.NamespacedName]uint16{}
	for _, nsn := range names {
		port := services[nsn]
		klog.V(2).InfoS("Opening service health check", "service", nsn, "port", port)
		sl, err := s.open(nsn, port)
		if err != nil {
			s.reportFailure(nsn, port, err)
			s.unbound[nsn] = port
			continue
		}
		s.services[nsn] = sl
	}
	return nil
}

// SyncEndpoints sets each service's number of local ready endpoints; a
// service missing from the map has none. It fails when the last SyncServices
// could not open some ports, after applying the counts: a caller that skips
// unchanged calls then still calls SyncServices again, which retries them.
func (s *ServiceHealthServer) SyncEndpoints(endpoints map[types.NamespacedName]int) error {
	counts := make(map[types.NamespacedName]int, len(endpoints))
	for nsn, n := range endpoints {
		counts[nsn] = n
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endpoints = counts
	if len(s.unbound) == 0 {
		return nil
	}
	var unbound []string
	for nsn, port := range s.unbound {
		unbound = append(unbound, fmt.Sprintf("%s:%d", nsn, port))
	}
	slices.Sort(unbound)
	return fmt.Errorf("service health check ports not open, retried on next sync: %s", strings.Join(unbound, ", "))
}

// Close stops every service health check.
func (s *ServiceHealthServer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for nsn, sl := range s.services {
		sl.close()
		delete(s.services, nsn)
	}
}

func (s *ServiceHealthServer) reportFailure(nsn types.NamespacedName, port uint16, err error) {
	klog.ErrorS(err, "Failed to start service health check", "service", nsn, "port", port)
	if s.recorder == nil {
		return
	}
	// kube-proxy has no Service object at hand either: it refers to the
	// Service by name, with the name as a stand-in UID.
	ref := &v1.ObjectReference{
		Kind:       "Service",
		APIVersion: "v1",
		Namespace:  nsn.Namespace,
		Name:       nsn.Name,
		UID:        types.UID(nsn.String()),
	}
	s.recorder.Eventf(ref, v1.EventTypeWarning, EventFailedToStart,
		"failed to start healthcheck %q on port %d: %v", nsn.String(), port, err)
}

// open binds every listen address for one service, all or nothing, so a
// half-open service never blocks a later retry on the same port.
func (s *ServiceHealthServer) open(nsn types.NamespacedName, port uint16) (*serviceListener, error) {
	sl := &serviceListener{port: port}
	handler := s.handler(nsn)
	for _, la := range s.listenAddrs {
		addr := net.JoinHostPort(la.host, strconv.Itoa(int(port)))
		l, err := net.Listen(la.network, addr)
		if err != nil {
			if la.optional && noIPv6(err) {
				klog.V(4).InfoS("No IPv6 on this host, service health check listens on IPv4 only", "service", nsn)
				continue
			}
			sl.close()
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: readHeaderTimeout}
		sl.servers = append(sl.servers, srv)
		sl.listeners = append(sl.listeners, l)
		go func() {
			err := srv.Serve(l)
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				klog.ErrorS(err, "Service health check stopped", "service", nsn, "address", l.Addr().String())
			}
		}()
	}
	return sl, nil
}

func noIPv6(err error) bool {
	return errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL)
}

// close stops the servers and closes the sockets itself, so the port is free
// when close returns even if a Serve goroutine has not started yet.
func (sl *serviceListener) close() {
	for _, srv := range sl.servers {
		_ = srv.Close()
	}
	for _, l := range sl.listeners {
		_ = l.Close()
	}
}

// handler answers any path for nsn. The weight header lets load balancers
// that support it spread traffic by local endpoint count.
func (s *ServiceHealthServer) handler(nsn types.NamespacedName) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.RLock()
		_, open := s.services[nsn]
		count := s.endpoints[nsn]
		s.mu.RUnlock()
		if !open {
			// A request that raced with the service's removal.
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		proxyHealthy := s.healthy()

		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		if count != 0 && proxyHealthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = fmt.Fprintf(w, serviceBody, nsn.Namespace, nsn.Name, count, proxyHealthy)
	})
}
