package history

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Tiny operations on key "k" for the revision and TTL tests; times are in
// arbitrary units (milliseconds in the TTL tests).

// rSet is an acknowledged unconditional set that got revision rev.
func rSet(c int, v string, call, ret int64, rev uint64) Op {
	return Op{Client: c, Kind: Write, Key: "k", Value: v, Call: call, Return: ret, Outcome: OK, Revision: rev}
}

// rCas is an acknowledged set with if_revision=ifRev that got revision rev.
func rCas(c int, v string, ifRev uint64, call, ret int64, rev uint64) Op {
	o := rSet(c, v, call, ret, rev)
	o.HasIfRevision, o.IfRevision = true, ifRev
	return o
}

// rCasFailed is a set with if_revision=ifRev answered condition_failed
// with current_revision cur and exists.
func rCasFailed(c int, v string, ifRev uint64, call, ret int64, cur uint64, exists bool) Op {
	o := rCas(c, v, ifRev, call, ret, cur)
	o.CondFailed, o.Found = true, exists
	return o
}

// pending makes o a write with an unknown outcome.
func pending(o Op) Op {
	o.Outcome, o.Revision, o.Found, o.CondFailed = Unknown, 0, false, false
	return o
}

func rGet(c int, v string, rev uint64, call, ret int64) Op {
	return Op{Client: c, Kind: Read, Key: "k", Value: v, Found: true, Revision: rev, Call: call, Return: ret, Outcome: OK}
}

func rAbsent(c int, call, ret int64) Op {
	return Op{Client: c, Kind: Read, Key: "k", Call: call, Return: ret, Outcome: OK}
}

// rDel is an acknowledged delete: deleted with revision rev, or (rev 0,
// deleted false) nothing to delete.
func rDel(c int, call, ret int64, rev uint64, deleted bool) Op {
	return Op{Client: c, Kind: Delete, Key: "k", Call: call, Return: ret, Outcome: OK, Revision: rev, Found: deleted}
}

func ifRev(o Op, rev uint64) Op {
	o.HasIfRevision, o.IfRevision = true, rev
	return o
}

// onlyIfExists makes o's condition if_exists instead of if_revision.
func onlyIfExists(o Op) Op {
	o.HasIfRevision, o.IfRevision, o.IfExists = false, 0, true
	return o
}

func hist(ops ...Op) History {
	var h History
	for i, o := range ops {
		o.ID = i
		h.Ops = append(h.Ops, o)
	}
	return h
}

