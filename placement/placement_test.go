package placement

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/ring"
)

// testGrace is the failover grace every planner test uses.
const testGrace = 2 * time.Second

// testNow is the fixed clock of the planner tests: the planner sees time
// only through Since+grace, so a constant keeps every case reproducible.
func testNow() time.Time { return time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC) }

// nodeInfo returns a node whose status began ago before testNow.
func nodeInfo(id string, status consensus.NodeStatus, ago time.Duration) consensus.NodeInfo {
	return consensus.NodeInfo{ID: id, Name: id, MgmtAddr: id + ":8080", KVAddr: id + ":9080",
		RaftAddr: id + ":9001", GossipAddr: id + ":10001", Status: status, Since: testNow().Add(-ago)}
}

func aliveNode(id string) consensus.NodeInfo { return nodeInfo(id, consensus.StatusAlive, time.Hour) }

// newState returns an initialised state with unassigned rows, as the FSM
// holds it right after CmdInit.
func newState(partitions, rf int, nodes ...consensus.NodeInfo) *consensus.State {
	st := &consensus.State{
		Config:     consensus.ClusterConfig{ID: "test", Name: "test", Partitions: partitions, ReplicationFactor: rf},
		Nodes:      map[string]consensus.NodeInfo{},
		Partitions: make([]consensus.Partition, partitions),
		Version:    1,
	}
	for i := range st.Partitions {
		st.Partitions[i].ID = i
	}
	for _, n := range nodes {
		st.Nodes[n.ID] = n
	}
	return st
}

func cloneRow(p consensus.Partition) consensus.Partition {
	p.Replicas = slices.Clone(p.Replicas)
	p.InSync = slices.Clone(p.InSync)
	return p
}

// cloneState deep-copies st: states are immutable once handed to the
// planner, exactly as the FSM treats them.
func cloneState(st *consensus.State) *consensus.State {
	c := *st
	c.Nodes = maps.Clone(st.Nodes)
	c.Partitions = make([]consensus.Partition, len(st.Partitions))
	for i, p := range st.Partitions {
		c.Partitions[i] = cloneRow(p)
	}
	return &c
}

// withNode returns a copy of st with n recorded (as CmdUpsertNode would).
func withNode(st *consensus.State, n consensus.NodeInfo) *consensus.State {
	c := cloneState(st)
	c.Nodes[n.ID] = n
	c.Version++
	return c
}

// applyRows returns st with the planned rows stored, as the FSM would.
func applyRows(st *consensus.State, rows []consensus.Partition) *consensus.State {
	c := cloneState(st)
	for _, p := range rows {
		c.Partitions[p.ID] = cloneRow(p)
	}
	c.Version++
	return c
}

// markAllInSync plays the data plane: every primary finishes copying to its
// out-of-sync replicas and marks them in sync (CmdExpandInSync).
func markAllInSync(st *consensus.State) *consensus.State {
	c := cloneState(st)
	for i, p := range c.Partitions {
		for _, r := range p.Replicas {
			if !slices.Contains(p.InSync, r) {
				c.Partitions[i].InSync = append(c.Partitions[i].InSync, r)
			}
		}
	}
	c.Version++
	return c
}

// inSyncCopies counts the copies known to hold every acknowledged write.
func inSyncCopies(p consensus.Partition) int {
	n := len(p.InSync)
	if p.Primary != "" {
		n++
	}
	return n
}

// canOwn is the test's own statement of eligibility (alive or suspect, or
// dead for less than the grace), kept apart from the planner's so a change
// to one is caught by the other.
func canOwn(st *consensus.State, id string) bool {
	n, ok := st.Nodes[id]
	if !ok {
		return false
	}
	switch n.Status {
	case consensus.StatusAlive, consensus.StatusSuspect:
		return true
	case consensus.StatusDead:
		return testNow().Sub(n.Since) < testGrace
	}
	return false
}

// desiredOf is the ring's desired assignment over st's eligible nodes.
func desiredOf(st *consensus.State) [][]string {
	var nodes []string
	for id := range st.Nodes {
		if canOwn(st, id) {
			nodes = append(nodes, id)
		}
	}
	return ring.Assign(nodes, st.Config.Partitions, min(st.Config.ReplicationFactor, len(nodes)))
}

