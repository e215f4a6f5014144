package engine

// Node-to-node calls on the hot path (forwarded writes and reads, and
// replication) travel over persistent, multiplexed connections in a compact
// binary framing instead of one JSON-over-HTTP request each. A connection
// starts as an HTTP request on the KV port that is upgraded (as WebSocket
// does), so the cluster needs no extra port and the same address works in
// containers and network namespaces.
//
// Each frame is
//
//	length   uint32, big endian: bytes after this field
//	kind     byte:   a request kind, or kindResponse
//	id       uint64: chosen by the caller, echoed in the response
//	timeout  uint32: milliseconds the caller will wait (requests only)
//	payload
//
// Requests on one connection are served concurrently and answered in any
// order. Writers coalesce: every frame queued while a write is in progress
// goes out in the next write, so a loaded connection costs one syscall for
// many calls.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
)

const (
	rpcPath     = "/rpc"
	rpcProtocol = "clusterkit-rpc/1"

	kindResponse  byte = 0
	kindForward   byte = 1
	kindRead      byte = 2
	kindReplicate byte = 3

	frameHeader = 4 + 1 + 8 + 4
	// maxFrame bounds one frame: a replication batch is cut at
	// maxBatchBytes, and one value can be MaxValueBytes.
	maxFrame = maxBatchBytes + MaxValueBytes + 1<<20

	rpcWriteTimeout = 5 * time.Second
)

// rpcPaths names each kind like the HTTP route it replaces, for logs and
// tests.
var rpcPaths = [...]string{kindForward: "/write", kindRead: "/read", kindReplicate: "/replicate"}

// errConnClosed is returned for calls that were never sent.
var errConnClosed = errors.New("connection closed")

// ---------------------------------------------------------------------------
// encoding

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendOp(b []byte, op Op) []byte {
	var flags byte
	if op.Delete {
		flags = 1
	}
	b = append(b, flags)
	b = appendString(b, op.Key)
	return appendString(b, op.Value)
}

// decoder reads what the append functions wrote; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errors.New("malformed frame")
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) op() Op {
	flags := d.byte()
	return Op{Delete: flags&1 != 0, Key: d.string(), Value: d.string()}
}

func (d *decoder) int() int {
	v := d.uvarint()
	if v > 1<<31 {
		d.fail()
	}
	return int(v)
}

func encodeForward(r forwardReq) []byte {
	b := make([]byte, 0, 32+len(r.Op.Key)+len(r.Op.Value))
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	return appendOp(b, r.Op)
}

func decodeForward(b []byte) (forwardReq, error) {
	d := decoder{b: b}
	r := forwardReq{Partition: d.int(), Epoch: d.uvarint(), Op: d.op()}
	return r, d.err
}

type readReq struct {
	Partition int
	Epoch     uint64
	Stale     bool
	Key       string
}

func encodeRead(r readReq) []byte {
	b := make([]byte, 0, 24+len(r.Key))
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	stale := byte(0)
	if r.Stale {
		stale = 1
	}
	b = append(b, stale)
	return appendString(b, r.Key)
}

func decodeRead(b []byte) (readReq, error) {
	d := decoder{b: b}
	r := readReq{Partition: d.int(), Epoch: d.uvarint(), Stale: d.byte() == 1, Key: d.string()}
	return r, d.err
}

func encodeReplicate(r replicateReq) []byte {
	size := 64 + len(r.From)
	for _, op := range r.Ops {
		size += 12 + len(op.Key) + len(op.Value)
	}
	b := make([]byte, 0, size)
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	b = binary.AppendUvarint(b, r.Seq)
	b = binary.AppendUvarint(b, r.Version)
	b = appendString(b, r.From)
	b = binary.AppendUvarint(b, uint64(len(r.Ops)))
	for _, op := range r.Ops {
		b = appendOp(b, op)
	}
	if r.Keys != nil {
		// Trailing and optional: a receiver that predates it ignores it.
		b = binary.AppendUvarint(b, *r.Keys)
	}
	return b
}

func decodeReplicate(b []byte) (replicateReq, error) {
	d := decoder{b: b}
	r := replicateReq{Partition: d.int(), Epoch: d.uvarint(), Seq: d.uvarint(), Version: d.uvarint(), From: d.string()}
	n := d.uvarint()
	if n > uint64(len(d.b)) { // every op takes at least three bytes
		d.fail()
	}
	if d.err != nil {
		return r, d.err
	}
	r.Ops = make([]Op, 0, n)
	for range n {
		r.Ops = append(r.Ops, d.op())
	}
	if d.err == nil && len(d.b) > 0 {
		keys := d.uvarint()
		r.Keys = &keys
	}
	return r, d.err
}

