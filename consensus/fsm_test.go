package consensus

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// ---------------------------------------------------------------------------
// helpers

// mustEncode encodes a command or fails the test; encoding the package's own
// command structs can only fail on a programming error in the test.
func mustEncode(tb testing.TB, t CommandType, body any) Command {
	tb.Helper()
	c, err := Encode(t, body)
	if err != nil {
		tb.Fatalf("Encode(%s): %v", t, err)
	}
	return c
}

// mustApply applies c and fails the test if the FSM refuses it.
func mustApply(tb testing.TB, f *FSM, c Command) {
	tb.Helper()
	if err := f.ApplyCommand(c); err != nil {
		tb.Fatalf("ApplyCommand(%s): %v", CommandType(c[0]), err)
	}
}

// recoverPanic runs fn and returns the value it panicked with, and whether it
// panicked at all.
func recoverPanic(fn func()) (v any, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			v, panicked = r, true
		}
	}()
	fn()
	return nil, false
}

// stateJSON is the canonical serialised form of a state; encoding/json sorts
// map keys, so equal states give equal bytes.
func stateJSON(tb testing.TB, s *State) string {
	tb.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		tb.Fatalf("marshal state: %v", err)
	}
	return string(b)
}

var testSince = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func node(id string, st NodeStatus) NodeInfo {
	return NodeInfo{
		ID: id, Name: "name-" + id, MgmtAddr: "127.0.0.1:8080", KVAddr: "127.0.0.1:9080",
		RaftAddr: "127.0.0.1:9001", GossipAddr: "127.0.0.1:7946", Status: st, Since: testSince,
	}
}

func initCmd(tb testing.TB, parts, rf int) Command {
	return mustEncode(tb, CmdInit, InitCmd{Config: ClusterConfig{ID: "c1", Name: "test", Partitions: parts, ReplicationFactor: rf}})
}

func upsertCmd(tb testing.TB, n NodeInfo) Command {
	return mustEncode(tb, CmdUpsertNode, UpsertNodeCmd{Node: n})
}

func removeCmd(tb testing.TB, id string) Command {
	return mustEncode(tb, CmdRemoveNode, RemoveNodeCmd{ID: id})
}

func setCmd(tb testing.TB, version uint64, rows ...Partition) Command {
	return mustEncode(tb, CmdSetPartition, SetPartitionsCmd{ExpectVersion: version, Partitions: rows})
}

func shrinkCmd(tb testing.TB, p int, epoch uint64, n string) Command {
	return mustEncode(tb, CmdShrinkInSync, InSyncCmd{Partition: p, Epoch: epoch, Node: n})
}

func expandCmd(tb testing.TB, p int, epoch uint64, n string) Command {
	return mustEncode(tb, CmdExpandInSync, InSyncCmd{Partition: p, Epoch: epoch, Node: n})
}

// legalRows returns the commands that reach rows the only way the FSM
// allows: one SetPartitions (expecting version) carrying the rows with
// empty in-sync sets, then one ExpandInSync per in-sync member, in order, at
// the row's epoch. A SetPartitions may never add an in-sync member itself.
func legalRows(tb testing.TB, version uint64, rows ...Partition) []Command {
	tb.Helper()
	bare := make([]Partition, len(rows))
	var expands []Command
	for i, p := range rows {
		bare[i] = p.clone()
		bare[i].InSync = nil
		for _, n := range p.InSync {
			expands = append(expands, expandCmd(tb, p.ID, p.Epoch, n))
		}
	}
	return append([]Command{setCmd(tb, version, bare...)}, expands...)
}

// mustSetRows applies legalRows at f's current version; afterwards the rows
// read exactly as given.
func mustSetRows(tb testing.TB, f *FSM, rows ...Partition) {
	tb.Helper()
	for _, c := range legalRows(tb, f.State().Version, rows...) {
		mustApply(tb, f, c)
	}
	for _, want := range rows {
		if got := f.State().Partitions[want.ID]; !reflect.DeepEqual(got, want) {
			tb.Fatalf("row %d = %+v after mustSetRows, want %+v", want.ID, got, want)
		}
	}
}

// baseFSM returns an FSM with 4 partitions, nodes n1..n4 and this table:
//
//	p0: primary n1, replicas [n2 n3], in-sync [n2], epoch 1
//	p1: unassigned (primary "", epoch 0)
//	p2: primary n2, replicas [n3 n4], in-sync [n3 n4], epoch 3
//	p3: unassigned
//
// p0 has an out-of-sync replica (n3) so promotion rules can be exercised.
func baseFSM(tb testing.TB) *FSM {
	tb.Helper()
	f := NewFSM()
	mustApply(tb, f, initCmd(tb, 4, 3))
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		mustApply(tb, f, upsertCmd(tb, node(id, StatusAlive)))
	}
	mustSetRows(tb, f,
		Partition{ID: 0, Primary: "n1", Replicas: []string{"n2", "n3"}, InSync: []string{"n2"}, Epoch: 1},
		Partition{ID: 2, Primary: "n2", Replicas: []string{"n3", "n4"}, InSync: []string{"n3", "n4"}, Epoch: 3},
	)
	return f
}

// ---------------------------------------------------------------------------
// ApplyCommand

