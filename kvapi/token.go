package kvapi

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"hash/fnv"
	"slices"

	"github.com/clusterkit/clusterkit/errcode"
)

// A watch token (an event's id, a scan's token) holds a position per
// partition, a write number of that partition's history. It is opaque to
// clients: 'W', a format byte, a hash of the cluster's identity and its
// partition count (so a token from another cluster, or from before a
// layout change, is refused rather than misread), the number of
// partitions, then each partition and position as uvarints, in partition
// order; base64url without padding.
//
// A scan cursor is 'C', a format byte, the same layout hash, a hash of
// the range it continues, the last key returned, and the token of the
// scan's first page (see handleScan).

const (
	tokenTag     = 'W'
	cursorTag    = 'C'
	formatByte   = 1
	maxTokenLen  = 64 << 10
	maxCursorLen = 128 << 10
)

// layoutHash identifies the cluster and its partition layout.
func layoutHash(clusterID string, partitions int) uint64 {
	h := fnv.New64a()
	h.Write([]byte(clusterID))
	h.Write([]byte{0})
	h.Write(binary.AppendUvarint(nil, uint64(partitions)))
	return h.Sum64()
}

func appendPositions(b []byte, pos map[int]uint64) []byte {
	parts := make([]int, 0, len(pos))
	for p := range pos {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	b = binary.AppendUvarint(b, uint64(len(parts)))
	for _, p := range parts {
		b = binary.AppendUvarint(b, uint64(p))
		b = binary.AppendUvarint(b, pos[p])
	}
	return b
}

func encodeToken(layout uint64, pos map[int]uint64) string {
	return string(newStreamState(layout, pos).token())
}

var errBadToken = errcode.New(errcode.InvalidToken, "the watch token does not decode: pass an event's id or a scan's token unchanged")

// readPositions decodes what appendPositions wrote, checking partitions
// against the layout's count.
func readPositions(r *bytes.Reader, partitions int) (map[int]uint64, bool) {
	n, err := binary.ReadUvarint(r)
	if err != nil || n > uint64(partitions) {
		return nil, false
	}
	pos := make(map[int]uint64, n)
	last := -1
	for range n {
		p, err1 := binary.ReadUvarint(r)
		v, err2 := binary.ReadUvarint(r)
		if err1 != nil || err2 != nil || p >= uint64(partitions) || int(p) <= last {
			return nil, false
		}
		last = int(p)
		pos[int(p)] = v
	}
	return pos, true
}

func decodeToken(s string, layout uint64, partitions int) (map[int]uint64, error) {
	if len(s) > maxTokenLen {
		return nil, errBadToken
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 10 || b[0] != tokenTag || b[1] != formatByte {
		return nil, errBadToken
	}
	if binary.BigEndian.Uint64(b[2:]) != layout {
		return nil, errcode.New(errcode.InvalidToken, "the watch token is from another cluster or another partition layout; scan again for a current token")
	}
	r := bytes.NewReader(b[10:])
	pos, ok := readPositions(r, partitions)
	if !ok || r.Len() != 0 {
		return nil, errBadToken
	}
	return pos, nil
}

// cursor is a scan's place between pages.
type cursor struct {
	last  string
	first map[int]uint64 // the first page's positions
}

func rangeHash(start, end string, hasEnd bool) uint64 {
	h := fnv.New64a()
	h.Write(binary.AppendUvarint(nil, uint64(len(start))))
	h.Write([]byte(start))
	if hasEnd {
		h.Write([]byte{1})
		h.Write([]byte(end))
	}
	return h.Sum64()
}

func encodeCursor(layout, rng uint64, c cursor) string {
	b := []byte{cursorTag, formatByte}
	b = binary.BigEndian.AppendUint64(b, layout)
	b = binary.BigEndian.AppendUint64(b, rng)
	b = binary.AppendUvarint(b, uint64(len(c.last)))
	b = append(b, c.last...)
	return base64.RawURLEncoding.EncodeToString(appendPositions(b, c.first))
}

func decodeCursor(s string, layout, rng uint64, partitions int) (cursor, error) {
	bad := errcode.New(errcode.InvalidCursor, "the cursor does not decode: pass next_cursor unchanged, with the same range")
	if len(s) > maxCursorLen {
		return cursor{}, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 18 || b[0] != cursorTag || b[1] != formatByte {
		return cursor{}, bad
	}
	if binary.BigEndian.Uint64(b[2:]) != layout {
		return cursor{}, errcode.New(errcode.InvalidCursor, "the cursor is from another cluster or another partition layout")
	}
	if binary.BigEndian.Uint64(b[10:]) != rng {
		return cursor{}, errcode.New(errcode.InvalidCursor, "the cursor continues another range: send the same prefix (or start and end) as the first page")
	}
	r := bytes.NewReader(b[18:])
	n, err := binary.ReadUvarint(r)
	if err != nil || n > uint64(r.Len()) {
		return cursor{}, bad
	}
	last := make([]byte, n)
	if _, err := r.Read(last); err != nil && n > 0 {
		return cursor{}, bad
	}
	first, ok := readPositions(r, partitions)
	if !ok || r.Len() != 0 {
		return cursor{}, bad
	}
	return cursor{last: string(last), first: first}, nil
}
