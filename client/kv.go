package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// kvJSON is a key's value as get, prev and scan items show it.
type kvJSON struct {
	Key       string `json:"key"`
	Value     string `json:"value"`
	Revision  uint64 `json:"revision"`
	ExpiresAt string `json:"expires_at"`
	TTLMillis *int64 `json:"ttl_ms"`
}

func (k kvJSON) public() *KV {
	out := &KV{Key: k.Key, Value: k.Value, Revision: k.Revision, ExpiresAt: parseTime(k.ExpiresAt)}
	if k.TTLMillis != nil {
		out.TTL = time.Duration(*k.TTLMillis) * time.Millisecond
	}
	return out
}

func parseTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func ttlString(d time.Duration) string { return d.String() }

// Get reads key. A missing key is an *Error with Code "key_not_found"
// (IsNotFound).
func (c *Client) Get(ctx context.Context, key string, o *GetOptions) (*KV, error) {
	if o == nil {
		o = &GetOptions{}
	}
	q := url.Values{"key": {key}}
	if o.Consistency != "" {
		q.Set("consistency", string(o.Consistency))
	}
	res, err := c.do(ctx, &request{method: http.MethodGet, path: "/kv/get", query: q, key: key, hasKey: true, stale: o.Consistency == Stale})
	if err != nil {
		return nil, err
	}
	var out kvJSON
	if err := decode(res, &out); err != nil {
		return nil, err
	}
	return out.public(), nil
}

// writeJSON is a write's answer.
type writeJSON struct {
	Key       string           `json:"key"`
	Revision  uint64           `json:"revision"`
	Deleted   *bool            `json:"deleted"`
	ExpiresAt string           `json:"expires_at"`
	Prev      *json.RawMessage `json:"prev"`
}

func (w writeJSON) public(key string) (*WriteResult, error) {
	out := &WriteResult{Key: w.Key, Revision: w.Revision, ExpiresAt: parseTime(w.ExpiresAt)}
	if out.Key == "" {
		out.Key = key
	}
	if w.Deleted != nil {
		out.Deleted = *w.Deleted
	}
	prev, err := parsePrev(key, w.Prev)
	out.Prev = prev
	return out, err
}

func parsePrev(key string, raw *json.RawMessage) (*KV, error) {
	if raw == nil || string(*raw) == "null" {
		return nil, nil
	}
	var p kvJSON
	if err := json.Unmarshal(*raw, &p); err != nil {
		return nil, errorf("internal", "", err, "decode prev: %v", err)
	}
	p.Key = key
	return p.public(), nil
}

// setBody is POST /kv/set's body.
type setBody struct {
	Key        string  `json:"key"`
	Value      string  `json:"value"`
	TTL        string  `json:"ttl,omitempty"`
	KeepTTL    bool    `json:"keep_ttl,omitempty"`
	IfRevision *uint64 `json:"if_revision,omitempty"`
	IfAbsent   bool    `json:"if_absent,omitempty"`
	IfExists   bool    `json:"if_exists,omitempty"`
	Prev       bool    `json:"prev,omitempty"`
	MinCopies  int     `json:"min_copies,omitempty"`
}

// Set writes key's value.
func (c *Client) Set(ctx context.Context, key, value string, o *SetOptions) (*WriteResult, error) {
	if o == nil {
		o = &SetOptions{}
	}
	b := setBody{Key: key, Value: value, KeepTTL: o.KeepTTL, IfRevision: o.IfRevision, IfAbsent: o.IfAbsent,
		IfExists: o.IfExists, Prev: o.Prev, MinCopies: o.MinCopies}
	if o.TTL != 0 {
		b.TTL = ttlString(o.TTL)
	}
	body, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	return c.write(ctx, &request{method: http.MethodPost, path: "/kv/set", body: body, key: key})
}

// Delete deletes key; WriteResult.Deleted says whether it existed.
func (c *Client) Delete(ctx context.Context, key string, o *DeleteOptions) (*WriteResult, error) {
	if o == nil {
		o = &DeleteOptions{}
	}
	q := url.Values{"key": {key}}
	condQuery(q, o.IfRevision, o.MinCopies)
	if o.IfExists {
		q.Set("if_exists", "true")
	}
	if o.Prev {
		q.Set("prev", "true")
	}
	return c.write(ctx, &request{method: http.MethodPost, path: "/kv/delete", query: q, key: key})
}

