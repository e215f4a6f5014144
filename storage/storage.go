// Package storage keeps a node's copy of its partitions on disk in Pebble.
//
// Each partition's pairs live under their own key prefix, beside one
// metadata record per partition that says at which partition epoch the copy
// was installed and the sequence number of the last write it holds. Every
// mutation is committed with a synced WAL write before it returns; Pebble
// shares one fsync among concurrent committers (group commit), which is why
// it was chosen over bbolt (see docs/DESIGN.md for the measurement).
package storage

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Meta describes one partition's local copy.
type Meta struct {
	// Epoch is the partition epoch this copy was last installed or
	// reconciled at; a replica accepts writes only for this epoch.
	Epoch uint64
	// Seq is the sequence number of the last write applied.
	Seq uint64
	// Keys is the number of keys held.
	Keys uint64
	// LogFloor is where the partition's retained history starts: every
	// write numbered above it, up to Seq, is in the log (see ReadLog);
	// the ones at or below it were trimmed, or predate the log.
	LogFloor uint64
}

// A metadata record is 32 bytes; stores written before the log have 24
// (no floor: their history starts at their Seq).
const (
	metaLen   = 32
	metaLenV1 = 24
)

func (m Meta) encode() []byte {
	b := make([]byte, metaLen)
	binary.BigEndian.PutUint64(b[0:], m.Epoch)
	binary.BigEndian.PutUint64(b[8:], m.Seq)
	binary.BigEndian.PutUint64(b[16:], m.Keys)
	binary.BigEndian.PutUint64(b[24:], m.LogFloor)
	return b
}

func decodeMeta(b []byte) Meta {
	if len(b) != metaLen && len(b) != metaLenV1 {
		return Meta{}
	}
	m := Meta{
		Epoch: binary.BigEndian.Uint64(b[0:]),
		Seq:   binary.BigEndian.Uint64(b[8:]),
		Keys:  binary.BigEndian.Uint64(b[16:]),
	}
	m.LogFloor = m.Seq
	if len(b) == metaLen {
		m.LogFloor = binary.BigEndian.Uint64(b[24:])
	}
	return m
}

// Op is one write. Write number seq of a partition gives its key the
// revision seq.
type Op struct {
	Delete bool
	// Expired marks a delete that is an expiry (for the log).
	Expired bool
	Key     []byte
	Value   []byte
	// ExpiresAt is the key's deadline in Unix milliseconds (0: none).
	ExpiresAt int64
	// PrevExpiresAt is the deadline the key had before this write (0:
	// none), so that a blind write can drop its expiry index entry
	// without reading the key.
	PrevExpiresAt int64
}

// Record is a key's stored state: its value, the revision of the write
// that produced it and its deadline.
type Record struct {
	Value     []byte
	Revision  uint64
	ExpiresAt int64 // Unix milliseconds; 0: no TTL
}

// Expired reports whether r's deadline has passed at now (Unix ms).
func (r Record) Expired(now int64) bool { return r.ExpiresAt != 0 && now >= r.ExpiresAt }

// A stored value is a record: a format byte, the revision and the deadline
// (8 bytes each, big endian), then the value. The layout is a data-format
// contract: partition copies carry records as they are stored.
const (
	recordFormat = 1
	// RecordOverhead is what a record adds to its value's length.
	RecordOverhead = 17
)

// EncodeRecord returns r as stored.
func EncodeRecord(r Record) []byte {
	b := make([]byte, RecordOverhead, RecordOverhead+len(r.Value))
	b[0] = recordFormat
	binary.BigEndian.PutUint64(b[1:], r.Revision)
	binary.BigEndian.PutUint64(b[9:], uint64(r.ExpiresAt))
	return append(b, r.Value...)
}

// DecodeRecord parses a stored record. The value aliases b.
func DecodeRecord(b []byte) (Record, error) {
	if len(b) < RecordOverhead || b[0] != recordFormat {
		return Record{}, errors.New("storage: malformed record")
	}
	exp := int64(binary.BigEndian.Uint64(b[9:]))
	if exp < 0 {
		return Record{}, errors.New("storage: malformed record deadline")
	}
	return Record{Revision: binary.BigEndian.Uint64(b[1:]), ExpiresAt: exp, Value: b[RecordOverhead:]}, nil
}

