package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// startCluster starts three clusterkit processes and waits until every
// partition has three in-sync copies.
func startCluster(t *testing.T, env ...string) *tc.Cluster {
	t.Helper()
	c := tc.New(t, binary, 3, tc.Options{Env: env})
	c.Start()
	c.WaitHealthy(40*time.Second, 3, 3)
	// The leader spreads the primaries after the nodes join: wait until
	// each node leads its share, so the table stays still during a test.
	tc.Eventually(t, 30*time.Second, "primaries spread over the nodes", func() error {
		r, err := tc.Get(c.Nodes[0].HTTP, "/partitions/stats")
		if err != nil {
			return err
		}
		var out struct {
			Total   int            `json:"total_partitions"`
			PerNode map[string]int `json:"partitions_per_node"`
		}
		if err := r.JSON(&out); err != nil {
			return err
		}
		for _, n := range c.Nodes {
			if out.PerNode[n.ID] == 0 {
				return fmt.Errorf("primaries per node: %v", out.PerNode)
			}
		}
		return nil
	})
	c.WaitHealthy(40*time.Second, 3, 3)
	var last uint64
	tc.Eventually(t, 20*time.Second, "the partition table still for 300ms", func() error {
		r, err := tc.Get(c.Nodes[0].HTTP, "/partitions")
		if err != nil {
			return err
		}
		var out struct {
			Version uint64 `json:"version"`
		}
		if err := r.JSON(&out); err != nil {
			return err
		}
		if out.Version != last {
			last = out.Version
			time.Sleep(300 * time.Millisecond)
			return fmt.Errorf("table version %d", out.Version)
		}
		return nil
	})
	return c
}

func newClient(t *testing.T, c *tc.Cluster, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg.Addrs = []string{c.Nodes[0].HTTP, c.Nodes[1].HTTP}
	cl, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// kvRequests is every running node's count of KV requests served (from
// its management API, which the count does not include).
func kvRequests(t *testing.T, c *tc.Cluster) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, n := range c.Nodes {
		if !n.Running() || n.Paused() {
			continue
		}
		r, err := tc.Get(n.HTTP, "/metrics", "Accept", "application/json")
		if err != nil || r.Status != http.StatusOK {
			t.Fatalf("%s /metrics: %v %d", n.ID, err, r.Status)
		}
		v, _ := r.Map()["request_count"].(float64)
		out[n.ID] = int(v)
	}
	return out
}

func delta(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for id, v := range after {
		out[id] = v - before[id]
	}
	return out
}

// primary is the node id the client routes key to.
func (c *Client) primary(key string) string {
	t := c.table.Load()
	if r := t.routes[t.partitionOf(key)]; r.primary != nil {
		return r.primary.id
	}
	return ""
}

// keyOn finds a key whose primary is node, by the client's table.
func keyOn(t *testing.T, cl *Client, node, prefix string) string {
	t.Helper()
	for i := range 10000 {
		k := fmt.Sprintf("%s%d", prefix, i)
		if cl.primary(k) == node {
			return k
		}
	}
	t.Fatalf("no key is on %s", node)
	return ""
}

