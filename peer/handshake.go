package peer

// Every connection to the internal port starts the same way:
//
//  1. With a cluster key (Config.Security), a TLS 1.3 handshake in which both
//     sides prove they hold the key; without one, nothing.
//  2. One selector byte: Raft, multiplexed RPC, or a stream (a partition copy).
//  3. A hello: protocol version, cluster name and node ID of the dialer. The
//     server answers with its own cluster name and node ID, or a refusal.
//
// Both sides refuse a peer of another cluster name, and both log why.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Selector bytes: what a connection carries after the handshake.
const (
	selRaft   byte = 'R'
	selRPC    byte = 'C'
	selStream byte = 'S'
)

// protoVersion is the hello's protocol version.
const protoVersion = 2

// tlsRecordHandshake is the first byte of a TLS ClientHello.
const tlsRecordHandshake = 0x16

// Hello reply statuses.
const (
	helloOK             byte = 0
	helloWrongCluster   byte = 1
	helloUnsupported    byte = 2
	maxHelloStringBytes      = 256
)

// DefaultHandshakeTimeout bounds a connection's handshake, so a peer that
// connects and says nothing holds nothing for long.
const DefaultHandshakeTimeout = 5 * time.Second

// Security wraps internal connections in mutually authenticated TLS. The
// configurations are read at every handshake, so a key rotation applies to
// the next connection.
type Security interface {
	ServerTLS() *tls.Config
	ClientTLS() *tls.Config
}

// Config is what both ends of the internal channel need.
type Config struct {
	// Self is this node's ID (the harness of a test may use any name).
	Self string
	// ClusterName must match the peer's, or the connection is refused.
	ClusterName string
	// Security, when set, makes every connection TLS rooted in the
	// cluster key; nil means plaintext (a cluster on loopback only).
	Security Security
	Logger   *slog.Logger
	// HandshakeTimeout bounds the handshake of one connection
	// (DefaultHandshakeTimeout if zero).
	HandshakeTimeout time.Duration
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.Default()
	}
	return c.Logger
}

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

// RefusedError is a handshake the other side (or this side) refused: a
// misconfiguration, not a network failure.
type RefusedError struct {
	Addr   string
	Reason string
}

func (e *RefusedError) Error() string {
	return "internal connection to " + e.Addr + " refused: " + e.Reason
}

func appendHello(b []byte, sel byte, cluster, node string) []byte {
	b = append(b, sel)
	b = binary.AppendUvarint(b, protoVersion)
	b = appendString(b, cluster)
	return appendString(b, node)
}

