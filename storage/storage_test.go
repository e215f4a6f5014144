package storage

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// ---------------------------------------------------------------------------
// helpers

// testLogger sends Pebble's warnings and errors to the test output; its
// info chatter goes to debug and is dropped.
func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// closer wraps a DB so tests can close it explicitly (to reopen the
// directory) while t.Cleanup still closes it in every other case.
type closer struct {
	*DB
	once sync.Once
	err  error
}

func (c *closer) close() error {
	c.once.Do(func() { c.err = c.DB.Close() })
	return c.err
}

func openDB(tb testing.TB, dir string) *closer {
	tb.Helper()
	db, err := Open(dir, Options{Logger: testLogger(tb)})
	if err != nil {
		tb.Fatalf("Open(%s): %v", dir, err)
	}
	c := &closer{DB: db}
	tb.Cleanup(func() {
		if err := c.close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return c
}

func put(k, v string) Op { return Op{Key: []byte(k), Value: []byte(v)} }
func del(k string) Op    { return Op{Delete: true, Key: []byte(k)} }

func mustApply(tb testing.TB, db *closer, p int, epoch, seq uint64, op Op) {
	tb.Helper()
	if err := db.Apply(p, epoch, seq, op); err != nil {
		tb.Fatalf("Apply(p=%d, seq=%d, %q): %v", p, seq, op.Key, err)
	}
}

func mustMeta(tb testing.TB, db *closer, p int) Meta {
	tb.Helper()
	m, err := db.Meta(p)
	if err != nil {
		tb.Fatalf("Meta(%d): %v", p, err)
	}
	return m
}

func mustKeys(tb testing.TB, db *closer, p, limit int) []string {
	tb.Helper()
	k, err := db.Keys(p, limit)
	if err != nil {
		tb.Fatalf("Keys(%d): %v", p, err)
	}
	return k
}

// get returns the value and presence of key, failing on I/O errors.
func get(tb testing.TB, db *closer, p int, key string) (string, bool) {
	tb.Helper()
	v, ok, err := db.Get(p, []byte(key))
	if err != nil {
		tb.Fatalf("Get(%d, %q): %v", p, key, err)
	}
	return string(v.Value), ok
}

// dump returns everything Snapshot yields for p, copying the iterator's
// key and value buffers (they are only valid during the callback), with
// each record's value only: tests compare values with kv pairs.
func dump(tb testing.TB, db *closer, p int) (Meta, []KV) {
	tb.Helper()
	var m Meta
	var out []KV
	err := db.Snapshot(p,
		func(mm Meta) error { m = mm; return nil },
		func(k, v []byte) error {
			r, err := DecodeRecord(v)
			if err != nil {
				return err
			}
			out = append(out, KV{Key: bytes.Clone(k), Value: bytes.Clone(r.Value)})
			return nil
		})
	if err != nil {
		tb.Fatalf("Snapshot(%d): %v", p, err)
	}
	return m, out
}

// kvIter turns a slice of pairs into the next func Install takes, each
// value as a record of revision 1.
func kvIter(kvs []KV) func() (KV, bool, error) {
	i := 0
	return func() (KV, bool, error) {
		if i == len(kvs) {
			return KV{}, false, nil
		}
		i++
		return KV{Key: kvs[i-1].Key, Value: EncodeRecord(Record{Value: kvs[i-1].Value, Revision: 1})}, true, nil
	}
}

func kv(k, v string) KV { return KV{Key: []byte(k), Value: []byte(v)} }

func kvString(kvs []KV) string {
	var b bytes.Buffer
	for _, p := range kvs {
		fmt.Fprintf(&b, "%q=%q ", p.Key, p.Value)
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Apply

func TestApply(t *testing.T) {
	type write struct {
		epoch, seq uint64
		op         Op
	}
	cases := []struct {
		name     string
		writes   []write
		want     map[string]string // key -> value that must be present
		absent   []string
		wantMeta Meta
	}{
		{
			name:     "put",
			writes:   []write{{1, 1, put("a", "1")}},
			want:     map[string]string{"a": "1"},
			wantMeta: Meta{Epoch: 1, Seq: 1, Keys: 1},
		},
		{
			name:     "overwrite counts the key once",
			writes:   []write{{1, 1, put("a", "1")}, {1, 2, put("a", "2")}},
			want:     map[string]string{"a": "2"},
			wantMeta: Meta{Epoch: 1, Seq: 2, Keys: 1},
		},
		{
			name:     "delete",
			writes:   []write{{1, 1, put("a", "1")}, {1, 2, put("b", "2")}, {1, 3, del("a")}},
			want:     map[string]string{"b": "2"},
			absent:   []string{"a"},
			wantMeta: Meta{Epoch: 1, Seq: 3, Keys: 1},
		},
		{
			// A delete of an absent key still advances Seq (the replica
			// applied write number seq) but must not decrement Keys.
			name:     "delete missing",
			writes:   []write{{1, 1, put("a", "1")}, {1, 2, del("zz")}},
			want:     map[string]string{"a": "1"},
			absent:   []string{"zz"},
			wantMeta: Meta{Epoch: 1, Seq: 2, Keys: 1},
		},
		{
			name:     "delete missing on empty partition",
			writes:   []write{{4, 9, del("a")}},
			absent:   []string{"a"},
			wantMeta: Meta{Epoch: 4, Seq: 9, Keys: 0},
		},
		{
			name:     "delete twice",
			writes:   []write{{1, 1, put("a", "1")}, {1, 2, del("a")}, {1, 3, del("a")}},
			absent:   []string{"a"},
			wantMeta: Meta{Epoch: 1, Seq: 3, Keys: 0},
		},
		{
			name:     "put after delete counts again",
			writes:   []write{{1, 1, put("a", "1")}, {1, 2, del("a")}, {1, 3, put("a", "3")}},
			want:     map[string]string{"a": "3"},
			wantMeta: Meta{Epoch: 1, Seq: 3, Keys: 1},
		},
		{
			name:     "new epoch recorded",
			writes:   []write{{1, 7, put("a", "1")}, {2, 1, put("b", "2")}},
			want:     map[string]string{"a": "1", "b": "2"},
			wantMeta: Meta{Epoch: 2, Seq: 1, Keys: 2},
		},
		{
			name:     "empty value is a present key",
			writes:   []write{{1, 1, put("a", "")}},
			want:     map[string]string{"a": ""},
			wantMeta: Meta{Epoch: 1, Seq: 1, Keys: 1},
		},
		{
			name:     "binary keys",
			writes:   []write{{1, 1, put("\x00", "z")}, {1, 2, put("\xff\xff\xff\xff\xff", "f")}, {1, 3, put("a\x00b", "n")}},
			want:     map[string]string{"\x00": "z", "\xff\xff\xff\xff\xff": "f", "a\x00b": "n"},
			absent:   []string{"a", "a\x00"},
			wantMeta: Meta{Epoch: 1, Seq: 3, Keys: 3},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := openDB(t, t.TempDir())
			const p = 7
			for _, w := range c.writes {
				mustApply(t, db, p, w.epoch, w.seq, w.op)
			}
			for k, v := range c.want {
				if got, ok := get(t, db, p, k); !ok || got != v {
					t.Errorf("Get(%q) = %q, %v; want %q, true", k, got, ok, v)
				}
			}
			for _, k := range c.absent {
				if got, ok := get(t, db, p, k); ok {
					t.Errorf("Get(%q) = %q, want absent", k, got)
				}
			}
			if m := mustMeta(t, db, p); m != c.wantMeta {
				t.Errorf("Meta = %+v, want %+v", m, c.wantMeta)
			}
			// Keys must agree with the counter, or Meta.Keys drifts.
			if n := len(mustKeys(t, db, p, 0)); uint64(n) != c.wantMeta.Keys {
				t.Errorf("Keys() lists %d keys, Meta.Keys = %d", n, c.wantMeta.Keys)
			}
		})
	}
}

func TestApplyEmptyKeyRefused(t *testing.T) {
	db := openDB(t, t.TempDir())
	mustApply(t, db, 1, 1, 1, put("a", "1"))
	for _, op := range []Op{put("", "x"), del(""), {Key: nil, Value: []byte("x")}} {
		if err := db.Apply(1, 1, 2, op); err == nil {
			t.Fatalf("Apply(%+v) accepted an empty key", op)
		}
	}
	// A refused write must not advance the metadata.
	if m := mustMeta(t, db, 1); m != (Meta{Epoch: 1, Seq: 1, Keys: 1}) {
		t.Fatalf("Meta = %+v after refused writes", m)
	}
}

func TestGetReturnsCopy(t *testing.T) {
	db := openDB(t, t.TempDir())
	mustApply(t, db, 1, 1, 1, put("a", "value"))
	v, _, _ := db.Get(1, []byte("a"))
	copy(v.Value, "XXXXX") // the caller owns what Get returns
	if got, _ := get(t, db, 1, "a"); got != "value" {
		t.Fatalf("stored value changed through Get's result: %q", got)
	}
}

// ---------------------------------------------------------------------------
// partition isolation

func TestPartitionIsolation(t *testing.T) {
	// Pairs whose encodings would collide under a textual or variable-width
	// prefix ("1" is a prefix of "10"), and neighbours across byte
	// boundaries of the 4-byte big-endian partition number.
	cases := []struct{ p, q int }{
		{1, 2}, {1, 10}, {1, 256}, {0, 1}, {255, 256}, {256, 257}, {16, 1 << 24},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%d_vs_%d", c.p, c.q), func(t *testing.T) {
			db := openDB(t, t.TempDir())
			// Populate p and its numeric neighbours, and q.
			parts := []int{c.p, c.p + 1, c.q}
			if c.p > 0 {
				parts = append(parts, c.p-1)
			}
			slices.Sort(parts)
			parts = slices.Compact(parts)
			for _, p := range parts {
				// "\xff..." sorts last: it must still fall inside p's range.
				for i, k := range []string{"shared", "\x00", "\xff\xff\xff\xff\xff", "own-" + strconv.Itoa(p)} {
					mustApply(t, db, p, uint64(p+1), uint64(i+1), put(k, fmt.Sprintf("v%d", p)))
				}
			}
			own := func(p int) []string {
				return []string{"\x00", "own-" + strconv.Itoa(p), "shared", "\xff\xff\xff\xff\xff"}
			}
			for _, p := range parts {
				if got, want := mustKeys(t, db, p, 0), own(p); !slices.Equal(got, want) {
					t.Fatalf("Keys(%d) = %q, want %q", p, got, want)
				}
				m, pairs := dump(t, db, p)
				if m != (Meta{Epoch: uint64(p + 1), Seq: 4, Keys: 4}) {
					t.Fatalf("Snapshot(%d) meta = %+v", p, m)
				}
				for _, kv := range pairs {
					if string(kv.Value) != fmt.Sprintf("v%d", p) {
						t.Fatalf("Snapshot(%d) yielded a pair of another partition: %s", p, kvString(pairs))
					}
				}
				if len(pairs) != 4 {
					t.Fatalf("Snapshot(%d) yielded %d pairs: %s", p, len(pairs), kvString(pairs))
				}
				if v, _ := get(t, db, p, "shared"); v != fmt.Sprintf("v%d", p) {
					t.Fatalf("Get(%d, shared) = %q", p, v)
				}
			}

			// Changing p leaves q alone, both ways round.
			mustApply(t, db, c.p, 1, 10, del("shared"))
			if _, ok := get(t, db, c.q, "shared"); !ok {
				t.Fatalf("delete in %d removed the key from %d", c.p, c.q)
			}
			if err := db.Install(c.q, 9, 9, kvIter(nil)); err != nil {
				t.Fatal(err)
			}
			if got := mustKeys(t, db, c.p, 0); len(got) != 3 {
				t.Fatalf("emptying %d changed %d: %q", c.q, c.p, got)
			}
			if m := mustMeta(t, db, c.p); m.Keys != 3 || m.Seq != 10 {
				t.Fatalf("Meta(%d) = %+v", c.p, m)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Snapshot

func TestSnapshotConsistent(t *testing.T) {
	db := openDB(t, t.TempDir())
	const p, n = 3, 200
	want := make([]KV, 0, n)
	for i := range n {
		k, v := fmt.Sprintf("k%04d", i), fmt.Sprintf("v%d", i)
		mustApply(t, db, p, 2, uint64(i+1), put(k, v))
		want = append(want, kv(k, v))
	}

	t.Run("meta matches pairs", func(t *testing.T) {
		m, got := dump(t, db, p)
		if m != (Meta{Epoch: 2, Seq: n, Keys: n}) {
			t.Fatalf("meta = %+v", m)
		}
		if !slices.EqualFunc(got, want, kvEqual) {
			t.Fatalf("pairs differ from what was written (%d vs %d)", len(got), len(want))
		}
	})

	t.Run("writes during the snapshot are invisible", func(t *testing.T) {
		// Writes land after the snapshot was taken but before and during
		// iteration: overwrite, delete and insert keys that have not been
		// visited yet. None may show up, or a receiver would install pairs
		// that do not match the Seq it was given.
		seq := uint64(n)
		write := func(op Op) {
			seq++
			mustApply(t, db, p, 2, seq, op)
		}
		var m Meta
		var got []KV
		err := db.Snapshot(p,
			func(mm Meta) error {
				m = mm
				write(put("k0150", "changed"))
				write(del("k0199"))
				write(put("k0100x", "inserted"))
				return nil
			},
			func(k, v []byte) error {
				if len(got) == 0 {
					write(put("k0151", "changed"))
					write(del("k0198"))
					write(put("zzz", "inserted"))
				}
				r, err := DecodeRecord(v)
				got = append(got, KV{bytes.Clone(k), bytes.Clone(r.Value)})
				return err
			})
		if err != nil {
			t.Fatal(err)
		}
		if m != (Meta{Epoch: 2, Seq: n, Keys: n}) {
			t.Fatalf("meta = %+v, want the pre-write state", m)
		}
		if !slices.EqualFunc(got, want, kvEqual) {
			t.Fatalf("snapshot saw concurrent writes: %d pairs", len(got))
		}
		// And the writes did happen.
		if v, _ := get(t, db, p, "k0150"); v != "changed" {
			t.Fatalf("k0150 = %q", v)
		}
		if m := mustMeta(t, db, p); m.Seq != n+6 || m.Keys != n {
			t.Fatalf("meta after writes = %+v", m)
		}
	})

	t.Run("concurrent writers under race", func(t *testing.T) {
		// A free-running writer on the same partition while several
		// snapshots iterate: every snapshot must be internally consistent
		// (its Keys equals the number of pairs it yields).
		stop := make(chan struct{})
		var writes atomic.Int64
		var wg sync.WaitGroup
		wg.Go(func() {
			seq := uint64(10_000)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				seq++
				op := put(fmt.Sprintf("c%03d", i%50), "x")
				if i%3 == 0 {
					op = del(fmt.Sprintf("c%03d", (i+7)%50))
				}
				if err := db.Apply(p, 2, seq, op); err != nil {
					t.Error(err)
					return
				}
				writes.Add(1)
			}
		})
		// Keep snapshotting until the writer has really overlapped with
		// several of them (bounded, in case the writer failed).
		for i := 0; i < 20 || (writes.Load() < 200 && i < 5000); i++ {
			m, pairs := dump(t, db, p)
			if uint64(len(pairs)) != m.Keys {
				t.Errorf("snapshot meta Keys=%d but %d pairs", m.Keys, len(pairs))
			}
		}
		close(stop)
		wg.Wait()
	})

	t.Run("callback errors abort", func(t *testing.T) {
		boom := errors.New("boom")
		if err := db.Snapshot(p, func(Meta) error { return boom }, func(k, v []byte) error {
			t.Fatal("fn called after begin failed")
			return nil
		}); !errors.Is(err, boom) {
			t.Fatalf("begin error: got %v", err)
		}
		calls := 0
		if err := db.Snapshot(p, func(Meta) error { return nil }, func(k, v []byte) error {
			calls++
			return boom
		}); !errors.Is(err, boom) || calls != 1 {
			t.Fatalf("fn error: got %v after %d calls", err, calls)
		}
	})
}

func kvEqual(a, b KV) bool { return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) }

// ---------------------------------------------------------------------------
// Install

func TestInstall(t *testing.T) {
	const p, other = 3, 4
	setup := func(t *testing.T) *closer {
		db := openDB(t, t.TempDir())
		mustApply(t, db, p, 1, 1, put("a", "A"))
		mustApply(t, db, p, 1, 2, put("b", "B"))
		mustApply(t, db, p, 1, 3, put("c", "C"))
		mustApply(t, db, other, 1, 5, put("x", "X"))
		mustApply(t, db, p-1, 1, 6, put("y", "Y"))
		return db
	}
	neighboursUntouched := func(t *testing.T, db *closer) {
		t.Helper()
		if m, pairs := dump(t, db, other); m != (Meta{Epoch: 1, Seq: 5, Keys: 1}) || len(pairs) != 1 || string(pairs[0].Value) != "X" {
			t.Fatalf("partition %d changed: %+v %s", other, m, kvString(pairs))
		}
		if m, pairs := dump(t, db, p-1); m != (Meta{Epoch: 1, Seq: 6, Keys: 1}) || len(pairs) != 1 {
			t.Fatalf("partition %d changed: %+v %s", p-1, m, kvString(pairs))
		}
	}

	cases := []struct {
		name     string
		pairs    []KV
		wantKeys []string
	}{
		{"replaces wholesale", []KV{kv("b", "B2"), kv("d", "D")}, []string{"b", "d"}},
		{"empty install clears", nil, nil},
		{"binary and empty values", []KV{kv("\x00", ""), kv("\xff\xff", "f")}, []string{"\x00", "\xff\xff"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := setup(t)
			if err := db.Install(p, 5, 42, kvIter(c.pairs)); err != nil {
				t.Fatal(err)
			}
			if got := mustKeys(t, db, p, 0); !slices.Equal(got, c.wantKeys) {
				t.Fatalf("Keys = %q, want %q", got, c.wantKeys)
			}
			for _, kv := range c.pairs {
				if v, ok := get(t, db, p, string(kv.Key)); !ok || v != string(kv.Value) {
					t.Fatalf("Get(%q) = %q, %v", kv.Key, v, ok)
				}
			}
			for _, k := range []string{"a", "c"} {
				if _, ok := get(t, db, p, k); ok {
					t.Fatalf("old key %q survived the install", k)
				}
			}
			if m := mustMeta(t, db, p); m != (Meta{Epoch: 5, Seq: 42, Keys: uint64(len(c.pairs)), LogFloor: 42}) {
				t.Fatalf("Meta = %+v", m)
			}
			neighboursUntouched(t, db)
			// The key count keeps working from the installed value.
			mustApply(t, db, p, 5, 43, put("new", "N"))
			if m := mustMeta(t, db, p); m.Keys != uint64(len(c.pairs))+1 || m.Seq != 43 {
				t.Fatalf("Meta after apply = %+v", m)
			}
		})
	}

	t.Run("next error leaves old copy intact", func(t *testing.T) {
		db := setup(t)
		beforeMeta, beforePairs := dump(t, db, p)
		boom := errors.New("stream broken")
		i := 0
		err := db.Install(p, 5, 42, func() (KV, bool, error) {
			i++
			if i <= 2 {
				return KV{Key: fmt.Appendf(nil, "n%d", i), Value: EncodeRecord(Record{Value: []byte("N")})}, true, nil
			}
			return KV{}, false, boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Install err = %v, want %v", err, boom)
		}
		afterMeta, afterPairs := dump(t, db, p)
		if afterMeta != beforeMeta || !slices.EqualFunc(afterPairs, beforePairs, kvEqual) {
			t.Fatalf("failed install changed the partition:\nbefore %+v %s\nafter  %+v %s",
				beforeMeta, kvString(beforePairs), afterMeta, kvString(afterPairs))
		}
		neighboursUntouched(t, db)
	})
}

// ---------------------------------------------------------------------------
// durability, Keys, SetEpoch

func TestReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	mustApply(t, db, 1, 3, 1, put("a", "A"))
	mustApply(t, db, 1, 3, 2, put("b", "B"))
	mustApply(t, db, 1, 3, 3, del("a"))
	mustApply(t, db, 300, 1, 1, put("z", "Z"))
	if err := db.SetEpoch(300, 8); err != nil {
		t.Fatal(err)
	}
	if err := db.Install(2, 4, 17, kvIter([]KV{kv("i", "I")})); err != nil {
		t.Fatal(err)
	}
	if err := db.close(); err != nil {
		t.Fatal(err)
	}

	db = openDB(t, dir)
	checks := []struct {
		p      int
		key    string
		val    string
		exists bool
		meta   Meta
	}{
		{1, "b", "B", true, Meta{Epoch: 3, Seq: 3, Keys: 1}},
		{1, "a", "", false, Meta{Epoch: 3, Seq: 3, Keys: 1}},
		{300, "z", "Z", true, Meta{Epoch: 8, Seq: 1, Keys: 1}},
		// Installed without history: it starts at the copy.
		{2, "i", "I", true, Meta{Epoch: 4, Seq: 17, Keys: 1, LogFloor: 17}},
	}
	for _, c := range checks {
		if v, ok := get(t, db, c.p, c.key); ok != c.exists || v != c.val {
			t.Errorf("after reopen Get(%d, %q) = %q, %v; want %q, %v", c.p, c.key, v, ok, c.val, c.exists)
		}
		if m := mustMeta(t, db, c.p); m != c.meta {
			t.Errorf("after reopen Meta(%d) = %+v, want %+v", c.p, m, c.meta)
		}
	}
}

func TestKeysLimit(t *testing.T) {
	db := openDB(t, t.TempDir())
	all := []string{"a", "b", "c", "d", "e"}
	// Written out of order: Keys returns key order, not write order.
	for i, k := range []string{"c", "a", "e", "b", "d"} {
		mustApply(t, db, 1, 1, uint64(i+1), put(k, k))
	}
	mustApply(t, db, 2, 1, 1, put("0", "other partition"))
	cases := []struct {
		limit int
		want  []string
	}{
		{-1, all}, {0, all}, {1, all[:1]}, {3, all[:3]}, {5, all}, {100, all},
	}
	for _, c := range cases {
		t.Run(strconv.Itoa(c.limit), func(t *testing.T) {
			if got := mustKeys(t, db, 1, c.limit); !slices.Equal(got, c.want) {
				t.Fatalf("Keys(1, %d) = %q, want %q", c.limit, got, c.want)
			}
		})
	}
	if got := mustKeys(t, db, 9, 0); len(got) != 0 {
		t.Fatalf("empty partition lists %q", got)
	}
}

func TestSetEpoch(t *testing.T) {
	db := openDB(t, t.TempDir())
	mustApply(t, db, 5, 1, 1, put("a", "A"))
	mustApply(t, db, 5, 1, 2, put("b", "B"))
	mustApply(t, db, 5, 1, 3, put("c", "C"))
	if err := db.SetEpoch(5, 7); err != nil {
		t.Fatal(err)
	}
	if m := mustMeta(t, db, 5); m != (Meta{Epoch: 7, Seq: 3, Keys: 3}) {
		t.Fatalf("Meta = %+v, want epoch 7 with seq and keys kept", m)
	}
	if got := mustKeys(t, db, 5, 0); len(got) != 3 {
		t.Fatalf("SetEpoch touched the data: %q", got)
	}
	// On a partition that holds nothing, only the epoch is set.
	if err := db.SetEpoch(6, 2); err != nil {
		t.Fatal(err)
	}
	if m := mustMeta(t, db, 6); m != (Meta{Epoch: 2}) {
		t.Fatalf("Meta(6) = %+v", m)
	}
}

// ---------------------------------------------------------------------------
// concurrency (run with -race)

func TestConcurrentApply(t *testing.T) {
	t.Run("different partitions", func(t *testing.T) {
		db := openDB(t, t.TempDir())
		// 0 and 64 (and 1 and 65) share a lock stripe: they contend for the
		// same mutex but must not mix their metadata.
		parts := []int{0, 1, 2, 3, 64, 65, 300, 1000}
		const perPart = 40
		var wg sync.WaitGroup
		for _, p := range parts {
			wg.Go(func() {
				for i := range perPart {
					if err := db.Apply(p, 1, uint64(i+1), put(fmt.Sprintf("k%d", i), "v")); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		for _, p := range parts {
			if m := mustMeta(t, db, p); m != (Meta{Epoch: 1, Seq: perPart, Keys: perPart}) {
				t.Errorf("Meta(%d) = %+v", p, m)
			}
		}
	})

	t.Run("same partition, caller serialises seqs", func(t *testing.T) {
		// The primary holds a per-partition lock while it assigns the next
		// sequence number and persists the write; mimic that.
		db := openDB(t, t.TempDir())
		const p, workers, each = 9, 8, 30
		var mu sync.Mutex
		var seq uint64
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					mu.Lock()
					seq++
					err := db.Apply(p, 1, seq, put(fmt.Sprintf("w%d-%d", w, i), "v"))
					mu.Unlock()
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if m := mustMeta(t, db, p); m != (Meta{Epoch: 1, Seq: workers * each, Keys: workers * each}) {
			t.Fatalf("Meta = %+v, want seq and keys %d", m, workers*each)
		}
	})

	t.Run("same partition, overlapping keys, no caller lock", func(t *testing.T) {
		// Without any caller lock, the store's own stripe lock must still
		// keep the read-modify-write of Meta.Keys exact: every worker puts
		// the same 20 keys, then half of them delete the same 5.
		db := openDB(t, t.TempDir())
		const p, workers, keys = 11, 8, 20
		var seq atomic.Uint64
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range keys {
					if err := db.Apply(p, 1, seq.Add(1), put(fmt.Sprintf("k%02d", i), strconv.Itoa(w))); err != nil {
						t.Error(err)
						return
					}
				}
				if w%2 == 0 {
					for i := range 5 {
						if err := db.Apply(p, 1, seq.Add(1), del(fmt.Sprintf("k%02d", i))); err != nil {
							t.Error(err)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		m := mustMeta(t, db, p)
		listed := uint64(len(mustKeys(t, db, p, 0)))
		if m.Keys != listed {
			t.Fatalf("Meta.Keys = %d but %d keys stored", m.Keys, listed)
		}
		if listed < keys-5 || listed > keys {
			t.Fatalf("%d keys stored, want between %d and %d", listed, keys-5, keys)
		}
	})
}

// ---------------------------------------------------------------------------
// benchmarks

var benchValue = bytes.Repeat([]byte("v"), 100)

func BenchmarkApply(b *testing.B) {
	db := openDB(b, b.TempDir())
	b.SetBytes(int64(len(benchValue)))
	b.ReportAllocs()
	var seq uint64
	for b.Loop() {
		seq++
		if err := db.Apply(0, 1, seq, Op{Key: strconv.AppendUint([]byte("key-"), seq%10_000, 10), Value: benchValue}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkApplyParallel(b *testing.B) {
	db := openDB(b, b.TempDir())
	var nextPart atomic.Int64
	b.SetBytes(int64(len(benchValue)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// One partition per goroutine, as one primary per partition would.
		p := int(nextPart.Add(1))
		var seq uint64
		for pb.Next() {
			seq++
			if err := db.Apply(p, 1, seq, Op{Key: strconv.AppendUint([]byte("key-"), seq%10_000, 10), Value: benchValue}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// loadForGet fills partition 0 with n keys for the Get benchmarks.
func loadForGet(b *testing.B, db *closer, n int) [][]byte {
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = []byte("key-" + strconv.Itoa(i))
	}
	if err := db.Install(0, 1, uint64(n), kvIter(func() []KV {
		kvs := make([]KV, n)
		for i := range kvs {
			kvs[i] = KV{Key: keys[i], Value: benchValue}
		}
		return kvs
	}())); err != nil {
		b.Fatal(err)
	}
	return keys
}

func BenchmarkGet(b *testing.B) {
	db := openDB(b, b.TempDir())
	keys := loadForGet(b, db, 10_000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok, err := db.Get(0, keys[i%len(keys)]); err != nil || !ok {
			b.Fatalf("Get: %v %v", ok, err)
		}
		i++
	}
}

func BenchmarkGetParallel(b *testing.B) {
	db := openDB(b, b.TempDir())
	keys := loadForGet(b, db, 10_000)
	var start atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(start.Add(1_237)) // spread goroutines over the key space
		for pb.Next() {
			if _, ok, err := db.Get(0, keys[i%len(keys)]); err != nil || !ok {
				b.Errorf("Get: %v %v", ok, err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func TestApplyBatch(t *testing.T) {
	cases := []struct {
		name     string
		before   []Op // applied one by one first, as writes 1..n
		batch    []Op
		want     map[string]string
		absent   []string
		wantKeys uint64
	}{
		{name: "new keys", batch: []Op{put("a", "1"), put("b", "2")}, want: map[string]string{"a": "1", "b": "2"}, wantKeys: 2},
		{name: "same key twice counts once", batch: []Op{put("a", "1"), put("a", "2")}, want: map[string]string{"a": "2"}, wantKeys: 1},
		{name: "set then delete in one batch", batch: []Op{put("a", "1"), del("a")}, absent: []string{"a"}, wantKeys: 0},
		{name: "delete then set in one batch", before: []Op{put("a", "0")}, batch: []Op{del("a"), put("a", "1")}, want: map[string]string{"a": "1"}, wantKeys: 1},
		{name: "delete of a missing key", before: []Op{put("b", "0")}, batch: []Op{del("a"), del("a")}, want: map[string]string{"b": "0"}, wantKeys: 1},
		{name: "overwrite of an existing key", before: []Op{put("a", "0"), put("b", "0")}, batch: []Op{put("a", "1"), del("b"), put("c", "3")}, want: map[string]string{"a": "1", "c": "3"}, absent: []string{"b"}, wantKeys: 2},
	}
	// A replica applies the same batch blind, told the count: it must end
	// in the same state.
	modes := map[string]func(db *DB, first uint64, batch []Op, keys uint64) error{
		"primary": func(db *DB, first uint64, batch []Op, _ uint64) error {
			_, err := db.ApplyBatch(3, 2, first, batch)
			return err
		},
		"replica": func(db *DB, first uint64, batch []Op, keys uint64) error {
			return db.ApplyReplicated(3, 2, first, batch, keys)
		},
	}
	for _, tt := range cases {
		for mode, apply := range modes {
			t.Run(tt.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				db := openDB(t, t.TempDir())
				for i, op := range tt.before {
					if err := db.Apply(3, 1, uint64(i+1), op); err != nil {
						t.Fatal(err)
					}
				}
				first := uint64(len(tt.before) + 1)
				if err := apply(db.DB, first, tt.batch, tt.wantKeys); err != nil {
					t.Fatal(err)
				}
				for k, v := range tt.want {
					got, ok, err := db.Get(3, []byte(k))
					if err != nil || !ok || string(got.Value) != v {
						t.Errorf("get %s = %q, %v, %v; want %q", k, got.Value, ok, err, v)
					}
				}
				for _, k := range tt.absent {
					if _, ok, _ := db.Get(3, []byte(k)); ok {
						t.Errorf("%s still present", k)
					}
				}
				m, err := db.Meta(3)
				if err != nil {
					t.Fatal(err)
				}
				want := Meta{Epoch: 2, Seq: first + uint64(len(tt.batch)) - 1, Keys: tt.wantKeys}
				if m != want {
					t.Errorf("meta = %+v, want %+v", m, want)
				}
			})
		}
	}
}

func TestApplyBatchRefusesEmpty(t *testing.T) {
	db := openDB(t, t.TempDir())
	if _, err := db.ApplyBatch(0, 1, 1, nil); err == nil {
		t.Error("empty batch accepted")
	}
	if _, err := db.ApplyBatch(0, 1, 1, []Op{put("a", "1"), {Key: nil}}); err == nil {
		t.Error("batch with an empty key accepted")
	}
	if err := db.ApplyReplicated(0, 1, 1, []Op{put("a", "1"), {Key: nil}}, 1); err == nil {
		t.Error("replicated batch with an empty key accepted")
	}
	if _, ok, _ := db.Get(0, []byte("a")); ok {
		t.Error("a batch that was refused was partly applied")
	}
}

// A store keeps its identity across reopens, and a new store in another
// (or an emptied) directory gets another one.
func TestStoreID(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	first := db.ID()
	if len(first) != 16 {
		t.Fatalf("ID() = %q, want 16 hex digits", first)
	}
	if err := db.close(); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, dir)
	if got := db.ID(); got != first {
		t.Fatalf("after reopen ID() = %q, want %q", got, first)
	}
	if err := db.close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, dir)
	if got := db.ID(); got == first || got == "" {
		t.Fatalf("an emptied directory kept ID %q (first %q)", got, first)
	}
	if other := openDB(t, t.TempDir()).ID(); other == first {
		t.Fatalf("two stores share ID %q", other)
	}
}
