package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Every write a partition copy applies is also appended, in the same
// commit, to the partition's history: 'l' | partition | write number →
// the entry. The history is what a change feed streams and what a replica
// that missed a few writes is caught up from. It is trimmed from the old
// end (TrimLog); Meta.LogFloor says where it starts, so a reader can
// always tell "no write here" from "trimmed".
//
// An entry is stored as: commit time (8 bytes, big endian, Unix ms), a
// flags byte (1: delete, 2: the delete is an expiry), uvarint key length,
// key, uvarint value length, value, varint deadline (Unix ms, 0: none).

const (
	logDelete  = 1
	logExpired = 2
)

func logKey(p int, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(prefix(logTag, p), seq)
}

func logBounds(p int) (lower, upper []byte) {
	return prefix(logTag, p), prefix(logTag, p+1)
}

func encodeLog(now int64, op Op) []byte {
	b := make([]byte, 8, 8+1+2*binary.MaxVarintLen64+len(op.Key)+len(op.Value)+binary.MaxVarintLen64)
	binary.BigEndian.PutUint64(b, uint64(now))
	var flags byte
	if op.Delete {
		flags |= logDelete
	}
	if op.Expired {
		flags |= logExpired
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(op.Key)))
	b = append(b, op.Key...)
	b = binary.AppendUvarint(b, uint64(len(op.Value)))
	b = append(b, op.Value...)
	return binary.AppendVarint(b, op.ExpiresAt)
}

// LogEntry is one write of a partition's history.
type LogEntry struct {
	// Seq is the write's number: the revision it gave its key.
	Seq uint64
	// Time is when this copy committed it (Unix ms).
	Time    int64
	Delete  bool
	Expired bool
	Key     []byte
	Value   []byte
	// ExpiresAt is the key's deadline after the write (Unix ms, 0: none).
	ExpiresAt int64
}

// Op returns the write as Apply takes it.
func (e LogEntry) Op() Op {
	return Op{Delete: e.Delete, Expired: e.Expired, Key: e.Key, Value: e.Value, ExpiresAt: e.ExpiresAt}
}

var errMalformedLog = errors.New("storage: malformed history entry")

// DecodeLog parses an entry as stored; the slices alias b.
func DecodeLog(seq uint64, b []byte) (LogEntry, error) {
	if len(b) < 9 {
		return LogEntry{}, errMalformedLog
	}
	e := LogEntry{Seq: seq, Time: int64(binary.BigEndian.Uint64(b))}
	flags := b[8]
	e.Delete, e.Expired = flags&logDelete != 0, flags&logExpired != 0
	rest := b[9:]
	field := func() []byte {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			rest = nil
			return nil
		}
		f := rest[k : k+int(n)]
		rest = rest[k+int(n):]
		return f
	}
	if e.Key = field(); len(e.Key) == 0 {
		return LogEntry{}, errMalformedLog
	}
	e.Value = field()
	exp, k := binary.Varint(rest)
	if k <= 0 || k != len(rest) || exp < 0 || flags&^(logDelete|logExpired) != 0 {
		return LogEntry{}, errMalformedLog
	}
	e.ExpiresAt = exp
	return e, nil
}

// LogRecord is one history entry as stored, for a partition copy.
type LogRecord struct {
	Seq uint64
	Raw []byte
}

// ErrCompacted is returned by ReadLog for a position older than the
// retained history.
type ErrCompacted struct {
	Partition int
	// Floor is the oldest position the history can still be read from.
	Floor uint64
}

func (e *ErrCompacted) Error() string {
	return fmt.Sprintf("partition %d: history before write %d is no longer retained", e.Partition, e.Floor+1)
}

// ReadLog returns partition p's entries numbered above after and at most
// upTo, in order, at most limit of them and, beyond the first, at most
// maxBytes of keys and values; keep, when set, selects the entries
// returned (the others are still read past). It also returns the position
// it read up to: every entry numbered at or below it and above after has
// been considered. A position below the retained history is an
// *ErrCompacted. Entries and metadata come from one snapshot, so a trim
// running alongside cannot open a silent gap.
func (d *DB) ReadLog(p int, after, upTo uint64, limit, maxBytes int, keep func(key []byte) bool) ([]LogEntry, uint64, error) {
	snap := d.db.NewSnapshot()
	defer snap.Close()
	m, err := d.meta(snap, p)
	if err != nil {
		return nil, 0, err
	}
	if after < m.LogFloor {
		return nil, 0, &ErrCompacted{Partition: p, Floor: m.LogFloor}
	}
	upTo = min(upTo, m.Seq)
	if after >= upTo {
		return nil, after, nil
	}
	_, hi := logBounds(p)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: logKey(p, after+1), UpperBound: hi})
	if err != nil {
		return nil, 0, fmt.Errorf("history of partition %d: %w", p, err)
	}
	defer it.Close()
	var out []LogEntry
	pos, size, scanned := upTo, 0, 0
	for it.First(); it.Valid(); it.Next() {
		seq := binary.BigEndian.Uint64(it.Key()[5:])
		if seq > upTo {
			break
		}
		// Bound the work of one call, matches or not.
		if len(out) >= limit || (len(out) > 0 && size >= maxBytes) || scanned >= 8*limit {
			pos = seq - 1
			break
		}
		scanned++
		if keep != nil && !keep(logKeyOf(it.Value())) {
			continue
		}
		e, err := DecodeLog(seq, it.Value())
		if err != nil {
			return nil, 0, fmt.Errorf("history of partition %d at %d: %w", p, seq, err)
		}
		e.Key, e.Value = bytes.Clone(e.Key), bytes.Clone(e.Value)
		size += len(e.Key) + len(e.Value)
		out = append(out, e)
	}
	return out, pos, it.Error()
}

