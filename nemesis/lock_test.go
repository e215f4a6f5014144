package nemesis

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/internal/history"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// lockKeys is how many locks the lock load's clients contend for.
const lockKeys = 2

// lockBreakAfter is how long a client waits on a lock whose revision has
// not moved before it breaks it: a holder whose acquire had an unknown
// outcome, or whose release failed, never lets go.
const lockBreakAfter = 500 * time.Millisecond

// lockLoad takes and gives back locks with conditional writes, as
// applications do: a client acquires a lock with a set if_revision=0 (the
// key must not exist), holds it a few milliseconds, and releases it with a
// delete if_revision=R, R the revision its acquire was acknowledged with,
// so that it can never delete a lock someone else took since. A client
// that finds the lock held by the same revision for lockBreakAfter breaks
// it, with a delete conditioned on that revision.
//
// After healing every lock must be taken once more within finalDeadline
// (breaking whatever holds it). The checks: the history is linearizable
// under history.RevisionModel (which covers conditional deletes, and a
// delete of an absent key), and no lock was granted twice: between two
// acknowledged acquires of a key, a delete conditioned on the first one's
// revision must have deleted it (or may have: its outcome unknown).
type lockLoad struct {
	r    *run
	stop chan struct{}
	wg   sync.WaitGroup

	mu                        sync.Mutex
	acquired, released, broke int
	reads                     []history.Op // the reads after convergence
}

func newLockLoad(r *run) load {
	for i := range lockKeys {
		r.keys = append(r.keys, fmt.Sprintf("nemesis-%d-lock%d", r.seed%100000, i))
	}
	return &lockLoad{r: r}
}

func (l *lockLoad) start(clients int, seed int64) {
	l.stop = make(chan struct{})
	for i := range clients {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
		l.wg.Go(func() { l.client(rng) })
	}
}

func (l *lockLoad) halt() {
	if l.stop != nil {
		close(l.stop)
		l.wg.Wait()
		l.stop = nil
	}
}

// held is what a client last saw of a lock held by someone else.
type held struct {
	rev   uint64
	since time.Time
}

func (l *lockLoad) client(rng *rand.Rand) {
	id := l.r.rec.NewClient()
	seen := map[string]held{}
	pause := func(lo, hi int) bool {
		select {
		case <-l.stop:
			return false
		case <-time.After(time.Duration(lo+rng.IntN(hi-lo)) * time.Millisecond):
			return true
		}
	}
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		nodes := l.r.clientTargets()
		pick := func() *tc.Node { return nodes[rng.IntN(len(nodes))] }
		key := l.r.keys[rng.IntN(len(l.r.keys))]
		op, took := l.acquire(id, pick(), key)
		switch {
		case op.Outcome == history.Unknown:
			id = l.r.rec.NewClient() // the acquire stays pending: a ghost holder
		case took:
			delete(seen, key)
			if !pause(2, 20) {
				return
			}
			if rel := l.release(id, pick(), key, op.Revision, false); rel.Outcome == history.Unknown {
				id = l.r.rec.NewClient()
			}
		case op.CondFailed && op.Found:
			h, ok := seen[key]
			switch {
			case !ok || h.rev != op.Revision:
				seen[key] = held{rev: op.Revision, since: time.Now()}
			case time.Since(h.since) > lockBreakAfter:
				delete(seen, key)
				if br := l.release(id, pick(), key, op.Revision, true); br.Outcome == history.Unknown {
					id = l.r.rec.NewClient()
				}
			}
		}
		if !pause(5, 25) {
			return
		}
	}
}

// acquire tries to take the lock key; took reports whether it did with a
// known revision (an acknowledged acquire whose answer was cut short
// cannot be released, and is broken by the others in time).
func (l *lockLoad) acquire(client int, node *tc.Node, key string) (op history.Op, took bool) {
	absent := uint64(0)
	op = l.r.kv.send(client, node, request{kind: history.Write, key: key, value: fmt.Sprintf("holder-%d", l.r.values.Add(1)), ifRevision: &absent})
	took = op.Outcome == history.OK && !op.CondFailed && !op.Partial
	if took {
		l.mu.Lock()
		l.acquired++
		l.mu.Unlock()
	}
	return op, took
}

// release deletes the lock key if it is still held at rev: the holder's
// release, or another client breaking a stuck lock.
func (l *lockLoad) release(client int, node *tc.Node, key string, rev uint64, breaking bool) history.Op {
	op := l.r.kv.send(client, node, request{kind: history.Delete, key: key, ifRevision: &rev})
	if op.Outcome == history.OK && !op.CondFailed && op.Found {
		l.mu.Lock()
		if breaking {
			l.broke++
		} else {
			l.released++
		}
		l.mu.Unlock()
	}
	return op
}

