package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/ring"
)

// overviewFetchTimeout bounds the whole fan-out of GET /cluster/overview:
// a member that does not answer within it is shown unreachable.
const overviewFetchTimeout = time.Second

// memberStats is what GET /cluster/overview reads from each member's
// GET /metrics?format=json.
type memberStats struct {
	RequestCount  uint64              `json:"request_count"`
	ErrorCount    uint64              `json:"error_count"`
	UptimeSeconds int                 `json:"uptime_seconds"`
	Copies        []engine.CopyStatus `json:"copies"`
}

type overviewNode struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Status        string            `json:"status"`
	Since         string            `json:"since"`
	MgmtAddr      string            `json:"mgmt_addr"`
	KVAddr        string            `json:"kv_addr"`
	Leader        bool              `json:"leader"`
	Voter         bool              `json:"voter"`
	Draining      bool              `json:"draining"`
	Reachable     bool              `json:"reachable"`
	Primaries     int               `json:"primaries"`
	Replicas      int               `json:"replicas"`
	RequestCount  uint64            `json:"request_count"`
	ErrorCount    uint64            `json:"error_count"`
	UptimeSeconds int               `json:"uptime_seconds"`
	Services      map[string]string `json:"services"`
	// Error says why the member is not reachable ("" when it is).
	Error string `json:"error,omitempty"`
}

type migrationJSON struct {
	Partition string `json:"partition"`
	Replica   string `json:"replica"`
	From      string `json:"from"`
	KeysSent  int    `json:"keys_sent"`
	KeysTotal int    `json:"keys_total"`
	StartedAt string `json:"started_at"`
	// How is tail, full or reconcile (engine.CopyStatus), or pending: a
	// replica the table lists as catching up that no primary reports a
	// copy in flight for right now (it starts, or restarts, shortly).
	How string `json:"how"`
}

type eventJSON struct {
	Time      string `json:"time"`
	Type      string `json:"type"`
	Node      string `json:"node"`
	Partition string `json:"partition"`
	Message   string `json:"message"`
}

// localStats is this node's own memberStats, read without a round trip.
func (ck *ClusterKit) localStats() memberStats {
	reqs, errs := ck.kv.Counts()
	return memberStats{RequestCount: uint64(reqs), ErrorCount: uint64(errs),
		UptimeSeconds: int(time.Since(ck.started).Seconds()), Copies: ck.eng.Copies()}
}

// fetchStats reads one member's stats from its management API, over TLS
// with this node's client configuration when the client listeners use TLS.
func (ck *ClusterKit) fetchStats(ctx context.Context, mgmtAddr string) (memberStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ck.mgmtURL(mgmtAddr, "/metrics?format=json"), nil)
	if err != nil {
		return memberStats{}, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ck.mgmtClient.Do(req)
	if err != nil {
		return memberStats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return memberStats{}, fmt.Errorf("GET /metrics: status %d", resp.StatusCode)
	}
	var s memberStats
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&s); err != nil {
		return memberStats{}, fmt.Errorf("GET /metrics: %w", err)
	}
	return s, nil
}

// overviewReuse is how long one fan-out's answers serve every overview
// request: GET /cluster/overview is open to anyone, and without it each
// request would make this node call every member (an amplifier), where
// now a flood costs at most one fan-out per interval.
const overviewReuse = 500 * time.Millisecond

// statsCache shares one fan-out among the overview requests that arrive
// while it runs or shortly after.
type statsCache struct {
	mu       sync.Mutex
	at       time.Time
	stats    map[string]memberStats
	errs     map[string]error
	inflight chan struct{}
}

// cachedStats is gatherStats, shared: a fan-out younger than
// overviewReuse is reused, and callers that arrive during one wait for it.
// The maps returned must not be changed.
func (ck *ClusterKit) cachedStats(ctx context.Context, nodes []consensus.NodeInfo) (map[string]memberStats, map[string]error) {
	c := &ck.overviewStats
	for {
		c.mu.Lock()
		if c.stats != nil && time.Since(c.at) < overviewReuse {
			stats, errs := c.stats, c.errs
			c.mu.Unlock()
			return stats, errs
		}
		if wait := c.inflight; wait != nil {
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return map[string]memberStats{ck.cfg.NodeID: ck.localStats()}, map[string]error{}
			}
		}
		done := make(chan struct{})
		c.inflight = done
		c.mu.Unlock()
		// Not the caller's context: other requests share the result.
		stats, errs := ck.gatherStats(context.Background(), nodes)
		c.mu.Lock()
		c.stats, c.errs, c.at, c.inflight = stats, errs, time.Now(), nil
		c.mu.Unlock()
		close(done)
		return stats, errs
	}
}

