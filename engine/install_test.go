package engine

// The install protocol copies a whole partition from the primary to a
// replica: a uvarint seq, then (uvarint key len, uvarint value len, key,
// value) pairs, then a zero key length. These tests capture what the real
// writer (snapshotSender) sends and decode it with peer.ReadInstall.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// captureInstall runs the real install writer for partition p of src and
// returns the stream it writes.
func captureInstall(t *testing.T, src Storage, p int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := snapshotSender(src, p, nil)(&buf); err != nil {
		t.Fatalf("write the copy of partition %d: %v", p, err)
	}
	return buf.Bytes()
}

// readStream decodes a stream with peer.ReadInstall, for Storage.Install.
func readStream(r io.Reader, maxEntry uint64) (uint64, func() (storage.KV, bool, error), error) {
	seq, next, err := peer.ReadInstall(r, maxEntry, maxEntry)
	return seq, func() (storage.KV, bool, error) {
		k, v, ok, err := next()
		return storage.KV{Key: k, Value: v}, ok, err
	}, err
}

// decodeAll reads a whole install stream: the pairs, then the history.
func decodeAll(t *testing.T, stream []byte, maxEntry uint64) (uint64, []storage.KV, error) {
	t.Helper()
	seq, pairs, _, _, err := decodeWithLog(t, stream, maxEntry)
	return seq, pairs, err
}

func decodeWithLog(t *testing.T, stream []byte, maxEntry uint64) (uint64, []storage.KV, uint64, []storage.LogRecord, error) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(stream))
	ir, err := peer.NewInstallReader(br, maxEntry, maxEntry)
	if err != nil {
		return 0, nil, 0, nil, err
	}
	var out []storage.KV
	for {
		k, v, ok, err := ir.Next()
		if err != nil {
			return ir.Seq, out, 0, nil, err
		}
		if !ok {
			break
		}
		out = append(out, storage.KV{Key: k, Value: v})
	}
	// The end mark is sticky.
	if _, _, ok, err := ir.Next(); ok || err != nil {
		t.Errorf("next after the end mark = %v, %v; want false, nil", ok, err)
	}
	floor, err := ir.Log()
	if err != nil {
		return ir.Seq, out, 0, nil, err
	}
	var log []storage.LogRecord
	for {
		seq, raw, ok, err := ir.NextLog()
		if err != nil {
			return ir.Seq, out, floor, log, err
		}
		if !ok {
			break
		}
		log = append(log, storage.LogRecord{Seq: seq, Raw: raw})
	}
	// The stream ends right after the history's end mark.
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("bytes left after the end mark (err %v)", err)
	}
	return ir.Seq, out, floor, log, nil
}

func kvIterator(kvs []storage.KV) func() (storage.KV, bool, error) {
	return func() (storage.KV, bool, error) {
		if len(kvs) == 0 {
			return storage.KV{}, false, nil
		}
		kv := kvs[0]
		kvs = kvs[1:]
		return kv, true, nil
	}
}

