package nemesis

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/internal/history"
)

// ttlBound is how far a read may be off a deadline: every node runs on
// this machine, so their clocks are the recorder's; this covers clock
// reading granularity (deadlines are whole milliseconds) and scheduling.
const ttlBound = 50 * time.Millisecond

// TTLs of the TTL load's sets (short, so that many run out during a run)
// and of its final sets.
const (
	ttlMin, ttlMax = 2 * time.Second, 4 * time.Second
	ttlFinal       = time.Second // the least the server takes
)

// ttlLoad sets keys with short TTLs and reads them all the time. One
// writer per key sets it to a unique value with a TTL of 2-4 s, then waits
// 0.5-1.5 times that TTL before setting it again, so that a key is about
// as often read after it ran out as replaced while live. The other
// clients read random keys through random nodes, half of the reads stale.
//
// After healing every key gets a final set (within finalDeadline); once
// settled and every deadline is past, every key is read through every
// member with both consistencies. history.CheckTTL then checks every
// read: none returns a value invoked after its deadline (plus ttlBound,
// either consistency), a linearizable one made after an acknowledged set
// and done before its deadline (less ttlBound) returns it, one made after
// the deadline finds the key absent, unless another write explains what it
// saw; and every answer agrees on a value's deadline. A 503 constrains
// nothing (the read is left out); a 404 before the deadline is a
// violation.
type ttlLoad struct {
	r    *run
	stop chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	finals []history.Op // the final sets
	reads  []history.Op // the linearizable reads after the last deadline
}

func newTTLLoad(r *run) load {
	for i := range r.p.keys {
		r.keys = append(r.keys, fmt.Sprintf("nemesis-%d-ttl%d", r.seed%100000, i))
	}
	return &ttlLoad{r: r}
}

func (l *ttlLoad) start(clients int, seed int64) {
	l.stop = make(chan struct{})
	for i := range clients {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
		l.wg.Go(func() { l.reader(rng) })
	}
	for i, key := range l.r.keys {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(clients+i)))
		l.wg.Go(func() { l.writer(rng, key) })
	}
}

func (l *ttlLoad) halt() {
	if l.stop != nil {
		close(l.stop)
		l.wg.Wait()
		l.stop = nil
	}
}

func (l *ttlLoad) value() string { return fmt.Sprintf("t%d", l.r.values.Add(1)) }

func (l *ttlLoad) writer(rng *rand.Rand, key string) {
	id := l.r.rec.NewClient()
	for {
		nodes := l.r.clientTargets()
		ttl := ttlMin + time.Duration(rng.Int64N(int64(ttlMax-ttlMin)/int64(time.Millisecond)+1))*time.Millisecond
		op := l.r.kv.send(id, nodes[rng.IntN(len(nodes))], request{kind: history.Write, key: key, value: l.value(), ttl: ttl})
		wait := 100 * time.Millisecond // retry soon after a failure
		switch op.Outcome {
		case history.OK:
			wait = time.Duration(float64(ttl) * (0.5 + rng.Float64()))
		case history.Unknown:
			id = l.r.rec.NewClient()
		}
		select {
		case <-l.stop:
			return
		case <-time.After(wait):
		}
	}
}

func (l *ttlLoad) reader(rng *rand.Rand) {
	id := l.r.rec.NewClient()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		nodes := l.r.clientTargets()
		key := l.r.keys[rng.IntN(len(l.r.keys))]
		op := l.r.kv.send(id, nodes[rng.IntN(len(nodes))], request{kind: history.Read, key: key, stale: rng.IntN(2) == 0})
		if op.Outcome == history.Unknown {
			id = l.r.rec.NewClient()
		}
		select {
		case <-l.stop:
			return
		case <-time.After(time.Duration(5+rng.IntN(20)) * time.Millisecond):
		}
	}
}

// final sets every key once more, with a short TTL, within finalDeadline
// of the last healing action.
func (l *ttlLoad) final(deadline int64) {
	r := l.r
	members := r.members()
	r.eachKeyUntil("ttl: final set", deadline, func(client int, key string) (history.Op, bool) {
		op := r.kv.send(client, members[rand.IntN(len(members))], request{kind: history.Write, key: key, value: l.value(), ttl: ttlFinal})
		if op.Outcome != history.OK {
			return op, false
		}
		l.mu.Lock()
		l.finals = append(l.finals, op)
		l.mu.Unlock()
		return op, true
	})
}

// settled waits until the final sets, the last writes to every key, have
// run out, then reads every key through every member with both
// consistencies: it should be gone everywhere (these reads are checked
// with the rest).
func (l *ttlLoad) settled() {
	r := l.r
	var last int64
	l.mu.Lock()
	for _, o := range l.finals {
		last = max(last, o.Deadline)
	}
	l.mu.Unlock()
	if wait := time.Duration(last-r.rec.Now()) + 2*ttlBound; wait > 0 {
		r.logf("ttl: waiting %s for the final sets' deadlines", wait.Round(time.Millisecond))
		time.Sleep(min(wait, ttlFinal+time.Second))
	}
	members := r.members()
	var mu sync.Mutex
	absent, total := 0, 0
	var wg sync.WaitGroup
	for _, key := range r.keys {
		for _, n := range members {
			for _, stale := range []bool{false, true} {
				wg.Go(func() {
					client := r.rec.NewClient()
					var op history.Op
					for range 5 {
						if op = r.kv.send(client, n, request{kind: history.Read, key: key, stale: stale}); op.Outcome == history.OK {
							break
						}
						client = r.rec.NewClient()
						time.Sleep(200 * time.Millisecond)
					}
					mu.Lock()
					defer mu.Unlock()
					if op.Outcome == history.OK && !stale {
						l.reads = append(l.reads, op)
					}
					total++
					switch {
					case op.Outcome != history.OK:
						r.fail("ttl: read of %s through %s after convergence failed: %s", key, n.ID, op)
					case !op.Found:
						absent++
					}
				})
			}
		}
	}
	wg.Wait()
	r.logf("ttl: after the last deadline, %d of %d reads (every key, through every member, both consistencies) found the key gone", absent, total)
}

func (l *ttlLoad) lastReads() []history.Op { return l.reads }

// maxProblems is how many TTL violations are reported one by one.
const maxProblems = 20

func (l *ttlLoad) check(h history.History) []history.Report {
	r := l.r
	rep := history.CheckTTL(h, ttlBound)
	for i, p := range rep.Problems {
		if i == maxProblems {
			r.fail("ttl: ... and %d more TTL violations (all in the saved history)", len(rep.Problems)-maxProblems)
			break
		}
		r.fail("ttl: %s", p)
	}
	if rep.OK() {
		r.logf("ttl: every read agrees with the deadlines (bound %s): %d linearizable reads had to see a live value, %d to find an expired one",
			ttlBound, rep.Live, rep.Expired)
	}
	return nil
}
