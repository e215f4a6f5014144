package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// h1Conn is one worker's keep-alive HTTP/1.1 connection to one address.
//
// The load tool runs on the machine it measures, so its own cost per
// request is taken from the servers. net/http's Transport hands every
// request to a writer goroutine and every response to a reader goroutine
// of the connection; that is two goroutine switches per request, which on
// a busy host (and a virtualised one most of all) cost more than the
// request's syscalls. A worker has one request in flight, so it needs
// neither: it writes the request and parses the response (with
// http.ReadResponse) on its own goroutine.
type h1Conn struct {
	nc    net.Conn
	br    *bufio.Reader
	reqs  int // requests completed on this connection
	drain [512]byte
}

// h1Do sends the request in w.req (for path) to address i on the worker's
// connection and returns the answer's status, with do's errors; with
// keepBody, the answer's body is left in w.resp. A request that fails on a
// reused connection before any answer arrived (the server closed it while
// idle) is sent once more on a new one. net/http's Transport does that
// only for idempotent requests; this retries sets too, since a set the
// server did get (it closed the connection mid-request, say while
// shutting down) writes the same value twice, which changes nothing the
// load tool counts. (A conditional set the server did apply is answered,
// when sent again, with a conflict: counted as one, which is as rare as
// the case is.)
func (t *HTTPTarget) h1Do(ctx context.Context, w *httpWorker, i int, method, path string, keepBody bool) (int, error) {
	for len(w.conns) < len(t.addrs) {
		w.conns = append(w.conns, nil)
	}
	w.resp = w.resp[:0] // no answer yet, rather than the last one
	for attempt := 0; ; attempt++ {
		c := w.conns[i]
		if c == nil {
			nc, err := t.dial(ctx, i)
			if err != nil {
				return 0, err
			}
			c = &h1Conn{nc: nc, br: bufio.NewReaderSize(nc, 4096)}
			w.conns[i] = c
		}
		var body *[]byte
		if keepBody {
			body = &w.resp
		}
		status, keep, err := c.roundTrip(ctx, t.timeout, w.req, method, body)
		if err == nil && keep {
			c.reqs++
		} else {
			c.nc.Close()
			w.conns[i] = nil
		}
		switch {
		case err == nil:
			return status, statusError(status, method, t.addrs[i], path)
		case attempt == 0 && c.reqs > 0 && isStaleConn(err):
			continue
		case ctx.Err() != nil:
			return 0, ctx.Err()
		}
		return 0, &KindError{Kind: "transport", Err: fmt.Errorf("%s %s: %w", method, t.addrs[i], err)}
	}
}

// dial connects to address i, with TLS if the target speaks it; its
// errors are of kind transport or tls.
func (t *HTTPTarget) dial(ctx context.Context, i int) (net.Conn, error) {
	nc, err := (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext(ctx, "tcp", t.addrs[i])
	if err != nil {
		return nil, &KindError{Kind: "transport", Err: err}
	}
	if t.tls != nil {
		cfg := t.tls.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(t.addrs[i])
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, &KindError{Kind: "tls", Err: err}
		}
		nc = tc
	}
	return nc, nil
}

// errBeforeAnswer marks a connection that closed before any byte of the
// answer arrived.
var errBeforeAnswer = errors.New("connection closed before an answer")

func isStaleConn(err error) bool {
	return errors.Is(err, errBeforeAnswer) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// maxKeptBody bounds the answer body h1Do keeps (a batch of 500 results is
// about 50 KB); past it the rest is drained, and the truncated body then
// fails to scan, which counts as a bad answer.
const maxKeptBody = 1 << 20

// roundTrip writes req and reads one response, draining its body so the
// connection can carry the next request, into *body (reusing its array)
// if body is not nil; keep is false if the server asked to close the
// connection.
func (c *h1Conn) roundTrip(ctx context.Context, timeout time.Duration, req []byte, method string, body *[]byte) (status int, keep bool, err error) {
	if timeout > 0 {
		if err := c.nc.SetDeadline(time.Now().Add(timeout)); err != nil {
			return 0, false, err
		}
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if _, err := c.nc.Write(req); err != nil {
		return 0, false, err
	}
	if _, err := c.br.Peek(1); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, false, errBeforeAnswer
		}
		return 0, false, err
	}
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		return 0, false, err
	}
	var kept []byte
	if body != nil {
		kept = (*body)[:0]
	}
	for {
		buf := c.drain[:]
		if body != nil && len(kept) < maxKeptBody {
			if len(kept) == cap(kept) {
				kept = slices.Grow(kept, 512)
			}
			buf = kept[len(kept):cap(kept)]
		}
		n, err := resp.Body.Read(buf)
		if body != nil && len(kept) < maxKeptBody {
			kept = kept[:len(kept)+n]
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, false, err
		}
	}
	if body != nil {
		*body = kept
	}
	return resp.StatusCode, !resp.Close, nil
}

// appendRequestHead appends "METHOD TARGET HTTP/1.1" and the headers;
// extra is more header lines, each ending in CRLF; bodyLen < 0 means no
// body.
func appendRequestHead(dst []byte, method, target, addr, extra string, bodyLen int) []byte {
	dst = append(dst, method...)
	dst = append(dst, ' ')
	dst = append(dst, target...)
	dst = append(dst, " HTTP/1.1\r\n"...)
	dst = append(dst, extra...)
	dst = append(dst, "Host: "...)
	dst = append(dst, addr...)
	if bodyLen >= 0 {
		dst = append(dst, "\r\nContent-Type: application/json\r\nContent-Length: "...)
		dst = strconv.AppendInt(dst, int64(bodyLen), 10)
	}
	return append(dst, "\r\n\r\n"...)
}
