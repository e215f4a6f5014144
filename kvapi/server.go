package kvapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
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
)

// DefaultListLimit and MaxListLimit bound /kv/list.
const (
	DefaultListLimit = 1000
	MaxListLimit     = 10000
)

// Engine is the data plane as the KV handlers need it.
type Engine interface {
	// Write applies a set or delete through the key's primary.
	Write(ctx context.Context, op engine.Op) error
	// Read answers a get (from the primary unless stale).
	Read(ctx context.Context, key string, stale bool) (string, error)
	// ListKeys returns up to limit keys this node holds, in order, and how
	// many it holds in all.
	ListKeys(limit int) (keys []string, total int, err error)
	// LocalKeys counts the keys this node holds.
	LocalKeys() int
	// Partitions is the partition count (0 until initialised).
	Partitions() int
}

// Info supplies the cluster facts /kv/stats reports.
type Info interface {
	ClusterNodes() int
	IsLeader() bool
	RaftState() string
}

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
}

// New builds a Server.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Server{eng: o.Engine, info: o.Info, auth: o.Auth, log: o.Logger, started: time.Now()}
}

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
		r.Get("/list", s.handleList)
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
	case len(key) > engine.MaxKeyBytes:
		return errcode.New(errcode.KeyTooLarge, "key is %d bytes; the limit is %d", len(key), engine.MaxKeyBytes)
	case !utf8.ValidString(key):
		return errcode.New(errcode.InvalidKey, "key must be valid UTF-8")
	}
	return nil
}

func (s *Server) handleSet(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, engine.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, errcode.New(errcode.BodyTooLarge, "request body exceeds %d bytes", engine.MaxBodyBytes))
			return
		}
		writeError(w, errcode.New(errcode.BadRequest, "read body: %v", err))
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
		writeError(w, errcode.New(errcode.InvalidKey, "key must be valid UTF-8 (it holds invalid bytes or a lone surrogate escape)"))
		return
	}
	if in.Value == nil {
		writeError(w, errcode.New(errcode.MissingValue, "value is required (use \"\" for an empty value)"))
		return
	}
	if len(*in.Value) > engine.MaxValueBytes {
		writeError(w, errcode.New(errcode.ValueTooLarge, "value is %d bytes; the limit is %d", len(*in.Value), engine.MaxValueBytes))
		return
	}
	if replaced(body, *in.Value) {
		writeError(w, errcode.New(errcode.InvalidValue, "value must be valid UTF-8 (it holds invalid bytes or a lone surrogate escape)"))
		return
	}
	if err := permit(r, *in.Key, true); err != nil {
		writeError(w, err)
		return
	}
	if err := s.eng.Write(r.Context(), engine.Op{Key: *in.Key, Value: *in.Value}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, keyStatus{Key: *in.Key, Status: "success"})
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	q, err := httpapi.Query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	key := q.Get("key")
	if err := validateKey(key); err != nil {
		writeError(w, err)
		return
	}
	if err := permit(r, key, true); err != nil {
		writeError(w, err)
		return
	}
	if err := s.eng.Write(r.Context(), engine.Op{Delete: true, Key: key}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, keyStatus{Key: key, Status: "deleted"})
}

func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) {
	q, err := httpapi.Query(r)
	if err != nil {
		writeError(w, err)
		return
	}
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
	if err := permit(r, key, false); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.eng.Read(r.Context(), key, stale)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, keyValue{Key: key, Value: v})
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
