package iptables

import "iter"

// Ruleset is one build's output, kept in parts so that it can be written in
// one iptables-restore call or, for large syncs, in several (see Inputs).
type Ruleset struct {
	Full bool
	// Stale lists the service chains to flush and delete, sorted.
	Stale []string
	// NoLocalEndpoints counts services with a Local policy and no local
	// endpoints, by "internal" / "external".
	NoLocalEndpoints map[string]int

	localhostGuard bool
	// skipDispatch: KUBE-SERVICES and KUBE-NODEPORTS are as the kernel has them.
	skipDispatch bool
	// filterChanged: the filter rules differ from the kernel's.
	filterChanged bool
	filter        ruleBuf // filter rules (chain lines are fixed)
	natStatic     ruleBuf // KUBE-POSTROUTING and KUBE-MARK-MASQ rules
	natServices   ruleBuf // KUBE-SERVICES rules
	natNodePorts  ruleBuf // KUBE-NODEPORTS rules
	svcChains     ruleBuf // chain lines of the per-service chains written
	svcRules      ruleBuf // rules of the per-service chains written
	// spans ends each written service's part of svcChains and svcRules.
	spans []svcSpan
	// natTotal counts the nat rules in the kernel after this sync.
	natTotal int
	out      []byte
}

type svcSpan struct{ chainsEnd, rulesEnd int }

func (rs *Ruleset) reset(full bool) {
	rs.Full = full
	rs.Stale = rs.Stale[:0]
	rs.NoLocalEndpoints = map[string]int{"internal": 0, "external": 0}
	for _, w := range []*ruleBuf{&rs.filter, &rs.natStatic, &rs.natServices, &rs.natNodePorts, &rs.svcChains, &rs.svcRules} {
		w.reset()
	}
	rs.spans = rs.spans[:0]
	rs.natTotal = 0
	rs.skipDispatch, rs.filterChanged = false, false
}

// Changes reports whether the inputs would change the kernel: a partial sync
// that writes no service, removes no chain, leaves the dispatch chains and has
// the filter rules the kernel has would only rewrite what is there (the empty
// family of a single-stack node, a periodic sync with nothing new).
func (rs *Ruleset) Changes() bool {
	return rs.Full || len(rs.spans) > 0 || len(rs.Stale) > 0 || !rs.skipDispatch || rs.filterChanged
}

// DispatchWritten reports whether the inputs rewrite KUBE-SERVICES and
// KUBE-NODEPORTS; a partial sync that changed none of their rules leaves them.
func (rs *Ruleset) DispatchWritten() bool { return !rs.skipDispatch }

// endService closes the current service's part of the per-service buffers.
func (rs *Ruleset) endService() {
	rs.spans = append(rs.spans, svcSpan{rs.svcChains.len(), rs.svcRules.len()})
}

// appendDispatch adds a service's rules in the top-level chains.
func (rs *Ruleset) appendDispatch(e *svcEntry) {
	rs.natServices.b = append(rs.natServices.b, e.frag[:e.natSvcEnd]...)
	rs.natNodePorts.b = append(rs.natNodePorts.b, e.frag[e.natSvcEnd:e.natNPEnd]...)
	rs.filter.b = append(rs.filter.b, e.frag[e.natNPEnd:]...)
	rs.natServices.rules += e.natSvcRules
	rs.natNodePorts.rules += e.natNPRules
	rs.filter.rules += e.filterRules
	if e.noLocalInternal {
		rs.NoLocalEndpoints["internal"]++
	}
	if e.noLocalExternal {
		rs.NoLocalEndpoints["external"]++
	}
}

// ServicesWritten is how many services' chains this ruleset writes.
func (rs *Ruleset) ServicesWritten() int { return len(rs.spans) }

// FilterRules is the number of filter rules written (the whole filter part
// is rewritten every sync).
func (rs *Ruleset) FilterRules() int { return rs.filter.rules }

// NATRules is the number of nat rules written by this sync.
func (rs *Ruleset) NATRules() int {
	n := rs.natStatic.rules + rs.svcRules.rules
	if !rs.skipDispatch {
		n += rs.natServices.rules + rs.natNodePorts.rules
	}
	return n
}

// NATRulesTotal is the number of nat rules of ours in the kernel after this
// sync, counting the chains of unchanged services written earlier.
func (rs *Ruleset) NATRulesTotal() int { return rs.natTotal }