func nodeByID(c *tc.Cluster, id string) *tc.Node {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// TestCluster runs the non-destructive checks on one cluster, then pauses a
// primary to check that a write whose answer is lost is not sent again.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	cl := newClient(t, c, Config{})
	ctx := context.Background()

	t.Run("routing", func(t *testing.T) {
		for _, n := range c.Nodes {
			key := keyOn(t, cl, n.ID, "route:")
			before := kvRequests(t, c)
			for i := range 5 {
				if _, err := cl.Set(ctx, key, fmt.Sprint(i), nil); err != nil {
					t.Fatal(err)
				}
				if _, err := cl.Get(ctx, key, nil); err != nil {
					t.Fatal(err)
				}
			}
			d := delta(before, kvRequests(t, c))
			for id, got := range d {
				want := 0
				if id == n.ID {
					want = 10
				}
				if got != want {
					t.Errorf("key %s (primary %s): %s served %d KV requests, want %d (all: %v)", key, n.ID, id, got, want, d)
				}
			}
		}
	})

	t.Run("round robin", func(t *testing.T) {
		rr := newClient(t, c, Config{Routing: RoundRobin})
		before := kvRequests(t, c)
		for range 30 {
			if _, err := rr.Get(ctx, "rr:absent", nil); !IsNotFound(err) {
				t.Fatalf("get: %v, want key_not_found", err)
			}
		}
		d := delta(before, kvRequests(t, c))
		for id, got := range d {
			if got < 5 {
				t.Errorf("%s served %d of 30 round-robin requests (all: %v)", id, got, d)
			}
		}
	})

	t.Run("semantics", func(t *testing.T) { testSemantics(t, cl) })

	t.Run("management", func(t *testing.T) {
		info, err := cl.Cluster(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Members) != 3 || len(info.Partitions) != info.PartitionCount || info.PartitionCount == 0 {
			t.Errorf("cluster: %d members, %d of %d partitions", len(info.Members), len(info.Partitions), info.PartitionCount)
		}
		lead, err := cl.Leader(ctx)
		if err != nil || lead.ID == "" {
			t.Errorf("leader: %+v %v", lead, err)
		}
		h, err := cl.Health(ctx, "node-2")
		if err != nil || h["node_id"] != "node-2" {
			t.Errorf("health of node-2: %v %v", h, err)
		}
		if h, err := cl.Health(ctx, c.Nodes[2].HTTP); err != nil || h["node_id"] != "node-3" {
			t.Errorf("health of %s: %v %v", c.Nodes[2].HTTP, h, err)
		}
		parts, err := cl.Partitions(ctx)
		if err != nil || len(parts) != info.PartitionCount || parts[0].Primary == "" {
			t.Errorf("partitions: %v %v", parts, err)
		}
		on, err := cl.KVAuth(ctx)
		if err != nil || on {
			t.Errorf("kv-auth: %v %v, want off", on, err)
		}
		st, err := cl.Stats(ctx, "node-1")
		if err != nil || st["partitions"] == nil {
			t.Errorf("stats: %v %v", st, err)
		}
	})

	// Last: it stops a node for a moment.
	t.Run("no resend of a lost write", func(t *testing.T) { testOutcomeUnknown(t, c, cl) })
}

