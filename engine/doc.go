// Package engine is a node's data plane: primary/backup replication of the
// partitions under a partition table that someone else (Raft, behind the
// Router and Control interfaces) decides.
//
// Any node accepts any key. It looks the key's partition up in its copy of
// the table and sends the operation to the partition's primary (one hop,
// tagged with the partition epoch it used). The primary orders the writes of
// a partition with sequence numbers in rounds, persists each round, sends it
// to every in-sync replica in parallel and answers only when all of them have
// persisted it; a replica that fails is first removed from the in-sync set
// through Control. Reads are answered by the primary under a read lease from
// its in-sync replicas. Replicas that are not in sync get a full copy of the
// partition; a new primary reconciles its replicas before it serves.
//
// The package knows the ring and the store; it does not know Raft, gossip
// or HTTP: the node package satisfies its interfaces, and package peer
// carries its calls to other nodes (Transport) and serves theirs to it
// (the Serve methods).
package engine