// KV is one key/value pair of a partition snapshot.
type KV struct {
	Key, Value []byte
}

// Key layout: 'd' | partition (4 bytes, big endian) | user key for data,
// 'm' | partition for metadata, 'x' | partition | deadline (8 bytes, big
// endian, Unix ms) | user key for the expiry index, which lists every key
// with a TTL in deadline order so the sweep finds expired keys without a
// scan, and 'l' | partition | write number (8 bytes, big endian) for the
// partition's retained history (see log.go). Single-byte keys hold the
// store's own records: 'F' its format, 'v' the table version acted on, 'i'
// its identity. The layout is a data-format contract.
const (
	dataTag   = 'd'
	metaTag   = 'm'
	expiryTag = 'x'
	logTag    = 'l'
)

func expiryKey(p int, deadline int64, key []byte) []byte {
	b := binary.BigEndian.AppendUint64(prefix(expiryTag, p), uint64(deadline))
	return append(b, key...)
}

func prefix(tag byte, p int) []byte {
	b := make([]byte, 5, 5+64)
	b[0] = tag
	binary.BigEndian.PutUint32(b[1:], uint32(p))
	return b
}

func dataKey(p int, key []byte) []byte { return append(prefix(dataTag, p), key...) }
func metaKey(p int) []byte             { return prefix(metaTag, p) }

// dataBounds returns the key range holding partition p's pairs.
func dataBounds(p int) (lower, upper []byte) {
	return prefix(dataTag, p), prefix(dataTag, p+1)
}

// expiryBounds returns the key range of partition p's expiry index.
func expiryBounds(p int) (lower, upper []byte) {
	return prefix(expiryTag, p), prefix(expiryTag, p+1)
}

// stripes serialises read-modify-write of a partition's metadata.
const stripes = 64

// DB is the on-disk store of one node.
type DB struct {
	db    *pebble.DB
	locks [stripes]sync.Mutex

	// metas caches every partition's metadata read or written so far:
	// the primary consults it on every read and write. Entries change
	// only under the partition's stripe lock, after the commit.
	metaMu sync.RWMutex
	metas  map[int]Meta

	// id names this store; see ID.
	id string
}

// DefaultCacheBytes is the block cache size when Options leaves it zero.
// Pebble's own default (8 MiB) is smaller than the index and data blocks
// of 100k small keys: every read then copied, checksummed and
// decompressed a block from the page cache, which was a quarter of a
// read-serving node's CPU. 32 MiB took a read from 149 to about 115 µs of
// node CPU, for about 5 MiB more resident memory at that size.
const DefaultCacheBytes = 32 << 20

// Options tune Open; the zero value is the defaults.
type Options struct {
	Logger *slog.Logger
	// CacheBytes is the size of the block cache that keeps recently
	// read blocks in memory, decompressed (DefaultCacheBytes if zero).
	CacheBytes int64
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, o Options) (*DB, error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{l: logger, dir: dir}, CacheSize: o.CacheBytes})
	if errors.Is(err, pebble.ErrCorruption) {
		return nil, fmt.Errorf("%s: %s", DamageAdvice(dir), firstLine(err.Error()))
	}
	if err != nil {
		return nil, fmt.Errorf("open kv store %s: %w", dir, err)
	}
	d := &DB{db: db, metas: map[int]Meta{}}
	if err := d.upgrade(logger); err != nil {
		db.Close()
		return nil, fmt.Errorf("upgrade kv store %s: %w", dir, err)
	}
	if d.id, err = d.loadID(); err != nil {
		db.Close()
		return nil, fmt.Errorf("kv store %s: %w", dir, err)
	}
	return d, nil
}

// idKey holds the store's identity (see ID).
var idKey = []byte{'i'}

