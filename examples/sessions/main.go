// Command sessions is a tiny session store built on the embedding API: an
// example of a service that keeps its own data and lets ClusterKit decide
// where each key lives.
//
// Each instance embeds a ClusterKit node (node.New, then Start) and serves
// its own HTTP API on the address it publishes as the "http" service in
// SERVICES. The sessions themselves live in the instance's memory, not in
// ClusterKit's KV store:
//
//   - PUT /sessions/{id} (any JSON body) stores a session. An instance that
//     is not the key's primary forwards the request to the primary's
//     "http" service address, found with GetPrimary(id).Services. The
//     primary keeps the session and copies it to the key's replicas
//     (GetReplicas) before it answers.
//   - GET /sessions/{id} answers from the primary the same way; 404 when
//     there is no such session.
//   - When partitions move (OnPartitionChange), an instance that becomes an
//     owner of a partition fetches that partition's sessions from the
//     nodes that held it, so sessions survive joins, leaves and failover.
//   - Every hook is logged: joins, failures, partition moves, rebalances and
//     changes of the cluster's health.
//
// Run three instances on one machine (the ClusterKit settings are the
// node's usual environment variables):
//
//	go build -o /tmp/sessions ./examples/sessions
//	NODE_ID=node-1 HTTP_ADDR=:8080 RAFT_ADDR=127.0.0.1:9001 BOOTSTRAP=true DATA_DIR=/tmp/s1 SERVICES=http=127.0.0.1:7001 /tmp/sessions
//	NODE_ID=node-2 HTTP_ADDR=:8081 RAFT_ADDR=127.0.0.1:9002 JOIN_ADDR=localhost:8080 DATA_DIR=/tmp/s2 SERVICES=http=127.0.0.1:7002 /tmp/sessions
//	NODE_ID=node-3 HTTP_ADDR=:8082 RAFT_ADDR=127.0.0.1:9003 JOIN_ADDR=localhost:8080 DATA_DIR=/tmp/s3 SERVICES=http=127.0.0.1:7003 /tmp/sessions
//
//	curl -X PUT localhost:7001/sessions/alice -d '{"cart":["book"]}'
//	curl localhost:7003/sessions/alice
//
// The copies are best effort (a replica that is down misses a write until
// the next partition change brings it a fresh copy): enough to show the
// API, not a database.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/clusterkit/clusterkit/node"
)

// Headers between instances.
const (
	// hdrForwarded marks a request an instance forwarded to the primary:
	// the primary must not forward it again (the tables may disagree for a
	// moment), it answers 503 instead and the client retries.
	hdrForwarded = "X-Sessions-Forwarded"
	// hdrCopy marks the primary's copy of a write to a replica.
	hdrCopy = "X-Sessions-Copy"
)

// maxSession bounds one session's body.
const maxSession = 64 << 10

// service is one instance: its ClusterKit node and its own sessions.
type service struct {
	ck     *node.ClusterKit
	log    *slog.Logger
	client *http.Client

	mu       sync.RWMutex
	sessions map[string]json.RawMessage
}

func main() { os.Exit(run()) }

func run() int {
	cfg, err := node.FromEnv(os.LookupEnv)
	if err == nil {
		err = cfg.Validate()
	}
	if err == nil && cfg.Services["http"] == "" {
		err = errors.New(`SERVICES: set http=host:port, the address this instance serves sessions on`)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sessions: invalid configuration: %v\n", err)
		return 2
	}
	logger := cfg.NewLogger(os.Stderr)
	ln, err := net.Listen("tcp", cfg.Services["http"])
	if err != nil {
		fmt.Fprintf(os.Stderr, "sessions: SERVICES http=%s: %v\n", cfg.Services["http"], err)
		return 1
	}
	ck, err := node.New(cfg, logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sessions: %v\n", err)
		return 1
	}
	s := &service{ck: ck, log: logger.With("component", "sessions"), client: &http.Client{Timeout: 5 * time.Second},
		sessions: map[string]json.RawMessage{}}
	s.registerHooks()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := ck.Start(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "sessions: %v\n", err)
		return 1
	}
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("sessions API stopped", "err", err)
		}
	}()
	s.log.Info("serving sessions", "addr", ln.Addr().String())
	select {
	case <-ctx.Done():
	case <-ck.LeaveRequested():
	}
	stop()
	dctx, cancel := context.WithTimeout(context.Background(), node.DefaultDrainTimeout)
	_ = ck.Drain(dctx)
	cancel()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return exitCode(errors.Join(srv.Shutdown(sctx), ck.Shutdown(sctx)))
}

func exitCode(err error) int {
	if err != nil {
		fmt.Fprintf(os.Stderr, "sessions: shutdown: %v\n", err)
		return 1
	}
	return 0
}

func (s *service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /sessions/{id}", s.handlePut)
	mux.HandleFunc("GET /sessions/{id}", s.handleGet)
	mux.HandleFunc("GET /internal/partitions/{n}", s.handlePartition)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code string, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error(), "code": code})
}

// route decides who answers for id: nil when this instance is the primary,
// or the primary's service address. The request was answered (an error)
// when ok is false.
func (s *service) route(w http.ResponseWriter, r *http.Request, id string) (addr string, ok bool) {
	if s.ck.IsPrimary(id) {
		return "", true
	}
	primary, err := s.ck.GetPrimary(id)
	switch {
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "unavailable", err)
		return "", false
	case r.Header.Get(hdrForwarded) != "":
		writeError(w, http.StatusServiceUnavailable, "unavailable",
			fmt.Errorf("%s is not the primary of %q here (the table moved); retry", s.ck.GetMyNodeID(), id))
		return "", false
	case primary.Services["http"] == "":
		writeError(w, http.StatusServiceUnavailable, "unavailable", fmt.Errorf("primary %s publishes no http service", primary.ID))
		return "", false
	}
	return primary.Services["http"], true
}

