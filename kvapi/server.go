package kvapi

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/peer"
)

// DefaultListLimit and MaxListLimit bound /kv/list.
const (
	DefaultListLimit = 1000
	MaxListLimit     = 10000
)

// Engine is the data plane as the KV handlers need it.
type Engine interface {
	// Write applies one op through the key's primary.
	Write(ctx context.Context, op engine.Op, minCopies int) (engine.Result, error)
	// WriteBatch applies ops through their primaries, one request per
	// partition, all or none if atomic (one partition only).
	WriteBatch(ctx context.Context, ops []engine.Op, atomic bool, minCopies int) ([]engine.Result, []error)
	// Read answers a get (from the primary unless stale).
	Read(ctx context.Context, key string, stale bool) (peer.ReadResp, error)
	// PartitionOf maps a key to its partition.
	PartitionOf(key string) int
	// ListKeys returns up to limit keys this node holds, in order, and how
	// many it holds in all.
	ListKeys(limit int) (keys []string, total int, err error)
	// LocalKeys counts the keys this node holds.
	LocalKeys() int
	// Partitions is the partition count (0 until initialised).
	Partitions() int
	// Layout is the cluster's identity and partition count, which tokens
	// and cursors are bound to.
	Layout() (clusterID string, partitions int)
	// Scan reads one page of a range across every partition.
	Scan(ctx context.Context, spec engine.ScanSpec) (engine.ScanPage, error)
	// Watch opens a watch of a range's changes.
	Watch(ctx context.Context, spec engine.WatchSpec) (*engine.Watcher, error)
	// WatchPartitions lists the partitions a watch follows.
	WatchPartitions(spec engine.WatchSpec) []int
}

// Info supplies the cluster facts /kv/stats reports.
type Info interface {
	ClusterNodes() int
	IsLeader() bool
	RaftState() string
	// TableVersion is the version of the partition table this node
	// routes by; every KV answer carries it (TableVersionHeader) so that
	// a client that routes by its own copy of the table sees when that
	// copy is old.
	TableVersion() uint64
}

// TableVersionHeader is the response header holding the answering node's
// partition-table version.
const TableVersionHeader = "X-ClusterKit-Table-Version"

var _ Engine = (*engine.Engine)(nil)

// Options configures a Server.
type Options struct {
	Engine Engine
	Info   Info
	// Auth, when set, can require tokens (nil: the API is open).
	Auth   Auth
	Logger *slog.Logger
}

// Server serves the client KV API.
type Server struct {
	eng     Engine
	info    Info
	auth    Auth
	log     *slog.Logger
	started time.Time

	requests atomic.Uint64
	errors   atomic.Uint64

	// shutdownCtx ends open watch streams when the listener shuts down.
	shutdownCtx context.Context
	shutdown    context.CancelFunc
}

// New builds a Server.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{eng: o.Engine, info: o.Info, auth: o.Auth, log: o.Logger, started: time.Now(), shutdownCtx: ctx, shutdown: cancel}
}

// Shutdown ends every open watch stream (http.Server.Shutdown waits for
// handlers, and a stream's handler runs until its client leaves).
func (s *Server) Shutdown() { s.shutdown() }

// Counts returns the number of client requests served and of those that
// ended in an error.
func (s *Server) Counts() (requests, errs uint64) { return s.requests.Load(), s.errors.Load() }

// Handler returns the HTTP handler for the KV listener.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.NotFound(httpapi.NotFound)
	r.MethodNotAllowed(httpapi.MethodNotAllowed)
	r.Route("/kv", func(r chi.Router) {
		r.Use(s.count, s.authenticate)
		r.Post("/set", s.handleSet)
		r.Put("/set", s.handleSet)
		r.Get("/get", s.handleGet)
		r.Post("/delete", s.handleDelete)
		r.Delete("/delete", s.handleDelete)
		r.Post("/expire", s.handleExpire)
		r.Post("/batch", s.handleBatch)
		r.Get("/list", s.handleList)
		r.Get("/scan", s.handleScan)
		r.Get("/watch", s.handleWatch)
		r.Get("/stats", s.handleStats)
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
		w.Header().Set(TableVersionHeader, strconv.FormatUint(s.info.TableVersion(), 10))
		next.ServeHTTP(rec, r)
		s.requests.Add(1)
		// A missing key or a failed condition is an answer, not an
		// error of the service.
		if rec.status >= 400 && rec.status != http.StatusNotFound && rec.status != http.StatusConflict {
			s.errors.Add(1)
		}
	})
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
	case len(key) > engine.MaxKeyBytes:
		return errcode.New(errcode.KeyTooLarge, "key is %d bytes; the limit is %d", len(key), engine.MaxKeyBytes)
	case !utf8.ValidString(key):
		return errcode.New(errcode.InvalidKey, "key must be valid UTF-8")
	}
	return nil
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	q, err := httpapi.Query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	limit := DefaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			writeError(w, errcode.New(errcode.BadRequest, "limit must be an integer from 1 to %d", MaxListLimit))
			return
		}
		limit = n
	}
	if err := permitAll(r); err != nil {
		writeError(w, err)
		return
	}
	keys, total, err := s.eng.ListKeys(limit)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"keys": keys, "count": len(keys), "total": total, "truncated": len(keys) < total,
	})
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"local_keys":     s.eng.LocalKeys(),
		"cluster_nodes":  s.info.ClusterNodes(),
		"partitions":     s.eng.Partitions(),
		"is_leader":      s.info.IsLeader(),
		"raft_state":     s.info.RaftState(),
		"uptime_seconds": int(time.Since(s.started).Seconds()),
	})
}