func mustApply(t *testing.T, f *consensus.FSM, ct consensus.CommandType, body any) {
	t.Helper()
	cmd, err := consensus.Encode(ct, body)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ApplyCommand(cmd); err != nil {
		t.Fatalf("preparing FSM: %s refused: %v", ct, err)
	}
}

// fsmFrom builds a real FSM holding the same cluster state as st, through
// the same commands the leader would propose.
func fsmFrom(t *testing.T, st *consensus.State) *consensus.FSM {
	t.Helper()
	f := consensus.NewFSM()
	mustApply(t, f, consensus.CmdInit, consensus.InitCmd{Config: st.Config})
	for _, id := range slices.Sorted(maps.Keys(st.Nodes)) {
		mustApply(t, f, consensus.CmdUpsertNode, consensus.UpsertNodeCmd{Node: st.Nodes[id]})
	}
	// Rows first without their in-sync sets, which only grow through
	// ExpandInSync (as when a primary has copied a partition to a replica).
	var rows []consensus.Partition
	for _, p := range st.Partitions {
		if p.Primary != "" || len(p.Replicas) > 0 || p.Epoch > 0 {
			row := p
			row.InSync = nil
			rows = append(rows, row)
		}
	}
	if len(rows) > 0 {
		mustApply(t, f, consensus.CmdSetPartition, consensus.SetPartitionsCmd{ExpectVersion: f.State().Version, Partitions: rows})
	}
	for _, p := range st.Partitions {
		for _, n := range p.InSync {
			mustApply(t, f, consensus.CmdExpandInSync, consensus.InSyncCmd{Partition: p.ID, Epoch: p.Epoch, Node: n})
		}
	}
	return f
}

func sameRow(a, b consensus.Partition) bool {
	// slices.Equal treats nil and empty alike, as JSON round trips do.
	return a.ID == b.ID && a.Primary == b.Primary && a.Epoch == b.Epoch &&
		slices.Equal(a.Replicas, b.Replicas) && slices.Equal(a.InSync, b.InSync)
}

// checkRowSafety asserts the rules every planned row must keep, whatever the
// state: they are what stops the planner from losing acknowledged writes.
func checkRowSafety(t *testing.T, st *consensus.State, cur, next consensus.Partition) {
	t.Helper()
	if next.ID != cur.ID {
		t.Fatalf("row for partition %d planned as partition %d", cur.ID, next.ID)
	}
	if next.Primary == "" {
		t.Errorf("partition %d: plan unassigns the primary: %+v -> %+v", cur.ID, cur, next)
	}
	if next.Epoch < cur.Epoch {
		t.Errorf("partition %d: epoch goes back %d -> %d", cur.ID, cur.Epoch, next.Epoch)
	}
	if next.Primary != cur.Primary {
		// A new primary must hold every acknowledged write: only an
		// in-sync replica qualifies (first assignment has none to hold).
		if cur.Primary != "" && !cur.IsInSync(next.Primary) {
			t.Errorf("partition %d: promotes %s, not in the old in-sync set %v", cur.ID, next.Primary, cur.InSync)
		}
		if next.Epoch != cur.Epoch+1 {
			t.Errorf("partition %d: primary %q -> %q with epoch %d -> %d, want +1", cur.ID, cur.Primary, next.Primary, cur.Epoch, next.Epoch)
		}
		if !canOwn(st, next.Primary) {
			t.Errorf("partition %d: promotes ineligible node %s", cur.ID, next.Primary)
		}
	} else if next.Epoch != cur.Epoch {
		// Epochs fence off old primaries; bumping one without a new
		// primary would reject in-flight writes for nothing.
		t.Errorf("partition %d: epoch %d -> %d with the same primary %s", cur.ID, cur.Epoch, next.Epoch, cur.Primary)
	}
	// Only the data plane may declare a copy in sync; the planner may only
	// keep in-sync replicas or demote the old primary to one.
	for _, n := range next.InSync {
		if !cur.IsInSync(n) && n != cur.Primary {
			t.Errorf("partition %d: planner marked %s in sync: %+v -> %+v", cur.ID, n, cur, next)
		}
	}
	seen := map[string]bool{next.Primary: true}
	for _, r := range next.Replicas {
		if seen[r] {
			t.Errorf("partition %d: owner %s listed twice: %+v", cur.ID, r, next)
		}
		seen[r] = true
	}
}