// loadID returns the store's identity, making one if the store has none
// (it is new, or older than identities).
func (d *DB) loadID() (string, error) {
	v, ok, err := read(d.db, idKey)
	if err != nil {
		return "", fmt.Errorf("read store id: %w", err)
	}
	if ok && len(v) > 0 {
		return string(v), nil
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	if err := d.db.Set(idKey, []byte(id), pebble.Sync); err != nil {
		return "", fmt.Errorf("record store id: %w", err)
	}
	return id, nil
}

// ID names this store: made at random when the store is created, kept for
// its lifetime. A node that comes back under the same NODE_ID with another
// ID has lost the data it had (an emptied or replaced DATA_DIR); the
// cluster must not trust the copies it held before.
func (d *DB) ID() string { return d.id }

// Close closes the store.
func (d *DB) Close() error { return d.db.Close() }

func (d *DB) lock(p int) *sync.Mutex { return &d.locks[uint(p)%stripes] }

// read returns a copy of key's value from r (the DB or a snapshot).
func read(r pebble.Reader, key []byte) ([]byte, bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := bytes.Clone(v)
	return out, true, closer.Close()
}

func (d *DB) meta(r pebble.Reader, p int) (Meta, error) {
	v, _, err := read(r, metaKey(p))
	if err != nil {
		return Meta{}, fmt.Errorf("read meta of partition %d: %w", p, err)
	}
	return decodeMeta(v), nil
}

// Meta returns partition p's metadata (zero if it holds nothing).
func (d *DB) Meta(p int) (Meta, error) {
	if m, ok := d.lookupCached(p); ok {
		return m, nil
	}
	l := d.lock(p)
	l.Lock()
	defer l.Unlock()
	return d.cachedMeta(p)
}

func (d *DB) lookupCached(p int) (Meta, bool) {
	d.metaMu.RLock()
	defer d.metaMu.RUnlock()
	m, ok := d.metas[p]
	return m, ok
}

// cachedMeta returns p's metadata from the cache, filling it from disk;
// the caller holds p's stripe lock.
func (d *DB) cachedMeta(p int) (Meta, error) {
	if m, ok := d.lookupCached(p); ok {
		return m, nil
	}
	m, err := d.meta(d.db, p)
	if err != nil {
		return Meta{}, err
	}
	d.setCached(p, m)
	return m, nil
}

func (d *DB) setCached(p int, m Meta) {
	d.metaMu.Lock()
	d.metas[p] = m
	d.metaMu.Unlock()
}

// Get returns key's record in partition p. It does not look at the
// deadline: whether an expired key is visible is the caller's decision.
func (d *DB) Get(p int, key []byte) (Record, bool, error) {
	v, ok, err := read(d.db, dataKey(p, key))
	if err != nil || !ok {
		if err != nil {
			err = fmt.Errorf("get from partition %d: %w", p, err)
		}
		return Record{}, false, err
	}
	r, err := DecodeRecord(v)
	if err != nil {
		return Record{}, false, fmt.Errorf("get from partition %d: key %q: %w", p, key, err)
	}
	return r, true, nil
}

// Apply applies op to partition p as write number seq of epoch, durably.
func (d *DB) Apply(p int, epoch, seq uint64, op Op) error {
	_, err := d.ApplyBatch(p, epoch, seq, []Op{op})
	return err
}

// ApplyBatch applies ops to partition p as writes number first,
// first+1, ... of epoch, in one atomic and durable commit: a primary
// commits the writes that queued up while its previous round was in
// flight together, so they share one fsync here and on every replica. It
// returns p's metadata after the commit.
func (d *DB) ApplyBatch(p int, epoch, first uint64, ops []Op) (Meta, error) {
	return d.apply(p, epoch, first, ops, nil)
}

// ApplyReplicated is ApplyBatch on a replica that is told the key count
// after ops: the primary's, whose copy this one mirrors write for write.
// The writes go in blind, which spares a read per write; on a replica that
// read would only recompute the number the primary already has.
func (d *DB) ApplyReplicated(p int, epoch, first uint64, ops []Op, keys uint64) error {
	_, err := d.apply(p, epoch, first, ops, &keys)
	return err
}

// apply commits ops; keys, if set, is the key count afterwards, otherwise
// each write reads its key to keep the count exact.
func (d *DB) apply(p int, epoch, first uint64, ops []Op, keys *uint64) (Meta, error) {
	if len(ops) == 0 {
		return Meta{}, errors.New("storage: empty batch")
	}
	for _, op := range ops {
		if len(op.Key) == 0 {
			return Meta{}, errors.New("storage: empty key")
		}
	}
	l := d.lock(p)
	l.Lock()
	defer l.Unlock()
	m, err := d.cachedMeta(p)
	if err != nil {
		return Meta{}, err
	}
	b := d.db.NewBatch()
	defer b.Close()
	// present tracks keys this batch already wrote, so a key set twice in
	// one batch is counted once.
	var present map[string]prevState
	if keys == nil && len(ops) > 1 {
		present = make(map[string]prevState, len(ops))
	}
	now := time.Now().UnixMilli()
	for i, op := range ops {
		k := dataKey(p, op.Key)
		if keys == nil {
			prev, seen := present[string(op.Key)]
			if !seen {
				v, ok, err := read(d.db, k)
				if err != nil {
					return Meta{}, fmt.Errorf("apply to partition %d: %w", p, err)
				}
				prev = prevState{}
				if ok {
					r, err := DecodeRecord(v)
					if err != nil {
						return Meta{}, fmt.Errorf("apply to partition %d: key %q: %w", p, op.Key, err)
					}
					prev = prevState{exists: true, expiresAt: r.ExpiresAt}
				}
			}
			op.PrevExpiresAt = prev.expiresAt
			switch {
			case op.Delete && prev.exists:
				m.Keys--
			case !op.Delete && !prev.exists:
				m.Keys++
			}
			if present != nil {
				present[string(op.Key)] = prevState{exists: !op.Delete, expiresAt: op.ExpiresAt}
			}
		}
		if err := writeOp(b, p, first+uint64(i), op); err != nil {
			return Meta{}, err
		}
		if err := b.Set(logKey(p, first+uint64(i)), encodeLog(now, op), nil); err != nil {
			return Meta{}, err
		}
	}
	if keys != nil {
		m.Keys = *keys
	}
	return d.commit(b, p, epoch, first+uint64(len(ops))-1, m)
}

// prevState is what apply knows of a key before a write.
type prevState struct {
	exists    bool
	expiresAt int64
}

// writeOp adds op, as write number seq of p, to b: the record and its
// expiry index entry.
func writeOp(b *pebble.Batch, p int, seq uint64, op Op) error {
	if op.PrevExpiresAt != 0 {
		if err := b.Delete(expiryKey(p, op.PrevExpiresAt, op.Key), nil); err != nil {
			return err
		}
	}
	k := dataKey(p, op.Key)
	if op.Delete {
		return b.Delete(k, nil)
	}
	if op.ExpiresAt != 0 {
		if err := b.Set(expiryKey(p, op.ExpiresAt, op.Key), nil, nil); err != nil {
			return err
		}
	}
	return b.Set(k, EncodeRecord(Record{Value: op.Value, Revision: seq, ExpiresAt: op.ExpiresAt}), nil)
}

// commit adds p's metadata at (epoch, seq) to b, commits it durably and
// returns the metadata; the caller holds p's stripe lock.
func (d *DB) commit(b *pebble.Batch, p int, epoch, seq uint64, m Meta) (Meta, error) {
	m.Epoch, m.Seq = epoch, seq
	if err := b.Set(metaKey(p), m.encode(), nil); err != nil {
		return Meta{}, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return Meta{}, fmt.Errorf("commit to partition %d: %w", p, err)
	}
	d.setCached(p, m)
	return m, nil
}

// SetEpoch records that partition p's copy is reconciled at epoch.
func (d *DB) SetEpoch(p int, epoch uint64) error {
	return d.updateMeta(p, func(m *Meta) bool {
		m.Epoch = epoch
		return true
	})
}

// Advance raises partition p's sequence number to at least seq, durably,
// leaving its epoch and pairs alone: a new primary moves its write order
// past every number the previous primary may have handed out.
func (d *DB) Advance(p int, seq uint64) error {
	return d.updateMeta(p, func(m *Meta) bool {
		if m.Seq >= seq {
			return false
		}
		m.Seq = seq
		return true
	})
}

// updateMeta changes p's metadata with change, durably, if it reports a
// change.
func (d *DB) updateMeta(p int, change func(*Meta) bool) error {
	l := d.lock(p)
	l.Lock()
	defer l.Unlock()
	m, err := d.cachedMeta(p)
	if err != nil {
		return err
	}
	if !change(&m) {
		return nil
	}
	if err := d.db.Set(metaKey(p), m.encode(), pebble.Sync); err != nil {
		return err
	}
	d.setCached(p, m)
	return nil
}

// Snapshot calls begin with partition p's metadata and then fn for every
// pair in key order, all from one consistent snapshot, so the pairs are
// exactly the state the metadata describes. The values are records as
// stored (see EncodeRecord). The slices passed to fn are valid only during
// the call.
func (d *DB) Snapshot(p int, begin func(Meta) error, fn func(k, v []byte) error) error {
	snap := d.db.NewSnapshot()
	defer snap.Close()
	_, err := d.snapshotPairs(snap, p, begin, fn)
	return err
}

func (d *DB) snapshotPairs(snap *pebble.Snapshot, p int, begin func(Meta) error, fn func(k, v []byte) error) (Meta, error) {
	m, err := d.meta(snap, p)
	if err != nil {
		return Meta{}, err
	}
	if err := begin(m); err != nil {
		return Meta{}, err
	}
	lo, hi := dataBounds(p)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return Meta{}, fmt.Errorf("snapshot partition %d: %w", p, err)
	}
	for it.First(); it.Valid(); it.Next() {
		if err := fn(it.Key()[len(lo):], it.Value()); err != nil {
			_ = it.Close()
			return Meta{}, err
		}
	}
	return m, it.Close()
}

