package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// Watch stream settings.
const (
	// maxSSELine bounds one line of a stream (a 1 MiB value, escaped).
	maxSSELine = 8 << 20
	// minIdle is the least time a stream may stay silent before the
	// watcher takes it for dead (a paused or cut-off node sends nothing,
	// not even an error); it is at least three progress intervals.
	minIdle = 15 * time.Second
	// defaultProgress is the server's progress interval.
	defaultProgress = 5 * time.Second
)

// Watcher follows a watch. Next is for one goroutine at a time.
type Watcher struct {
	c      *Client
	o      WatchOptions
	events chan watchItem
	stop   context.CancelFunc
	done   chan struct{}
	// node is the address of the stream being read.
	node atomic.Value

	mu sync.Mutex
	// token is the position after the last event read from a stream
	// (where a new stream resumes); delivered is the position after the
	// last event Next returned.
	token     string
	delivered string
	final     error // once set, every Next returns it
}

// watchItem is one event the stream loop read, or its final error.
type watchItem struct {
	ev  Event
	err error
}

// Watch opens a watch (GET /kv/watch) of a key, a prefix or every key,
// from o.Since. It returns once the first node accepted the watch, so a
// bad token or a missing permission is an error here.
func (c *Client) Watch(ctx context.Context, o WatchOptions) (*Watcher, error) {
	if o.Key != "" && o.Prefix != "" {
		return nil, errors.New("client: watch a key or a prefix, not both")
	}
	wctx, stop := context.WithCancel(c.ctx)
	w := &Watcher{c: c, o: o, events: make(chan watchItem), stop: stop, done: make(chan struct{})}
	if o.Since != "now" {
		w.token, w.delivered = o.Since, o.Since
	}
	s, err := w.connect(ctx, wctx, "", true)
	if err != nil {
		stop()
		return nil, err
	}
	w.node.Store(s.addr)
	go w.loop(wctx, s)
	return w, nil
}

// stream is one open event stream.
type stream struct {
	addr   string
	body   io.ReadCloser
	br     *bufio.Reader
	cancel context.CancelFunc
}

// connect opens a stream from token (w.o.Since on the first connect),
// retrying retryable failures until ctx ends; avoid is a node that just
// failed.
func (w *Watcher) connect(ctx, wctx context.Context, avoid string, first bool) (*stream, error) {
	q := url.Values{}
	switch {
	case w.o.Key != "":
		q.Set("key", w.o.Key)
	default:
		q.Set("prefix", w.o.Prefix)
	}
	if w.o.Progress > 0 {
		q.Set("progress", w.o.Progress.String())
	}
	if first && w.o.Since != "" {
		q.Set("since", w.o.Since)
	}
	window := backoffStart
	for {
		r := &request{method: http.MethodGet, path: "/kv/watch", query: q, header: http.Header{"Accept": {"text/event-stream"}}}
		if !first || w.o.Since == "" {
			if tok := w.resumeToken(); tok != "" {
				r.header.Set("Last-Event-ID", tok)
			}
		}
		addr := w.c.pick(r, avoid)
		s, err := w.open(wctx, addr, r)
		if err == nil {
			return s, nil
		}
		var e *Error
		if !errors.As(err, &e) || !(e.Code == "unavailable" || e.Status >= 500 || e.Status == 0) {
			return nil, err
		}
		avoid = addr
		w.c.maybeRefresh(ctx)
		d := time.Duration(rand.Int64N(int64(window) + 1))
		window = min(2*window, backoffCap)
		select {
		case <-ctx.Done():
			return nil, err
		case <-wctx.Done():
			return nil, err
		case <-time.After(d):
		}
	}
}

// resumeToken is where a new stream starts: after the last event read.
func (w *Watcher) resumeToken() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.token
}

func (w *Watcher) open(wctx context.Context, addr string, r *request) (*stream, error) {
	sctx, cancel := context.WithCancel(wctx)
	u := w.c.scheme + "://" + addr + r.path + "?" + r.query.Encode()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	w.c.header(req, r)
	// The answer's headers come at once; the body is the stream.
	hctx, hcancel := context.WithTimeout(context.Background(), w.c.cfg.RequestTimeout)
	stopTimer := context.AfterFunc(hctx, cancel)
	resp, err := w.c.hc.Do(req)
	stopTimer()
	hcancel()
	if err != nil {
		cancel()
		return nil, errorf("unavailable", addr, err, "open watch: %v", err)
	}
	w.c.noteVersion(resp.Header)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		return nil, answerError(addr, resp.StatusCode, b)
	}
	return &stream{addr: addr, body: resp.Body, br: bufio.NewReaderSize(resp.Body, 32<<10), cancel: cancel}, nil
}

func (s *stream) close() {
	s.cancel()
	s.body.Close()
}