// Expire sets (ttl > 0) or removes (ttl = 0) the TTL of an existing key.
func (c *Client) Expire(ctx context.Context, key string, ttl time.Duration, o *ExpireOptions) (*WriteResult, error) {
	if o == nil {
		o = &ExpireOptions{}
	}
	q := url.Values{"key": {key}, "ttl": {ttlString(ttl)}}
	condQuery(q, o.IfRevision, o.MinCopies)
	return c.write(ctx, &request{method: http.MethodPost, path: "/kv/expire", query: q, key: key})
}

func condQuery(q url.Values, ifRev *uint64, minCopies int) {
	if ifRev != nil {
		q.Set("if_revision", strconv.FormatUint(*ifRev, 10))
	}
	if minCopies > 0 {
		q.Set("min_copies", strconv.Itoa(minCopies))
	}
}

func (c *Client) write(ctx context.Context, r *request) (*WriteResult, error) {
	r.write, r.hasKey = true, true
	res, err := c.do(ctx, r)
	if err != nil {
		return nil, err
	}
	var out writeJSON
	if err := decode(res, &out); err != nil {
		return nil, err
	}
	return out.public(r.key)
}

// batchOpJSON is one op of POST /kv/batch.
type batchOpJSON struct {
	Op          string  `json:"op"`
	Key         string  `json:"key"`
	Value       *string `json:"value,omitempty"`
	TTL         string  `json:"ttl,omitempty"`
	KeepTTL     bool    `json:"keep_ttl,omitempty"`
	IfRevision  *uint64 `json:"if_revision,omitempty"`
	IfAbsent    bool    `json:"if_absent,omitempty"`
	IfExists    bool    `json:"if_exists,omitempty"`
	Prev        bool    `json:"prev,omitempty"`
	Consistency string  `json:"consistency,omitempty"`
}

type batchResultJSON struct {
	Status           int              `json:"status"`
	Op               string           `json:"op"`
	Key              string           `json:"key"`
	Value            *string          `json:"value"`
	Revision         *uint64          `json:"revision"`
	Deleted          *bool            `json:"deleted"`
	ExpiresAt        string           `json:"expires_at"`
	Prev             *json.RawMessage `json:"prev"`
	Error            string           `json:"error"`
	Code             string           `json:"code"`
	CurrentRevisionF *float64         `json:"current_revision"`
	Exists           *bool            `json:"exists"`
}

// Batch runs ops in one request (POST /kv/batch). The error is the
// request's; each op's own failure is in its OpResult.Err. A batch with a
// write is not sent again once it may have reached a node.
func (c *Client) Batch(ctx context.Context, ops []Op, o *BatchOptions) ([]OpResult, error) {
	if o == nil {
		o = &BatchOptions{}
	}
	in := struct {
		Ops       []batchOpJSON `json:"ops"`
		Atomic    bool          `json:"atomic,omitempty"`
		MinCopies int           `json:"min_copies,omitempty"`
	}{Ops: make([]batchOpJSON, len(ops)), Atomic: o.Atomic, MinCopies: o.MinCopies}
	write := false
	for i, op := range ops {
		b := batchOpJSON{Op: op.Op, Key: op.Key, KeepTTL: op.KeepTTL, IfRevision: op.IfRevision, IfAbsent: op.IfAbsent,
			IfExists: op.IfExists, Prev: op.Prev, Consistency: string(op.Consistency)}
		if op.Op == "set" {
			v := op.Value
			b.Value = &v
		}
		if op.TTL != 0 {
			b.TTL = ttlString(op.TTL)
		}
		write = write || op.Op != "get"
		in.Ops[i] = b
	}
	body, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	r := &request{method: http.MethodPost, path: "/kv/batch", body: body, write: write}
	// The node that owns the first key serves at least its partition
	// without forwarding (all of an atomic batch, which has one).
	if len(ops) > 0 {
		r.key, r.hasKey = ops[0].Key, true
	}
	res, err := c.do(ctx, r)
	if err != nil {
		return nil, err
	}
	var out struct {
		Results []batchResultJSON `json:"results"`
	}
	if err := decode(res, &out); err != nil {
		return nil, err
	}
	results := make([]OpResult, len(out.Results))
	for i, b := range out.Results {
		r := OpResult{Op: b.Op, Key: b.Key, Status: b.Status, ExpiresAt: parseTime(b.ExpiresAt)}
		if b.Value != nil {
			r.Value = *b.Value
		}
		if b.Revision != nil {
			r.Revision = *b.Revision
		}
		if b.Deleted != nil {
			r.Deleted = *b.Deleted
		}
		if b.Code != "" || b.Status >= 300 {
			e := &Error{Status: b.Status, Code: b.Code, Message: b.Error, Node: res.addr}
			if b.CurrentRevisionF != nil {
				e.CurrentRevision = uint64(*b.CurrentRevisionF)
			}
			if b.Exists != nil {
				e.Exists = *b.Exists
			}
			if e.Code == "" {
				e.Code = codeForStatus(b.Status)
			}
			r.Err = e
		}
		r.Prev, err = parsePrev(b.Key, b.Prev)
		if err != nil {
			return nil, err
		}
		results[i] = r
	}
	return results, nil
}

