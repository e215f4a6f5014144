package history

import (
	"slices"
	"strings"
	"testing"
)

// Tiny ops for the batch and bank tests; a batch gives them its client and
// times (tb).

// bSet is an applied set with if_revision=ifRev that got revision rev.
func bSet(key, value string, ifRev, rev uint64) Op {
	return Op{Kind: Write, Key: key, Value: value, HasIfRevision: true, IfRevision: ifRev, Outcome: OK, Revision: rev}
}

// bCondFailed is a set with if_revision=ifRev answered condition_failed
// with the key's current revision cur.
func bCondFailed(key, value string, ifRev, cur uint64) Op {
	o := bSet(key, value, ifRev, cur)
	o.CondFailed, o.Found = true, cur != 0
	return o
}

// bAborted is an op of an atomic batch that was not applied because
// another op's condition failed (or, the same to the checks, one refused
// as unavailable).
func bAborted(o Op) Op {
	o.Outcome, o.Revision, o.Found, o.CondFailed = Failed, 0, false, false
	if o.Kind == Read {
		o.Value = ""
	}
	return o
}

func bUnknown(o Op) Op {
	o = bAborted(o)
	o.Outcome = Unknown
	return o
}

func bGet(key, value string, rev uint64) Op {
	return Op{Kind: Read, Key: key, Value: value, Found: true, Revision: rev, Outcome: OK}
}

func bAbsent(key string) Op { return Op{Kind: Read, Key: key, Outcome: OK} }

// tb is one batch for the tests: an answered atomic one unless told.
type tb struct {
	plain     bool
	outcome   Outcome // "" is OK
	committed bool
	node      string
	ops       []Op
}

// record records batches through a Recorder, each at [10i, 10i+5] as
// client i, and returns the history and the batches' IDs.
func record(t *testing.T, bs ...tb) (History, []int) {
	t.Helper()
	rec := NewRecorder()
	var ids []int
	for i, x := range bs {
		ops := make([]Op, len(x.ops))
		for j, o := range x.ops {
			o.Client, o.Call, o.Return = i, int64(10*i), int64(10*i+5)
			if x.outcome != "" && x.outcome != OK {
				o.Outcome, o.Revision, o.Found, o.CondFailed = x.outcome, 0, false, false
			}
			ops[j] = o
		}
		outcome := x.outcome
		if outcome == "" {
			outcome = OK
		}
		b, got := rec.AddBatch(Batch{Client: i, Call: int64(10 * i), Return: int64(10*i + 5), Atomic: !x.plain, Outcome: outcome,
			Committed: x.committed, Node: x.node}, ops)
		for j, o := range got {
			if o.Batch != b.ID || b.Ops[j] != o.ID {
				t.Fatalf("AddBatch: op %d of batch %d is %+v, batch %+v", j, b.ID, o, b)
			}
		}
		ids = append(ids, b.ID)
	}
	return rec.History(), ids
}

