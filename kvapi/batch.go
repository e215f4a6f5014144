package kvapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/peer"
)

// batchBody is POST /kv/batch's body.
type batchBody struct {
	Ops       []batchOp `json:"ops"`
	Atomic    bool      `json:"atomic"`
	MinCopies *number   `json:"min_copies"`
}

// batchOp is one op of a batch: the fields of the single call.
type batchOp struct {
	Op          string  `json:"op"`
	Key         *string `json:"key"`
	Value       *string `json:"value"`
	Consistency string  `json:"consistency"`
	writeParams
}

// batchResult is one op's answer: the status the single call would give,
// and its body's fields.
type batchResult struct {
	Status int    `json:"status"`
	Op     string `json:"op"`
	Key    string `json:"key"`
	// Success of a get.
	Value *string `json:"value,omitempty"`
	// Success of a write (and a get's revision).
	Revision  *uint64     `json:"revision,omitempty"`
	Deleted   *bool       `json:"deleted,omitempty"`
	ExpiresAt string      `json:"expires_at,omitempty"`
	TTLMillis *int64      `json:"ttl_ms,omitempty"`
	Prev      **versioned `json:"prev,omitempty"`
	// Failure.
	Error   string         `json:"error,omitempty"`
	Code    string         `json:"code,omitempty"`
	Details map[string]any `json:"-"`
}

// MarshalJSON flattens an error's details (current_revision, exists) into
// the result, as the single call's error body has them.
func (b batchResult) MarshalJSON() ([]byte, error) {
	type plain batchResult
	raw, err := json.Marshal(plain(b))
	if err != nil || len(b.Details) == 0 {
		return raw, err
	}
	m := map[string]any{}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	for k, v := range b.Details {
		m[k] = v
	}
	return json.Marshal(m)
}

func failedResult(op, key string, err error) batchResult {
	e := errcode.As(err)
	return batchResult{Status: httpapi.Status(e.Code), Op: op, Key: key, Error: e.Message, Code: e.Code, Details: e.Details}
}

// parsed is a validated batch op.
type parsed struct {
	kind  string
	op    engine.Op
	stale bool
}

func (s *Server) parseBatch(r *http.Request, body []byte) (batchBody, []parsed, int, error) {
	var in batchBody
	if err := json.Unmarshal(body, &in); err != nil {
		return in, nil, 0, errcode.New(errcode.InvalidJSON, "body must be a JSON object {\"ops\": [{\"op\": \"get\"|\"set\"|\"delete\", \"key\": ...}], \"atomic\": bool}: %v", err)
	}
	switch n := len(in.Ops); {
	case n == 0:
		return in, nil, 0, errcode.New(errcode.BadRequest, "a batch needs at least one op")
	case n > engine.MaxBatchOps:
		return in, nil, 0, errcode.New(errcode.TooManyOps, "a batch holds at most %d ops, not %d", engine.MaxBatchOps, n)
	}
	top := writeParams{MinCopies: in.MinCopies}
	minCopies, err := top.minCopies()
	if err != nil {
		return in, nil, 0, err
	}
	out := make([]parsed, len(in.Ops))
	size := 0
	partition := -1
	for i, b := range in.Ops {
		p, err := parseBatchOp(body, b, in.Atomic)
		if err != nil {
			e := errcode.As(err)
			return in, nil, 0, &errcode.Error{Code: e.Code, Message: fmt.Sprintf("ops[%d]: %s", i, e.Message), Details: e.Details}
		}
		size += len(p.op.Key) + len(p.op.Value)
		if size > engine.MaxBatchBytes {
			return in, nil, 0, errcode.New(errcode.TooManyOps, "a batch's keys and values add up to at most %d bytes", engine.MaxBatchBytes)
		}
		if err := permit(r, p.op.Key, p.kind != "get"); err != nil {
			return in, nil, 0, err
		}
		if in.Atomic && s.eng.Partitions() > 0 {
			switch pp := s.eng.PartitionOf(p.op.Key); {
			case partition == -1:
				partition = pp
			case pp != partition:
				return in, nil, 0, errcode.New(errcode.CrossPartition,
					"an atomic batch must fall in one partition: %q and %q do not (keys sharing a {hash tag} share a partition)", *in.Ops[0].Key, p.op.Key)
			}
		}
		out[i] = p
	}
	return in, out, minCopies, nil
}

