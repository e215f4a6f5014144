package kvapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/peer"
)

// versioned is a value with its revision, as "prev" shows it.
type versioned struct {
	Value    string `json:"value"`
	Revision uint64 `json:"revision"`
}

// Response bodies of the hot routes are structs: encoding a map costs a
// sort and more allocations on every request.

// writeResponse answers a set, delete or expire. Prev is set only when the
// request asked for it; then a missing previous value shows as null.
type writeResponse struct {
	Key       string      `json:"key"`
	Status    string      `json:"status"`
	Revision  uint64      `json:"revision"`
	Deleted   *bool       `json:"deleted,omitempty"`
	ExpiresAt string      `json:"expires_at,omitempty"`
	TTLMillis *int64      `json:"ttl_ms,omitempty"`
	Prev      **versioned `json:"prev,omitempty"`
}

// getResponse answers a get. A stale read also says how current the
// serving copy is: AppliedRevision is the last revision of the partition
// it has applied, SincePrimaryMillis how long since it last heard from the
// partition's primary (absent on the primary itself, and on a copy that
// has not heard from it since it started).
type getResponse struct {
	Key                string  `json:"key"`
	Value              string  `json:"value"`
	Revision           uint64  `json:"revision"`
	ExpiresAt          string  `json:"expires_at,omitempty"`
	TTLMillis          *int64  `json:"ttl_ms,omitempty"`
	AppliedRevision    *uint64 `json:"applied_revision,omitempty"`
	SincePrimaryMillis *int64  `json:"since_primary_ms,omitempty"`
	Stale              bool    `json:"stale,omitempty"`
}

// deadline renders a deadline (Unix ms) as RFC 3339 and the time left.
func deadline(ms int64, now time.Time) (string, *int64) {
	if ms == 0 {
		return "", nil
	}
	left := max(0, ms-now.UnixMilli())
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00"), &left
}

// resultError turns a failed op's result into the error the single call
// answers with.
func resultError(res peer.Result) error {
	switch res.Code {
	case "":
		return nil
	case peer.ResultConditionFailed:
		return &errcode.Error{Code: errcode.ConditionFailed, Message: "the condition does not hold, so nothing was written",
			Details: map[string]any{"current_revision": res.Revision, "exists": res.Exists}}
	case peer.ResultNotFound:
		return errcode.ErrKeyNotFound
	case peer.ResultAborted:
		return errcode.New(errcode.Aborted, "not applied: another op of the atomic batch failed")
	}
	return errcode.New(errcode.Internal, "unknown result %q", res.Code)
}

func writeOK(key, status string, op engine.Op, res peer.Result) writeResponse {
	out := writeResponse{Key: key, Status: status, Revision: res.Revision}
	out.ExpiresAt, out.TTLMillis = deadline(res.ExpiresAt, time.Now())
	if op.Prev {
		var p *versioned
		if res.Prev != nil {
			p = &versioned{Value: res.Prev.Value, Revision: res.Prev.Revision}
		}
		out.Prev = &p
	}
	if op.Delete {
		existed := res.Exists
		out.Deleted = &existed
		if !existed {
			out.Revision = 0
		}
	}
	return out
}

// readBody reads a request body within the limit.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, engine.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errcode.New(errcode.BodyTooLarge, "request body exceeds %d bytes", engine.MaxBodyBytes)
		}
		return nil, errcode.New(errcode.BadRequest, "read body: %v", err)
	}
	return body, nil
}

// setBody is POST /kv/set's body: the seed's key and value, and the
// options.
type setBody struct {
	Key   *string `json:"key"`
	Value *string `json:"value"`
	writeParams
}

// checkSet validates a set's key and value (body is the raw JSON they came
// from, to catch replaced invalid UTF-8).
func checkSet(body []byte, key, value *string) error {
	if key == nil {
		return errcode.New(errcode.MissingKey, "key is required")
	}
	if err := validateKey(*key); err != nil {
		return err
	}
	if replaced(body, *key) {
		return errcode.New(errcode.InvalidKey, "key must be valid UTF-8 (it holds invalid bytes or a lone surrogate escape)")
	}
	if value == nil {
		return errcode.New(errcode.MissingValue, "value is required (use \"\" for an empty value)")
	}
	if len(*value) > engine.MaxValueBytes {
		return errcode.New(errcode.ValueTooLarge, "value is %d bytes; the limit is %d", len(*value), engine.MaxValueBytes)
	}
	if replaced(body, *value) {
		return errcode.New(errcode.InvalidValue, "value must be valid UTF-8 (it holds invalid bytes or a lone surrogate escape)")
	}
	return nil
}

