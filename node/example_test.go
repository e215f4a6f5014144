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
