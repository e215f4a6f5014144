package engine

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/apitest"
	"github.com/clusterkit/clusterkit/storage"
)

func write(tb testing.TB, n *testNode, op Op, minCopies int) (Result, error) {
	tb.Helper()
	return n.srv.Write(context.Background(), op, minCopies)
}

// record returns key's stored record on n (failing if absent).
func record(tb testing.TB, n *testNode, p int, key string) storage.Record {
	tb.Helper()
	r, ok := storedRecord(tb, n.db, p, key)
	if !ok {
		tb.Fatalf("%s does not store %q", n.id, key)
	}
	return r
}

// A revision is never handed out twice for a partition, even for a write
// that only a cut-off primary ever stored: the new primary moves its write
// order past anything the old one may have used.
func TestRevisionsNeverReusedAcrossFailover(t *testing.T) {
	const parts = 2
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2", "n3"},
		row:            primaryWithReplicas(1, []string{"n2"}, []string{"n2"}),
		requestTimeout: time.Second,
	})
	c.waitReady(t)
	n1, n2 := c.nodes["n1"], c.nodes["n2"]
	key := keyIn(t, "rev", 0, parts)
	first, err := write(t, n1, Op{Key: key, Value: "v1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.table.freeze("n1")
	c.table.setAlive("n1", false)
	c.table.updateAll(func(r *Route) {
		r.Primary, r.Replicas, r.InSync = "n2", []string{"n1"}, nil
		r.Epoch = 2
	})
	c.waitReady(t)
	// The cut-off primary still takes a write onto its own disk; it is
	// never acknowledged, but a stale read there could show its revision.
	if _, err := write(t, n1, Op{Key: key, Value: "lost"}, 0); err == nil {
		t.Fatal("the cut-off primary acknowledged a write")
	}
	lost := record(t, n1, 0, key)
	if string(lost.Value) != "lost" || lost.Revision <= first.Revision {
		t.Fatalf("n1 stores %+v; the test needs its unacknowledged write", lost)
	}
	// The same key's revision carried over; a compare-and-set against it
	// works on the new primary.
	if r := record(t, n2, 0, key); r.Revision != first.Revision {
		t.Fatalf("new primary holds revision %d for the key, want %d", r.Revision, first.Revision)
	}
	next, err := write(t, n2, Op{Key: key, Value: "v2", HasIfRevision: true, IfRevision: first.Revision}, 0)
	if err != nil || next.Code != "" {
		t.Fatalf("CAS after failover = %+v, %v", next, err)
	}
	if next.Revision <= lost.Revision {
		t.Fatalf("new primary gave revision %d; the old one may have shown %d for another write", next.Revision, lost.Revision)
	}
}

// A write that some replica missed, while the replica cannot be taken out
// of the in-sync set, leaves its outcome unknown; the partition then takes
// no further write (none is applied) until the replica is out.
func TestUnresolvedRoundBlocksWrites(t *testing.T) {
	const parts = 2
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2", "n3"},
		row:         primaryWithReplicas(1, []string{"n2", "n3"}, []string{"n2", "n3"}),
		replTimeout: 300 * time.Millisecond, requestTimeout: 2 * time.Second,
	})
	c.waitReady(t)
	n1 := c.nodes["n1"]
	a, b := keyIn(t, "ua", 0, parts), keyIn(t, "ub", 0, parts)
	if r := kvSet(t, n1, a, "warm"); r.Status != http.StatusOK {
		t.Fatalf("warm-up: %s", r)
	}
	closeN3(c)
	c.ctl.setFailRemove(true)
	apitest.CheckError(t, kvSet(t, n1, a, "unknown"), 503, errcode.OutcomeUnknown)
	seq := meta(t, n1.db, 0).Seq
	apitest.CheckError(t, kvSet(t, n1, b, "refused"), 503, errcode.Unavailable)
	if got := meta(t, n1.db, 0).Seq; got != seq {
		t.Fatalf("a refused write was stored: seq %d → %d", seq, got)
	}
	if _, ok := storedValue(t, n1.db, 0, b); ok {
		t.Fatal("a refused write is on the primary's disk")
	}
	c.ctl.setFailRemove(false)
	if r := kvSet(t, n1, b, "after"); r.Status != http.StatusOK {
		t.Fatalf("write once the replica can be removed: %s", r)
	}
	if got := c.table.route(0).InSync; !slices.Equal(got, []string{"n2"}) {
		t.Fatalf("in-sync set = %v, want [n2]", got)
	}
}

