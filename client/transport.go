package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Lean transport settings.
const (
	// idleConnMax is the longest a connection waits in the pool. It is
	// well under the server's idle timeout (60s by default,
	// HTTP_IDLE_TIMEOUT), so that the server rarely closes a pooled
	// connection just as a request goes out on it; the liveness probe
	// catches the connections it closed earlier.
	idleConnMax = 20 * time.Second
	// connBufSize is each connection's read and write buffer: a KV
	// request and its answer fit.
	connBufSize = 8 << 10
	dialTimeout = 3 * time.Second
	userAgent   = "Go-http-client/1.1"
)

// aLongTimeAgo is a deadline in the past: it wakes a blocked read or
// write at once.
var aLongTimeAgo = time.Unix(1, 0)

// errNoAnswer is a connection that closed after the request was written
// and before the first byte of an answer.
var errNoAnswer = errors.New("the connection closed before an answer")

// transport is an http.RoundTripper for callers with one request in
// flight at a time (every KV and management call).
//
// net/http's Transport hands every request to a writer goroutine of the
// connection and every answer to its reader goroutine: two goroutine
// switches per request, which on a busy host cost more than the request's
// syscalls (see loadgen/h1.go). This one writes the request and reads the
// answer (http.ReadResponse) on the caller's goroutine, over a pool of
// idle keep-alive HTTP/1.1 connections per address. Without a reader
// goroutine nothing notices a connection the server closed while idle,
// so a connection taken from the pool is probed first (a non-blocking
// peek at the socket) and one idle longer than idleMax is dropped.
//
// A connection goes back to the pool when its answer's body was read to
// the end and closed; a body closed early, an answer with Connection:
// close, or any error discards it. It calls the request's
// httptrace.ClientTrace GotConn, WroteRequest and GotFirstResponseByte
// hooks: WroteRequest with a nil Err means the whole request was
// written, so a write that then fails has an unknown outcome.
type transport struct {
	dialer  net.Dialer
	tls     *tls.Config // for https; ServerName filled in per address
	maxIdle int         // idle connections kept per address
	idleMax time.Duration

	mu     sync.Mutex
	idle   map[connKey][]*conn // per address, the most recently used last
	closed bool
}

type connKey struct{ scheme, addr string }

var _ http.RoundTripper = (*transport)(nil)

func newTransport(tlsCfg *tls.Config, maxIdle int) *transport {
	t := &transport{
		dialer:  net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second},
		maxIdle: maxIdle,
		idleMax: idleConnMax,
		idle:    map[connKey][]*conn{},
	}
	if tlsCfg != nil {
		t.tls = tlsCfg.Clone()
	} else {
		t.tls = &tls.Config{}
	}
	// The transport speaks HTTP/1.1 only.
	t.tls.NextProtos = []string{"http/1.1"}
	return t
}

// conn is one pooled connection.
type conn struct {
	key       connKey
	nc        net.Conn // the TLS connection for https
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	// probe peeks at the TCP socket (nil where that is not possible).
	probe func() bool
}

func (pc *conn) close() { _ = pc.nc.Close() }

// alive reports whether a pooled connection may carry a request: the
// server has not closed it and sent nothing unasked.
func (pc *conn) alive() bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	return pc.probe == nil || pc.probe()
}

// CloseIdleConnections closes the pooled connections; connections in use
// are closed when their answer is done.
func (t *transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[connKey][]*conn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.close()
		}
	}
}

// Close closes the idle connections and keeps none from now on.
func (t *transport) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.CloseIdleConnections()
}

// RoundTrip sends req and reads its answer's header; the body reads from
// the connection.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	key, err := requestKey(req)
	if err != nil {
		closeBody(body)
		return nil, err
	}
	trace := httptrace.ContextClientTrace(ctx)
	for fresh := false; ; fresh = true {
		pc, reused, idleTime, err := t.get(ctx, key, fresh)
		if err != nil {
			closeBody(body)
			return nil, ctxError(ctx, err)
		}
		if trace != nil && trace.GotConn != nil {
			trace.GotConn(httptrace.GotConnInfo{Conn: pc.nc, Reused: reused, WasIdle: reused, IdleTime: idleTime})
		}
		resp, written, err := t.roundTrip(ctx, pc, req, body, trace)
		if err == nil {
			return resp, nil
		}
		// A pooled connection the server closed just before the request
		// went out: send it once more on a new connection if it surely
		// was not applied (not written whole) or may be repeated (a
		// read). A write that was written is never sent again.
		if reused && !fresh && ctx.Err() == nil && staleConn(err) {
			switch {
			case !written && body == nil, written && replayable(req):
				continue
			case !written && req.GetBody != nil:
				if body, err = req.GetBody(); err == nil {
					continue
				}
			}
		}
		closeBody(body)
		return nil, ctxError(ctx, err)
	}
}

