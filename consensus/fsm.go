package consensus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// CommandType is the first byte of every Raft log entry this FSM applies.
type CommandType byte

// Command types. Values are part of the on-disk log format: append only.
const (
	CmdInit           CommandType = 1
	CmdUpsertNode     CommandType = 2
	CmdRemoveNode     CommandType = 3
	CmdSetPartition   CommandType = 4
	CmdShrinkInSync   CommandType = 5
	CmdExpandInSync   CommandType = 6
	CmdTokenCreate    CommandType = 7
	CmdTokenDelete    CommandType = 8
	CmdTokenBootstrap CommandType = 9
	CmdKVAuth         CommandType = 10

	// lastCommand is the highest command type; tests probe the one after.
	lastCommand = CmdKVAuth
)

func (t CommandType) String() string {
	switch t {
	case CmdInit:
		return "init"
	case CmdUpsertNode:
		return "upsert-node"
	case CmdRemoveNode:
		return "remove-node"
	case CmdSetPartition:
		return "set-partitions"
	case CmdShrinkInSync:
		return "shrink-in-sync"
	case CmdExpandInSync:
		return "expand-in-sync"
	case CmdTokenCreate:
		return "token-create"
	case CmdTokenDelete:
		return "token-delete"
	case CmdTokenBootstrap:
		return "token-bootstrap"
	case CmdKVAuth:
		return "kv-auth"
	}
	return fmt.Sprintf("command(%d)", byte(t))
}

// Errors returned (as the Apply response) when a command is refused. They are
// deterministic: every replica of the FSM refuses the same command.
var (
	ErrStaleVersion = errors.New("partition table changed since the proposal was computed")
	ErrStaleEpoch   = errors.New("partition epoch does not match")
	ErrInvalid      = errors.New("invalid command")
)

// InitCmd fixes the cluster configuration; applied once, by the first leader.
type InitCmd struct {
	Config ClusterConfig `json:"config"`
}

// UpsertNodeCmd records a node's addresses and health.
type UpsertNodeCmd struct {
	Node NodeInfo `json:"node"`
}

// RemoveNodeCmd forgets a node that left the cluster.
type RemoveNodeCmd struct {
	ID string `json:"id"`
}

// SetPartitionsCmd replaces rows of the partition table. The leader computes
// it from the state at ExpectVersion; if anything changed since, the FSM
// refuses it and the leader recomputes. Epochs may never go backwards.
type SetPartitionsCmd struct {
	ExpectVersion uint64      `json:"expect_version"`
	Partitions    []Partition `json:"partitions"`
}

// InSyncCmd adds a replica to, or removes it from, a partition's in-sync set,
// on behalf of the partition's primary at Epoch.
type InSyncCmd struct {
	Partition int    `json:"partition"`
	Epoch     uint64 `json:"epoch"`
	Node      string `json:"node"`
}

// Command is one encoded log entry: a type byte followed by a JSON body.
type Command []byte

// Encode builds a Command of type t from body.
func Encode(t CommandType, body any) (Command, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return append([]byte{byte(t)}, b...), nil
}

// FSM is the deterministic state machine behind Raft. It holds the latest
// *State in an atomic pointer and replaces it on every change.
type FSM struct {
	state atomic.Pointer[State]
	// updated is when this replica last changed state (local wall time,
	// for display only; not part of the replicated state).
	updated atomic.Int64
	// applied is the last Raft index this FSM has applied or restored.
	applied atomic.Uint64

	mu       sync.Mutex
	watchers []chan struct{}
	handlers map[CommandType]func(*State, []byte) error
}

// NewFSM returns an FSM holding an empty, uninitialised state.
func NewFSM() *FSM {
	f := &FSM{}
	f.state.Store(&State{Nodes: map[string]NodeInfo{}})
	f.handlers = map[CommandType]func(*State, []byte) error{
		CmdInit:           decodeInto(applyInit),
		CmdUpsertNode:     decodeInto(applyUpsertNode),
		CmdRemoveNode:     decodeInto(applyRemoveNode),
		CmdSetPartition:   decodeInto(applySetPartitions),
		CmdShrinkInSync:   decodeInto(applyShrinkInSync),
		CmdExpandInSync:   decodeInto(applyExpandInSync),
		CmdTokenCreate:    decodeInto(applyTokenCreate),
		CmdTokenDelete:    decodeInto(applyTokenDelete),
		CmdTokenBootstrap: decodeInto(applyTokenBootstrap),
		CmdKVAuth:         decodeInto(applyKVAuth),
	}
	return f
}

