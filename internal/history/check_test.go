package history

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// b builds hand-made histories; times are in arbitrary units.
type b struct{ h History }

func (x *b) add(o Op) Op {
	o.ID = len(x.h.Ops)
	x.h.Ops = append(x.h.Ops, o)
	return o
}

func (x *b) set(client int, key, value string, call, ret int64, out Outcome) Op {
	return x.add(Op{Client: client, Kind: Write, Key: key, Value: value, Call: call, Return: ret, Outcome: out})
}

func (x *b) del(client int, key string, call, ret int64, out Outcome) Op {
	return x.add(Op{Client: client, Kind: Delete, Key: key, Call: call, Return: ret, Outcome: out})
}

func (x *b) get(client int, key, value string, call, ret int64) Op {
	return x.add(Op{Client: client, Kind: Read, Key: key, Value: value, Found: true, Call: call, Return: ret, Outcome: OK})
}

func (x *b) getAbsent(client int, key string, call, ret int64) Op {
	return x.add(Op{Client: client, Kind: Read, Key: key, Call: call, Return: ret, Outcome: OK})
}

func check(t *testing.T, h History) Report {
	t.Helper()
	rep := Check(h, 10*time.Second)
	for _, k := range rep.Keys {
		if k.Result == porcupine.Unknown {
			t.Fatalf("checker timed out on a tiny history: %s", rep)
		}
	}
	return rep
}

func wantOK(t *testing.T, h History, finals ...Op) {
	t.Helper()
	if rep := check(t, h); !rep.OK() {
		t.Errorf("linearizable history rejected:\n%s", rep)
	}
	if p := LostWrites(h, finals); len(p) > 0 {
		t.Errorf("lost-write check rejected a correct history: %v", p)
	}
}

func TestValidHistory(t *testing.T) {
	var x b
	x.getAbsent(0, "a", 0, 5)
	x.set(0, "a", "1", 10, 20, OK)
	x.set(1, "a", "2", 15, 30, OK) // concurrent with set 1
	x.get(2, "a", "1", 16, 25)     // set 1 then read, set 2 after
	x.get(2, "a", "2", 31, 35)
	x.set(0, "b", "x", 0, 10, OK)
	x.del(1, "b", 20, 30, OK)
	x.getAbsent(0, "b", 40, 45)
	// Failed operations and unanswered reads constrain nothing.
	x.set(3, "a", "never", 36, 37, Failed)
	x.add(Op{Client: 4, Kind: Read, Key: "a", Call: 36, Return: 99, Outcome: Unknown})
	fa := x.get(0, "a", "2", 50, 55)
	fb := x.getAbsent(0, "b", 50, 55)
	wantOK(t, x.h, fa, fb)
}

// A read returning an older value after a newer write was acknowledged and
// had completed is a stale read.
func TestStaleReadRejected(t *testing.T) {
	var x b
	x.set(0, "k", "old", 0, 10, OK)
	x.set(0, "k", "new", 20, 30, OK)
	x.get(1, "k", "old", 40, 50) // stale: "new" was acknowledged at 30
	rep := check(t, x.h)
	if rep.OK() || rep.Keys[0].Result != porcupine.Illegal {
		t.Fatalf("stale read accepted:\n%s", rep)
	}
	// The verdict is per key: an unrelated correct key stays OK.
	x.set(2, "other", "v", 0, 5, OK)
	x.get(2, "other", "v", 6, 7)
	rep = check(t, x.h)
	for _, k := range rep.Keys {
		if want := map[string]porcupine.CheckResult{"k": porcupine.Illegal, "other": porcupine.Ok}[k.Key]; k.Result != want {
			t.Errorf("key %q: %s, want %s", k.Key, k.Result, want)
		}
	}
	dir := t.TempDir()
	files, err := SaveAll(dir, x.h, &rep)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || !strings.HasSuffix(files[1], "linearizability-k.html") {
		t.Fatalf("files %v", files)
	}
	html, _ := os.ReadFile(files[1])
	if !strings.Contains(string(html), "<html") {
		t.Fatalf("visualisation is not HTML")
	}
	back, err := Load(filepath.Join(dir, "history.json"))
	if err != nil || len(back.Ops) != len(x.h.Ops) || back.Ops[2] != x.h.Ops[2] {
		t.Fatalf("history did not round-trip: %v %+v", err, back.Ops)
	}
}

// A stale read of "absent" after an acknowledged write, too.
func TestStaleAbsentReadRejected(t *testing.T) {
	var x b
	x.set(0, "k", "v", 0, 10, OK)
	x.getAbsent(1, "k", 20, 30)
	if rep := check(t, x.h); rep.OK() {
		t.Fatalf("read of absent after an acknowledged write accepted:\n%s", rep)
	}
}

