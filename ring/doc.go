// Package ring maps keys to partitions and partitions to the nodes that
// should own them. It is pure computation: no I/O, no clocks, no
// package-level mutable state.
//
// # Key → partition
//
// PartitionOf hashes the key bytes with 64-bit FNV-1a (HashAlgorithm) and
// takes the result modulo the partition count. Every stored key's location
// follows from this, and clients that route keys themselves learn the
// algorithm from the /cluster endpoint's hash_config, so changing the hash
// (or the modulo step) is a data-format break: existing data would no longer
// be found in the partition readers look in. FNV-1a is used because it is
// fast, allocation-light, in the standard library and trivial to reimplement
// in any client language; it does not need to resist adversarial keys.
//
// # Partition → owners
//
// Owners and Assign place partitions on nodes with consistent hashing
// (github.com/serialx/hashring), keyed by PartitionName. The partition count
// is fixed, but nodes come and go; a plain "id mod N" placement would move
// almost every partition whenever N changes, while consistent hashing moves
// only about 1/N of them when one node joins or leaves, and only to or from
// that node. That keeps rebalancing traffic proportional to the change.
// Each node is given many points on the ring so partitions spread evenly;
// the first distinct node clockwise from a partition's point is its primary
// and the following distinct nodes are its replicas.
//
// # Desired versus actual assignment
//
// This package only computes the desired assignment for a given set of
// nodes. The partition table held in Raft is the actual assignment that
// reads and writes follow; a rebalancer compares the two and moves
// partitions over time. Nothing here should be consulted to decide where a
// partition currently lives.
package ring
