package kvapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/clusterkit/clusterkit/auth"
	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/httpapi"
)

// Watch stream settings.
const (
	// DefaultProgress is how often a watch reports progress while no
	// change matches; MinProgress and MaxProgress bound ?progress=.
	DefaultProgress = 5 * time.Second
	MinProgress     = 100 * time.Millisecond
	MaxProgress     = time.Minute
	// watchBatch caps the events of one write to the stream.
	watchBatch = 256
	// watchWriteTimeout bounds one write to a watch's connection: a
	// client that reads nothing for that long is disconnected.
	watchWriteTimeout = 30 * time.Second
	// watchLinger is how long a stream waits for more changes after the
	// first before it writes them.
	watchLinger = 2 * time.Millisecond
)

// keyRange is the range of a scan or watch: [start, end), no end when
// !hasEnd.
type keyRange struct {
	start, end string
	hasEnd     bool
}

// prefixEnd returns the first key after every key with prefix p (false:
// there is none, p is all 0xff bytes or empty).
func prefixEnd(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// checkBound validates a prefix, start or end given by a client.
func checkBound(name, v string) error {
	switch {
	case len(v) > engine.MaxKeyBytes:
		return errcode.New(errcode.KeyTooLarge, "%s is %d bytes; the limit is %d", name, len(v), engine.MaxKeyBytes)
	case !utf8.ValidString(v):
		return errcode.New(errcode.InvalidKey, "%s must be valid UTF-8", name)
	}
	return nil
}

// parseRange reads prefix=, or start= and end=, from q.
func parseRange(q url.Values) (keyRange, error) {
	prefix, hasPrefix := q.Get("prefix"), q.Has("prefix")
	start, end := q.Get("start"), q.Get("end")
	for _, b := range [...]struct{ name, v string }{{"prefix", prefix}, {"start", start}, {"end", end}} {
		if err := checkBound(b.name, b.v); err != nil {
			return keyRange{}, err
		}
	}
	if hasPrefix {
		if q.Has("start") || q.Has("end") {
			return keyRange{}, errcode.New(errcode.InvalidRange, "give prefix, or start and end, not both")
		}
		r := keyRange{start: prefix}
		r.end, r.hasEnd = prefixEnd(prefix)
		return r, nil
	}
	r := keyRange{start: start, end: end, hasEnd: q.Has("end")}
	if r.hasEnd && end < start {
		return keyRange{}, errcode.New(errcode.InvalidRange, "start %q is after end %q", start, end)
	}
	return r, nil
}

// permitRange checks that the request may read every key of kr: always
// while KV auth is off, otherwise if one scope's prefix covers the range.
func permitRange(r *http.Request, kr keyRange) error {
	g, ok := r.Context().Value(grantsKey{}).(auth.Grants)
	if !ok || hasWholeKeyspace(g) {
		return nil
	}
	for _, sc := range g.Scopes {
		if !strings.HasPrefix(kr.start, sc.Prefix) {
			continue
		}
		if end, ok := prefixEnd(sc.Prefix); !ok || (kr.hasEnd && kr.end <= end) {
			return nil
		}
	}
	return errcode.New(errcode.Forbidden, "token %s may not read every key of this range; ask for a range inside one of its prefixes", g.ID)
}

func (s *Server) layout() (uint64, int) {
	id, parts := s.eng.Layout()
	return layoutHash(id, parts), parts
}

type scanItem struct {
	Key      string  `json:"key"`
	Value    *string `json:"value,omitempty"`
	Revision uint64  `json:"revision"`
}

type scanResponse struct {
	Items      []scanItem `json:"items"`
	Count      int        `json:"count"`
	NextCursor string     `json:"next_cursor"`
	// Token starts a watch of the range with no gap after this scan.
	Token string `json:"token"`
}

func parseLimit(q url.Values) (int, error) {
	if !q.Has("limit") {
		return engine.DefaultScanLimit, nil
	}
	n, err := strconv.Atoi(q.Get("limit"))
	if err != nil || n < 1 || n > engine.MaxScanLimit {
		return 0, errcode.New(errcode.InvalidLimit, "limit must be an integer from 1 to %d", engine.MaxScanLimit)
	}
	return n, nil
}

func parseBool(q url.Values, name string, def bool) (bool, error) {
	if !q.Has(name) {
		return def, nil
	}
	v, err := strconv.ParseBool(q.Get(name))
	if err != nil {
		return false, errcode.New(errcode.InvalidQuery, "%s must be true or false", name)
	}
	return v, nil
}

// handleScan answers one page of a range read across the cluster.
func (s *Server) handleScan(w http.ResponseWriter, r *http.Request) {
	q, err := httpapi.Query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	kr, err := parseRange(q)
	if err != nil {
		writeError(w, err)
		return
	}
	limit, err := parseLimit(q)
	if err != nil {
		writeError(w, err)
		return
	}
	values, err := parseBool(q, "values", true)
	if err != nil {
		writeError(w, err)
		return
	}
	stale, err := consistency(q.Get("consistency"))
	if err != nil {
		writeError(w, err)
		return
	}
	if err := permitRange(r, kr); err != nil {
		writeError(w, err)
		return
	}
	if s.eng.Partitions() == 0 {
		writeError(w, errcode.New(errcode.Unavailable, "cluster is not initialised yet"))
		return
	}
	layout, parts := s.layout()
	rng := rangeHash(kr.start, kr.end, kr.hasEnd)
	spec := engine.ScanSpec{Start: kr.start, End: kr.end, HasEnd: kr.hasEnd, Limit: limit, Values: values, Stale: stale}
	var first map[int]uint64
	if c := q.Get("cursor"); c != "" {
		cur, err := decodeCursor(c, layout, rng, parts)
		if err != nil {
			writeError(w, err)
			return
		}
		spec.After, spec.HasAfter, first = cur.last, true, cur.first
	}
	page, err := s.eng.Scan(r.Context(), spec)
	if err != nil {
		writeError(w, err)
		return
	}
	if first == nil {
		first = page.Positions
	}
	resp := scanResponse{Items: make([]scanItem, len(page.Items)), Count: len(page.Items), Token: encodeToken(layout, first)}
	for i, it := range page.Items {
		resp.Items[i] = scanItem{Key: it.Key, Revision: it.Revision}
		if values {
			v := it.Value
			resp.Items[i].Value = &v
		}
	}
	if page.More && len(page.Items) > 0 {
		resp.NextCursor = encodeCursor(layout, rng, cursor{last: page.Items[len(page.Items)-1].Key, first: first})
	}
	writeJSON(w, http.StatusOK, resp)
}

// watchEvent is the data of an event that is not a change (those are
// written by streamState.change): progress, resync_required and cut.
type watchEvent struct {
	Type string `json:"type"`
	// resync_required: the partition and the oldest position it can
	// resume from.
	Revision  uint64 `json:"revision,omitempty"`
	Partition *int   `json:"partition,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Error     string `json:"error,omitempty"`
	// Token is the resume token (also the event's id).
	Token string `json:"token,omitempty"`
}

// handleWatch streams a range's changes as server-sent events.
func (s *Server) handleWatch(w http.ResponseWriter, r *http.Request) {
	q, err := httpapi.Query(r)
	if err != nil {
		writeError(w, err)
		return
	}
	spec, err := s.watchSpec(r, q)
	if err != nil {
		writeError(w, err)
		return
	}
	progress := DefaultProgress
	if v := q.Get("progress"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < MinProgress || d > MaxProgress {
			writeError(w, errcode.New(errcode.InvalidQuery, "progress must be a duration from %s to %s", MinProgress, MaxProgress))
			return
		}
		progress = d
	}
	layout, _ := s.layout()
	watcher, err := s.eng.Watch(r.Context(), spec)
	if err != nil {
		writeError(w, err)
		return
	}
	defer watcher.Close()

	rc := http.NewResponseController(w)
	// The stream outlives the listener's read and write timeouts, which
	// bound ordinary requests; each write gets its own deadline instead.
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.shutdownCtx, cancel)
	defer stop()

	st := newStreamState(layout, watcher.Positions())
	send := func() bool {
		_ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		_, err := w.Write(st.buf)
		st.buf = st.buf[:0]
		return err == nil && rc.Flush() == nil
	}
	// control appends an event that is not a change: progress, or the
	// last event of a stream.
	control := func(withID bool, e watchEvent) {
		tok := string(st.token())
		e.Token = tok
		data, _ := json.Marshal(e)
		if withID {
			st.buf = append(st.buf, "id: "...)
			st.buf = append(st.buf, tok...)
			st.buf = append(st.buf, '\n')
		}
		st.buf = append(st.buf, "data: "...)
		st.buf = append(st.buf, data...)
		st.buf = append(st.buf, "\n\n"...)
	}
	// The first event tells the client where it starts, so that it can
	// resume even if nothing changes before it disconnects.
	control(true, watchEvent{Type: "progress"})
	if !send() {
		return
	}
	for {
		evs, err := watcher.Next(ctx, watchBatch, progress)
		// Changes come a round at a time; waiting a moment for the next
		// rounds makes one write of many events instead of one each.
		if err == nil && len(evs) > 0 && len(evs) < watchBatch {
			var more []engine.Event
			more, err = watcher.Next(ctx, watchBatch-len(evs), watchLinger)
			evs = append(evs, more...)
		}
		now := time.Now()
		for _, e := range evs {
			st.set(e.Partition, e.Seq)
			st.change(e, now)
		}
		var rs *engine.ResyncError
		switch {
		case ctx.Err() != nil:
			return
		case errors.As(err, &rs):
			p := rs.Partition
			st.set(p, rs.Floor)
			control(false, watchEvent{Type: "resync_required", Partition: &p, Revision: rs.Floor,
				Error: fmt.Sprintf("partition %d no longer holds the changes after this watch's position; read the range again (a scan returns a fresh token), "+
					"or resume from this event's token accepting the gap", p)})
			send()
			return
		case errors.Is(err, engine.ErrSlowWatcher):
			control(true, watchEvent{Type: "cut", Reason: "slow_consumer", Error: err.Error()})
			send()
			return
		case err != nil:
			control(true, watchEvent{Type: "cut", Reason: "error", Error: err.Error()})
			send()
			return
		}
		st.setAll(watcher.Positions())
		if len(evs) == 0 {
			control(true, watchEvent{Type: "progress"})
		}
		if !send() {
			return
		}
	}
}

// watchSpec reads what to watch and from where.
func (s *Server) watchSpec(r *http.Request, q url.Values) (engine.WatchSpec, error) {
	var spec engine.WatchSpec
	switch {
	case q.Has("key") && q.Has("prefix"):
		return spec, errcode.New(errcode.InvalidRange, "give key or prefix, not both")
	case q.Has("key"):
		key := q.Get("key")
		if err := validateKey(key); err != nil {
			return spec, err
		}
		if err := permit(r, key, false); err != nil {
			return spec, err
		}
		spec.Prefix, spec.Exact = key, true
	default:
		if q.Has("start") || q.Has("end") {
			return spec, errcode.New(errcode.InvalidRange, "a watch takes prefix or key, not start and end")
		}
		prefix := q.Get("prefix")
		if err := checkBound("prefix", prefix); err != nil {
			return spec, err
		}
		kr := keyRange{start: prefix}
		kr.end, kr.hasEnd = prefixEnd(prefix)
		if err := permitRange(r, kr); err != nil {
			return spec, err
		}
		spec.Prefix = prefix
	}
	if s.eng.Partitions() == 0 {
		return spec, errcode.New(errcode.Unavailable, "cluster is not initialised yet")
	}
	since := r.Header.Get("Last-Event-ID")
	if since == "" {
		since = q.Get("since")
	}
	if since == "" || since == "now" {
		return spec, nil
	}
	layout, parts := s.layout()
	pos, err := decodeToken(since, layout, parts)
	if err != nil {
		return spec, err
	}
	spec.From = map[int]uint64{}
	for _, p := range s.eng.WatchPartitions(spec) {
		v, ok := pos[p]
		if !ok {
			return spec, errcode.New(errcode.InvalidToken, "the token does not cover partition %d, which this watch follows (a key watch's token resumes only that key's watch)", p)
		}
		spec.From[p] = v
	}
	return spec, nil
}
