package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Client settings that are not configurable.
const (
	// maxResponseBytes bounds an answer's body: a full scan page of
	// large values fits, a misbehaving peer cannot exhaust memory.
	maxResponseBytes = 64 << 20
	// refreshInterval is the least time between two table refreshes.
	refreshInterval = 100 * time.Millisecond
	// Retry backoff: full jitter over an exponential window.
	backoffStart = 20 * time.Millisecond
	backoffCap   = time.Second
	// versionHeader carries the answering node's table version.
	versionHeader = "X-ClusterKit-Table-Version"
)

// Client is a connection to a ClusterKit cluster. It is safe for
// concurrent use; Close releases its connections.
type Client struct {
	cfg Config
	log *slog.Logger
	// lean carries the KV and management calls (one request in flight
	// per caller, see transport.go); tr and hc the long-lived watch
	// streams, where net/http's goroutines per connection cost nothing
	// that matters.
	lean   *transport
	tr     *http.Transport
	hc     *http.Client
	scheme string
	local  map[string]bool // this host's IP addresses

	table atomic.Pointer[table]
	rr    atomic.Uint64

	// refreshMu makes refreshes single-flight; lastRefresh is when the
	// last one finished (unix ns). bgRefresh guards the background
	// refresh a newer version header starts.
	refreshMu   sync.Mutex
	lastRefresh atomic.Int64
	bgRefresh   atomic.Bool

	ctx    context.Context // ends with Close (background refreshes, watches)
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New connects to the cluster: it reads GET /cluster from the first of
// cfg.Addrs that answers and returns a Client routing by that table.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("client: Config.Addrs needs at least one management address")
	}
	if cfg.MaxConnsPerNode <= 0 {
		cfg.MaxConnsPerNode = DefaultMaxConnsPerNode
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: cfg.Logger.With("component", "client"), scheme: "http", local: localAddrs()}
	if cfg.TLS != nil {
		c.scheme = "https"
	}
	dialer := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	c.tr = &http.Transport{
		DialContext:         dialer.DialContext,
		TLSClientConfig:     cloneTLS(cfg.TLS),
		TLSHandshakeTimeout: 5 * time.Second,
		// The default of 2 idle connections per host makes a busy client
		// open and close a connection for most requests.
		MaxIdleConns:          0,
		MaxIdleConnsPerHost:   cfg.MaxConnsPerNode,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // bounded by the request's context
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     false,
		DisableCompression:    true,
		WriteBufferSize:       16 << 10,
		ReadBufferSize:        16 << 10,
	}
	c.lean = newTransport(cfg.TLS, cfg.MaxConnsPerNode)
	c.hc = &http.Client{Transport: c.tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if err := c.Refresh(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func cloneTLS(t *tls.Config) *tls.Config {
	if t == nil {
		return nil
	}
	return t.Clone()
}

// localAddrs lists this host's IP addresses, to find the copies a stale
// read may take without crossing the network.
func localAddrs() map[string]bool {
	out := map[string]bool{"localhost": true}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			out[n.IP.String()] = true
		}
	}
	return out
}

// Close ends background work and closes idle connections.
func (c *Client) Close() error {
	c.cancel()
	c.wg.Wait()
	c.tr.CloseIdleConnections()
	c.lean.Close()
	return nil
}

// Refresh re-reads the partition table now (from the members it knows,
// then the configured addresses).
func (c *Client) Refresh(ctx context.Context) error {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	return c.refreshLocked(ctx)
}

// maybeRefresh refreshes unless another caller did within refreshInterval
// (it waits for one in progress, then returns): a burst of failures costs
// one read of the table.
func (c *Client) maybeRefresh(ctx context.Context) {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	if time.Since(time.Unix(0, c.lastRefresh.Load())) < refreshInterval {
		return
	}
	if err := c.refreshLocked(ctx); err != nil {
		c.log.Debug("table refresh failed", "err", err)
	}
}