func TestRevisionModel(t *testing.T) {
	tests := []struct {
		name string
		ops  []Op
		ok   bool
	}{
		// Revisions are the partition's write order: they grow, by
		// any amount (other keys share the partition).
		{"increments", []Op{
			rCas(0, "1", 0, 0, 10, 3), rGet(1, "1", 3, 11, 12),
			rCas(0, "2", 3, 20, 30, 7), rGet(1, "2", 7, 31, 32),
		}, true},
		{"concurrent increments: one wins, the other sees its revision", []Op{
			rSet(0, "0", 0, 5, 3),
			rCas(1, "1a", 3, 10, 20, 5), rCasFailed(2, "1b", 3, 10, 20, 5, true),
			rGet(0, "1a", 5, 21, 22),
		}, true},
		{"if_revision on an absent key fails with revision 0", []Op{
			rCasFailed(0, "x", 4, 0, 10, 0, false), rAbsent(1, 11, 12),
		}, true},
		{"if_revision=0 on an existing key fails", []Op{
			rSet(0, "a", 0, 10, 2), rCasFailed(1, "b", 0, 20, 30, 2, true),
		}, true},
		{"deletes, and a delete of nothing", []Op{
			rSet(0, "a", 0, 10, 2), rDel(0, 20, 30, 4, true), rAbsent(1, 31, 32),
			rDel(1, 40, 50, 0, false), rSet(0, "b", 60, 70, 6), rGet(1, "b", 6, 71, 72),
		}, true},
		{"conditional delete answered as done although its condition failed", []Op{
			rSet(0, "a", 0, 10, 2), ifRev(rDel(1, 20, 30, 0, false), 1),
		}, false},
		{"conditional delete that holds", []Op{
			rSet(0, "a", 0, 10, 2), ifRev(rDel(1, 20, 30, 3, true), 2), rAbsent(0, 31, 32),
		}, true},
		{"if_exists fails on an absent key", []Op{
			onlyIfExists(rCasFailed(0, "x", 0, 0, 10, 0, false)),
		}, true},
		{"pending increment applied: a read shows its revision", []Op{
			rSet(0, "a", 0, 10, 2), pending(rCas(1, "x", 2, 20, 25, 0)),
			rGet(2, "x", 9, 30, 40), rCas(2, "y", 9, 50, 60, 10), rGet(2, "y", 10, 61, 62),
		}, true},
		{"pending increment applied: a failed condition shows its revision", []Op{
			rSet(0, "a", 0, 10, 2), pending(rCas(1, "x", 2, 20, 25, 0)),
			rCasFailed(2, "y", 2, 30, 40, 9, true), rGet(2, "x", 9, 41, 42),
		}, true},
		{"pending increment never applied", []Op{
			rSet(0, "a", 0, 10, 2), pending(rCas(1, "x", 2, 20, 25, 0)),
			rCas(2, "z", 2, 30, 40, 3), rGet(2, "z", 3, 41, 42),
		}, true},
		{"pending increment on a pending write's unknown revision", []Op{
			rSet(0, "a", 0, 10, 2), pending(rSet(1, "x", 20, 25, 0)), pending(rCas(3, "y", 5, 30, 35, 0)),
			rGet(2, "y", 8, 40, 50),
		}, true},
		{"pending write's revision above a pending delete's", []Op{
			rSet(0, "a", 0, 10, 5), pending(rDel(1, 20, 25, 0, false)), rAbsent(2, 26, 28),
			pending(rCas(3, "y", 0, 30, 35, 0)), rGet(2, "y", 7, 40, 50),
		}, true},
		// Illegal histories.
		{"lost update: two increments from the same revision both applied", []Op{
			rCas(0, "1", 0, 0, 10, 3), rCas(1, "1b", 0, 20, 30, 4),
		}, false},
		{"revision repeated", []Op{rSet(0, "a", 0, 10, 5), rSet(0, "b", 20, 30, 5)}, false},
		{"revision going back", []Op{rSet(0, "a", 0, 10, 5), rSet(0, "b", 20, 30, 3)}, false},
		{"revision going back after a delete", []Op{
			rSet(0, "a", 0, 10, 2), rDel(0, 20, 30, 5, true), rSet(0, "b", 40, 50, 4),
		}, false},
		{"read of absent after an acknowledged set", []Op{rSet(0, "v", 0, 10, 5), rAbsent(1, 20, 30)}, false},
		{"read with the wrong revision", []Op{rSet(0, "v", 0, 10, 5), rGet(1, "v", 6, 20, 30)}, false},
		{"stale read", []Op{rSet(0, "a", 0, 10, 2), rSet(0, "b", 20, 30, 3), rGet(1, "a", 2, 40, 50)}, false},
		{"condition failure although it held", []Op{rSet(0, "a", 0, 10, 5), rCasFailed(1, "b", 5, 20, 30, 5, true)}, false},
		{"condition failure with the wrong current revision", []Op{rSet(0, "a", 0, 10, 5), rCasFailed(1, "b", 4, 20, 30, 6, true)}, false},
		{"condition failure that claims an absent key exists", []Op{rCasFailed(0, "x", 3, 0, 10, 0, true)}, false},
		{"condition failure on an absent key with a revision", []Op{rCasFailed(0, "x", 3, 0, 10, 2, false)}, false},
		{"delete of an absent key that deleted", []Op{rDel(0, 0, 10, 2, true)}, false},
		{"delete of an existing key that found nothing", []Op{rSet(0, "a", 0, 10, 2), rDel(0, 20, 30, 0, false)}, false},
		{"increment applied again (double apply)", []Op{
			rSet(0, "0", 0, 5, 1), rCas(1, "1", 1, 10, 20, 2), rGet(0, "1", 5, 30, 40),
		}, false},
		{"pending increment from the wrong revision applied", []Op{
			rSet(0, "a", 0, 10, 2), pending(rCas(1, "x", 1, 20, 25, 0)), rGet(2, "x", 3, 30, 40),
		}, false},
		{"pending write's revision not above the one before", []Op{
			rSet(0, "a", 0, 10, 2), pending(rSet(1, "x", 20, 25, 0)), rGet(2, "x", 2, 30, 40),
		}, false},
		// The read shows the pending delete took effect (at 6 or
		// later), so y's revision is 7 or later.
		{"pending write's revision not above a pending delete's", []Op{
			rSet(0, "a", 0, 10, 5), pending(rDel(1, 20, 25, 0, false)), rAbsent(2, 26, 28),
			pending(rCas(3, "y", 0, 30, 35, 0)), rGet(2, "y", 6, 40, 50),
		}, false},
		{"pending increment applied, then seen at an older revision", []Op{
			rSet(0, "a", 0, 10, 2), pending(rCas(1, "x", 2, 20, 25, 0)),
			rGet(2, "x", 9, 30, 40), rGet(2, "x", 8, 41, 42),
		}, false},
		// The first read pins the unknown revision: it is 9, not "at
		// least 9".
		{"pending increment applied, then seen at a newer revision", []Op{
			rSet(0, "a", 0, 10, 2), pending(rCas(1, "x", 2, 20, 25, 0)),
			rGet(2, "x", 9, 30, 40), rGet(2, "x", 10, 41, 42),
		}, false},
		{"pending write seen before its call", []Op{
			rSet(0, "a", 0, 10, 2), rGet(2, "x", 3, 12, 15), pending(rSet(1, "x", 20, 25, 0)),
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := CheckRevisions(hist(tt.ops...), 10*time.Second)
			if len(rep.Keys) != 1 || rep.Keys[0].Result == porcupine.Unknown {
				t.Fatalf("no verdict: %s", rep)
			}
			if rep.OK() != tt.ok {
				t.Errorf("verdict %s, want ok=%v", rep, tt.ok)
			}
		})
	}
}

// Writes whose condition failed changed nothing: the plain register model
// leaves them out rather than applying them.
func TestModelIgnoresFailedConditions(t *testing.T) {
	h := hist(rSet(0, "a", 0, 10, 2), rCasFailed(1, "b", 1, 20, 30, 2, true), rGet(0, "a", 2, 40, 50))
	if rep := Check(h, 10*time.Second); !rep.OK() {
		t.Fatalf("a failed condition was applied:\n%s", rep)
	}
}

// A failing key's visualisation is drawn with the model it was checked
// against.
func TestRevisionVisualization(t *testing.T) {
	h := hist(rSet(0, "a", 0, 10, 5), rGet(1, "a", 6, 20, 30))
	rep := CheckRevisions(h, 10*time.Second)
	if rep.OK() {
		t.Fatal("wrong revision accepted")
	}
	files, err := rep.Visualize(t.TempDir(), false)
	if err != nil || len(files) != 1 {
		t.Fatalf("visualise: %v %v", files, err)
	}
	html, _ := os.ReadFile(files[0])
	if !strings.Contains(string(html), "rev 5") {
		t.Fatalf("visualisation does not describe the revision state")
	}
}