// A response payload is one byte, 0 for success and 1 for an error, then
// the body, or the error's code and message.
func encodeResponse(b, body []byte, err error) []byte {
	if err == nil {
		b = append(b, 0)
		return append(b, body...)
	}
	e := errcode.As(err)
	b = append(b, 1)
	b = appendString(b, e.Code)
	return appendString(b, e.Message)
}

func decodeResponse(p []byte) ([]byte, error) {
	d := decoder{b: p}
	switch d.byte() {
	case 0:
		return d.b, nil
	case 1:
		e := &errcode.Error{Code: d.string(), Message: d.string()}
		if d.err != nil {
			return nil, d.err
		}
		return nil, e
	}
	d.fail()
	return nil, d.err
}

// ---------------------------------------------------------------------------
// connection

// rpcConn is one end of a multiplexed connection. The calling end has
// pending calls; the serving end has serve.
type rpcConn struct {
	nc   net.Conn
	addr string

	wmu   sync.Mutex
	wbuf  []byte // frames waiting for the writer
	spare []byte
	wake  chan struct{}
	dead  bool
	done  chan struct{} // closed when the connection is finished

	pmu     sync.Mutex
	pending map[uint64]chan rpcResult
	nextID  uint64

	// lastRead is when a frame last arrived (unix nanoseconds): a call
	// that times out on a connection that has been silent since the call
	// was sent closes it, so the next call redials instead of queueing
	// behind a peer that is cut off.
	lastRead atomic.Int64

	closeOnce sync.Once
	closeErr  error
}

type rpcResult struct {
	body []byte
	err  error
}

func newRPCConn(nc net.Conn, addr string) *rpcConn {
	c := &rpcConn{nc: nc, addr: addr, wake: make(chan struct{}, 1), done: make(chan struct{}),
		pending: map[uint64]chan rpcResult{}}
	c.lastRead.Store(time.Now().UnixNano())
	go c.writeLoop()
	return c
}

// enqueue appends one frame for the writer; false if the connection is
// already closed (nothing was sent).
func (c *rpcConn) enqueue(kind byte, id uint64, timeout time.Duration, payload []byte) bool {
	c.wmu.Lock()
	if c.dead {
		c.wmu.Unlock()
		return false
	}
	var hdr [frameHeader]byte
	binary.BigEndian.PutUint32(hdr[0:], uint32(frameHeader-4+len(payload)))
	hdr[4] = kind
	binary.BigEndian.PutUint64(hdr[5:], id)
	binary.BigEndian.PutUint32(hdr[13:], uint32(max(0, timeout.Milliseconds())))
	c.wbuf = append(append(c.wbuf, hdr[:]...), payload...)
	c.wmu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return true
}

func (c *rpcConn) writeLoop() {
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		c.wmu.Lock()
		buf := c.wbuf
		c.wbuf = c.spare[:0]
		c.spare = nil
		c.wmu.Unlock()
		if len(buf) == 0 {
			continue
		}
		_ = c.nc.SetWriteDeadline(time.Now().Add(rpcWriteTimeout))
		if _, err := c.nc.Write(buf); err != nil {
			c.close(fmt.Errorf("write to %s: %w", c.addr, err))
			return
		}
		c.wmu.Lock()
		if cap(buf) <= 1<<20 { // don't keep a buffer a huge batch grew
			c.spare = buf[:0]
		}
		c.wmu.Unlock()
	}
}

// close ends the connection and fails every pending call: their outcome
// is unknown, since each may have been served.
func (c *rpcConn) close(err error) {
	c.closeOnce.Do(func() {
		c.wmu.Lock()
		c.dead = true
		c.closeErr = err
		c.wmu.Unlock()
		close(c.done)
		_ = c.nc.Close()
		c.pmu.Lock()
		pending := c.pending
		c.pending = nil
		c.pmu.Unlock()
		for _, ch := range pending {
			ch <- rpcResult{err: errcode.New(errcode.OutcomeUnknown, "connection to %s lost: %v", c.addr, err)}
		}
	})
}

