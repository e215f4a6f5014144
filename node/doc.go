// Package node composes a ClusterKit node: it reads the configuration,
// binds the four listeners, opens storage, Raft and gossip, runs the Raft
// leader's reconcile loop (gossip events → Raft commands, the Consul
// pattern), serves the management API and the KV API, prints the status
// block, and shuts everything down in order.
//
// It is also the package to import to embed ClusterKit in a Go program:
// New, Start, Shutdown; GetNodesForKey, AmIResponsibleFor, GetPartition,
// GetPrimary, GetReplicas, IsPrimary, IsReplica and Members to ask where
// keys live and who serves them (with each member's Config.Services);
// and hooks (OnNodeJoin, OnNodeRejoin, OnNodeLeave, OnPartitionChange,
// OnRebalanceStart, OnRebalanceComplete, OnClusterHealthChange, and the
// older WatchPartitions) to react to changes. The hooks are derived from
// the replicated cluster state (events.go) and run on a goroutine of their
// own behind a bounded queue (hooks.go). examples/sessions is a service
// built this way.
package node
