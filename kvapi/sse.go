package kvapi

import (
	"encoding/base64"
	"encoding/binary"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/clusterkit/clusterkit/engine"
)

// streamState is a watch stream's positions and its encoders, kept so
// that each event costs a few appends: a stream may send tens of
// thousands of events a second.
type streamState struct {
	layout uint64
	parts  []int       // sorted
	index  map[int]int // partition → position in parts and vals
	vals   []uint64
	raw    []byte
	tok    []byte
	buf    []byte
}

func newStreamState(layout uint64, pos map[int]uint64) *streamState {
	st := &streamState{layout: layout, index: make(map[int]int, len(pos))}
	for p := range pos {
		st.parts = append(st.parts, p)
	}
	slices.Sort(st.parts)
	st.vals = make([]uint64, len(st.parts))
	for i, p := range st.parts {
		st.index[p] = i
		st.vals[i] = pos[p]
	}
	return st
}

func (st *streamState) set(p int, v uint64) {
	if i, ok := st.index[p]; ok {
		st.vals[i] = v
	}
}

func (st *streamState) setAll(pos map[int]uint64) {
	for p, v := range pos {
		st.set(p, v)
	}
}

// token encodes the current positions (as encodeToken does) into st.tok.
func (st *streamState) token() []byte {
	b := append(st.raw[:0], tokenTag, formatByte)
	b = binary.BigEndian.AppendUint64(b, st.layout)
	b = binary.AppendUvarint(b, uint64(len(st.parts)))
	for i, p := range st.parts {
		b = binary.AppendUvarint(b, uint64(p))
		b = binary.AppendUvarint(b, st.vals[i])
	}
	st.raw = b
	n := base64.RawURLEncoding.EncodedLen(len(b))
	st.tok = slices.Grow(st.tok[:0], n)[:n]
	base64.RawURLEncoding.Encode(st.tok, b)
	return st.tok
}

// change appends one change event to the stream's buffer.
func (st *streamState) change(e engine.Event, now time.Time) {
	tok := st.token()
	b := append(st.buf, "id: "...)
	b = append(b, tok...)
	b = append(b, "\ndata: {\"type\":\""...)
	switch {
	case e.Expired:
		b = append(b, "expire"...)
	case e.Delete:
		b = append(b, "delete"...)
	default:
		b = append(b, "set"...)
	}
	b = append(b, "\",\"key\":"...)
	b = appendJSONString(b, e.Key)
	if !e.Delete {
		b = append(b, ",\"value\":"...)
		b = appendJSONString(b, e.Value)
		if e.ExpiresAt != 0 {
			at, _ := deadline(e.ExpiresAt, now)
			b = append(b, ",\"expires_at\":\""...)
			b = append(b, at...)
			b = append(b, '"')
		}
	}
	b = append(b, ",\"revision\":"...)
	b = strconv.AppendUint(b, e.Seq, 10)
	st.buf = append(b, "}\n\n"...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string (invalid UTF-8 becomes
// U+FFFD, as encoding/json does).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 end a line in some JavaScript parsers.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