func (c *rpcConn) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func readFrame(r *bufio.Reader) (kind byte, id uint64, timeout time.Duration, payload []byte, err error) {
	var hdr [frameHeader]byte
	if _, err = io.ReadFull(r, hdr[:]); err != nil {
		return
	}
	n := binary.BigEndian.Uint32(hdr[0:])
	if n < frameHeader-4 || n > maxFrame {
		err = fmt.Errorf("bad frame length %d", n)
		return
	}
	kind = hdr[4]
	id = binary.BigEndian.Uint64(hdr[5:])
	timeout = time.Duration(binary.BigEndian.Uint32(hdr[13:])) * time.Millisecond
	payload = make([]byte, int(n)-(frameHeader-4))
	_, err = io.ReadFull(r, payload)
	return
}

// readResponses is the calling end's reader.
func (c *rpcConn) readResponses(r *bufio.Reader) {
	for {
		kind, id, _, payload, err := readFrame(r)
		if err != nil {
			c.close(fmt.Errorf("read from %s: %w", c.addr, err))
			return
		}
		c.lastRead.Store(time.Now().UnixNano())
		if kind != kindResponse {
			c.close(fmt.Errorf("unexpected frame kind %d from %s", kind, c.addr))
			return
		}
		body, rerr := decodeResponse(payload)
		c.pmu.Lock()
		ch, ok := c.pending[id]
		delete(c.pending, id)
		c.pmu.Unlock()
		if ok {
			ch <- rpcResult{body: body, err: rerr}
		}
	}
}

// call sends one request and waits for its answer or ctx. An error that
// guarantees nothing was sent is errcode.Unavailable; one after the request
// may have been delivered is errcode.OutcomeUnknown, unless the peer answered
// with its own error.
func (c *rpcConn) call(ctx context.Context, kind byte, payload []byte) ([]byte, error) {
	ch := make(chan rpcResult, 1)
	c.pmu.Lock()
	if c.pending == nil {
		c.pmu.Unlock()
		return nil, errConnClosed
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.pmu.Unlock()
	timeout := time.Minute
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	sent := time.Now()
	if !c.enqueue(kind, id, timeout, payload) {
		c.forget(id)
		return nil, errConnClosed
	}
	select {
	case r := <-ch:
		return r.body, r.err
	case <-ctx.Done():
		c.forget(id)
		if c.lastRead.Load() < sent.UnixNano() {
			c.close(fmt.Errorf("no answer from %s since %s", c.addr, time.Since(sent).Round(time.Millisecond)))
		}
		return nil, errcode.New(errcode.OutcomeUnknown, "no answer from %s in time: %v", c.addr, ctx.Err())
	}
}

func (c *rpcConn) forget(id uint64) {
	c.pmu.Lock()
	if c.pending != nil {
		delete(c.pending, id)
	}
	c.pmu.Unlock()
}

// ---------------------------------------------------------------------------
// calling end

// rpcClient keeps one connection per peer address.
type rpcClient struct {
	mu     sync.Mutex
	peers  map[string]*rpcPeer
	closed bool
}

// rpcPeer serialises dialing one address.
type rpcPeer struct {
	mu   sync.Mutex
	conn *rpcConn
}

func newRPCClient() *rpcClient { return &rpcClient{peers: map[string]*rpcPeer{}} }

func (c *rpcClient) close() {
	c.mu.Lock()
	c.closed = true
	peers := c.peers
	c.peers = map[string]*rpcPeer{}
	c.mu.Unlock()
	for _, p := range peers {
		p.mu.Lock()
		if p.conn != nil {
			p.conn.close(errConnClosed)
		}
		p.mu.Unlock()
	}
}

func (c *rpcClient) conn(ctx context.Context, addr string) (*rpcConn, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errcode.New(errcode.Unavailable, "node is shutting down")
	}
	p, ok := c.peers[addr]
	if !ok {
		p = &rpcPeer{}
		c.peers[addr] = p
	}
	c.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil && !p.conn.closed() {
		return p.conn, nil
	}
	conn, err := dialRPC(ctx, addr)
	if err != nil {
		return nil, errcode.New(errcode.Unavailable, "cannot reach %s: %v", addr, err)
	}
	p.conn = conn
	return conn, nil
}

// call runs one request against addr, redialing once if the pooled
// connection turns out to be closed before anything was sent on it.
func (c *rpcClient) call(ctx context.Context, addr string, kind byte, payload []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		conn, err := c.conn(ctx, addr)
		if err != nil {
			return nil, err
		}
		body, err := conn.call(ctx, kind, payload)
		if errors.Is(err, errConnClosed) {
			if attempt == 0 {
				continue
			}
			return nil, errcode.New(errcode.Unavailable, "connection to %s closed", addr)
		}
		return body, err
	}
}