// plan runs the planner on st and checks its output against the safety rules
// and against a real FSM holding the same state: the leader proposes the
// plan as one CmdSetPartition, and a plan the FSM refuses would stall
// reconciliation forever.
func plan(t *testing.T, st *consensus.State) []consensus.Partition {
	t.Helper()
	rows := Plan(st, testNow(), testGrace)
	seen := map[int]bool{}
	for _, p := range rows {
		cur, ok := st.Partition(p.ID)
		if !ok {
			t.Fatalf("plan names partition %d of %d", p.ID, len(st.Partitions))
		}
		if seen[p.ID] {
			t.Fatalf("plan changes partition %d twice", p.ID)
		}
		seen[p.ID] = true
		if sameRow(cur, p) {
			t.Errorf("plan contains the unchanged row %+v", p)
		}
		checkRowSafety(t, st, cur, p)
	}
	if len(rows) == 0 {
		return rows
	}
	f := fsmFrom(t, st)
	cmd, err := consensus.Encode(consensus.CmdSetPartition, consensus.SetPartitionsCmd{ExpectVersion: f.State().Version, Partitions: rows})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ApplyCommand(cmd); err != nil {
		t.Fatalf("FSM refuses the plan: %v\nplan: %+v", err, rows)
	}
	want := applyRows(st, rows)
	for i, p := range f.State().Partitions {
		if !sameRow(p, want.Partitions[i]) {
			t.Fatalf("FSM stored %+v, planner meant %+v", p, want.Partitions[i])
		}
	}
	return rows
}

// step is one round of converge: the state it was planned from and the plan.
type step struct {
	before *consensus.State
	rows   []consensus.Partition
}

// converge runs the leader/data-plane loop "plan, apply, every primary
// catches its replicas up" until the plan is empty, and returns the final
// state and the steps taken. A planner that never settles would make the
// leader propose forever, so the loop is bounded.
func converge(t *testing.T, st *consensus.State) (*consensus.State, []step) {
	t.Helper()
	const maxSteps = 10
	var steps []step
	for range maxSteps {
		rows := plan(t, st)
		if len(rows) == 0 {
			return st, steps
		}
		steps = append(steps, step{before: st, rows: rows})
		st = markAllInSync(applyRows(st, rows))
	}
	t.Fatalf("planner did not settle after %d steps; last plan: %+v", maxSteps, steps[len(steps)-1].rows)
	return nil, nil
}