// logKeyOf returns the key of a stored entry without decoding the rest
// (nil if malformed).
func logKeyOf(b []byte) []byte {
	if len(b) < 9 {
		return nil
	}
	n, k := binary.Uvarint(b[9:])
	if k <= 0 || n > uint64(len(b)-9-k) {
		return nil
	}
	return b[9+k : 9+k+int(n)]
}

// TrimLog drops partition p's history entries beyond the newest keep
// write numbers and those committed before olderThan (Unix ms), raising
// the floor to match. It returns the new floor.
func (d *DB) TrimLog(p int, keep uint64, olderThan int64) (uint64, error) {
	l := d.lock(p)
	l.Lock()
	defer l.Unlock()
	m, err := d.cachedMeta(p)
	if err != nil {
		return 0, err
	}
	cut := m.LogFloor
	if m.Seq > keep {
		cut = max(cut, m.Seq-keep)
	}
	// Old entries come first: walk them until the first one young enough.
	lo, hi := logBounds(p)
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: logKey(p, cut+1), UpperBound: hi})
	if err != nil {
		return 0, err
	}
	for it.First(); it.Valid(); it.Next() {
		v := it.Value()
		if len(v) < 8 || int64(binary.BigEndian.Uint64(v)) >= olderThan {
			break
		}
		cut = binary.BigEndian.Uint64(it.Key()[5:])
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	if cut <= m.LogFloor {
		return m.LogFloor, nil
	}
	b := d.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(lo, logKey(p, cut+1), nil); err != nil {
		return 0, err
	}
	m.LogFloor = cut
	if err := b.Set(metaKey(p), m.encode(), nil); err != nil {
		return 0, err
	}
	// Not synced: losing a trim in a crash only keeps history longer.
	if err := b.Commit(pebble.NoSync); err != nil {
		return 0, fmt.Errorf("trim history of partition %d: %w", p, err)
	}
	d.setCached(p, m)
	return cut, nil
}

// SnapshotLog is Snapshot followed by the partition's history from the
// same snapshot: after the pairs, logBegin gets the floor and logFn every
// retained entry as stored, in order.
func (d *DB) SnapshotLog(p int, begin func(Meta) error, fn func(k, v []byte) error, logBegin func(floor uint64) error, logFn func(seq uint64, raw []byte) error) error {
	snap := d.db.NewSnapshot()
	defer snap.Close()
	m, err := d.snapshotPairs(snap, p, begin, fn)
	if err != nil {
		return err
	}
	if err := logBegin(m.LogFloor); err != nil {
		return err
	}
	lo, hi := logBounds(p)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("snapshot history of partition %d: %w", p, err)
	}
	for it.First(); it.Valid(); it.Next() {
		if err := logFn(binary.BigEndian.Uint64(it.Key()[5:]), it.Value()); err != nil {
			_ = it.Close()
			return err
		}
	}
	return it.Close()
}

// stageLog adds a copy's history to b and returns its floor. Entries must
// be in order, above the floor and at most seq.
func stageLog(b *pebble.Batch, p int, seq uint64, log func() (uint64, func() (LogRecord, bool, error), error)) (uint64, error) {
	floor, next, err := log()
	if err != nil {
		return 0, err
	}
	if floor > seq {
		return 0, fmt.Errorf("storage: a copy at write %d with history from %d", seq, floor)
	}
	last := floor
	for {
		r, ok, err := next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return floor, nil
		}
		if r.Seq <= last || r.Seq > seq {
			return 0, fmt.Errorf("storage: history entry %d out of order (after %d, copy at %d)", r.Seq, last, seq)
		}
		if _, err := DecodeLog(r.Seq, r.Raw); err != nil {
			return 0, fmt.Errorf("history entry %d: %w", r.Seq, err)
		}
		last = r.Seq
		if err := b.Set(logKey(p, r.Seq), r.Raw, nil); err != nil {
			return 0, err
		}
	}
}

// Item is one key of a Scan.
type Item struct {
	Key      []byte
	Value    []byte // nil unless asked for
	Revision uint64
}

// Scan returns partition p's live keys from start (inclusive; after it if
// exclusive) up to end (exclusive; nil: no end), in order, at most limit
// of them and, beyond the first, at most maxBytes of keys and values; keys
// past their deadline at now are skipped. more reports whether the range
// may hold further keys after the last returned.
func (d *DB) Scan(p int, start, end []byte, exclusive bool, limit, maxBytes int, values bool, now int64) (items []Item, more bool, err error) {
	lo, hi := dataBounds(p)
	o := &pebble.IterOptions{LowerBound: append(lo, start...), UpperBound: hi}
	if end != nil {
		o.UpperBound = dataKey(p, end)
	}
	it, err := d.db.NewIter(o)
	if err != nil {
		return nil, false, fmt.Errorf("scan partition %d: %w", p, err)
	}
	defer it.Close()
	size := 0
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[len(lo):]
		if exclusive && bytes.Equal(k, start) {
			continue
		}
		if len(items) >= limit || (len(items) > 0 && size >= maxBytes) {
			return items, true, nil
		}
		r, err := DecodeRecord(it.Value())
		if err != nil {
			return nil, false, fmt.Errorf("scan partition %d: key %q: %w", p, k, err)
		}
		if r.Expired(now) {
			continue
		}
		item := Item{Key: bytes.Clone(k), Revision: r.Revision}
		size += len(k)
		if values {
			item.Value = bytes.Clone(r.Value)
			size += len(r.Value)
		}
		items = append(items, item)
	}
	return items, false, it.Error()
}
