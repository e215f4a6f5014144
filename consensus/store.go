package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/clusterkit/clusterkit/internal/logbridge"
)

// ErrNotLeader is returned by calls that only the Raft leader can serve.
var ErrNotLeader = errors.New("not the raft leader")

// Options configures a Store.
type Options struct {
	NodeID string
	// Stream carries Raft's connections: in a node, the Raft side of the
	// internal port (package peer); TCPStream for a plain listener.
	Stream StreamLayer
	// Advertise is the address other servers dial to reach this one.
	Advertise string
	DataDir   string
	// Bootstrap makes this node a single-voter cluster if DataDir holds no
	// Raft state yet. It is ignored on restart.
	Bootstrap bool
	// MayBootstrap, if set, is asked before bootstrapping (Bootstrap set,
	// no Raft state): false makes the node wait to be added instead, as
	// when it finds the cluster it was meant to found already running.
	MayBootstrap func() bool
	Logger       *slog.Logger

	// Timeouts; zero means the package default (tuned for a LAN).
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	LeaderLease      time.Duration
}

// Store owns the Raft instance, its on-disk log and the FSM.
type Store struct {
	raft    *raft.Raft
	fsm     *FSM
	trans   *raft.NetworkTransport
	logs    *raftboltdb.BoltStore
	notify  chan bool
	nodeID  string
	log     *slog.Logger
	started time.Time

	leaderSince atomic.Int64 // unix nanos when the current leader was observed
	obsDone     chan struct{}
	closeOnce   sync.Once
	closeErr    error
	obsCh       chan raft.Observation
	observer    *raft.Observer
}

// Open starts Raft on opts.DataDir.
func Open(opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	dir := filepath.Join(opts.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create raft dir: %w", err)
	}
	hl := logbridge.HCLog("raft", opts.Logger, hclog.Info)

	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(opts.NodeID)
	conf.Logger = hl
	conf.HeartbeatTimeout = orDefault(opts.HeartbeatTimeout, 500*time.Millisecond)
	conf.ElectionTimeout = orDefault(opts.ElectionTimeout, 500*time.Millisecond)
	conf.LeaderLeaseTimeout = orDefault(opts.LeaderLease, 250*time.Millisecond)
	conf.SnapshotThreshold = 1024
	conf.SnapshotInterval = 30 * time.Second
	notify := make(chan bool, 16)
	conf.NotifyCh = notify

	logs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return nil, fmt.Errorf("open raft log store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hl)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	adv, err := net.ResolveTCPAddr("tcp", opts.Advertise)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("resolve raft advertise address %q: %w", opts.Advertise, err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  &streamLayer{s: opts.Stream, advertise: adv},
		MaxPool: 4,
		Timeout: 5 * time.Second,
		Logger:  hl,
	})

	existing, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		trans.Close()
		logs.Close()
		return nil, fmt.Errorf("inspect raft state: %w", err)
	}
	fsm := NewFSM()
	r, err := raft.NewRaft(conf, fsm, logs, logs, snaps, trans)
	if err != nil {
		trans.Close()
		logs.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s := &Store{raft: r, fsm: fsm, trans: trans, logs: logs, notify: notify,
		nodeID: opts.NodeID, log: opts.Logger, started: time.Now(),
		obsDone: make(chan struct{}), obsCh: make(chan raft.Observation, 16)}
	s.observer = raft.NewObserver(s.obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(s.observer)
	go s.observeLeader()
	switch {
	case existing:
		s.log.Info("raft state found, resuming", "dir", dir)
	case opts.Bootstrap && opts.MayBootstrap != nil && !opts.MayBootstrap():
		s.log.Info("no raft state; not bootstrapping, waiting to be added by the leader")
	case opts.Bootstrap:
		s.log.Info("bootstrapping a new cluster", "id", opts.NodeID, "raft_addr", opts.Advertise)
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: conf.LocalID, Address: raft.ServerAddress(opts.Advertise),
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			_ = s.Close()
			return nil, fmt.Errorf("bootstrap raft: %w", err)
		}
	default:
		s.log.Info("no raft state; waiting to be added by the leader")
	}
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// FSM returns the state machine (for reading state and watching changes).
func (s *Store) FSM() *FSM { return s.fsm }

// FSMUpdated is when this node last applied a change to the cluster state.
func (s *Store) FSMUpdated() time.Time { return s.fsm.Updated() }

// State returns the current replicated state; callers must not modify it.
func (s *Store) State() *State { return s.fsm.State() }

// LeaderNotify delivers true when this node gains leadership and false when
// it loses it. Exactly one goroutine should read it.
func (s *Store) LeaderNotify() <-chan bool { return s.notify }

// IsLeader reports whether this node is the Raft leader right now.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// RaftState is "Leader", "Follower", "Candidate" or "Shutdown".
func (s *Store) RaftState() string { return s.raft.State().String() }

// Leader returns the current leader's ID and Raft address, empty if unknown.
func (s *Store) Leader() (id, addr string) {
	a, i := s.raft.LeaderWithID()
	return string(i), string(a)
}

// Apply proposes cmd and waits for it to be committed and applied here. It
// returns the log index, or the FSM's refusal, or ErrNotLeader.
func (s *Store) Apply(ctx context.Context, cmd Command) (uint64, error) {
	// A command every replica would refuse to apply (panicking) must never
	// reach the log.
	if len(cmd) == 0 || !s.fsm.Known(CommandType(cmd[0])) {
		return 0, fmt.Errorf("%w: empty or unknown command", ErrInvalid)
	}
	if !s.IsLeader() {
		return 0, ErrNotLeader
	}
	f := s.raft.Apply(cmd, timeoutFrom(ctx, 5*time.Second))
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, fmt.Errorf("apply %s: %w", CommandType(cmd[0]), ErrNotLeader)
		}
		return 0, fmt.Errorf("apply %s: %w", CommandType(cmd[0]), err)
	}
	if rerr, ok := f.Response().(error); ok && rerr != nil {
		return f.Index(), rerr
	}
	return f.Index(), nil
}