// assertDesired checks that st is exactly the ring's desired assignment:
// the desired primary, the desired replicas as a set, all of them in sync.
func assertDesired(t *testing.T, st *consensus.State) {
	t.Helper()
	desired := desiredOf(st)
	for i, p := range st.Partitions {
		d := desired[i]
		if p.Primary != d[0] {
			t.Errorf("partition %d: primary %s, desired %s", i, p.Primary, d[0])
		}
		if !sameSet(p.Replicas, d[1:]) || !sameSet(p.InSync, d[1:]) {
			t.Errorf("partition %d: replicas %v in sync %v, desired %v all in sync", i, p.Replicas, p.InSync, d[1:])
		}
		if got := 1 + len(p.Replicas); got != len(d) {
			t.Errorf("partition %d: %d copies, want %d", i, got, len(d))
		}
	}
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

// convergedState returns a cluster of the given alive nodes whose table has
// settled on the desired assignment.
func convergedState(t *testing.T, partitions, rf int, ids ...string) *consensus.State {
	t.Helper()
	st := newState(partitions, rf)
	for _, id := range ids {
		st.Nodes[id] = aliveNode(id)
	}
	st, _ = converge(t, st)
	assertDesired(t, st)
	return st
}

func TestEligible(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status consensus.NodeStatus
		ago    time.Duration
		want   bool
	}{
		{"alive", consensus.StatusAlive, time.Hour, true},
		{"suspect for long", consensus.StatusSuspect, time.Hour, true},
		{"dead within the grace", consensus.StatusDead, testGrace - time.Millisecond, true},
		{"dead exactly the grace", consensus.StatusDead, testGrace, false},
		{"dead past the grace", consensus.StatusDead, time.Hour, false},
		// A graceful leave has no false positives to damp.
		{"left just now", consensus.StatusLeft, 0, false},
		{"unknown status", consensus.NodeStatus("weird"), time.Hour, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := eligible(nodeInfo("n1", tc.status, tc.ago), testNow(), testGrace); got != tc.want {
				t.Errorf("eligible = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPlanOne pins single-row decisions with explicit desired owners and
// eligibility, independent of where the ring happens to place partitions.
func TestPlanOne(t *testing.T) {
	t.Parallel()
	row := func(primary string, replicas, inSync []string, epoch uint64) consensus.Partition {
		return consensus.Partition{ID: 7, Primary: primary, Replicas: replicas, InSync: inSync, Epoch: epoch}
	}
	l := func(s ...string) []string { return s }
	tests := []struct {
		name     string
		cur      consensus.Partition
		desired  []string
		eligible []string
		want     consensus.Partition
	}{
		{
			name: "first assignment: desired primary, other owners out of sync, epoch 1",
			cur:  row("", nil, nil, 0), desired: l("b", "a", "c"), eligible: l("a", "b", "c"),
			want: row("b", l("a", "c"), nil, 1),
		},
		{
			name: "stable row stays",
			cur:  row("a", l("b", "c"), l("b", "c"), 4), desired: l("a", "b", "c"), eligible: l("a", "b", "c"),
			want: row("a", l("b", "c"), l("b", "c"), 4),
		},
		{
			name: "failover promotes the in-sync desired replica and forgets the dead primary",
			cur:  row("a", l("b", "c"), l("b", "c"), 4), desired: l("b", "c"), eligible: l("b", "c"),
			want: row("b", l("c"), l("c"), 5),
		},
		{
			name: "failover follows desired order among in-sync replicas",
			cur:  row("a", l("b", "c"), l("b", "c"), 4), desired: l("c", "b"), eligible: l("b", "c"),
			want: row("c", l("b"), l("b"), 5),
		},
		{
			// d is the only copy holding every write: it leads even
			// though the ring does not want it.
			name: "failover to the only in-sync replica even if not desired",
			cur:  row("a", l("b", "c", "d"), l("d"), 4), desired: l("b", "c"), eligible: l("b", "c", "d"),
			want: row("d", l("b", "c"), l(), 5),
		},
		{
			name: "dead primary without in-sync replicas: row unchanged, no data-losing promotion",
			cur:  row("a", l("b", "c"), l(), 4), desired: l("b", "c"), eligible: l("b", "c"),
			want: row("a", l("b", "c"), l(), 4),
		},
		{
			// The primary and its only in-sync replica b are both down.
			// Nobody can accept writes, so b still holds every
			// acknowledged write; forgetting that b is in sync would
			// leave the partition unavailable forever if a never
			// returns, even after b does.
			name: "dead primary and dead in-sync replica: row stays as it is",
			cur:  row("a", l("b", "c"), l("b"), 4), desired: l("c"), eligible: l("c"),
			want: row("a", l("b", "c"), l("b"), 4),
		},
		{
			name: "returning node joins as an out-of-sync replica; primary unchanged",
			cur:  row("b", l("c"), l("c"), 2), desired: l("a", "b", "c"), eligible: l("a", "b", "c"),
			want: row("b", l("c", "a"), l("c"), 2),
		},
		{
			name: "returning desired primary takes over once in sync; old primary stays in sync",
			cur:  row("b", l("c", "a"), l("c", "a"), 2), desired: l("a", "b", "c"), eligible: l("a", "b", "c"),
			want: row("a", l("b", "c"), l("b", "c"), 3),
		},
		{
			name: "hand-off to the desired primary drops the old primary when surplus",
			cur:  row("d", l("a", "b", "c"), l("a", "b", "c"), 5), desired: l("a", "b", "c"), eligible: l("a", "b", "c", "d"),
			want: row("a", l("b", "c"), l("b", "c"), 6),
		},
		{
			name: "surplus replica kept while a desired replica is out of sync",
			cur:  row("a", l("b", "c", "d"), l("b", "c"), 3), desired: l("a", "b", "d"), eligible: l("a", "b", "c", "d"),
			want: row("a", l("b", "c", "d"), l("b", "c"), 3),
		},
		{
			// Dropping c before d is in sync would leave two in-sync
			// copies where there were three (ARCHITECTURE.md §5).
			name: "surplus replica kept while the desired primary is out of sync",
			cur:  row("a", l("b", "c"), l("b", "c"), 3), desired: l("d", "a", "b"), eligible: l("a", "b", "c", "d"),
			want: row("a", l("b", "c", "d"), l("b", "c"), 3),
		},
		{
			name: "desired primary in sync takes over and the surplus replica goes",
			cur:  row("a", l("b", "c", "d"), l("b", "c", "d"), 3), desired: l("d", "a", "b"), eligible: l("a", "b", "c", "d"),
			want: row("d", l("a", "b"), l("a", "b"), 4),
		},
		{
			name: "ineligible replica is dropped",
			cur:  row("a", l("b", "c"), l("b", "c"), 3), desired: l("a", "b"), eligible: l("a", "b"),
			want: row("a", l("b"), l("b"), 3),
		},
		{
			name: "no desired owners: row unchanged",
			cur:  row("a", l("b"), l("b"), 3), desired: nil, eligible: nil,
			want: row("a", l("b"), l("b"), 3),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			orig := cloneRow(tc.cur)
			got := planOne(tc.cur, tc.desired, func(n string) bool { return slices.Contains(tc.eligible, n) })
			if !sameRow(got, tc.want) {
				t.Errorf("planOne(%+v, desired %v)\n got %+v\nwant %+v", tc.cur, tc.desired, got, tc.want)
			}
			// planOne must not write through to the FSM's row: states
			// handed out by the Store are shared and immutable.
			if !sameRow(tc.cur, orig) {
				t.Errorf("planOne modified its input: %+v, was %+v", tc.cur, orig)
			}
		})
	}
}

func TestPlanPartitionsNothingToDo(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		st   func(t *testing.T) *consensus.State
	}{
		{"nil state", func(*testing.T) *consensus.State { return nil }},
		{"uninitialised state", func(*testing.T) *consensus.State {
			return &consensus.State{Nodes: map[string]consensus.NodeInfo{"n1": aliveNode("n1")}}
		}},
		{"no nodes yet", func(*testing.T) *consensus.State { return newState(8, 3) }},
		{"only dead and left nodes", func(*testing.T) *consensus.State {
			return newState(8, 3, nodeInfo("n1", consensus.StatusDead, time.Hour), nodeInfo("n2", consensus.StatusLeft, 0))
		}},
		{"converged table", func(t *testing.T) *consensus.State {
			return convergedState(t, 16, 3, "n1", "n2", "n3")
		}},
		{"converged table, later epochs", func(t *testing.T) *consensus.State {
			st := cloneState(convergedState(t, 16, 3, "n1", "n2", "n3"))
			for i := range st.Partitions {
				st.Partitions[i].Epoch += uint64(i)
			}
			return st
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if rows := plan(t, tc.st(t)); len(rows) != 0 {
				t.Errorf("planned %d rows, want none: %+v", len(rows), rows)
			}
		})
	}
}

func TestPlanPartitionsFirstAssignment(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		nodes   []string
		rf      int
		wantLen int // owners per partition: RF capped by the node count
	}{
		{"three nodes RF 3", []string{"n1", "n2", "n3"}, 3, 3},
		{"five nodes RF 3", []string{"n1", "n2", "n3", "n4", "n5"}, 3, 3},
		{"two nodes RF 3 is capped", []string{"n1", "n2"}, 3, 2},
		{"one node", []string{"n1"}, 3, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := newState(16, tc.rf)
			for _, id := range tc.nodes {
				st.Nodes[id] = aliveNode(id)
			}
			desired := desiredOf(st)
			rows := plan(t, st)
			if len(rows) != len(st.Partitions) {
				t.Fatalf("planned %d rows, want all %d", len(rows), len(st.Partitions))
			}
			for _, p := range rows {
				d := desired[p.ID]
				if len(d) != tc.wantLen {
					t.Fatalf("desired %v has %d owners, want %d", d, len(d), tc.wantLen)
				}
				want := consensus.Partition{ID: p.ID, Primary: d[0], Replicas: d[1:], Epoch: 1}
				if !sameRow(p, want) {
					t.Errorf("got %+v, want %+v", p, want)
				}
			}
			// Nothing moves until the data plane syncs someone: a plan
			// that changed again here would make the leader propose on
			// every reconcile pass.
			if again := plan(t, applyRows(st, rows)); len(again) != 0 {
				t.Errorf("second plan without sync progress is not empty: %+v", again)
			}
			// The data plane then syncs every replica, and the table
			// settles on the desired assignment.
			final, _ := converge(t, markAllInSync(applyRows(st, rows)))
			assertDesired(t, final)
		})
	}
}

// TestPlanPartitionsFailover changes the health of one owner of a settled
// three-node table and checks how every row reacts.
func TestPlanPartitionsFailover(t *testing.T) {
	t.Parallel()
	base := convergedState(t, 16, 3, "n1", "n2", "n3")
	// victim leads partition 0, so at least one row needs a new primary.
	victim := base.Partitions[0].Primary
	tests := []struct {
		name   string
		status consensus.NodeStatus
		ago    time.Duration
		// clearInSync empties the in-sync set of the victim's rows first.
		clearInSync bool
		// wantMoved: the victim loses its partitions (otherwise no
		// row may change at all).
		wantMoved bool
	}{
		{"dead past the grace", consensus.StatusDead, time.Minute, false, true},
		{"dead within the grace", consensus.StatusDead, testGrace / 2, false, false},
		{"suspect", consensus.StatusSuspect, time.Minute, false, false},
		{"left just now", consensus.StatusLeft, 0, false, true},
		{"dead past the grace, no in-sync replica", consensus.StatusDead, time.Minute, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := withNode(base, nodeInfo(victim, tc.status, tc.ago))
			if tc.clearInSync {
				for i, p := range st.Partitions {
					if p.Primary == victim {
						st.Partitions[i].InSync = nil
					}
				}
			}
			rows := plan(t, st)
			if !tc.wantMoved {
				if len(rows) != 0 {
					t.Fatalf("a %s node must keep its partitions; plan: %+v", tc.status, rows)
				}
				return
			}
			next := applyRows(st, rows)
			for i, p := range next.Partitions {
				old := st.Partitions[i]
				switch {
				case old.Primary == victim && len(old.InSync) == 0:
					if !sameRow(p, old) {
						t.Errorf("partition %d: no in-sync replica, yet %+v -> %+v", i, old, p)
					}
				case old.Primary == victim:
					if p.Primary == victim || p.Epoch != old.Epoch+1 {
						t.Errorf("partition %d: not failed over: %+v -> %+v", i, old, p)
					}
					if p.Owns(victim) || p.IsInSync(victim) {
						t.Errorf("partition %d: still lists %s: %+v", i, victim, p)
					}
				default:
					if p.Owns(victim) || p.IsInSync(victim) || p.Primary != old.Primary || p.Epoch != old.Epoch {
						t.Errorf("partition %d: want %s dropped and nothing else: %+v -> %+v", i, victim, old, p)
					}
				}
			}
		})
	}
}