func hashOf(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

func tokenCmd(tb testing.TB, t CommandType, id, secret string, scopes ...string) Command {
	return mustEncode(tb, t, TokenCmd{Token: Token{ID: id, Hash: hashOf(secret), Scopes: scopes,
		Created: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}})
}

func TestApplyCommand(t *testing.T) {
	p0 := func(s *State) Partition { return s.Partitions[0].clone() }

	type tc struct {
		name string
		// fresh starts from an uninitialised FSM instead of baseFSM.
		fresh bool
		// prep commands are applied first and must succeed.
		prep func(tb testing.TB, s *State) []Command
		// cmd builds the command under test from the state just before it
		// (so ExpectVersion can be computed).
		cmd func(tb testing.TB, s *State) Command
		// wantErr is nil for success, else the sentinel the refusal wraps.
		wantErr error
		// wantMsg, if set, must appear in the refusal: several rules share
		// ErrInvalid, and a case must be refused by the rule it is about.
		wantMsg string
		// check inspects the state after a successful apply.
		check func(t *testing.T, before, after *State)
	}
	cases := []tc{
		// --- init
		{
			name: "init/first", fresh: true,
			cmd: func(tb testing.TB, s *State) Command { return initCmd(tb, 16, 3) },
			check: func(t *testing.T, _, after *State) {
				if !after.Initialized() || after.Config.Partitions != 16 || after.Config.ReplicationFactor != 3 || after.Config.ID != "c1" {
					t.Fatalf("config not recorded: %+v", after.Config)
				}
				if len(after.Partitions) != 16 {
					t.Fatalf("want 16 partition rows, got %d", len(after.Partitions))
				}
				for i, p := range after.Partitions {
					// Row i must carry ID i: lookups index the slice by ID.
					if p.ID != i || p.Primary != "" || p.Epoch != 0 {
						t.Fatalf("row %d = %+v, want empty row with ID %d", i, p, i)
					}
				}
			},
		},
		{
			name: "init/twice refused",
			cmd:  func(tb testing.TB, s *State) Command { return initCmd(tb, 8, 1) }, wantErr: ErrInvalid,
		},
		{
			name: "init/zero partitions refused", fresh: true,
			cmd: func(tb testing.TB, s *State) Command { return initCmd(tb, 0, 3) }, wantErr: ErrInvalid,
		},
		{
			name: "init/negative partitions refused", fresh: true,
			cmd: func(tb testing.TB, s *State) Command { return initCmd(tb, -4, 3) }, wantErr: ErrInvalid,
		},
		{
			name: "init/zero replication factor refused", fresh: true,
			cmd: func(tb testing.TB, s *State) Command { return initCmd(tb, 16, 0) }, wantErr: ErrInvalid,
		},
		{
			name: "init/malformed body refused", fresh: true,
			cmd: func(tb testing.TB, s *State) Command { return Command(append([]byte{byte(CmdInit)}, `{"config":`...)) }, wantErr: ErrInvalid,
		},

		// --- upsert / remove node
		{
			name: "upsert/new node",
			cmd:  func(tb testing.TB, s *State) Command { return upsertCmd(tb, node("n5", StatusAlive)) },
			check: func(t *testing.T, before, after *State) {
				if got := after.Nodes["n5"]; !reflect.DeepEqual(got, node("n5", StatusAlive)) {
					t.Fatalf("n5 = %+v", got)
				}
				if len(after.Nodes) != len(before.Nodes)+1 {
					t.Fatalf("node count %d -> %d, want +1", len(before.Nodes), len(after.Nodes))
				}
			},
		},
		{
			name: "upsert/overwrites existing node",
			cmd: func(tb testing.TB, s *State) Command {
				n := node("n2", StatusDead)
				n.Since = testSince.Add(time.Minute)
				return upsertCmd(tb, n)
			},
			check: func(t *testing.T, before, after *State) {
				if got := after.Nodes["n2"]; got.Status != StatusDead || !got.Since.Equal(testSince.Add(time.Minute)) {
					t.Fatalf("n2 = %+v, want dead since +1m", got)
				}
				if len(after.Nodes) != len(before.Nodes) {
					t.Fatal("overwrite must not add a node")
				}
			},
		},
		// A node back with a new data directory (same ID, another store).
		{
			name: "upsert/new store forgets the node's copies",
			prep: func(tb testing.TB, s *State) []Command {
				n2 := node("n2", StatusAlive)
				n2.Store = "old"
				return []Command{upsertCmd(tb, n2),
					setCmd(tb, s.Version+1, Partition{ID: 1, Primary: "n2", Replicas: []string{"n1"}, Epoch: 5})}
			},
			cmd: func(tb testing.TB, s *State) Command {
				n2 := node("n2", StatusAlive)
				n2.Store = "new"
				return upsertCmd(tb, n2)
			},
			check: func(t *testing.T, before, after *State) {
				want := []Partition{
					// A replica: out of sync, still an owner; epoch kept.
					{ID: 0, Primary: "n1", Replicas: []string{"n2", "n3"}, InSync: []string{}, Epoch: 1},
					// Its only copy was n2's: n2 stays primary of an
					// empty copy, under a new epoch.
					{ID: 1, Primary: "n2", Replicas: []string{"n1"}, Epoch: 6},
					// A primary: an in-sync replica takes over, n2 becomes
					// an out-of-sync replica.
					{ID: 2, Primary: "n3", Replicas: []string{"n2", "n4"}, InSync: []string{"n4"}, Epoch: 4},
				}
				for _, w := range want {
					got := after.Partitions[w.ID]
					if got.Primary != w.Primary || got.Epoch != w.Epoch || !slices.Equal(got.Replicas, w.Replicas) || !slices.Equal(got.InSync, w.InSync) {
						t.Errorf("partition %d = %+v, want %+v", w.ID, got, w)
					}
				}
				if got := after.Nodes["n2"].Store; got != "new" {
					t.Errorf("n2's store = %q, want new", got)
				}
				if !reflect.DeepEqual(before.Partitions[3], after.Partitions[3]) {
					t.Errorf("partition 3 changed: %+v", after.Partitions[3])
				}
			},
		},
		{
			name: "upsert/same, first or unknown store keeps the copies",
			prep: func(tb testing.TB, s *State) []Command {
				n2 := node("n2", StatusAlive)
				n2.Store = "old"
				n3 := node("n3", StatusAlive)
				return []Command{upsertCmd(tb, n2), upsertCmd(tb, n3)}
			},
			cmd: func(tb testing.TB, s *State) Command {
				// n3 gets its first store; n2 is upserted by a version that
				// gossips none (empty): neither is a new data directory.
				return upsertCmd(tb, node("n2", StatusSuspect))
			},
			check: func(t *testing.T, before, after *State) {
				if !reflect.DeepEqual(before.Partitions, after.Partitions) {
					t.Errorf("partitions changed: %+v -> %+v", before.Partitions, after.Partitions)
				}
			},
		},
		{
			name: "upsert/empty id refused",
			cmd:  func(tb testing.TB, s *State) Command { return upsertCmd(tb, NodeInfo{Name: "anon"}) }, wantErr: ErrInvalid,
		},
		{
			name: "remove/existing node",
			cmd:  func(tb testing.TB, s *State) Command { return removeCmd(tb, "n4") },
			check: func(t *testing.T, _, after *State) {
				if _, ok := after.Nodes["n4"]; ok {
					t.Fatal("n4 still present")
				}
				if len(after.Nodes) != 3 {
					t.Fatalf("want 3 nodes, got %d", len(after.Nodes))
				}
			},
		},
		{
			// Removing an absent node is accepted (the leader may retry a
			// removal that was already committed).
			name: "remove/missing node is a no-op",
			cmd:  func(tb testing.TB, s *State) Command { return removeCmd(tb, "nope") },
			check: func(t *testing.T, before, after *State) {
				if !reflect.DeepEqual(before.Nodes, after.Nodes) {
					t.Fatal("nodes changed")
				}
			},
		},

		// --- set-partitions
		{
			name:    "set/expect version behind refused",
			cmd:     func(tb testing.TB, s *State) Command { return setCmd(tb, s.Version-1, p0(s)) },
			wantErr: ErrStaleVersion,
		},
		{
			name:    "set/expect version ahead refused",
			cmd:     func(tb testing.TB, s *State) Command { return setCmd(tb, s.Version+1, p0(s)) },
			wantErr: ErrStaleVersion,
		},
		{
			name: "set/epoch going backwards refused",
			cmd: func(tb testing.TB, s *State) Command {
				p := p0(s)
				p.Epoch = 0
				return setCmd(tb, s.Version, p)
			},
			wantErr: ErrInvalid,
		},
		{
			name: "set/primary change without new epoch refused",
			cmd: func(tb testing.TB, s *State) Command {
				// n2 is in sync, so only the missing epoch bump is wrong.
				return setCmd(tb, s.Version, Partition{ID: 0, Primary: "n2", Replicas: []string{"n3"}, Epoch: 1})
			},
			wantErr: ErrInvalid,
		},
		{
			name: "set/promotion of non-in-sync replica refused",
			cmd: func(tb testing.TB, s *State) Command {
				// n3 is a replica of p0 but not in sync: it may miss writes.
				return setCmd(tb, s.Version, Partition{ID: 0, Primary: "n3", Replicas: []string{"n2"}, InSync: []string{"n2"}, Epoch: 2})
			},
			wantErr: ErrInvalid, wantMsg: "n3 is not in sync and cannot become primary",
		},
		{
			name: "set/promotion of a non-owner refused",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 0, Primary: "n4", Replicas: []string{"n2"}, Epoch: 2})
			},
			wantErr: ErrInvalid, wantMsg: "n4 is not in sync and cannot become primary",
		},
		{
			name: "set/promotion of in-sync replica with new epoch",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 0, Primary: "n2", Replicas: []string{"n3", "n1"}, InSync: []string{"n1"}, Epoch: 2})
			},
			check: func(t *testing.T, _, after *State) {
				want := Partition{ID: 0, Primary: "n2", Replicas: []string{"n3", "n1"}, InSync: []string{"n1"}, Epoch: 2}
				if !reflect.DeepEqual(after.Partitions[0], want) {
					t.Fatalf("p0 = %+v, want %+v", after.Partitions[0], want)
				}
			},
		},
		{
			name: "set/primary listed as replica refused",
			cmd: func(tb testing.TB, s *State) Command {
				p := p0(s)
				p.Replicas = []string{"n1", "n2", "n3"}
				return setCmd(tb, s.Version, p)
			},
			wantErr: ErrInvalid, wantMsg: "lists its primary as a replica",
		},
		{
			// n2 is in sync, so only dropping it from the replicas while
			// keeping it in InSync is wrong.
			name: "set/in-sync node that is not a replica refused",
			cmd: func(tb testing.TB, s *State) Command {
				p := p0(s)
				p.Replicas = []string{"n3"}
				return setCmd(tb, s.Version, p)
			},
			wantErr: ErrInvalid, wantMsg: "in-sync node n2 is not a replica",
		},
		{
			// The primary is not a replica, so it may not sit in InSync
			// either. The new epoch gets past the growth rule (n1 is the
			// old primary), leaving only this rule to refuse it.
			name: "set/primary in in-sync set refused",
			cmd: func(tb testing.TB, s *State) Command {
				p := p0(s)
				p.InSync = []string{"n2", "n1"}
				p.Epoch = 2
				return setCmd(tb, s.Version, p)
			},
			wantErr: ErrInvalid, wantMsg: "in-sync node n1 is not a replica",
		},
		{
			// Same, on the unassigned partition: no old primary, so the
			// first primary may not be declared in sync of itself.
			name: "set/first primary in in-sync set refused",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 1, Primary: "n4", Replicas: []string{"n1"}, InSync: []string{"n4"}, Epoch: 1})
			},
			wantErr: ErrInvalid, wantMsg: "n4 cannot join the in-sync set",
		},
		{
			// Nothing to lose on an unassigned partition: any node may be
			// the first primary, as long as the epoch advances. Its
			// replicas start out of sync.
			name: "set/first assignment from empty primary",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 1, Primary: "n4", Replicas: []string{"n1", "n2"}, Epoch: 1})
			},
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[1]; p.Primary != "n4" || p.Epoch != 1 || !slices.Equal(p.Replicas, []string{"n1", "n2"}) || len(p.InSync) != 0 {
					t.Fatalf("p1 = %+v", p)
				}
			},
		},
		{
			// ...and join the in-sync set one by one, at the new epoch.
			name: "set/first assignment then expand",
			prep: func(tb testing.TB, s *State) []Command {
				return legalRows(tb, s.Version, Partition{ID: 1, Primary: "n4", Replicas: []string{"n1", "n2"}, InSync: []string{"n1"}, Epoch: 1})
			},
			cmd: func(tb testing.TB, s *State) Command { return expandCmd(tb, 1, 1, "n2") },
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[1]; p.Primary != "n4" || p.Epoch != 1 || !slices.Equal(p.InSync, []string{"n1", "n2"}) {
					t.Fatalf("p1 = %+v", p)
				}
			},
		},
		{
			// A first assignment may not declare its replicas in sync: they
			// have not been sent anything yet.
			name: "set/first assignment with in-sync replicas refused",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 1, Primary: "n4", Replicas: []string{"n1", "n2"}, InSync: []string{"n1", "n2"}, Epoch: 1})
			},
			wantErr: ErrInvalid, wantMsg: "n1 cannot join the in-sync set",
		},
		{
			name: "set/first assignment without epoch bump refused",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 1, Primary: "n4", Epoch: 0})
			},
			wantErr: ErrInvalid,
		},
		{
			name: "set/replica change keeps primary and epoch",
			cmd: func(tb testing.TB, s *State) Command {
				p := p0(s)
				p.Replicas = []string{"n2", "n4"}
				return setCmd(tb, s.Version, p)
			},
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[0]; !slices.Equal(p.Replicas, []string{"n2", "n4"}) || p.Epoch != 1 || p.Primary != "n1" {
					t.Fatalf("p0 = %+v", p)
				}
			},
		},
		{
			name: "set/unknown partition refused",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 4, Primary: "n1", Epoch: 1})
			},
			wantErr: ErrInvalid,
		},
		{
			name: "set/negative partition refused",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: -1, Primary: "n1", Epoch: 1})
			},
			wantErr: ErrInvalid,
		},
		{
			// Rows are all-or-nothing: a bad second row must not let the
			// valid first row through.
			name: "set/one bad row refuses the whole command",
			cmd: func(tb testing.TB, s *State) Command {
				ok := Partition{ID: 1, Primary: "n1", Epoch: 1}
				bad := s.Partitions[2].clone()
				bad.Epoch = 4
				bad.Primary = "n4" // in sync, fine
				bad.Replicas = []string{"n2"}
				bad.InSync = []string{"n3"} // n3 is no longer a replica
				return setCmd(tb, s.Version, ok, bad)
			},
			wantErr: ErrInvalid, wantMsg: "in-sync node n3 is not a replica",
		},
		// --- set-partitions and the in-sync set: it only grows through
		// expand-in-sync, except that a new epoch may keep the old primary.
		{
			name: "set/adding in-sync member at same epoch refused",
			cmd: func(tb testing.TB, s *State) Command {
				p := p0(s)
				p.InSync = []string{"n2", "n3"} // n3 is a replica, not in sync
				return setCmd(tb, s.Version, p)
			},
			wantErr: ErrInvalid, wantMsg: "partition 0: n3 cannot join the in-sync set",
		},
		{
			// Reordering is not growth.
			name: "set/reordering in-sync set at same epoch",
			cmd: func(tb testing.TB, s *State) Command {
				p := s.Partitions[2].clone()
				p.Replicas = []string{"n4", "n3"}
				p.InSync = []string{"n4", "n3"}
				return setCmd(tb, s.Version, p)
			},
			check: func(t *testing.T, _, after *State) {
				want := Partition{ID: 2, Primary: "n2", Replicas: []string{"n4", "n3"}, InSync: []string{"n4", "n3"}, Epoch: 3}
				if !reflect.DeepEqual(after.Partitions[2], want) {
					t.Fatalf("p2 = %+v, want %+v", after.Partitions[2], want)
				}
			},
		},
		{
			name: "set/new epoch keeps old primary and in-sync replicas",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 2, Primary: "n3", Replicas: []string{"n2", "n4"}, InSync: []string{"n2", "n4"}, Epoch: 4})
			},
			check: func(t *testing.T, _, after *State) {
				want := Partition{ID: 2, Primary: "n3", Replicas: []string{"n2", "n4"}, InSync: []string{"n2", "n4"}, Epoch: 4}
				if !reflect.DeepEqual(after.Partitions[2], want) {
					t.Fatalf("p2 = %+v, want %+v", after.Partitions[2], want)
				}
			},
		},
		{
			// An epoch may jump by more than one (two promotions planned at
			// once); the old primary is still the one before the command.
			name: "set/epoch jump keeps old primary in sync",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 0, Primary: "n2", Replicas: []string{"n1"}, InSync: []string{"n1"}, Epoch: 5})
			},
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[0]; p.Primary != "n2" || p.Epoch != 5 || !slices.Equal(p.InSync, []string{"n1"}) {
					t.Fatalf("p0 = %+v", p)
				}
			},
		},
		{
			name: "set/new epoch adding out-of-sync replica refused",
			cmd: func(tb testing.TB, s *State) Command {
				// n1 (old primary) may stay; n3 was never in sync.
				return setCmd(tb, s.Version, Partition{ID: 0, Primary: "n2", Replicas: []string{"n1", "n3"}, InSync: []string{"n1", "n3"}, Epoch: 2})
			},
			wantErr: ErrInvalid, wantMsg: "partition 0: n3 cannot join the in-sync set",
		},
		{
			name: "set/new epoch adding a newcomer refused",
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 0, Primary: "n2", Replicas: []string{"n1", "n4"}, InSync: []string{"n4"}, Epoch: 2})
			},
			wantErr: ErrInvalid, wantMsg: "partition 0: n4 cannot join the in-sync set",
		},
		{
			// A new epoch without a primary change licenses nothing extra.
			name: "set/new epoch same primary adding replica refused",
			cmd: func(tb testing.TB, s *State) Command {
				p := p0(s)
				p.Epoch = 2
				p.InSync = []string{"n2", "n3"}
				return setCmd(tb, s.Version, p)
			},
			wantErr: ErrInvalid, wantMsg: "partition 0: n3 cannot join the in-sync set",
		},
		{
			// The exemption is for the primary being replaced, not for
			// whoever was primary at some earlier epoch.
			name: "set/new epoch re-adding an earlier primary refused",
			prep: func(tb testing.TB, s *State) []Command {
				// p2: n2 -> n3 at epoch 4, n2 dropped entirely.
				return []Command{setCmd(tb, s.Version, Partition{ID: 2, Primary: "n3", Replicas: []string{"n4"}, InSync: []string{"n4"}, Epoch: 4})}
			},
			cmd: func(tb testing.TB, s *State) Command {
				return setCmd(tb, s.Version, Partition{ID: 2, Primary: "n4", Replicas: []string{"n3", "n2"}, InSync: []string{"n3", "n2"}, Epoch: 5})
			},
			wantErr: ErrInvalid, wantMsg: "partition 2: n2 cannot join the in-sync set",
		},
		{
			name: "set/shrinking in-sync set accepted",
			cmd: func(tb testing.TB, s *State) Command {
				p := s.Partitions[2].clone()
				p.InSync = []string{"n4"}
				return setCmd(tb, s.Version, p)
			},
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[2]; !slices.Equal(p.InSync, []string{"n4"}) || !slices.Equal(p.Replicas, []string{"n3", "n4"}) || p.Epoch != 3 {
					t.Fatalf("p2 = %+v, want in-sync [n4], rest unchanged", p)
				}
			},
		},
		{
			name: "set/emptying in-sync set accepted",
			cmd: func(tb testing.TB, s *State) Command {
				p := p0(s)
				p.InSync = nil
				return setCmd(tb, s.Version, p)
			},
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[0]; len(p.InSync) != 0 || p.Primary != "n1" || p.Epoch != 1 {
					t.Fatalf("p0 = %+v, want no in-sync replicas, rest unchanged", p)
				}
			},
		},
		{
			// Shrunk by set-partitions, a replica must come back through
			// expand-in-sync, not through another set-partitions.
			name: "set/re-adding a shrunk member refused",
			prep: func(tb testing.TB, s *State) []Command {
				p := s.Partitions[2].clone()
				p.InSync = []string{"n4"}
				return []Command{setCmd(tb, s.Version, p)}
			},
			cmd: func(tb testing.TB, s *State) Command {
				p := s.Partitions[2].clone()
				p.InSync = []string{"n4", "n3"}
				return setCmd(tb, s.Version, p)
			},
			wantErr: ErrInvalid, wantMsg: "partition 2: n3 cannot join the in-sync set",
		},
		{
			// The growth rule holds per row: a later row of the same command
			// adding a member refuses the earlier, valid one too.
			name: "set/growth in second row refuses the whole command",
			cmd: func(tb testing.TB, s *State) Command {
				shrink := s.Partitions[2].clone()
				shrink.InSync = []string{"n4"}
				grow := p0(s)
				grow.InSync = []string{"n2", "n3"}
				return setCmd(tb, s.Version, shrink, grow)
			},
			wantErr: ErrInvalid, wantMsg: "partition 0: n3 cannot join the in-sync set",
		},
		{
			name: "set/empty row list bumps version only",
			cmd:  func(tb testing.TB, s *State) Command { return setCmd(tb, s.Version) },
			check: func(t *testing.T, before, after *State) {
				if !reflect.DeepEqual(before.Partitions, after.Partitions) {
					t.Fatal("partitions changed")
				}
			},
		},

		// --- shrink / expand in-sync
		{
			name:    "shrink/wrong epoch refused",
			cmd:     func(tb testing.TB, s *State) Command { return shrinkCmd(tb, 0, 0, "n2") },
			wantErr: ErrStaleEpoch,
		},
		{
			name:    "shrink/future epoch refused",
			cmd:     func(tb testing.TB, s *State) Command { return shrinkCmd(tb, 0, 2, "n2") },
			wantErr: ErrStaleEpoch,
		},
		{
			name:    "shrink/unknown partition refused",
			cmd:     func(tb testing.TB, s *State) Command { return shrinkCmd(tb, 4, 0, "n2") },
			wantErr: ErrInvalid,
		},
		{
			name:    "shrink/negative partition refused",
			cmd:     func(tb testing.TB, s *State) Command { return shrinkCmd(tb, -1, 0, "n2") },
			wantErr: ErrInvalid,
		},
		{
			name: "shrink/removes member",
			cmd:  func(tb testing.TB, s *State) Command { return shrinkCmd(tb, 2, 3, "n3") },
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[2]; !slices.Equal(p.InSync, []string{"n4"}) || !slices.Equal(p.Replicas, []string{"n3", "n4"}) {
					t.Fatalf("p2 = %+v, want in-sync [n4], replicas unchanged", p)
				}
			},
		},
		{
			name: "shrink/idempotent",
			prep: func(tb testing.TB, s *State) []Command { return []Command{shrinkCmd(tb, 2, 3, "n3")} },
			cmd:  func(tb testing.TB, s *State) Command { return shrinkCmd(tb, 2, 3, "n3") },
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[2]; !slices.Equal(p.InSync, []string{"n4"}) {
					t.Fatalf("p2.InSync = %v, want [n4]", p.InSync)
				}
			},
		},
		{
			name:    "expand/wrong epoch refused",
			cmd:     func(tb testing.TB, s *State) Command { return expandCmd(tb, 0, 7, "n3") },
			wantErr: ErrStaleEpoch,
		},
		{
			name:    "expand/unknown partition refused",
			cmd:     func(tb testing.TB, s *State) Command { return expandCmd(tb, 99, 1, "n3") },
			wantErr: ErrInvalid,
		},
		{
			name:    "expand/non-replica refused",
			cmd:     func(tb testing.TB, s *State) Command { return expandCmd(tb, 0, 1, "n4") },
			wantErr: ErrInvalid,
		},
		{
			name:    "expand/primary refused",
			cmd:     func(tb testing.TB, s *State) Command { return expandCmd(tb, 0, 1, "n1") },
			wantErr: ErrInvalid,
		},
		{
			name: "expand/adds replica",
			cmd:  func(tb testing.TB, s *State) Command { return expandCmd(tb, 0, 1, "n3") },
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[0]; !slices.Equal(p.InSync, []string{"n2", "n3"}) {
					t.Fatalf("p0.InSync = %v, want [n2 n3]", p.InSync)
				}
			},
		},
		{
			name: "expand/idempotent",
			prep: func(tb testing.TB, s *State) []Command { return []Command{expandCmd(tb, 0, 1, "n3")} },
			cmd:  func(tb testing.TB, s *State) Command { return expandCmd(tb, 0, 1, "n3") },
			check: func(t *testing.T, _, after *State) {
				if p := after.Partitions[0]; !slices.Equal(p.InSync, []string{"n2", "n3"}) {
					t.Fatalf("p0.InSync = %v, want [n2 n3] without duplicates", p.InSync)
				}
			},
		},
		{
			name:    "expand/malformed body refused",
			cmd:     func(tb testing.TB, s *State) Command { return Command([]byte{byte(CmdExpandInSync), '['}) },
			wantErr: ErrInvalid,
		},

		// --- tokens and KV auth
		{
			name: "token/create stores the hash, never more",
			cmd:  func(tb testing.TB, s *State) Command { return tokenCmd(tb, CmdTokenCreate, "t1", "a", "read:user:") },
			check: func(t *testing.T, _, after *State) {
				tok, ok := after.TokenByHash(hashOf("a"))
				if !ok || tok.ID != "t1" || !slices.Equal(tok.Scopes, []string{"read:user:"}) || after.HasAdminToken() {
					t.Fatalf("tokens = %+v", after.Tokens)
				}
			},
		},
		{
			name: "token/same secret twice refused",
			prep: func(tb testing.TB, s *State) []Command {
				return []Command{tokenCmd(tb, CmdTokenCreate, "t1", "a", "admin")}
			},
			cmd:     func(tb testing.TB, s *State) Command { return tokenCmd(tb, CmdTokenCreate, "t2", "a", "admin") },
			wantErr: ErrInvalid, wantMsg: "secret exists",
		},
		{
			name: "token/same id twice refused",
			prep: func(tb testing.TB, s *State) []Command {
				return []Command{tokenCmd(tb, CmdTokenCreate, "t1", "a", "admin")}
			},
			cmd:     func(tb testing.TB, s *State) Command { return tokenCmd(tb, CmdTokenCreate, "t1", "b", "admin") },
			wantErr: ErrInvalid, wantMsg: "t1 exists",
		},
		{
			name:    "token/without a scope refused",
			cmd:     func(tb testing.TB, s *State) Command { return tokenCmd(tb, CmdTokenCreate, "t1", "a") },
			wantErr: ErrInvalid,
		},
		{
			name: "token/delete",
			prep: func(tb testing.TB, s *State) []Command {
				return []Command{tokenCmd(tb, CmdTokenCreate, "t1", "a", "admin")}
			},
			cmd: func(tb testing.TB, s *State) Command { return mustEncode(tb, CmdTokenDelete, TokenDeleteCmd{ID: "t1"}) },
			check: func(t *testing.T, _, after *State) {
				if len(after.Tokens) != 0 || after.HasAdminToken() {
					t.Fatalf("tokens = %+v", after.Tokens)
				}
			},
		},
		{
			name: "token/delete of an unknown id refused",
			cmd: func(tb testing.TB, s *State) Command {
				return mustEncode(tb, CmdTokenDelete, TokenDeleteCmd{ID: "nope"})
			},
			wantErr: ErrInvalid,
		},
		{
			name: "token/bootstrap while no admin token exists",
			prep: func(tb testing.TB, s *State) []Command {
				return []Command{tokenCmd(tb, CmdTokenCreate, "r", "r", "read:")}
			},
			cmd: func(tb testing.TB, s *State) Command { return tokenCmd(tb, CmdTokenBootstrap, "boot", "b", "admin") },
			check: func(t *testing.T, _, after *State) {
				if !after.HasAdminToken() || len(after.Tokens) != 2 {
					t.Fatalf("tokens = %+v", after.Tokens)
				}
			},
		},
		{
			// A revoked ADMIN_TOKEN must not come back through the
			// environment of a node while another admin token exists.
			name: "token/bootstrap refused once an admin token exists",
			prep: func(tb testing.TB, s *State) []Command {
				return []Command{tokenCmd(tb, CmdTokenCreate, "t1", "a", "admin")}
			},
			cmd:     func(tb testing.TB, s *State) Command { return tokenCmd(tb, CmdTokenBootstrap, "boot", "b", "admin") },
			wantErr: ErrInvalid, wantMsg: "has an admin token",
		},
		{
			name:    "token/bootstrap of a non-admin token refused",
			cmd:     func(tb testing.TB, s *State) Command { return tokenCmd(tb, CmdTokenBootstrap, "boot", "b", "read:") },
			wantErr: ErrInvalid,
		},
		{
			name: "kv-auth/on",
			cmd:  func(tb testing.TB, s *State) Command { return mustEncode(tb, CmdKVAuth, KVAuthCmd{Required: true}) },
			check: func(t *testing.T, _, after *State) {
				if !after.KVAuth {
					t.Fatal("KV auth still off")
				}
			},
		},
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var f *FSM
			if c.fresh {
				f = NewFSM()
			} else {
				f = baseFSM(t)
			}
			if c.prep != nil {
				for _, pc := range c.prep(t, f.State()) {
					mustApply(t, f, pc)
				}
			}
			before := f.State()
			beforeJSON := stateJSON(t, before)
			err := f.ApplyCommand(c.cmd(t, before))
			after := f.State()

			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
				if !strings.Contains(fmt.Sprint(err), c.wantMsg) {
					t.Fatalf("err = %v, want it to mention %q", err, c.wantMsg)
				}
				// A refusal must leave no trace: same pointer, same content.
				if after != before {
					t.Fatal("refused command replaced the state")
				}
				if got := stateJSON(t, after); got != beforeJSON {
					t.Fatalf("refused command modified the state in place:\nbefore %s\nafter  %s", beforeJSON, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected refusal: %v", err)
			}
			if after == before {
				t.Fatal("successful command did not publish a new state")
			}
			if after.Version != before.Version+1 {
				t.Fatalf("version %d -> %d, want +1", before.Version, after.Version)
			}
			// Copy-on-write: the state we held is untouched.
			if got := stateJSON(t, before); got != beforeJSON {
				t.Fatalf("old state modified:\nbefore %s\nafter  %s", beforeJSON, got)
			}
			if f.Updated().IsZero() {
				t.Fatal("Updated() is zero after a successful apply")
			}
			if c.check != nil {
				c.check(t, before, after)
			}
		})
	}
}

