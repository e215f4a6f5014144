package peer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
)

// Client makes this node's calls to its peers: one multiplexed connection
// per peer address, dialed on first use and again after it breaks, and a
// short circuit to the local Handlers for calls addressed to this node.
type Client struct {
	cfg     Config
	resolve func(node string) (addr string, ok bool)
	local   atomic.Pointer[Handlers]

	mu     sync.Mutex
	peers  map[string]*peerConn
	closed bool

	refusals refusalLog
}

// peerConn serialises dialing one address.
type peerConn struct {
	mu   sync.Mutex
	conn *conn
}

// NewClient returns a client that finds a node's internal address with
// resolve. A resolve that returns its argument lets callers address nodes
// by internal address (a test harness does).
func NewClient(cfg Config, resolve func(node string) (addr string, ok bool)) *Client {
	return &Client{cfg: cfg, resolve: resolve, peers: map[string]*peerConn{}}
}

// ByAddress is a resolver for NewClient under which a node is named by its
// internal address.
func ByAddress(node string) (string, bool) { return node, true }

// SetLocal sets the handlers that serve calls addressed to this node
// (Config.Self) without touching the network.
func (c *Client) SetLocal(h Handlers) { c.local.Store(&h) }

func (c *Client) localHandlers(node string) *Handlers {
	if node != c.cfg.Self {
		return nil
	}
	return c.local.Load()
}

// Close closes every connection; calls after it fail as unavailable.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	peers := c.peers
	c.peers = map[string]*peerConn{}
	c.mu.Unlock()
	for _, p := range peers {
		p.mu.Lock()
		if p.conn != nil {
			p.conn.close(errConnClosed)
		}
		p.mu.Unlock()
	}
}

// dialErr turns a failure to connect into an error saying nothing was
// sent, and logs a refused handshake (at most once a minute per peer).
func (c *Client) dialErr(addr string, err error) error {
	var re *RefusedError
	if errors.As(err, &re) && c.refusals.allow(addr+" "+re.Reason, time.Now()) {
		c.cfg.logger().Warn("a peer refused this node's internal connection", "peer", addr, "reason", re.Reason)
	}
	return errcode.New(errcode.Unavailable, "cannot reach %s: %v", addr, err)
}

func (c *Client) conn(ctx context.Context, addr string) (*conn, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errcode.New(errcode.Unavailable, "node is shutting down")
	}
	p, ok := c.peers[addr]
	if !ok {
		p = &peerConn{}
		c.peers[addr] = p
	}
	c.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil && !p.conn.closed() {
		return p.conn, nil
	}
	nc, br, err := c.cfg.dial(ctx, addr, selRPC)
	if err != nil {
		return nil, c.dialErr(addr, err)
	}
	p.conn = newConn(nc, addr)
	go p.conn.readResponses(br)
	return p.conn, nil
}

// callAddr runs one request against addr, redialing once if the pooled
// connection turns out to be closed before anything was sent on it.
func (c *Client) callAddr(ctx context.Context, addr string, kind byte, payload []byte) ([]byte, error) {
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

func (c *Client) addr(node string) (string, error) {
	addr, ok := c.resolve(node)
	if !ok || addr == "" {
		return "", errcode.New(errcode.Unavailable, "no internal address known for %s", node)
	}
	return addr, nil
}

func (c *Client) call(ctx context.Context, node string, kind byte, payload []byte) ([]byte, error) {
	addr, err := c.addr(node)
	if err != nil {
		return nil, err
	}
	return c.callAddr(ctx, addr, kind, payload)
}

// Forward sends client writes to node, the partition's primary.
func (c *Client) Forward(ctx context.Context, node string, req ForwardReq) (ForwardResp, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Data.ServeForward(ctx, req)
	}
	b, err := c.call(ctx, node, kindForward, encodeForward(req))
	if err != nil {
		return ForwardResp{}, err
	}
	resp, err := decodeForwardResp(b)
	if err == nil && len(resp.Results) != len(req.Ops) {
		err = fmt.Errorf("%w: %d results for %d ops", errMalformed, len(resp.Results), len(req.Ops))
	}
	if err != nil {
		// The write may have been applied; only its answer is lost.
		return ForwardResp{}, errcode.New(errcode.OutcomeUnknown, "answer from %s: %v", node, err)
	}
	return resp, nil
}

// Read sends a client read to node.
func (c *Client) Read(ctx context.Context, node string, req ReadReq) (ReadResp, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Data.ServeRead(ctx, req)
	}
	b, err := c.call(ctx, node, kindRead, encodeRead(req))
	if err != nil {
		return ReadResp{}, err
	}
	return decodeReadResp(b)
}

// Replicate sends a replication round to a replica.
func (c *Client) Replicate(ctx context.Context, node string, req ReplicateReq) error {
	if h := c.localHandlers(node); h != nil {
		return h.Data.ServeReplicate(ctx, req)
	}
	_, err := c.call(ctx, node, kindReplicate, encodeReplicate(req))
	return err
}