func dialRPC(ctx context.Context, addr string) (*rpcConn, error) {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	nc, err := (&net.Dialer{KeepAlive: 15 * time.Second}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := dctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	req := "GET " + InternalPrefix + rpcPath + " HTTP/1.1\r\nHost: " + addr +
		"\r\nConnection: Upgrade\r\nUpgrade: " + rpcProtocol + "\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return nil, fmt.Errorf("peer refused %s: %s", rpcProtocol, resp.Status)
	}
	_ = nc.SetDeadline(time.Time{})
	c := newRPCConn(nc, addr)
	go c.readResponses(br)
	return c, nil
}

// ---------------------------------------------------------------------------
// serving end

// rpcHandler serves one decoded request.
type rpcHandler func(ctx context.Context) ([]byte, error)

// handleRPC upgrades an HTTP request to an RPC connection and serves it.
func (s *Engine) handleRPC(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != rpcProtocol {
		writeError(w, errcode.New(errcode.BadRequest, "this route needs Upgrade: %s", rpcProtocol))
		return
	}
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, errcode.New(errcode.Internal, "connection cannot be upgraded: %v", err))
		return
	}
	_ = nc.SetDeadline(time.Time{})
	if _, err := io.WriteString(nc, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+rpcProtocol+"\r\n\r\n"); err != nil {
		nc.Close()
		return
	}
	c := newRPCConn(nc, r.RemoteAddr)
	if !s.trackConn(c) {
		c.close(errors.New("server closed"))
		return
	}
	defer s.untrackConn(c)
	s.serveConn(c, brw.Reader)
}

func (s *Engine) trackConn(c *rpcConn) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.connsClosed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Engine) untrackConn(c *rpcConn) {
	s.connMu.Lock()
	delete(s.conns, c)
	s.connMu.Unlock()
}

// stopRPC ends every served RPC connection (http.Server.Shutdown does not
// know about hijacked connections) and waits for the requests in flight on
// them, which may use the store.
func (s *Engine) stopRPC() {
	s.connMu.Lock()
	s.connsClosed = true
	conns := s.conns
	s.conns = map[*rpcConn]struct{}{}
	s.connMu.Unlock()
	for c := range conns {
		c.close(errors.New("server closed"))
	}
	s.rpcWG.Wait()
}

// startRequest counts a request in flight, unless the server is stopping.
func (s *Engine) startRequest() bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.connsClosed {
		return false
	}
	s.rpcWG.Add(1)
	return true
}

func (s *Engine) serveConn(c *rpcConn, r *bufio.Reader) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for {
		kind, id, timeout, payload, err := readFrame(r)
		if err != nil {
			c.close(err)
			return
		}
		if !s.startRequest() {
			c.close(errors.New("server closed"))
			return
		}
		go func() {
			defer s.rpcWG.Done()
			rctx, rcancel := context.WithTimeout(ctx, timeout)
			defer rcancel()
			body, err := s.serveRPC(rctx, kind, payload)
			c.enqueue(kindResponse, id, 0, encodeResponse(make([]byte, 0, 16+len(body)), body, err))
		}()
	}
}

// serveRPC decodes and runs one request.
func (s *Engine) serveRPC(ctx context.Context, kind byte, payload []byte) ([]byte, error) {
	var h rpcHandler
	var decoded any
	var err error
	switch kind {
	case kindForward:
		var req forwardReq
		if req, err = decodeForward(payload); err == nil {
			decoded = req
			h = func(ctx context.Context) ([]byte, error) {
				return nil, s.primaryWrite(ctx, req.Partition, req.Epoch, req.Op)
			}
		}
	case kindRead:
		var req readReq
		if req, err = decodeRead(payload); err == nil {
			decoded = req
			h = func(context.Context) ([]byte, error) {
				epoch := req.Epoch
				if req.Stale {
					epoch = 0
				}
				v, err := s.localRead(req.Partition, epoch, req.Key, req.Stale)
				return []byte(v), err
			}
		}
	case kindReplicate:
		var req replicateReq
		if req, err = decodeReplicate(payload); err == nil {
			decoded = req
			h = func(ctx context.Context) ([]byte, error) { return nil, s.applyReplicate(ctx, req) }
		}
	default:
		return nil, errcode.New(errcode.BadRequest, "unknown request kind %d", kind)
	}
	if err != nil {
		return nil, errcode.New(errcode.BadRequest, "%v", err)
	}
	if s.intercept != nil {
		return s.intercept(ctx, rpcPaths[kind], decoded, h)
	}
	return h(ctx)
}
