package node_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/clusterkit/clusterkit/node"
)

// singleNodeConfig is the configuration of a one-node cluster on free
// loopback ports, the way a test or a small embedded deployment runs it.
func singleNodeConfig(dataDir string) node.Config {
	cfg := node.DefaultConfig("node-1")
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.KVAddr = "127.0.0.1:0"
	cfg.RaftAddr = "127.0.0.1:0"
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.Bootstrap = true
	cfg.DataDir = dataDir
	cfg.StatusInterval = 0 // no console status block
	return cfg
}

// waitForPrimary polls until the partition table is initialised and key has
// a primary: Start returns at once, while Raft elects this node and the
// leader assigns the partitions in the background.
func waitForPrimary(ck *node.ClusterKit, key string) ([]node.Node, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		nodes, err := ck.GetNodesForKey(key)
		if err == nil && len(nodes) > 0 {
			return nodes, nil
		}
		if err != nil && !errors.Is(err, node.ErrNotInitialized) {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no primary for %q after 15s (last error: %v)", key, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shutdown stops ck with a bounded wait, as a signal handler would.
func shutdown(ck *node.ClusterKit) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ck.Shutdown(ctx); err != nil {
		fmt.Println("shutdown:", err)
	}
}

func ExampleClusterKit_GetNodesForKey() {
	dir, err := os.MkdirTemp("", "clusterkit-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	logger := slog.New(slog.DiscardHandler)
	ck, err := node.New(singleNodeConfig(dir), logger)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := ck.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	defer shutdown(ck)

	// Right after Start the table may not exist yet: GetNodesForKey then
	// returns node.ErrNotInitialized, and waitForPrimary retries.
	nodes, err := waitForPrimary(ck, "user:123")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("owners:", len(nodes))
	fmt.Println("primary:", nodes[0].ID, nodes[0].Name, nodes[0].Status)
	// Output:
	// owners: 1
	// primary: node-1 Server-1 active
}

func ExampleClusterKit_AmIResponsibleFor() {
	dir, err := os.MkdirTemp("", "clusterkit-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	ck, err := node.New(singleNodeConfig(dir), slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := ck.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	defer shutdown(ck)
	if _, err := waitForPrimary(ck, "user:123"); err != nil {
		fmt.Println(err)
		return
	}

	// A service embedding ClusterKit serves a key itself only when this
	// node owns it, and otherwise sends the caller to nodes[0].
	ok, role, nodes, err := ck.AmIResponsibleFor("user:123")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("responsible:", ok)
	fmt.Println("role:", role)
	fmt.Println("owners:", len(nodes))
	// Output:
	// responsible: true
	// role: primary
	// owners: 1
}

func ExampleClusterKit_WatchPartitions() {
	dir, err := os.MkdirTemp("", "clusterkit-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	ck, err := node.New(singleNodeConfig(dir), slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Println(err)
		return
	}
	// Subscribe before Start so the first assignment is not missed. The
	// callback runs on ClusterKit's goroutine: hand the change over
	// without blocking (here: keep only the first one for node-1).
	ctx, stopWatching := context.WithCancel(context.Background())
	defer stopWatching()
	changes := make(chan node.PartitionChange, 1)
	ck.WatchPartitions(ctx, func(c node.PartitionChange) {
		if c.Primary == "node-1" {
			select {
			case changes <- c:
			default:
			}
		}
	})
	if err := ck.Start(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	defer shutdown(ck)

	select {
	case c := <-changes:
		fmt.Println("primary:", c.Primary)
		fmt.Println("epoch:", c.Epoch)
		fmt.Println("previously unassigned:", c.OldPrimary == "")
	case <-time.After(15 * time.Second):
		fmt.Println("no partition change within 15s")
	}
	// Output:
	// primary: node-1
	// epoch: 1
	// previously unassigned: true
}

// startExampleNode starts a one-node cluster in dir and waits until key has
// a primary.
func startExampleNode(dir string, before func(*node.ClusterKit)) (*node.ClusterKit, error) {
	cfg := singleNodeConfig(dir)
	cfg.Services = map[string]string{"http": "127.0.0.1:7000"}
	ck, err := node.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	if before != nil {
		before(ck)
	}
	if err := ck.Start(context.Background()); err != nil {
		return nil, err
	}
	if _, err := waitForPrimary(ck, "user:123"); err != nil {
		shutdown(ck)
		return nil, err
	}
	return ck, nil
}

func ExampleClusterKit_GetPrimary() {
	dir, err := os.MkdirTemp("", "clusterkit-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ck, err := startExampleNode(dir, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer shutdown(ck)

	// A service that keeps its own data sends a request for a key it
	// does not serve to the primary's own service address (SERVICES).
	primary, err := ck.GetPrimary("user:123")
	if err != nil {
		fmt.Println(err)
		return
	}
	replicas, _ := ck.GetReplicas("user:123")
	p, _ := ck.GetPartition("user:123")
	fmt.Println("primary:", primary.ID, primary.Services["http"])
	fmt.Println("replicas:", len(replicas))
	fmt.Println("partition has a name:", p.ID != "", "epoch:", p.Epoch)
	// Output:
	// primary: node-1 127.0.0.1:7000
	// replicas: 0
	// partition has a name: true epoch: 1
}

func ExampleClusterKit_IsPrimary() {
	dir, err := os.MkdirTemp("", "clusterkit-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ck, err := startExampleNode(dir, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer shutdown(ck)

	fmt.Println("me:", ck.GetMyNodeID())
	fmt.Println("primary:", ck.IsPrimary("user:123"))
	fmt.Println("replica:", ck.IsReplica("user:123"))
	// Output:
	// me: node-1
	// primary: true
	// replica: false
}

func ExampleClusterKit_OnPartitionChange() {
	dir, err := os.MkdirTemp("", "clusterkit-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	// Handlers run on ClusterKit's hook goroutine, one event at a time
	// and in order; a slow one only delays later events. Register them
	// before Start to see the first assignment.
	changes := make(chan node.PartitionChangeEvent, 64)
	joined := make(chan node.NodeEvent, 4)
	ck, err := startExampleNode(dir, func(ck *node.ClusterKit) {
		ck.OnPartitionChange(func(e node.PartitionChangeEvent) {
			select {
			case changes <- e:
			default:
			}
		})
		ck.OnNodeJoin(func(e node.NodeEvent) { joined <- e })
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer shutdown(ck)

	select {
	case e := <-joined:
		fmt.Println("joined:", e.Node.ID)
	case <-time.After(15 * time.Second):
		fmt.Println("no join within 15s")
	}
	select {
	case e := <-changes:
		fmt.Println("new primary:", e.NewPrimary, "was:", e.OldPrimary == "")
		fmt.Println("reason:", e.Reason)
	case <-time.After(15 * time.Second):
		fmt.Println("no partition change within 15s")
	}
	// Output:
	// joined: node-1
	// new primary: node-1 was: true
	// reason: node_join
}