// noteVersion starts a background refresh when a node reports a newer
// table than the client's.
func (c *Client) noteVersion(h http.Header) {
	v := h.Get(versionHeader)
	if v == "" {
		return
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n <= c.table.Load().version {
		return
	}
	if !c.bgRefresh.CompareAndSwap(false, true) {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer c.bgRefresh.Store(false)
		// Within refreshInterval of the last refresh, wait for the
		// interval to end rather than drop the news.
		if wait := refreshInterval - time.Since(time.Unix(0, c.lastRefresh.Load())); wait > 0 {
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		if c.table.Load().version >= n {
			return
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.cfg.RequestTimeout)
		defer cancel()
		c.maybeRefresh(ctx)
	}()
}

func (c *Client) refreshLocked(ctx context.Context) error {
	defer c.lastRefresh.Store(time.Now().UnixNano())
	var errs []error
	for _, addr := range c.mgmtCandidates() {
		var raw clusterJSON
		if err := c.getJSON(ctx, addr, "/cluster", &raw); err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		t, err := c.newTable(&raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		// A node that has not applied the latest table yet may answer
		// with an older one; never go back.
		if old := c.table.Load(); old == nil || t.version >= old.version {
			c.table.Store(t)
		}
		return nil
	}
	return fmt.Errorf("client: read the partition table: %w", errors.Join(errs...))
}

// mgmtCandidates are the management addresses to ask for the table: the
// live members first, starting at a rotating one, then the configured
// addresses.
func (c *Client) mgmtCandidates() []string {
	seen := map[string]bool{}
	var out []string
	add := func(a string) {
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	if t := c.table.Load(); t != nil && len(t.live) > 0 {
		start := int(c.rr.Add(1))
		for i := range t.live {
			add(t.live[(start+i)%len(t.live)].mgmt)
		}
	}
	for _, a := range c.cfg.Addrs {
		add(a)
	}
	return out
}

// getJSON is one GET of the management API at addr, without retries.
func (c *Client) getJSON(ctx context.Context, addr, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	res := c.once(ctx, addr, &request{method: http.MethodGet, path: path})
	if res.err != nil {
		return res.err
	}
	return decode(res, out)
}

// request is one API call.
type request struct {
	method string
	path   string
	query  url.Values
	body   []byte
	// write is a call that changes data: sent again only when it surely
	// was not applied.
	write bool
	// mgmt goes to the management API.
	mgmt bool
	// route: the key whose partition picks the node (hasKey), and
	// whether a nearby copy may answer.
	key    string
	hasKey bool
	stale  bool
	// addr, when set, is the only address to use (a node-local call).
	addr string
	// header is added to the request.
	header http.Header
}

// result is one attempt's outcome.
type result struct {
	status int
	header http.Header
	body   []byte
	addr   string
	err    *Error // transport failure or an error answer
	// connFailed: the attempt failed in the transport (as opposed to a
	// node's answer).
	connFailed bool
}

// do runs r: it picks a node, sends, and retries what may be retried
// within ctx's deadline (or RequestTimeout).
func (c *Client) do(ctx context.Context, r *request) (result, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	window := backoffStart
	var avoid string
	for attempt := 0; ; attempt++ {
		addr := r.addr
		if addr == "" {
			addr = c.pick(r, avoid)
		}
		// Each attempt gets at most RequestTimeout; a ctx that ends
		// sooner (the first attempt's, usually) needs no child.
		actx, cancel := ctx, context.CancelFunc(nil)
		if dl, _ := ctx.Deadline(); time.Until(dl) > c.cfg.RequestTimeout {
			actx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		}
		res := c.once(actx, addr, r)
		if cancel != nil {
			cancel()
		}
		if res.err == nil {
			return res, nil
		}
		if !retryable(r, res) {
			return res, res.err
		}
		if res.connFailed {
			avoid = addr
		}
		c.maybeRefresh(ctx)
		d := time.Duration(rand.Int64N(int64(window) + 1))
		window = min(2*window, backoffCap)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return res, res.err
		}
		select {
		case <-ctx.Done():
			return res, res.err
		case <-time.After(d):
		}
		c.log.Debug("retrying", "path", r.path, "key", r.key, "attempt", attempt+1, "err", res.err)
	}
}

// retryable reports whether a failed attempt may be sent again: the
// answer guarantees it was not applied, or it is a read.
func retryable(r *request, res result) bool {
	switch res.err.Code {
	case "unavailable", "not_ready", "not_leader", "epoch_mismatch", "no_leader", "not_enough_replicas":
		return true
	case "outcome_unknown":
		return !r.write
	}
	return false
}

// once sends one attempt of r to addr.
func (c *Client) once(ctx context.Context, addr string, r *request) result {
	u := c.scheme + "://" + addr + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	var wrote atomic.Bool
	trace := &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			wrote.Store(true)
		}
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), r.method, u, body)
	if err != nil {
		return result{addr: addr, err: errorf("bad_request", addr, err, "build request: %v", err)}
	}
	c.header(req, r)
	// The lean transport follows no redirects (as hc does not): a 3xx
	// is an answer.
	resp, err := c.lean.RoundTrip(req)
	if err != nil {
		err = &url.Error{Op: urlOp(req.Method), URL: u, Err: err}
		return c.transportError(ctx, addr, r, err, wrote.Load())
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err == nil && len(b) > maxResponseBytes {
		err = fmt.Errorf("answer exceeds %d bytes", maxResponseBytes)
	}
	if err != nil {
		// The status line came, the body did not: a write's outcome is
		// the status, but without the body we cannot report it.
		return c.transportError(ctx, addr, r, err, true)
	}
	c.noteVersion(resp.Header)
	res := result{status: resp.StatusCode, header: resp.Header, body: b, addr: addr}
	if resp.StatusCode >= 300 {
		res.err = answerError(addr, resp.StatusCode, b)
	}
	return res
}

// urlOp is net/http's name of a method in errors ("Post").
func urlOp(method string) string {
	if method == "" {
		return "Get"
	}
	return method[:1] + strings.ToLower(method[1:])
}

func (c *Client) header(req *http.Request, r *request) {
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
}

// transportError classifies a failed attempt: before the request was
// written nothing can have been applied (unavailable); after, a write's
// outcome is unknown.
func (c *Client) transportError(ctx context.Context, addr string, r *request, err error, sent bool) result {
	res := result{addr: addr, connFailed: true}
	why := err.Error()
	if ctx.Err() != nil {
		why = "no answer before the deadline: " + why
	}
	if sent && r.write {
		res.err = errorf("outcome_unknown", addr, err, "the request was sent but its answer was lost, so it may or may not have been applied: %s", why)
		return res
	}
	res.err = errorf("unavailable", addr, err, "%s", why)
	return res
}

// answerError turns an error answer into an *Error.
func answerError(addr string, status int, body []byte) *Error {
	e := &Error{Status: status, Node: addr}
	var m map[string]any
	if json.Unmarshal(body, &m) == nil {
		e.Body = m
		e.Code, _ = m["code"].(string)
		e.Message, _ = m["error"].(string)
		if v, ok := m["current_revision"].(float64); ok {
			e.CurrentRevision = uint64(v)
		}
		e.Exists, _ = m["exists"].(bool)
	}
	if e.Code == "" {
		e.Code = codeForStatus(status)
	}
	if e.Message == "" {
		e.Message = fmt.Sprintf("HTTP %d: %.200s", status, body)
	}
	return e
}

func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "bad_request"
	case http.StatusUnauthorized:
		return "unauthorized"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusConflict:
		return "conflict"
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return "unavailable"
	}
	return "internal"
}

// decode parses a successful answer into out.
func decode(res result, out any) error {
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(res.body, out); err != nil {
		return errorf("internal", res.addr, err, "decode answer: %v", err)
	}
	return nil
}