// Install replaces partition p's copy with the pairs next yields (until it
// returns ok=false) and records epoch and seq, atomically and durably.
func (d *DB) Install(p int, epoch, seq uint64, next func() (KV, bool, error)) error {
	staged, err := d.StageInstall(p, epoch, seq, next, nil)
	if err != nil {
		return err
	}
	defer staged.Close()
	return staged.Commit()
}

// Staged is a partition copy received in full but not yet installed.
type Staged struct {
	d *DB
	p int
	b *pebble.Batch
	m Meta
}

// StageInstall reads a copy of partition p from next into memory, to be
// installed by Commit. Values are records as Snapshot yields them. Then,
// if log is set, the copy's history: log is called once and returns the
// floor and a function that yields the retained entries in order (as
// SnapshotLog passes them); without it the copy has no history before
// seq. Nothing is locked while next runs, however slow.
func (d *DB) StageInstall(p int, epoch, seq uint64, next func() (KV, bool, error), log func() (uint64, func() (LogRecord, bool, error), error)) (*Staged, error) {
	b := d.db.NewBatch()
	if err := deletePartition(b, p); err != nil {
		b.Close()
		return nil, err
	}
	var n uint64
	for {
		kv, ok, err := next()
		if err != nil {
			b.Close()
			return nil, err
		}
		if !ok {
			break
		}
		if len(kv.Key) == 0 {
			b.Close()
			return nil, errors.New("storage: empty key in a partition copy")
		}
		r, err := DecodeRecord(kv.Value)
		if err == nil && r.ExpiresAt != 0 {
			err = b.Set(expiryKey(p, r.ExpiresAt, kv.Key), nil, nil)
		}
		if err == nil {
			err = b.Set(dataKey(p, kv.Key), kv.Value, nil)
		}
		if err != nil {
			b.Close()
			return nil, err
		}
		n++
	}
	m := Meta{Epoch: epoch, Seq: seq, Keys: n, LogFloor: seq}
	if log != nil {
		floor, err := stageLog(b, p, seq, log)
		if err != nil {
			b.Close()
			return nil, err
		}
		m.LogFloor = floor
	}
	if err := b.Set(metaKey(p), m.encode(), nil); err != nil {
		b.Close()
		return nil, err
	}
	return &Staged{d: d, p: p, b: b, m: m}, nil
}