// The copy floor: a write needs that many copies in sync, the primary's
// included, or it is refused and not applied; min_copies raises it.
func TestCopyFloor(t *testing.T) {
	const parts = 2
	tests := []struct {
		name      string
		floor     int
		inSync    []string
		minCopies int
		status    int
		code      string
	}{
		{"floor met by one replica", 2, []string{"n2"}, 0, 200, ""},
		{"lone primary under a floor of two", 2, nil, 0, 503, errcode.NotEnoughReplicas},
		{"floor of one writes alone", 1, nil, 0, 200, ""},
		{"min_copies raises the floor", 1, []string{"n2"}, 3, 503, errcode.NotEnoughReplicas},
		{"min_copies met", 1, []string{"n2", "n3"}, 3, 200, ""},
		{"min_copies over the replication factor", 1, []string{"n2", "n3"}, 4, 400, errcode.BadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t, clusterConfig{
				parts: parts, ids: []string{"n1", "n2", "n3"},
				row: primaryWithReplicas(1, []string{"n2", "n3"}, tt.inSync),
				// Down replicas are not caught up behind the test's back.
				notAlive: slices.DeleteFunc([]string{"n2", "n3"}, func(n string) bool { return slices.Contains(tt.inSync, n) }),
			})
			c.table.mu.Lock()
			c.table.minCopies = tt.floor
			c.table.mu.Unlock()
			c.waitReady(t)
			n1 := c.nodes["n1"]
			key := keyIn(t, "floor", 0, parts)
			before := meta(t, n1.db, 0).Seq
			_, err := write(t, n1, Op{Key: key, Value: "v"}, tt.minCopies)
			r := answer(err, map[string]string{"key": key, "status": "success"})
			if tt.code != "" {
				apitest.CheckError(t, r, tt.status, tt.code)
				if got := meta(t, n1.db, 0).Seq; got != before {
					t.Fatalf("refused write was stored: seq %d → %d", before, got)
				}
				return
			}
			if r.Status != tt.status {
				t.Fatalf("write = %s", r)
			}
		})
	}

	t.Run("a write that ends below the floor is not acknowledged", func(t *testing.T) {
		c := newCluster(t, clusterConfig{
			parts: parts, ids: []string{"n1", "n2"},
			row:         primaryWithReplicas(1, []string{"n2"}, []string{"n2"}),
			replTimeout: 300 * time.Millisecond,
		})
		c.table.mu.Lock()
		c.table.minCopies = 2
		c.table.mu.Unlock()
		c.waitReady(t)
		n2 := c.nodes["n2"]
		_ = n2.ln.Close()
		n2.ln.StopServing()
		n1 := c.nodes["n1"]
		before := meta(t, n1.db, 0).Seq
		_, err := write(t, n1, Op{Key: keyIn(t, "below", 0, parts), Value: "v"}, 0)
		switch errcode.Of(err) {
		case errcode.OutcomeUnknown:
			// It reached the primary's disk, so it is not "not applied" either.
		case errcode.NotEnoughReplicas:
			// The lease renewal noticed n2 first and dropped it from the
			// in-sync set; then the write must have been refused whole.
			if got := meta(t, n1.db, 0).Seq; got != before {
				t.Fatalf("write refused as not_enough_replicas was stored: seq %d → %d", before, got)
			}
		default:
			t.Fatalf("write that reached one copy of two: %v, want outcome_unknown (or not_enough_replicas before it began)", err)
		}
	})
}

// A TTL becomes one deadline, chosen by the primary and stored as it is on
// every copy; a failover does not move it.
func TestDeadlineReplicatedAndKept(t *testing.T) {
	const parts = 2
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2", "n3"},
		row: primaryWithReplicas(1, []string{"n2", "n3"}, []string{"n2", "n3"}),
	})
	c.waitReady(t)
	key := keyIn(t, "ttl", 0, parts)
	res, err := write(t, c.nodes["n1"], Op{Key: key, Value: "v", TTLMillis: 60_000}, 0)
	if err != nil || res.ExpiresAt == 0 {
		t.Fatalf("set with ttl = %+v, %v", res, err)
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		if r := record(t, c.nodes[id], 0, key); r.ExpiresAt != res.ExpiresAt || r.Revision != res.Revision {
			t.Fatalf("%s stores deadline %d revision %d, primary chose %d and %d", id, r.ExpiresAt, r.Revision, res.ExpiresAt, res.Revision)
		}
	}
	time.Sleep(20 * time.Millisecond) // a reset would now show a later deadline
	c.table.updateAll(func(r *Route) {
		r.Primary, r.Replicas, r.InSync = "n2", []string{"n1", "n3"}, []string{"n3"}
		r.Epoch = 2
	})
	c.waitReady(t)
	v, err := c.nodes["n3"].srv.Read(context.Background(), key, false)
	if err != nil || v.ExpiresAt != res.ExpiresAt {
		t.Fatalf("after failover: %+v, %v; want deadline %d", v, err, res.ExpiresAt)
	}
	// keep_ttl on the new primary keeps it too.
	kept, err := write(t, c.nodes["n3"], Op{Key: key, Value: "w", KeepTTL: true}, 0)
	if err != nil || kept.ExpiresAt != res.ExpiresAt {
		t.Fatalf("keep_ttl after failover = %+v, %v", kept, err)
	}
}
