package peer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
)

// DataHandler serves the data plane's node-to-node calls (the engine).
type DataHandler interface {
	ServeForward(ctx context.Context, req ForwardReq) (ForwardResp, error)
	ServeRead(ctx context.Context, req ReadReq) (ReadResp, error)
	ServeReplicate(ctx context.Context, req ReplicateReq) error
	ServeLease(ctx context.Context, req LeaseReq) (LeaseResp, error)
	// ServeInstall replaces the local copy of a partition with the one the
	// primary streams. It checks req first and calls accept only if it
	// will take the copy: accept tells the sender to go ahead and returns
	// the stream (see ReadInstall). An error before accept refuses the
	// copy before any of it is sent.
	ServeInstall(ctx context.Context, req InstallReq, accept func() (io.Reader, error)) error
	ServeDigest(ctx context.Context) ([]Digest, error)
	// ServeLog answers from a partition's history, as its primary.
	ServeLog(ctx context.Context, req LogReq) (LogResp, error)
	// ServeScan answers a range of a partition's keys.
	ServeScan(ctx context.Context, req ScanReq) (ScanResp, error)
	// ServeCopyInfo describes this node's copy of a partition.
	ServeCopyInfo(ctx context.Context, req CopyInfoReq) (CopyInfo, error)
}

// ControlHandler serves the control plane's node-to-node calls (the
// composer, on behalf of Raft and gossip).
type ControlHandler interface {
	// ServeApply proposes an encoded consensus command; only the Raft
	// leader can, and it answers with the command's log index.
	ServeApply(ctx context.Context, command []byte) (uint64, error)
	// ServeDrain marks node as draining (with remove: leaving for good);
	// only the Raft leader can.
	ServeDrain(ctx context.Context, node string, remove bool) error
	// ServeMembers lists the gossip members, for a node that joins.
	ServeMembers(ctx context.Context) ([]Member, error)
	// ServeLeave asks this node to leave the cluster gracefully.
	ServeLeave(ctx context.Context) error
	// ServeKeyring changes or lists this node's cluster keys.
	ServeKeyring(ctx context.Context, req KeyringReq) (KeyringStatus, error)
}

// Handlers are what a node serves to its peers.
type Handlers struct {
	Data    DataHandler
	Control ControlHandler
}

// Intercept, when set on a Listener, wraps every request it serves: tests
// use it to record calls and to stall them.
type Intercept func(ctx context.Context, kind string, req any, serve func(context.Context) ([]byte, error)) ([]byte, error)

// Bounds on what the internal port accepts.
const (
	// maxHandshakes bounds connections still in their handshake: beyond
	// it, new connections are closed at once.
	maxHandshakes = 128
	// maxRequestTimeout caps the deadline a caller asks for.
	maxRequestTimeout = 2 * time.Minute
	// defaultRequestTimeout applies when a caller sends none.
	defaultRequestTimeout = 30 * time.Second
	// streamIdleTimeout bounds how long a partition copy may stall.
	streamIdleTimeout = 10 * time.Second
)

// Listener serves the internal port: it runs every connection's handshake,
// hands Raft connections to Raft (RaftLayer), and serves RPC and stream
// connections with the Handlers.
type Listener struct {
	ln       net.Listener
	cfg      Config
	handlers atomic.Pointer[Handlers]
	// Intercept is for tests; set it before the first connection.
	Intercept Intercept

	raftCh     chan net.Conn
	closed     chan struct{}
	closeOnce  sync.Once
	handshakes chan struct{}
	refusals   refusalLog

	mu       sync.Mutex
	served   map[io.Closer]struct{}
	stopped  bool // StopServing was called
	inflight sync.WaitGroup
	acceptWG sync.WaitGroup
}

// NewListener starts serving the internal port on ln. Raft connections are
// accepted at once; RPC calls are answered once SetHandlers is called
// (before that, with a retryable refusal).
func NewListener(ln net.Listener, cfg Config) *Listener {
	l := &Listener{ln: ln, cfg: cfg, raftCh: make(chan net.Conn), closed: make(chan struct{}),
		handshakes: make(chan struct{}, maxHandshakes), served: map[io.Closer]struct{}{}}
	l.acceptWG.Go(l.acceptLoop)
	return l
}

// SetHandlers sets what RPC and stream connections are served with.
func (l *Listener) SetHandlers(h Handlers) { l.handlers.Store(&h) }

// Addr is the bound address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

func (l *Listener) acceptLoop() {
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.cfg.logger().Warn("internal port: accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case l.handshakes <- struct{}{}:
		default:
			l.refused(raw.RemoteAddr().String(), fmt.Sprintf("%d connections are already in their handshake", maxHandshakes))
			raw.Close()
			continue
		}
		go func() {
			a, ok := l.serverHandshake(raw)
			<-l.handshakes
			if ok {
				l.route(a)
			}
		}()
	}
}