// loop reads streams and hands their events to Next, reconnecting (to
// another node when there is one) from the last event read.
func (w *Watcher) loop(wctx context.Context, s *stream) {
	defer close(w.done)
	idle := minIdle
	if p := w.o.Progress; p > 0 {
		idle = max(idle, 3*p)
	} else {
		idle = max(idle, 3*defaultProgress)
	}
	send := func(it watchItem) bool {
		select {
		case w.events <- it:
			return true
		case <-wctx.Done():
			return false
		}
	}
	for {
		w.node.Store(s.addr)
		err := w.read(wctx, s, idle, send)
		s.close()
		if wctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrResyncRequired) || errors.Is(err, errFinal) {
			return
		}
		w.c.log.Debug("watch stream broke; resuming", "node", s.addr, "err", err)
		failed := s.addr
		s, err = w.connect(wctx, wctx, failed, false)
		if err != nil {
			if wctx.Err() == nil {
				send(watchItem{err: fmt.Errorf("watch: resume: %w", err)})
			}
			return
		}
	}
}

// errFinal ends the loop after a final error was handed to Next.
var errFinal = errors.New("watch: final error sent")

// read reads one stream's events until it breaks.
func (w *Watcher) read(wctx context.Context, s *stream, idle time.Duration, send func(watchItem) bool) error {
	timer := time.AfterFunc(idle, s.cancel)
	defer timer.Stop()
	var id, data []byte
	hasData := false
	for {
		line, err := readLine(s.br)
		if err != nil {
			return err
		}
		timer.Reset(idle)
		if len(line) == 0 {
			if !hasData {
				continue
			}
			ev, err := parseEvent(id, data)
			data, hasData = data[:0], false
			if err != nil {
				return err
			}
			switch ev.Type {
			case "cut":
				// The server ended the stream (a slow reader, an error):
				// resume from its position.
				w.setToken(ev.Token)
				return fmt.Errorf("the server cut the stream: %s", ev.Raw)
			case "resync_required":
				w.setToken(ev.Token)
				if !send(watchItem{ev: ev}) {
					return wctx.Err()
				}
				send(watchItem{err: fmt.Errorf("%w (%s)", ErrResyncRequired, ev.Raw)})
				return ErrResyncRequired
			}
			w.setToken(ev.Token)
			if !send(watchItem{ev: ev}) {
				return wctx.Err()
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "id":
			id = append(id[:0], value...)
		case "data":
			if hasData {
				data = append(data, '\n')
			}
			data = append(data, value...)
			hasData = true
		}
	}
}

// readLine reads one line without its LF or CRLF, bounded by maxSSELine.
func readLine(br *bufio.Reader) ([]byte, error) {
	b, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		long := append([]byte(nil), b...)
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(long) > maxSSELine {
				return nil, errors.New("watch: event line too long")
			}
			b, err = br.ReadSlice('\n')
			long = append(long, b...)
		}
		b = long
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	b = b[:len(b)-1]
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b, nil
}

func parseEvent(id, data []byte) (Event, error) {
	var d struct {
		Type     string `json:"type"`
		Key      string `json:"key"`
		Value    string `json:"value"`
		Revision uint64 `json:"revision"`
		Token    string `json:"token"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return Event{}, fmt.Errorf("watch: event data is not JSON: %w", err)
	}
	ev := Event{Type: d.Type, Key: d.Key, Value: d.Value, Revision: d.Revision, Token: d.Token,
		Raw: json.RawMessage(append([]byte(nil), data...))}
	if ev.Type != "resync_required" && len(id) > 0 {
		ev.Token = string(id)
	}
	return ev, nil
}

func (w *Watcher) setToken(tok string) {
	if tok == "" {
		return
	}
	w.mu.Lock()
	w.token = tok
	w.mu.Unlock()
}

// Next blocks for the next event. The watcher resumes on its own (through
// another node when one fails) from the last token; after a
// resync_required event it returns an error wrapping ErrResyncRequired;
// any other error is final.
func (w *Watcher) Next(ctx context.Context) (Event, error) {
	w.mu.Lock()
	final := w.final
	w.mu.Unlock()
	if final != nil {
		return Event{}, final
	}
	select {
	case it := <-w.events:
		if it.err != nil {
			w.mu.Lock()
			w.final = it.err
			w.mu.Unlock()
			return Event{}, it.err
		}
		if it.ev.Token != "" {
			w.mu.Lock()
			w.delivered = it.ev.Token
			w.mu.Unlock()
		}
		return it.ev, nil
	case <-w.done:
		err := errors.New("watch: closed")
		w.mu.Lock()
		w.final = err
		w.mu.Unlock()
		return Event{}, err
	case <-ctx.Done():
		return Event{}, ctx.Err()
	}
}

// Token is the position after the last event Next returned: a new watch
// from it (WatchOptions.Since) continues where this one is.
func (w *Watcher) Token() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.delivered
}

// Close ends the watch.
func (w *Watcher) Close() error {
	w.stop()
	<-w.done
	return nil
}
