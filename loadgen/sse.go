package loadgen

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// sseReader reads a stream of server-sent events (the text/event-stream
// format of the HTML standard) without allocating per event: lines are
// read in place from a bufio.Reader and only the fields an event keeps
// (its data and id) are copied, into buffers reused from one event to the
// next.
//
// Lines end in LF or CRLF. A lone CR, which the format also allows as a
// line ending, is not one here: ClusterKit does not write it, and
// recognising it would cost a second scan of every line.
type sseReader struct {
	br      *bufio.Reader
	data    []byte // the event's data lines, each followed by LF
	hasData bool   // a data field was seen (its value may be empty)
	id      []byte // the last event ID; kept across events, as the format says
	long    []byte // a line longer than br's buffer, assembled
}

func newSSEReader(r io.Reader, size int) *sseReader {
	return &sseReader{br: bufio.NewReaderSize(r, size)}
}

// maxSSELine bounds one line of a stream; a longer one is an error.
const maxSSELine = 4 << 20

var errSSELineTooLong = errors.New("server-sent event line too long")

// line returns the next line without its ending, valid until the next
// call: io.EOF at the end of the stream, io.ErrUnexpectedEOF if the
// stream ends in the middle of a line.
func (r *sseReader) line() ([]byte, error) {
	b, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		r.long = append(r.long[:0], b...)
		for errors.Is(err, bufio.ErrBufferFull) && len(r.long) <= maxSSELine {
			b, err = r.br.ReadSlice('\n')
			r.long = append(r.long, b...)
		}
		if len(r.long) > maxSSELine+2 { // the ending may be CRLF
			return nil, errSSELineTooLong
		}
		b = r.long
	}
	if err != nil {
		if errors.Is(err, io.EOF) && len(b) > 0 {
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

// Next returns the next event's data (its data lines joined by LF) and
// the last event ID seen, both valid until the next call. An event with
// no data field is not dispatched, as the format says. At the end of the
// stream it returns io.EOF if the stream ended between events, else
// io.ErrUnexpectedEOF.
func (r *sseReader) Next() (id, data []byte, err error) {
	r.data, r.hasData = r.data[:0], false
	started := false
	for {
		b, err := r.line()
		if err != nil {
			if errors.Is(err, io.EOF) && started {
				err = io.ErrUnexpectedEOF
			}
			return nil, nil, err
		}
		if len(b) == 0 {
			if r.hasData {
				return r.id, r.data[:len(r.data)-1], nil
			}
			started = false
			continue // a blank line with no data: nothing to dispatch
		}
		started = true
		if b[0] == ':' {
			continue // a comment
		}
		field, value := b, b[len(b):]
		if i := bytes.IndexByte(b, ':'); i >= 0 {
			field, value = b[:i], b[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			r.data = append(append(r.data, value...), '\n')
			r.hasData = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				r.id = append(r.id[:0], value...)
			}
		}
		// "event" and "retry", and unknown fields, are ignored: a
		// ClusterKit event says its type in its data.
	}
}

// The kinds of a WatchEvent.
const (
	EventOther    EventKind = iota // a type this tool does not know
	EventSet                       // "set": a key written
	EventDelete                    // "delete"
	EventExpire                    // "expire": a key's TTL ran out
	EventProgress                  // "progress": no change before the token
	EventResync                    // "resync_required": ends the stream
	EventCut                       // "cut": ends the stream (Reason says why)
)

// EventKind is the type of a watch event.
type EventKind uint8

var eventKinds = map[string]EventKind{"set": EventSet, "delete": EventDelete, "expire": EventExpire,
	"progress": EventProgress, "resync_required": EventResync, "cut": EventCut}

func (k EventKind) String() string {
	for name, v := range eventKinds {
		if v == k {
			return name
		}
	}
	return "other"
}

// WatchEvent is one event of a watch stream, as much of it as the load
// tool reads.
type WatchEvent struct {
	Kind EventKind
	// Key is the key changed (set, delete, expire), valid until the
	// stream's next event.
	Key      []byte
	Revision uint64
	// Reason is a cut's reason ("slow_consumer", "error").
	Reason string
}

// parseWatchEvent reads a ClusterKit watch event's data,
// {"type":T,"key":K,"value":V,"revision":R,"token":...}, with the scan of
// answer.go: type, key and revision, whatever their order, and a cut's
// reason. It reports false for data it cannot read: not a JSON object,
// no type, or a change with no key or no integer revision.
func parseWatchEvent(data []byte) (WatchEvent, bool) {
	var ev WatchEvent
	var typ, key, rev, reason []byte
	if len(data) == 0 || data[0] != '{' {
		return ev, false
	}
	ok := walkJSON(data, func(depth int, name, value []byte) {
		if depth != 1 {
			return
		}
		switch string(name) {
		case "type":
			typ = value
		case "key":
			key = value
		case "revision":
			rev = value
		case "reason":
			reason = value
		}
	})
	if !ok || len(typ) < 2 || typ[0] != '"' {
		return ev, false
	}
	ev.Kind = eventKinds[string(typ[1:len(typ)-1])] // EventOther if unknown
	switch ev.Kind {
	case EventSet, EventDelete, EventExpire:
		var good bool
		if ev.Key, good = jsonStringBytes(key); !good {
			return ev, false
		}
		if ev.Revision, good = parseUint(rev); !good {
			return ev, false
		}
	case EventCut:
		r, _ := jsonStringBytes(reason)
		ev.Reason = string(r)
	}
	return ev, true
}

// jsonStringBytes returns the contents of the JSON string v (with its
// quotes): in place when it holds no escape, else decoded.
func jsonStringBytes(v []byte) ([]byte, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return nil, false
	}
	s := v[1 : len(v)-1]
	if bytes.IndexByte(s, '\\') < 0 {
		return s, true
	}
	var out string
	if err := json.Unmarshal(v, &out); err != nil {
		return nil, false
	}
	return []byte(out), true
}