// TestApplyViaRaftLog checks the raft.FSM entry point: only LogCommand entries
// reach the handlers, and their response is the handler's error.
func TestApplyViaRaftLog(t *testing.T) {
	f := baseFSM(t)
	before := f.State()
	if r := f.Apply(&raft.Log{Type: raft.LogNoop, Data: []byte{0xff}}); r != nil {
		t.Fatalf("noop entry returned %v", r)
	}
	if f.State() != before {
		t.Fatal("noop entry changed the state")
	}
	r := f.Apply(&raft.Log{Type: raft.LogCommand, Data: expandCmd(t, 0, 9, "n3")})
	if err, _ := r.(error); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("response = %v, want ErrStaleEpoch", r)
	}
	if r := f.Apply(&raft.Log{Type: raft.LogCommand, Data: expandCmd(t, 0, 1, "n3")}); r != nil {
		t.Fatalf("response = %v, want nil", r)
	}
	if f.State().Version != before.Version+1 {
		t.Fatal("version not bumped by a log command")
	}
}

func TestApplyCommandPanics(t *testing.T) {
	cases := []struct {
		name string
		cmd  Command
		want string // substring of the panic message
	}{
		{"nil", nil, "empty command"},
		{"empty", Command{}, "empty command"},
		{"type 0", Command{0, '{', '}'}, "unknown command type 0"},
		{"type after last", Command{byte(lastCommand) + 1, '{', '}'}, fmt.Sprintf("unknown command type %d", lastCommand+1)},
		{"type 255", Command{255}, "unknown command type 255"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := baseFSM(t)
			before := f.State()
			v, panicked := recoverPanic(func() { _ = f.ApplyCommand(c.cmd) })
			if !panicked {
				t.Fatal("no panic: a replica that skips an entry it cannot read diverges from the others")
			}
			if msg := fmt.Sprint(v); !strings.Contains(msg, c.want) {
				t.Fatalf("panic %q does not mention %q", msg, c.want)
			}
			if f.State() != before {
				t.Fatal("state replaced before panicking")
			}
			// The raft.FSM entry point must panic the same way.
			if _, panicked := recoverPanic(func() { f.Apply(&raft.Log{Type: raft.LogCommand, Data: c.cmd}) }); !panicked {
				t.Fatal("Apply(raft.Log) did not panic")
			}
		})
	}
}