func TestCheckBatches(t *testing.T) {
	tests := []struct {
		name    string
		batch   tb
		problem string // "" if the batch is fine
	}{
		{"committed transfer", tb{committed: true, ops: []Op{
			bSet("x", "v", 3, 10), bSet("y", "w", 5, 11), bGet("x", "v", 10), bGet("y", "w", 11), bGet("z", "z", 7),
		}}, ""},
		{"get of a key before the batch writes it", tb{committed: true, ops: []Op{
			bGet("x", "old", 3), bSet("x", "v", 3, 10), bGet("x", "v", 10),
		}}, ""},
		{"if_revision=0 on a key the batch found absent", tb{committed: true, ops: []Op{
			bAbsent("x"), bSet("x", "v", 0, 10), bGet("x", "v", 10),
		}}, ""},
		{"rejected on a condition, the rest aborted", tb{ops: []Op{
			bCondFailed("x", "v", 3, 4), bAborted(bSet("y", "w", 5, 0)), bAborted(bGet("x", "", 0)),
		}}, ""},
		{"every op's outcome unknown", tb{ops: []Op{
			bUnknown(bSet("x", "v", 3, 0)), bUnknown(bSet("y", "w", 5, 0)), bUnknown(bGet("x", "", 0)),
		}}, ""},
		{"every op refused (unavailable)", tb{ops: []Op{bAborted(bSet("x", "v", 3, 0)), bAborted(bGet("x", "", 0))}}, ""},
		{"no answer: unknown", tb{outcome: Unknown, ops: []Op{bSet("x", "v", 3, 0), bGet("x", "", 0)}}, ""},
		{"no answer: failed", tb{outcome: Failed, ops: []Op{bSet("x", "v", 3, 0)}}, ""},
		{"gets only", tb{committed: true, ops: []Op{bGet("x", "v", 3), bAbsent("y")}}, ""},
		// The server says committed for a batch of gets only, however
		// they fared.
		{"gets only, refused", tb{committed: true, ops: []Op{bAborted(bGet("x", "", 0)), bAborted(bGet("y", "", 0))}}, ""},
		{"plain batch partly applied", tb{plain: true, ops: []Op{bSet("x", "v", 3, 10), bCondFailed("y", "w", 5, 6)}}, ""},

		{"partly applied", tb{ops: []Op{
			bSet("x", "v", 3, 10), bAborted(bSet("y", "w", 5, 0)), bAborted(bGet("x", "", 0)),
		}}, "not all or nothing"},
		{"committed but a get unanswered", tb{committed: true, ops: []Op{
			bSet("x", "v", 3, 10), bSet("y", "w", 5, 11), bAborted(bGet("z", "", 0)),
		}}, "not all or nothing"},
		{"condition failed on one, outcome unknown on the other", tb{ops: []Op{
			bCondFailed("x", "v", 3, 4), bUnknown(bSet("y", "w", 5, 0)),
		}}, "not all or nothing"},
		{"applied but not committed", tb{ops: []Op{
			bSet("x", "v", 3, 10), bSet("y", "w", 5, 11),
		}}, "committed=false"},
		{"rejected but committed", tb{committed: true, ops: []Op{
			bCondFailed("x", "v", 3, 4), bAborted(bSet("y", "w", 5, 0)),
		}}, "committed=true"},
		{"revisions not consecutive", tb{committed: true, ops: []Op{
			bSet("x", "v", 3, 10), bSet("y", "w", 5, 12),
		}}, "consecutive"},
		{"revisions out of the batch's order", tb{committed: true, ops: []Op{
			bSet("x", "v", 3, 11), bSet("y", "w", 5, 10),
		}}, "consecutive"},
		{"get does not see the batch's write", tb{committed: true, ops: []Op{
			bSet("x", "v", 3, 10), bGet("x", "old", 3),
		}}, "does not show the state"},
		{"get of an unwritten key from after the batch", tb{committed: true, ops: []Op{
			bSet("x", "v", 3, 10), bSet("y", "w", 5, 11), bGet("z", "z", 12),
		}}, "not below 10"},
		{"condition held against what the batch's get showed", tb{committed: true, ops: []Op{
			bGet("x", "old", 3), bSet("x", "v", 4, 10),
		}}, "showed revision 3"},
		{"two gets of one key disagree", tb{committed: true, ops: []Op{bGet("x", "a", 3), bGet("x", "b", 4)}}, "does not show the state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := record(t, tt.batch)
			problems := CheckBatches(h)
			switch {
			case tt.problem == "" && len(problems) > 0:
				t.Errorf("a correct batch rejected: %v", problems)
			case tt.problem != "" && (len(problems) != 1 || !strings.Contains(problems[0], tt.problem)):
				t.Errorf("problems %q, want one about %q", problems, tt.problem)
			}
		})
	}
}