func (s *Server) handleSet(w http.ResponseWriter, r *http.Request) {
	q, err := httpapi.Query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	var in setBody
	if err := json.Unmarshal(body, &in); err != nil {
		writeError(w, errcode.New(errcode.InvalidJSON, "body must be a JSON object {\"key\": string, \"value\": string, ...options}: %v", err))
		return
	}
	if err := checkSet(body, in.Key, in.Value); err != nil {
		writeError(w, err)
		return
	}
	if err := in.merge(q); err != nil {
		writeError(w, err)
		return
	}
	op := engine.Op{Key: *in.Key, Value: *in.Value}
	minCopies, err := in.writeOptions(&op)
	if err != nil {
		writeError(w, err)
		return
	}
	s.write(w, r, op, minCopies, "success")
}

// writeOptions puts p's conditions and TTL options on op, as op's kind
// (set, delete or touch) takes them, and returns min_copies.
func (p *writeParams) writeOptions(op *engine.Op) (int, error) {
	if err := p.conditions(op); err != nil {
		return 0, err
	}
	switch {
	case op.Touch:
		if p.TTL == nil {
			return 0, errcode.New(errcode.InvalidTTL, "ttl is required (ttl=0 removes the key's TTL)")
		}
		if p.KeepTTL != nil {
			return 0, errcode.New(errcode.InvalidTTL, "keep_ttl belongs to /kv/set")
		}
		ttl, err := parseTTL(*p.TTL, true)
		if err != nil {
			return 0, err
		}
		op.TTLMillis = ttl.Milliseconds()
	case op.Delete:
		if p.TTL != nil || p.KeepTTL != nil {
			return 0, errcode.New(errcode.InvalidTTL, "ttl and keep_ttl belong to /kv/set and /kv/expire")
		}
	default:
		if err := p.ttl(op); err != nil {
			return 0, err
		}
	}
	return p.minCopies()
}

// write checks that the request may write op's key, runs op and answers.
func (s *Server) write(w http.ResponseWriter, r *http.Request, op engine.Op, minCopies int, status string) {
	if err := permit(r, op.Key, true); err != nil {
		writeError(w, err)
		return
	}
	res, err := s.eng.Write(r.Context(), op, minCopies)
	if err == nil {
		err = resultError(res)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, writeOK(op.Key, status, op, res))
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	s.queryWrite(w, r, engine.Op{Delete: true}, "deleted")
}

// handleExpire sets, refreshes (ttl=30s) or removes (ttl=0) the TTL of an
// existing key without sending its value.
func (s *Server) handleExpire(w http.ResponseWriter, r *http.Request) {
	s.queryWrite(w, r, engine.Op{Touch: true}, "success")
}

// queryWrite runs a write whose key and options are all in the query
// string (a delete or an expire, as op says).
func (s *Server) queryWrite(w http.ResponseWriter, r *http.Request, op engine.Op, status string) {
	q, err := httpapi.Query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	op.Key = q.Get("key")
	if err := validateKey(op.Key); err != nil {
		writeError(w, err)
		return
	}
	var p writeParams
	if err := p.merge(q); err != nil {
		writeError(w, err)
		return
	}
	minCopies, err := p.writeOptions(&op)
	if err != nil {
		writeError(w, err)
		return
	}
	s.write(w, r, op, minCopies, status)
}

// consistency parses the consistency parameter: stale or not.
func consistency(c string) (bool, error) {
	switch c {
	case "", "linearizable", "strong":
		return false, nil
	case "stale":
		return true, nil
	}
	return false, errcode.New(errcode.BadRequest, "consistency must be \"linearizable\" (default) or \"stale\", not %q", c)
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
	stale, err := consistency(q.Get("consistency"))
	if err != nil {
		writeError(w, err)
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
	writeJSON(w, http.StatusOK, getAnswer(key, v, stale))
}

func getAnswer(key string, v peer.ReadResp, stale bool) getResponse {
	out := getResponse{Key: key, Value: v.Value, Revision: v.Revision}
	out.ExpiresAt, out.TTLMillis = deadline(v.ExpiresAt, time.Now())
	if stale {
		out.Stale = true
		applied := v.Applied
		out.AppliedRevision = &applied
		if v.HeardAgoMillis > 0 {
			ago := v.HeardAgoMillis
			out.SincePrimaryMillis = &ago
		}
	}
	return out
}
