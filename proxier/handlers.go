package proxier

import (
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// OnServiceAdd, OnServiceUpdate and OnServiceDelete feed Service changes to
// every family.
func (p *Proxier) OnServiceAdd(svc *v1.Service)         { p.queue(p.tracker.UpdateService(nil, svc)) }
func (p *Proxier) OnServiceUpdate(old, cur *v1.Service) { p.queue(p.tracker.UpdateService(old, cur)) }
func (p *Proxier) OnServiceDelete(svc *v1.Service)      { p.queue(p.tracker.UpdateService(svc, nil)) }
func (p *Proxier) OnEndpointSliceAdd(s *discovery.EndpointSlice) {
	p.queue(p.tracker.UpdateEndpointSlice(nil, s))
}
func (p *Proxier) OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice) {
	p.queue(p.tracker.UpdateEndpointSlice(old, cur))
}
func (p *Proxier) OnEndpointSliceDelete(s *discovery.EndpointSlice) {
	p.queue(p.tracker.UpdateEndpointSlice(s, nil))
}

// OnServicesSynced, OnEndpointSlicesSynced: the informers' initial lists were
// delivered; Run does not sync before both.
func (p *Proxier) OnServicesSynced()       { p.setSynced(&p.servicesSynced) }
func (p *Proxier) OnEndpointSlicesSynced() { p.setSynced(&p.slicesSynced) }

func (p *Proxier) setSynced(flag *bool) {
	p.mu.Lock()
	*flag = true
	p.mu.Unlock()
	p.signalReady()
}

// OnNodeAdd and OnNodeUpdate record this node; other nodes are ignored.
func (p *Proxier) OnNodeAdd(node *v1.Node)       { p.onNode(node, false) }
func (p *Proxier) OnNodeUpdate(_, node *v1.Node) { p.onNode(node, false) }
func (p *Proxier) OnNodeDelete(node *v1.Node)    { p.onNode(node, true) }

func (p *Proxier) onNode(node *v1.Node, deleted bool) {
	if node == nil || node.Name != p.opts.NodeName {
		return
	}
	p.mu.Lock()
	if deleted {
		p.node = nil
	} else {
		p.node, p.nodeSeen = node, true
	}
	var changed []v1.IPFamily
	for _, f := range p.opts.Families {
		n := NewNode(p.opts.NodeName, node, f, p.opts.BindAddress)
		if deleted {
			// Keep programming the addresses we know; only eligibility is lost.
			n.Eligible = false
		}
		if p.tracker.SetNode(f, n) {
			changed = append(changed, f)
		}
	}
	ipsChanged := p.initialized && !p.ipsChanged && !deleted && !ipsEqual(p.nodeIPs, p.currentNodeIPs())
	if ipsChanged {
		p.ipsChanged = true
		klog.InfoS("Node IPs changed", "node", p.opts.NodeName, "before", p.nodeIPs, "after", p.currentNodeIPs())
	}
	p.mu.Unlock()

	if p.opts.Health != nil {
		if deleted {
			p.opts.Health.SyncNode(nil)
		} else {
			p.opts.Health.SyncNode(node)
		}
	}
	if ipsChanged && p.opts.OnNodeIPsChanged != nil {
		p.opts.OnNodeIPsChanged()
	}
	p.signalReady()
	p.queue(changed)
}

// currentNodeIPs is the node's IPs per family; p.mu must be held.
func (p *Proxier) currentNodeIPs() map[v1.IPFamily][]netip.Addr {
	out := map[v1.IPFamily][]netip.Addr{}
	for _, f := range p.opts.Families {
		out[f] = NewNode(p.opts.NodeName, p.node, f, p.opts.BindAddress).IPs
	}
	return out
}

func ipsEqual(a, b map[v1.IPFamily][]netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for f, ips := range a {
		if !slices.Equal(ips, b[f]) {
			return false
		}
	}
	return true
}

// ServiceHandler, EndpointSliceHandler and NodeHandler adapt the On* methods
// to informers.
func (p *Proxier) ServiceHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if svc, ok := obj.(*v1.Service); ok {
				p.OnServiceAdd(svc)
			}
		},
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*v1.Service)
			c, ok2 := cur.(*v1.Service)
			if ok1 && ok2 {
				p.OnServiceUpdate(o, c)
			}
		},
		DeleteFunc: func(obj any) {
			if svc, ok := deletedObject[*v1.Service](obj); ok {
				p.OnServiceDelete(svc)
			}
		},
	}
}

func (p *Proxier) EndpointSliceHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if s, ok := obj.(*discovery.EndpointSlice); ok {
				p.OnEndpointSliceAdd(s)
			}
		},
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*discovery.EndpointSlice)
			c, ok2 := cur.(*discovery.EndpointSlice)
			if ok1 && ok2 {
				p.OnEndpointSliceUpdate(o, c)
			}
		},
		DeleteFunc: func(obj any) {
			if s, ok := deletedObject[*discovery.EndpointSlice](obj); ok {
				p.OnEndpointSliceDelete(s)
			}
		},
	}
}

func (p *Proxier) NodeHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*v1.Node); ok {
				p.OnNodeAdd(n)
			}
		},
		UpdateFunc: func(old, cur any) {
			o, _ := old.(*v1.Node)
			if c, ok := cur.(*v1.Node); ok {
				p.OnNodeUpdate(o, c)
			}
		},
		DeleteFunc: func(obj any) {
			if n, ok := deletedObject[*v1.Node](obj); ok {
				p.OnNodeDelete(n)
			}
		},
	}
}

// deletedObject unwraps the tombstone an informer delivers when it missed
// the delete event itself.
func deletedObject[T any](obj any) (T, bool) {
	if t, ok := obj.(T); ok {
		return t, true
	}
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		t, ok := tomb.Obj.(T)
		return t, ok
	}
	var zero T
	klog.InfoS("Ignoring unexpected object in delete event", "type", fmt.Sprintf("%T", obj))
	return zero, false
}
