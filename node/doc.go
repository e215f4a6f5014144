// Package node composes a ClusterKit node: it reads the configuration,
// binds the four listeners, opens storage, Raft and gossip, runs the Raft
// leader's reconcile loop (gossip events → Raft commands, the Consul
// pattern), serves the management API and the KV API, prints the status
// block, and shuts everything down in order.
//
// It is also the package to import to embed ClusterKit in a Go program: New,
// Start, Shutdown, and GetNodesForKey, AmIResponsibleFor and WatchPartitions
// to ask where keys live.
package node