// final takes every lock once more within finalDeadline of the last
// healing action, breaking whatever holds it: the cluster must take
// conditional writes and deletes again.
func (l *lockLoad) final(deadline int64) {
	r := l.r
	members := r.members()
	r.eachKeyUntil("lock: final acquire", deadline, func(client int, key string) (history.Op, bool) {
		// The global source: final operations run concurrently.
		node := members[rand.IntN(len(members))]
		op, took := l.acquire(client, node, key)
		switch {
		case took:
			return op, true
		case op.CondFailed && op.Found:
			if br := l.release(client, node, key, op.Revision, true); br.Outcome != history.OK {
				return br, false
			}
		}
		return op, false
	})
}

// settled reads every lock, for the watchers' final state.
func (l *lockLoad) settled() {
	r := l.r
	deadline := r.rec.Now() + int64(finalDeadline)
	for _, key := range r.keys {
		op, err := r.finalOp(history.Read, key, deadline)
		if err != nil {
			r.fail("lock: read of %s after convergence failed: %v", key, err)
			continue
		}
		l.mu.Lock()
		l.reads = append(l.reads, op)
		l.mu.Unlock()
	}
	l.mu.Lock()
	r.logf("lock: %d acquires acknowledged, %d released by their holders, %d stuck locks broken", l.acquired, l.released, l.broke)
	l.mu.Unlock()
}

func (l *lockLoad) lastReads() []history.Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.reads)
}

func (l *lockLoad) check(h history.History) []history.Report {
	rep := l.r.checkRevisions("lock", h)
	for _, p := range grantedTwice(h) {
		l.r.fail("lock: %s", p)
	}
	return []history.Report{rep}
}

// grantedTwice lists every acknowledged acquire of a lock (a set with
// if_revision=0) that followed another one with no delete of the earlier
// one's revision that deleted it, or may have.
func grantedTwice(h history.History) []string {
	var problems []string
	for _, key := range h.Keys() {
		var acquires []history.Op
		freed := map[uint64]bool{} // revisions a conditional delete deleted, or may have
		for _, o := range h.ByKey(key) {
			switch {
			case o.Kind == history.Write && o.HasIfRevision && o.IfRevision == 0 && o.Outcome == history.OK && !o.CondFailed && !o.Partial:
				acquires = append(acquires, o)
			case o.Kind == history.Delete && o.HasIfRevision && !o.CondFailed &&
				(o.Outcome == history.Unknown || (o.Outcome == history.OK && (o.Found || o.Partial))):
				freed[o.IfRevision] = true
			}
		}
		slices.SortFunc(acquires, func(a, b history.Op) int { return cmp.Compare(a.Revision, b.Revision) })
		for i := 1; i < len(acquires); i++ {
			prev := acquires[i-1]
			if !freed[prev.Revision] {
				problems = append(problems, fmt.Sprintf("key %q granted twice: %s took it at revision %d, and %s took it again at revision %d with no delete of revision %d in between",
					key, prev, prev.Revision, acquires[i], acquires[i].Revision, prev.Revision))
			}
		}
	}
	return problems
}

// TestGrantedTwice checks the lock checker on small histories.
func TestGrantedTwice(t *testing.T) {
	acq := func(rev uint64) history.Op {
		return history.Op{Kind: history.Write, Key: "l", Value: fmt.Sprint("h", rev), HasIfRevision: true, Outcome: history.OK, Revision: rev}
	}
	del := func(rev uint64, outcome history.Outcome, found bool) history.Op {
		return history.Op{Kind: history.Delete, Key: "l", HasIfRevision: true, IfRevision: rev, Outcome: outcome, Found: found}
	}
	refused := acq(9)
	refused.CondFailed = true
	tests := []struct {
		name string
		ops  []history.Op
		want int
	}{
		{"released in between", []history.Op{acq(1), del(1, history.OK, true), acq(3)}, 0},
		{"release of unknown outcome", []history.Op{acq(1), del(1, history.Unknown, false), acq(3)}, 0},
		{"never released", []history.Op{acq(1), acq(3)}, 1},
		{"the release deleted nothing", []history.Op{acq(1), del(1, history.OK, false), acq(3)}, 1},
		{"the release failed", []history.Op{acq(1), del(1, history.Failed, false), acq(3)}, 1},
		{"another revision released", []history.Op{acq(1), del(2, history.OK, true), acq(3)}, 1},
		{"a refused acquire is no grant", []history.Op{acq(1), refused}, 0},
		{"out of order in the history", []history.Op{acq(3), del(1, history.OK, true), acq(1), acq(5)}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := grantedTwice(history.History{Ops: tt.ops}); len(got) != tt.want {
				t.Errorf("grantedTwice = %q, want %d problems", got, tt.want)
			}
		})
	}
}