func TestInstallStreamRoundTrip(t *testing.T) {
	const p, epoch = 1, 7
	type op struct {
		part int
		seq  uint64
		op   storage.Op
	}
	set := func(part int, seq uint64, k, v string) op {
		return op{part, seq, storage.Op{Key: []byte(k), Value: []byte(v)}}
	}
	del := func(part int, seq uint64, k string) op {
		return op{part, seq, storage.Op{Delete: true, Key: []byte(k)}}
	}
	many := func() []op {
		var ops []op
		for i := range 2000 {
			ops = append(ops, set(p, uint64(i+1), strings.Repeat("k", i%50+1)+string(rune('a'+i%26))+string(rune(i)), strings.Repeat("v", i%300)))
		}
		return ops
	}
	tests := []struct {
		name    string
		ops     []op
		wantSeq uint64
	}{
		{name: "never written", wantSeq: 0},
		{name: "empty after set and delete", ops: []op{set(p, 1, "a", "x"), del(p, 2, "a")}, wantSeq: 2},
		{name: "binary keys and values", ops: []op{
			set(p, 1, "\x00", "\x00\x00"),
			set(p, 2, "\xff\xfe\xfd", "\x80"),
			set(p, 3, "a\x00b", ""),
			set(p, 4, "\x01", "bin\x00ary\xff"),
			set(p, 5, "big", strings.Repeat("\xab", MaxValueBytes)),
		}, wantSeq: 5},
		{name: "many keys", ops: many(), wantSeq: 2000},
		{name: "neighbouring partitions stay out", ops: []op{
			set(p-1, 1, "zzz-left", "no"), set(p, 9, "mine", "yes"), set(p+1, 1, "\x00right", "no"),
		}, wantSeq: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := storage.Open(t.TempDir(), storage.Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			for _, o := range tt.ops {
				if err := src.Apply(o.part, 1, o.seq, o.op); err != nil {
					t.Fatal(err)
				}
			}
			want := dumpPartition(t, src, p)

			stream := captureInstall(t, src, p)
			// A copy in flight reports how many keys it has sent.
			var copies copyTracker
			c := copies.start(p, "n2", "full", len(want.Pairs))
			if err := snapshotSender(src, p, c)(io.Discard); err != nil {
				t.Fatal(err)
			}
			if got := copies.list(); len(got) != 1 || got[0].Sent != len(want.Pairs) || got[0].Total != len(want.Pairs) || got[0].Replica != "n2" {
				t.Errorf("copy progress = %+v, want %d of %d keys sent to n2", got, len(want.Pairs), len(want.Pairs))
			}
			copies.done(c)
			if got := copies.list(); len(got) != 0 {
				t.Errorf("copies after done = %+v, want none", got)
			}
			seq, pairs, err := decodeAll(t, stream, MaxValueBytes+storage.RecordOverhead)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if seq != tt.wantSeq || seq != want.Meta.Seq {
				t.Errorf("seq = %d, want %d (source meta %+v)", seq, tt.wantSeq, want.Meta)
			}
			got := map[string]string{}
			for i, kv := range pairs {
				if i > 0 && bytes.Compare(pairs[i-1].Key, kv.Key) >= 0 {
					t.Errorf("pairs out of order at %d: %q then %q", i, pairs[i-1].Key, kv.Key)
				}
				r, err := storage.DecodeRecord(kv.Value)
				if err != nil {
					t.Fatalf("pair %q: %v", kv.Key, err)
				}
				got[string(kv.Key)] = string(r.Value)
			}
			if !reflect.DeepEqual(got, want.Pairs) {
				t.Errorf("decoded %d pairs, source has %d; they differ", len(got), len(want.Pairs))
			}

			// And the decoder feeds Storage.Install to an identical copy.
			dst, err := storage.Open(t.TempDir(), storage.Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			seq, kvs, floor, history, err := decodeWithLog(t, stream, MaxValueBytes+storage.RecordOverhead)
			if err != nil {
				t.Fatal(err)
			}
			staged, err := dst.StageInstall(p, epoch, seq, kvIterator(kvs), func() (uint64, func() (storage.LogRecord, bool, error), error) {
				return floor, func() (storage.LogRecord, bool, error) {
					if len(history) == 0 {
						return storage.LogRecord{}, false, nil
					}
					r := history[0]
					history = history[1:]
					return r, true, nil
				}, nil
			})
			if err != nil {
				t.Fatalf("install into storage: %v", err)
			}
			if err := staged.Commit(); err != nil {
				t.Fatal(err)
			}
			staged.Close()
			gotCopy := dumpPartition(t, dst, p)
			wantMeta := storage.Meta{Epoch: epoch, Seq: want.Meta.Seq, Keys: uint64(len(want.Pairs)), LogFloor: want.Meta.LogFloor}
			if gotCopy.Meta != wantMeta || !reflect.DeepEqual(gotCopy.Pairs, want.Pairs) {
				t.Errorf("installed copy meta %+v (%d pairs), want %+v (%d pairs)", gotCopy.Meta, len(gotCopy.Pairs), wantMeta, len(want.Pairs))
			}
			// The history travels with the copy, entry for entry.
			srcLog, _, err := src.ReadLog(p, want.Meta.LogFloor, want.Meta.Seq, 1<<20, 1<<30, nil)
			if err != nil {
				t.Fatal(err)
			}
			dstLog, _, err := dst.ReadLog(p, want.Meta.LogFloor, want.Meta.Seq, 1<<20, 1<<30, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(srcLog) != len(dstLog) || (len(srcLog) > 0 && !reflect.DeepEqual(srcLog, dstLog)) {
				t.Errorf("history after install: %d entries, source has %d", len(dstLog), len(srcLog))
			}
			if len(tt.ops) > 0 && len(srcLog) == 0 {
				t.Errorf("source kept no history of its %d writes", len(tt.ops))
			}
		})
	}
}

// TestInstallStreamErrors: a damaged stream is an error, never a shorter
// copy installed as if complete.
func TestInstallStreamErrors(t *testing.T) {
	uv := func(xs ...uint64) []byte {
		var b []byte
		for _, x := range xs {
			b = binary.AppendUvarint(b, x)
		}
		return b
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	const maxEntry = 16
	tests := []struct {
		name   string
		stream []byte
	}{
		{"empty", nil},
		{"truncated seq varint", []byte{0x80}},
		{"seq only, no end mark", uv(5)},
		{"pair without end mark", cat(uv(5, 1, 1), []byte("kv"))},
		{"truncated value", cat(uv(5, 1, 4), []byte("kvv"))},
		{"missing value length", cat(uv(5, 1))},
		{"key over the limit", cat(uv(5, maxEntry+1, 1), bytes.Repeat([]byte("k"), maxEntry+1), []byte("v"), uv(0))},
		{"value over the limit", cat(uv(5, 1, maxEntry+1), []byte("k"), bytes.Repeat([]byte("v"), maxEntry+1), uv(0))},
		{"huge declared length", cat(uv(5, 1, 1<<62), []byte("k"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := decodeAll(t, tt.stream, maxEntry); err == nil {
				t.Fatalf("decoding %q succeeded", tt.stream)
			}
			// Storage must keep its old copy when the stream breaks.
			db, err := storage.Open(t.TempDir(), storage.Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.Apply(0, 1, 3, storage.Op{Key: []byte("old"), Value: []byte("copy")}); err != nil {
				t.Fatal(err)
			}
			before := dumpPartition(t, db, 0)
			seq, next, err := readStream(bytes.NewReader(tt.stream), maxEntry)
			if err == nil {
				if err := db.Install(0, 2, seq, next); err == nil {
					t.Fatalf("Install accepted a damaged stream")
				}
			}
			if after := dumpPartition(t, db, 0); !reflect.DeepEqual(before, after) {
				t.Errorf("failed install changed the copy: %+v -> %+v", before, after)
			}
		})
	}
}

// TestInstallEndpoint drives a replica's install call: it refuses copies
// from the wrong primary or epoch and damaged streams without touching its
// copy, and a good copy replaces everything it held.
func TestInstallEndpoint(t *testing.T) {
	c := newCluster(t, clusterConfig{
		parts: 2, ids: []string{"n2"}, noRun: []string{"n2"},
		row: func(int) Route { return Route{Primary: "n1", Replicas: []string{"n2"}, Epoch: 3} },
	})
	n2 := c.nodes["n2"]
	if err := n2.db.Apply(0, 2, 50, storage.Op{Key: []byte(keyIn(t, "old", 0, 2)), Value: []byte("stale")}); err != nil {
		t.Fatal(err)
	}
	src, err := storage.Open(t.TempDir(), storage.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for i, k := range []string{keyIn(t, "\x00bin", 0, 2), keyIn(t, "k", 0, 2), keyIn(t, "ü", 0, 2)} {
		if err := src.Apply(0, 3, uint64(i+7), storage.Op{Key: []byte(k), Value: []byte{0xff, byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	good := captureInstall(t, src, 0)
	misplaced, err := storage.Open(t.TempDir(), storage.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer misplaced.Close()
	if err := misplaced.Apply(0, 3, 1, storage.Op{Key: []byte(keyIn(t, "other", 1, 2)), Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	wrongPartition := captureInstall(t, misplaced, 0)
	m := member(t)
	oldCopy := dumpPartition(t, n2.db, 0)

	send := func(from string, epoch uint64, body []byte) error {
		return m.Install(context.Background(), n2.addr(), peer.InstallReq{Partition: 0, Epoch: epoch, From: from},
			func(w io.Writer) error { _, err := w.Write(body); return err })
	}
	tests := []struct {
		name     string
		from     string
		epoch    uint64
		body     []byte
		wantCode string // "": any error
	}{
		{"not from the primary", "n3", 3, good, errcode.EpochMismatch},
		{"older epoch", "n1", 2, good, errcode.EpochMismatch},
		{"empty stream", "n1", 3, []byte{}, errcode.BadRequest},
		{"truncated stream", "n1", 3, good[:len(good)-2], ""},
		{"missing end mark", "n1", 3, good[:len(good)-1], ""},
		{"a key of another partition", "n1", 3, wrongPartition, errcode.BadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := send(tt.from, tt.epoch, tt.body)
			if err == nil {
				t.Fatal("the replica took the copy")
			}
			if tt.wantCode != "" && errcode.Of(err) != tt.wantCode {
				t.Errorf("got %v, want code %s", err, tt.wantCode)
			}
			if got := dumpPartition(t, n2.db, 0); !reflect.DeepEqual(got, oldCopy) {
				t.Errorf("refused install changed the copy: %+v", got)
			}
		})
	}

	t.Run("good copy replaces the old one", func(t *testing.T) {
		if err := send("n1", 3, good); err != nil {
			t.Fatalf("install: %v", err)
		}
		want := dumpPartition(t, src, 0)
		want.Meta.Epoch = 3
		if got := dumpPartition(t, n2.db, 0); !reflect.DeepEqual(got, want) {
			t.Errorf("replica copy %+v, want %+v", got, want)
		}
	})
}
