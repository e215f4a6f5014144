package node

import (
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/ring"
	"github.com/clusterkit/clusterkit/ui"
)

func writeJSON(w http.ResponseWriter, status int, v any) { httpapi.WriteJSON(w, status, v) }

// writeError answers with code; the status follows from the code, in the
// one mapping both APIs share (httpapi).
func writeError(w http.ResponseWriter, code string, err error) {
	httpapi.WriteError(w, &errcode.Error{Code: code, Message: err.Error()})
}

func (ck *ClusterKit) mgmtHandler() http.Handler {
	r := chi.NewRouter()
	r.NotFound(httpapi.NotFound)
	r.MethodNotAllowed(httpapi.MethodNotAllowed)
	r.Get("/health", ck.handleHealth)
	r.Get("/health/detailed", ck.handleHealthDetailed)
	r.Get("/cluster", ck.handleCluster)
	r.Get("/partitions", ck.handlePartitions)
	r.Get("/partitions/stats", ck.handlePartitionStats)
	r.Get("/partitions/key", ck.handlePartitionForKey)
	r.Get("/metrics", ck.handleMetrics)
	r.Get("/consensus/leader", ck.handleLeader)
	r.Get("/consensus/stats", ck.handleConsensusStats)
	r.Get("/cluster/kv-auth", ck.handleKVAuth)
	r.Get("/cluster/overview", ck.handleOverview)
	r.Get("/ready", ck.handleReady)
	// The dashboard: static pages that poll /cluster/overview.
	r.Handle("/ui/*", ui.Handler())
	r.Get("/ui", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusMovedPermanently) })
	// Mutations, and what only operators may see, need an admin.
	r.Group(func(r chi.Router) {
		r.Use(ck.requireAdmin)
		r.Post("/cluster/leave", ck.handleLeave)
		r.Put("/cluster/kv-auth", ck.handleSetKVAuth)
		r.Get("/cluster/keyring", ck.handleKeyring)
		r.Post("/cluster/keyring/{op}", ck.handleKeyringOp)
		r.Get("/tokens", ck.handleTokens)
		r.Post("/tokens", ck.handleCreateToken)
		r.Delete("/tokens/{id}", ck.handleDeleteToken)
		if ck.cfg.Pprof {
			r.HandleFunc("/debug/pprof/*", pprof.Index)
			r.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			r.HandleFunc("/debug/pprof/profile", pprof.Profile)
			r.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			r.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
	})
	return r
}

func (ck *ClusterKit) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "message": "healthy"})
}

// healthy means this node knows a Raft leader and the cluster is set up.
func (ck *ClusterKit) healthy() bool {
	id, _ := ck.raft.Leader()
	return id != "" && ck.raft.State().Initialized()
}