// ---------------------------------------------------------------------------
// copy-on-write

func TestCopyOnWrite(t *testing.T) {
	f := baseFSM(t)
	// Give p0 spare capacity in InSync so that an in-place append by a later
	// apply would land in the shared backing array.
	mustApply(t, f, expandCmd(t, 0, 1, "n3"))
	mustApply(t, f, shrinkCmd(t, 0, 1, "n3"))

	old := f.State()
	oldJSON := stateJSON(t, old)
	oldInSyncFull := slices.Clone(old.Partitions[0].InSync[:cap(old.Partitions[0].InSync)])

	// Every kind of change, including in-place slice operations (DeleteFunc
	// in shrink, append in expand).
	mustApply(t, f, expandCmd(t, 0, 1, "n3"))
	mustApply(t, f, shrinkCmd(t, 2, 3, "n3"))
	mustApply(t, f, shrinkCmd(t, 0, 1, "n2"))
	mustApply(t, f, upsertCmd(t, node("n1", StatusSuspect)))
	mustApply(t, f, removeCmd(t, "n4"))
	// n4 is in sync; n2, the old primary, may stay in sync at the new epoch.
	mustApply(t, f, setCmd(t, f.State().Version, Partition{ID: 2, Primary: "n4", Replicas: []string{"n2", "n1"}, InSync: []string{"n2"}, Epoch: 4}))

	if got := stateJSON(t, old); got != oldJSON {
		t.Fatalf("held state modified by later applies:\nbefore %s\nafter  %s", oldJSON, got)
	}
	// Also beyond len: the spare capacity must not have been written to.
	if got := old.Partitions[0].InSync[:cap(old.Partitions[0].InSync)]; !slices.Equal(got, oldInSyncFull) {
		t.Fatalf("backing array of held InSync written: %q -> %q", oldInSyncFull, got)
	}

	// The reverse direction: scribbling over the old state's nested slices
	// and map must not show through in the current state (no aliasing).
	cur := f.State()
	curJSON := stateJSON(t, cur)
	for i := range old.Partitions {
		p := &old.Partitions[i]
		for j := range p.Replicas {
			p.Replicas[j] = "XX"
		}
		for j := range p.InSync {
			p.InSync[j] = "XX"
		}
	}
	old.Nodes["n2"] = NodeInfo{ID: "XX"}
	if got := stateJSON(t, cur); got != curJSON {
		t.Fatalf("current state shares memory with an old one:\nwant %s\ngot  %s", curJSON, got)
	}
}