// TestPlanPartitionsPrimaryAndInSyncReplicaDown: the primary and its only
// in-sync replica die together; the in-sync replica comes back first. It
// holds every acknowledged write (no primary could accept writes meanwhile),
// so it must be able to take over instead of the partition waiting forever
// for a primary that may never return.
func TestPlanPartitionsPrimaryAndInSyncReplicaDown(t *testing.T) {
	t.Parallel()
	st := newState(1, 3, aliveNode("a"), aliveNode("b"), aliveNode("c"))
	st.Partitions[0] = consensus.Partition{ID: 0, Primary: "a", Replicas: []string{"b", "c"}, InSync: []string{"b"}, Epoch: 4}
	st = withNode(st, nodeInfo("a", consensus.StatusDead, time.Minute))
	st = withNode(st, nodeInfo("b", consensus.StatusDead, time.Minute))
	if rows := plan(t, st); len(rows) != 0 {
		st = applyRows(st, rows)
		t.Errorf("no node can take over, yet the row changed to %+v", st.Partitions[0])
	}
	st = withNode(st, nodeInfo("b", consensus.StatusAlive, 0))
	st = applyRows(st, plan(t, st))
	if p := st.Partitions[0]; p.Primary != "b" || p.Epoch != 5 {
		t.Errorf("in-sync replica b is back but not promoted: %+v", p)
	}
}

