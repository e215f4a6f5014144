// Package peer is everything nodes say to each other, both ends of it: the
// internal port (RAFT_ADDR) with its handshake, the Raft stream layer on it,
// multiplexed RPC for the data plane (forwarded writes and reads,
// replication, leases, digests) and the control plane (commands for the
// Raft leader, drains, member lookups for a joining node), streamed
// partition copies, and the short circuit that serves a call addressed to
// this node without the network.
//
// A connection starts with the handshake in handshake.go: TLS rooted in the
// cluster key when there is one, then a selector byte and a hello that
// carries the cluster name. Nothing is served to a peer that fails it.
package peer
