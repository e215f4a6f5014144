package history

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Writes and watch events for the watch and scan tests; times are in
// arbitrary units.

// ws is an acknowledged set of key to v [call, ret] that got revision rev.
func ws(key, v string, call, ret int64, rev uint64) Op {
	return Op{Kind: Write, Key: key, Value: v, Call: call, Return: ret, Outcome: OK, Revision: rev}
}

// wd is an acknowledged delete of key that deleted it at revision rev.
func wd(key string, call, ret int64, rev uint64) Op {
	return Op{Kind: Delete, Key: key, Call: call, Return: ret, Outcome: OK, Revision: rev, Found: true}
}

// wdNothing is an acknowledged delete of key that found nothing to delete.
func wdNothing(key string, call, ret int64) Op {
	return Op{Kind: Delete, Key: key, Call: call, Return: ret, Outcome: OK}
}

func failed(o Op) Op {
	o.Outcome, o.Revision, o.Found, o.Err = Failed, 0, false, "503 unavailable"
	return o
}

func condFailed(o Op) Op {
	o.HasIfRevision, o.CondFailed = true, true
	return o
}

// cutShort is o acknowledged with an answer cut short (revision unknown).
func cutShort(o Op) Op {
	o.Partial, o.Revision, o.Found = true, 0, false
	return o
}

// withTTL gives o a TTL of 1 s (in the scan tests), or with a deadline
// (the watch tests' units: an event's At is its index in the stream).
func withTTL(o Op) Op {
	o.TTL = time.Second
	return o
}

func withDeadline(o Op, ttl time.Duration, deadline int64) Op {
	o.TTL, o.Deadline = ttl, deadline
	return o
}

func eSet(key, v string, rev uint64) WatchEvent {
	return WatchEvent{Type: EventSet, Key: key, Value: v, Revision: rev}
}

func eDel(key string, rev uint64) WatchEvent {
	return WatchEvent{Type: EventDelete, Key: key, Revision: rev}
}

func eExp(key string, rev uint64) WatchEvent {
	return WatchEvent{Type: EventExpire, Key: key, Revision: rev}
}

func eProgress(id string) WatchEvent { return WatchEvent{Type: EventProgress, ID: id} }

// stream is a watch of prefix "" from before every write, on one
// connection through node-1 that began with a progress event; each event
// gets an id of its own.
func stream(evs ...WatchEvent) Watch {
	w := Watch{TokenCall: -2, TokenReturn: -1, Conns: []WatchConn{{Node: "node-1"}}}
	for i, e := range append([]WatchEvent{eProgress("")}, evs...) {
		if e.ID == "" && e.Type != EventResync {
			e.ID = fmt.Sprintf("t%d", i)
		}
		e.At = int64(i)
		w.Events = append(w.Events, e)
	}
	return w
}

// reconnected moves w's events from the i-th on to a second connection
// through node-2, resumed from the id of the event before.
func reconnected(w Watch, i int, since string) Watch {
	w.Conns = append(w.Conns, WatchConn{Node: "node-2", Since: since})
	for j := i; j < len(w.Events); j++ {
		w.Events[j].Conn = 1
	}
	return w
}

func fRead(key, v string, rev uint64) Op {
	return Op{Kind: Read, Key: key, Value: v, Found: true, Revision: rev, Outcome: OK, Call: 1000, Return: 1001}
}

func fAbsent(key string) Op { return Op{Kind: Read, Key: key, Outcome: OK, Call: 1000, Return: 1001} }

