package engine

// Tests for the node-lifecycle parts of the data plane: the table-version
// guard after a restart, releasing copies a node no longer owns, and the
// per-partition digests used to compare copies.

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/apitest"
	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// TestTableGuard: after a restart Raft may first restore a table older than
// one this node already acted on; until the table catches up the node must
// serve nothing, and the version it acts on is recorded before use.
func TestTableGuard(t *testing.T) {
	const recorded = 50
	c := newCluster(t, clusterConfig{
		parts: 2, ids: []string{"n1"},
		row:            func(int) Route { return Route{Primary: "n1", Epoch: 1} },
		requestTimeout: 300 * time.Millisecond,
		prepare: func(_ string, db *storage.DB) {
			if err := db.SetTableVersion(recorded); err != nil {
				t.Fatal(err)
			}
		},
	})
	c.waitReady(t)
	n1 := c.nodes["n1"]
	steps := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"refuses writes and reads while the table is older", func(t *testing.T) {
			apitest.CheckError(t, kvSet(t, n1, "k", "v"), http.StatusServiceUnavailable, errcode.Unavailable)
			apitest.CheckError(t, kvGet(t, n1, "k", ""), http.StatusServiceUnavailable, errcode.Unavailable)
			for p := range 2 {
				if m := meta(t, n1.db, p); m.Seq != 0 {
					t.Errorf("partition %d applied a write under an old table: %+v", p, m)
				}
			}
		}},
		{"serves once the table catches up", func(t *testing.T) {
			c.table.bumpVersion(recorded + 10)
			if r := kvSet(t, n1, "k", "v"); r.Status != http.StatusOK {
				t.Fatalf("set: %s", r)
			}
			apitest.MustValue(t, kvGet(t, n1, "k", ""), "k", "v")
			v, err := n1.db.TableVersion()
			if err != nil || v < recorded+10 {
				t.Errorf("recorded table version = %d, %v; want >= %d", v, err, recorded+10)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.check) {
			t.FailNow()
		}
	}
}

// TestReleaseDropsUnownedCopy: once the table no longer lists a node as an
// owner of a partition, its sync loop deletes its copy; the owners keep
// serving.
func TestReleaseDropsUnownedCopy(t *testing.T) {
	const parts = 2
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2"},
		row: primaryWithReplicas(1, []string{"n2"}, []string{"n2"}),
	})
	c.waitReady(t)
	n1, n2 := c.nodes["n1"], c.nodes["n2"]
	for i := range 10 {
		if r := kvSet(t, n1, fmt.Sprintf("k%d", i), "v"); r.Status != http.StatusOK {
			t.Fatalf("set: %s", r)
		}
	}
	if n2.srv.LocalKeys() != 10 {
		t.Fatalf("replica holds %d keys before the move, want 10", n2.srv.LocalKeys())
	}
	c.table.updateAll(func(r *Route) { r.Replicas, r.InSync = nil, nil })
	waitFor(t, 10*time.Second, "n2 dropped both partitions", func() bool {
		for p := range parts {
			if m := meta(t, n2.db, p); m != (storage.Meta{}) {
				return false
			}
		}
		return true
	})
	for p := range parts {
		if keys, err := n2.db.Keys(p, 0); err != nil || len(keys) != 0 {
			t.Errorf("partition %d still has keys %q on n2 (%v)", p, keys, err)
		}
	}
	for i := range 10 {
		apitest.MustValue(t, kvGet(t, n2, fmt.Sprintf("k%d", i), ""), fmt.Sprintf("k%d", i), "v")
	}
	if n1.srv.LocalKeys() != 10 {
		t.Errorf("the primary holds %d keys, want 10", n1.srv.LocalKeys())
	}
}

// TestDigest: the digests of the primary and an in-sync replica are equal
// after replicated writes, and each node reports its role.
func TestDigest(t *testing.T) {
	const parts = 2
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2", "n3", "n4"},
		row: primaryWithReplicas(1, []string{"n2", "n3"}, []string{"n2"}),
		// n3 stays a replica that is catching up.
		notAlive: []string{"n3"},
	})
	c.waitReady(t)
	for i := range 20 {
		if r := kvSet(t, c.nodes["n4"], fmt.Sprintf("d%d", i), fmt.Sprint(i)); r.Status != http.StatusOK {
			t.Fatalf("set: %s", r)
		}
	}
	// Asked over the internal port, as the fault-injection suite does.
	asker := peer.NewClient(peer.Config{Self: "test", ClusterName: "test"}, peer.ByAddress)
	defer asker.Close()
	digests := map[string][]peer.Digest{}
	for id, n := range c.nodes {
		ds, err := asker.Digest(context.Background(), n.addr())
		if err != nil || len(ds) != parts {
			t.Fatalf("digest on %s: %+v (%v)", id, ds, err)
		}
		digests[id] = ds
	}
	tests := []struct {
		node string
		role string
	}{
		{"n1", "primary"}, {"n2", "in-sync"}, {"n3", "catching-up"}, {"n4", "none"},
	}
	for _, tt := range tests {
		t.Run(tt.node, func(t *testing.T) {
			for p, d := range digests[tt.node] {
				if d.Partition != p || d.Role != tt.role {
					t.Errorf("partition %d: got partition %d role %q, want role %q", p, d.Partition, d.Role, tt.role)
				}
				primary := digests["n1"][p]
				same := d.SHA256 == primary.SHA256 && d.Seq == primary.Seq && d.Keys == primary.Keys && d.Epoch == primary.Epoch
				if wantSame := tt.role == "primary" || tt.role == "in-sync"; same != wantSame {
					t.Errorf("partition %d: digest %+v vs primary %+v; want equal = %v", p, d, primary, wantSame)
				}
			}
		})
	}
}