// ---------------------------------------------------------------------------
// determinism, snapshot and restore

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// failSink refuses every write.
type failSink struct{ memSink }

func (s *failSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func persist(tb testing.TB, f *FSM) *memSink {
	tb.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		tb.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		tb.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		tb.Fatalf("sink closed=%v cancelled=%v, want closed only", sink.closed, sink.cancelled)
	}
	return sink
}

func restore(tb testing.TB, data []byte) *FSM {
	tb.Helper()
	f := NewFSM()
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		tb.Fatalf("Restore: %v", err)
	}
	return f
}

// cmdGen produces a seeded stream of commands, mostly valid for the state it
// is shown, with a few deliberately stale ones mixed in.
type cmdGen struct {
	tb     testing.TB
	r      *rand.Rand
	nodes  []string
	tokens int // tokens made so far, for fresh ids and secrets
}

func (g *cmdGen) pick(from []string) string { return from[g.r.IntN(len(from))] }

// replicas returns 0..2 distinct nodes other than primary, in random order.
func (g *cmdGen) replicas(primary string) []string {
	var out []string
	for _, i := range g.r.Perm(len(g.nodes)) {
		if n := g.nodes[i]; n != primary && len(out) < 2 {
			out = append(out, n)
		}
	}
	return out[:g.r.IntN(len(out)+1)]
}

