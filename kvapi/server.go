package kvapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// Options configures a Server.
type Options struct {
	Router  Router
	Control Control
	Storage Storage
	Info    Info
	Logger  *slog.Logger
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
}

// Server serves the KV API and the internal data-plane routes.
type Server struct {
	router  Router
	control Control
	store   Storage
	info    Info
	log     *slog.Logger
	peers   *peerClient
	started time.Time

	reqTimeout  time.Duration
	replTimeout time.Duration

	locksMu sync.Mutex
	locks   map[int]*sync.RWMutex

	requests atomic.Uint64
	errors   atomic.Uint64

	queuesMu sync.Mutex
	queues   map[int]*writeQueue

	// Served RPC connections and their in-flight requests.
	connMu      sync.Mutex
	conns       map[*rpcConn]struct{}
	connsClosed bool
	rpcWG       sync.WaitGroup
	// intercept, if set (by tests), wraps every request served over RPC.
	intercept func(ctx context.Context, path string, req any, h rpcHandler) ([]byte, error)

	kick        chan struct{}
	leases      *leases
	guard       *tableGuard
	confirmRead bool
}

// New builds a Server. Call Run to start its background replica sync.
func New(o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{
		router: o.Router, control: o.Control, store: o.Storage, info: o.Info,
		log: o.Logger, peers: newPeerClient(), started: time.Now(),
		reqTimeout:  cmpOr(o.RequestTimeout, 5*time.Second),
		replTimeout: cmpOr(o.ReplicationTimeout, time.Second),
		locks:       map[int]*sync.RWMutex{},
		queues:      map[int]*writeQueue{},
		conns:       map[*rpcConn]struct{}{},
		kick:        make(chan struct{}, 1),
		leases:      newLeases(time.Now()),
		confirmRead: o.ReadMode == "confirm",
	}
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

// Counts returns the number of client requests served and of those that
// ended in an error.
func (s *Server) Counts() (requests, errs uint64) { return s.requests.Load(), s.errors.Load() }

func (s *Server) lock(p int) *sync.RWMutex {
	s.locksMu.Lock()
	defer s.locksMu.Unlock()
	l, ok := s.locks[p]
	if !ok {
		l = &sync.RWMutex{}
		s.locks[p] = l
	}
	return l
}

// Handler returns the HTTP handler for the KV listener.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errcode.New(errcode.NotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errcode.New(errcode.MethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path))
	})
	r.Route("/kv", func(r chi.Router) {
		r.Use(s.count)
		r.Post("/set", s.handleSet)
		r.Put("/set", s.handleSet)
		r.Get("/get", s.handleGet)
		r.Post("/delete", s.handleDelete)
		r.Delete("/delete", s.handleDelete)
		r.Get("/list", s.handleList)
		r.Get("/stats", s.handleStats)
	})
	r.Route(internalPrefix, func(r chi.Router) {
		r.Get(rpcPath, s.handleRPC)
		r.Post("/write", s.handleForwardedWrite)
		r.Get("/read", s.handleForwardedRead)
		r.Post("/replicate", s.handleReplicate)
		r.Post("/install", s.handleInstall)
		r.Post("/lease", s.handleLease)
		r.Get("/digest", s.handleDigest)
	})
	return r
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

// Unwrap lets http.ResponseController reach the connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		s.requests.Add(1)
		// A missing key is an answer, not an error of the service.
		if rec.status >= 400 && rec.status != http.StatusNotFound {
			s.errors.Add(1)
		}
	})
}

// Response bodies of the hot routes, as structs: encoding a map costs a
// sort and more allocations on every request.
type keyStatus struct {
	Key    string `json:"key"`
	Status string `json:"status"`
}

type keyValue struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type setBody struct {
	Key   *string `json:"key"`
	Value *string `json:"value"`
}

// replaced reports whether encoding/json substituted U+FFFD into s for an
// invalid escape: s holds U+FFFD although the body never spells it.
func replaced(body []byte, s string) bool {
	if !strings.ContainsRune(s, utf8.RuneError) {
		return false
	}
	return !bytes.Contains(body, []byte("\uFFFD")) && !bytes.Contains(bytes.ToLower(body), []byte(`\ufffd`))
}