// Updated returns when this replica last applied a change (zero if never).
func (f *FSM) Updated() time.Time {
	if n := f.updated.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// State returns the current state. Callers must not modify it.
func (f *FSM) State() *State { return f.state.Load() }

// Watch returns a channel that receives a value (coalesced, never blocking
// the FSM) after every change of state. Call the returned func to stop.
func (f *FSM) Watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	f.watchers = append(f.watchers, ch)
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.watchers = slices.DeleteFunc(f.watchers, func(c chan struct{}) bool { return c == ch })
	}
}

func (f *FSM) notify() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Apply implements raft.FSM. It returns nil or an error (see the Err vars);
// an unknown command type is a corrupted log or a version skew, and applying
// anything else would make replicas diverge, so it panics.
func (f *FSM) Apply(l *raft.Log) any {
	defer f.applied.Store(l.Index)
	if l.Type != raft.LogCommand {
		return nil
	}
	return f.ApplyCommand(Command(l.Data))
}

// Known reports whether t has a handler.
func (f *FSM) Known(t CommandType) bool {
	_, ok := f.handlers[t]
	return ok
}

// ApplyCommand applies one encoded command; exported for tests and benchmarks.
func (f *FSM) ApplyCommand(c Command) error {
	if len(c) == 0 {
		panic("consensus: empty command in raft log")
	}
	h, ok := f.handlers[CommandType(c[0])]
	if !ok {
		panic(fmt.Sprintf("consensus: unknown command type %d in raft log", c[0]))
	}
	next := f.state.Load().clone()
	if err := h(next, c[1:]); err != nil {
		return err
	}
	next.Version++
	f.state.Store(next)
	f.updated.Store(time.Now().UnixNano())
	f.notify()
	return nil
}

func decodeInto[T any](fn func(*State, T) error) func(*State, []byte) error {
	return func(s *State, b []byte) error {
		var v T
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		return fn(s, v)
	}
}

func applyInit(s *State, c InitCmd) error {
	if s.Initialized() {
		return fmt.Errorf("%w: cluster already initialised", ErrInvalid)
	}
	if c.Config.Partitions < 1 || c.Config.ReplicationFactor < 1 || c.Config.MinInSync < 0 {
		return fmt.Errorf("%w: partitions and replication factor must be >= 1", ErrInvalid)
	}
	s.Config = c.Config
	s.Partitions = make([]Partition, c.Config.Partitions)
	for i := range s.Partitions {
		s.Partitions[i].ID = i
	}
	return nil
}

func applyUpsertNode(s *State, c UpsertNodeCmd) error {
	if c.Node.ID == "" {
		return fmt.Errorf("%w: node id is empty", ErrInvalid)
	}
	prev, known := s.Nodes[c.Node.ID]
	s.Nodes[c.Node.ID] = c.Node
	if known && prev.Store != "" && c.Node.Store != "" && prev.Store != c.Node.Store {
		forgetCopies(s, c.Node.ID)
	}
	return nil
}

// forgetCopies handles a node whose data directory is new: the copies the
// table says it holds are gone, so it must not count as in sync anywhere,
// and above all must not stay primary, since a new primary's copy becomes
// every replica's (reconcile). It stays an owner, out of sync, so its
// partitions are copied to it again. A partition it leads passes to an
// in-sync replica under a new epoch; with none left its acknowledged
// writes are lost already, and the node stays primary of its empty copy
// (under a new epoch) so that the partition serves again.
func forgetCopies(s *State, node string) {
	isNode := func(n string) bool { return n == node }
	for i := range s.Partitions {
		p := &s.Partitions[i]
		if p.Primary != node {
			p.InSync = slices.DeleteFunc(p.InSync, isNode)
			continue
		}
		p.Epoch++
		if len(p.InSync) == 0 {
			continue
		}
		next := p.InSync[0]
		isNext := func(n string) bool { return n == next }
		p.Primary = next
		p.InSync = slices.DeleteFunc(p.InSync, isNext)
		p.Replicas = append([]string{node}, slices.DeleteFunc(p.Replicas, isNext)...)
	}
}

func applyRemoveNode(s *State, c RemoveNodeCmd) error {
	delete(s.Nodes, c.ID)
	return nil
}