// row proposes a valid next value for partition cur. The in-sync set never
// grows here (only expand-in-sync grows it), except that a failover may keep
// the old primary as an in-sync replica.
func (g *cmdGen) row(cur Partition) Partition {
	p := cur.clone()
	switch {
	case cur.Primary == "":
		p.Primary = g.pick(g.nodes)
		p.Epoch++
		p.Replicas = g.replicas(p.Primary)
		p.InSync = nil
	case len(cur.InSync) > 0 && g.r.IntN(2) == 0: // failover to an in-sync replica
		p.Primary = g.pick(cur.InSync)
		p.Epoch++
		p.Replicas = slices.DeleteFunc(slices.Clone(cur.Replicas), func(n string) bool { return n == p.Primary })
		p.InSync = slices.DeleteFunc(slices.Clone(cur.InSync), func(n string) bool { return n == p.Primary })
		if g.r.IntN(2) == 0 { // graceful hand-off: the old primary stays in sync
			p.Replicas = append([]string{cur.Primary}, p.Replicas...)
			p.InSync = append([]string{cur.Primary}, p.InSync...)
		}
	default: // new replica set, same primary
		p.Replicas = g.replicas(cur.Primary)
		p.InSync = slices.DeleteFunc(slices.Clone(cur.InSync), func(n string) bool { return !slices.Contains(p.Replicas, n) })
		if g.r.IntN(4) == 0 {
			p.Epoch++
		}
	}
	return p
}

