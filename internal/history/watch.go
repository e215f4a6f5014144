package history

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Watch event types (GET /kv/watch): the changes, and the others.
const (
	EventSet      = "set"
	EventDelete   = "delete"
	EventExpire   = "expire"
	EventProgress = "progress"
	EventResync   = "resync_required"
	EventCut      = "cut"
)

// WatchEvent is one event a watcher received on its stream.
type WatchEvent struct {
	// Type is one of the Event* constants.
	Type     string `json:"type"`
	Key      string `json:"key,omitempty"`
	Value    string `json:"value,omitempty"` // a set's
	Revision uint64 `json:"revision,omitempty"`
	// ID is the event's id, its resume token ("" for resync_required,
	// which has none: Token is then the token it offers, which resumes
	// accepting the gap).
	ID    string `json:"id,omitempty"`
	Token string `json:"token,omitempty"`
	// Partition, Reason and Error describe a resync_required (partition,
	// and Revision the oldest position it can resume from) or a cut.
	Partition int    `json:"partition,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Error     string `json:"error,omitempty"`
	// At is when it was received (recorder time); Conn is the index in
	// Watch.Conns of the connection it came on.
	At   int64 `json:"at"`
	Conn int   `json:"conn"`
}

// change reports whether e is a change of a key (set, delete, expire).
func (e WatchEvent) change() bool {
	return e.Type == EventSet || e.Type == EventDelete || e.Type == EventExpire
}

func (e WatchEvent) String() string {
	var s string
	switch e.Type {
	case EventSet:
		s = fmt.Sprintf("set %s = %q rev %d", e.Key, e.Value, e.Revision)
	case EventDelete, EventExpire:
		s = fmt.Sprintf("%s %s rev %d", e.Type, e.Key, e.Revision)
	case EventResync:
		s = fmt.Sprintf("resync_required partition %d (oldest position %d, token %s): %s", e.Partition, e.Revision, shortToken(e.Token), e.Error)
	case EventCut:
		s = fmt.Sprintf("cut (%s): %s", e.Reason, e.Error)
	default:
		s = e.Type
	}
	return fmt.Sprintf("%s at %s on connection %d, id %s", s, fmtNanos(e.At), e.Conn, shortToken(e.ID))
}

// shortToken abbreviates a very long token for messages (the history has
// them whole). Tokens of one cluster share their first bytes, and differ
// anywhere after, so an ordinary one is shown whole.
func shortToken(t string) string {
	if t == "" {
		return `""`
	}
	if len(t) > 200 {
		return t[:100] + "…" + t[len(t)-100:]
	}
	return t
}

// WatchConn is one connection (one GET /kv/watch) of a watcher.
type WatchConn struct {
	Node string `json:"node"`
	// Since is the token it resumed from (Last-Event-ID; "": since=now).
	Since string `json:"since,omitempty"`
	// Start is when the request was sent, End when the stream ended, and
	// Ended why: the server ended it, an error, or the watcher's own
	// choice (idle stream, a deliberate reconnect, the end of the run).
	Start  int64  `json:"start"`
	End    int64  `json:"end"`
	Ended  string `json:"ended,omitempty"`
	Events int    `json:"events"`
}

// Watch is everything one watcher received, across its connections, in
// the order received.
type Watch struct {
	ID     int    `json:"id"`
	Prefix string `json:"prefix"`
	// TokenCall and TokenReturn are when the request that gave the
	// watch's start token was sent and answered (a scan's token, or the
	// first event of a since=now watch); From says which, for people.
	// Writes invoked after TokenReturn must all be in the stream, writes
	// acknowledged before TokenCall none of them.
	TokenCall   int64        `json:"token_call"`
	TokenReturn int64        `json:"token_return"`
	From        string       `json:"from,omitempty"`
	Events      []WatchEvent `json:"events"`
	Conns       []WatchConn  `json:"conns"`
}

// AddWatch records what a watcher received and returns it with its ID set
// (from 1).
func (r *Recorder) AddWatch(w Watch) Watch {
	r.mu.Lock()
	defer r.mu.Unlock()
	w.ID = len(r.watches) + 1
	r.watches = append(r.watches, w)
	return w
}

// WatchReport is CheckWatches' verdict.
type WatchReport struct {
	// Problems has one message per violation.
	Problems []string
	// What the watchers showed, to tell what a run tested: Changes is the
	// change events of every watcher; Acked the acknowledged writes each
	// had to show (summed over watchers); UnknownSeen and UnknownUnseen
	// the writes with an unknown outcome (or an acknowledgement cut
	// short) that a watcher showed applied, or did not; Conns the
	// connections, Resumed those that resumed from a token.
	Changes, Acked, UnknownSeen, UnknownUnseen, Conns, Resumed int
}

// OK reports whether no problem was found.
func (r WatchReport) OK() bool { return len(r.Problems) == 0 }

// WatchOptions are CheckWatches' settings.
type WatchOptions struct {
	// Partitions maps keys to their partitions (nil: unknown; order is
	// then checked per key only).
	Partitions map[string]int
	// Bound is how far the nodes' clocks and the recorder's may disagree:
	// an expire event received more than Bound before the deadline of
	// the set it removes is premature.
	Bound time.Duration
}

// CheckWatches checks what the watchers of h (h.Watches) received against
// its writes (single operations and the ops of batches). Every watch must
// have watched every key with its prefix from its start token, and have
// been read until it had caught up with every write (the caller's job);
// values must be unique per key (a set event's value names its write).
// finals are reads made after every write had ended (the last per key
// counts; only OK ones). The rules:
//
//   - every acknowledged write to a watched key invoked after the watch's
//     token was obtained (a set; a delete that deleted something) is in
//     every stream exactly once, with the revision, the type and (set)
//     the value it was acknowledged with; an acknowledged set whose answer
//     was cut short is found by its value;
//   - every change event is a write that was attempted and not certainly
//     refused (a failed outcome or a failed condition): a set event's
//     value names its set, a delete event that is no acknowledged delete
//     is one of the deletes with an unknown outcome, each at most once; an
//     expire event follows a set with a TTL, and comes no earlier than
//     its deadline (less the bound); a delete or expire follows a set (a
//     delete of an absent key changes nothing);
//   - per key, and per partition when partitions are known, revisions
//     strictly increase along a stream; revisions follow real time: a
//     write acknowledged before another was invoked has the lower one;
//   - every stream shows, per key (that both watch), the same sequence
//     of changes;
//   - the last change of each key agrees with its final read (value and
//     revision, or absence);
//   - a connection that resumed from a token starts with a progress
//     event at that token, and no stream is ever cut or asked to resync.
//     A watch that ended on a resync is incomplete: the rules that need
//     the whole stream are not applied to it. (A watcher may also resume
//     after a resync from the id of the last event it processed, as after
//     any other end, and be checked whole.)
func CheckWatches(h History, finals []Op, opt WatchOptions) WatchReport {
	var rep WatchReport
	watches, partitions := h.Watches, opt.Partitions
	problem := func(format string, args ...any) {
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
	}

	// The writes that may show up in a stream, by key.
	type keyWrites struct {
		sets map[string]Op // by value
		// acked are the acknowledged sets and deletes that deleted
		// something, with their revisions; ackedDeletes those deletes
		// by revision.
		acked        []Op
		ackedDeletes map[uint64]Op
		// deletes may have deleted something no answer tells: their
		// outcome is unknown, or their answer was cut short.
		deletes []Op
		ttl     bool // some set had a TTL
	}
	writes := map[string]*keyWrites{}
	kw := func(key string) *keyWrites {
		w, ok := writes[key]
		if !ok {
			w = &keyWrites{sets: map[string]Op{}, ackedDeletes: map[uint64]Op{}}
			writes[key] = w
		}
		return w
	}
	for _, o := range h.Ops {
		if o.Kind == Read {
			continue
		}
		w := kw(o.Key)
		switch o.Kind {
		case Write:
			if prev, ok := w.sets[o.Value]; !ok || prev.Outcome == Failed || prev.CondFailed {
				w.sets[o.Value] = o
			}
			if o.TTL > 0 && o.Outcome != Failed && !o.CondFailed {
				w.ttl = true
			}
		case Delete:
			switch {
			case o.Outcome == Failed || o.CondFailed:
			case o.Outcome == Unknown || o.Partial:
				w.deletes = append(w.deletes, o)
			case o.Found && o.Revision != 0:
				// Acknowledged below with the sets.
			default:
				continue // nothing to delete: no change, no event
			}
		}
		if o.Outcome == OK && !o.CondFailed && !o.Partial && (o.Kind == Write || (o.Found && o.Revision != 0)) {
			w.acked = append(w.acked, o)
			if o.Kind == Delete {
				w.ackedDeletes[o.Revision] = o
			}
		}
	}
	final := map[string]Op{}
	for _, f := range finals {
		if f.Kind == Read && f.Outcome == OK {
			if prev, ok := final[f.Key]; !ok || f.Call > prev.Call {
				final[f.Key] = f
			}
		}
	}

	// change is an event as the streams must agree on it.
	type change struct {
		typ, value string
		rev        uint64
	}
	// reference is, per key, the first complete stream that watches it.
	type reference struct {
		watch int
		seq   []change
	}
	refs := map[string]reference{}

	for wi := range watches {
		wt := &watches[wi]
		name := fmt.Sprintf("watcher %d (prefix %q)", wt.ID, wt.Prefix)
		rep.Conns += len(wt.Conns)

		// Connections that resumed must start where they were asked to.
		first := map[int]WatchEvent{}
		for _, e := range wt.Events {
			if _, ok := first[e.Conn]; !ok {
				first[e.Conn] = e
			}
		}
		for ci, c := range wt.Conns {
			if c.Since == "" {
				continue
			}
			rep.Resumed++
			e, ok := first[ci]
			switch {
			case !ok:
			case e.Type != EventProgress:
				problem("%s: connection %d through %s, resumed from %s, began with %s, not a progress event", name, ci, c.Node, shortToken(c.Since), e)
			case e.ID != c.Since:
				problem("%s: connection %d through %s, resumed from %s, began at another position: %s", name, ci, c.Node, shortToken(c.Since), e)
			}
		}

		// A resync that ends the watch leaves it incomplete; one the
		// watcher resumed after (from its last event's id, not the
		// resync's token) does not.
		broken := len(wt.Events) > 0 && wt.Events[len(wt.Events)-1].Type == EventResync
		seq := map[string][]change{}
		lastRev := map[string]uint64{}
		lastEvent := map[string]WatchEvent{}
		partRev := map[int]WatchEvent{}
		// The writes each change event is, per key in stream order.
		matched := map[string][]Op{}
		seenOp := map[int]WatchEvent{}
		// Delete events that are no acknowledged delete, per key.
		unexplained := map[string][]WatchEvent{}
		for _, e := range wt.Events {
			switch e.Type {
			case EventResync:
				problem("%s: %s through %s, on a connection that resumed from %s: a watch from a retained position must never need a resync",
					name, e, connNode(wt, e.Conn), connSince(wt, e.Conn))
				continue
			case EventCut:
				problem("%s: stream cut: %s through %s", name, e, connNode(wt, e.Conn))
				continue
			}
			if !e.change() {
				continue
			}
			rep.Changes++
			if !strings.HasPrefix(e.Key, wt.Prefix) {
				problem("%s: %s is for a key outside the watched prefix", name, e)
				continue
			}
			if prev, ok := lastEvent[e.Key]; ok && e.Revision <= lastRev[e.Key] {
				what := "out of revision order"
				if e.Revision == lastRev[e.Key] {
					what = "delivered twice"
				}
				problem("%s: %s through %s is %s: it came after %s", name, e, connNode(wt, e.Conn), what, prev)
			}
			if p, ok := partitions[e.Key]; ok {
				if prev, ok := partRev[p]; ok && e.Revision <= prev.Revision {
					problem("%s: %s through %s is out of revision order in partition %d: it came after %s", name, e, connNode(wt, e.Conn), p, prev)
				}
				partRev[p] = e
			}
			prev, hasPrev := lastEvent[e.Key]
			lastEvent[e.Key] = e
			lastRev[e.Key] = max(lastRev[e.Key], e.Revision)
			seq[e.Key] = append(seq[e.Key], change{e.Type, e.Value, e.Revision})
			w := writes[e.Key]
			if w == nil {
				problem("%s: %s: no write was ever attempted on that key", name, e)
				continue
			}
			var op *Op // the write the event is
			switch e.Type {
			case EventSet:
				o, ok := w.sets[e.Value]
				switch {
				case !ok:
					problem("%s: %s: no set of the key wrote that value", name, e)
					continue
				case o.Outcome == Failed || o.CondFailed:
					problem("%s: %s is a write that was not applied: %s", name, e, o)
					continue
				case o.Outcome == OK && !o.Partial && o.Revision != e.Revision:
					problem("%s: %s shows another revision than the set was acknowledged with: %s", name, e, o)
				}
				op = &o
			case EventDelete:
				if hasPrev && prev.Type != EventSet {
					problem("%s: %s follows %s: a delete of an absent key changes nothing", name, e, prev)
				}
				o, ok := w.ackedDeletes[e.Revision]
				if !ok {
					unexplained[e.Key] = append(unexplained[e.Key], e)
					continue
				}
				op = &o
			case EventExpire:
				switch {
				case !w.ttl:
					problem("%s: %s: no set of the key had a TTL", name, e)
				case !hasPrev:
				case prev.Type != EventSet:
					problem("%s: %s follows %s: only a live key expires", name, e, prev)
				case w.sets[prev.Value].TTL == 0:
					problem("%s: %s follows %s, which had no TTL", name, e, prev)
				default:
					// The deadline, or the least it can be.
					set := w.sets[prev.Value]
					d := set.Call + int64(set.TTL)
					if deadlineKnown(set) && set.Deadline != 0 {
						d = set.Deadline
					}
					if e.At < d-int64(opt.Bound) {
						problem("%s: %s came %s before the deadline %s of %s (bound %s)", name, e, time.Duration(d-e.At).Round(time.Millisecond), fmtNanos(d), set, opt.Bound)
					}
				}
			}
			if op == nil {
				continue
			}
			if dup, ok := seenOp[op.ID]; ok {
				problem("%s: %s and %s are the same write, applied or delivered twice: %s", name, dup, e, *op)
				continue
			}
			seenOp[op.ID] = e
			if op.Outcome == OK && op.Return < wt.TokenCall {
				problem("%s: %s was acknowledged before the watch's start token was asked for (at %s): %s", name, e, fmtNanos(wt.TokenCall), *op)
			}
			matched[e.Key] = append(matched[e.Key], withRevision(*op, e.Revision))
		}

		for _, key := range sortedKeys(writes) {
			w := writes[key]
			// Every acknowledged write invoked after the token.
			if !broken && strings.HasPrefix(key, wt.Prefix) {
				for _, o := range w.acked {
					if o.Call <= wt.TokenReturn {
						continue
					}
					rep.Acked++
					if _, ok := seenOp[o.ID]; !ok {
						problem("%s: acknowledged %s is missing from the stream", name, o)
					}
				}
				for _, o := range w.sets {
					if o.Outcome == OK && o.Partial && o.Call > wt.TokenReturn {
						if _, ok := seenOp[o.ID]; !ok {
							problem("%s: acknowledged %s is missing from the stream", name, o)
						}
					}
				}
			}
			for _, o := range w.sets {
				if (o.Outcome == Unknown || o.Partial) && strings.HasPrefix(key, wt.Prefix) {
					if _, ok := seenOp[o.ID]; ok {
						rep.UnknownSeen++
					} else {
						rep.UnknownUnseen++
					}
				}
			}
			for i, e := range unexplained[key] {
				// The deletes that can be the i-th unexplained event:
				// those invoked before any write with a higher
				// revision was acknowledged.
				before := int64(math.MaxInt64)
				for _, o := range w.acked {
					if o.Revision > e.Revision {
						before = min(before, o.Return)
					}
				}
				n := 0
				for _, d := range w.deletes {
					if d.Call < before {
						n++
					}
				}
				if n <= i {
					problem("%s: %s is no acknowledged delete, and there are not enough deletes with an unknown outcome to explain it (%d unexplained delete events of %s up to it, %d such deletes invoked before a write with a higher revision was acknowledged)",
						name, e, i+1, key, n)
					break
				}
			}
			if strings.HasPrefix(key, wt.Prefix) {
				rep.UnknownSeen += min(len(unexplained[key]), len(w.deletes))
				rep.UnknownUnseen += max(0, len(w.deletes)-len(unexplained[key]))
			}
			// Revisions follow real time.
			ops := slices.Clone(matched[key])
			slices.SortFunc(ops, func(a, b Op) int { return cmpRev(a.Revision, b.Revision) })
			var later *Op // the acknowledged op with a higher revision that returned first
			for i := len(ops) - 1; i >= 0; i-- {
				o := ops[i]
				if later != nil && later.Return < o.Call {
					problem("%s: revisions go against real time: %s (revision %d in the stream) was invoked after %s had been acknowledged", name, o, o.Revision, *later)
				}
				if o.Outcome == OK && (later == nil || o.Return < later.Return) {
					later = &ops[i]
				}
			}
		}

		if broken {
			continue
		}
		// The final state.
		for _, key := range sortedKeys(final) {
			f := final[key]
			if !strings.HasPrefix(key, wt.Prefix) {
				continue
			}
			e, ok := lastEvent[key]
			switch {
			case f.Found && (!ok || e.Type != EventSet || e.Value != f.Value || e.Revision != f.Revision):
				last := "no change of it"
				if ok {
					last = e.String()
				}
				problem("%s: the last change of %s in the stream is %s, but the final read %s", name, key, last, f)
			case !f.Found && ok && e.Type == EventSet:
				problem("%s: the last change of %s in the stream is %s, but the final read %s", name, key, e, f)
			}
		}
		// The same changes as the other streams: per key, as the first
		// complete stream that watches it.
		for _, key := range sortedKeys(mergeKeys(seq, refs)) {
			if !strings.HasPrefix(key, wt.Prefix) {
				continue
			}
			ref, ok := refs[key]
			if !ok {
				refs[key] = reference{wt.ID, seq[key]}
				continue
			}
			a, b := ref.seq, seq[key]
			for i := range max(len(a), len(b)) {
				if i < len(a) && i < len(b) && a[i] == b[i] {
					continue
				}
				describe := func(s []change) string {
					if i >= len(s) {
						return "nothing more"
					}
					return fmt.Sprintf("%s %q rev %d", s[i].typ, s[i].value, s[i].rev)
				}
				problem("%s and watcher %d disagree on %s: its change %d is %s in watcher %d, %s in watcher %d",
					name, ref.watch, key, i+1, describe(a), ref.watch, describe(b), wt.ID)
				break
			}
		}
		// Keys this stream watches and no earlier one did, with no
		// change here: a later stream must show none either.
		for _, key := range sortedKeys(writes) {
			if _, ok := refs[key]; !ok && strings.HasPrefix(key, wt.Prefix) {
				refs[key] = reference{wt.ID, nil}
			}
		}
	}
	return rep
}

func connNode(w *Watch, conn int) string {
	if conn >= 0 && conn < len(w.Conns) {
		return w.Conns[conn].Node
	}
	return "?"
}

func connSince(w *Watch, conn int) string {
	if conn >= 0 && conn < len(w.Conns) {
		if s := w.Conns[conn].Since; s != "" {
			return s
		}
	}
	return "since=now"
}

func withRevision(o Op, rev uint64) Op {
	o.Revision = rev
	return o
}

func cmpRev(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func mergeKeys[A, B any](a map[string]A, b map[string]B) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}
