package history

import (
	"fmt"
	"math"
	"time"
)

// TTLReport is CheckTTL's verdict.
type TTLReport struct {
	// Problems has one message per violation.
	Problems []string
	// How many reads the rules constrained, to show what a run tested.
	// Live counts linearizable reads that could not find the key absent:
	// an acknowledged set was live all through them and no other write
	// could have removed its value by then. Expired counts reads (either
	// consistency) invoked more than the bound after the deadline of the
	// last set acknowledged before them, which must not return its value.
	Live, Expired int
}

// OK reports whether no problem was found.
func (r TTLReport) OK() bool { return len(r.Problems) == 0 }

// CheckTTL checks the reads of h against the TTL deadlines the sets set.
// bound is how far the nodes' clocks and the recorder's may disagree (plus
// clock-reading granularity). A set with a TTL gets a deadline d from the
// primary, computed once when it applies the set and reported as
// expires_at; then:
//
//   - a set's deadline is its TTL after a moment between its call and its
//     return (within the bound), and every read of its value reports the
//     same deadline (a read of a value set with a TTL that reports none,
//     or reports a different one, lost or changed it);
//   - no read, of either consistency, invoked after d+bound returns the
//     value (nor after the deadline the read itself reported, plus the
//     bound);
//   - a linearizable read invoked after the set was acknowledged returns
//     its value if it completed before d-bound, or finds the key absent
//     if it was invoked after d+bound, unless another write could come
//     between the set and the read and explain what it returned: that
//     write's value, or "absent" if it is a delete or a set whose own TTL
//     could have run out by then. A set without a TTL has d = ∞, so this
//     is the plain rule that a read sees the last acknowledged write.
//
// Stale reads may return an older value or "absent"; only the deadline
// rule applies to them. Values must be unique per key (a read's value
// names its set), and the history must have no keep_ttl and no expire
// operations (a set without ttl clears the TTL). Failed operations and
// writes whose condition failed changed nothing and are left out; writes
// with an unknown outcome may take effect at any time after their call.
func CheckTTL(h History, bound time.Duration) TTLReport {
	var rep TTLReport
	for _, key := range h.Keys() {
		checkTTLKey(&rep, key, h.ByKey(key), int64(bound))
	}
	return rep
}

// deadlineKnown reports whether w's deadline (Deadline, 0 for none) is
// known: the set was acknowledged with a readable answer.
func deadlineKnown(w Op) bool { return w.Outcome == OK && !w.Partial }

func checkTTLKey(rep *TTLReport, key string, ops []Op, bound int64) {
	problem := func(format string, args ...any) {
		rep.Problems = append(rep.Problems, fmt.Sprintf("key %q: ", key)+fmt.Sprintf(format, args...))
	}
	var writes, reads []Op
	sets := map[string]Op{}
	for _, o := range ops {
		switch {
		case o.Kind == Read:
			if o.Outcome == OK {
				reads = append(reads, o)
			}
		case o.Outcome != Failed && !o.CondFailed:
			writes = append(writes, o)
			if o.Kind == Write {
				sets[o.Value] = o
			}
		}
	}
	// deadline is w's deadline if known, ∞ for a set without a TTL.
	deadline := func(w Op) int64 {
		if w.Deadline == 0 {
			return math.MaxInt64
		}
		return w.Deadline
	}
	for _, w := range writes {
		if w.Kind != Write || !deadlineKnown(w) {
			continue
		}
		switch {
		case w.TTL > 0 && w.Deadline == 0:
			problem("%s asked for a TTL and was acknowledged without a deadline (expires_at)", w)
		case w.TTL == 0 && w.Deadline != 0:
			problem("%s asked for no TTL and was acknowledged with a deadline", w)
		case w.TTL > 0 && (w.Deadline < w.Call+int64(w.TTL)-bound || w.Deadline > w.Return+int64(w.TTL)+bound):
			problem("%s was acknowledged with a deadline that is not its TTL after a moment between its call and its return (bound %s)",
				w, time.Duration(bound))
		}
	}

	for _, r := range reads {
		// The set acknowledged last before r was invoked.
		var last *Op
		for i, w := range writes {
			if w.Kind == Write && deadlineKnown(w) && w.Return < r.Call && (last == nil || w.Return > last.Return) {
				last = &writes[i]
			}
		}
		if last != nil && last.Deadline != 0 && r.Call > last.Deadline+bound {
			rep.Expired++
		}
		if r.Found {
			src, ok := sets[r.Value]
			if !ok {
				problem("%s returned a value no set wrote", r)
				continue
			}
			switch {
			case src.TTL > 0 && r.Deadline == 0:
				problem("%s shows no deadline for a value set with a TTL (TTL lost): %s", r, src)
			case src.TTL == 0 && r.Deadline != 0:
				problem("%s shows a deadline for a value set without a TTL: %s", r, src)
			case deadlineKnown(src) && r.Deadline != src.Deadline:
				problem("%s shows another deadline than the set was acknowledged with: %s", r, src)
			case src.TTL > 0 && r.Deadline < src.Call+int64(src.TTL)-bound:
				problem("%s shows a deadline before the set's call plus its TTL: %s", r, src)
			}
			// Both the deadline the set was acknowledged with and the
			// one the read reported.
			var ds []int64
			if deadlineKnown(src) && src.Deadline != 0 {
				ds = append(ds, src.Deadline)
			}
			if r.Deadline != 0 {
				ds = append(ds, r.Deadline)
			}
			for _, d := range ds {
				if r.Call > d+bound {
					problem("%s returned the value %s after its deadline %s (bound %s): %s",
						r, time.Duration(r.Call-d).Round(time.Millisecond), fmtNanos(d), time.Duration(bound), src)
					break
				}
			}
		}
		if r.Stale {
			continue
		}
		counted := false
		for _, s := range writes {
			if s.Kind != Write || !deadlineKnown(s) || s.Return >= r.Call {
				continue
			}
			d := deadline(s)
			// The other writes that could take effect between s and r.
			var between []Op
			for _, w := range writes {
				if w.ID != s.ID && w.Call < r.Return && (w.Outcome == Unknown || w.Return > s.Call) {
					between = append(between, w)
				}
			}
			// Whether the key may be absent at r: s may have run out,
			// or a write between may have removed it.
			absentOK := d != math.MaxInt64 && r.Return >= d-bound
			for _, w := range between {
				switch {
				case w.Kind == Delete:
					absentOK = true
				case w.TTL > 0:
					// w took effect after s, so its deadline is at
					// least its TTL after both calls.
					wd := max(w.Call, s.Call) + int64(w.TTL)
					if deadlineKnown(w) {
						wd = w.Deadline
					}
					absentOK = absentOK || wd <= r.Return+bound
				}
			}
			if !absentOK && !counted {
				rep.Live++
				counted = true
			}
			if r.Found && r.Value == s.Value {
				continue // after its deadline is the rule above
			}
			explained := !r.Found && absentOK
			for _, w := range between {
				if r.Found && w.Kind == Write && w.Value == r.Value {
					explained = true
				}
			}
			if !explained {
				what := "found the key absent"
				if r.Found {
					what = fmt.Sprintf("returned %q, which no write after it wrote", r.Value)
				}
				when := "before its deadline"
				if d == math.MaxInt64 {
					when = "and the set has no TTL"
				}
				problem("%s %s, though it was invoked after %s was acknowledged and completed %s, and no other write can explain it",
					r, what, s, when)
				break
			}
		}
	}
}