// refused logs, at most once a minute per peer host, why a connection was
// refused.
func (l *Listener) refused(remote, reason string) {
	if l.refusals.allow(hostOf(remote)+" "+reason, time.Now()) {
		l.cfg.logger().Warn("refused an internal connection", "from", remote, "reason", reason)
	}
}

func (l *Listener) route(a accepted) {
	switch a.sel {
	case selRaft:
		select {
		case l.raftCh <- &bufferedConn{Conn: a.nc, r: a.br}:
		case <-l.closed:
			a.nc.Close()
		}
	case selRPC:
		c := newConn(a.nc, a.nc.RemoteAddr().String())
		if !l.track(c) {
			c.close(errors.New("server closed"))
			return
		}
		defer l.untrack(c)
		l.serveRPC(c, a.br)
	case selStream:
		if !l.track(a.nc) {
			a.nc.Close()
			return
		}
		defer l.untrack(a.nc)
		l.serveStream(a.nc, a.br)
	}
}

func (l *Listener) track(c io.Closer) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	l.served[c] = struct{}{}
	return true
}

func (l *Listener) untrack(c io.Closer) {
	l.mu.Lock()
	delete(l.served, c)
	l.mu.Unlock()
}

// startRequest counts a request in flight, unless serving has stopped.
func (l *Listener) startRequest() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	l.inflight.Add(1)
	return true
}

// StopServing closes every RPC and stream connection, refuses new ones, and
// waits for the requests in flight on them (they may use the store). Raft
// connections are untouched: Raft closes its layer itself.
func (l *Listener) StopServing() {
	l.mu.Lock()
	l.stopped = true
	served := l.served
	l.served = map[io.Closer]struct{}{}
	l.mu.Unlock()
	for c := range served {
		_ = c.Close()
	}
	l.inflight.Wait()
}

// Close stops accepting connections. It may be called more than once.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.ln.Close()
		l.acceptWG.Wait()
	})
	return err
}

func requestContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	switch {
	case timeout <= 0:
		timeout = defaultRequestTimeout
	case timeout > maxRequestTimeout:
		timeout = maxRequestTimeout
	}
	return context.WithTimeout(context.Background(), timeout)
}

func (l *Listener) serveRPC(c *conn, r *bufio.Reader) {
	for {
		kind, id, timeout, payload, err := readFrame(r)
		if err != nil {
			c.close(err)
			return
		}
		if !l.startRequest() {
			c.close(errors.New("server closed"))
			return
		}
		go func() {
			defer l.inflight.Done()
			ctx, cancel := requestContext(timeout)
			defer cancel()
			body, err := l.dispatch(ctx, kind, payload)
			c.enqueue(kindResponse, id, 0, encodeResponse(make([]byte, 0, 16+len(body)), body, err))
		}()
	}
}

// dispatch decodes and serves one request.
func (l *Listener) dispatch(ctx context.Context, kind byte, payload []byte) ([]byte, error) {
	h := l.handlers.Load()
	if h == nil {
		return nil, errcode.New(errcode.NotReady, "node %s is still starting", l.cfg.Self)
	}
	var serve func(context.Context) ([]byte, error)
	var decoded any
	var err error
	switch kind {
	case kindForward:
		var req ForwardReq
		if req, err = decodeForward(payload); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) {
				resp, err := h.Data.ServeForward(ctx, req)
				return encodeForwardResp(resp), err
			}
		}
	case kindRead:
		var req ReadReq
		if req, err = decodeRead(payload); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) {
				resp, err := h.Data.ServeRead(ctx, req)
				return encodeReadResp(resp), err
			}
		}
	case kindReplicate:
		var req ReplicateReq
		if req, err = decodeReplicate(payload); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) { return nil, h.Data.ServeReplicate(ctx, req) }
		}
	case kindLease:
		var req LeaseReq
		if err = decodeJSON(payload, &req); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) {
				resp, err := h.Data.ServeLease(ctx, req)
				return encodeJSON(resp), err
			}
		}
	case kindLog:
		var req LogReq
		if req, err = decodeLogReq(payload); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) {
				resp, err := h.Data.ServeLog(ctx, req)
				return encodeLogResp(resp), err
			}
		}
	case kindScan:
		var req ScanReq
		if req, err = decodeScanReq(payload); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) {
				resp, err := h.Data.ServeScan(ctx, req)
				return encodeScanResp(resp), err
			}
		}
	case kindCopyInfo:
		var req CopyInfoReq
		if err = decodeJSON(payload, &req); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) {
				resp, err := h.Data.ServeCopyInfo(ctx, req)
				return encodeJSON(resp), err
			}
		}
	case kindDigest:
		serve = func(ctx context.Context) ([]byte, error) {
			ds, err := h.Data.ServeDigest(ctx)
			return encodeJSON(ds), err
		}
	case kindApply:
		var req applyReq
		if err = decodeJSON(payload, &req); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) {
				idx, err := h.Control.ServeApply(ctx, req.Command)
				return encodeJSON(applyResp{Index: idx}), err
			}
		}
	case kindDrain:
		var req drainReq
		if err = decodeJSON(payload, &req); err == nil {
			decoded = req
			serve = func(ctx context.Context) ([]byte, error) { return nil, h.Control.ServeDrain(ctx, req.Node, req.Remove) }
		}
	case kindMembers:
		serve = func(ctx context.Context) ([]byte, error) {
			ms, err := h.Control.ServeMembers(ctx)
			return encodeJSON(ms), err
		}
	case kindLeave:
		serve = func(ctx context.Context) ([]byte, error) { return nil, h.Control.ServeLeave(ctx) }
	case kindKeyring:
		var req KeyringReq
		if err = decodeJSON(payload, &req); err == nil {
			// The request's key is a secret: interceptors see only the op.
			decoded = KeyringReq{Op: req.Op}
			serve = func(ctx context.Context) ([]byte, error) {
				st, err := h.Control.ServeKeyring(ctx, req)
				return encodeJSON(st), err
			}
		}
	default:
		return nil, errcode.New(errcode.BadRequest, "unknown request kind %d", kind)
	}
	if err != nil {
		return nil, errcode.New(errcode.BadRequest, "%s: %v", KindName(kind), err)
	}
	if l.Intercept != nil {
		return l.Intercept(ctx, KindName(kind), decoded, serve)
	}
	return serve(ctx)
}

