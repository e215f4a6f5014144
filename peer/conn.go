package peer

// A multiplexed connection carries frames
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
)

// Request kinds. Values are part of the wire format: append only.
const (
	kindResponse  byte = 0
	kindForward   byte = 1
	kindRead      byte = 2
	kindReplicate byte = 3
	kindLease     byte = 4
	kindDigest    byte = 5
	kindApply     byte = 6
	kindDrain     byte = 7
	kindMembers   byte = 8
	kindInstall   byte = 9 // only on a stream connection
	kindLeave     byte = 10
	kindKeyring   byte = 11
	kindLog       byte = 12
	kindScan      byte = 13
	kindCopyInfo  byte = 14
)

// kindNames names each kind for logs, errors and tests.
var kindNames = [...]string{
	kindResponse: "response", kindForward: "forward", kindRead: "read", kindReplicate: "replicate",
	kindLease: "lease", kindDigest: "digest", kindApply: "apply", kindDrain: "drain",
	kindMembers: "members", kindInstall: "install", kindLeave: "leave", kindKeyring: "keyring",
	kindLog: "log", kindScan: "scan", kindCopyInfo: "copy-info",
}

// KindName returns the name of a request kind ("forward", "read", ...).
func KindName(kind byte) string {
	if int(kind) < len(kindNames) && kindNames[kind] != "" {
		return kindNames[kind]
	}
	return fmt.Sprintf("kind(%d)", kind)
}

const (
	frameHeader = 4 + 1 + 8 + 4
	// MaxFrameBytes bounds one frame. A replication round is cut well
	// below it; anything larger is refused and the connection closed.
	MaxFrameBytes = 16 << 20

	writeTimeout = 5 * time.Second
)

// errConnClosed is returned for calls that were never sent.
var errConnClosed = errors.New("connection closed")

// conn is one end of a multiplexed connection. The calling end has
// pending calls; the serving end has serve.
type conn struct {
	nc   net.Conn
	addr string

	wmu   sync.Mutex
	wbuf  []byte // frames waiting for the writer
	spare []byte
	wake  chan struct{}
	dead  bool
	done  chan struct{} // closed when the connection is finished

	pmu     sync.Mutex
	pending map[uint64]chan result
	nextID  uint64

	// lastRead is when a frame last arrived (unix nanoseconds): a call
	// that times out on a connection that has been silent since the call
	// was sent closes it, so the next call redials instead of queueing
	// behind a peer that is cut off.
	lastRead atomic.Int64

	closeOnce sync.Once
}

type result struct {
	body []byte
	err  error
}

func newConn(nc net.Conn, addr string) *conn {
	c := &conn{nc: nc, addr: addr, wake: make(chan struct{}, 1), done: make(chan struct{}),
		pending: map[uint64]chan result{}}
	c.lastRead.Store(time.Now().UnixNano())
	go c.writeLoop()
	return c
}

func appendFrameHeader(b []byte, kind byte, id uint64, timeout time.Duration, payloadLen int) []byte {
	var hdr [frameHeader]byte
	binary.BigEndian.PutUint32(hdr[0:], uint32(frameHeader-4+payloadLen))
	hdr[4] = kind
	binary.BigEndian.PutUint64(hdr[5:], id)
	binary.BigEndian.PutUint32(hdr[13:], uint32(max(0, timeout.Milliseconds())))
	return append(b, hdr[:]...)
}

// enqueue appends one frame for the writer; false if the connection is
// already closed (nothing was sent).
func (c *conn) enqueue(kind byte, id uint64, timeout time.Duration, payload []byte) bool {
	c.wmu.Lock()
	if c.dead {
		c.wmu.Unlock()
		return false
	}
	c.wbuf = append(appendFrameHeader(c.wbuf, kind, id, timeout, len(payload)), payload...)
	c.wmu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return true
}

func (c *conn) writeLoop() {
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
		_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
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
func (c *conn) close(err error) {
	c.closeOnce.Do(func() {
		c.wmu.Lock()
		c.dead = true
		c.wmu.Unlock()
		close(c.done)
		_ = c.nc.Close()
		c.pmu.Lock()
		pending := c.pending
		c.pending = nil
		c.pmu.Unlock()
		for _, ch := range pending {
			ch <- result{err: errcode.New(errcode.OutcomeUnknown, "connection to %s lost: %v", c.addr, err)}
		}
	})
}

// Close closes the connection as a server shutting down would.
func (c *conn) Close() error {
	c.close(errors.New("server closed"))
	return nil
}

func (c *conn) closed() bool {
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
	if n < frameHeader-4 || n > MaxFrameBytes {
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
func (c *conn) readResponses(r *bufio.Reader) {
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
			ch <- result{body: body, err: rerr}
		}
	}
}

// call sends one request and waits for its answer or ctx. An error that
// guarantees nothing was sent is errConnClosed; one after the request may
// have been delivered is errcode.OutcomeUnknown, unless the peer answered
// with its own error.
func (c *conn) call(ctx context.Context, kind byte, payload []byte) ([]byte, error) {
	ch := make(chan result, 1)
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

func (c *conn) forget(id uint64) {
	c.pmu.Lock()
	if c.pending != nil {
		delete(c.pending, id)
	}
	c.pmu.Unlock()
}