func readString(r *bufio.Reader) (string, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return "", err
	}
	if n > maxHelloStringBytes {
		return "", fmt.Errorf("hello field of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// dial opens a connection of kind sel to addr and runs the handshake. The
// returned reader must be used for reading: it may hold buffered bytes.
func (c *Config) dial(ctx context.Context, addr string, sel byte) (net.Conn, *bufio.Reader, error) {
	ctx, cancel := context.WithTimeout(ctx, c.handshakeTimeout())
	defer cancel()
	raw, err := (&net.Dialer{KeepAlive: 15 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	nc := raw
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if c.Security != nil {
		tc := tls.Client(raw, c.Security.ClientTLS())
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			if ctx.Err() != nil || isNetTimeout(err) {
				return nil, nil, err
			}
			return nil, nil, &RefusedError{Addr: addr, Reason: fmt.Sprintf("TLS handshake failed (%v): the peer does not hold this cluster's CLUSTER_KEY, or has none", err)}
		}
		nc = tc
	}
	if _, err := nc.Write(appendHello(nil, sel, c.ClusterName, c.Self)); err != nil {
		nc.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	status, err := br.ReadByte()
	if err != nil {
		nc.Close()
		if c.Security == nil && !isNetTimeout(err) {
			// A keyed server closes a plaintext connection at once.
			return nil, nil, &RefusedError{Addr: addr, Reason: fmt.Sprintf("closed during the handshake (%v): the peer may require TLS (it has a CLUSTER_KEY and this node has none)", err)}
		}
		return nil, nil, err
	}
	cluster, err1 := readString(br)
	node, err2 := readString(br)
	msg, err3 := readString(br)
	if err := errors.Join(err1, err2, err3); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("read hello answer from %s: %w", addr, err)
	}
	switch status {
	case helloOK:
	case helloWrongCluster:
		nc.Close()
		return nil, nil, &RefusedError{Addr: addr, Reason: fmt.Sprintf("%s belongs to cluster %q, this node to cluster %q (CLUSTER_NAME)", node, cluster, c.ClusterName)}
	default:
		nc.Close()
		return nil, nil, &RefusedError{Addr: addr, Reason: msg}
	}
	_ = nc.SetDeadline(time.Time{})
	return nc, br, nil
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bufferedConn reads through a bufio.Reader that may hold bytes already
// read from the connection.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// accepted is a connection that passed the server side of the handshake.
type accepted struct {
	nc   net.Conn
	br   *bufio.Reader
	sel  byte
	node string // the dialer's node ID, as it claims it
}

// serverHandshake runs the server side of the handshake on raw. It logs
// and closes refused connections itself.
func (l *Listener) serverHandshake(raw net.Conn) (accepted, bool) {
	remote := raw.RemoteAddr().String()
	_ = raw.SetDeadline(time.Now().Add(l.cfg.handshakeTimeout()))
	br := bufio.NewReaderSize(raw, 64<<10)
	first, err := br.Peek(1)
	if err != nil {
		raw.Close()
		return accepted{}, false
	}
	var nc net.Conn = &bufferedConn{Conn: raw, r: br}
	switch {
	case l.cfg.Security != nil && first[0] != tlsRecordHandshake:
		l.refused(remote, "it did not start TLS: it has no CLUSTER_KEY, and this node requires one")
		raw.Close()
		return accepted{}, false
	case l.cfg.Security == nil && first[0] == tlsRecordHandshake:
		l.refused(remote, "it started TLS: it has a CLUSTER_KEY, and this node runs without one")
		raw.Close()
		return accepted{}, false
	case l.cfg.Security != nil:
		tc := tls.Server(nc, l.cfg.Security.ServerTLS())
		if err := tc.Handshake(); err != nil {
			if !isNetTimeout(err) && !errors.Is(err, io.EOF) {
				l.refused(remote, fmt.Sprintf("TLS handshake failed (%v): it does not hold this cluster's CLUSTER_KEY", err))
			}
			raw.Close()
			return accepted{}, false
		}
		nc = tc
		br = bufio.NewReaderSize(tc, 64<<10)
	}
	sel, err := br.ReadByte()
	if err != nil {
		nc.Close()
		return accepted{}, false
	}
	version, err := binary.ReadUvarint(br)
	if err != nil {
		nc.Close()
		return accepted{}, false
	}
	cluster, err1 := readString(br)
	node, err2 := readString(br)
	if err1 != nil || err2 != nil {
		nc.Close()
		return accepted{}, false
	}
	reply := func(status byte, msg string) error {
		b := []byte{status}
		b = appendString(b, l.cfg.ClusterName)
		b = appendString(b, l.cfg.Self)
		b = appendString(b, msg)
		_, err := nc.Write(b)
		return err
	}
	switch {
	case cluster != l.cfg.ClusterName:
		l.refused(remote, fmt.Sprintf("node %q belongs to cluster %q, this node to cluster %q (CLUSTER_NAME)", node, cluster, l.cfg.ClusterName))
		_ = reply(helloWrongCluster, "")
		nc.Close()
		return accepted{}, false
	case version != protoVersion || (sel != selRaft && sel != selRPC && sel != selStream):
		l.refused(remote, fmt.Sprintf("node %q speaks protocol %d with selector %q; this node speaks %d", node, version, sel, protoVersion))
		_ = reply(helloUnsupported, fmt.Sprintf("unsupported protocol %d or selector %q", version, sel))
		nc.Close()
		return accepted{}, false
	}
	if err := reply(helloOK, ""); err != nil {
		nc.Close()
		return accepted{}, false
	}
	_ = nc.SetDeadline(time.Time{})
	return accepted{nc: nc, br: br, sel: sel, node: node}, true
}

// refusalLog logs each refusing peer's reason at most once a minute, so a
// stranger that keeps retrying cannot flood the log.
type refusalLog struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (r *refusalLog) allow(key string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[string]time.Time{}
	}
	if t, ok := r.last[key]; ok && now.Sub(t) < time.Minute {
		return false
	}
	if len(r.last) > 1024 {
		r.last = map[string]time.Time{}
	}
	r.last[key] = now
	return true
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
