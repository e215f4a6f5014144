package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/internal/testcluster"
)

// testNodeConfig is a node on free loopback ports with fast failover.
func testNodeConfig(t *testing.T, id string) Config {
	cfg := DefaultConfig(id)
	cfg.HTTPAddr, cfg.KVAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.StatusInterval = 0
	cfg.FailoverGrace = 200 * time.Millisecond
	cfg.Bootstrap = false
	return cfg
}

// newTestNode builds a node (not started) whose log is shown on failure
// and which is shut down at the end of the test.
func newTestNode(t *testing.T, cfg Config) *ClusterKit {
	t.Helper()
	logs := &testcluster.SyncBuffer{} // printed if the test fails
	ck, err := New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.NodeID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ck.Shutdown(ctx)
		if t.Failed() {
			t.Logf("log of %s:\n%s", cfg.NodeID, logs.String())
		}
	})
	return ck
}

func startTestNode(t *testing.T, ck *ClusterKit) {
	t.Helper()
	if err := ck.Start(context.Background()); err != nil {
		t.Fatalf("Start(%s): %v", ck.cfg.NodeID, err)
	}
}

// crash stops ck the way a killed process stops: no leadership transfer,
// no gossip leave, no drain. Its peers must detect the failure.
func (ck *ClusterKit) crash() {
	ck.stopOnce.Do(func() {
		_ = ck.members.Shutdown()
		_ = ck.mgmtSrv.Close()
		_ = ck.kvSrv.Close()
		ck.cancel()
		ck.wg.Wait()
		ck.peerLn.StopServing()
		ck.peers.Close()
		_ = ck.raft.Close()
		_ = ck.db.Close()
	})
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// getJSON fetches a management path of ck and decodes the answer.
func getJSON(t *testing.T, ck *ClusterKit, path string, v any) int {
	t.Helper()
	resp, err := http.Get("http://" + ck.MgmtAddr() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: decode: %v", path, err)
	}
	return resp.StatusCode
}

// recorder keeps every hook event one node delivered.
type recorder struct {
	mu         sync.Mutex
	partitions []PartitionChangeEvent
	joins      []NodeEvent
	rejoins    []NodeEvent
	leaves     []NodeEvent
	rebStarts  []RebalanceEvent
	rebDone    []RebalanceEvent
	health     []HealthEvent
}

func record(ck *ClusterKit) *recorder {
	r := &recorder{}
	ck.OnPartitionChange(func(e PartitionChangeEvent) { r.mu.Lock(); r.partitions = append(r.partitions, e); r.mu.Unlock() })
	ck.OnNodeJoin(func(e NodeEvent) { r.mu.Lock(); r.joins = append(r.joins, e); r.mu.Unlock() })
	ck.OnNodeRejoin(func(e NodeEvent) { r.mu.Lock(); r.rejoins = append(r.rejoins, e); r.mu.Unlock() })
	ck.OnNodeLeave(func(e NodeEvent) { r.mu.Lock(); r.leaves = append(r.leaves, e); r.mu.Unlock() })
	ck.OnRebalanceStart(func(e RebalanceEvent) { r.mu.Lock(); r.rebStarts = append(r.rebStarts, e); r.mu.Unlock() })
	ck.OnRebalanceComplete(func(e RebalanceEvent) { r.mu.Lock(); r.rebDone = append(r.rebDone, e); r.mu.Unlock() })
	ck.OnClusterHealthChange(func(e HealthEvent) { r.mu.Lock(); r.health = append(r.health, e); r.mu.Unlock() })
	return r
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("joins=%v leaves=%v health=%v partitions=%d rebalances=%d/%d", r.joins, r.leaves, r.health,
		len(r.partitions), len(r.rebStarts), len(r.rebDone))
}