// Lease asks a replica for read leases.
func (c *Client) Lease(ctx context.Context, node string, req LeaseReq) (LeaseResp, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Data.ServeLease(ctx, req)
	}
	var out LeaseResp
	b, err := c.call(ctx, node, kindLease, encodeJSON(req))
	if err == nil {
		err = decodeJSON(b, &out)
	}
	return out, err
}

// Digest asks node for the digests of its partition copies.
func (c *Client) Digest(ctx context.Context, node string) ([]Digest, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Data.ServeDigest(ctx)
	}
	var out []Digest
	b, err := c.call(ctx, node, kindDigest, nil)
	if err == nil {
		err = decodeJSON(b, &out)
	}
	return out, err
}

// Apply asks node, the Raft leader, to propose an encoded consensus command
// and returns its log index.
func (c *Client) Apply(ctx context.Context, node string, command []byte) (uint64, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Control.ServeApply(ctx, command)
	}
	var out applyResp
	b, err := c.call(ctx, node, kindApply, encodeJSON(applyReq{Command: command}))
	if err == nil {
		err = decodeJSON(b, &out)
	}
	return out.Index, err
}

// Drain asks node, the Raft leader, to mark target as draining; with
// remove, as leaving for good (its Raft vote goes once it has left).
func (c *Client) Drain(ctx context.Context, node, target string, remove bool) error {
	if h := c.localHandlers(node); h != nil {
		return h.Control.ServeDrain(ctx, target, remove)
	}
	_, err := c.call(ctx, node, kindDrain, encodeJSON(drainReq{Node: target, Remove: remove}))
	return err
}

// Leave asks node to leave the cluster gracefully (it drains and stops).
func (c *Client) Leave(ctx context.Context, node string) error {
	if h := c.localHandlers(node); h != nil {
		return h.Control.ServeLeave(ctx)
	}
	_, err := c.call(ctx, node, kindLeave, nil)
	return err
}

// Keyring changes or lists node's cluster keys.
func (c *Client) Keyring(ctx context.Context, node string, req KeyringReq) (KeyringStatus, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Control.ServeKeyring(ctx, req)
	}
	var out KeyringStatus
	b, err := c.call(ctx, node, kindKeyring, encodeJSON(req))
	if err == nil {
		err = decodeJSON(b, &out)
	}
	return out, err
}

// MembersAt asks the node at internal address addr for the gossip members
// it knows, for a node that joins through it.
func (c *Client) MembersAt(ctx context.Context, addr string) ([]Member, error) {
	var out []Member
	b, err := c.callAddr(ctx, addr, kindMembers, nil)
	if err == nil {
		err = decodeJSON(b, &out)
	}
	return out, err
}

// Install streams a partition copy to node: send writes the stream (see
// InstallWriter) and must return once it has written all of it.
func (c *Client) Install(ctx context.Context, node string, req InstallReq, send func(io.Writer) error) error {
	if node == c.cfg.Self {
		return errcode.New(errcode.BadRequest, "a node does not install a partition on itself")
	}
	addr, err := c.addr(node)
	if err != nil {
		return err
	}
	nc, br, err := c.cfg.dial(ctx, addr, selStream)
	if err != nil {
		return c.dialErr(addr, err)
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	defer stop()
	timeout := time.Minute
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	head := encodeJSON(req)
	if _, err := nc.Write(append(appendFrameHeader(nil, kindInstall, 1, timeout, len(head)), head...)); err != nil {
		return errcode.New(errcode.Unavailable, "send partition %d to %s: %v", req.Partition, node, err)
	}
	// The replica answers at once: go ahead, or why it will not take it.
	if err := readInstallAnswer(br); err != nil {
		var e *errcode.Error
		if !errors.As(err, &e) {
			return errcode.New(errcode.Unavailable, "copy of partition %d to %s: %v", req.Partition, node, err)
		}
		return err
	}
	bw := bufio.NewWriterSize(nc, 64<<10)
	if err := send(bw); err != nil {
		return fmt.Errorf("send partition %d to %s: %w", req.Partition, node, err)
	}
	if err := bw.Flush(); err != nil {
		return errcode.New(errcode.OutcomeUnknown, "send partition %d to %s: %v", req.Partition, node, err)
	}
	// The end of the stream is also the end of what this side sends.
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	if err := readInstallAnswer(br); err != nil {
		if errcode.Of(err) == errcode.Internal {
			return errcode.New(errcode.OutcomeUnknown, "copy of partition %d to %s: %v", req.Partition, node, err)
		}
		return err
	}
	return nil
}

// readInstallAnswer reads one response frame of a stream connection.
func readInstallAnswer(br *bufio.Reader) error {
	kind, _, _, payload, err := readFrame(br)
	if err != nil {
		return fmt.Errorf("read the answer: %w", err)
	}
	if kind != kindResponse {
		return fmt.Errorf("answered with frame kind %d", kind)
	}
	_, err = decodeResponse(payload)
	return err
}