// scanJSON is GET /kv/scan's answer.
type scanJSON struct {
	Items      []kvJSON `json:"items"`
	NextCursor string   `json:"next_cursor"`
	Token      string   `json:"token"`
}

// Scan reads one page of a range across the cluster, in key order.
func (c *Client) Scan(ctx context.Context, o ScanOptions) (*ScanPage, error) {
	q := url.Values{}
	switch {
	case o.Prefix != "":
		q.Set("prefix", o.Prefix)
	default:
		if o.Start != "" {
			q.Set("start", o.Start)
		}
		if o.End != "" {
			q.Set("end", o.End)
		}
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Cursor != "" {
		q.Set("cursor", o.Cursor)
	}
	q.Set("values", strconv.FormatBool(o.Values))
	if o.Consistency != "" {
		q.Set("consistency", string(o.Consistency))
	}
	res, err := c.do(ctx, &request{method: http.MethodGet, path: "/kv/scan", query: q})
	if err != nil {
		return nil, err
	}
	var out scanJSON
	if err := decode(res, &out); err != nil {
		return nil, err
	}
	page := &ScanPage{Items: make([]KV, len(out.Items)), NextCursor: out.NextCursor, Token: out.Token}
	for i, it := range out.Items {
		page.Items[i] = *it.public()
	}
	return page, nil
}

// ScanAll pages through the whole range and calls fn for every item; it
// returns the first page's token, from which a watch sees every change
// after the scan. An error from fn stops the scan and is returned.
func (c *Client) ScanAll(ctx context.Context, o ScanOptions, fn func(KV) error) (string, error) {
	token := ""
	for {
		page, err := c.Scan(ctx, o)
		if err != nil {
			return token, err
		}
		if token == "" {
			token = page.Token
		}
		for _, it := range page.Items {
			if err := fn(it); err != nil {
				return token, err
			}
		}
		if page.NextCursor == "" {
			return token, nil
		}
		o.Cursor = page.NextCursor
	}
}

// nodeKV is the KV address of node (an id, or a KV address), "" for any.
func (c *Client) nodeKV(node string) (string, error) {
	if node == "" {
		return "", nil
	}
	if m, ok := c.table.Load().members[node]; ok {
		return m.kv, nil
	}
	for _, m := range c.table.Load().members {
		if m.kv == node || m.mgmt == node {
			return m.kv, nil
		}
	}
	return "", errors.New("client: no member " + strconv.Quote(node))
}

// List is GET /kv/list on one node (an id, or "" for any): the keys that
// node stores, as primary or replica.
func (c *Client) List(ctx context.Context, node string) ([]string, error) {
	addr, err := c.nodeKV(node)
	if err != nil {
		return nil, err
	}
	res, err := c.do(ctx, &request{method: http.MethodGet, path: "/kv/list", addr: addr})
	if err != nil {
		return nil, err
	}
	var out struct {
		Keys []string `json:"keys"`
	}
	if err := decode(res, &out); err != nil {
		return nil, err
	}
	return out.Keys, nil
}

// Stats is GET /kv/stats on one node (an id, or "" for any).
func (c *Client) Stats(ctx context.Context, node string) (map[string]any, error) {
	addr, err := c.nodeKV(node)
	if err != nil {
		return nil, err
	}
	res, err := c.do(ctx, &request{method: http.MethodGet, path: "/kv/stats", addr: addr})
	if err != nil {
		return nil, err
	}
	var out map[string]any
	return out, decode(res, &out)
}
