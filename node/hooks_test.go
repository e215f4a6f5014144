package node

import (
	"context"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// TestHooksOnJoinAndFailure runs a three-node cluster: every node must
// report node-3's join and the partitions that moved to it, and, once
// node-3 is killed, its failure and the cluster's degraded health. The
// same cluster checks that SERVICES reach every node's GET /cluster.
func TestHooksOnJoinAndFailure(t *testing.T) {
	services := map[string]map[string]string{
		"node-1": {"http": "127.0.0.1:7001"},
		"node-2": {"http": "127.0.0.1:7002", "grpc": "127.0.0.1:7102"},
		"node-3": {}, // none
	}
	var nodes []*ClusterKit
	var recs []*recorder
	for i, id := range []string{"node-1", "node-2", "node-3"} {
		cfg := testNodeConfig(t, id)
		cfg.Services = services[id]
		if i == 0 {
			cfg.Bootstrap = true
		} else {
			cfg.JoinAddrs = []string{nodes[0].MgmtAddr()}
		}
		ck := newTestNode(t, cfg)
		recs = append(recs, record(ck)) // before Start: nothing is missed
		startTestNode(t, ck)
		nodes = append(nodes, ck)
	}

	for i, r := range recs {
		waitFor(t, 30*time.Second, nodes[i].cfg.NodeID+" to report node-3's join", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			joined := slices.ContainsFunc(r.joins, func(e NodeEvent) bool { return e.Node.ID == "node-3" })
			moved := slices.ContainsFunc(r.partitions, func(e PartitionChangeEvent) bool {
				return e.Reason == ReasonNodeJoin && (e.NewPrimary == "node-3" || slices.Contains(e.NewReplicas, "node-3"))
			})
			return joined && moved
		})
	}
	for _, ck := range nodes {
		var out struct {
			Cluster struct {
				Nodes []struct {
					ID       string            `json:"id"`
					Services map[string]string `json:"services"`
				} `json:"nodes"`
			} `json:"cluster"`
		}
		waitFor(t, 10*time.Second, ck.cfg.NodeID+"'s /cluster to list every node's services", func() bool {
			getJSON(t, ck, "/cluster", &out)
			got := map[string]map[string]string{}
			for _, n := range out.Cluster.Nodes {
				if n.Services == nil {
					return false // must be {} when empty, never absent
				}
				got[n.ID] = n.Services
			}
			if len(got) != 3 {
				return false
			}
			for id, want := range services {
				if len(got[id]) != len(want) {
					return false
				}
				for k, v := range want {
					if got[id][k] != v {
						return false
					}
				}
			}
			return true
		})
	}
	waitFor(t, 20*time.Second, "every node ready", func() bool {
		for _, ck := range nodes {
			if !ck.readiness().ready {
				return false
			}
		}
		return true
	})

	for i, r := range recs {
		waitFor(t, 30*time.Second, nodes[i].cfg.NodeID+" to report the rebalance complete and the cluster healthy", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return len(r.rebDone) > 0 && len(r.health) > 0 && r.health[len(r.health)-1].State == HealthHealthy
		})
	}

	nodes[2].crash()
	for i, r := range recs[:2] {
		waitFor(t, 30*time.Second, nodes[i].cfg.NodeID+" to report node-3's failure and degraded health", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			failed := slices.ContainsFunc(r.leaves, func(e NodeEvent) bool { return e.Node.ID == "node-3" && e.Reason == LeaveFailure })
			degraded := slices.ContainsFunc(r.health, func(e HealthEvent) bool {
				return e.State == HealthDegraded && slices.Contains(e.UnhealthyNodes, "node-3")
			})
			return failed && degraded
		})
	}
	// The overview agrees, and shows node-3 unreachable.
	var ov struct {
		Health struct {
			State     string   `json:"state"`
			Unhealthy []string `json:"unhealthy_nodes"`
		} `json:"health"`
		Nodes []struct {
			ID        string `json:"id"`
			Reachable bool   `json:"reachable"`
		} `json:"nodes"`
		Events []struct {
			Type string `json:"type"`
			Node string `json:"node"`
		} `json:"events"`
	}
	// Critical while node-3's partitions wait for their failover, then
	// degraded.
	waitFor(t, 20*time.Second, "the overview to show the cluster degraded by node-3", func() bool {
		if code := getJSON(t, nodes[0], "/cluster/overview", &ov); code != http.StatusOK {
			t.Fatalf("GET /cluster/overview: %d", code)
		}
		return ov.Health.State == HealthDegraded && slices.Contains(ov.Health.Unhealthy, "node-3")
	})
	for _, n := range ov.Nodes {
		if want := n.ID != "node-3"; n.Reachable != want {
			t.Errorf("overview: %s reachable = %v, want %v", n.ID, n.Reachable, want)
		}
	}
	if len(ov.Events) == 0 || !slices.ContainsFunc(ov.Events, func(e struct {
		Type string `json:"type"`
		Node string `json:"node"`
	}) bool {
		return e.Type == "node_leave" && e.Node == "node-3"
	}) {
		t.Errorf("overview events lack node-3's leave: %+v", ov.Events)
	}
}