func TestCheckBank(t *testing.T) {
	bank := Bank{Accounts: []string{"a", "b"}, Total: 20}
	v := func(balance, change int) string { return BankValue(balance, change, int64(balance*100+change)) }
	open := tb{committed: true, ops: []Op{bSet("a", v(10, 10), 0, 1), bSet("b", v(10, 10), 0, 2)}}
	// a sends 3 to b: a transfer batch (sets, then gets of both).
	send := func(ifA, ifB, rev uint64) []Op {
		return []Op{bSet("a", v(7, -3), ifA, rev), bSet("b", v(13, 3), ifB, rev+1), bGet("a", v(7, -3), rev), bGet("b", v(13, 3), rev+1)}
	}
	read := func(node string, a, b string, ra, rb uint64) tb {
		return tb{committed: true, node: node, ops: []Op{bGet("a", a, ra), bGet("b", b, rb)}}
	}
	unknown := func(ops []Op) tb {
		ops = slices.Clone(ops)
		for i := range ops {
			ops[i] = bUnknown(ops[i])
		}
		return tb{ops: ops}
	}
	tests := []struct {
		name    string
		batches []tb // the last ones, as many as finals, are the final reads
		finals  int
		applied int    // of the unknown transfers, if fine
		problem string // "" if fine
	}{
		{"a committed transfer", []tb{open, read("n1", v(10, 10), v(10, 10), 1, 2), {committed: true, ops: send(1, 2, 3)},
			read("n1", v(7, -3), v(13, 3), 3, 4), read("n2", v(7, -3), v(13, 3), 3, 4)}, 2, 0, ""},
		{"a rejected transfer", []tb{open, {ops: []Op{bCondFailed("a", v(7, -3), 9, 1), bAborted(bSet("b", v(13, 3), 2, 0))}},
			read("n1", v(10, 10), v(10, 10), 1, 2)}, 1, 0, ""},
		{"a transfer with an unknown outcome, applied", []tb{open, unknown(send(1, 2, 0)), read("n1", v(7, -3), v(13, 3), 3, 4)}, 1, 1, ""},
		{"a transfer with an unknown outcome, not applied", []tb{open, unknown(send(1, 2, 0)), read("n1", v(10, 10), v(10, 10), 1, 2)}, 1, 0, ""},
		{"no answer at all, applied", []tb{open, {outcome: Unknown, ops: send(1, 2, 0)}, read("n1", v(7, -3), v(13, 3), 3, 4)}, 1, 1, ""},
		{"two unknown, the second applied", []tb{open, unknown(send(1, 2, 0)),
			unknown([]Op{bSet("a", v(15, 5), 1, 0), bSet("b", v(5, -5), 2, 0)}),
			read("n1", v(15, 5), v(5, -5), 3, 4)}, 1, 1, ""},
		{"opening with an unknown outcome, retried in vain", []tb{unknown(open.ops),
			{ops: []Op{bCondFailed("a", v(10, 10), 0, 1), bAborted(bSet("b", v(10, 10), 0, 0))}},
			read("n1", v(10, 10), v(10, 10), 1, 2)}, 1, 1, ""},

		{"an unknown transfer superseded by a committed one", []tb{open, unknown(send(1, 2, 0)),
			{committed: true, ops: []Op{bSet("a", v(5, -5), 1, 3), bSet("b", v(15, 5), 2, 4)}},
			read("n1", v(5, -5), v(15, 5), 3, 4)}, 1, 0, ""},

		{"an unknown transfer shown applied, then lost", []tb{open, unknown(send(1, 2, 0)), read("n1", v(7, -3), v(13, 3), 3, 4),
			read("n1", v(10, 10), v(10, 10), 1, 2)}, 1, 0, "not those every acknowledged transfer"},
		{"an unknown transfer superseded by a committed one, applied too", []tb{open, unknown(send(1, 2, 0)),
			{committed: true, ops: []Op{bSet("a", v(5, -5), 1, 3), bSet("b", v(15, 5), 2, 4)}},
			read("n1", v(2, -3), v(18, 3), 5, 6)}, 1, 0, "not those every acknowledged transfer"},
		{"an unknown transfer superseded by a committed one, yet seen", []tb{open, unknown(send(1, 2, 0)),
			{committed: true, ops: []Op{bSet("a", v(5, -5), 1, 3), bSet("b", v(15, 5), 2, 4)}},
			read("n1", v(7, -3), v(13, 3), 3, 4), read("n1", v(5, -5), v(15, 5), 3, 4)}, 1, 0, "conditional on the same revision"},
		{"a transfer seen half done", []tb{open, read("n1", v(7, -3), v(10, 10), 3, 2), read("n1", v(10, 10), v(10, 10), 1, 2)},
			1, 0, "adding up to 17, not 20"},
		{"a committed transfer lost", []tb{open, {committed: true, ops: send(1, 2, 3)}, read("n1", v(10, 10), v(10, 10), 1, 2)},
			1, 0, "not those every acknowledged transfer"},
		{"a transfer applied twice", []tb{open, {committed: true, ops: send(1, 2, 3)},
			read("n1", v(4, -3), v(16, 3), 5, 6)}, 1, 0, "not those every acknowledged transfer"},
		{"an unknown transfer applied twice", []tb{open, unknown(send(1, 2, 0)), read("n1", v(4, -3), v(16, 3), 5, 6)},
			1, 0, "not those every acknowledged transfer"},
		{"the final reads disagree", []tb{open, {committed: true, ops: send(1, 2, 3)},
			read("n1", v(7, -3), v(13, 3), 3, 4), read("n2", v(10, 10), v(10, 10), 1, 2)}, 2, 0, "the final reads disagree"},
		{"a final read without every account", []tb{open, {committed: true, ops: []Op{bGet("a", v(10, 10), 1)}}}, 1, 0, "did not show every account"},
		{"an account written in a plain batch", []tb{open, {plain: true, ops: []Op{bSet("a", v(10, 0), 1, 3)}},
			read("n1", v(10, 0), v(10, 10), 3, 2)}, 1, 0, "plain batch"},
		{"an account gone", []tb{open, {committed: true, ops: []Op{bGet("a", v(10, 10), 1), bAbsent("b")}}}, 1, 0, "adding up to 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, ids := record(t, tt.batches...)
			rep := CheckBank(h, bank, ids[len(ids)-tt.finals:])
			switch {
			case tt.problem == "" && !rep.OK():
				t.Errorf("a correct history rejected: %q", rep.Problems)
			case tt.problem == "" && rep.Applied != tt.applied:
				t.Errorf("%d unknown transfers applied, want %d (%+v)", rep.Applied, tt.applied, rep)
			case tt.problem != "" && !strings.Contains(strings.Join(rep.Problems, "\n"), tt.problem):
				t.Errorf("problems %q, want one about %q", rep.Problems, tt.problem)
			}
		})
	}
}

