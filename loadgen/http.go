package loadgen

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/clusterkit/clusterkit/ring"
)

// HTTPTarget drives ClusterKit's JSON-over-HTTP KV API (POST /kv/set,
// GET /kv/get, and for the CAS and batch workloads conditional sets and
// POST /kv/batch). Worker w sends its requests to the addresses in turn,
// starting at Addrs[w mod len(Addrs)].
//
// The load tool shares the machine's cores with the servers it measures, so
// a request costs it as little as possible. Each of the Concurrency
// workers speaks HTTP/1.1 itself, on one keep-alive connection per address
// (see h1Conn): no goroutine handoffs, no reflection or maps for the body,
// and request buffers reused from one request to the next. A worker number
// past Concurrency goes through net/http's Client instead, whose
// RoundTripper may still read a body after Do returns, so that path
// allocates each body afresh.
type HTTPTarget struct {
	hc     *http.Client
	addrs  []string
	getURL []string // "http://ADDR/kv/get?key=" for each address
	suffix string   // appended to a get URL ("&consistency=stale")
	// setExtra is appended to every set's JSON fields (the -ttl option).
	setExtra string
	workers  []httpWorker
	spare    atomic.Uint64 // round robin for worker numbers past len(workers)
	timeout  time.Duration
	// tls, when set, wraps every connection; scheme is "http://" or
	// "https://" to match.
	tls    *tls.Config
	scheme string
	// token is the bearer token (KV auth), and authHeader its header
	// line for the lean client's requests.
	token, authHeader string

	// owner, when set by RouteByOwner, maps a partition to the index of
	// its primary's address; tagged says the cluster places keys by their
	// hash tags.
	owner  []int
	tagged bool
}

type httpWorker struct {
	next  int       // requests sent so far
	url   []byte    // scratch for building a get URL
	body  []byte    // scratch for building a set body
	req   []byte    // the request being sent, head and body
	resp  []byte    // the last answer's body, when the caller reads it
	fails []error   // SetBatch's failed keys, reused
	conns []*h1Conn // by address index; used by this worker's goroutine only
	_     [64]byte
}

var (
	_ CASTarget   = (*HTTPTarget)(nil)
	_ BatchTarget = (*HTTPTarget)(nil)
)

// NewHTTPTarget returns the HTTP target for c.Addrs, c.Concurrency workers,
// c.Timeout per request and c.Stale reads.
func NewHTTPTarget(c Config) *HTTPTarget {
	n := max(c.Concurrency, 1)
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        n * max(len(c.Addrs), 1) * 2,
		MaxIdleConnsPerHost: n * 2,
		IdleConnTimeout:     time.Minute,
	}
	t := &HTTPTarget{
		hc:       &http.Client{Transport: tr, Timeout: c.Timeout},
		addrs:    c.Addrs,
		workers:  make([]httpWorker, n),
		timeout:  c.Timeout,
		setExtra: ttlField(c.TTL),
		tls:      c.TLS,
		scheme:   "http://",
	}
	if c.TLS != nil {
		tr.TLSClientConfig = c.TLS
		t.scheme = "https://"
	}
	if c.Token != "" {
		t.authHeader = "Authorization: Bearer " + c.Token + "\r\n"
		t.token = c.Token
	}
	for _, a := range c.Addrs {
		t.getURL = append(t.getURL, t.scheme+a+"/kv/get?key=")
	}
	if c.Stale {
		t.suffix = "&consistency=stale"
	}
	return t
}

