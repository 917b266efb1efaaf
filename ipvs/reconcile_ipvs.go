package ipvs

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// syncVirtualServers adds, updates and deletes virtual and real servers.
// Real servers that leave go through graceful termination.
func (r *Reconciler) syncVirtualServers(ds *DesiredState) []error {
	var errs []error
	for key, want := range ds.VirtualServers {
		kv := r.known[key]
		if kv == nil {
			if err := r.k.IPVS.AddVirtualServer(want.VirtualServer); err != nil {
				logFailure(err, "Failed to add virtual server", "service", want.Service.String(), "virtualServer", key.String())
				errs = append(errs, err)
				r.dirtyVSList = true
				continue
			}
			kv = &knownVS{vs: want.VirtualServer, rs: map[netip.AddrPort]RealServer{}}
			r.known[key] = kv
		} else if !kv.vs.sameConfig(want.VirtualServer) {
			if err := r.k.IPVS.UpdateVirtualServer(want.VirtualServer); err != nil {
				logFailure(err, "Failed to update virtual server", "service", want.Service.String(), "virtualServer", key.String())
				errs = append(errs, err)
				r.dirtyVSList = true
			} else {
				kv.vs = want.VirtualServer
			}
		}
		errs = append(errs, r.syncRealServers(want, kv)...)
	}
	for key := range r.known {
		// Excluded addresses are never cleaned up (--ipvs-exclude-cidrs), even
		// when a service of ours used one.
		if _, ok := ds.VirtualServers[key]; ok || r.opts.excluded(key.Address) {
			continue
		}
		if err := r.k.IPVS.DeleteVirtualServer(key); err != nil {
			logFailure(err, "Failed to delete virtual server", "virtualServer", key.String())
			errs = append(errs, err)
			r.dirtyVSList = true
			continue
		}
		delete(r.known, key)
		r.graceful.dropVS(key)
	}
	return errs
}

func (r *Reconciler) syncRealServers(want *DesiredVS, kv *knownVS) []error {
	var errs []error
	key := want.VSKey
	fail := func(err error, msg string, rs netip.AddrPort) {
		logFailure(err, msg, "service", want.Service.String(), "virtualServer", key.String(), "realServer", rs.String())
		errs = append(errs, err)
		r.dirtyVS.Insert(key)
	}
	for addr, weight := range want.RealServers {
		have, ok := kv.rs[addr]
		rs := RealServer{Addr: addr, Weight: weight}
		switch {
		case !ok:
			if err := r.k.IPVS.AddRealServer(key, rs); err != nil {
				fail(err, "Failed to add real server", addr)
				continue
			}
			kv.rs[addr] = rs
		case have.Weight != weight:
			// Back from graceful termination, or left at weight 0 by an
			// earlier run: restore its weight.
			if err := r.k.IPVS.UpdateRealServer(key, rs); err != nil {
				fail(err, "Failed to update real server", addr)
				continue
			}
			have.Weight = weight
			kv.rs[addr] = have
		}
		r.graceful.remove(key, addr)
	}
	for addr, have := range kv.rs {
		if _, ok := want.RealServers[addr]; ok || r.graceful.has(key, addr) {
			continue
		}
		if key.Protocol != v1.ProtocolTCP {
			// UDP and SCTP have no connection end to wait for.
			if err := r.k.IPVS.DeleteRealServer(key, addr); err != nil {
				fail(err, "Failed to delete real server", addr)
				continue
			}
			delete(kv.rs, addr)
			continue
		}
		if have.Weight != 0 {
			if err := r.k.IPVS.UpdateRealServer(key, RealServer{Addr: addr, Weight: 0}); err != nil {
				fail(err, "Failed to quiesce real server", addr)
				continue
			}
			have.Weight = 0
			kv.rs[addr] = have
		}
		r.graceful.add(key, addr)
	}
	return errs
}

// String describes a DesiredVS for logs.
func (d *DesiredVS) String() string {
	return fmt.Sprintf("%s %s (%d real servers)", d.VSKey, d.Service, len(d.RealServers))
}