// A write to an account outside a batch breaks the bank's premise; no
// final read at all is a failure too.
func TestCheckBankOutsideBatches(t *testing.T) {
	bank := Bank{Accounts: []string{"a"}, Total: 5}
	h := History{Ops: []Op{{ID: 0, Kind: Write, Key: "a", Value: BankValue(5, 5, 1), Outcome: OK, Revision: 1}}}
	rep := CheckBank(h, bank, nil)
	all := strings.Join(rep.Problems, "\n")
	if !strings.Contains(all, "outside an atomic batch") || !strings.Contains(all, "no final read") {
		t.Fatalf("problems %q", rep.Problems)
	}
}

// The search for the unknown transfers that explain the final balances
// stays small with many of them.
func TestExplainManyUnknown(t *testing.T) {
	var unknown []balances
	for i := range 40 {
		unknown = append(unknown, balances{-1 - i%3, 1 + i%3})
	}
	fewest, ok, decided := explain(balances{-30, 30}, unknown, 2)
	if !decided || !ok || fewest != 10 {
		t.Fatalf("explain = %d %v %v, want 10 transfers of 3", fewest, ok, decided)
	}
	if _, ok, decided := explain(balances{-30, 29}, unknown, 2); !decided || ok {
		t.Fatalf("unbalanced target explained (%v %v)", ok, decided)
	}
}

func TestBankValue(t *testing.T) {
	b, c, err := ParseBankValue(BankValue(7, -3, 42))
	if err != nil || b != 7 || c != -3 {
		t.Fatalf("round trip: %d %d %v", b, c, err)
	}
	for _, bad := range []string{"7", "7:-3", "x:1:2", "7:y:2"} {
		if _, _, err := ParseBankValue(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// A write whose condition failed changed nothing: it is not a write the
// final read should show.
func TestLostWritesIgnoresFailedConditions(t *testing.T) {
	var x b
	x.set(0, "k", "1", 0, 10, OK)
	failed := x.add(Op{Client: 1, Kind: Write, Key: "k", Value: "2", HasIfRevision: true, IfRevision: 9, Call: 20, Return: 30,
		Outcome: OK, CondFailed: true, Found: true, Revision: 1})
	final := x.get(0, "k", "1", 40, 50)
	if p := LostWrites(x.h, []Op{final}); len(p) > 0 {
		t.Fatalf("%s reported as lost: %q", failed, p)
	}
	x.set(2, "k", "3", 60, 70, OK)
	if p := LostWrites(x.h, []Op{x.get(0, "k", "1", 80, 90)}); len(p) != 1 {
		t.Fatalf("a lost write not reported: %q", p)
	}
}