func parseBatchOp(body []byte, b batchOp, atomic bool) (parsed, error) {
	if b.Key == nil {
		return parsed{}, errcode.New(errcode.MissingKey, "key is required")
	}
	if err := validateKey(*b.Key); err != nil {
		return parsed{}, err
	}
	if b.MinCopies != nil {
		return parsed{}, errcode.New(errcode.BadRequest, "min_copies applies to the whole batch: give it beside \"ops\"")
	}
	p := parsed{kind: b.Op, op: engine.Op{Key: *b.Key}}
	var err error
	switch b.Op {
	case "get":
		if b.Value != nil || b.TTL != nil || b.KeepTTL != nil || b.IfRevision != nil || b.IfAbsent != nil || b.IfExists != nil || b.Prev != nil {
			return parsed{}, errcode.New(errcode.BadRequest, "a get takes only key (and consistency)")
		}
		if p.stale, err = consistency(b.Consistency); err != nil {
			return parsed{}, err
		}
		if p.stale && atomic {
			return parsed{}, errcode.New(errcode.BadRequest, "the gets of an atomic batch are read with its writes; consistency=stale does not apply")
		}
		p.op.Get = true
		return p, nil
	case "set":
		if err := checkSet(body, b.Key, b.Value); err != nil {
			return parsed{}, err
		}
		p.op.Value = *b.Value
		_, err = b.writeOptions(&p.op)
	case "delete":
		if b.Value != nil {
			return parsed{}, errcode.New(errcode.BadRequest, "a delete takes no value")
		}
		p.op.Delete = true
		_, err = b.writeOptions(&p.op)
	default:
		return parsed{}, errcode.New(errcode.BadRequest, "op must be \"get\", \"set\" or \"delete\", not %q", b.Op)
	}
	if b.Consistency != "" {
		return parsed{}, errcode.New(errcode.BadRequest, "consistency applies to gets only")
	}
	return p, err
}

func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	in, ops, minCopies, err := s.parseBatch(r, body)
	if err != nil {
		writeError(w, err)
		return
	}
	results := make([]batchResult, len(ops))
	// Writes (and, in an atomic batch, its gets) go to the primaries in
	// one request per partition; the gets of a plain batch are reads of
	// their own, in parallel with the writes.
	var writeIdx []int
	var writes []engine.Op
	var wg sync.WaitGroup
	for i, p := range ops {
		if p.kind == "get" && !in.Atomic {
			wg.Go(func() {
				v, err := s.eng.Read(r.Context(), p.op.Key, p.stale)
				if err != nil {
					results[i] = failedResult("get", p.op.Key, err)
					return
				}
				g := getAnswer(p.op.Key, v, p.stale)
				rev := g.Revision
				results[i] = batchResult{Status: http.StatusOK, Op: "get", Key: p.op.Key, Value: &g.Value, Revision: &rev,
					ExpiresAt: g.ExpiresAt, TTLMillis: g.TTLMillis}
			})
			continue
		}
		writeIdx = append(writeIdx, i)
		writes = append(writes, p.op)
	}
	if len(writes) > 0 {
		res, errs := s.eng.WriteBatch(r.Context(), writes, in.Atomic, minCopies)
		for j, i := range writeIdx {
			results[i] = opResult(ops[i], res[j], errs[j])
		}
	}
	wg.Wait()
	out := map[string]any{"results": results, "count": len(results)}
	if in.Atomic {
		committed := true
		for _, res := range results {
			if res.Status != http.StatusOK && res.Op != "get" {
				committed = false
			}
		}
		out["committed"] = committed
	}
	writeJSON(w, http.StatusOK, out)
}

// opResult is the batch answer of one op sent to a primary.
func opResult(p parsed, res peer.Result, err error) batchResult {
	if err == nil {
		err = resultError(res)
	}
	if err != nil {
		return failedResult(p.kind, p.op.Key, err)
	}
	if p.kind == "get" {
		v := res.Prev.Value
		out := batchResult{Status: http.StatusOK, Op: "get", Key: p.op.Key, Value: &v, Revision: &res.Revision}
		out.ExpiresAt, out.TTLMillis = deadline(res.ExpiresAt, time.Now())
		return out
	}
	status := "success"
	if p.op.Delete {
		status = "deleted"
	}
	wr := writeOK(p.op.Key, status, p.op, res)
	return batchResult{Status: http.StatusOK, Op: p.kind, Key: p.op.Key, Revision: &wr.Revision, Deleted: wr.Deleted,
		ExpiresAt: wr.ExpiresAt, TTLMillis: wr.TTLMillis, Prev: wr.Prev}
}