// forward sends r to addr and copies the answer back.
func (s *service) forward(w http.ResponseWriter, r *http.Request, addr string, body []byte) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+addr+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err)
		return
	}
	req.Header.Set(hdrForwarded, s.ck.GetMyNodeID())
	req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
	resp, err := s.client.Do(req)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", fmt.Errorf("forward to the primary at %s: %w", addr, err))
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

func (s *service) handlePut(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSession))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", err)
		return
	}
	if !json.Valid(body) {
		writeError(w, http.StatusBadRequest, "invalid_json", errors.New("the session must be a JSON value"))
		return
	}
	if r.Header.Get(hdrCopy) != "" { // the primary's copy: just keep it
		s.store(id, body)
		writeJSON(w, http.StatusOK, map[string]string{"id": id, "stored_on": s.ck.GetMyNodeID()})
		return
	}
	addr, ok := s.route(w, r, id)
	if !ok {
		return
	}
	if addr != "" {
		s.forward(w, r, addr, body)
		return
	}
	s.store(id, body)
	copies := 1
	replicas, _ := s.ck.GetReplicas(id)
	for _, rep := range replicas {
		if err := s.copyTo(r.Context(), rep, id, body); err != nil {
			s.log.Warn("replica missed a session write", "replica", rep.ID, "id", id, "err", err)
			continue
		}
		copies++
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "stored_on": s.ck.GetMyNodeID(), "copies": copies})
}

func (s *service) copyTo(ctx context.Context, rep node.Node, id string, body []byte) error {
	addr := rep.Services["http"]
	if addr == "" || rep.Status != "active" {
		return fmt.Errorf("replica %s is %s with http service %q", rep.ID, rep.Status, addr)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+addr+"/sessions/"+id, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set(hdrCopy, s.ck.GetMyNodeID())
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

func (s *service) store(id string, v json.RawMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[id] = v
}

func (s *service) handleGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	addr, ok := s.route(w, r, id)
	if !ok {
		return
	}
	if addr != "" {
		s.forward(w, r, addr, nil)
		return
	}
	s.mu.RLock()
	v, found := s.sessions[id]
	s.mu.RUnlock()
	if !found {
		writeError(w, http.StatusNotFound, "not_found", fmt.Errorf("no session %q", id))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "value": v, "served_by": s.ck.GetMyNodeID()})
}

// handlePartition hands the sessions of one partition to a new owner.
func (s *service) handlePartition(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.PathValue("n"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err)
		return
	}
	out := map[string]json.RawMessage{}
	s.mu.RLock()
	for id, v := range s.sessions {
		if p, err := s.ck.GetPartition(id); err == nil && p.Number == n {
			out[id] = v
		}
	}
	s.mu.RUnlock()
	writeJSON(w, http.StatusOK, out)
}

// fetchPartition copies the sessions of partition n from the nodes that
// held it, the first that answers.
func (s *service) fetchPartition(e node.PartitionChangeEvent) {
	for _, from := range e.CopiedFrom {
		addr := s.serviceOf(from)
		if addr == "" {
			continue
		}
		resp, err := s.client.Get("http://" + addr + "/internal/partitions/" + strconv.Itoa(e.Number))
		if err != nil {
			s.log.Warn("could not fetch a partition's sessions", "partition", e.Partition, "from", from, "err", err)
			continue
		}
		var got map[string]json.RawMessage
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil {
			continue
		}
		s.mu.Lock()
		for id, v := range got {
			if _, have := s.sessions[id]; !have {
				s.sessions[id] = v
			}
		}
		s.mu.Unlock()
		s.log.Info("fetched a partition's sessions", "partition", e.Partition, "from", from, "sessions", len(got))
		return
	}
}

// serviceOf returns node id's http service address ("" if unknown).
func (s *service) serviceOf(id string) string {
	for _, n := range s.ck.Members() {
		if n.ID == id {
			return n.Services["http"]
		}
	}
	return ""
}

func (s *service) registerHooks() {
	me := s.ck.GetMyNodeID()
	s.ck.OnNodeJoin(func(e node.NodeEvent) {
		s.log.Info("hook: node joined", "node", e.Node.ID, "services", e.Node.Services)
	})
	s.ck.OnNodeRejoin(func(e node.NodeEvent) { s.log.Info("hook: node is back", "node", e.Node.ID, "away", e.Away) })
	s.ck.OnNodeLeave(func(e node.NodeEvent) { s.log.Warn("hook: node left", "node", e.Node.ID, "reason", e.Reason) })
	s.ck.OnRebalanceStart(func(e node.RebalanceEvent) { s.log.Info("hook: rebalance started", "partitions", e.PartitionsMoved) })
	s.ck.OnRebalanceComplete(func(e node.RebalanceEvent) {
		s.log.Info("hook: rebalance complete", "partitions", e.PartitionsMoved, "took", e.Duration)
	})
	s.ck.OnClusterHealthChange(func(e node.HealthEvent) {
		s.log.Info("hook: cluster health", "state", e.State, "previous", e.Previous, "unhealthy", e.UnhealthyNodes)
	})
	s.ck.OnPartitionChange(func(e node.PartitionChangeEvent) {
		s.log.Debug("hook: partition moved", "partition", e.Partition, "reason", e.Reason,
			"primary", e.NewPrimary, "old_primary", e.OldPrimary, "copied_to", e.CopiedTo)
		for _, to := range e.CopiedTo {
			if to == me {
				s.fetchPartition(e)
			}
		}
	})
}