// TestNewDataDirectoryIsNotTrusted: a node that comes back under its old
// ID with an emptied data directory may still be listed as a partition's
// primary, with in-sync replicas. Reconciling as that primary would
// install its empty copy on them. Until the table records the new store,
// it must act on nothing; once it does (and, as the FSM does then, the
// node is out of the in-sync sets), it is caught up like any replica.
func TestNewDataDirectoryIsNotTrusted(t *testing.T) {
	const key, value = "k", "acknowledged"
	c := newCluster(t, clusterConfig{
		parts: 1, ids: []string{"n1", "n2", "n3"},
		row: func(int) Route {
			return Route{Primary: "n1", Replicas: []string{"n2", "n3"}, InSync: []string{"n2", "n3"}, Epoch: 2}
		},
		requestTimeout: 300 * time.Millisecond,
		stores:         map[string]string{"n1": "the-store-that-was-lost"},
		prepare: func(id string, db *storage.DB) {
			if id == "n1" {
				return // the emptied directory
			}
			if err := db.Apply(0, 2, 1, storage.Op{Key: []byte(key), Value: []byte(value)}); err != nil {
				t.Fatal(err)
			}
		},
	})
	n1 := c.nodes["n1"]
	time.Sleep(time.Second) // several sync passes
	for _, id := range []string{"n2", "n3"} {
		if d := dumpPartition(t, c.nodes[id].db, 0); d.Pairs[key] != value {
			t.Fatalf("%s lost the acknowledged write to the emptied primary's copy: %+v", id, d)
		}
	}
	if err := n1.srv.PrimaryReady(0); errcode.Of(err) != errcode.NotReady {
		t.Fatalf("PrimaryReady on the emptied primary = %v, want not_ready", err)
	}
	if r := kvGet(t, n1, key, ""); r.Status == http.StatusOK {
		t.Fatalf("the emptied primary served a read: %s", r)
	}

	// The leader records the new store: n2 takes over, n1 is an
	// out-of-sync replica.
	c.table.setStore("n1", n1.db.ID())
	c.table.update(func(rows []Route) {
		rows[0] = Route{Partition: 0, Primary: "n2", Replicas: []string{"n1", "n3"}, InSync: []string{"n3"}, Epoch: 3}
	})
	waitFor(t, 10*time.Second, "n1 caught up and in sync", func() bool {
		return c.table.route(0).IsInSync("n1") && dumpPartition(t, n1.db, 0).Pairs[key] == value
	})
	apitest.MustValue(t, kvGet(t, n1, key, ""), key, value)
}

// TestLostInSyncAddition: the primary copies a partition to a replica and
// adds it to the in-sync set, the addition is committed but its answer is
// lost, and the primary's own table does not show it yet. The table then
// counts the replica in sync: a write acknowledged without it could be
// lost when the replica is promoted. The partition must take no write
// (and serve no linearizable read) until the addition is settled, and
// every write acknowledged after that must be on the replica.
func TestLostInSyncAddition(t *testing.T) {
	c := newCluster(t, clusterConfig{
		parts: 1, ids: []string{"n1", "n2", "n3"},
		row: func(int) Route {
			return Route{Primary: "n1", Replicas: []string{"n2", "n3"}, InSync: []string{"n2"}, Epoch: 1}
		},
		notAlive:       []string{"n3"},
		requestTimeout: 500 * time.Millisecond,
	})
	c.waitReady(t)
	n1, n3 := c.nodes["n1"], c.nodes["n3"]
	if r := kvSet(t, n1, "before", "v"); r.Status != http.StatusOK {
		t.Fatalf("set: %s", r)
	}
	// n1 stops seeing the table change (it lags), and the answer to its
	// next addition is lost.
	c.table.freeze("n1")
	c.ctl.mu.Lock()
	c.ctl.lostAdds = 1
	c.ctl.applied = func() { c.table.unfreeze("n1") }
	c.ctl.mu.Unlock()
	c.table.setAlive("n3", true)
	waitFor(t, 10*time.Second, "n3 added to the in-sync set", func() bool { return c.table.route(0).IsInSync("n3") })

	if r := kvSet(t, n1, "after", "acknowledged"); r.Status == http.StatusOK {
		if d := dumpPartition(t, n3.db, 0); d.Pairs["after"] != "acknowledged" {
			t.Fatalf("a write was acknowledged without n3, which the table counts in sync: n3 holds %v", d.Pairs)
		}
	}
	waitFor(t, 10*time.Second, "the partition taking writes again", func() bool {
		return kvSet(t, n1, "later", "acknowledged").Status == http.StatusOK
	})
	if d := dumpPartition(t, n3.db, 0); d.Pairs["later"] != "acknowledged" || d.Pairs["before"] != "v" {
		t.Fatalf("n3, in sync, lacks acknowledged writes: %v", d.Pairs)
	}
	apitest.MustValue(t, kvGet(t, n1, "later", ""), "later", "acknowledged")
}
