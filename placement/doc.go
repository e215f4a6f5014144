// Package placement is the pure partition planner: from the replicated
// cluster state it computes the partition rows that must change so that the
// actual assignment (the table in Raft) moves toward the desired one (the
// ring's), without ever promoting a copy that may miss an acknowledged
// write. It does no I/O; the Raft leader proposes its result and the FSM
// re-checks the safety rules.
package placement