// next returns a command and the error the FSM must answer it with.
func (g *cmdGen) next(s *State) (Command, error) {
	tb := g.tb
	if !s.Initialized() {
		return initCmd(tb, 8, 3), nil
	}
	pid := g.r.IntN(len(s.Partitions))
	cur := s.Partitions[pid]
	switch n := g.r.IntN(100); {
	case n < 20:
		nd := node(g.pick(g.nodes), []NodeStatus{StatusAlive, StatusSuspect, StatusDead, StatusLeft}[g.r.IntN(4)])
		nd.Since = testSince.Add(time.Duration(g.r.IntN(1e6)) * time.Millisecond)
		return upsertCmd(tb, nd), nil
	case n < 25:
		return removeCmd(tb, g.pick(g.nodes)), nil
	case n < 55:
		var rows []Partition
		for _, id := range g.r.Perm(len(s.Partitions))[:1+g.r.IntN(3)] {
			rows = append(rows, g.row(s.Partitions[id]))
		}
		return setCmd(tb, s.Version, rows...), nil
	case n < 70:
		nd := g.pick(g.nodes) // usually not a member: shrink is idempotent
		if len(cur.InSync) > 0 {
			nd = g.pick(cur.InSync)
		}
		return shrinkCmd(tb, pid, cur.Epoch, nd), nil
	case n < 85:
		if len(cur.Replicas) == 0 {
			return shrinkCmd(tb, pid, cur.Epoch, "nobody"), nil
		}
		return expandCmd(tb, pid, cur.Epoch, g.pick(cur.Replicas)), nil
	case n < 90:
		// Tokens come and go; each secret is new, each id too.
		g.tokens++
		if g.tokens%3 == 0 && len(s.Tokens) > 0 {
			for _, t := range s.Tokens {
				return mustEncode(tb, CmdTokenDelete, TokenDeleteCmd{ID: t.ID}), nil
			}
		}
		scope := []string{"admin", "read:a", "readwrite:"}[g.r.IntN(3)]
		return tokenCmd(tb, CmdTokenCreate, fmt.Sprintf("tok-%d", g.tokens), fmt.Sprintf("secret-%d", g.tokens), scope), nil
	case n < 93:
		return setCmd(tb, s.Version-uint64(g.r.IntN(2))*2+1, g.row(cur)), ErrStaleVersion
	case n < 96:
		// A set-partitions that grows the in-sync set is refused.
		for _, r := range cur.Replicas {
			if !cur.IsInSync(r) {
				p := cur.clone()
				p.InSync = append(p.InSync, r)
				return setCmd(tb, s.Version, p), ErrInvalid
			}
		}
		fallthrough
	default:
		return expandCmd(tb, pid, cur.Epoch+1, "n1"), ErrStaleEpoch
	}
}

func TestDeterminismAndSnapshotRestore(t *testing.T) {
	for _, seed := range []uint64{1, 42, 20240501} {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			const steps, snapAt = 1500, 700
			g := &cmdGen{tb: t, r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
				nodes: []string{"n1", "n2", "n3", "n4", "n5", "n6"}}
			a, b := NewFSM(), NewFSM()
			var c *FSM // restored from a's snapshot at step snapAt
			var pending raft.FSMSnapshot
			var snapJSON string
			ok := 0
			for i := range steps {
				cmd, want := g.next(a.State())
				if i == snapAt {
					// Take the snapshot now, persist it only after more
					// applies, as raft does: it must capture this moment.
					var err error
					if pending, err = a.Snapshot(); err != nil {
						t.Fatal(err)
					}
					snapJSON = stateJSON(t, a.State())
				}
				ea, eb := a.ApplyCommand(cmd), b.ApplyCommand(cmd)
				if !errors.Is(ea, want) || (want == nil && ea != nil) {
					t.Fatalf("step %d (%s %s): err = %v, want %v", i, CommandType(cmd[0]), cmd[1:], ea, want)
				}
				if fmt.Sprint(ea) != fmt.Sprint(eb) {
					t.Fatalf("step %d: replicas disagree: %v vs %v", i, ea, eb)
				}
				if ea == nil {
					ok++
				}
				if c != nil {
					if ec := c.ApplyCommand(cmd); fmt.Sprint(ec) != fmt.Sprint(ea) {
						t.Fatalf("step %d: restored replica answered %v, original %v", i, ec, ea)
					}
				}
				if i == snapAt+50 {
					sink := &memSink{}
					if err := pending.Persist(sink); err != nil {
						t.Fatal(err)
					}
					pending.Release()
					c = restore(t, sink.Bytes())
					if got := stateJSON(t, c.State()); got != snapJSON {
						t.Fatalf("snapshot does not hold the state at the time it was taken:\nwant %s\ngot  %s", snapJSON, got)
					}
					// Catch c up with the entries applied since the snapshot
					// by replaying from a fresh restore of a's current state.
					c = restore(t, persist(t, a).Bytes())
					if !reflect.DeepEqual(c.State(), a.State()) {
						t.Fatalf("restored state differs:\nwant %s\ngot  %s", stateJSON(t, a.State()), stateJSON(t, c.State()))
					}
				}
			}
			// The stream must have been mostly accepted, or the test would
			// prove nothing about the accepting paths.
			if ok < steps*3/4 {
				t.Fatalf("only %d of %d commands accepted", ok, steps)
			}
			if a.State().Version != uint64(ok) {
				t.Fatalf("version %d, want %d (one per accepted command)", a.State().Version, ok)
			}
			ja, jb, jc := stateJSON(t, a.State()), stateJSON(t, b.State()), stateJSON(t, c.State())
			if ja != jb || ja != jc {
				t.Fatalf("states diverged:\na %s\nb %s\nc %s", ja, jb, jc)
			}
			if !reflect.DeepEqual(a.State(), b.State()) || !reflect.DeepEqual(a.State(), c.State()) {
				t.Fatal("states JSON-equal but not DeepEqual")
			}
		})
	}
}