// TestPlanPartitionsReturningNode: a node dies, loses its partitions, comes
// back, is re-added out of sync and regains the primary role where the ring
// wants it only once it is in sync.
func TestPlanPartitionsReturningNode(t *testing.T) {
	t.Parallel()
	st := convergedState(t, 16, 3, "n1", "n2", "n3")
	st = withNode(st, nodeInfo("n1", consensus.StatusDead, time.Minute))
	st, _ = converge(t, st)
	for _, p := range st.Partitions {
		if p.Owns("n1") {
			t.Fatalf("dead n1 still owns %+v", p)
		}
	}

	st = withNode(st, nodeInfo("n1", consensus.StatusAlive, 0))
	desired := desiredOf(st)
	rows := plan(t, st)
	if len(rows) != len(st.Partitions) {
		t.Fatalf("n1 should rejoin all %d partitions (3 nodes, RF 3), plan has %d rows", len(st.Partitions), len(rows))
	}
	for _, p := range rows {
		old := st.Partitions[p.ID]
		want := cloneRow(old)
		want.Replicas = append(want.Replicas, "n1")
		if !sameRow(p, want) {
			t.Errorf("returning n1 must only be added out of sync: %+v -> %+v", old, p)
		}
	}
	st = markAllInSync(applyRows(st, rows))

	rows = plan(t, st)
	changed := map[int]consensus.Partition{}
	for _, p := range rows {
		changed[p.ID] = p
	}
	for i, old := range st.Partitions {
		p, ok := changed[i]
		if desired[i][0] != "n1" {
			if ok {
				t.Errorf("partition %d: n1 is not its desired primary, yet %+v -> %+v", i, old, p)
			}
			continue
		}
		if !ok || p.Primary != "n1" || p.Epoch != old.Epoch+1 {
			t.Errorf("partition %d: in-sync n1 should take over: %+v -> %+v (ok %v)", i, old, p, ok)
			continue
		}
		// With three nodes and RF 3 the old primary is never surplus.
		if !p.IsInSync(old.Primary) {
			t.Errorf("partition %d: old primary %s should stay an in-sync replica: %+v", i, old.Primary, p)
		}
	}
	final, _ := converge(t, applyRows(st, rows))
	assertDesired(t, final)
}

