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
// connection and returns the answer's status, with do's errors. A request that fails on a
// reused connection before any answer arrived (the server closed it while
// idle) is sent once more on a new one. net/http's Transport does that
// only for idempotent requests; this retries sets too, since a set the
// server did get (it closed the connection mid-request, say while
// shutting down) writes the same value twice, which changes nothing the
// load tool counts.
func (t *HTTPTarget) h1Do(ctx context.Context, w *httpWorker, i int, method, path string) (int, error) {
	for len(w.conns) < len(t.addrs) {
		w.conns = append(w.conns, nil)
	}
	for attempt := 0; ; attempt++ {
		c := w.conns[i]
		if c == nil {
			nc, err := (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext(ctx, "tcp", t.addrs[i])
			if err != nil {
				return 0, &KindError{Kind: "transport", Err: err}
			}
			if t.tls != nil {
				cfg := t.tls.Clone()
				if cfg.ServerName == "" {
					cfg.ServerName, _, _ = net.SplitHostPort(t.addrs[i])
				}
				tc := tls.Client(nc, cfg)
				if err := tc.HandshakeContext(ctx); err != nil {
					nc.Close()
					return 0, &KindError{Kind: "tls", Err: err}
				}
				nc = tc
			}
			c = &h1Conn{nc: nc, br: bufio.NewReaderSize(nc, 4096)}
			w.conns[i] = c
		}
		status, keep, err := c.roundTrip(ctx, t.timeout, w.req, method)
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

// errBeforeAnswer marks a connection that closed before any byte of the
// answer arrived.
var errBeforeAnswer = errors.New("connection closed before an answer")

func isStaleConn(err error) bool {
	return errors.Is(err, errBeforeAnswer) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// roundTrip writes req and reads one response, draining its body so the
// connection can carry the next request; keep is false if the server
// asked to close the connection.
func (c *h1Conn) roundTrip(ctx context.Context, timeout time.Duration, req []byte, method string) (status int, keep bool, err error) {
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
	for {
		_, err := resp.Body.Read(c.drain[:])
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, false, err
		}
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