// gatherStats asks every live member for its stats in parallel, within
// overviewFetchTimeout.
func (ck *ClusterKit) gatherStats(ctx context.Context, nodes []consensus.NodeInfo) (map[string]memberStats, map[string]error) {
	ctx, cancel := context.WithTimeout(ctx, overviewFetchTimeout)
	defer cancel()
	stats := map[string]memberStats{ck.cfg.NodeID: ck.localStats()}
	errs := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nodes {
		if n.ID == ck.cfg.NodeID {
			continue
		}
		if !live(n.Status) || n.MgmtAddr == "" {
			errs[n.ID] = fmt.Errorf("recorded %s", n.Status)
			continue
		}
		wg.Go(func() {
			s, err := ck.fetchStats(ctx, n.MgmtAddr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[n.ID] = err
				return
			}
			stats[n.ID] = s
		})
	}
	wg.Wait()
	return stats, errs
}

// handleOverview is GET /cluster/overview: everything the dashboard shows,
// in one answer (see docs and /tmp/specs/overview-api.md).
func (ck *ClusterKit) handleOverview(w http.ResponseWriter, r *http.Request) {
	st := ck.raft.State()
	sorted := st.SortedNodes()
	stats, fetchErrs := ck.cachedStats(r.Context(), sorted)
	leaderID, _ := ck.raft.Leader()
	voters := map[string]bool{}
	if servers, err := ck.raft.Servers(); err == nil {
		for _, s := range servers {
			voters[s.ID] = s.Voter
		}
	}
	primaries, replicas := map[string]int{}, map[string]int{}
	for _, p := range st.Partitions {
		if p.Primary != "" {
			primaries[p.Primary]++
		}
		for _, id := range p.Replicas {
			replicas[id]++
		}
	}
	nodes := make([]overviewNode, 0, len(sorted))
	for _, n := range sorted {
		on := overviewNode{ID: n.ID, Name: n.Name, Status: apiStatus(n.Status), Since: n.Since.UTC().Format(time.RFC3339),
			MgmtAddr: n.MgmtAddr, KVAddr: n.KVAddr, Leader: n.ID == leaderID, Voter: voters[n.ID], Draining: n.Draining,
			Primaries: primaries[n.ID], Replicas: replicas[n.ID], Services: decodeServices(n.Services)}
		if s, ok := stats[n.ID]; ok {
			on.Reachable, on.RequestCount, on.ErrorCount, on.UptimeSeconds = true, s.RequestCount, s.ErrorCount, s.UptimeSeconds
		} else if err := fetchErrs[n.ID]; err != nil {
			on.Error = err.Error()
		}
		nodes = append(nodes, on)
	}
	parts := make([]partitionJSON, 0, len(st.Partitions))
	for _, p := range st.Partitions {
		parts = append(parts, toPartitionJSON(st, p))
	}
	health, unhealthy, _ := assessHealth(st)
	if health == "" || leaderID == "" {
		health = HealthCritical
	}
	if unhealthy == nil {
		unhealthy = []string{}
	}
	var leader any
	if leaderID != "" {
		elected := ""
		if t := ck.raft.LeaderSince(); !t.IsZero() {
			elected = t.UTC().Format(time.RFC3339Nano)
		}
		leader = map[string]any{"id": leaderID, "name": st.Nodes[leaderID].Name, "term": ck.raft.Stats().Term, "elected_at": elected}
	}
	events := []eventJSON{}
	for _, e := range ck.RecentEvents() {
		events = append(events, eventJSON{Time: e.Time.UTC().Format(time.RFC3339Nano), Type: e.Type, Node: e.Node,
			Partition: e.Partition, Message: e.Message})
	}
	name := st.Config.Name
	if name == "" {
		name = ck.cfg.ClusterName
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"served_by": ck.cfg.NodeID,
		"time":      time.Now().UTC().Format(time.RFC3339Nano),
		"cluster": map[string]any{"id": st.Config.ID, "name": name, "version": st.Version,
			"partition_count": st.Config.Partitions, "replication_factor": st.Config.ReplicationFactor,
			"min_insync": st.MinCopies()},
		"health":     map[string]any{"state": health, "unhealthy_nodes": unhealthy},
		"leader":     leader,
		"nodes":      nodes,
		"partitions": parts,
		"migrations": migrations(st, stats),
		"events":     events,
	})
}

// migrations merges the copies each primary reports with the table's
// catching-up replicas: a copy in flight shows its progress; a replica
// catching up with no copy reported shows as pending.
func migrations(st *consensus.State, stats map[string]memberStats) []migrationJSON {
	out := []migrationJSON{}
	seen := map[string]bool{}
	for _, n := range st.SortedNodes() {
		for _, c := range stats[n.ID].Copies {
			seen[fmt.Sprintf("%d/%s", c.Partition, c.Replica)] = true
			out = append(out, migrationJSON{Partition: ring.PartitionName(c.Partition), Replica: c.Replica, From: n.ID,
				KeysSent: c.Sent, KeysTotal: c.Total, StartedAt: c.Started.UTC().Format(time.RFC3339Nano), How: c.How})
		}
	}
	for _, p := range st.Partitions {
		for _, r := range p.Replicas {
			if p.IsInSync(r) || seen[fmt.Sprintf("%d/%s", p.ID, r)] {
				continue
			}
			out = append(out, migrationJSON{Partition: ring.PartitionName(p.ID), Replica: r, From: p.Primary, How: "pending"})
		}
	}
	return out
}
