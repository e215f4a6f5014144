package history

import (
	"fmt"
	"strings"
)

// Batch is one POST /kv/batch request. Its operations are recorded in
// History.Ops as well, one per op of the batch, in its order (Op.Batch
// names the batch, and each has the batch's call and return time): the
// per-key checks take them as they take single operations, since each op
// of a batch is linearizable on its own. What they cannot see, that the
// ops of an atomic batch took effect together or not at all, CheckBatches
// checks.
type Batch struct {
	ID     int   `json:"id"` // from 1, so that Op.Batch 0 means none
	Client int   `json:"client"`
	Call   int64 `json:"call"`
	Return int64 `json:"return"`
	// Atomic: all ops in one partition, applied all or none.
	Atomic bool `json:"atomic,omitempty"`
	// Outcome is the request's: OK if it was answered with a result per
	// op, each op then having its own outcome; otherwise Failed (nothing
	// applied) or Unknown (any of it may have been applied; with Atomic,
	// all or none), which every op of the batch has too.
	Outcome Outcome `json:"outcome"`
	// Committed is what an atomic batch's answer said.
	Committed bool `json:"committed,omitempty"`
	// Ops are the IDs of the batch's operations in History.Ops, in the
	// batch's order.
	Ops []int `json:"ops"`
	// Node and Err are for people, as an Op's.
	Node string `json:"node,omitempty"`
	Err  string `json:"err,omitempty"`
}

func (b Batch) String() string {
	kind := "plain"
	if b.Atomic {
		kind = "atomic"
	}
	s := fmt.Sprintf("batch %d (%s, %d ops) client %d [%s, %s] %s", b.ID, kind, len(b.Ops), b.Client, fmtNanos(b.Call), fmtNanos(b.Return), b.Outcome)
	if b.Atomic && b.Outcome == OK {
		s += fmt.Sprintf(", committed=%v", b.Committed)
	}
	if b.Node != "" {
		s += " via " + b.Node
	}
	if b.Err != "" {
		s += ": " + b.Err
	}
	return s
}

// AddBatch records a finished batch and its operations, one per op in the
// batch's order, each with its own outcome, and returns them with their
// IDs set (the batch's, and its operations' in b.Ops and their Batch).
func (r *Recorder) AddBatch(b Batch, ops []Op) (Batch, []Op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b.ID = len(r.batches) + 1
	b.Ops = make([]int, len(ops))
	out := make([]Op, len(ops))
	for i, op := range ops {
		op.ID, op.Batch = len(r.ops), b.ID
		r.ops = append(r.ops, op)
		b.Ops[i], out[i] = op.ID, op
	}
	r.batches = append(r.batches, b)
	return b, out
}

// opIndex finds operations by ID.
type opIndex map[int]Op

func indexOps(h History) opIndex {
	idx := make(opIndex, len(h.Ops))
	for _, o := range h.Ops {
		idx[o.ID] = o
	}
	return idx
}

// of returns b's operations, in order.
func (idx opIndex) of(b Batch) []Op {
	ops := make([]Op, 0, len(b.Ops))
	for _, id := range b.Ops {
		ops = append(ops, idx[id])
	}
	return ops
}

// fate is what became of an atomic batch, as its answer shows.
type fate int

const (
	// committed: every op answered, every write applied together.
	committed fate = iota
	// rejected: certainly nothing applied.
	rejected
	// maybe: every write's outcome unknown: all of them applied, or none.
	maybe
	// broken: an answer that is neither all nor nothing (a violation).
	broken
)

// applied reports whether o is a write that took effect.
func applied(o Op) bool { return o.Kind != Read && o.Outcome == OK && !o.CondFailed }

// answered reports whether o took effect (a write) or was answered (a
// read).
func answered(o Op) bool { return applied(o) || (o.Kind == Read && o.Outcome == OK) }