func validateKey(key string) error {
	switch {
	case key == "":
		return errcode.New(errcode.MissingKey, "key is required")
	case len(key) > MaxKeyBytes:
		return errcode.New(errcode.KeyTooLarge, "key is %d bytes; the limit is %d", len(key), MaxKeyBytes)
	case !utf8.ValidString(key):
		return errcode.New(errcode.InvalidKey, "key must be valid UTF-8")
	}
	return nil
}

func (s *Server) handleSet(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, errcode.New(errcode.BodyTooLarge, "request body exceeds %d bytes", MaxBodyBytes))
			return
		}
		writeError(w, errcode.New(errcode.BadRequest, "read body: %v", err))
		return
	}
	if !utf8.Valid(body) {
		writeError(w, errcode.New(errcode.InvalidKey, "request body must be valid UTF-8"))
		return
	}
	var in setBody
	if err := json.Unmarshal(body, &in); err != nil {
		writeError(w, errcode.New(errcode.InvalidJSON, "body must be a JSON object {\"key\": string, \"value\": string}: %v", err))
		return
	}
	if in.Key == nil {
		writeError(w, errcode.New(errcode.MissingKey, "key is required"))
		return
	}
	if err := validateKey(*in.Key); err != nil {
		writeError(w, err)
		return
	}
	if replaced(body, *in.Key) {
		writeError(w, errcode.New(errcode.InvalidKey, "key contains an invalid \\u escape (a lone surrogate)"))
		return
	}
	if in.Value == nil {
		writeError(w, errcode.New(errcode.MissingValue, "value is required (use \"\" for an empty value)"))
		return
	}
	if len(*in.Value) > MaxValueBytes {
		writeError(w, errcode.New(errcode.ValueTooLarge, "value is %d bytes; the limit is %d", len(*in.Value), MaxValueBytes))
		return
	}
	if replaced(body, *in.Value) {
		writeError(w, errcode.New(errcode.BadRequest, "value contains an invalid \\u escape (a lone surrogate)"))
		return
	}
	if err := s.Write(r.Context(), opMsg{Key: *in.Key, Value: *in.Value}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, keyStatus{Key: *in.Key, Status: "success"})
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	if err := validateKey(key); err != nil {
		writeError(w, err)
		return
	}
	if err := s.Write(r.Context(), opMsg{Delete: true, Key: key}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, keyStatus{Key: key, Status: "deleted"})
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	key := q.Get("key")
	if err := validateKey(key); err != nil {
		writeError(w, err)
		return
	}
	var stale bool
	switch c := q.Get("consistency"); c {
	case "", "linearizable", "strong":
	case "stale":
		stale = true
	default:
		writeError(w, errcode.New(errcode.BadRequest, "consistency must be \"linearizable\" (default) or \"stale\", not %q", c))
		return
	}
	v, err := s.Read(r.Context(), key, stale)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, keyValue{Key: key, Value: v})
}

// ownedPartitions lists the partitions this node holds a copy of according
// to the table (as primary or replica).
func (s *Server) ownedPartitions() []int {
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
func (s *Server) LocalKeys() int {
	n := 0
	for _, p := range s.ownedPartitions() {
		if m, err := s.store.Meta(p); err == nil {
			n += int(m.Keys)
		}
	}
	return n
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	limit := DefaultListLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			writeError(w, errcode.New(errcode.BadRequest, "limit must be an integer from 1 to %d", MaxListLimit))
			return
		}
		limit = n
	}
	keys := []string{}
	total := 0
	for _, p := range s.ownedPartitions() {
		m, err := s.store.Meta(p)
		if err != nil {
			writeError(w, err)
			return
		}
		total += int(m.Keys)
		if len(keys) < limit {
			ks, err := s.store.Keys(p, limit-len(keys))
			if err != nil {
				writeError(w, err)
				return
			}
			keys = append(keys, ks...)
		}
	}
	slices.Sort(keys)
	writeJSON(w, http.StatusOK, map[string]any{
		"keys": keys, "count": len(keys), "total": total, "truncated": len(keys) < total,
	})
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"local_keys":     s.LocalKeys(),
		"cluster_nodes":  s.info.ClusterNodes(),
		"partitions":     s.router.Partitions(),
		"is_leader":      s.info.IsLeader(),
		"raft_state":     s.info.RaftState(),
		"uptime_seconds": int(time.Since(s.started).Seconds()),
	})
}

