package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/peer"
)

// Options configures an Engine.
type Options struct {
	Router  Router
	Control Control
	Storage Storage
	// Transport reaches the other nodes.
	Transport Transport
	Logger    *slog.Logger
	// RequestTimeout bounds a client operation, including retries while the
	// partition table changes under it. Default 5s.
	RequestTimeout time.Duration
	// ReplicationTimeout bounds one replica's answer before it is dropped
	// from the in-sync set. Default 1s.
	ReplicationTimeout time.Duration
	// ReadMode is "lease" (default: reads are answered under a read lease)
	// or "confirm" (every read asks the in-sync replicas first). Both are
	// linearizable; confirm exists to measure what the lease saves.
	ReadMode string
	// HistoryRevisions and HistoryAge bound each partition's retained
	// history: the newest that many write numbers, none older than that
	// (defaults DefaultHistoryRevisions, DefaultHistoryAge).
	HistoryRevisions uint64
	HistoryAge       time.Duration
	// MaxWatchers bounds this node's open watches (DefaultMaxWatchers).
	MaxWatchers int
}

// Engine is one node's data plane: it runs the partitions this node leads
// (write rounds, replication, read leases, catch-up of replicas) and applies
// what their primaries send to the copies it holds.
type Engine struct {
	router  Router
	control Control
	store   Storage
	log     *slog.Logger
	peers   Transport

	reqTimeout  time.Duration
	replTimeout time.Duration

	locksMu sync.Mutex
	locks   map[int]*sync.RWMutex

	queuesMu sync.Mutex
	queues   map[int]*writeQueue

	// unresolved: partitions with replicas that missed a round and are
	// not yet out of the in-sync set (see dropReplicas).
	unresolvedMu sync.Mutex
	unresolved   map[int]unresolvedRound
	// anyUnsettled is whether some entry of unresolved is an addition of
	// unknown outcome (kept under unresolvedMu), so that a linearizable
	// read checks for one without taking the lock.
	anyUnsettled atomic.Bool

	feedsMu sync.Mutex
	feeds   map[int]*feed
	hub     *hub

	historyRevisions uint64
	historyAge       time.Duration

	copies copyTracker
	count  counters

	kick        chan struct{}
	leases      *leases
	guard       *tableGuard
	confirmRead bool
}

// New builds an Engine. Call Run to start its background replica sync.
func New(o Options) (*Engine, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Engine{
		router: o.Router, control: o.Control, store: o.Storage,
		log: o.Logger, peers: o.Transport,
		reqTimeout:  cmpOr(o.RequestTimeout, 5*time.Second),
		replTimeout: cmpOr(o.ReplicationTimeout, time.Second),
		locks:       map[int]*sync.RWMutex{},
		queues:      map[int]*writeQueue{},
		unresolved:  map[int]unresolvedRound{},
		feeds:       map[int]*feed{},
		kick:        make(chan struct{}, 1),
		leases:      newLeases(time.Now()),
		confirmRead: o.ReadMode == "confirm",
	}
	s.historyRevisions = o.HistoryRevisions
	if s.historyRevisions == 0 {
		s.historyRevisions = DefaultHistoryRevisions
	}
	s.historyAge = cmpOr(o.HistoryAge, DefaultHistoryAge)
	s.hub = newHub(s, o.MaxWatchers)
	g, err := newTableGuard(o.Storage)
	if err != nil {
		return nil, err
	}
	s.guard = g
	return s, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (s *Engine) lock(p int) *sync.RWMutex {
	s.locksMu.Lock()
	defer s.locksMu.Unlock()
	l, ok := s.locks[p]
	if !ok {
		l = &sync.RWMutex{}
		s.locks[p] = l
	}
	return l
}

// Partitions is the cluster's partition count (0 until it is initialised).
func (s *Engine) Partitions() int { return s.router.Partitions() }

// ownedPartitions lists the partitions this node holds a copy of according
// to the table (as primary or replica).
func (s *Engine) ownedPartitions() []int {
	self := s.router.Self()
	var out []int
	for p := range s.router.Partitions() {
		if rt, ok := s.router.Route(p); ok && slices.Contains(rt.Owners(), self) {
			out = append(out, p)
		}
	}
	return out
}

// LocalKeys counts the keys this node holds for the partitions it owns.
func (s *Engine) LocalKeys() int {
	n := 0
	for _, p := range s.ownedPartitions() {
		if m, err := s.store.Meta(p); err == nil {
			n += int(m.Keys)
		}
	}
	return n
}

// ListKeys returns up to limit keys this node holds (for the partitions it
// owns, as primary or replica), in order, and how many it holds in all.
func (s *Engine) ListKeys(limit int) (keys []string, total int, err error) {
	keys = []string{}
	for _, p := range s.ownedPartitions() {
		m, err := s.store.Meta(p)
		if err != nil {
			return nil, 0, err
		}
		total += int(m.Keys)
		if len(keys) < limit {
			ks, err := s.store.Keys(p, limit-len(keys))
			if err != nil {
				return nil, 0, err
			}
			keys = append(keys, ks...)
		}
	}
	slices.Sort(keys)
	return keys, total, nil
}

// withDeadline bounds a client operation.
func (s *Engine) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.reqTimeout)
}

