package history

import (
	"strings"
	"testing"
)

// scanOf is an OK linearizable scan of [k, l) with values [call, ret] in
// two pages, both with token T, returning items.
func scanOf(call, ret int64, items ...ScanItem) Scan {
	return Scan{Start: "k", End: "l", HasEnd: true, Limit: 2, Values: true, Call: call, Return: ret, Outcome: OK, Items: items,
		Pages: []ScanPage{{Node: "node-1", Call: call, Token: "T"}, {Node: "node-2", Return: ret, Token: "T"}}}
}

func item(key, v string, rev uint64) ScanItem {
	return ScanItem{Key: key, Value: v, HasValue: true, Revision: rev}
}

func staleScan(s Scan) Scan {
	s.Stale = true
	return s
}

func TestCheckScans(t *testing.T) {
	// k1 is set and stays; k2 is set, then deleted; k3 is set late.
	ops := []Op{ws("k1", "v1", 1, 2, 11), ws("k2", "v2", 1, 2, 21), wd("k2", 3, 4, 22), ws("k3", "v3", 8, 9, 31)}
	k1 := item("k1", "v1", 11)
	tests := []struct {
		name  string
		ops   []Op
		scans []Scan
		// want is a piece of the problem expected ("": none);
		// mustHave and mustNot what a correct run checked.
		want              string
		mustHave, mustNot int
	}{
		{"what existed, not what was deleted", ops, []Scan{scanOf(5, 6, k1)}, "", 1, 1},
		{"a set during the scan: either", ops,
			[]Scan{scanOf(5, 8, k1), scanOf(5, 10, k1), scanOf(5, 10, k1, item("k3", "v3", 31))}, "", 3, 3},
		{"a delete during the scan: either", append(ops, wd("k1", 6, 7, 12)),
			[]Scan{scanOf(5, 8, k1), scanOf(5, 8)}, "", 0, 2},
		{"an unknown delete before the scan: either", append(ops, pending(wd("k1", 3, 4, 0))),
			[]Scan{scanOf(5, 6, k1), scanOf(5, 6)}, "", 0, 2},
		{"an unknown set after the delete: either", append(ops, pending(ws("k2", "v2b", 3, 4, 0))),
			[]Scan{scanOf(5, 6, k1), scanOf(5, 6, k1, item("k2", "v2b", 23))}, "", 2, 0},
		{"a set acknowledged before the delete was invoked does not bring it back", append(ops, ws("k2", "v2c", 2, 2, 20)),
			[]Scan{scanOf(5, 6, k1)}, "", 1, 1},
		{"a set with a TTL may have run out", []Op{withTTL(ws("k1", "v1", 1, 2, 11))}, []Scan{scanOf(5, 6)}, "", 0, 0},
		{"a set with a TTL after the set may have run out", append(ops, pending(withTTL(ws("k1", "t", 3, 4, 0)))),
			[]Scan{scanOf(5, 6)}, "", 0, 1},
		{"stale scans may miss keys and show old ones", append(ops, ws("k1", "v1b", 3, 4, 12)),
			[]Scan{staleScan(scanOf(5, 6)), staleScan(scanOf(5, 6, k1, item("k2", "v2", 21)))}, "", 0, 0},
		{"a failed scan constrains nothing", ops,
			[]Scan{{Start: "k", End: "l", HasEnd: true, Call: 5, Return: 6, Outcome: Failed, Items: []ScanItem{item("zz", "", 0)}}}, "", 0, 0},
		{"keys outside the range are not asked for", append(ops, ws("m", "m", 1, 2, 1)), []Scan{scanOf(5, 6, k1)}, "", 1, 1},
		{"without values", ops, []Scan{func() Scan {
			s := scanOf(5, 6, ScanItem{Key: "k1", Revision: 11})
			s.Values = false
			return s
		}()}, "", 1, 1},

		// Violations.
		{"a key that existed all through is missed", ops, []Scan{scanOf(5, 6)}, `missed "k1", which existed all through it: #0`, 0, 0},
		{"a failed delete does not excuse a miss", append(ops, failed(wd("k1", 3, 4, 0))), []Scan{scanOf(5, 6)}, `missed "k1"`, 0, 0},
		{"a delete that found nothing does not excuse a miss", append(ops, wdNothing("k1", 1, 3)), []Scan{scanOf(5, 6)}, `missed "k1"`, 0, 0},
		{"a set whose condition failed does not bring a key back", append(ops, condFailed(ws("k2", "x", 3, 5, 0))),
			[]Scan{scanOf(5, 6, k1, item("k2", "v2", 21))}, `returned "k2" (revision 21), which was deleted before it began`, 0, 0},
		{"a deleted key returned", ops, []Scan{scanOf(5, 6, k1, item("k2", "v2", 21))}, "which was deleted before it began and not written again: #2", 0, 0},
		{"a deleted key returned by a later page", ops, []Scan{scanOf(5, 60, k1, item("k2", "v2", 21))}, "which was deleted before it began", 0, 0},
		{"keys out of order", ops, []Scan{scanOf(10, 11, item("k3", "v3", 31), k1)}, `returned "k1" after "k3": keys out of order or twice`, 0, 0},
		{"a key twice", ops, []Scan{scanOf(5, 6, k1, k1)}, `returned "k1" after "k1"`, 0, 0},
		{"a key outside the range", append(ops, ws("m", "m", 1, 2, 1)), []Scan{scanOf(5, 6, k1, item("m", "m", 1))}, `returned "m", outside its range`, 0, 0},
		{"a key never written", ops, []Scan{scanOf(5, 6, k1, item("k9", "x", 1))}, "which no set invoked before it ended wrote", 0, 0},
		{"a key written only after the scan", ops, []Scan{scanOf(5, 6, k1, item("k3", "v3", 31))}, `returned "k3", which no set invoked before it ended wrote`, 0, 0},
		{"a value no set wrote", ops, []Scan{scanOf(5, 6, item("k1", "zz", 11))}, "a value no set invoked before it ended wrote", 0, 0},
		{"a value refused", append(ops, failed(ws("k1", "x", 3, 4, 0))), []Scan{scanOf(5, 6, item("k1", "x", 12))}, "a value no set invoked before it ended wrote", 0, 0},
		{"another revision than the set's", ops, []Scan{scanOf(5, 6, item("k1", "v1", 12))}, "but its set was acknowledged with revision 11", 0, 0},
		{"an old value", append(ops, ws("k1", "v1b", 3, 4, 12)), []Scan{scanOf(5, 6, k1)}, `returned "k1" at revision 11, older than #4`, 0, 0},
		{"a phantom in a stale scan", ops, []Scan{staleScan(scanOf(5, 6, item("k1", "zz", 11)))}, "a value no set invoked before it ended wrote", 0, 0},
		{"pages with different tokens", ops, []Scan{func() Scan {
			s := scanOf(5, 6, k1)
			s.Pages[1].Token = "U"
			return s
		}()}, "page 2 (via node-2) carries the token U, not the first page's T", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hist(tt.ops...)
			h.Scans = tt.scans
			for i := range h.Scans {
				h.Scans[i].ID = i + 1
			}
			rep := CheckScans(h)
			if tt.want == "" {
				if !rep.OK() {
					t.Fatalf("problems in a correct run:\n%s", strings.Join(rep.Problems, "\n"))
				}
				if rep.MustHave != tt.mustHave || rep.MustNot != tt.mustNot {
					t.Errorf("checked %d keys that had to be returned and %d that had not, want %d and %d", rep.MustHave, rep.MustNot, tt.mustHave, tt.mustNot)
				}
				return
			}
			for _, p := range rep.Problems {
				if strings.Contains(p, tt.want) {
					return
				}
			}
			t.Fatalf("want a problem with %q; got:\n%s", tt.want, strings.Join(rep.Problems, "\n"))
		})
	}
}

func TestCheckScansCounts(t *testing.T) {
	h := hist(ws("k1", "v1", 1, 2, 11))
	h.Scans = []Scan{scanOf(5, 6, item("k1", "v1", 11)), staleScan(scanOf(5, 6)), {Outcome: Failed}}
	rep := CheckScans(h)
	if !rep.OK() || rep.Checked != 2 || rep.Stale != 1 || rep.Failed != 1 || rep.MustHave != 1 {
		t.Errorf("got %+v, want OK, 2 checked, 1 stale, 1 failed, 1 key that had to be returned", rep)
	}
}