// Commit replaces the partition's whole copy, metadata included, with the
// staged one in one atomic and durable commit.
func (s *Staged) Commit() error {
	l := s.d.lock(s.p)
	l.Lock()
	defer l.Unlock()
	if err := s.b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("install partition %d: %w", s.p, err)
	}
	s.d.setCached(s.p, s.m)
	return nil
}

// Close releases the staged copy (after Commit, or instead of it).
func (s *Staged) Close() { _ = s.b.Close() }

// Keys returns up to limit keys of partition p in order (limit <= 0: all).
func (d *DB) Keys(p int, limit int) ([]string, error) {
	lo, hi := dataBounds(p)
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("list partition %d: %w", p, err)
	}
	var out []string
	for it.First(); it.Valid() && (limit <= 0 || len(out) < limit); it.Next() {
		out = append(out, string(it.Key()[len(lo):]))
	}
	return out, it.Close()
}

// deletePartition adds the deletion of p's pairs, expiry index and
// history to b.
func deletePartition(b *pebble.Batch, p int) error {
	for _, bounds := range [...]func(int) ([]byte, []byte){dataBounds, expiryBounds, logBounds} {
		lo, hi := bounds(p)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
			return err
		}
	}
	return nil
}

// Expired returns up to limit keys of partition p whose deadline is at or
// before now (Unix ms), earliest first, from the expiry index.
func (d *DB) Expired(p int, now int64, limit int) ([][]byte, error) {
	lo, _ := expiryBounds(p)
	hi := binary.BigEndian.AppendUint64(prefix(expiryTag, p), uint64(now)+1)
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("expiry index of partition %d: %w", p, err)
	}
	var out [][]byte
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		out = append(out, bytes.Clone(it.Key()[len(lo)+8:]))
	}
	return out, it.Close()
}

