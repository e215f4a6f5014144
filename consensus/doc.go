// Package consensus holds the cluster's metadata in a Raft-replicated state
// machine: the members and their health, the cluster configuration fixed at
// bootstrap, and the partition table (primary, replicas, in-sync set and
// epoch per partition).
//
// The FSM is thin and deterministic: a one-byte command type selects a
// handler from a dispatch table, handlers validate (versions, epochs) and
// store, and an unknown type panics rather than let replicas diverge. The
// leader decides what changes (see package node); the FSM only checks and
// records. Raft's log and stable store live in raft-boltdb under
// DATA_DIR/raft, with file snapshots beside them.
package consensus
