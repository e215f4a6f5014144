package integration

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	tc "github.com/clusterkit/clusterkit/internal/testcluster"
)

// checkCopies verifies that every copy of every partition is identical and
// that no node still holds data for a partition it does not own.
func checkCopies(nodes []*tc.Node) error {
	hashes := map[int]string{}
	for _, n := range nodes {
		ds, err := n.Digests()
		if err != nil {
			return err
		}
		for _, d := range ds {
			switch d.Role {
			case "none":
				if d.Keys > 0 {
					return fmt.Errorf("%s still holds %d keys of partition %d it does not own", n.ID, d.Keys, d.Partition)
				}
			case "catching-up":
				return fmt.Errorf("%s is still catching up on partition %d", n.ID, d.Partition)
			default:
				if h, ok := hashes[d.Partition]; ok && h != d.SHA256 {
					return fmt.Errorf("partition %d differs on %s", d.Partition, n.ID)
				}
				hashes[d.Partition] = d.SHA256
			}
		}
	}
	return nil
}

// settled reports nil once node's table shows `nodes` active nodes and every
// partition with exactly min(rf, nodes) owners, all in sync.
func settled(n *tc.Node, nodes, rf int) error {
	if err := n.CheckHealthy(nodes, rf); err != nil {
		return err
	}
	r, err := tc.Get(n.HTTP, "/partitions")
	if err != nil {
		return err
	}
	var out struct {
		Partitions []struct {
			ID       string   `json:"id"`
			Replicas []string `json:"replica_nodes"`
			InSync   []string `json:"in_sync_replicas"`
		} `json:"partitions"`
	}
	if err := r.JSON(&out); err != nil {
		return err
	}
	for _, p := range out.Partitions {
		if len(p.Replicas) != min(rf, nodes)-1 || len(p.InSync) != len(p.Replicas) {
			return fmt.Errorf("%s: replicas %v, in sync %v", p.ID, p.Replicas, p.InSync)
		}
	}
	return nil
}

// TestScaleOutAndLeave adds a fourth node to a loaded three-node cluster
// (it takes its share, the old copies are released) and then asks one node
// to leave through POST /cluster/leave (it hands its partitions over and
// stops by itself). No key is lost at any step.
func TestScaleOutAndLeave(t *testing.T) {
	t.Parallel()
	c := tc.New(t, binary, 3, tc.Options{})
	c.Start()
	c.WaitHealthy(30*time.Second, 3, 3)
	data := keys("m", 200, "v")
	writeAll(t, c.Nodes[0].KV, data, 5*time.Second)

	n4 := c.AddNode()
	joined := time.Now()
	n4.Start()
	// Settled means node-4 has taken its share (the ring gives it some
	// primaries) and every partition is back to exactly 3 in-sync copies;
	// right after the join the old table looks settled too.
	tc.Eventually(t, 60*time.Second, "4-node table settled with node-4 leading partitions", func() error {
		r, err := tc.Get(n4.HTTP, "/partitions/stats")
		if err != nil {
			return err
		}
		perNode, _ := r.Map()["partitions_per_node"].(map[string]any)
		if led, _ := perNode["node-4"].(float64); led == 0 {
			return fmt.Errorf("node-4 leads no partition yet")
		}
		return settled(n4, 4, 3)
	})
	t.Logf("4th node joined and the table settled after %s", time.Since(joined).Round(100*time.Millisecond))
	tc.Eventually(t, 20*time.Second, "copies identical and released", func() error { return checkCopies(c.Nodes) })
	readAll(t, n4.KV, data, false, 10*time.Second)

	n2 := c.Nodes[1]
	r, err := tc.Do(context.Background(), http.MethodPost, n2.HTTP, "/cluster/leave", nil)
	if err != nil || r.Status != http.StatusAccepted {
		t.Fatalf("POST /cluster/leave: %v %d %s", err, r.Status, r.Body)
	}
	if !n2.WaitExit(40 * time.Second) {
		t.Fatal("node-2 did not stop by itself after POST /cluster/leave")
	}
	survivors := []*tc.Node{c.Nodes[0], c.Nodes[2], n4}
	tc.Eventually(t, 30*time.Second, "table without node-2", func() error { return settled(survivors[0], 3, 3) })
	for _, n := range survivors {
		readAll(t, n.KV, data, false, 10*time.Second)
	}
	tc.Eventually(t, 20*time.Second, "copies identical", func() error { return checkCopies(survivors) })
}

// TestShrinkToOne asks two nodes of three to leave, one after the other,
// as an operator shrinking the cluster would. Each leave takes the node's
// Raft vote with it, so the last node keeps a quorum of one: it stays the
// leader and serves every key. (A node that is only stopped keeps its
// vote; see TestStopWholeCluster.)
func TestShrinkToOne(t *testing.T) {
	t.Parallel()
	c := tc.New(t, binary, 3, tc.Options{})
	c.Start()
	c.WaitHealthy(30*time.Second, 3, 3)
	data := keys("s", 100, "v")
	writeAll(t, c.Nodes[0].KV, data, 5*time.Second)
	n1 := c.Nodes[0]
	for _, n := range []*tc.Node{c.Nodes[2], c.Nodes[1]} {
		r, err := tc.Do(context.Background(), http.MethodPost, n1.HTTP, "/cluster/leave?node="+n.ID, nil)
		if err != nil || r.Status != http.StatusAccepted {
			t.Fatalf("POST /cluster/leave?node=%s: %v %d %s", n.ID, err, r.Status, r.Body)
		}
		if !n.WaitExit(40 * time.Second) {
			t.Fatalf("%s did not stop after POST /cluster/leave", n.ID)
		}
	}
	tc.Eventually(t, 20*time.Second, "node-1 alone, leader of a one-voter configuration", func() error {
		r, err := tc.Get(n1.HTTP, "/consensus/stats")
		if err != nil {
			return err
		}
		m := r.Map()
		if m["state"] != "Leader" || m["num_peers"] != float64(0) {
			return fmt.Errorf("/consensus/stats: %s", r.Body)
		}
		return nil
	})
	readAll(t, n1.KV, data, false, 20*time.Second)
	writeAll(t, n1.KV, keys("after", 10, "w"), 10*time.Second)
}
