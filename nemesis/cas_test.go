package nemesis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/client"
	"github.com/clusterkit/clusterkit/internal/history"
	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// casCounters is how many counters the CAS load increments: few, so that
// the clients contend and conditions fail often.
const casCounters = 3

// casLoad increments shared counters by read-modify-write: each client
// reads a random counter (value and revision) through a random node, then
// sets it to value+1 with if_revision=revision through another random node;
// on a 409 it just goes on to its next increment, which reads again. A
// value is "count:unique", so that porcupine and people can tell the
// writes apart.
//
// After healing every counter gets a final increment (within
// finalDeadline). Once settled, each counter must count at least every
// acknowledged increment (no lost update) and at most those plus the ones
// with an unknown outcome (none applied twice), and the whole history must
// be linearizable under history.RevisionModel: revisions strictly
// increase, reads show the last write's value and revision, a condition
// fails only if it did not hold and then shows the current revision.
type casLoad struct {
	r    *run
	stop chan struct{}
	wg   sync.WaitGroup

	// send performs one operation and records it: the harness's own
	// HTTP requests through the node given, or, for newClientCASLoad,
	// the Go client package, which picks the node itself.
	send      func(client int, node *tc.Node, req request) history.Op
	useClient bool
	cl        *client.Client // made by start when useClient

	mu      sync.Mutex
	acked   map[string]int // increments acknowledged, per counter
	unknown map[string]int // increments with an unknown outcome
	reads   []history.Op   // the reads after convergence
}

func newCASLoad(r *run) load {
	for i := range casCounters {
		r.keys = append(r.keys, fmt.Sprintf("nemesis-%d-cas%d", r.seed%100000, i))
	}
	l := &casLoad{r: r, acked: map[string]int{}, unknown: map[string]int{}}
	l.send = r.kv.send
	return l
}

// newClientCASLoad is the CAS load through the Go client package (package
// client), as an application would run it: every key to its primary, the
// table refreshed as primaries move, what was not applied retried within
// the operation's deadline. The checks are the same, and they are what
// the client promises under faults: a write it reports as failed was not
// applied, and it never sends a write twice (an increment applied twice
// would show as a count above the acknowledged and unknown increments,
// and as a history porcupine cannot order).
func newClientCASLoad(r *run) load {
	l := newCASLoad(r).(*casLoad)
	l.send, l.useClient = l.viaClient, true
	return l
}

// viaClient performs one operation with the Go client and records it.
func (l *casLoad) viaClient(id int, _ *tc.Node, req request) history.Op {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	op := history.Op{Client: id, Kind: req.kind, Key: req.key, Node: "client"}
	if req.kind == history.Write {
		op.Value = req.value
		if req.ifRevision != nil {
			op.HasIfRevision, op.IfRevision = true, *req.ifRevision
		}
	}
	op.Call = l.r.rec.Now()
	var err error
	switch req.kind {
	case history.Write:
		var res *client.WriteResult
		if res, err = l.cl.Set(ctx, req.key, req.value, &client.SetOptions{IfRevision: req.ifRevision}); err == nil {
			op.Revision = res.Revision
		}
	case history.Read:
		var kv *client.KV
		if kv, err = l.cl.Get(ctx, req.key, nil); err == nil {
			op.Found, op.Value, op.Revision = true, kv.Value, kv.Revision
		}
	default:
		l.r.fail("harness: the client CAS load sends no %v", req.kind)
	}
	op.Return = l.r.rec.Now()
	var ce *client.Error
	errors.As(err, &ce)
	switch {
	case err == nil:
		op.Outcome = history.OK
	case req.kind == history.Read && client.IsNotFound(err):
		op.Outcome = history.OK
	case client.IsConditionFailed(err) && ce != nil:
		op.Outcome, op.CondFailed, op.Revision, op.Found = history.OK, true, ce.CurrentRevision, ce.Exists
	case client.IsOutcomeUnknown(err):
		op.Outcome, op.Err = history.Unknown, err.Error()
	case client.IsUnavailable(err):
		// The client answers unavailable only when no attempt may have
		// been applied; an attempt that may have been ends its retries
		// with outcome_unknown.
		op.Outcome, op.Err = history.Failed, err.Error()
	default:
		op.Outcome, op.Err = history.Unknown, err.Error()
		if ce != nil && ce.Status >= 400 && ce.Status < 500 {
			l.r.fail("harness: unexpected answer to %s: %v", op, err)
		}
	}
	return l.r.rec.Add(op)
}