func (ck *ClusterKit) lastSync() string {
	t := ck.raft.FSMUpdated()
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func (ck *ClusterKit) handleHealthDetailed(w http.ResponseWriter, r *http.Request) {
	st := ck.raft.State()
	healthy := ck.healthy()
	status := http.StatusOK
	if !healthy {
		status = http.StatusServiceUnavailable
	}
	up := time.Since(ck.started)
	writeJSON(w, status, map[string]any{
		"healthy":         healthy,
		"node_id":         ck.cfg.NodeID,
		"node_name":       ck.cfg.NodeName,
		"is_leader":       ck.raft.IsLeader(),
		"node_count":      ck.ClusterNodes(),
		"partition_count": st.Config.Partitions,
		"raft_state":      ck.raft.RaftState(),
		"last_sync":       ck.lastSync(),
		"uptime":          up.Round(time.Second).String(),
		"uptime_seconds":  int(up.Seconds()),
	})
}

// apiStatus maps recorded health to the contract's words.
func apiStatus(s consensus.NodeStatus) string {
	if s == consensus.StatusAlive {
		return "active"
	}
	return string(s)
}

type nodeJSON struct {
	ID         string `json:"id"`
	IP         string `json:"ip"`
	Port       int    `json:"port"`
	Name       string `json:"name"`
	Status     string `json:"status"`
	KVAddr     string `json:"kv_addr"`
	RaftAddr   string `json:"raft_addr"`
	GossipAddr string `json:"gossip_addr"`
	Since      string `json:"since"`
	// Services is the member's SERVICES metadata ({} when none).
	Services map[string]string `json:"services"`
}

type partitionJSON struct {
	ID       string   `json:"id"`
	Primary  string   `json:"primary_node"`
	Replicas []string `json:"replica_nodes"`
	InSync   []string `json:"in_sync_replicas"`
	// CatchingUp lists replicas still receiving their copy (a migration
	// or a returning node in progress).
	CatchingUp []string `json:"catching_up"`
	Epoch      uint64   `json:"epoch"`
	// State is stable, catching-up, under-replicated or unavailable.
	State string `json:"state"`
}

func toPartitionJSON(st *consensus.State, p consensus.Partition) partitionJSON {
	out := partitionJSON{ID: ring.PartitionName(p.ID), Primary: p.Primary, Replicas: []string{}, InSync: []string{},
		CatchingUp: []string{}, Epoch: p.Epoch, State: "stable"}
	out.Replicas = append(out.Replicas, p.Replicas...)
	out.InSync = append(out.InSync, p.InSync...)
	for _, r := range p.Replicas {
		if !p.IsInSync(r) {
			out.CatchingUp = append(out.CatchingUp, r)
		}
	}
	live := 0
	for _, n := range st.Nodes {
		if n.Status == consensus.StatusAlive || n.Status == consensus.StatusSuspect {
			live++
		}
	}
	primary, ok := st.Nodes[p.Primary]
	switch {
	case !ok || primary.Status == consensus.StatusDead || primary.Status == consensus.StatusLeft:
		out.State = "unavailable"
	case len(out.CatchingUp) > 0:
		out.State = "catching-up"
	case 1+len(p.InSync) < min(st.Config.ReplicationFactor, live):
		out.State = "under-replicated"
	}
	return out
}

func toNodeJSON(n consensus.NodeInfo) nodeJSON {
	_, port, _ := net.SplitHostPort(n.MgmtAddr)
	pn, _ := strconv.Atoi(port)
	return nodeJSON{ID: n.ID, IP: n.MgmtAddr, Port: pn, Name: n.Name, Status: apiStatus(n.Status),
		KVAddr: n.KVAddr, RaftAddr: n.RaftAddr, GossipAddr: n.GossipAddr, Since: n.Since.UTC().Format(time.RFC3339),
		Services: decodeServices(n.Services)}
}

func (ck *ClusterKit) handleCluster(w http.ResponseWriter, r *http.Request) {
	st := ck.raft.State()
	nodes := []nodeJSON{}
	for _, n := range st.SortedNodes() {
		nodes = append(nodes, toNodeJSON(n))
	}
	parts := map[string]partitionJSON{}
	for _, p := range st.Partitions {
		parts[ring.PartitionName(p.ID)] = toPartitionJSON(st, p)
	}
	name := st.Config.Name
	if name == "" {
		name = ck.cfg.ClusterName
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"cluster": map[string]any{
			"id":            st.Config.ID,
			"name":          name,
			"nodes":         nodes,
			"partition_map": map[string]any{"partitions": parts},
			"config": map[string]any{
				"cluster_name":       name,
				"partition_count":    st.Config.Partitions,
				"replication_factor": st.Config.ReplicationFactor,
				"min_insync":         st.MinCopies(),
			},
			"version": st.Version,
		},
		"hash_config": map[string]any{
			"algorithm": ring.HashAlgorithm,
			"format":    ring.PartitionFormat,
			"modulo":    st.Config.Partitions,
			"seed":      0,
			// A key holding "{…}" is hashed by the text in its first
			// braces (clusters bootstrapped with hash tags).
			"hash_tags": st.Config.HashTags,
		},
	})
}