// TestPlanPartitionsScaleOut adds a fourth node to a settled three-node
// cluster and runs the migration to the end.
func TestPlanPartitionsScaleOut(t *testing.T) {
	t.Parallel()
	const partitions, rf = 64, 3
	start := convergedState(t, partitions, rf, "n1", "n2", "n3")
	st, steps := converge(t, withNode(start, aliveNode("n4")))
	if len(steps) == 0 {
		t.Fatal("adding a node planned nothing")
	}
	assertDesired(t, st)

	// §5: a migration never leaves a partition with fewer in-sync copies
	// than before. Dropping a surplus copy once the new owner is in sync
	// (RF+1 -> RF) is the point of the migration, so the floor is the
	// smaller of the copies before the step and RF.
	for n, s := range steps {
		for _, p := range s.rows {
			cur := s.before.Partitions[p.ID]
			if floor := min(inSyncCopies(cur), rf); inSyncCopies(p) < floor {
				t.Errorf("step %d, partition %d: in-sync copies %d -> %d (floor %d): %+v -> %+v",
					n, p.ID, inSyncCopies(cur), inSyncCopies(p), floor, cur, p)
			}
		}
	}

	// Consistent hashing moves only what the new node takes: each changed
	// partition gains n4 and loses exactly one old owner, and about RF/N of
	// the partitions change (each of the N nodes holds RF/N of the copies).
	moved := 0
	for i, p := range st.Partitions {
		before := append([]string{start.Partitions[i].Primary}, start.Partitions[i].Replicas...)
		after := append([]string{p.Primary}, p.Replicas...)
		if sameSet(before, after) {
			continue
		}
		moved++
		var gained, lost []string
		for _, n := range after {
			if !slices.Contains(before, n) {
				gained = append(gained, n)
			}
		}
		for _, n := range before {
			if !slices.Contains(after, n) {
				lost = append(lost, n)
			}
		}
		if !slices.Equal(gained, []string{"n4"}) || len(lost) != 1 {
			t.Errorf("partition %d: owners %v -> %v; want only n4 in, one out", i, before, after)
		}
	}
	expected := float64(partitions*rf) / 4
	if lo, hi := 0.6*expected, 1.3*expected; float64(moved) < lo || float64(moved) > hi {
		t.Errorf("%d partitions changed owners, want about %.0f (%.0f..%.0f)", moved, expected, lo, hi)
	}
	t.Logf("scale-out 3->4: %d of %d partitions changed owners in %d plan steps", moved, partitions, len(steps))
}