func TestSnapshotConcurrentWithApply(t *testing.T) {
	// Raft persists a snapshot on another goroutine while the FSM keeps
	// applying; with copy-on-write this must be race-free (run with -race)
	// and persist exactly the captured state.
	f := baseFSM(t)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	want := stateJSON(t, f.State())
	sink := &memSink{}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := snap.Persist(sink); err != nil {
			t.Error(err)
		}
	})
	for i := range 200 {
		mustApply(t, f, upsertCmd(t, node(fmt.Sprintf("x%d", i), StatusAlive)))
		if i%2 == 0 {
			mustApply(t, f, expandCmd(t, 0, 1, "n3"))
		} else {
			mustApply(t, f, shrinkCmd(t, 0, 1, "n3"))
		}
	}
	wg.Wait()
	snap.Release()
	if got := stateJSON(t, restore(t, sink.Bytes()).State()); got != want {
		t.Fatalf("persisted state is not the captured one:\nwant %s\ngot  %s", want, got)
	}
}

func TestPersistFailureCancelsSink(t *testing.T) {
	f := baseFSM(t)
	snap, _ := f.Snapshot()
	sink := &failSink{}
	if err := snap.Persist(sink); err == nil {
		t.Fatal("Persist succeeded on a failing sink")
	}
	// Raft must learn the snapshot is unusable: Cancel, not Close.
	if !sink.cancelled || sink.closed {
		t.Fatalf("cancelled=%v closed=%v, want cancelled only", sink.cancelled, sink.closed)
	}
}

func TestRestore(t *testing.T) {
	t.Run("garbage is refused and keeps the state", func(t *testing.T) {
		f := baseFSM(t)
		before := f.State()
		if err := f.Restore(io.NopCloser(strings.NewReader("{not json"))); err == nil {
			t.Fatal("Restore accepted garbage")
		}
		if f.State() != before {
			t.Fatal("failed Restore replaced the state")
		}
	})
	t.Run("missing nodes map is usable", func(t *testing.T) {
		// A snapshot without "nodes" must not leave a nil map that the next
		// upsert would panic on.
		f := restore(t, []byte(`{"config":{"partitions":2,"replication_factor":1},"partitions":[{"id":0},{"id":1}],"version":9}`))
		mustApply(t, f, upsertCmd(t, node("n1", StatusAlive)))
		if s := f.State(); s.Version != 10 || len(s.Nodes) != 1 {
			t.Fatalf("version %d nodes %d, want 10 and 1", s.Version, len(s.Nodes))
		}
	})
	t.Run("replaces state and notifies", func(t *testing.T) {
		src := baseFSM(t)
		data := persist(t, src).Bytes()
		f := NewFSM()
		mustApply(t, f, upsertCmd(t, node("stale", StatusAlive)))
		ch, stop := f.Watch()
		defer stop()
		if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			t.Fatal(err)
		}
		if _, ok := f.State().Nodes["stale"]; ok {
			t.Fatal("Restore merged instead of replacing")
		}
		if !reflect.DeepEqual(f.State(), src.State()) {
			t.Fatal("restored state differs from source")
		}
		select {
		case <-ch:
		default:
			t.Fatal("Restore did not notify watchers")
		}
	})
}

// ---------------------------------------------------------------------------
// Watch

func TestWatch(t *testing.T) {
	f := baseFSM(t)
	ch, stop := f.Watch()
	ch2, stop2 := f.Watch()
	defer stop2()

	// Nothing happened since Watch: nothing to receive.
	select {
	case <-ch:
		t.Fatal("notified without a change")
	default:
	}

	// A refused command is not a change.
	if err := f.ApplyCommand(expandCmd(t, 0, 99, "n3")); err == nil {
		t.Fatal("expected refusal")
	}
	select {
	case <-ch:
		t.Fatal("notified for a refused command")
	default:
	}

	// Three changes while nobody reads coalesce into one value; the FSM
	// never blocks on a slow watcher.
	for range 3 {
		mustApply(t, f, upsertCmd(t, node("n9", StatusAlive)))
	}
	for _, c := range []<-chan struct{}{ch, ch2} {
		select {
		case <-c:
		default:
			t.Fatal("not notified after a change")
		}
		select {
		case <-c:
			t.Fatal("notifications not coalesced")
		default:
		}
	}

	stop()
	stop() // idempotent
	f.mu.Lock()
	n := len(f.watchers)
	f.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d watchers registered after stop, want 1", n)
	}
	mustApply(t, f, removeCmd(t, "n9"))
	select {
	case <-ch:
		t.Fatal("stopped watcher still notified")
	default:
	}
	select {
	case <-ch2:
	default:
		t.Fatal("remaining watcher not notified")
	}
}

// ---------------------------------------------------------------------------
// benchmarks

func BenchmarkApplyUpsertNode(b *testing.B) {
	f := NewFSM()
	mustApply(b, f, initCmd(b, 16, 3))
	cmds := make([]Command, 16)
	for i := range cmds {
		cmds[i] = upsertCmd(b, node(fmt.Sprintf("node-%d", i), StatusAlive))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := f.ApplyCommand(cmds[i%len(cmds)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkApplySetPartitions(b *testing.B) {
	const parts = 16
	f := NewFSM()
	mustApply(b, f, initCmd(b, parts, 3))
	ids := []string{"node-1", "node-2", "node-3", "node-4", "node-5"}
	rows := make([]Partition, parts)
	for i := range rows {
		rows[i] = Partition{ID: i, Primary: ids[i%5], Replicas: []string{ids[(i+1)%5], ids[(i+2)%5]},
			InSync: []string{ids[(i+1)%5], ids[(i+2)%5]}, Epoch: 1}
	}
	// Reach the rows legally once; re-applying them is then accepted (their
	// in-sync members are all in sync already), so every iteration runs
	// the full validation, in-sync checks included.
	mustSetRows(b, f, rows...)
	// ExpectVersion changes every iteration; splice it into a pre-encoded
	// body rather than re-marshal all 16 rows inside the timed loop.
	body, err := json.Marshal(rows)
	if err != nil {
		b.Fatal(err)
	}
	head := append([]byte{byte(CmdSetPartition)}, `{"expect_version":`...)
	tail := append(append([]byte(`,"partitions":`), body...), '}')
	buf := make([]byte, 0, len(head)+20+len(tail))
	b.ReportAllocs()
	for b.Loop() {
		buf = append(strconv.AppendUint(append(buf[:0], head...), f.State().Version, 10), tail...)
		if err := f.ApplyCommand(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkApplyInSync(b *testing.B) {
	f := NewFSM()
	mustApply(b, f, initCmd(b, 16, 3))
	mustSetRows(b, f, Partition{ID: 3, Primary: "n1", Replicas: []string{"n2", "n3"}, InSync: []string{"n2"}, Epoch: 1})
	cmds := []Command{expandCmd(b, 3, 1, "n3"), shrinkCmd(b, 3, 1, "n3")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := f.ApplyCommand(cmds[i&1]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
