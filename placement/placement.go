package placement

import (
	"slices"
	"time"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/ring"
)

// eligible reports whether a node may keep its partitions: alive or suspect, or
// dead for less than the failover grace (gossip may be wrong; a node that
// stays dead loses its partitions, one that comes back loses nothing).
func eligible(n consensus.NodeInfo, now time.Time, grace time.Duration) bool {
	switch n.Status {
	case consensus.StatusAlive, consensus.StatusSuspect:
		return true
	case consensus.StatusDead:
		return now.Sub(n.Since) < grace
	}
	return false
}

// Plan computes the partition rows that must change, from the
// current state. It is pure: the leader proposes its result through Raft
// and the FSM re-checks the safety rules.
//
// The ring gives the desired owners over the eligible nodes that are not
// draining; each row moves
// toward it without ever losing an acknowledged write:
//   - a primary that is no longer eligible is replaced by an in-sync replica
//     (with a new epoch); with no in-sync replica left the row stays as it
//     is, unavailable, rather than promote a copy that may be missing data;
//   - desired owners that are missing join as replicas, out of sync; the
//     primary copies the partition to them and then marks them in sync;
//   - the primary role moves to the desired primary only once that node is
//     in sync, and surplus owners are dropped only once every desired
//     replica is in sync.
func Plan(st *consensus.State, now time.Time, grace time.Duration) []consensus.Partition {
	if !st.Initialized() {
		return nil
	}
	// nodes may own partitions in the future; keep may go on owning the
	// copies they have (a draining node keeps serving until its partitions
	// have moved).
	var nodes, keep []string
	for id, n := range st.Nodes {
		if eligible(n, now, grace) {
			keep = append(keep, id)
			if !n.Draining {
				nodes = append(nodes, id)
			}
		}
	}
	if len(nodes) == 0 {
		return nil
	}
	slices.Sort(nodes)
	ok := func(id string) bool { return slices.Contains(keep, id) }
	rf := min(st.Config.ReplicationFactor, len(nodes))
	desired := ring.Assign(nodes, st.Config.Partitions, rf)
	var out []consensus.Partition
	for i, cur := range st.Partitions {
		next := planOne(cur, desired[i], ok)
		if !samePartition(cur, next) {
			out = append(out, next)
		}
	}
	return out
}

func without(list []string, drop func(string) bool) []string {
	out := make([]string, 0, len(list))
	for _, n := range list {
		if !drop(n) {
			out = append(out, n)
		}
	}
	return out
}

func planOne(cur consensus.Partition, desired []string, eligible func(string) bool) consensus.Partition {
	if len(desired) == 0 {
		return cur
	}
	next := consensus.Partition{ID: cur.ID, Primary: cur.Primary, Epoch: cur.Epoch,
		Replicas: slices.Clone(cur.Replicas), InSync: slices.Clone(cur.InSync)}
	if next.Primary == "" {
		// First assignment: nothing is stored yet, so every owner starts
		// out of sync and the primary copies its (empty) partition to them.
		next.Primary = desired[0]
		next.Replicas = slices.Clone(desired[1:])
		next.InSync = nil
		next.Epoch++
		return next
	}
	notEligible := func(n string) bool { return !eligible(n) }
	next.Replicas = without(next.Replicas, notEligible)
	next.InSync = without(next.InSync, notEligible)

	promote := func(n string) {
		old := next.Primary
		next.Primary = n
		isN := func(x string) bool { return x == n }
		next.Replicas = without(next.Replicas, isN)
		next.InSync = without(next.InSync, isN)
		if eligible(old) {
			// A graceful hand-off: the old primary holds every
			// acknowledged write and stays an in-sync replica.
			next.Replicas = append([]string{old}, next.Replicas...)
			next.InSync = append([]string{old}, next.InSync...)
		}
		next.Epoch++
	}

	if !eligible(next.Primary) {
		candidate := ""
		for _, d := range desired {
			if slices.Contains(next.InSync, d) {
				candidate = d
				break
			}
		}
		if candidate == "" && len(next.InSync) > 0 {
			candidate = next.InSync[0]
		}
		if candidate == "" {
			// Unavailable until a copy returns. The row is kept exactly as
			// it is: an in-sync replica that is down now still holds every
			// acknowledged write and must stay promotable when it returns.
			return cur
		}
		promote(candidate)
	}
	for _, d := range desired {
		if d != next.Primary && !slices.Contains(next.Replicas, d) {
			next.Replicas = append(next.Replicas, d)
		}
	}
	if next.Primary != desired[0] && slices.Contains(next.InSync, desired[0]) {
		promote(desired[0])
	}
	allInSync := true
	for _, d := range desired {
		if d != next.Primary && !slices.Contains(next.InSync, d) {
			allInSync = false
		}
	}
	if allInSync {
		surplus := func(n string) bool { return !slices.Contains(desired, n) }
		next.Replicas = without(next.Replicas, surplus)
		next.InSync = without(next.InSync, surplus)
	}
	return next
}

func samePartition(a, b consensus.Partition) bool {
	return a.ID == b.ID && a.Primary == b.Primary && a.Epoch == b.Epoch &&
		slices.Equal(a.Replicas, b.Replicas) && slices.Equal(a.InSync, b.InSync)
}
