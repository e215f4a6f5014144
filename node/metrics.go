package node

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/clusterkit/clusterkit/consensus"
)

// newMetrics builds this node's Prometheus registry. Values are read when
// scraped, from the same sources the JSON endpoints use, so the two forms
// never disagree.
func (ck *ClusterKit) newMetrics() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	gauge := func(name, help string, fn func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "clusterkit", Name: name, Help: help}, fn))
	}
	counter := func(name, help string, fn func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "clusterkit", Name: name, Help: help}, fn))
	}
	gauge("nodes", "Members that are alive or suspect.", func() float64 { return float64(ck.ClusterNodes()) })
	gauge("partitions", "Partitions in the cluster.", func() float64 { return float64(ck.raft.State().Config.Partitions) })
	gauge("local_keys", "Keys stored on this node for the partitions it owns.", func() float64 { return float64(ck.eng.LocalKeys()) })
	gauge("is_leader", "1 if this node is the Raft leader.", func() float64 { return b2f(ck.raft.IsLeader()) })
	gauge("raft_term", "Current Raft term.", func() float64 { return float64(ck.raft.Stats().Term) })
	gauge("raft_applied_index", "Last Raft index applied to the FSM.", func() float64 { return float64(ck.raft.Stats().AppliedIndex) })
	gauge("table_version", "Version of the partition table.", func() float64 { return float64(ck.raft.State().Version) })
	gauge("uptime_seconds", "Seconds since this node started.", func() float64 { return timeSince(ck.started) })
	gauge("primary_partitions", "Partitions this node is primary of.", func() float64 {
		n := 0
		for _, p := range ck.raft.State().Partitions {
			if p.Primary == ck.cfg.NodeID {
				n++
			}
		}
		return float64(n)
	})
	gauge("under_replicated_partitions", "Partitions with fewer in-sync copies than the replication factor.", func() float64 {
		return float64(underReplicated(ck.raft.State()))
	})
	counter("kv_requests_total", "Client KV requests served by this node.", func() float64 { r, _ := ck.kv.Counts(); return float64(r) })
	counter("kv_errors_total", "Client KV requests that ended in an error (404 excluded).", func() float64 { _, e := ck.kv.Counts(); return float64(e) })
	return reg
}

func underReplicated(st *consensus.State) int {
	n := 0
	for _, p := range st.Partitions {
		if 1+len(p.InSync) < st.Config.ReplicationFactor {
			n++
		}
	}
	return n
}