// OpenHTTPTarget is NewHTTPTarget, with the TLS configuration built from
// c.TLSFiles, followed, when c.RouteVia is set, by RouteByOwner.
func OpenHTTPTarget(ctx context.Context, c Config) (*HTTPTarget, error) {
	if c.TLS == nil && (c.UseTLS || c.TLSFiles.Enabled()) {
		tc, err := c.TLSFiles.ClientConfig()
		if err != nil {
			return nil, err
		}
		c.TLS = tc
	}
	t := NewHTTPTarget(c)
	if c.RouteVia != "" {
		if err := t.RouteByOwner(ctx, c.RouteVia); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// ttlField is the JSON field that gives a set ttl (none for 0).
func ttlField(ttl time.Duration) string {
	if ttl <= 0 {
		return ""
	}
	return `,"ttl":"` + ttl.String() + `"`
}

// pick returns the index of the address for worker's next request, and the
// worker's scratch state (nil for a worker number past Concurrency).
func (t *HTTPTarget) pick(worker int, key string) (int, *httpWorker) {
	if worker >= 0 && worker < len(t.workers) {
		w := &t.workers[worker]
		i := (worker + w.next) % len(t.addrs)
		if t.owner != nil {
			i = t.owner[t.partitionOf(key)]
		}
		w.next++
		return i, w
	}
	return int(t.spare.Add(1) % uint64(len(t.addrs))), nil
}

// partitionOf places key as the cluster does (see RouteByOwner).
func (t *HTTPTarget) partitionOf(key string) int {
	if t.tagged {
		return ring.PartitionOfTagged(key, len(t.owner))
	}
	return ring.PartitionOf(key, len(t.owner))
}

// appendSetBody appends {"key":key,"value":value} and extra, the set's
// further fields (",\"ttl\":\"60s\"" with -ttl), before the closing brace.
func appendSetBody(body []byte, key string, value []byte, extra string) []byte {
	body = append(body, `{"key":`...)
	body = appendJSONString(body, key)
	body = append(body, `,"value":`...)
	body = appendJSONString(body, value)
	body = append(body, extra...)
	return append(body, '}')
}

// appendSetIfBody appends {"key":key,"value":value,"if_revision":rev}.
func appendSetIfBody(body []byte, key string, value []byte, extra string, rev uint64) []byte {
	body = appendSetBody(body, key, value, extra)
	body = append(body[:len(body)-1], `,"if_revision":`...)
	body = strconv.AppendUint(body, rev, 10)
	return append(body, '}')
}

// appendBatchBody appends {"ops":[{"op":"set","key":K,"value":value},...]}.
func appendBatchBody(body []byte, keys []string, value []byte, extra string) []byte {
	body = append(body, `{"ops":[`...)
	for j, k := range keys {
		if j > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"op":"set","key":`...)
		body = appendJSONString(body, k)
		body = append(body, `,"value":`...)
		body = appendJSONString(body, value)
		body = append(body, extra...)
		body = append(body, '}')
	}
	return append(body, "]}"...)
}

// post sends a POST to path with the body that build appends, to the
// address pick chooses for key, and returns the answer's status and,
// with keepBody, its body (for a worker, in its scratch: valid until its
// next request). A worker builds the body in its scratch buffer and sends
// it on its lean connection; other callers go through net/http.
func (t *HTTPTarget) post(ctx context.Context, worker int, key, path string, build func([]byte) []byte, keepBody bool) (int, []byte, error) {
	i, w := t.pick(worker, key)
	if w != nil {
		w.body = build(w.body[:0])
		w.req = appendRequestHead(w.req[:0], http.MethodPost, path, t.addrs[i], t.authHeader, len(w.body))
		w.req = append(w.req, w.body...)
		status, err := t.h1Do(ctx, w, i, http.MethodPost, path, keepBody)
		return status, w.resp, err // empty without keepBody
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.scheme+t.addrs[i]+path, bytes.NewReader(build(nil)))
	if err != nil {
		return 0, nil, &KindError{Kind: "request", Err: err}
	}
	req.Header["Content-Type"] = jsonContentType
	t.authorize(req)
	return t.do(req, t.addrs[i], keepBody)
}

// Set POSTs {"key":key,"value":value} to /kv/set.
func (t *HTTPTarget) Set(ctx context.Context, worker int, key string, value []byte) error {
	_, _, err := t.post(ctx, worker, key, "/kv/set", func(b []byte) []byte { return appendSetBody(b, key, value, t.setExtra) }, false)
	return err
}

// SetIf POSTs {"key":key,"value":value,"if_revision":rev} to /kv/set; a
// 409 whose code is condition_failed is a conflict. Other 409s (the
// cluster's own conflicts, such as an epoch mismatch) are errors: they
// say nothing about another client's write.
func (t *HTTPTarget) SetIf(ctx context.Context, worker int, key string, value []byte, rev uint64) (bool, error) {
	status, body, err := t.post(ctx, worker, key, "/kv/set", func(b []byte) []byte { return appendSetIfBody(b, key, value, t.setExtra, rev) }, true)
	if status == http.StatusConflict && topIs(body, "code", "condition_failed") {
		return true, nil
	}
	return false, err
}

// SetBatch POSTs the sets of value under keys to /kv/batch, at the address
// of keys[0] (the node there forwards the others to their primaries), and
// counts each result whose status is not 200 as a failed key.
func (t *HTTPTarget) SetBatch(ctx context.Context, worker int, keys []string, value []byte) ([]error, error) {
	return t.setBatch(ctx, worker, keys, value, nil)
}

// SetRevision is Set that returns the revision the answer gives the key.
func (t *HTTPTarget) SetRevision(ctx context.Context, worker int, key string, value []byte) (uint64, error) {
	_, body, err := t.post(ctx, worker, key, "/kv/set", func(b []byte) []byte { return appendSetBody(b, key, value, t.setExtra) }, true)
	if err != nil {
		return 0, err
	}
	rev, ok := topUint(body, "revision")
	if !ok {
		return 0, &KindError{Kind: "bad_answer", Err: fmt.Errorf("POST /kv/set %s: no revision in the answer", key)}
	}
	return rev, nil
}

// SetBatchRevisions is SetBatch that also sets revs[i] to the revision
// the answer gives keys[i] (0 for a key whose result is not 200).
func (t *HTTPTarget) SetBatchRevisions(ctx context.Context, worker int, keys []string, value []byte, revs []uint64) ([]error, error) {
	if len(revs) < len(keys) {
		return nil, fmt.Errorf("SetBatchRevisions: %d revisions for %d keys", len(revs), len(keys))
	}
	return t.setBatch(ctx, worker, keys, value, revs)
}

// setBatch is SetBatch, filling revs (when not nil) with the revisions.
func (t *HTTPTarget) setBatch(ctx context.Context, worker int, keys []string, value []byte, revs []uint64) ([]error, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	status, body, err := t.post(ctx, worker, keys[0], "/kv/batch", func(b []byte) []byte { return appendBatchBody(b, keys, value, t.setExtra) }, true)
	if err != nil {
		return nil, err
	}
	var fails []error
	if worker >= 0 && worker < len(t.workers) {
		fails = t.workers[worker].fails[:0]
	}
	n := 0
	revOK := true
	ok := batchResults(body, func(s, rev []byte) {
		if string(s) != "200" {
			fails = append(fails, &KindError{Kind: statusKind(s)})
		}
		if revs != nil && n < len(keys) {
			revs[n] = 0
			if string(s) == "200" {
				var good bool
				revs[n], good = parseUint(rev)
				revOK = revOK && good
			}
		}
		n++
	})
	if worker >= 0 && worker < len(t.workers) {
		t.workers[worker].fails = fails
	}
	if !ok || n != len(keys) || !revOK {
		return nil, &KindError{Kind: "bad_answer", Err: fmt.Errorf("POST /kv/batch: status %d, %d results for %d ops", status, n, len(keys))}
	}
	if len(fails) == 0 {
		return nil, nil
	}
	return fails, nil
}

// authorize adds the bearer token, if any, to a request of the net/http path.
func (t *HTTPTarget) authorize(req *http.Request) {
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
}

var jsonContentType = []string{"application/json"}

// Get GETs /kv/get?key=key; a 404 is found=false.
func (t *HTTPTarget) Get(ctx context.Context, worker int, key string) (bool, error) {
	status, _, err := t.get(ctx, worker, key, t.suffix, false)
	if status == http.StatusNotFound {
		return false, nil
	}
	return err == nil, err
}

// GetRevision GETs /kv/get?key=key and reads the answer's revision; a 404
// is found=false. The read is never stale, whatever Config.Stale says: it
// is the read of a read-modify-write, and a copy that lags would make
// conflicts that no other client caused.
func (t *HTTPTarget) GetRevision(ctx context.Context, worker int, key string) (uint64, bool, error) {
	status, body, err := t.get(ctx, worker, key, "", true)
	switch {
	case status == http.StatusNotFound:
		return 0, false, nil
	case err != nil:
		return 0, false, err
	}
	rev, ok := topUint(body, "revision")
	if !ok {
		return 0, false, &KindError{Kind: "bad_answer", Err: fmt.Errorf("GET /kv/get?key=%s: no revision in the answer", key)}
	}
	return rev, true, nil
}

// get sends GET /kv/get?key=key, with suffix after the query, and returns
// the answer's status and, with keepBody, its body, like post.
func (t *HTTPTarget) get(ctx context.Context, worker int, key, suffix string, keepBody bool) (int, []byte, error) {
	i, w := t.pick(worker, key)
	if w != nil {
		w.url = append(w.url[:0], "/kv/get?key="...)
		w.url = appendQueryEscape(w.url, key)
		w.url = append(w.url, suffix...)
		w.req = appendRequestHead(w.req[:0], http.MethodGet, string(w.url), t.addrs[i], t.authHeader, -1)
		status, err := t.h1Do(ctx, w, i, http.MethodGet, "/kv/get", keepBody)
		return status, w.resp, err // empty without keepBody
	}
	u := appendQueryEscape([]byte(t.getURL[i]), key)
	u = append(u, suffix...)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, string(u), nil)
	if err != nil {
		return 0, nil, &KindError{Kind: "request", Err: err}
	}
	t.authorize(req)
	return t.do(req, t.addrs[i], keepBody)
}

// do sends req and drains the response, or with keepBody reads and returns
// its body. Any status but 200 is an error of kind http_STATUS, except
// that a 404 for a get is left to the caller.
func (t *HTTPTarget) do(req *http.Request, addr string, keepBody bool) (int, []byte, error) {
	resp, err := t.hc.Do(req)
	if err != nil {
		return 0, nil, &KindError{Kind: "transport", Err: err}
	}
	defer resp.Body.Close()
	var body []byte
	if keepBody {
		if body, err = io.ReadAll(io.LimitReader(resp.Body, maxKeptBody)); err != nil {
			return 0, nil, &KindError{Kind: "transport", Err: fmt.Errorf("%s %s%s: %w", req.Method, addr, req.URL.Path, err)}
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, body, statusError(resp.StatusCode, req.Method, addr, req.URL.Path)
}

// statusError is the error for an answer's status: none for 200, or for a
// get's 404 (Get reports it as not found); else one of kind http_STATUS.
func statusError(status int, method, addr, path string) error {
	if status == http.StatusOK || status == http.StatusNotFound && method == http.MethodGet {
		return nil
	}
	return &KindError{Kind: "http_" + strconv.Itoa(status), Err: fmt.Errorf("%s %s%s", method, addr, path)}
}

// RouteByOwner reads the partition table from a node's management API
// (GET /cluster) and from then on sends each key to its partition's primary
// (placed by its hash tag when the cluster's hash_config says so),
// as a cluster-aware client does, instead of to the addresses in turn. The
// table is read once: after a change of primary a request still succeeds,
// through one forward.
func (t *HTTPTarget) RouteByOwner(ctx context.Context, mgmtAddr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.scheme+mgmtAddr+"/cluster", nil)
	if err != nil {
		return err
	}
	resp, err := t.hc.Do(req)
	if err != nil {
		return fmt.Errorf("read the partition table: %w", err)
	}
	defer resp.Body.Close()
	var doc struct {
		Cluster struct {
			Nodes []struct {
				ID     string `json:"id"`
				KVAddr string `json:"kv_addr"`
			} `json:"nodes"`
			PartitionMap struct {
				Partitions map[string]struct {
					Primary string `json:"primary_node"`
				} `json:"partitions"`
			} `json:"partition_map"`
			Config struct {
				Partitions int `json:"partition_count"`
			} `json:"config"`
		} `json:"cluster"`
		// HashTags: a key holding "{...}" is placed by the text in its
		// first braces.
		HashConfig struct {
			HashTags bool `json:"hash_tags"`
		} `json:"hash_config"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return fmt.Errorf("decode %s/cluster: %w", mgmtAddr, err)
	}
	c := doc.Cluster
	if c.Config.Partitions < 1 {
		return fmt.Errorf("%s/cluster: no partition count", mgmtAddr)
	}
	kv := map[string]string{}
	for _, n := range c.Nodes {
		kv[n.ID] = n.KVAddr
	}
	index := map[string]int{}
	for i, a := range t.addrs {
		index[a] = i
	}
	owner := make([]int, c.Config.Partitions)
	for p := range owner {
		row, ok := c.PartitionMap.Partitions["partition-"+strconv.Itoa(p)]
		addr := kv[row.Primary]
		if !ok || addr == "" {
			return fmt.Errorf("%s/cluster: partition %d has no primary with a KV address", mgmtAddr, p)
		}
		i, ok := index[addr]
		if !ok {
			i = len(t.addrs)
			index[addr] = i
			t.addrs = append(t.addrs, addr)
			t.getURL = append(t.getURL, t.scheme+addr+"/kv/get?key=")
		}
		owner[p] = i
	}
	t.owner, t.tagged = owner, doc.HashConfig.HashTags
	return nil
}

// Close closes the connections; call it once no request is in flight.
func (t *HTTPTarget) Close() error {
	t.hc.CloseIdleConnections()
	for i := range t.workers {
		for j, c := range t.workers[i].conns {
			if c != nil {
				c.nc.Close()
				t.workers[i].conns[j] = nil
			}
		}
	}
	return nil
}

// appendJSONString appends s as a JSON string. Plain ASCII (the bench keys
// and values) is copied as it is; anything else goes through encoding/json.
func appendJSONString[S string | []byte](dst []byte, s S) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			b, _ := json.Marshal(string(s))
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// appendQueryEscape appends url.QueryEscape(s) without allocating for the
// characters the bench keys use.
func appendQueryEscape(dst []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.', c == '~':
			dst = append(dst, c)
		case c == ' ':
			dst = append(dst, '+')
		default:
			dst = append(dst, '%', hex[c>>4], hex[c&15])
		}
	}
	return dst
}
