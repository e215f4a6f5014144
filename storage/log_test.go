package storage

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

func logSeqs(es []LogEntry) []uint64 {
	out := []uint64{}
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

func TestLogEntryRoundTrip(t *testing.T) {
	for _, op := range []Op{
		put("k", "v"),
		{Key: []byte("k"), Value: []byte{}, ExpiresAt: 1_800_000_000_000},
		{Delete: true, Key: []byte("gone")},
		{Delete: true, Expired: true, Key: []byte("\x00bin\xff")},
	} {
		e, err := DecodeLog(9, encodeLog(1234, op))
		if err != nil {
			t.Fatalf("decode %+v: %v", op, err)
		}
		if e.Seq != 9 || e.Time != 1234 || e.Delete != op.Delete || e.Expired != op.Expired ||
			string(e.Key) != string(op.Key) || string(e.Value) != string(op.Value) || e.ExpiresAt != op.ExpiresAt {
			t.Errorf("round trip of %+v = %+v", op, e)
		}
	}
	good := encodeLog(1, put("k", "v"))
	for name, bad := range map[string][]byte{
		"empty":         nil,
		"short":         good[:8],
		"no key":        encodeLog(1, Op{Value: []byte("v")}),
		"cut value":     good[:len(good)-2],
		"trailing":      append(slices.Clone(good), 0, 0),
		"unknown flags": func() []byte { b := slices.Clone(good); b[8] = 0x80; return b }(),
	} {
		if _, err := DecodeLog(1, bad); err == nil {
			t.Errorf("%s: DecodeLog(%q) accepted", name, bad)
		}
	}
}

// Every applied write is in the history, with the number that is its
// key's revision, whatever the path (counted or blind).
func TestApplyAppendsHistory(t *testing.T) {
	db := openDB(t, t.TempDir())
	const p = 3
	mustApply(t, db, p, 1, 1, put("a", "1"))
	if _, err := db.ApplyBatch(p, 1, 2, []Op{put("b", "1"), del("a")}); err != nil {
		t.Fatal(err)
	}
	if err := db.ApplyReplicated(p, 1, 4, []Op{{Key: []byte("c"), Value: []byte("x"), ExpiresAt: 99}, {Delete: true, Expired: true, Key: []byte("c")}}, 1); err != nil {
		t.Fatal(err)
	}
	mustApply(t, db, p+1, 1, 1, put("other", "partition"))
	es, pos, err := db.ReadLog(p, 0, 100, 100, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pos != 5 || !slices.Equal(logSeqs(es), []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("history = %v up to %d, want 1..5 up to 5", logSeqs(es), pos)
	}
	want := []struct {
		key     string
		del     bool
		expired bool
		exp     int64
	}{{"a", false, false, 0}, {"b", false, false, 0}, {"a", true, false, 0}, {"c", false, false, 99}, {"c", true, true, 0}}
	for i, w := range want {
		e := es[i]
		if string(e.Key) != w.key || e.Delete != w.del || e.Expired != w.expired || e.ExpiresAt != w.exp {
			t.Errorf("entry %d = %+v, want %+v", i, e, w)
		}
	}
}

func TestReadLogBounds(t *testing.T) {
	db := openDB(t, t.TempDir())
	const p = 0
	for i := range 20 {
		k := fmt.Sprintf("a%02d", i)
		if i%2 == 1 {
			k = fmt.Sprintf("b%02d", i)
		}
		mustApply(t, db, p, 1, uint64(i+1), put(k, "v"))
	}
	onlyB := func(k []byte) bool { return len(k) > 0 && k[0] == 'b' }
	tests := []struct {
		name        string
		after, upTo uint64
		limit       int
		keep        func([]byte) bool
		want        []uint64
		wantPos     uint64
	}{
		{"all", 0, 20, 100, nil, seqRange(1, 20), 20},
		{"after a position", 15, 20, 100, nil, seqRange(16, 20), 20},
		{"up to the committed position only", 0, 5, 100, nil, seqRange(1, 5), 5},
		{"limit stops before the rest", 0, 20, 3, nil, seqRange(1, 3), 3},
		{"filter reads past what it drops", 0, 20, 100, onlyB, []uint64{2, 4, 6, 8, 10, 12, 14, 16, 18, 20}, 20},
		{"filter and limit", 0, 20, 2, onlyB, []uint64{2, 4}, 4},
		{"nothing new", 20, 20, 100, nil, []uint64{}, 20},
		{"upTo past the copy", 18, 99, 100, nil, seqRange(19, 20), 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es, pos, err := db.ReadLog(p, tt.after, tt.upTo, tt.limit, 1<<20, tt.keep)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(logSeqs(es), tt.want) || pos != tt.wantPos {
				t.Errorf("ReadLog = %v up to %d, want %v up to %d", logSeqs(es), pos, tt.want, tt.wantPos)
			}
		})
	}
}

func seqRange(a, b uint64) []uint64 {
	var out []uint64
	for i := a; i <= b; i++ {
		out = append(out, i)
	}
	return out
}

// Trimming raises the floor; a read from below it is refused with the
// floor, never answered with a silent gap.
func TestTrimLog(t *testing.T) {
	db := openDB(t, t.TempDir())
	const p = 1
	for i := range 10 {
		mustApply(t, db, p, 1, uint64(i+1), put(fmt.Sprint(i), "v"))
	}
	floor, err := db.TrimLog(p, 4, 0)
	if err != nil || floor != 6 {
		t.Fatalf("TrimLog(keep 4) = %d, %v; want floor 6", floor, err)
	}
	if m := mustMeta(t, db, p); m.LogFloor != 6 {
		t.Errorf("meta floor = %d, want 6", m.LogFloor)
	}
	_, _, err = db.ReadLog(p, 5, 10, 100, 1<<20, nil)
	var c *ErrCompacted
	if !errors.As(err, &c) || c.Floor != 6 || c.Partition != p {
		t.Fatalf("ReadLog below the floor = %v, want ErrCompacted{floor 6}", err)
	}
	es, _, err := db.ReadLog(p, 6, 10, 100, 1<<20, nil)
	if err != nil || !slices.Equal(logSeqs(es), seqRange(7, 10)) {
		t.Errorf("ReadLog from the floor = %v, %v; want 7..10", logSeqs(es), err)
	}
	// Age: everything committed before now goes, the floor follows.
	if floor, err := db.TrimLog(p, 1000, time.Now().Add(time.Hour).UnixMilli()); err != nil || floor != 10 {
		t.Errorf("TrimLog(by age) = %d, %v; want floor 10", floor, err)
	}
	// The floor never goes back, and the data stays.
	if floor, err := db.TrimLog(p, 1000, 0); err != nil || floor != 10 {
		t.Errorf("TrimLog again = %d, %v; want floor 10", floor, err)
	}
	if v, ok := get(t, db, p, "3"); !ok || v != "v" {
		t.Errorf("trimming history touched the data: %q, %v", v, ok)
	}
}

// A store written before the history existed has none: its floor is its
// write number, so a reader is told to resync instead of reading nothing.
func TestOldMetaHasFloorAtSeq(t *testing.T) {
	m := decodeMeta(Meta{Epoch: 2, Seq: 40, Keys: 3}.encode()[:metaLenV1])
	if m.LogFloor != 40 || m.Seq != 40 || m.Epoch != 2 || m.Keys != 3 {
		t.Errorf("decoded old meta = %+v", m)
	}
}

// A copy carries its history: install replaces the receiver's, and the
// floor travels too.
func TestInstallReplacesHistory(t *testing.T) {
	src, dst := openDB(t, t.TempDir()), openDB(t, t.TempDir())
	const p = 2
	for i := range 6 {
		mustApply(t, src, p, 1, uint64(i+1), put(fmt.Sprint(i), "v"))
	}
	if _, err := src.TrimLog(p, 3, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 9 {
		mustApply(t, dst, p, 1, uint64(i+1), put("stale", fmt.Sprint(i)))
	}
	var pairs []KV
	var floor uint64
	var log []LogRecord
	err := src.SnapshotLog(p, func(Meta) error { return nil }, func(k, v []byte) error {
		pairs = append(pairs, KV{Key: slices.Clone(k), Value: slices.Clone(v)})
		return nil
	}, func(f uint64) error { floor = f; return nil }, func(seq uint64, raw []byte) error {
		log = append(log, LogRecord{Seq: seq, Raw: slices.Clone(raw)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	staged, err := dst.StageInstall(p, 4, 6, kvIter(pairs), func() (uint64, func() (LogRecord, bool, error), error) {
		return floor, func() (LogRecord, bool, error) {
			if len(log) == 0 {
				return LogRecord{}, false, nil
			}
			r := log[0]
			log = log[1:]
			return r, true, nil
		}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer staged.Close()
	if err := staged.Commit(); err != nil {
		t.Fatal(err)
	}
	m := mustMeta(t, dst, p)
	if m.LogFloor != 3 || m.Seq != 6 || m.Epoch != 4 {
		t.Errorf("installed meta = %+v, want floor 3 at seq 6 epoch 4", m)
	}
	es, _, err := dst.ReadLog(p, 3, 6, 100, 1<<20, nil)
	if err != nil || !slices.Equal(logSeqs(es), []uint64{4, 5, 6}) {
		t.Errorf("installed history = %v, %v; want 4..6 (the receiver's own 7..9 gone)", logSeqs(es), err)
	}
	// History out of order or past the copy is refused.
	for name, bad := range map[string][]LogRecord{
		"past the copy": {{Seq: 7, Raw: encodeLog(1, put("x", "y"))}},
		"out of order":  {{Seq: 5, Raw: encodeLog(1, put("x", "y"))}, {Seq: 4, Raw: encodeLog(1, put("x", "y"))}},
		"malformed":     {{Seq: 4, Raw: []byte("junk")}},
		"at the floor":  {{Seq: 3, Raw: encodeLog(1, put("x", "y"))}},
	} {
		recs := bad
		_, err := dst.StageInstall(p, 4, 6, kvIter(nil), func() (uint64, func() (LogRecord, bool, error), error) {
			return 3, func() (LogRecord, bool, error) {
				if len(recs) == 0 {
					return LogRecord{}, false, nil
				}
				r := recs[0]
				recs = recs[1:]
				return r, true, nil
			}, nil
		})
		if err == nil {
			t.Errorf("%s: StageInstall accepted the history", name)
		}
	}
}

// A trim running beside readers never makes a read skip an entry: each
// read either sees the entries after its position or is told the floor.
func TestReadLogDuringTrim(t *testing.T) {
	db := openDB(t, t.TempDir())
	const p, n = 0, 2000
	for i := range n {
		mustApply(t, db, p, 1, uint64(i+1), put(fmt.Sprint(i), "v"))
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for keep := uint64(n); keep > 0; keep -= 50 {
			if _, err := db.TrimLog(p, keep, 0); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for pos := uint64(0); pos < n; {
		es, next, err := db.ReadLog(p, pos, n, 64, 1<<20, nil)
		var c *ErrCompacted
		if errors.As(err, &c) {
			pos = c.Floor
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range es {
			if e.Seq != pos+uint64(i)+1 {
				t.Fatalf("read after %d returned %v: a gap", pos, logSeqs(es))
			}
		}
		pos = next
	}
	wg.Wait()
}

func TestScan(t *testing.T) {
	db := openDB(t, t.TempDir())
	const p = 5
	for i, k := range []string{"a", "b1", "b2", "b3", "c"} {
		mustApply(t, db, p, 1, uint64(i+1), put(k, "val-"+k))
	}
	mustApply(t, db, p, 1, 6, Op{Key: []byte("b4"), Value: []byte("x"), ExpiresAt: 1000})
	mustApply(t, db, p+1, 1, 1, put("b0", "other partition"))
	keys := func(items []Item) []string {
		out := []string{}
		for _, it := range items {
			out = append(out, string(it.Key))
		}
		return out
	}
	tests := []struct {
		name       string
		start, end string
		hasEnd     bool
		exclusive  bool
		limit      int
		now        int64
		want       []string
		wantMore   bool
	}{
		{"whole partition", "", "", false, false, 100, 0, []string{"a", "b1", "b2", "b3", "b4", "c"}, false},
		{"range end exclusive", "b", "b3", true, false, 100, 0, []string{"b1", "b2"}, false},
		{"after a key", "b1", "c", true, true, 100, 0, []string{"b2", "b3", "b4"}, false},
		{"limit", "", "", false, false, 2, 0, []string{"a", "b1"}, true},
		{"expired keys are skipped", "b", "c", true, false, 100, 1000, []string{"b1", "b2", "b3"}, false},
		{"empty range", "x", "y", true, false, 100, 0, []string{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var end []byte
			if tt.hasEnd {
				end = []byte(tt.end)
			}
			items, more, err := db.Scan(p, []byte(tt.start), end, tt.exclusive, tt.limit, 1<<20, true, tt.now)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(keys(items), tt.want) || more != tt.wantMore {
				t.Errorf("Scan = %v more=%v, want %v more=%v", keys(items), more, tt.want, tt.wantMore)
			}
			for _, it := range items {
				if string(it.Value) != "val-"+string(it.Key) && string(it.Key) != "b4" {
					t.Errorf("item %q has value %q", it.Key, it.Value)
				}
			}
		})
	}
	// Without values, and bounded by bytes (always at least one item).
	items, more, err := db.Scan(p, nil, nil, false, 100, 1, false, 0)
	if err != nil || len(items) != 1 || !more || items[0].Value != nil {
		t.Errorf("Scan(maxBytes 1, no values) = %+v more=%v, %v", items, more, err)
	}
}

// Drop removes the history with the copy.
func TestDropRemovesHistory(t *testing.T) {
	db := openDB(t, t.TempDir())
	mustApply(t, db, 0, 1, 1, put("a", "v"))
	if err := db.Drop(0); err != nil {
		t.Fatal(err)
	}
	lo, hi := logBounds(0)
	it, err := db.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	if it.First() {
		t.Errorf("history entry %x left after Drop", it.Key())
	}
}