// requestKey is the pool a request's connection comes from.
func requestKey(req *http.Request) (connKey, error) {
	u := req.URL
	if u == nil || u.Host == "" {
		return connKey{}, errors.New("client transport: request without a host")
	}
	var port string
	switch u.Scheme {
	case "http":
		port = "80"
	case "https":
		port = "443"
	default:
		return connKey{}, fmt.Errorf("client transport: unsupported scheme %q", u.Scheme)
	}
	if u.Port() != "" {
		return connKey{u.Scheme, u.Host}, nil
	}
	return connKey{u.Scheme, net.JoinHostPort(u.Hostname(), port)}, nil
}

func closeBody(b io.ReadCloser) {
	if b != nil {
		_ = b.Close()
	}
}

// replayable is a request that may be sent twice: a read without a body.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
}

// staleConn is how a connection the server closed while it was idle
// fails: reset, broken pipe, or closed before any answer.
func staleConn(err error) bool {
	return errors.Is(err, errNoAnswer) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF)
}

// ctxError marks an error caused by ctx (its deadline, which the
// connection's deadline enforces, or its cancellation) as ctx's error.
func ctxError(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(err, cerr) {
			return err
		}
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	// The connection's deadline may fire a moment before ctx's timer.
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		return fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return err
}

// get takes a live idle connection for key, or dials one (fresh: always
// dial). reused and idle tell GotConn.
func (t *transport) get(ctx context.Context, key connKey, fresh bool) (pc *conn, reused bool, idle time.Duration, err error) {
	for !fresh {
		now := time.Now()
		t.mu.Lock()
		list := t.idle[key]
		if len(list) == 0 {
			t.mu.Unlock()
			break
		}
		pc = list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		idle = now.Sub(pc.idleSince)
		var expired []*conn
		if idle > t.idleMax {
			// The rest waited longer still.
			expired = append(expired, list...)
			clear(list)
			list = list[:0]
		}
		t.idle[key] = list
		t.mu.Unlock()
		if idle > t.idleMax {
			pc.close()
			for _, e := range expired {
				e.close()
			}
			break
		}
		if pc.alive() {
			return pc, true, idle, nil
		}
		pc.close()
	}
	pc, err = t.dial(ctx, key)
	return pc, false, 0, err
}

// put returns a connection whose answer was read whole to the pool.
func (t *transport) put(pc *conn) {
	// No deadline while idle: the probe would fail on a past one.
	if err := pc.nc.SetDeadline(time.Time{}); err != nil {
		pc.close()
		return
	}
	now := time.Now()
	pc.idleSince = now
	t.mu.Lock()
	list := t.idle[pc.key]
	if t.closed || len(list) >= t.maxIdle {
		t.mu.Unlock()
		pc.close()
		return
	}
	// Drop the connections that waited too long (the oldest are first).
	n := 0
	for n < len(list) && now.Sub(list[n].idleSince) > t.idleMax {
		n++
	}
	var expired []*conn
	if n > 0 {
		expired = append(expired, list[:n]...)
		m := copy(list, list[n:])
		clear(list[m:])
		list = list[:m]
	}
	t.idle[pc.key] = append(list, pc)
	t.mu.Unlock()
	for _, e := range expired {
		e.close()
	}
}

// dial opens a connection for key, with TLS for https.
func (t *transport) dial(ctx context.Context, key connKey) (*conn, error) {
	nc, err := t.dialer.DialContext(ctx, "tcp", key.addr)
	if err != nil {
		return nil, err
	}
	pc := &conn{key: key, nc: nc}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			pc.probe = newProbe(rc)
		}
	}
	if key.scheme == "https" {
		cfg := t.tls
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(key.addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, err
		}
		pc.nc = tc
	}
	pc.br = bufio.NewReaderSize(pc.nc, connBufSize)
	pc.bw = bufio.NewWriterSize(pc.nc, connBufSize)
	return pc, nil
}