func (ck *ClusterKit) handlePartitions(w http.ResponseWriter, r *http.Request) {
	st := ck.raft.State()
	out := make([]partitionJSON, 0, len(st.Partitions))
	for _, p := range st.Partitions {
		out = append(out, toPartitionJSON(st, p))
	}
	moving := 0
	for _, p := range out {
		moving += len(p.CatchingUp)
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": len(out), "partitions": out, "version": st.Version,
		"copies_in_progress": moving})
}

func (ck *ClusterKit) handlePartitionStats(w http.ResponseWriter, r *http.Request) {
	st := ck.raft.State()
	primaries := map[string]int{}
	replicas := map[string]int{}
	for id, n := range st.Nodes {
		if n.Status != consensus.StatusLeft {
			primaries[id], replicas[id] = 0, 0
		}
	}
	for _, p := range st.Partitions {
		if p.Primary != "" {
			primaries[p.Primary]++
		}
		for _, n := range p.Replicas {
			replicas[n]++
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"total_partitions":    st.Config.Partitions,
		"partitions_per_node": primaries,
		"replicas_per_node":   replicas,
	})
}

func (ck *ClusterKit) handlePartitionForKey(w http.ResponseWriter, r *http.Request) {
	q, err := httpapi.Query(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	key := q.Get("key")
	if key == "" {
		writeError(w, errcode.MissingKey, errors.New("query parameter key is required"))
		return
	}
	st := ck.raft.State()
	if !st.Initialized() {
		writeError(w, errcode.Unavailable, errors.New("cluster is not initialised yet"))
		return
	}
	p, _ := st.Partition(keyPartition(st, key))
	out := toPartitionJSON(st, p)
	writeJSON(w, http.StatusOK, map[string]any{
		"id": out.ID, "primary_node": out.Primary, "replica_nodes": out.Replicas,
		"in_sync_replicas": out.InSync, "epoch": out.Epoch, "key": key,
	})
}

func (ck *ClusterKit) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.Header.Get("Accept"), "application/json") || r.URL.Query().Get("format") == "json" {
		reqs, errs := ck.kv.Counts()
		writeJSON(w, http.StatusOK, map[string]any{
			"node_count":      ck.ClusterNodes(),
			"partition_count": ck.raft.State().Config.Partitions,
			"request_count":   reqs,
			"error_count":     errs,
			"last_sync":       ck.lastSync(),
			"is_leader":       ck.raft.IsLeader(),
			"raft_state":      ck.raft.RaftState(),
			"uptime_seconds":  int(time.Since(ck.started).Seconds()),
			"local_keys":      ck.eng.LocalKeys(),
			// The partition copies this node sends as primary, for
			// the migrations of GET /cluster/overview.
			"copies": ck.eng.Copies(),
		})
		return
	}
	promhttp.HandlerFor(ck.metrics, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

func (ck *ClusterKit) handleLeader(w http.ResponseWriter, r *http.Request) {
	id, addr := ck.raft.Leader()
	if id == "" {
		writeError(w, errcode.NoLeader, errors.New("no raft leader is known right now"))
		return
	}
	n := ck.raft.State().Nodes[id]
	ip := n.MgmtAddr
	if ip == "" {
		ip = addr
	}
	elected := ""
	if t := ck.raft.LeaderSince(); !t.IsZero() {
		elected = t.UTC().Format(time.RFC3339Nano)
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"leader_id": id, "leader_name": n.Name, "leader_ip": ip, "leader_raft_addr": addr,
		"term": ck.raft.Stats().Term, "elected_at": elected,
	})
}

func (ck *ClusterKit) handleConsensusStats(w http.ResponseWriter, r *http.Request) {
	s := ck.raft.Stats()
	writeJSON(w, http.StatusOK, map[string]any{
		"state": s.State, "term": s.Term, "last_log_index": s.LastLogIndex, "last_log_term": s.LastLogTerm,
		"commit_index": s.CommitIndex, "applied_index": s.AppliedIndex, "num_peers": s.NumPeers,
		"leader": s.LeaderID, "leader_addr": s.LeaderAddress, "last_contact": s.LastContact,
	})
}
