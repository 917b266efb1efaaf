package iptables

import (
	"net/netip"
	"strconv"
)

// ruleBuf accumulates iptables-restore lines. Rules are assembled by
// appending strings to one reusable byte slice: at 30k services the builder
// writes millions of arguments, and fmt or per-rule []string would dominate.
type ruleBuf struct {
	b     []byte
	rules int
}

func (w *ruleBuf) reset() {
	w.b = w.b[:0]
	w.rules = 0
}

func (w *ruleBuf) len() int { return len(w.b) }

// chainLine declares (and, with --noflush, flushes) chain.
func (w *ruleBuf) chainLine(chain string) {
	w.b = append(w.b, ':')
	w.b = append(w.b, chain...)
	w.b = append(w.b, " - [0:0]\n"...)
}

// rule starts "-A chain"; finish it with end.
func (w *ruleBuf) rule(chain string) *ruleBuf {
	w.b = append(w.b, "-A "...)
	w.b = append(w.b, chain...)
	w.rules++
	return w
}

// a appends space-separated arguments.
func (w *ruleBuf) a(args ...string) *ruleBuf {
	for _, s := range args {
		w.b = append(w.b, ' ')
		w.b = append(w.b, s...)
	}
	return w
}

// raw appends s as is (it must start with a space).
func (w *ruleBuf) raw(s string) *ruleBuf {
	w.b = append(w.b, s...)
	return w
}

// comment appends -m comment --comment "<parts...>".
func (w *ruleBuf) comment(parts ...string) *ruleBuf {
	w.b = append(w.b, ` -m comment --comment "`...)
	for _, s := range parts {
		w.b = append(w.b, s...)
	}
	w.b = append(w.b, '"')
	return w
}

// proto appends kube-proxy's "-m <p> -p <p>".
func (w *ruleBuf) proto(p string) *ruleBuf {
	w.b = append(w.b, " -m "...)
	w.b = append(w.b, p...)
	w.b = append(w.b, " -p "...)
	w.b = append(w.b, p...)
	return w
}

func (w *ruleBuf) addr(flag string, ip netip.Addr) *ruleBuf {
	w.b = append(w.b, ' ')
	w.b = append(w.b, flag...)
	w.b = append(w.b, ' ')
	w.b = ip.AppendTo(w.b)
	return w
}

func (w *ruleBuf) prefix(flag string, p netip.Prefix) *ruleBuf {
	w.b = append(w.b, ' ')
	w.b = append(w.b, flag...)
	w.b = append(w.b, ' ')
	w.b = p.AppendTo(w.b)
	return w
}

func (w *ruleBuf) num(flag string, n int32) *ruleBuf {
	w.b = append(w.b, ' ')
	w.b = append(w.b, flag...)
	w.b = append(w.b, ' ')
	w.b = strconv.AppendInt(w.b, int64(n), 10)
	return w
}

func (w *ruleBuf) jump(target string) {
	w.b = append(w.b, " -j "...)
	w.b = append(w.b, target...)
	w.b = append(w.b, '\n')
}

// end finishes a rule that has no -j (or has it in its arguments).
func (w *ruleBuf) end() { w.b = append(w.b, '\n') }