func TestCheckWatches(t *testing.T) {
	// A run on keys a and b: a set, deleted and set again; b set twice.
	ops := []Op{
		ws("a", "a1", 1, 2, 11), ws("b", "b1", 1, 3, 21), wd("a", 3, 4, 12),
		ws("a", "a2", 5, 6, 13), ws("b", "b2", 5, 7, 22),
	}
	evs := []WatchEvent{eSet("a", "a1", 11), eSet("b", "b1", 21), eDel("a", 12), eSet("a", "a2", 13), eSet("b", "b2", 22)}
	finals := []Op{fRead("a", "a2", 13), fRead("b", "b2", 22)}
	twice := func(w Watch) []Watch { return []Watch{w, w} }

	tests := []struct {
		name       string
		ops        []Op
		watches    []Watch
		finals     []Op
		partitions map[string]int
		// want is a piece of a problem expected ("": none).
		want string
	}{
		{"every write once, in order, watchers agree", ops, twice(stream(evs...)), finals, nil, ""},
		{"interleaved keys in another order", ops,
			[]Watch{stream(evs...), stream(eSet("b", "b1", 21), eSet("a", "a1", 11), eDel("a", 12), eSet("b", "b2", 22), eSet("a", "a2", 13))},
			finals, map[string]int{"a": 0, "b": 1}, ""},
		{"resumed on another node at its token", ops,
			twice(reconnected(stream(append(evs[:2:2], append([]WatchEvent{eProgress("t2")}, evs[2:]...)...)...), 3, "t2")), finals, nil, ""},
		{"a set with an unknown outcome shown by every watcher", append(ops, pending(ws("a", "a3", 8, 9, 0))),
			twice(stream(append(evs, eSet("a", "a3", 14))...)), []Op{fRead("a", "a3", 14), fRead("b", "b2", 22)}, nil, ""},
		{"a set with an unknown outcome shown by none", append(ops, pending(ws("a", "a3", 8, 9, 0))),
			twice(stream(evs...)), finals, nil, ""},
		{"a delete with an unknown outcome explains a delete event", append(ops, pending(wd("b", 8, 9, 0))),
			twice(stream(append(evs, eDel("b", 23))...)), []Op{fRead("a", "a2", 13), fAbsent("b")}, nil, ""},
		{"a delete that found nothing shows nothing", append(ops, wdNothing("a", 4, 5)), twice(stream(evs...)), finals, nil, ""},
		{"failed writes and failed conditions show nothing",
			append(ops, failed(ws("a", "x", 8, 9, 0)), condFailed(ws("b", "y", 8, 9, 22)), failed(wd("a", 8, 9, 0))),
			twice(stream(evs...)), finals, nil, ""},
		{"an answer cut short: the set is found by its value", append(ops[:4:4], cutShort(ws("b", "b2", 5, 7, 0))),
			twice(stream(evs...)), finals, nil, ""},
		{"writes before the token are not in the stream", ops,
			func() []Watch {
				w := stream(evs[2:]...)
				w.TokenCall, w.TokenReturn = 3, 4 // after a1 and b1 were invoked
				return []Watch{w}
			}(), finals, nil, ""},
		{"an expiry after a set with a TTL", []Op{withDeadline(ws("a", "a1", 1, 2, 11), 1, 2)},
			[]Watch{stream(eSet("a", "a1", 11), eExp("a", 12))}, []Op{fAbsent("a")}, nil, ""},
		{"an expiry a little before the deadline (clocks)", []Op{withDeadline(ws("a", "a1", 1, 2, 11), 1, 6)},
			[]Watch{stream(eSet("a", "a1", 11), eExp("a", 12))}, []Op{fAbsent("a")}, nil, ""},
		{"an expiry after a set with an unknown outcome", []Op{pending(withDeadline(ws("a", "a1", 1, 2, 0), 1, 0))},
			[]Watch{stream(eSet("a", "a1", 11), eExp("a", 12))}, []Op{fAbsent("a")}, nil, ""},

		// Violations.
		{"an acknowledged set missing", ops, []Watch{stream(evs[:4]...)}, nil, nil,
			`acknowledged #4 client 0 set(b, "b2") -> rev 22`},
		{"an acknowledged delete missing", ops,
			[]Watch{stream(eSet("a", "a1", 11), eSet("b", "b1", 21), eSet("a", "a2", 13), eSet("b", "b2", 22))}, nil, nil,
			"acknowledged #2 client 0 delete(a) -> rev 12 [0s, 0s] ok is missing from the stream"},
		{"a write missing from the second watcher only", ops, []Watch{stream(evs...), stream(evs[1:]...)}, nil, nil,
			`acknowledged #0 client 0 set(a, "a1") -> rev 11`},
		{"an answer cut short, and the set missing", append(ops[:4:4], cutShort(ws("b", "b2", 5, 7, 0))),
			[]Watch{stream(evs[:4]...)}, nil, nil, `set(b, "b2") -> applied (answer cut short)`},
		{"an event delivered twice", ops, []Watch{stream(append(evs, evs[4])...)}, nil, nil, "delivered twice"},
		{"a set applied twice", ops, []Watch{stream(append(evs, eSet("b", "b2", 23))...)}, nil, nil, "another revision"},
		{"a set with an unknown outcome applied twice", append(ops, pending(ws("a", "a3", 8, 9, 0))),
			[]Watch{stream(append(evs, eSet("a", "a3", 14), eSet("a", "a3", 15))...)}, nil, nil, "applied or delivered twice"},
		{"another revision", ops, []Watch{stream(eSet("a", "a1", 11), eSet("b", "b1", 20), eDel("a", 12), eSet("a", "a2", 13), eSet("b", "b2", 22))},
			nil, nil, `set b = "b1" rev 20 at 0s on connection 0, id t2 shows another revision`},
		{"out of order on a key", ops,
			[]Watch{stream(eSet("a", "a1", 11), eSet("b", "b1", 21), eSet("a", "a2", 13), eDel("a", 12), eSet("b", "b2", 22))},
			nil, nil, "out of revision order"},
		{"out of order in a partition", ops,
			[]Watch{stream(eSet("b", "b1", 21), eSet("a", "a1", 11), eDel("a", 12), eSet("b", "b2", 22), eSet("a", "a2", 13))},
			nil, map[string]int{"a": 0, "b": 0}, "out of revision order in partition 0"},
		{"a value no set wrote", ops, []Watch{stream(append(evs, eSet("a", "zz", 14))...)}, nil, nil, "no set of the key wrote that value"},
		{"an event on a key never written", ops, []Watch{stream(append(evs, eSet("c", "c1", 1))...)}, nil, nil, "no write was ever attempted"},
		{"a failed set shows up", append(ops, failed(ws("a", "x", 8, 9, 0))), []Watch{stream(append(evs, eSet("a", "x", 14))...)},
			nil, nil, "a write that was not applied"},
		{"a set whose condition failed shows up", append(ops, condFailed(ws("a", "x", 8, 9, 13))), []Watch{stream(append(evs, eSet("a", "x", 14))...)},
			nil, nil, "a write that was not applied"},
		{"a delete event no delete explains", append(ops, failed(wd("b", 8, 9, 0))), []Watch{stream(append(evs, eDel("b", 23))...)},
			nil, nil, "not enough deletes with an unknown outcome"},
		{"two delete events, one unknown delete", append(ops, pending(wd("b", 8, 9, 0)), ws("b", "b3", 10, 11, 24)),
			[]Watch{stream(append(evs, eDel("b", 23), eSet("b", "b3", 24), eDel("b", 25))...)}, nil, nil, "not enough deletes with an unknown outcome"},
		{"an unknown delete invoked after a later write was acknowledged", append(ops, ws("b", "b3", 10, 11, 24), pending(wd("b", 12, 13, 0))),
			[]Watch{stream(append(evs, eDel("b", 23), eSet("b", "b3", 24))...)}, nil, nil, "not enough deletes with an unknown outcome"},
		{"a delete of an absent key", append(ops, pending(wd("a", 8, 9, 0))), []Watch{stream(append(evs[:3:3], eDel("a", 13))...)},
			nil, nil, "a delete of an absent key changes nothing"},
		{"an expiry of a key never set with a TTL", ops, []Watch{stream(append(evs, eExp("a", 14))...)}, nil, nil, "no set of the key had a TTL"},
		{"an expiry of a set without a TTL", []Op{withDeadline(ws("a", "a1", 1, 2, 11), 1, 2), ws("a", "a2", 3, 4, 12)},
			[]Watch{stream(eSet("a", "a1", 11), eSet("a", "a2", 12), eExp("a", 13))}, nil, nil, "which had no TTL"},
		{"an expiry before the deadline", []Op{withDeadline(ws("a", "a1", 1, 2, 11), 1, 20)},
			[]Watch{stream(eSet("a", "a1", 11), eExp("a", 12))}, nil, nil, "came 0s before the deadline 0s of #0 client 0 set(a, \"a1\", ttl=1ns)"},
		{"an expiry before the TTL of a set with an unknown outcome", []Op{pending(withDeadline(ws("a", "a1", 1, 2, 0), 20, 0))},
			[]Watch{stream(eSet("a", "a1", 11), eExp("a", 12))}, nil, nil, "before the deadline 0s of #0 client 0 set(a, \"a1\", ttl=20ns) [0s, 0s] unknown"},
		{"revisions against real time", []Op{ws("a", "a1", 1, 2, 15), ws("a", "a2", 3, 4, 14)},
			[]Watch{stream(eSet("a", "a2", 14), eSet("a", "a1", 15))}, nil, nil, "revisions go against real time"},
		{"an unknown set invoked after a later write was acknowledged", []Op{ws("a", "a1", 1, 2, 15), pending(ws("a", "a2", 3, 4, 0))},
			[]Watch{stream(eSet("a", "a2", 14), eSet("a", "a1", 15))}, nil, nil, "revisions go against real time"},
		{"acknowledged before the token, in the stream", ops,
			func() []Watch {
				w := stream(evs...)
				w.TokenCall, w.TokenReturn = 4, 5
				return []Watch{w}
			}(), nil, nil, "before the watch's start token"},
		{"watchers disagree on an unknown set", append(ops, pending(ws("a", "a3", 8, 9, 0))),
			[]Watch{stream(append(evs, eSet("a", "a3", 14))...), stream(evs...)}, nil, nil,
			`disagree on a: its change 4 is set "a3" rev 14 in watcher 0, nothing more`},
		{"the final value is not the last change", ops, []Watch{stream(evs...)}, []Op{fRead("a", "a1", 11)}, nil,
			"the last change of a in the stream is set a = \"a2\" rev 13"},
		{"the final revision is not the last change's", ops, []Watch{stream(evs...)}, []Op{fRead("a", "a2", 14)}, nil, "but the final read"},
		{"the key is gone, the last change a set", ops, []Watch{stream(evs...)}, []Op{fAbsent("b")}, nil, "but the final read"},
		{"the final value, no change of it", append(ops, ws("c", "c1", 1, 2, 1)), []Watch{stream(evs...)}, []Op{fRead("c", "c1", 1)}, nil,
			"no change of it"},
		{"a resync", ops, []Watch{stream(append(evs[:2:2], WatchEvent{Type: EventResync, Partition: 3, Revision: 40, Error: "gone"})...)},
			nil, nil, "resync_required partition 3 (oldest position 40, token"},
		{"a cut", ops, []Watch{stream(append(evs, WatchEvent{Type: EventCut, Reason: "slow_consumer"})...)}, nil, nil, "stream cut: cut (slow_consumer)"},
		{"resumed without a progress event first", ops,
			[]Watch{reconnected(stream(evs...), 3, "t2")}, nil, nil, "began with delete a rev 12"},
		{"resumed elsewhere than asked", ops,
			[]Watch{reconnected(stream(append(evs[:2:2], append([]WatchEvent{eProgress("t1")}, evs[2:]...)...)...), 3, "t2")}, nil, nil,
			"began at another position"},
		{"watchers of different prefixes agree on the keys both watch", ops,
			func() []Watch {
				w := stream(eSet("a", "a1", 11), eDel("a", 12), eSet("a", "a2", 13))
				w.Prefix = "a"
				return []Watch{w, stream(evs...)}
			}(), finals, nil, ""},
		{"a watcher of a narrower prefix first: the others agree on the rest", ops,
			func() []Watch {
				w := stream(eSet("a", "a1", 11), eDel("a", 12), eSet("a", "a2", 13))
				w.Prefix = "a"
				return []Watch{w, stream(evs...), stream(evs...)}
			}(), finals, nil, ""},
		{"watchers of the wider prefix disagree on what the narrower one does not watch", ops,
			func() []Watch {
				w := stream(eSet("a", "a1", 11), eDel("a", 12), eSet("a", "a2", 13))
				w.Prefix = "a"
				return []Watch{w, stream(evs...), stream(evs[:4]...)}
			}(), nil, nil, `watcher 2 (prefix "") and watcher 1 disagree on b: its change 2 is set "b2" rev 22 in watcher 1, nothing more in watcher 2`},
		{"a key outside the prefix", ops,
			func() []Watch {
				w := stream(evs...)
				w.Prefix = "a"
				return []Watch{w}
			}(), nil, nil, "outside the watched prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hist(tt.ops...)
			for i, w := range tt.watches {
				w.ID = i
				w.Events = append([]WatchEvent(nil), w.Events...)
				h.Watches = append(h.Watches, w)
			}
			rep := CheckWatches(h, tt.finals, WatchOptions{Partitions: tt.partitions, Bound: 5})
			if tt.want == "" {
				if !rep.OK() {
					t.Fatalf("problems in a correct run:\n%s", strings.Join(rep.Problems, "\n"))
				}
				if rep.Changes == 0 || rep.Acked == 0 && len(tt.ops) > 1 {
					t.Errorf("nothing checked: %+v", rep)
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

// A watch that needed a resync is reported for it, not for every change
// it could no longer show.
func TestCheckWatchesResyncEndsTheWatch(t *testing.T) {
	h := hist(ws("a", "a1", 1, 2, 11), ws("a", "a2", 3, 4, 12))
	w := stream(eSet("a", "a1", 11), WatchEvent{Type: EventResync, Partition: 0, Revision: 12})
	h.Watches = []Watch{w}
	rep := CheckWatches(h, []Op{fRead("a", "a2", 12)}, WatchOptions{})
	if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "resync") {
		t.Fatalf("want one problem, the resync; got %q", rep.Problems)
	}
}

// A watcher that resumed after a resync, from its last event's id, is
// checked whole.
func TestCheckWatchesResumedAfterResync(t *testing.T) {
	h := hist(ws("a", "a1", 1, 2, 11), ws("a", "a2", 3, 4, 12), ws("a", "a3", 5, 6, 13))
	resync := WatchEvent{Type: EventResync, Partition: 0, Revision: 0}
	complete := reconnected(stream(eSet("a", "a1", 11), resync, eProgress("t1"), eSet("a", "a2", 12), eSet("a", "a3", 13)), 3, "t1")
	h.Watches = []Watch{complete}
	rep := CheckWatches(h, []Op{fRead("a", "a3", 13)}, WatchOptions{})
	if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "resync") {
		t.Fatalf("want one problem, the resync; got %q", rep.Problems)
	}
	gap := reconnected(stream(eSet("a", "a1", 11), resync, eProgress("t1"), eSet("a", "a3", 13)), 3, "t1")
	h.Watches = []Watch{gap}
	rep = CheckWatches(h, []Op{fRead("a", "a3", 13)}, WatchOptions{})
	if len(rep.Problems) != 2 || !strings.Contains(rep.Problems[1], `set(a, "a2") -> rev 12 [0s, 0s] ok is missing`) {
		t.Fatalf("want the resync and the missing set; got %q", rep.Problems)
	}
}

func TestCheckWatchesCounts(t *testing.T) {
	h := hist(ws("a", "a1", 1, 2, 11), pending(ws("a", "a2", 3, 4, 0)), pending(ws("a", "a3", 3, 4, 0)), pending(wd("a", 5, 6, 0)))
	w := reconnected(stream(eSet("a", "a1", 11), eProgress("t1"), eSet("a", "a2", 12), eDel("a", 13)), 2, "t1")
	h.Watches = []Watch{w}
	rep := CheckWatches(h, []Op{fAbsent("a")}, WatchOptions{})
	if !rep.OK() {
		t.Fatalf("problems: %q", rep.Problems)
	}
	if rep.Changes != 3 || rep.Acked != 1 || rep.UnknownSeen != 2 || rep.UnknownUnseen != 1 || rep.Conns != 2 || rep.Resumed != 1 {
		t.Errorf("counts %+v, want 3 changes, 1 acknowledged, 2 unknown seen, 1 not, 2 connections, 1 resumed", rep)
	}
}
