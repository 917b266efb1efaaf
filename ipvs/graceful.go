package ipvs

import (
	"errors"
	"net/netip"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// graceful tracks real servers that left their service: they stay with
// weight 0 (no new connections) until their connections are gone or the
// grace period ends, so established TCP connections are not cut (the
// kernel drops packets of connections to a deleted destination when
// expire_nodest_conn=1).
type graceful struct {
	clock     clock.PassiveClock
	grace     time.Duration
	check     time.Duration
	items     map[VSKey]map[netip.AddrPort]time.Time
	lastCheck time.Time
}

func newGraceful(clk clock.PassiveClock, grace, check time.Duration) *graceful {
	return &graceful{clock: clk, grace: grace, check: check, items: map[VSKey]map[netip.AddrPort]time.Time{}}
}

// add starts terminating rs. The first check comes a check period later,
// so quiescing a real server costs one call now.
func (g *graceful) add(vs VSKey, rs netip.AddrPort) {
	if len(g.items) == 0 {
		g.lastCheck = g.clock.Now()
	}
	m := g.items[vs]
	if m == nil {
		m = map[netip.AddrPort]time.Time{}
		g.items[vs] = m
	}
	if _, ok := m[rs]; !ok {
		m[rs] = g.clock.Now()
	}
}

func (g *graceful) has(vs VSKey, rs netip.AddrPort) bool {
	_, ok := g.items[vs][rs]
	return ok
}

// remove takes rs off the list (it came back or is gone) and reports
// whether it was there.
func (g *graceful) remove(vs VSKey, rs netip.AddrPort) bool {
	m := g.items[vs]
	if _, ok := m[rs]; !ok {
		return false
	}
	delete(m, rs)
	if len(m) == 0 {
		delete(g.items, vs)
	}
	return true
}

func (g *graceful) dropVS(vs VSKey) { delete(g.items, vs) }

// Len is the number of real servers being terminated.
func (g *graceful) Len() int {
	n := 0
	for _, m := range g.items {
		n += len(m)
	}
	return n
}

// due reports whether a pass should run now: the check period elapsed, or
// some item reached the end of its grace period.
func (g *graceful) due() bool {
	if len(g.items) == 0 {
		return false
	}
	now := g.clock.Now()
	if now.Sub(g.lastCheck) >= g.check {
		return true
	}
	for _, m := range g.items {
		for _, since := range m {
			if now.Sub(since) >= g.grace {
				return true
			}
		}
	}
	return false
}

// process reads the connection counts of every virtual server with items
// (one call each) and deletes the real servers that have no connection
// left or whose grace period is over. known is updated with what was
// deleted; failures leave the item for the next pass.
func (g *graceful) process(k IPVSKernel, known map[VSKey]*knownVS) error {
	now := g.clock.Now()
	g.lastCheck = now
	var errs []error
	for vs, m := range g.items {
		current, err := k.ListRealServers(vs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		conns := make(map[netip.AddrPort]int, len(current))
		for _, rs := range current {
			conns[rs.Addr] = rs.ActiveConns + rs.InactiveConns
		}
		for rs, since := range m {
			n, present := conns[rs]
			if !present {
				g.remove(vs, rs)
				continue
			}
			if n > 0 && now.Sub(since) < g.grace {
				continue
			}
			if err := k.DeleteRealServer(vs, rs); err != nil {
				errs = append(errs, err)
				continue
			}
			klog.V(2).InfoS("Deleted terminated real server", "virtualServer", vs.String(), "realServer", rs.String(),
				"connections", n, "after", now.Sub(since).Round(time.Second))
			g.remove(vs, rs)
			if kv := known[vs]; kv != nil {
				delete(kv.rs, rs)
			}
		}
	}
	return errors.Join(errs...)
}
