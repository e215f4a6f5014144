package node

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/ring"
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
	gauge("watch_streams", "Watch streams open on this node.", func() float64 { return float64(ck.eng.Watchers()) })
	counter("watch_streams_opened_total", "Watch streams opened on this node.", func() float64 { return float64(ck.eng.Stats().WatchesOpened) })
	counter("watch_streams_cut_total", "Watch streams ended because they fell too far behind.", func() float64 { return float64(ck.eng.Stats().WatchersCut) })
	counter("ttl_sweeps_total", "Expiry sweep rounds that deleted expired keys (on partitions this node leads).", func() float64 { return float64(ck.eng.Stats().Sweeps) })
	counter("ttl_expired_keys_total", "Expired keys deleted by this node's sweep, each a replicated delete.", func() float64 { return float64(ck.eng.Stats().ExpiredSwept) })
	counter("hook_events_dropped_total", "Embedding-API hook events dropped because the handlers fell behind (the queue holds 1024).",
		func() float64 { return float64(ck.DroppedHookEvents()) })
	reg.MustRegister(partitionCollector{ck})
	return reg
}

// partitionCollector reports, at each scrape, the state of every partition
// as this node's table has it, and this node's own copies: their revision
// (a replica's lag is its primary's revision minus its own), how long
// since a replica heard from its primary, and the copies in flight.
type partitionCollector struct{ ck *ClusterKit }

var (
	partStateDesc = prometheus.NewDesc("clusterkit_partition_state",
		"1 for the state each partition is in (stable, catching-up, under-replicated, unavailable), as this node's table has it.",
		[]string{"partition", "state"}, nil)
	partInSyncDesc = prometheus.NewDesc("clusterkit_partition_in_sync_copies",
		"Copies of each partition in its in-sync set, the primary's included.", []string{"partition"}, nil)
	partEpochDesc = prometheus.NewDesc("clusterkit_partition_epoch",
		"Epoch of each partition (it moves with every change of primary).", []string{"partition"}, nil)
	copyRevisionDesc = prometheus.NewDesc("clusterkit_copy_revision",
		"The last revision applied to this node's copy of a partition; a replica's lag is its primary's value minus its own.",
		[]string{"partition", "role"}, nil)
	copyKeysDesc = prometheus.NewDesc("clusterkit_copy_keys",
		"Keys in this node's copy of a partition.", []string{"partition", "role"}, nil)
	sincePrimaryDesc = prometheus.NewDesc("clusterkit_replica_since_primary_seconds",
		"On a replica, seconds since its primary last renewed its lease or sent a write.", []string{"partition"}, nil)
	copyRemainingDesc = prometheus.NewDesc("clusterkit_copy_remaining",
		"Keys (full copy) or writes (tail catch-up) this node, as primary, still has to send to a catching-up replica.",
		[]string{"partition", "replica", "how"}, nil)
)

func (partitionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{partStateDesc, partInSyncDesc, partEpochDesc, copyRevisionDesc, copyKeysDesc, sincePrimaryDesc, copyRemainingDesc} {
		ch <- d
	}
}

func (c partitionCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.ck.raft.State()
	for _, p := range st.Partitions {
		name := ring.PartitionName(p.ID)
		ch <- prometheus.MustNewConstMetric(partStateDesc, prometheus.GaugeValue, 1, name, toPartitionJSON(st, p).State)
		ch <- prometheus.MustNewConstMetric(partInSyncDesc, prometheus.GaugeValue, float64(1+len(p.InSync)), name)
		ch <- prometheus.MustNewConstMetric(partEpochDesc, prometheus.GaugeValue, float64(p.Epoch), name)
	}
	for _, s := range c.ck.eng.PartitionStatuses() {
		name := ring.PartitionName(s.Partition)
		ch <- prometheus.MustNewConstMetric(copyRevisionDesc, prometheus.GaugeValue, float64(s.Revision), name, s.Role)
		ch <- prometheus.MustNewConstMetric(copyKeysDesc, prometheus.GaugeValue, float64(s.Keys), name, s.Role)
		if s.Role == "replica" && s.SincePrimary >= 0 {
			ch <- prometheus.MustNewConstMetric(sincePrimaryDesc, prometheus.GaugeValue, s.SincePrimary.Seconds(), name)
		}
	}
	for _, cp := range c.ck.eng.Copies() {
		ch <- prometheus.MustNewConstMetric(copyRemainingDesc, prometheus.GaugeValue, float64(max(cp.Total-cp.Sent, 0)),
			ring.PartitionName(cp.Partition), cp.Replica, cp.How)
	}
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