// atomicFate classifies atomic batch b, whose operations are ops, and
// describes how its answer breaks all or nothing ("" if it does not).
func atomicFate(b Batch, ops []Op) (fate, string) {
	switch b.Outcome {
	case Failed:
		return rejected, ""
	case Unknown:
		return maybe, ""
	}
	var yes, no, writes, unknown, refused int
	for _, o := range ops {
		if answered(o) {
			yes++
		} else {
			no++
		}
		if o.Kind != Read {
			writes++
			switch {
			case o.Outcome == Unknown:
				unknown++
			case !applied(o):
				refused++
			}
		}
	}
	bad := func(format string, args ...any) (fate, string) {
		return broken, fmt.Sprintf("%s: %s:\n%s", b, fmt.Sprintf(format, args...), describeOps(ops))
	}
	switch {
	case no == 0:
		if writes > 0 && !b.Committed {
			return bad("every write applied and every get answered, but the answer says committed=false")
		}
		if p := checkCommitted(ops); p != "" {
			return bad("%s", p)
		}
		return committed, ""
	case yes > 0:
		return bad("not all or nothing: %d of %d ops applied or answered, the others not", yes, len(ops))
	case unknown > 0 && refused > 0:
		return bad("not all or nothing: %d writes certainly not applied, %d with an unknown outcome", refused, unknown)
	case writes > 0 && b.Committed:
		return bad("no write applied, but the answer says committed=true")
	case unknown > 0:
		return maybe, ""
	}
	// A batch of gets only that nobody answered is rejected too: it
	// changed nothing.
	return rejected, ""
}

// checkCommitted checks a committed atomic batch's answers against each
// other: its writes took consecutive revisions in the batch's order (no
// other write came between them), a get shows the state the batch's ops
// before it left (a key the batch wrote: that write's value and revision;
// one it did not: what any earlier get of it showed, at a revision below
// every write of the batch, which it was written before), and a write's
// if_revision held against that state. It describes the first mismatch.
// The keys must have no TTLs (an expiry takes a revision of its own).
func checkCommitted(ops []Op) string {
	type state struct {
		exists bool
		value  string
		rev    uint64 // 0: absent
		by     Op     // the op that showed or made the state
	}
	cur := map[string]state{}
	var first, next uint64 // the batch's first write's revision, and the next one's
	var before []Op        // gets of keys the batch had not written yet
	for _, o := range ops {
		s, known := cur[o.Key]
		if o.Kind == Read {
			got := state{exists: o.Found, value: o.Value, rev: o.Revision, by: o}
			if !o.Found {
				got.rev = 0
			}
			if known && (got.exists != s.exists || got.value != s.value || got.rev != s.rev) {
				return fmt.Sprintf("%s does not show the state %s left", o, s.by)
			}
			if !known {
				cur[o.Key] = got
				before = append(before, o)
			}
			continue
		}
		switch {
		case o.HasIfRevision && known && s.rev != o.IfRevision:
			return fmt.Sprintf("the condition of %s held, though %s showed revision %d", o, s.by, s.rev)
		case o.IfExists && known && !s.exists:
			return fmt.Sprintf("the condition of %s held, though %s showed the key absent", o, s.by)
		case o.Kind == Delete && known && o.Found != s.exists:
			return fmt.Sprintf("%s answered deleted=%v, though %s showed the key %s", o, o.Found, s.by, map[bool]string{true: "present", false: "absent"}[s.exists])
		}
		if o.Kind == Delete && !o.Found {
			cur[o.Key] = state{by: o} // nothing to delete: no revision
			continue
		}
		switch {
		case next == 0:
			first = o.Revision
		case o.Revision != next:
			return fmt.Sprintf("%s took revision %d, not %d: the batch's writes did not take consecutive revisions", o, o.Revision, next)
		}
		next = o.Revision + 1
		ns := state{exists: o.Kind == Write, value: o.Value, rev: o.Revision, by: o}
		if o.Kind == Delete {
			ns.rev = 0
		}
		cur[o.Key] = ns
	}
	for _, g := range before {
		if next != 0 && g.Found && g.Revision >= first {
			return fmt.Sprintf("%s shows revision %d, not below %d, the batch's first write's, though the batch had not written the key", g, g.Revision, first)
		}
	}
	return ""
}

func describeOps(ops []Op) string {
	var b strings.Builder
	for _, o := range ops {
		fmt.Fprintf(&b, "  %s\n", o)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// CheckBatches checks every atomic batch of h: its answer shows it applied
// all or nothing — every write applied and every get answered, or no write
// applied and no get answered (with every write certainly not applied, or
// every write's outcome unknown) — with committed saying which; and a
// committed one's answers agree with each other (checkCommitted). It
// returns one message per violation. The keys of atomic batches must have
// no TTLs.
func CheckBatches(h History) []string {
	idx := indexOps(h)
	var problems []string
	for _, b := range h.Batches {
		if !b.Atomic {
			continue
		}
		if _, p := atomicFate(b, idx.of(b)); p != "" {
			problems = append(problems, p)
		}
	}
	return problems
}