// The final read (after everything) shows a value older than an
// acknowledged, completed write: that write was lost.
func TestLostWriteRejected(t *testing.T) {
	var x b
	x.set(0, "k", "1", 0, 10, OK)
	x.get(1, "k", "1", 11, 12)
	x.set(0, "k", "2", 20, 30, OK)
	x.set(2, "k", "3", 25, 28, Failed) // certainly not applied
	final := x.get(1, "k", "1", 100, 110)
	if rep := check(t, x.h); rep.OK() {
		t.Fatalf("history with a lost write accepted by porcupine:\n%s", rep)
	}
	p := LostWrites(x.h, []Op{final})
	if len(p) != 1 || !strings.Contains(p[0], "acknowledged write lost") || !strings.Contains(p[0], `set(k, "2")`) {
		t.Fatalf("lost write not reported plainly: %q", p)
	}

	// Lost to "absent": the key was written and acknowledged, then the
	// final read finds nothing.
	var y b
	y.set(0, "k", "1", 0, 10, OK)
	final = y.getAbsent(1, "k", 20, 30)
	if rep := check(t, y.h); rep.OK() {
		t.Fatalf("lost write (absent) accepted by porcupine:\n%s", rep)
	}
	if p := LostWrites(y.h, []Op{final}); len(p) != 1 {
		t.Fatalf("lost write (absent) not reported: %q", p)
	}

	// A value nobody wrote.
	var z b
	z.set(0, "k", "1", 0, 10, OK)
	final = z.get(1, "k", "phantom", 20, 30)
	if p := LostWrites(z.h, []Op{final}); len(p) != 1 || !strings.Contains(p[0], "no operation wrote") {
		t.Fatalf("phantom value not reported: %q", p)
	}
	if rep := check(t, z.h); rep.OK() {
		t.Fatalf("phantom value accepted by porcupine:\n%s", rep)
	}
}

// An acknowledged delete followed by a final read showing the deleted
// value is a lost write, too.
func TestLostDeleteRejected(t *testing.T) {
	var x b
	x.set(0, "k", "1", 0, 10, OK)
	x.del(0, "k", 20, 30, OK)
	final := x.get(1, "k", "1", 40, 50)
	if rep := check(t, x.h); rep.OK() {
		t.Fatalf("lost delete accepted:\n%s", rep)
	}
	if p := LostWrites(x.h, []Op{final}); len(p) != 1 {
		t.Fatalf("lost delete not reported: %q", p)
	}
}

// A write with an unknown outcome (a timeout) may have taken effect at any
// time after its call, or never. Both final states are fine...
func TestPendingWriteEitherWay(t *testing.T) {
	for _, seen := range []string{"1", "2"} {
		var x b
		x.set(0, "k", "1", 0, 10, OK)
		x.set(1, "k", "2", 20, 25, Unknown) // the client timed out at 25
		x.get(2, "k", "1", 30, 40)          // not applied yet (or never)
		final := x.get(2, "k", seen, 100, 110)
		wantOK(t, x.h, final)
	}
	// ... including taking effect long after the client gave up.
	var x b
	x.set(0, "k", "1", 0, 10, OK)
	x.set(1, "k", "2", 20, 25, Unknown)
	x.get(2, "k", "1", 30, 40)
	x.set(3, "k", "3", 50, 60, OK)
	x.get(2, "k", "3", 61, 62)
	final := x.get(2, "k", "2", 100, 110) // "2" landed after "3"
	wantOK(t, x.h, final)
}

// ... but not both: once a read saw the pending write, a later read must
// not see the older value again; and a pending write cannot take effect
// before it was called.
func TestPendingWriteConstrained(t *testing.T) {
	var x b
	x.set(0, "k", "1", 0, 10, OK)
	x.set(1, "k", "2", 20, 25, Unknown)
	x.get(2, "k", "2", 30, 40)
	x.get(2, "k", "1", 50, 60) // "2" was observed, so "1" is stale
	if rep := check(t, x.h); rep.OK() {
		t.Fatalf("read of the old value after the pending write was observed accepted:\n%s", rep)
	}

	var y b
	y.set(0, "k", "1", 0, 10, OK)
	y.get(2, "k", "2", 12, 15) // "2" is only written from 20 on
	y.set(1, "k", "2", 20, 25, Unknown)
	if rep := check(t, y.h); rep.OK() {
		t.Fatalf("read of a pending write before it was called accepted:\n%s", rep)
	}
}

// A pending write does not excuse the loss of a later acknowledged one.
func TestPendingWriteDoesNotHideLostWrite(t *testing.T) {
	var x b
	x.set(1, "k", "1", 0, 5, Unknown)
	x.set(0, "k", "2", 10, 20, OK)
	final := x.getAbsent(2, "k", 100, 110)
	if rep := check(t, x.h); rep.OK() {
		t.Fatalf("lost write accepted:\n%s", rep)
	}
	if p := LostWrites(x.h, []Op{final}); len(p) != 1 {
		t.Fatalf("lost write not reported: %q", p)
	}
	// The pending write showing up at the end is fine, though.
	var y b
	y.set(1, "k", "1", 0, 5, Unknown)
	y.set(0, "k", "2", 10, 20, OK)
	final = y.get(2, "k", "1", 100, 110)
	wantOK(t, y.h, final)
}

func TestRecorder(t *testing.T) {
	r := NewRecorder()
	c := r.NewClient()
	call := r.Now()
	time.Sleep(time.Millisecond)
	op := r.Add(Op{Client: c, Kind: Write, Key: "k", Value: "v", Call: call, Return: r.Now(), Outcome: OK})
	r.Event(call, r.Now(), "kill %s", "node-1")
	h := r.History()
	if op.ID != 0 || len(h.Ops) != 1 || h.Ops[0].Return <= h.Ops[0].Call || len(h.Events) != 1 || r.NewClient() != c+1 {
		t.Fatalf("recorder: %+v", h)
	}
	if s := h.Counts(); s != "write: 1 ok, 0 failed, 0 unknown" {
		t.Fatalf("counts %q", s)
	}
}