// Bytes is the whole ruleset as one restore input.
func (rs *Ruleset) Bytes() []byte {
	for data := range rs.Inputs(0) {
		return data
	}
	return nil
}

// String is Bytes as a string, for tests and logs.
func (rs *Ruleset) String() string { return string(rs.Bytes()) }

// Inputs yields the restore inputs to feed, in order. With batch > 0 and
// more than batch services to write, the per-service chains go first, batch
// services per input (the first input also holds KUBE-POSTROUTING and
// KUBE-MARK-MASQ, which service chains jump to), and the last input holds
// the filter table, the nat dispatch chains (KUBE-SERVICES, KUBE-NODEPORTS)
// and the removal of stale chains: traffic keeps using the old dispatch
// until every chain the new one jumps to exists. iptables-nft-restore's cost
// grows much faster than linearly within one transaction, hence the split.
// Each yielded slice is reused for the next one.
func (rs *Ruleset) Inputs(batch int) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		n := len(rs.spans)
		if batch <= 0 || n <= batch {
			rs.out = rs.appendFilter(rs.out[:0])
			rs.out = rs.appendNAT(rs.out, 0, n, true, true)
			yield(rs.out)
			return
		}
		for from := 0; from < n; from += batch {
			to := min(from+batch, n)
			rs.out = rs.appendNAT(rs.out[:0], from, to, from == 0, false)
			if !yield(rs.out) {
				return
			}
		}
		rs.out = rs.appendFilter(rs.out[:0])
		rs.out = rs.appendNAT(rs.out, n, n, false, true)
		yield(rs.out)
	}
}

// InputCount is how many inputs Inputs(batch) yields.
func (rs *Ruleset) InputCount(batch int) int {
	n := len(rs.spans)
	if batch <= 0 || n <= batch {
		return 1
	}
	return (n+batch-1)/batch + 1
}

var filterChainLines = ":" + chainServices + " - [0:0]\n" +
	":" + chainExternalServices + " - [0:0]\n" +
	":" + chainForward + " - [0:0]\n" +
	":" + chainNodePorts + " - [0:0]\n" +
	":" + chainProxyFirewall + " - [0:0]\n"

func (rs *Ruleset) appendFilter(out []byte) []byte {
	out = append(out, "*filter\n"...)
	out = append(out, filterChainLines...)
	if rs.localhostGuard {
		out = append(out, ":"+chainKubeletFirewall+" - [0:0]\n"...)
	}
	out = append(out, rs.filter.b...)
	return append(out, "COMMIT\n"...)
}

// appendNAT writes a nat block with the service chains of spans [from, to),
// the static chains if static, and the dispatch chains and stale-chain
// removal if dispatch.
func (rs *Ruleset) appendNAT(out []byte, from, to int, static, dispatch bool) []byte {
	out = append(out, "*nat\n"...)
	writeDispatch := dispatch && !rs.skipDispatch
	if writeDispatch {
		out = append(out, ":"+chainServices+" - [0:0]\n:"+chainNodePorts+" - [0:0]\n"...)
	}
	if static {
		out = append(out, ":"+chainPostrouting+" - [0:0]\n:"+chainMarkMasq+" - [0:0]\n"...)
	}
	chainsFrom, rulesFrom := rs.spanStart(from)
	chainsTo, rulesTo := rs.spanStart(to)
	out = append(out, rs.svcChains.b[chainsFrom:chainsTo]...)
	if dispatch {
		for _, c := range rs.Stale {
			out = append(out, ':')
			out = append(out, c...)
			out = append(out, " - [0:0]\n"...)
		}
	}
	if static {
		out = append(out, rs.natStatic.b...)
	}
	out = append(out, rs.svcRules.b[rulesFrom:rulesTo]...)
	if writeDispatch {
		out = append(out, rs.natServices.b...)
		out = append(out, rs.natNodePorts.b...)
	}
	if dispatch {
		for _, c := range rs.Stale {
			out = append(out, "-X "...)
			out = append(out, c...)
			out = append(out, '\n')
		}
	}
	return append(out, "COMMIT\n"...)
}

// spanStart is where service i's part starts in svcChains and svcRules.
func (rs *Ruleset) spanStart(i int) (int, int) {
	if i == 0 {
		return 0, 0
	}
	s := rs.spans[i-1]
	return s.chainsEnd, s.rulesEnd
}