// roundTrip sends req (with body) on pc and reads the answer's header;
// written says whether the whole request was written.
func (t *transport) roundTrip(ctx context.Context, pc *conn, req *http.Request, body io.ReadCloser, trace *httptrace.ClientTrace) (resp *http.Response, written bool, err error) {
	dl, _ := ctx.Deadline() // zero: none
	if err := pc.nc.SetDeadline(dl); err != nil {
		pc.close()
		return nil, false, err
	}
	stop := noStop
	if ctx.Done() != nil {
		// A cancelled ctx wakes a blocked write or read at once.
		stop = context.AfterFunc(ctx, func() { _ = pc.nc.SetDeadline(aLongTimeAgo) })
	}
	fail := func(err error) error {
		stop()
		pc.close()
		return err
	}
	err = pc.writeRequest(req, body)
	if trace != nil && trace.WroteRequest != nil {
		trace.WroteRequest(httptrace.WroteRequestInfo{Err: err})
	}
	if err != nil {
		return nil, false, fail(err)
	}
	if _, err := pc.br.Peek(1); err != nil {
		if errors.Is(err, io.EOF) {
			err = errNoAnswer
		}
		return nil, true, fail(err)
	}
	if trace != nil && trace.GotFirstResponseByte != nil {
		trace.GotFirstResponseByte()
	}
	for {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, true, fail(err)
		}
		// Skip informational answers (100 Continue and the like).
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	b := &bodyReader{t: t, pc: pc, rc: resp.Body, ctx: ctx, stop: stop, keep: !resp.Close}
	if resp.Body == http.NoBody {
		b.eof.Store(true)
	}
	resp.Body = b
	return resp, true, nil
}

func noStop() bool { return true }

// writeRequest writes req with body and flushes it. The common case (a
// known length, no trailers) is written by hand; req.Write writes the
// rest.
func (pc *conn) writeRequest(req *http.Request, body io.ReadCloser) error {
	if body != nil {
		defer body.Close()
	}
	if req.ContentLength < 0 || (body != nil && req.ContentLength == 0) || len(req.TransferEncoding) > 0 || req.Trailer != nil {
		r := *req
		r.Body = body
		if err := r.Write(pc.bw); err != nil {
			return err
		}
		return pc.bw.Flush()
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	uri := req.URL.RequestURI()
	if !validHeaderValue(host) || !validHeaderValue(uri) || !validToken(req.Method) {
		return fmt.Errorf("client transport: invalid request line or host %q %q %q", req.Method, uri, host)
	}
	for k, vs := range req.Header {
		if !validToken(k) {
			return fmt.Errorf("client transport: invalid header name %q", k)
		}
		for _, v := range vs {
			if !validHeaderValue(v) {
				return fmt.Errorf("client transport: invalid value of header %s", k)
			}
		}
	}
	w := pc.bw
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	w.WriteString(method)
	w.WriteByte(' ')
	w.WriteString(uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	if _, ok := req.Header["User-Agent"]; !ok {
		w.WriteString("User-Agent: " + userAgent + "\r\n")
	}
	if req.Close {
		w.WriteString("Connection: close\r\n")
	}
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		for _, v := range vs {
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	if n := req.ContentLength; n > 0 || method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		var num [20]byte
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(num[:0], n, 10))
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
	if body != nil {
		n, err := io.CopyN(w, body, req.ContentLength)
		if err != nil {
			return fmt.Errorf("client transport: request body: %d of %d bytes: %w", n, req.ContentLength, err)
		}
	}
	// bufio.Writer keeps its first error: Flush reports any above.
	return w.Flush()
}

// validToken reports whether s is an HTTP token (a method, a header name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == ':' || c == '(' || c == ')' || c == '<' || c == '>' || c == '@' ||
			c == ',' || c == ';' || c == '\\' || c == '"' || c == '/' || c == '[' || c == ']' || c == '?' ||
			c == '=' || c == '{' || c == '}' {
			return false
		}
	}
	return true
}

// validHeaderValue reports whether s holds no control characters (which
// could end the line and inject headers).
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// bodyReader is an answer's body: once read to the end and closed, its
// connection goes back to the pool. It is for one goroutine.
type bodyReader struct {
	t    *transport
	pc   *conn
	rc   io.ReadCloser
	ctx  context.Context
	stop func() bool // stops the cancellation hook; false if it ran
	keep bool        // the server keeps the connection open
	eof  atomic.Bool
	done atomic.Bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.eof.Store(true)
	case err != nil:
		err = ctxError(b.ctx, err)
	}
	return n, err
}

func (b *bodyReader) Close() error {
	if b.done.Swap(true) {
		return nil
	}
	// stop before anything else: a hook that ran (or runs) may have set
	// a past deadline, and the connection is then not reused.
	stopped := b.stop()
	if !b.eof.Load() || !b.keep || !stopped {
		// Not rc.Close: net/http's body would read the rest first.
		b.pc.close()
		return nil
	}
	_ = b.rc.Close() // at EOF: reads nothing
	b.t.put(b.pc)
	return nil
}
