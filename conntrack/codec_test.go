package conntrack

import (
	"reflect"
	"testing"

	"github.com/vishvananda/netlink/nl"
)

// encode serializes a whole flow as the kernel would send it in a dump.
func encode(f Flow) []byte {
	attrs := []*nl.RtAttr{
		tupleAttr(ctaTupleOrig, f.Protocol, f.OrigSrc, f.OrigDst),
		tupleAttr(ctaTupleReply, f.Protocol, f.ReplySrc, f.ReplyDst),
	}
	if f.Zone != 0 {
		attrs = append(attrs, nl.NewRtAttr(ctaZone, nl.BEUint16Attr(f.Zone)))
	}
	var b []byte
	for _, a := range attrs {
		b = append(b, a.Serialize()...)
	}
	return b
}

func TestCodecRoundTrip(t *testing.T) {
	zoned := flow("udp 192.0.2.101:40000 198.51.100.10:53 203.0.113.5:5353")
	zoned.Zone = 7
	for _, f := range []Flow{
		flow("udp 192.0.2.101:40000 198.51.100.10:53 203.0.113.5:5353"),
		flow("sctp 192.0.2.101:40001 198.51.100.20:3868 203.0.113.7:3868"),
		flow("tcp 192.0.2.101:40002 198.51.100.30:80 203.0.113.9:8080"),
		flow("udp [2001:db8:2::101]:40000 [2001:db8:5::10]:53 [2001:db8:1::5]:5353"),
		zoned,
	} {
		t.Run(f.String(), func(t *testing.T) {
			got, err := parseFlow(encode(f))
			if err != nil {
				t.Fatalf("parseFlow: %v", err)
			}
			if !reflect.DeepEqual(got, f) {
				t.Errorf("parseFlow(encode(f)) = %s, want %s", got, f)
			}
		})
	}
}

func TestParseFlowMalformed(t *testing.T) {
	b := encode(flow("udp 192.0.2.101:40000 198.51.100.10:53 203.0.113.5:5353"))
	for _, cut := range []int{5, 9, 20, len(b) - 3} {
		if _, err := parseFlow(b[:cut]); err == nil {
			t.Errorf("parseFlow of %d of %d bytes: no error", cut, len(b))
		}
	}
}

func TestDeleteAttrsNameTheOriginalTupleAndZone(t *testing.T) {
	f := flow("sctp 192.0.2.101:40001 198.51.100.20:3868 203.0.113.7:3868")
	f.Zone = 3
	var b []byte
	for _, a := range deleteAttrs(f) {
		b = append(b, a.Serialize()...)
	}
	got, err := parseFlow(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Flow{Protocol: f.Protocol, OrigSrc: f.OrigSrc, OrigDst: f.OrigDst, Zone: 3}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("delete request names %s, want %s", got, want)
	}
}
