// Package kvapi serves the key-value API and carries the data plane between
// nodes.
//
// Any node accepts any key. The node looks the key's partition up in its copy
// of the partition table and sends the operation to the partition's primary
// (one hop, tagged with the partition epoch it used). The primary orders the
// writes of a partition with a sequence number, persists each one, sends it to
// every in-sync replica in parallel and answers only when all of them have
// persisted it; a replica that fails is first removed from the in-sync set
// through the cluster's configuration manager (Raft, behind the Control
// interface). Reads are answered by the primary. Node-to-node traffic uses
// the /internal/v1 routes, which clients should not call.
//
// The package knows the ring and the store; it does not know Raft or gossip:
// the node package satisfies the Router, Control and Info interfaces.
package kvapi