// withDeadline bounds a client operation.
func (s *Server) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
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

// Write applies a set or delete through the key's primary.
func (s *Server) Write(ctx context.Context, op opMsg) error {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if s.router.Partitions() == 0 {
		return errcode.New(errcode.Unavailable, "cluster is not initialised yet")
	}
	p := s.router.PartitionOf(op.Key)
	return retry(ctx, func() error {
		rt, ok := s.router.Route(p)
		if !ok || rt.Primary == "" {
			return errcode.New(errcode.Unavailable, "partition %d has no primary", p)
		}
		if rt.Primary == s.router.Self() {
			return s.primaryWrite(ctx, p, rt.Epoch, op)
		}
		addr, ok := s.router.KVAddr(rt.Primary)
		if !ok {
			return errcode.New(errcode.Unavailable, "no address for primary %s", rt.Primary)
		}
		return s.peers.forward(ctx, addr, forwardReq{Partition: p, Epoch: rt.Epoch, Op: op})
	})
}

// Read answers a get, from the primary unless stale reads are allowed.
func (s *Server) Read(ctx context.Context, key string, stale bool) (string, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if s.router.Partitions() == 0 {
		return "", errcode.New(errcode.Unavailable, "cluster is not initialised yet")
	}
	p := s.router.PartitionOf(key)
	var out string
	err := retry(ctx, func() error {
		rt, ok := s.router.Route(p)
		if !ok || rt.Primary == "" {
			return errcode.New(errcode.Unavailable, "partition %d has no primary", p)
		}
		self := s.router.Self()
		// A stale read may be served by the primary or an in-sync
		// replica, never by a copy that is still catching up.
		current := append([]string{rt.Primary}, rt.InSync...)
		if stale && slices.Contains(current, self) {
			v, err := s.localRead(p, 0, key, true)
			out = v
			return err
		}
		target := rt.Primary
		if stale && !s.router.Alive(target) {
			for _, n := range rt.InSync {
				if s.router.Alive(n) {
					target = n
					break
				}
			}
		}
		if target == self {
			v, err := s.localRead(p, rt.Epoch, key, false)
			out = v
			return err
		}
		addr, ok := s.router.KVAddr(target)
		if !ok {
			return errcode.New(errcode.Unavailable, "no address for %s", target)
		}
		v, err := s.peers.read(ctx, addr, p, rt.Epoch, key, stale)
		if errors.Is(err, errcode.ErrOutcomeUnknown) {
			// A read changes nothing, so a lost answer is safe to retry.
			err = errcode.New(errcode.Unavailable, "%v", err)
		}
		out = v
		return err
	})
	return out, err
}

// localRead reads key from this node's copy. Unless stale, this node must be
// the partition's primary at epoch, reconciled, and the read waits for any
// write in flight so it never returns a value that is not yet acknowledged.
func (s *Server) localRead(p int, epoch uint64, key string, stale bool) (string, error) {
	if stale {
		return s.get(p, key)
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

var errNoLease = errcode.New(errcode.NotReady, "the primary holds no read lease from its in-sync replicas")

// leasedRead reads under the partition's read lock and checks the lease
// after reading: the value was then current when it was read.
func (s *Server) leasedRead(p int, epoch uint64, key string) (string, error) {
	l := s.lock(p)
	l.RLock()
	defer l.RUnlock()
	rt, err := s.checkPrimary(p, epoch)
	if err != nil {
		return "", err
	}
	v, err := s.get(p, key)
	if s.confirmRead {
		if !s.confirm(p, rt) {
			return "", errNoLease
		}
		return v, err
	}
	if !s.leases.valid(p, rt.Epoch, rt.InSync, time.Now()) {
		return "", errNoLease
	}
	return v, err
}

func (s *Server) get(p int, key string) (string, error) {
	v, ok, err := s.store.Get(p, []byte(key))
	if err != nil {
		return "", fmt.Errorf("read %q: %w", key, err)
	}
	if !ok {
		return "", errcode.ErrKeyNotFound
	}
	return string(v), nil
}

// checkPrimary verifies, under the partition lock, that this node is the
// primary of p at epoch (if epoch is not zero) and has reconciled its
// replicas for that epoch.
// It returns the route it checked, which the caller must use: the table
// may change again right after.
func (s *Server) checkPrimary(p int, epoch uint64) (Route, error) {
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