// TestHookPanicDoesNotStopLaterEvents: a handler that panics on its first
// event still gets the later ones, and the node keeps running.
func TestHookPanicDoesNotStopLaterEvents(t *testing.T) {
	cfg := testNodeConfig(t, "node-1")
	cfg.Bootstrap = true
	ck := newTestNode(t, cfg)
	var calls atomic.Int32
	ck.OnPartitionChange(func(PartitionChangeEvent) {
		if calls.Add(1) == 1 {
			panic("handler bug")
		}
	})
	startTestNode(t, ck)
	// The first assignment changes all 16 partitions.
	waitFor(t, 20*time.Second, "every partition change after the panic", func() bool { return calls.Load() >= int32(cfg.Partitions) })
	waitFor(t, 20*time.Second, "the node to be ready", func() bool { return ck.readiness().ready })
}

// TestSlowHookDoesNotBlockNode: a handler that never returns fills the
// (here small) queue; later events are dropped and counted, the node
// still becomes ready, the recent-event log still records everything,
// and Shutdown does not wait for the handler.
func TestSlowHookDoesNotBlockNode(t *testing.T) {
	cfg := testNodeConfig(t, "node-1")
	cfg.Bootstrap = true
	ck := newTestNode(t, cfg)
	ck.hooks = newHooks(ck.log, 2)
	release := make(chan struct{})
	defer close(release)
	ck.OnPartitionChange(func(PartitionChangeEvent) { <-release })
	startTestNode(t, ck)
	waitFor(t, 20*time.Second, "the node to be ready", func() bool { return ck.readiness().ready })
	waitFor(t, 10*time.Second, "events to be dropped", func() bool { return ck.DroppedHookEvents() > 0 })
	n := 0
	for _, e := range ck.RecentEvents() {
		if e.Type == "partition_change" {
			n++
		}
	}
	if n < cfg.Partitions {
		t.Errorf("recent events hold %d partition changes, want %d", n, cfg.Partitions)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := ck.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a blocked handler: %v", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("Shutdown took %s with a blocked handler", d)
	}
}

// TestReady: 503 without a leader, 200 once the node serves its
// partitions, 503 again once it was asked to leave.
func TestReady(t *testing.T) {
	t.Run("no leader", func(t *testing.T) {
		ck := newTestNode(t, testNodeConfig(t, "node-7")) // neither bootstrap nor join
		startTestNode(t, ck)
		var out map[string]any
		if code := getJSON(t, ck, "/ready", &out); code != http.StatusServiceUnavailable || out["ready"] != false || out["code"] != "no_leader" {
			t.Fatalf("GET /ready = %d %v, want 503 no_leader", code, out)
		}
	})
	t.Run("serving, then leaving", func(t *testing.T) {
		cfg := testNodeConfig(t, "node-1")
		cfg.Bootstrap = true
		ck := newTestNode(t, cfg)
		startTestNode(t, ck)
		var out map[string]any
		waitFor(t, 20*time.Second, "GET /ready to answer 200", func() bool {
			out = nil // each answer on its own, not merged into the last
			return getJSON(t, ck, "/ready", &out) == http.StatusOK
		})
		if out["ready"] != true || out["primaries"] != float64(cfg.Partitions) {
			t.Fatalf("GET /ready = %v, want ready with %d primaries", out, cfg.Partitions)
		}
		// The dashboard is mounted beside: /ui sends browsers to /ui/.
		noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		uiResp, err := noRedirect.Get("http://" + ck.MgmtAddr() + "/ui")
		if err != nil {
			t.Fatal(err)
		}
		uiResp.Body.Close()
		if uiResp.StatusCode != http.StatusMovedPermanently || uiResp.Header.Get("Location") != "/ui/" {
			t.Errorf("GET /ui = %d to %q, want a redirect to /ui/", uiResp.StatusCode, uiResp.Header.Get("Location"))
		}
		if uiResp, err = http.Get("http://" + ck.MgmtAddr() + "/ui/"); err != nil {
			t.Fatal(err)
		}
		uiResp.Body.Close()
		if uiResp.StatusCode != http.StatusOK {
			t.Errorf("GET /ui/ = %d, want 200", uiResp.StatusCode)
		}
		resp, err := http.Post("http://"+ck.MgmtAddr()+"/cluster/leave", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /cluster/leave: %d", resp.StatusCode)
		}
		if code := getJSON(t, ck, "/ready", &out); code != http.StatusServiceUnavailable || out["code"] != "not_ready" || out["error"] == "" {
			t.Fatalf("GET /ready while leaving = %d %v, want 503 not_ready", code, out)
		}
	})
}