// Barrier waits until every entry committed before it has been applied; a new
// leader calls it before trusting its FSM.
func (s *Store) Barrier(ctx context.Context) error {
	if err := s.raft.Barrier(timeoutFrom(ctx, 10*time.Second)).Error(); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	return nil
}

// WaitApplied blocks until this node's FSM has applied index idx.
func (s *Store) WaitApplied(ctx context.Context, idx uint64) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	// raft.AppliedIndex counts entries handed to the FSM goroutine, not
	// entries it has applied; ask the FSM itself.
	for s.fsm.AppliedIndex() < idx {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for raft index %d (applied %d): %w", idx, s.fsm.AppliedIndex(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Server is one member of the Raft configuration.
type Server struct {
	ID      string
	Address string
	Voter   bool
}

// Servers returns the current Raft configuration.
func (s *Store) Servers() ([]Server, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("get raft configuration: %w", err)
	}
	var out []Server
	for _, srv := range f.Configuration().Servers {
		out = append(out, Server{ID: string(srv.ID), Address: string(srv.Address), Voter: srv.Suffrage == raft.Voter})
	}
	return out, nil
}

// AddServer adds (or re-addresses) a server as a voter or non-voter.
func (s *Store) AddServer(ctx context.Context, id, addr string, voter bool) error {
	timeout := timeoutFrom(ctx, 10*time.Second)
	var f raft.IndexFuture
	if voter {
		f = s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	} else {
		f = s.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	}
	if err := f.Error(); err != nil {
		return fmt.Errorf("add raft server %s: %w", id, err)
	}
	return nil
}

// RemoveServer removes a server from the Raft configuration.
func (s *Store) RemoveServer(ctx context.Context, id string) error {
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, timeoutFrom(ctx, 10*time.Second)).Error(); err != nil {
		return fmt.Errorf("remove raft server %s: %w", id, err)
	}
	return nil
}

// TransferLeadership hands leadership to another voter, if there is one.
func (s *Store) TransferLeadership() error {
	if err := s.raft.LeadershipTransfer().Error(); err != nil {
		return fmt.Errorf("leadership transfer: %w", err)
	}
	return nil
}

// Stats is the subset of Raft statistics the management API reports.
type Stats struct {
	State         string
	Term          uint64
	LastLogIndex  uint64
	LastLogTerm   uint64
	CommitIndex   uint64
	AppliedIndex  uint64
	NumPeers      int
	LastContact   string
	LeaderID      string
	LeaderAddress string
}

// Stats returns current Raft statistics.
func (s *Store) Stats() Stats {
	m := s.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(m[k], 10, 64); return v }
	id, addr := s.Leader()
	peers, _ := strconv.Atoi(m["num_peers"])
	return Stats{
		State: s.RaftState(), Term: u("term"), LastLogIndex: u("last_log_index"),
		LastLogTerm: u("last_log_term"), CommitIndex: u("commit_index"),
		AppliedIndex: u("applied_index"), NumPeers: peers, LastContact: m["last_contact"],
		LeaderID: id, LeaderAddress: addr,
	}
}

func (s *Store) observeLeader() {
	defer close(s.obsDone)
	for o := range s.obsCh {
		lo := o.Data.(raft.LeaderObservation)
		s.leaderSince.Store(time.Now().UnixNano())
		if lo.LeaderID != "" {
			s.log.Info("raft leader observed", "leader", string(lo.LeaderID), "addr", string(lo.LeaderAddr), "term", s.raft.CurrentTerm())
		}
	}
}

// LeaderSince returns when this node observed the current leader take over
// (zero if it has not seen an election since it started).
func (s *Store) LeaderSince() time.Time {
	n := s.leaderSince.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Close shuts Raft down and closes the log store. It may be called more
// than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Store) close() error {
	err := s.raft.Shutdown().Error()
	s.raft.DeregisterObserver(s.observer)
	close(s.obsCh)
	<-s.obsDone
	return errors.Join(err, s.trans.Close(), s.logs.Close())
}

func timeoutFrom(ctx context.Context, def time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			return d
		}
		return time.Millisecond
	}
	return def
}

// StreamLayer is where Raft accepts and dials its connections.
type StreamLayer interface {
	Accept() (net.Conn, error)
	Close() error
	Dial(addr string, timeout time.Duration) (net.Conn, error)
}

// TCPStream is a StreamLayer of plain TCP on an already-bound listener.
func TCPStream(ln net.Listener) StreamLayer { return tcpStream{ln} }

type tcpStream struct{ net.Listener }

func (t tcpStream) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, timeout)
}

// streamLayer adapts a StreamLayer to raft.StreamLayer, which also wants
// the advertised address.
type streamLayer struct {
	s         StreamLayer
	advertise net.Addr
}

func (l *streamLayer) Accept() (net.Conn, error) { return l.s.Accept() }
func (l *streamLayer) Close() error              { return l.s.Close() }
func (l *streamLayer) Addr() net.Addr            { return l.advertise }

func (l *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return l.s.Dial(string(addr), timeout)
}