// serveStream serves one partition copy: a kindInstall frame with the
// InstallReq, a go-ahead (or refusal) frame, the stream itself, and a final
// response frame.
func (l *Listener) serveStream(nc net.Conn, r *bufio.Reader) {
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(streamIdleTimeout))
	kind, id, timeout, payload, err := readFrame(r)
	if err != nil || kind != kindInstall {
		return
	}
	if !l.startRequest() {
		return
	}
	defer l.inflight.Done()
	ctx, cancel := requestContext(timeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Now()) })
	defer stop()
	respond := func(err error) error {
		_ = nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		resp := encodeResponse(nil, nil, err)
		_, werr := nc.Write(append(appendFrameHeader(nil, kindResponse, id, 0, len(resp)), resp...))
		return werr
	}
	accepted := false
	accept := func() (io.Reader, error) {
		if err := respond(nil); err != nil {
			return nil, errcode.New(errcode.Unavailable, "tell the sender to go ahead: %v", err)
		}
		accepted = true
		return &idleReader{nc: nc, r: r, idle: streamIdleTimeout}, nil
	}
	var req InstallReq
	if err = decodeJSON(payload, &req); err != nil {
		err = errcode.New(errcode.BadRequest, "install: %v", err)
	} else if h := l.handlers.Load(); h == nil {
		err = errcode.New(errcode.NotReady, "node %s is still starting", l.cfg.Self)
	} else {
		serve := func(ctx context.Context) ([]byte, error) { return nil, h.Data.ServeInstall(ctx, req, accept) }
		if l.Intercept != nil {
			_, err = l.Intercept(ctx, KindName(kind), req, serve)
		} else {
			_, err = serve(ctx)
		}
	}
	if !accepted && err == nil {
		err = errcode.New(errcode.Internal, "install finished without taking the copy")
	}
	_ = respond(err)
}

// idleReader reads a stream that must keep making progress: every read
// extends the deadline by idle, so a sender that stalls is cut off.
type idleReader struct {
	nc   net.Conn
	r    *bufio.Reader
	idle time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	_ = r.nc.SetReadDeadline(time.Now().Add(r.idle))
	return r.r.Read(p)
}

// RaftLayer is the Raft side of the internal port: Raft accepts the
// connections whose dialer asked for Raft, and dials with the same
// handshake.
type RaftLayer struct{ l *Listener }

// Raft returns the Raft side of the port.
func (l *Listener) Raft() *RaftLayer { return &RaftLayer{l: l} }

// Accept waits for the next Raft connection.
func (r *RaftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-r.l.raftCh:
		return c, nil
	case <-r.l.closed:
		return nil, net.ErrClosed
	}
}

// Close closes the whole port: Raft closes its layer last, on shutdown.
func (r *RaftLayer) Close() error { return r.l.Close() }

// Dial opens a Raft connection to addr.
func (r *RaftLayer) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	nc, br, err := r.l.cfg.dial(ctx, addr, selRaft)
	if err != nil {
		return nil, err
	}
	return &bufferedConn{Conn: nc, r: br}, nil
}