func (l *casLoad) start(clients int, seed int64) {
	if l.useClient && l.cl == nil {
		addrs := []string{}
		for _, n := range l.r.members() {
			addrs = append(addrs, n.HTTP)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cl, err := client.New(ctx, client.Config{Addrs: addrs, RequestTimeout: opTimeout})
		cancel()
		if err != nil {
			l.r.t.Fatalf("client: %v", err)
		}
		l.cl = cl
		l.r.t.Cleanup(func() { _ = cl.Close() })
	}
	l.stop = make(chan struct{})
	for i := range clients {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(i)))
		l.wg.Go(func() { l.client(rng) })
	}
}

func (l *casLoad) halt() {
	if l.stop != nil {
		close(l.stop)
		l.wg.Wait()
		l.stop = nil
	}
}

func (l *casLoad) client(rng *rand.Rand) {
	id := l.r.rec.NewClient()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		key := l.r.keys[rng.IntN(len(l.r.keys))]
		if op := l.increment(id, l.r.clientTargets(), rng.IntN, key); op.Outcome == history.Unknown {
			// The operation stays pending forever: continue as a new
			// client, as clients are sequential.
			id = l.r.rec.NewClient()
		}
		select {
		case <-l.stop:
			return
		case <-time.After(time.Duration(5+rng.IntN(20)) * time.Millisecond):
		}
	}
}

// counterValue is the count in a value the load wrote.
func counterValue(v string) (int, error) {
	n, _, ok := strings.Cut(v, ":")
	if !ok {
		return 0, fmt.Errorf("value %q is not count:unique", v)
	}
	return strconv.Atoi(n)
}

// increment reads key and sets it to its count plus one if its revision
// is still the one read, through nodes picked with pick, and counts the
// outcome. It returns the set, or the read if that did not succeed.
func (l *casLoad) increment(client int, nodes []*tc.Node, pick func(int) int, key string) history.Op {
	rd := l.send(client, nodes[pick(len(nodes))], request{kind: history.Read, key: key})
	if rd.Outcome != history.OK {
		return rd
	}
	count, rev := 0, uint64(0) // absent: if_revision=0, "must not exist"
	if rd.Found {
		n, err := counterValue(rd.Value)
		if err != nil {
			l.r.fail("cas: %s: %v", rd, err)
			return rd
		}
		count, rev = n, rd.Revision
	}
	value := fmt.Sprintf("%d:%d", count+1, l.r.values.Add(1))
	w := l.send(client, nodes[pick(len(nodes))], request{kind: history.Write, key: key, value: value, ifRevision: &rev})
	l.mu.Lock()
	switch {
	case w.Outcome == history.OK && !w.CondFailed:
		l.acked[key]++
	case w.Outcome == history.Unknown:
		l.unknown[key]++
	}
	l.mu.Unlock()
	return w
}

// final increments every counter once more within finalDeadline of the
// last healing action: the cluster must take conditional writes again.
func (l *casLoad) final(deadline int64) {
	r := l.r
	members := r.members()
	r.eachKeyUntil("cas: final increment", deadline, func(client int, key string) (history.Op, bool) {
		// The global source: final operations run concurrently.
		op := l.increment(client, members, rand.IntN, key)
		return op, op.Kind == history.Write && op.Outcome == history.OK && !op.CondFailed
	})
}

// settled reads every counter and compares it with the increments.
func (l *casLoad) settled() {
	r := l.r
	deadline := r.rec.Now() + int64(finalDeadline)
	var wg sync.WaitGroup
	for _, key := range r.keys {
		wg.Go(func() {
			op, err := r.finalOp(history.Read, key, deadline)
			if err != nil {
				r.fail("cas: read of %s after convergence failed: %v", key, err)
				return
			}
			l.mu.Lock()
			l.reads = append(l.reads, op)
			l.mu.Unlock()
			count := 0
			if op.Found {
				if count, err = counterValue(op.Value); err != nil {
					r.fail("cas: %s: %v", op, err)
					return
				}
			}
			l.mu.Lock()
			acked, unknown := l.acked[key], l.unknown[key]
			l.mu.Unlock()
			switch {
			case count < acked:
				r.fail("cas: lost update: %s counts %d, but %d increments were acknowledged (and %d had an unknown outcome); final read %s",
					key, count, acked, unknown, op)
			case count > acked+unknown:
				r.fail("cas: increment applied twice: %s counts %d, but only %d increments were acknowledged and %d had an unknown outcome; final read %s",
					key, count, acked, unknown, op)
			default:
				r.logf("cas: %s counts %d: %d acknowledged increments, and %d of %d with an unknown outcome", key, count, acked, count-acked, unknown)
			}
		})
	}
	wg.Wait()
}

func (l *casLoad) lastReads() []history.Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.reads)
}

func (l *casLoad) check(h history.History) []history.Report {
	return []history.Report{l.r.checkRevisions("cas", h)}
}