func testSemantics(t *testing.T, cl *Client) {
	ctx := context.Background()
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"conditions", func(t *testing.T) {
			w, err := cl.Set(ctx, "sem:cas", "a", &SetOptions{IfAbsent: true})
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.Set(ctx, "sem:cas", "b", &SetOptions{IfRevision: Rev(w.Revision + 100)})
			var e *Error
			if !errors.As(err, &e) || e.Code != "condition_failed" || e.Status != 409 || e.CurrentRevision != w.Revision || !e.Exists {
				t.Fatalf("stale if_revision: %#v, want condition_failed at revision %d", err, w.Revision)
			}
			w2, err := cl.Set(ctx, "sem:cas", "b", &SetOptions{IfRevision: Rev(w.Revision), Prev: true})
			if err != nil || w2.Prev == nil || w2.Prev.Value != "a" || w2.Revision <= w.Revision {
				t.Fatalf("cas: %+v %v", w2, err)
			}
			d, err := cl.Delete(ctx, "sem:cas", &DeleteOptions{IfExists: true, Prev: true})
			if err != nil || !d.Deleted || d.Prev == nil || d.Prev.Value != "b" {
				t.Fatalf("delete: %+v %v", d, err)
			}
			d, err = cl.Delete(ctx, "sem:cas", nil)
			if err != nil || d.Deleted {
				t.Fatalf("delete of a missing key: %+v %v", d, err)
			}
			if _, err := cl.Set(ctx, "sem:cas", "c", &SetOptions{IfExists: true}); !IsConditionFailed(err) {
				t.Fatalf("if_exists on a missing key: %v", err)
			}
		}},
		{"ttl", func(t *testing.T) {
			if _, err := cl.Set(ctx, "sem:ttl", "v", &SetOptions{TTL: 2 * time.Second}); err != nil {
				t.Fatal(err)
			}
			kv, err := cl.Get(ctx, "sem:ttl", nil)
			if err != nil || kv.ExpiresAt.IsZero() || kv.TTL <= 0 || kv.TTL > 2*time.Second {
				t.Fatalf("get: %+v %v", kv, err)
			}
			if _, err := cl.Expire(ctx, "sem:ttl", 0, nil); err != nil {
				t.Fatal(err)
			}
			if kv, err := cl.Get(ctx, "sem:ttl", nil); err != nil || !kv.ExpiresAt.IsZero() {
				t.Fatalf("after the TTL was removed: %+v %v", kv, err)
			}
			if _, err := cl.Expire(ctx, "sem:ttl", time.Second, nil); err != nil {
				t.Fatal(err)
			}
			tc.Eventually(t, 5*time.Second, "the key expires", func() error {
				if _, err := cl.Get(ctx, "sem:ttl", nil); !IsNotFound(err) {
					return fmt.Errorf("get: %v", err)
				}
				return nil
			})
		}},
		{"batch", func(t *testing.T) {
			res, err := cl.Batch(ctx, []Op{
				{Op: "set", Key: "{sem}a", Value: "1"}, {Op: "set", Key: "{sem}b", Value: "2", IfAbsent: true}, {Op: "get", Key: "{sem}a"},
			}, &BatchOptions{Atomic: true})
			if err != nil || len(res) != 3 || res[0].Err != nil || res[2].Value != "1" {
				t.Fatalf("atomic batch: %+v %v", res, err)
			}
			res, err = cl.Batch(ctx, []Op{{Op: "set", Key: "{sem}b", Value: "3", IfAbsent: true}, {Op: "get", Key: "sem:none"}, {Op: "delete", Key: "{sem}a"}}, nil)
			if err != nil || len(res) != 3 {
				t.Fatalf("batch: %+v %v", res, err)
			}
			if res[0].Status != 409 || res[0].Err == nil || res[0].Err.Code != "condition_failed" {
				t.Errorf("op 0: %+v, want 409 condition_failed", res[0])
			}
			if res[1].Status != 404 || !IsNotFound(res[1].Err) {
				t.Errorf("op 1: %+v, want 404", res[1])
			}
			if res[2].Status != 200 || !res[2].Deleted {
				t.Errorf("op 2: %+v, want deleted", res[2])
			}
		}},
		{"bad request", func(t *testing.T) {
			_, err := cl.Set(ctx, "", "v", nil)
			var e *Error
			if !errors.As(err, &e) || e.Status != 400 || e.Code != "missing_key" {
				t.Fatalf("set without key: %v", err)
			}
		}},
		{"scan", func(t *testing.T) {
			var ops []Op
			for i := range 25 {
				ops = append(ops, Op{Op: "set", Key: fmt.Sprintf("scan:%02d", i), Value: fmt.Sprint(i)})
			}
			if _, err := cl.Batch(ctx, ops, nil); err != nil {
				t.Fatal(err)
			}
			page, err := cl.Scan(ctx, ScanOptions{Prefix: "scan:", Limit: 10})
			if err != nil || len(page.Items) != 10 || page.NextCursor == "" || page.Token == "" || page.Items[0].Value != "" {
				t.Fatalf("first page: %+v %v", page, err)
			}
			var got []string
			tok, err := cl.ScanAll(ctx, ScanOptions{Prefix: "scan:", Limit: 7, Values: true}, func(kv KV) error {
				if kv.Value == "" {
					return fmt.Errorf("%s without its value", kv.Key)
				}
				got = append(got, kv.Key)
				return nil
			})
			if err != nil || len(got) != 25 || got[0] != "scan:00" || got[24] != "scan:24" || tok == "" {
				t.Fatalf("scan all: %v %v", got, err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}
}

// testOutcomeUnknown pauses (SIGSTOP) the primary of a key and writes the
// key with a short deadline: the write must fail as outcome_unknown (sent,
// no answer) or unavailable (not sent), and it must reach at most one node
// at most once: no other node sees a KV request, and the key's revision
// moves by at most one write.
func testOutcomeUnknown(t *testing.T, c *tc.Cluster, cl *Client) {
	ctx := context.Background()
	victim := c.Nodes[2]
	key := keyOn(t, cl, victim.ID, "lost:")
	w0, err := cl.Set(ctx, key, "before", nil)
	if err != nil {
		t.Fatal(err)
	}
	before := kvRequests(t, c)
	victim.Pause()
	paused := true
	defer func() {
		if paused {
			victim.Resume()
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	_, err = cl.Set(wctx, key, "during", nil)
	cancel()
	if !IsOutcomeUnknown(err) && !IsUnavailable(err) {
		t.Fatalf("write to a paused primary: %v, want outcome_unknown or unavailable", err)
	}
	t.Logf("write to a paused primary: %v", err)
	during := kvRequests(t, c) // the paused node is left out
	victim.Resume()
	paused = false
	for id, d := range delta(before, during) {
		if d != 0 {
			t.Errorf("%s served %d KV requests while %s was paused: the write was sent again elsewhere", id, d, victim.ID)
		}
	}
	var kv *KV
	tc.Eventually(t, 20*time.Second, "the key readable again", func() error {
		kv, err = cl.Get(ctx, key, nil)
		return err
	})
	if kv.Revision > w0.Revision+1 {
		t.Errorf("revision went from %d to %d: the write was applied more than once", w0.Revision, kv.Revision)
	}
	after := kvRequests(t, c)
	if d := after[victim.ID] - before[victim.ID]; d > 2 { // the write, at most, and the get above
		t.Errorf("%s served %d KV requests: the write was sent more than once", victim.ID, d)
	}
}

// TestFailover kills the node a watch reads from and the primary of a key,
// and keeps using the same Client: the write to the key is retried until
// the partition has a new primary, the client's table follows, and the
// watch resumes through another node delivering every change once.
func TestFailover(t *testing.T) {
	t.Parallel()
	c := startCluster(t, "FAILOVER_GRACE=1s")
	cl := newClient(t, c, Config{})
	ctx := context.Background()

	w, err := cl.Watch(ctx, WatchOptions{Prefix: "w/", Progress: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var victim *tc.Node
	for _, n := range c.Nodes {
		if n.KV == w.node.Load() {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("the watch reads from %v, no node of the cluster", w.node.Load())
	}
	key := keyOn(t, cl, victim.ID, "moving:")
	version0 := cl.table.Load().version

	// Read the watch while writing.
	type change struct {
		key string
		rev uint64
	}
	var mu sync.Mutex
	seen := map[change]int{}
	wctx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan error, 1)
	go func() {
		for {
			ev, err := w.Next(wctx)
			if err != nil {
				watchDone <- err
				return
			}
			if ev.Type == "set" {
				mu.Lock()
				seen[change{ev.Key, ev.Revision}]++
				mu.Unlock()
			}
		}
	}()
	acked := map[change]bool{}
	write := func(from, to int) {
		for i := from; i < to; i++ {
			k := fmt.Sprintf("w/%03d", i)
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			res, err := cl.Set(wctx, k, "v", nil)
			cancel()
			if err != nil {
				t.Fatalf("set %s: %v", k, err)
			}
			acked[change{k, res.Revision}] = true
		}
	}
	write(0, 30)

	victim.Kill()
	killed := time.Now()
	// A write sent on a pooled connection in the moment the node dies is
	// outcome_unknown (written, then EOF) and is rightly not resent; give
	// the client's transport a moment to see the connections close, so
	// that the write below meets refused connections and 503s, which are
	// retried.
	time.Sleep(200 * time.Millisecond)
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	_, err = cl.Set(sctx, key, "after the kill", nil)
	cancel()
	if err != nil {
		t.Fatalf("write to a key whose primary was killed: %v", err)
	}
	t.Logf("write to the key of the killed primary acknowledged %s after the kill", time.Since(killed).Round(10*time.Millisecond))
	// The answers carry the nodes' newer table version: the client
	// refreshes in the background, within about 100 ms.
	tc.Eventually(t, 5*time.Second, "the client's table moves the key off the killed node", func() error {
		if _, err := cl.Get(ctx, key, nil); err != nil {
			return err
		}
		if p := cl.primary(key); p == victim.ID || p == "" {
			return fmt.Errorf("the client still routes %s to %q", key, p)
		}
		return nil
	})
	if v := cl.table.Load().version; v <= version0 {
		t.Errorf("table version %d, was %d: not refreshed", v, version0)
	}
	newPrimary := nodeByID(c, cl.primary(key))
	write(30, 60)

	// The key's requests now land on its new primary.
	before := kvRequests(t, c)
	for range 5 {
		if _, err := cl.Get(ctx, key, nil); err != nil {
			t.Fatal(err)
		}
	}
	if d := delta(before, kvRequests(t, c)); d[newPrimary.ID] != 5 {
		t.Errorf("after failover, 5 gets of %s: %v, want 5 on %s", key, d, newPrimary.ID)
	}

	tc.Eventually(t, 20*time.Second, "every acknowledged change delivered by the watch", func() error {
		mu.Lock()
		defer mu.Unlock()
		for ch := range acked {
			if seen[ch] == 0 {
				return fmt.Errorf("%s@%d not delivered (%d of %d seen)", ch.key, ch.rev, len(seen), len(acked))
			}
		}
		return nil
	})
	stopWatch()
	<-watchDone
	for ch, n := range seen {
		if n != 1 {
			t.Errorf("%s@%d delivered %d times", ch.key, ch.rev, n)
		}
	}
	if now := w.node.Load(); now == victim.KV {
		t.Errorf("the watch still reads from the killed node %s", now)
	}
}