// randomState builds an arbitrary but FSM-valid state: nodes in every
// health, rows owned by any of them (and by a node already forgotten),
// arbitrary in-sync sets and epochs.
func randomState(r *rand.Rand) *consensus.State {
	nNodes := 1 + r.IntN(6)
	st := newState(1+r.IntN(16), 1+r.IntN(4))
	universe := []string{"gone"} // owns rows but is no longer a member
	for i := range nNodes {
		id := fmt.Sprintf("n%d", i+1)
		universe = append(universe, id)
		switch r.IntN(5) {
		case 0, 1:
			st.Nodes[id] = aliveNode(id)
		case 2:
			st.Nodes[id] = nodeInfo(id, consensus.StatusSuspect, time.Second)
		case 3:
			st.Nodes[id] = nodeInfo(id, consensus.StatusDead, time.Duration(r.Int64N(int64(2*testGrace))))
		default:
			st.Nodes[id] = nodeInfo(id, consensus.StatusLeft, time.Second)
		}
	}
	for i := range st.Partitions {
		if r.IntN(8) == 0 {
			continue // still unassigned
		}
		owners := slices.Clone(universe)
		r.Shuffle(len(owners), func(a, b int) { owners[a], owners[b] = owners[b], owners[a] })
		owners = owners[:1+r.IntN(min(st.Config.ReplicationFactor+1, len(owners)))]
		p := consensus.Partition{ID: i, Primary: owners[0], Replicas: owners[1:], Epoch: 1 + uint64(r.IntN(9))}
		for _, o := range p.Replicas {
			if r.IntN(2) == 0 {
				p.InSync = append(p.InSync, o)
			}
		}
		st.Partitions[i] = p
	}
	return st
}

// TestPlanPartitionsRandomStates checks the safety rules (see plan and
// checkRowSafety) over many arbitrary states: promotions only of in-sync
// replicas, epoch +1 per primary change, never backwards, and FSM
// acceptance; and that a plan, once applied, is not followed by another
// unless something else changes.
func TestPlanPartitionsRandomStates(t *testing.T) {
	t.Parallel()
	for seed := range uint64(500) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			st := randomState(rand.New(rand.NewPCG(seed, 0x5eed)))
			rows := plan(t, st)
			if again := plan(t, applyRows(st, rows)); len(again) != 0 {
				t.Errorf("plan is not idempotent; after %+v\nit plans %+v", rows, again)
			}
		})
	}
}
