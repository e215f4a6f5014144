package storage

import (
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []Record{
		{Value: []byte{}, Revision: 1},
		{Value: []byte("v"), Revision: 1 << 40, ExpiresAt: 1_800_000_000_000},
	} {
		got, err := DecodeRecord(EncodeRecord(r))
		if err != nil || string(got.Value) != string(r.Value) || got.Revision != r.Revision || got.ExpiresAt != r.ExpiresAt {
			t.Errorf("round trip of %+v = %+v, %v", r, got, err)
		}
	}
	for _, bad := range [][]byte{nil, []byte("plain value"), append([]byte{2}, make([]byte, 16)...)} {
		if _, err := DecodeRecord(bad); err == nil {
			t.Errorf("DecodeRecord(%q) accepted", bad)
		}
	}
}

// Write number seq of a partition gives its key the revision seq.
func TestRevisionIsWriteNumber(t *testing.T) {
	db := openDB(t, t.TempDir())
	mustApply(t, db, 2, 1, 1, put("a", "1"))
	mustApply(t, db, 2, 1, 2, put("b", "1"))
	if _, err := db.ApplyBatch(2, 1, 3, []Op{put("a", "2"), put("c", "1")}); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]uint64{"a": 3, "b": 2, "c": 4} {
		r, ok, err := db.Get(2, []byte(k))
		if err != nil || !ok || r.Revision != want {
			t.Errorf("Get(%s) = %+v, %v, %v; want revision %d", k, r, ok, err, want)
		}
	}
}

func TestExpiryIndex(t *testing.T) {
	const p = 4
	ttl := func(k string, at int64) Op { return Op{Key: []byte(k), Value: []byte("v"), ExpiresAt: at} }
	tests := []struct {
		name string
		ops  []Op // applied in order, blind ops carry PrevExpiresAt
		now  int64
		want []string
	}{
		{"due keys in deadline order", []Op{ttl("b", 200), ttl("a", 100), ttl("c", 300), put("d", "v")}, 250, []string{"a", "b"}},
		{"deadline is inclusive", []Op{ttl("a", 100)}, 100, []string{"a"}},
		{"nothing due", []Op{ttl("a", 100)}, 99, nil},
		{"an overwrite drops the old deadline", []Op{ttl("a", 100), put("a", "v")}, 1000, nil},
		{"a refresh moves it", []Op{ttl("a", 100), ttl("a", 500)}, 400, nil},
		{"a delete drops it", []Op{ttl("a", 100), del("a")}, 1000, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openDB(t, t.TempDir())
			for i, op := range tt.ops {
				mustApply(t, db, p, 1, uint64(i+1), op)
			}
			got := expired(t, db, p, tt.now)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Expired(now=%d) = %q, want %q", tt.now, got, tt.want)
			}
		})
	}

	t.Run("blind writes keep it with PrevExpiresAt", func(t *testing.T) {
		db := openDB(t, t.TempDir())
		if err := db.ApplyReplicated(p, 1, 1, []Op{ttl("a", 100)}, 1); err != nil {
			t.Fatal(err)
		}
		if err := db.ApplyReplicated(p, 1, 2, []Op{{Key: []byte("a"), Value: []byte("w"), PrevExpiresAt: 100}}, 1); err != nil {
			t.Fatal(err)
		}
		if got := expired(t, db, p, 1000); len(got) != 0 {
			t.Fatalf("Expired = %q after an overwrite", got)
		}
	})

	t.Run("install rebuilds it and drop clears it", func(t *testing.T) {
		db := openDB(t, t.TempDir())
		mustApply(t, db, p, 1, 1, ttl("old", 50))
		pairs := []KV{
			{Key: []byte("x"), Value: EncodeRecord(Record{Value: []byte("1"), Revision: 7, ExpiresAt: 100})},
			{Key: []byte("y"), Value: EncodeRecord(Record{Value: []byte("2"), Revision: 8})},
		}
		i := 0
		if err := db.Install(p, 2, 8, func() (KV, bool, error) {
			if i == len(pairs) {
				return KV{}, false, nil
			}
			i++
			return pairs[i-1], true, nil
		}); err != nil {
			t.Fatal(err)
		}
		if got := expired(t, db, p, 1000); !slices.Equal(got, []string{"x"}) {
			t.Fatalf("Expired after install = %q, want [x]", got)
		}
		if err := db.Drop(p); err != nil {
			t.Fatal(err)
		}
		if got := expired(t, db, p, 1000); len(got) != 0 {
			t.Fatalf("Expired after drop = %q", got)
		}
	})
}

func expired(tb testing.TB, db *closer, p int, now int64) []string {
	tb.Helper()
	keys, err := db.Expired(p, now, 100)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		out = append(out, string(k))
	}
	return out
}

func TestAdvanceOnlyRaises(t *testing.T) {
	db := openDB(t, t.TempDir())
	mustApply(t, db, 1, 3, 10, put("a", "1"))
	for _, c := range []struct{ to, want uint64 }{{5, 10}, {600, 600}, {599, 600}} {
		if err := db.Advance(1, c.to); err != nil {
			t.Fatal(err)
		}
		if m := mustMeta(t, db, 1); m.Seq != c.want || m.Epoch != 3 || m.Keys != 1 {
			t.Fatalf("after Advance(%d): %+v, want seq %d", c.to, m, c.want)
		}
	}
	mustApply(t, db, 1, 3, 601, put("b", "1"))
	if r, _, _ := db.Get(1, []byte("b")); r.Revision != 601 {
		t.Fatalf("revision after advance = %d", r.Revision)
	}
}

// A store written before values became records is upgraded on open: every
// value is kept, with its partition's sequence number as revision.
func TestUpgradeBareValues(t *testing.T) {
	dir := t.TempDir()
	raw, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := raw.NewBatch()
	for p, pairs := range map[int]map[string]string{1: {"a": "A", "b": ""}, 3: {"c": "C"}} {
		for k, v := range pairs {
			_ = b.Set(dataKey(p, []byte(k)), []byte(v), nil)
		}
		_ = b.Set(metaKey(p), Meta{Epoch: 2, Seq: uint64(10 * p), Keys: uint64(len(pairs))}.encode(), nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // and opening again changes nothing
		db := openDB(t, dir)
		for _, c := range []struct {
			p      int
			k, v   string
			revise uint64
		}{{1, "a", "A", 10}, {1, "b", "", 10}, {3, "c", "C", 30}} {
			r, ok, err := db.Get(c.p, []byte(c.k))
			if err != nil || !ok || string(r.Value) != c.v || r.Revision != c.revise {
				t.Fatalf("Get(%d, %s) = %+v, %v, %v; want %q at revision %d", c.p, c.k, r, ok, err, c.v, c.revise)
			}
		}
		if err := db.close(); err != nil {
			t.Fatal(err)
		}
	}
}