func applySetPartitions(s *State, c SetPartitionsCmd) error {
	if c.ExpectVersion != s.Version {
		return fmt.Errorf("%w: expected version %d, have %d", ErrStaleVersion, c.ExpectVersion, s.Version)
	}
	for _, p := range c.Partitions {
		cur, ok := s.Partition(p.ID)
		if !ok {
			return fmt.Errorf("%w: no partition %d", ErrInvalid, p.ID)
		}
		if p.Epoch < cur.Epoch {
			return fmt.Errorf("%w: partition %d epoch would go back from %d to %d", ErrInvalid, p.ID, cur.Epoch, p.Epoch)
		}
		if p.Primary != cur.Primary {
			if p.Epoch == cur.Epoch {
				return fmt.Errorf("%w: partition %d changes primary without a new epoch", ErrInvalid, p.ID)
			}
			// Only a copy known to hold every acknowledged write may lead:
			// promoting anything else could lose acknowledged data.
			if cur.Primary != "" && !cur.IsInSync(p.Primary) {
				return fmt.Errorf("%w: partition %d: %s is not in sync and cannot become primary", ErrInvalid, p.ID, p.Primary)
			}
		}
		// The in-sync set only grows through ExpandInSync, after the
		// primary copied the partition to the newcomer; a new epoch may
		// keep the old primary in sync (it holds every acknowledged write,
		// and the new primary reconciles every in-sync copy first).
		for _, n := range p.InSync {
			if cur.IsInSync(n) || (p.Epoch > cur.Epoch && cur.Primary != "" && n == cur.Primary) {
				continue
			}
			return fmt.Errorf("%w: partition %d: %s cannot join the in-sync set without a copy", ErrInvalid, p.ID, n)
		}
		if p.Primary != "" && slices.Contains(p.Replicas, p.Primary) {
			return fmt.Errorf("%w: partition %d lists its primary as a replica", ErrInvalid, p.ID)
		}
		for _, n := range p.InSync {
			if !slices.Contains(p.Replicas, n) {
				return fmt.Errorf("%w: partition %d in-sync node %s is not a replica", ErrInvalid, p.ID, n)
			}
		}
		s.Partitions[p.ID] = p.clone()
	}
	return nil
}

func checkEpoch(s *State, c InSyncCmd) (*Partition, error) {
	if c.Partition < 0 || c.Partition >= len(s.Partitions) {
		return nil, fmt.Errorf("%w: no partition %d", ErrInvalid, c.Partition)
	}
	p := &s.Partitions[c.Partition]
	if p.Epoch != c.Epoch {
		return nil, fmt.Errorf("%w: partition %d is at epoch %d, command is for %d", ErrStaleEpoch, c.Partition, p.Epoch, c.Epoch)
	}
	return p, nil
}

func applyShrinkInSync(s *State, c InSyncCmd) error {
	p, err := checkEpoch(s, c)
	if err != nil {
		return err
	}
	p.InSync = slices.DeleteFunc(p.InSync, func(n string) bool { return n == c.Node })
	return nil
}

func applyExpandInSync(s *State, c InSyncCmd) error {
	p, err := checkEpoch(s, c)
	if err != nil {
		return err
	}
	if !slices.Contains(p.Replicas, c.Node) {
		return fmt.Errorf("%w: %s is not a replica of partition %d", ErrInvalid, c.Node, c.Partition)
	}
	if !slices.Contains(p.InSync, c.Node) {
		p.InSync = append(p.InSync, c.Node)
	}
	return nil
}

// Snapshot implements raft.FSM. The state is immutable, so capturing the
// pointer is the whole snapshot.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{state: f.state.Load(), index: f.applied.Load()}, nil
}

// AppliedIndex is the last Raft log index this FSM has applied or restored.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// snapshotDoc is the snapshot format: the State's fields plus the index it
// reflects (absent, i.e. 0, in snapshots written before it was added).
type snapshotDoc struct {
	*State
	AppliedIndex uint64 `json:"applied_index,omitempty"`
}

// Restore implements raft.FSM: it replaces the whole state.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var s State
	doc := snapshotDoc{State: &s}
	if err := json.NewDecoder(rc).Decode(&doc); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if s.Nodes == nil {
		s.Nodes = map[string]NodeInfo{}
	}
	f.state.Store(&s)
	f.applied.Store(doc.AppliedIndex)
	f.updated.Store(time.Now().UnixNano())
	f.notify()
	return nil
}

type fsmSnapshot struct {
	state *State
	index uint64
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(snapshotDoc{State: s.state, AppliedIndex: s.index}); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