// pebbleLogger sends Pebble's log lines to slog; its chatter goes to
// debug. Damage on disk becomes one line of advice (Pebble's own line is a
// page of stack trace), and the end of each write-ahead log's replay is
// kept at info: it is the only trace of a replay that stopped early.
type pebbleLogger struct {
	l   *slog.Logger
	dir string
}

func (p pebbleLogger) Infof(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.Contains(msg, "stopped reading at offset") {
		p.l.Info("storage: replayed a write-ahead log", "replay", msg)
		return
	}
	p.l.Debug(msg)
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.Contains(msg, "corruption") {
		p.damaged(msg)
		return
	}
	p.l.Error(firstLine(msg))
	p.l.Debug(msg)
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.Contains(msg, "corruption") {
		p.damaged(msg)
	} else {
		p.l.Error("storage failed; stopping", "err", firstLine(msg))
		p.l.Debug(msg)
	}
	os.Exit(1)
}

// damaged logs the one line an operator needs when the store is damaged.
func (p pebbleLogger) damaged(msg string) {
	p.l.Error(DamageAdvice(p.dir), "err", firstLine(msg))
	p.l.Debug(msg)
}

// DamageAdvice says what to do about a damaged store in dir.
func DamageAdvice(dir string) string {
	return fmt.Sprintf("storage in %s is damaged on disk, so this node cannot trust its copies. "+
		"Move %s aside, all of it (a store repaired in place would still be trusted), and start the node again with JOIN_ADDR: "+
		"the cluster sees a new data directory, stops counting the old copies, and copies the node's partitions to it", dir, filepath.Dir(dir))
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// tableVersionKey holds the highest partition-table version this node has
// acted on (see TableVersion).
var tableVersionKey = []byte{'v'}

// TableVersion returns the highest partition-table version recorded with
// SetTableVersion (0 if none). After a restart Raft may replay an older
// snapshot first; the node must not act on a table older than this.
func (d *DB) TableVersion() (uint64, error) {
	v, ok, err := read(d.db, tableVersionKey)
	if err != nil || !ok || len(v) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(v), nil
}

// SetTableVersion durably records v as the highest table version acted on.
func (d *DB) SetTableVersion(v uint64) error {
	return d.db.Set(tableVersionKey, binary.BigEndian.AppendUint64(nil, v), pebble.Sync)
}

// Drop deletes partition p's copy and metadata, durably.
func (d *DB) Drop(p int) error {
	l := d.lock(p)
	l.Lock()
	defer l.Unlock()
	b := d.db.NewBatch()
	defer b.Close()
	if err := deletePartition(b, p); err != nil {
		return err
	}
	if err := b.Delete(metaKey(p), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("drop partition %d: %w", p, err)
	}
	d.setCached(p, Meta{})
	return nil
}
