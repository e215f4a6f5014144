package integration

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// post sends a KV request through addr and decodes the answer.
func post(t *testing.T, addr, path, body string) (int, map[string]any) {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	r, err := tc.Do(context.Background(), http.MethodPost, addr, path, b, "Content-Type", "application/json")
	if err != nil {
		t.Fatalf("POST %s%s: %v", addr, path, err)
	}
	return r.Status, r.Map()
}

func getKey(t *testing.T, addr, key string, stale bool) (int, map[string]any) {
	t.Helper()
	r, err := tc.GetKey(context.Background(), addr, key, stale)
	if err != nil {
		t.Fatalf("get %s via %s: %v", key, addr, err)
	}
	return r.Status, r.Map()
}

// TestDataModelThreeNodes runs revisions, conditions, TTL and batches
// through three real nodes: every node sees the revision and deadline the
// primary chose, and a condition sent to any node is judged by the
// primary.
func TestDataModelThreeNodes(t *testing.T) {
	t.Parallel()
	c := tc.New(t, binary, 3, tc.Options{})
	c.Start()
	c.WaitHealthy(40*time.Second, 3, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]

	r, err := tc.Get(n1.HTTP, "/cluster")
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := r.Map()["cluster"].(map[string]any)
	cfg, _ := cl["config"].(map[string]any)
	hash, _ := r.Map()["hash_config"].(map[string]any)
	if cfg["min_insync"] != 2.0 || hash["hash_tags"] != true || hash["algorithm"] != "fnv-1a-64" {
		t.Fatalf("/cluster config %v, hash_config %v: want min_insync 2 and hash tags on", cfg, hash)
	}

	status, b := post(t, n1.KV, "/kv/set", `{"key":"acct","value":"10","if_absent":true}`)
	if status != 200 {
		t.Fatalf("create: %d %v", status, b)
	}
	rev := b["revision"].(float64)
	for _, n := range []*tc.Node{n2, n3} {
		tc.Eventually(t, 5*time.Second, "revision via "+n.ID, func() error {
			st, g := getKey(t, n.KV, "acct", true)
			if st != 200 || g["revision"] != rev || g["value"] != "10" {
				return fmt.Errorf("stale get = %d %v, want revision %v", st, g, rev)
			}
			return nil
		})
	}
	if st, b := post(t, n3.KV, "/kv/set", fmt.Sprintf(`{"key":"acct","value":"11","if_revision":%d}`, int(rev)-1)); st != 409 || b["code"] != "condition_failed" || b["current_revision"] != rev {
		t.Fatalf("CAS with a stale revision via n3 = %d %v", st, b)
	}
	if st, b := post(t, n2.KV, "/kv/set", fmt.Sprintf(`{"key":"acct","value":"11","if_revision":%d,"prev":true}`, int(rev))); st != 200 || b["revision"].(float64) <= rev {
		t.Fatalf("CAS via n2 = %d %v", st, b)
	}

	status, b = post(t, n2.KV, "/kv/set", `{"key":"session","value":"s","ttl":"2s"}`)
	if status != 200 || b["expires_at"] == nil {
		t.Fatalf("set with ttl: %d %v", status, b)
	}
	deadline, err := time.Parse(time.RFC3339, b["expires_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*tc.Node{n1, n3} {
		tc.Eventually(t, 2*time.Second, "deadline via "+n.ID, func() error {
			if st, g := getKey(t, n.KV, "session", true); st != 200 || g["expires_at"] != b["expires_at"] {
				return fmt.Errorf("stale get = %d %v, want the primary's deadline %v", st, g, b["expires_at"])
			}
			return nil
		})
	}
	time.Sleep(time.Until(deadline) + 20*time.Millisecond)
	for _, n := range c.Nodes {
		for _, stale := range []bool{false, true} {
			if st, g := getKey(t, n.KV, "session", stale); st != 404 {
				t.Fatalf("after its deadline, get via %s (stale=%v) = %d %v", n.ID, stale, st, g)
			}
		}
	}

	status, b = post(t, n3.KV, "/kv/batch", `{"atomic":true,"ops":[{"op":"set","key":"{cart:7}:a","value":"1","if_absent":true},{"op":"set","key":"{cart:7}:b","value":"2","if_absent":true},{"op":"get","key":"{cart:7}:a"}]}`)
	if status != 200 || b["committed"] != true {
		t.Fatalf("atomic batch: %d %v", status, b)
	}
	if st, b := post(t, n1.KV, "/kv/batch", `{"atomic":true,"ops":[{"op":"set","key":"{cart:7}:a","value":"x"},{"op":"set","key":"{cart:7}:b","value":"y","if_absent":true}]}`); st != 200 || b["committed"] != false {
		t.Fatalf("atomic batch with a failing condition: %d %v", st, b)
	}
	if st, g := getKey(t, n2.KV, "{cart:7}:a", false); st != 200 || g["value"] != "1" {
		t.Fatalf("a failed atomic batch changed a key: %d %v", st, g)
	}
}

// TestCopyFloorRefusesWrites: with REPLICATION_FACTOR=2, a replica's
// partitions run on the primary alone until a new replica is copied; the
// default floor of two refuses their writes (not applied) instead of
// acknowledging them on one disk, and writes resume once a second copy is
// in sync.
func TestCopyFloorRefusesWrites(t *testing.T) {
	t.Parallel()
	c := tc.New(t, binary, 3, tc.Options{})
	for _, n := range c.Nodes {
		n.Env = append(n.Env, "REPLICATION_FACTOR=2")
	}
	c.Start()
	c.WaitHealthy(40*time.Second, 3, 2)
	n1, n3 := c.Nodes[0], c.Nodes[2]
	// A key that n1 leads and n3 copies.
	var key string
	for i := 0; key == ""; i++ {
		k := fmt.Sprintf("floor-%d", i)
		p, err := tc.PartitionOf(n1, k)
		if err != nil {
			t.Fatal(err)
		}
		if p.Primary == n1.ID && len(p.Replicas) == 1 && p.Replicas[0] == n3.ID {
			key = k
		}
		if i > 1000 {
			t.Fatal("no partition led by node-1 with node-3 as its replica")
		}
	}
	n3.Kill()
	refused := false
	tc.Eventually(t, 30*time.Second, "a refused write, then writes again", func() error {
		st, b := post(t, n1.KV, "/kv/set", `{"key":"`+key+`","value":"v"}`)
		switch {
		case st == 503 && b["code"] == "not_enough_replicas":
			refused = true
			return fmt.Errorf("refused, as it should be while one copy is in sync")
		case st == 200 && !refused:
			p, _ := tc.PartitionOf(n1, key)
			if len(p.InSync) == 0 {
				t.Fatalf("a write was acknowledged while its partition had no in-sync replica: %v", p)
			}
			return nil // the new replica was already in sync
		case st == 200:
			return nil
		}
		return fmt.Errorf("set = %d %v", st, b)
	})
	p, err := tc.PartitionOf(n1, key)
	if err != nil || len(p.InSync) == 0 {
		t.Fatalf("writes resumed with in-sync replicas %v (%v)", p.InSync, err)
	}
	// The replica's death is noticed seconds before a new replica can be
	// in sync, so the writes in between must have been refused.
	if !refused {
		t.Fatalf("no write was refused with not_enough_replicas while the partition had one copy; now %+v", p)
	}
	if st, b := post(t, n1.KV, "/kv/set?min_copies=3", `{"key":"`+key+`","value":"w"}`); st != 400 {
		t.Fatalf("min_copies over the replication factor = %d %v", st, b)
	}
}