// retry runs attempt until it succeeds, fails for good, or ctx ends. Only
// errors that guarantee nothing was applied are retried, with a short
// backoff so the partition table can catch up.
func retry(ctx context.Context, attempt func() error) error {
	backoff := 5 * time.Millisecond
	var last error
	for {
		err := attempt()
		if err == nil || !errcode.Retryable(err) {
			return err
		}
		last = err
		select {
		case <-ctx.Done():
			return errcode.New(errcode.Unavailable, "partition owners unavailable: %v", last)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

// Write applies one op through its key's primary.
func (s *Engine) Write(ctx context.Context, op Op, minCopies int) (Result, error) {
	if err := s.ready(); err != nil {
		return Result{}, err
	}
	res, err := s.forward(ctx, s.router.PartitionOf(op.Key), []Op{op}, false, minCopies)
	if err != nil {
		return Result{}, err
	}
	return res[0], nil
}

// WriteBatch applies ops, each through its key's primary: the ops of one
// partition go in one request, and the partitions in parallel. Atomic
// ops must all be of one partition and are applied all or none. It returns
// a result or an error for every op, in order.
func (s *Engine) WriteBatch(ctx context.Context, ops []Op, atomic bool, minCopies int) ([]Result, []error) {
	results, errs := make([]Result, len(ops)), make([]error, len(ops))
	fail := func(err error) ([]Result, []error) {
		for i := range errs {
			errs[i] = err
		}
		return results, errs
	}
	if err := s.ready(); err != nil {
		return fail(err)
	}
	byPart := map[int][]int{}
	var order []int
	for i, op := range ops {
		p := s.router.PartitionOf(op.Key)
		if _, ok := byPart[p]; !ok {
			order = append(order, p)
		}
		byPart[p] = append(byPart[p], i)
	}
	if atomic && len(order) > 1 {
		return fail(errcode.New(errcode.CrossPartition, "an atomic batch must fall in one partition; its keys are in %d (co-locate them with a {hash tag})", len(order)))
	}
	var wg sync.WaitGroup
	for _, p := range order {
		idx := byPart[p]
		wg.Go(func() {
			part := make([]Op, len(idx))
			for j, i := range idx {
				part[j] = ops[i]
			}
			res, err := s.forward(ctx, p, part, atomic, minCopies)
			for j, i := range idx {
				if err != nil {
					errs[i] = err
				} else {
					results[i] = res[j]
				}
			}
		})
	}
	wg.Wait()
	return results, errs
}

// Layout is the cluster's identity and partition count.
func (s *Engine) Layout() (string, int) { return s.router.ClusterID(), s.router.Partitions() }

// PartitionOf maps a key to its partition.
func (s *Engine) PartitionOf(key string) int { return s.router.PartitionOf(key) }

func (s *Engine) ready() error {
	if s.router.Partitions() == 0 {
		return errcode.New(errcode.Unavailable, "cluster is not initialised yet")
	}
	return nil
}

// forward sends ops of partition p to its primary, again while the answer
// guarantees nothing was applied.
func (s *Engine) forward(ctx context.Context, p int, ops []Op, atomic bool, minCopies int) ([]Result, error) {
	if minCopies > s.router.ReplicationFactor() {
		return nil, errcode.New(errcode.BadRequest, "min_copies=%d is more than the cluster's replication factor (%d)", minCopies, s.router.ReplicationFactor())
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	var out []Result
	err := retry(ctx, func() error {
		rt, ok := s.router.Route(p)
		if !ok || rt.Primary == "" {
			return errcode.New(errcode.Unavailable, "partition %d has no primary", p)
		}
		resp, err := s.peers.Forward(ctx, rt.Primary, peer.ForwardReq{Partition: p, Epoch: rt.Epoch, Ops: ops, Atomic: atomic, MinCopies: minCopies})
		out = resp.Results
		return err
	})
	return out, err
}

// Read answers a get, from the primary unless stale reads are allowed.
func (s *Engine) Read(ctx context.Context, key string, stale bool) (peer.ReadResp, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if err := s.ready(); err != nil {
		return peer.ReadResp{}, err
	}
	p := s.router.PartitionOf(key)
	var out peer.ReadResp
	err := retry(ctx, func() error {
		rt, ok := s.router.Route(p)
		if !ok || rt.Primary == "" {
			return errcode.New(errcode.Unavailable, "partition %d has no primary", p)
		}
		// A stale read may be served by the primary or an in-sync
		// replica, never by a copy that is still catching up; this
		// node's own copy is the cheapest.
		target := rt.Primary
		switch self := s.router.Self(); {
		case stale && (rt.Primary == self || rt.IsInSync(self)):
			target = self
		case stale && !s.router.Alive(target):
			for _, n := range rt.InSync {
				if s.router.Alive(n) {
					target = n
					break
				}
			}
		}
		v, err := s.peers.Read(ctx, target, peer.ReadReq{Partition: p, Epoch: rt.Epoch, Stale: stale, Key: key})
		if errors.Is(err, errcode.ErrOutcomeUnknown) {
			// A read changes nothing, so a lost answer is safe to retry.
			err = errcode.New(errcode.Unavailable, "%v", err)
		}
		out = v
		return err
	})
	return out, err
}

// ServeRead answers a read sent to this node (by itself or a peer).
func (s *Engine) ServeRead(ctx context.Context, req peer.ReadReq) (peer.ReadResp, error) {
	if err := s.validPartition(req.Partition); err != nil {
		return peer.ReadResp{}, err
	}
	if req.Stale {
		return s.localRead(req.Partition, 0, req.Key, true)
	}
	return s.localRead(req.Partition, req.Epoch, req.Key, false)
}

// localRead reads key from this node's copy. Unless stale, this node must be
// the partition's primary at epoch, reconciled, and the read waits for any
// write in flight so it never returns a value that is not yet acknowledged.
func (s *Engine) localRead(p int, epoch uint64, key string, stale bool) (peer.ReadResp, error) {
	if stale {
		return s.staleRead(p, key)
	}
	for attempt := 0; ; attempt++ {
		v, err := s.leasedRead(p, epoch, key)
		if err != errNoLease || attempt > 0 {
			return v, err
		}
		// The lease ran out (an idle partition, or a new in-sync
		// replica): renew it once, right now, and try again.
		ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
		s.renewLeases(ctx)
		cancel()
	}
}

// staleRead answers from this node's copy, saying how current it is.
func (s *Engine) staleRead(p int, key string) (peer.ReadResp, error) {
	m, err := s.store.Meta(p)
	if err != nil {
		return peer.ReadResp{}, fmt.Errorf("partition %d meta: %w", p, err)
	}
	v, err := s.get(p, key)
	v.Applied = m.Seq
	if rt, ok := s.router.Route(p); !ok || rt.Primary != s.router.Self() {
		v.HeardAgoMillis = s.leases.heardAgo(p, time.Now()).Milliseconds()
	}
	return v, err
}

var errNoLease = errcode.New(errcode.NotReady, "the primary holds no read lease from its in-sync replicas")

// leasedRead reads under the partition's read lock and checks the lease
// after reading: the value was then current when it was read.
func (s *Engine) leasedRead(p int, epoch uint64, key string) (peer.ReadResp, error) {
	l := s.lock(p)
	l.RLock()
	defer l.RUnlock()
	rt, err := s.checkPrimary(p, epoch)
	if err != nil {
		return peer.ReadResp{}, err
	}
	if s.additionUnsettled(p, rt.Epoch) {
		// The table may count a replica in sync that the lease does not
		// cover yet: it could be promoted, and serve, meanwhile.
		s.Kick()
		return peer.ReadResp{}, errcode.New(errcode.Unavailable, "partition %d: a replica's addition to the in-sync set is not settled yet", p)
	}
	v, err := s.get(p, key)
	if !s.stillPrimary(p, rt) {
		return peer.ReadResp{}, errNoLease
	}
	return v, err
}

// get reads key from this node's copy; a key past its deadline is gone,
// whether or not the sweep has deleted it yet.
func (s *Engine) get(p int, key string) (peer.ReadResp, error) {
	rec, ok, err := s.store.Get(p, []byte(key))
	if err != nil {
		return peer.ReadResp{}, fmt.Errorf("read %q: %w", key, err)
	}
	if !ok || rec.Expired(time.Now().UnixMilli()) {
		return peer.ReadResp{}, errcode.ErrKeyNotFound
	}
	return peer.ReadResp{Value: string(rec.Value), Revision: rec.Revision, ExpiresAt: rec.ExpiresAt}, nil
}

// checkPrimary verifies, under the partition lock, that this node is the
// primary of p at epoch (if epoch is not zero) and has reconciled its
// replicas for that epoch.
// It returns the route it checked, which the caller must use: the table
// may change again right after.
// PrimaryReady reports whether this node serves partition p as its primary
// right now: nil, or the error a write or a linearizable read of p would
// meet here (not the primary, a table older than one acted on, the copy not
// yet reconciled for the epoch, the previous primary's read lease still
// running).
func (s *Engine) PrimaryReady(p int) error {
	_, err := s.checkPrimary(p, 0)
	return err
}

func (s *Engine) checkPrimary(p int, epoch uint64) (Route, error) {
	if err := s.checkTable(); err != nil {
		return Route{}, err
	}
	rt, ok := s.router.Route(p)
	if !ok || rt.Primary != s.router.Self() {
		return Route{}, errcode.New(errcode.EpochMismatch, "%s is not the primary of partition %d", s.router.Self(), p)
	}
	if epoch != 0 && rt.Epoch != epoch {
		return Route{}, errcode.New(errcode.EpochMismatch, "partition %d is at epoch %d here, request used %d", p, rt.Epoch, epoch)
	}
	m, err := s.store.Meta(p)
	if err != nil {
		return Route{}, fmt.Errorf("partition %d meta: %w", p, err)
	}
	if m.Epoch != rt.Epoch {
		s.Kick()
		return Route{}, errcode.New(errcode.NotReady, "partition %d is being reconciled for epoch %d", p, rt.Epoch)
	}
	if until := s.leases.primaryBlockedUntil(p); time.Now().Before(until) {
		return Route{}, errcode.New(errcode.NotReady, "partition %d: waiting %s for the previous primary's read lease to run out", p, time.Until(until).Round(time.Millisecond))
	}
	return rt, nil
}
