package peer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/clusterkit/clusterkit/errcode"
)

func TestRPCCodecRoundTrip(t *testing.T) {
	big := strings.Repeat("é", 1000)
	tests := []struct {
		name   string
		encode func() []byte
		decode func([]byte) (any, error)
		want   any
	}{
		{
			name: "forward set",
			encode: func() []byte {
				return encodeForward(ForwardReq{Partition: 7, Epoch: 1 << 40, Ops: []Op{{Key: "k", Value: big}}})
			},
			decode: func(b []byte) (any, error) { return decodeForward(b) },
			want:   ForwardReq{Partition: 7, Epoch: 1 << 40, Ops: []Op{{Key: "k", Value: big}}},
		},
		{
			name: "forward delete with an empty value",
			encode: func() []byte {
				return encodeForward(ForwardReq{Partition: 0, Epoch: 3, Ops: []Op{{Delete: true, Key: "gone"}}})
			},
			decode: func(b []byte) (any, error) { return decodeForward(b) },
			want:   ForwardReq{Partition: 0, Epoch: 3, Ops: []Op{{Delete: true, Key: "gone"}}},
		},
		{
			name: "atomic conditional batch with every option",
			encode: func() []byte {
				return encodeForward(ForwardReq{Partition: 3, Epoch: 8, Atomic: true, MinCopies: 3, Ops: []Op{
					{Key: "a", Value: "1", HasIfRevision: true, IfRevision: 0, TTLMillis: 30_000, Prev: true},
					{Key: "b", Delete: true, HasIfRevision: true, IfRevision: 1 << 50, IfExists: true},
					{Key: "c", Touch: true, TTLMillis: 1000}, {Key: "d", Value: "v", KeepTTL: true},
					{Key: "e", Expire: true}, {Key: "f", Get: true},
				}})
			},
			decode: func(b []byte) (any, error) { return decodeForward(b) },
			want: ForwardReq{Partition: 3, Epoch: 8, Atomic: true, MinCopies: 3, Ops: []Op{
				{Key: "a", Value: "1", HasIfRevision: true, IfRevision: 0, TTLMillis: 30_000, Prev: true},
				{Key: "b", Delete: true, HasIfRevision: true, IfRevision: 1 << 50, IfExists: true},
				{Key: "c", Touch: true, TTLMillis: 1000}, {Key: "d", Value: "v", KeepTTL: true},
				{Key: "e", Expire: true}, {Key: "f", Get: true},
			}},
		},
		{
			name: "forward results",
			encode: func() []byte {
				return encodeForwardResp(ForwardResp{Results: []Result{
					{Revision: 12, Exists: true, ExpiresAt: 1_800_000_000_000, Prev: &Versioned{Value: big, Revision: 11}},
					{Code: ResultConditionFailed, Revision: 4, Exists: true}, {Code: ResultNotFound},
				}})
			},
			decode: func(b []byte) (any, error) { return decodeForwardResp(b) },
			want: ForwardResp{Results: []Result{
				{Revision: 12, Exists: true, ExpiresAt: 1_800_000_000_000, Prev: &Versioned{Value: big, Revision: 11}},
				{Code: ResultConditionFailed, Revision: 4, Exists: true}, {Code: ResultNotFound},
			}},
		},
		{
			name: "read answer",
			encode: func() []byte {
				return encodeReadResp(ReadResp{Value: big, Revision: 7, ExpiresAt: 5, Applied: 9, HeardAgoMillis: 250})
			},
			decode: func(b []byte) (any, error) { return decodeReadResp(b) },
			want:   ReadResp{Value: big, Revision: 7, ExpiresAt: 5, Applied: 9, HeardAgoMillis: 250},
		},
		{
			name:   "stale read",
			encode: func() []byte { return encodeRead(ReadReq{Partition: 4095, Epoch: 9, Stale: true, Key: "user:1"}) },
			decode: func(b []byte) (any, error) { return decodeRead(b) },
			want:   ReadReq{Partition: 4095, Epoch: 9, Stale: true, Key: "user:1"},
		},
		{
			name: "replication round",
			encode: func() []byte {
				return encodeReplicate(ReplicateReq{Partition: 2, Epoch: 5, Seq: 11, Version: 77, From: "node-1",
					Entries: []Entry{{Key: "a", Value: "1", ExpiresAt: 99}, {Delete: true, Expired: true, Key: "b", PrevExpiresAt: 5}, {Key: "c", Value: ""}}})
			},
			decode: func(b []byte) (any, error) { return decodeReplicate(b) },
			want: ReplicateReq{Partition: 2, Epoch: 5, Seq: 11, Version: 77, From: "node-1",
				Entries: []Entry{{Key: "a", Value: "1", ExpiresAt: 99}, {Delete: true, Expired: true, Key: "b", PrevExpiresAt: 5}, {Key: "c", Value: ""}}},
		},
		{
			name: "replication round with the primary's key count",
			encode: func() []byte {
				return encodeReplicate(ReplicateReq{Partition: 2, Epoch: 5, Seq: 11, Version: 77, From: "node-1",
					Entries: []Entry{{Key: "a", Value: "1"}}, Keys: new(uint64(300))})
			},
			decode: func(b []byte) (any, error) { return decodeReplicate(b) },
			want: ReplicateReq{Partition: 2, Epoch: 5, Seq: 11, Version: 77, From: "node-1",
				Entries: []Entry{{Key: "a", Value: "1"}}, Keys: new(uint64(300))},
		},
		{
			name: "history request",
			encode: func() []byte {
				return encodeLogReq(LogReq{Partition: 9, Epoch: 4, After: 1 << 45, Limit: 512, Prefix: big, Exact: true, WaitMillis: 1000})
			},
			decode: func(b []byte) (any, error) { return decodeLogReq(b) },
			want:   LogReq{Partition: 9, Epoch: 4, After: 1 << 45, Limit: 512, Prefix: big, Exact: true, WaitMillis: 1000},
		},
		{
			name:   "history request for the present",
			encode: func() []byte { return encodeLogReq(LogReq{Partition: 1, Now: true}) },
			decode: func(b []byte) (any, error) { return decodeLogReq(b) },
			want:   LogReq{Partition: 1, Now: true},
		},
		{
			name: "history answer",
			encode: func() []byte {
				return encodeLogResp(LogResp{Position: 99, Floor: 3, Entries: []LogEntry{
					{Seq: 98, Entry: Entry{Key: "a", Value: big, ExpiresAt: 1 << 41}},
					{Seq: 99, Entry: Entry{Key: "b", Delete: true, Expired: true}},
				}})
			},
			decode: func(b []byte) (any, error) { return decodeLogResp(b) },
			want: LogResp{Position: 99, Floor: 3, Entries: []LogEntry{
				{Seq: 98, Entry: Entry{Key: "a", Value: big, ExpiresAt: 1 << 41}},
				{Seq: 99, Entry: Entry{Key: "b", Delete: true, Expired: true}},
			}},
		},
		{
			name:   "history answer: compacted",
			encode: func() []byte { return encodeLogResp(LogResp{Position: 5, Compacted: true, Floor: 70}) },
			decode: func(b []byte) (any, error) { return decodeLogResp(b) },
			want:   LogResp{Position: 5, Compacted: true, Floor: 70, Entries: []LogEntry{}},
		},
		{
			name: "scan request",
			encode: func() []byte {
				return encodeScanReq(ScanReq{Partition: 2, Epoch: 6, Stale: true, Start: "user:", Exclusive: true, End: "user;", HasEnd: true, Limit: 100, MaxBytes: 1 << 20, Values: true})
			},
			decode: func(b []byte) (any, error) { return decodeScanReq(b) },
			want:   ScanReq{Partition: 2, Epoch: 6, Stale: true, Start: "user:", Exclusive: true, End: "user;", HasEnd: true, Limit: 100, MaxBytes: 1 << 20, Values: true},
		},
		{
			name: "scan answer",
			encode: func() []byte {
				return encodeScanResp(ScanResp{More: true, Position: 1 << 33, Items: []ScanItem{{Key: "k", Value: big, Revision: 7}, {Key: "l", Revision: 8}}})
			},
			decode: func(b []byte) (any, error) { return decodeScanResp(b) },
			want:   ScanResp{More: true, Position: 1 << 33, Items: []ScanItem{{Key: "k", Value: big, Revision: 7}, {Key: "l", Revision: 8}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.encode()
			got, err := tt.decode(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("round trip = %+v, want %+v", got, tt.want)
			}
			// Every truncation must be refused or decode to something
			// else, never panic.
			for n := range len(b) {
				if got, err := tt.decode(b[:n]); err == nil && reflect.DeepEqual(got, tt.want) {
					t.Fatalf("truncated to %d bytes, still decoded to the whole request", n)
				}
			}
		})
	}
}

func TestRPCResponseCodec(t *testing.T) {
	tests := []struct {
		name     string
		body     []byte
		err      error
		wantBody []byte
		wantErr  *errcode.Error
	}{
		{name: "value", body: []byte("hello"), wantBody: []byte("hello")},
		{name: "empty value", body: nil, wantBody: []byte{}},
		{name: "api error keeps code and message", err: errcode.New(errcode.EpochMismatch, "old epoch"),
			wantErr: &errcode.Error{Code: errcode.EpochMismatch, Message: "old epoch"}},
		{name: "not found", err: errcode.ErrKeyNotFound, wantErr: &errcode.Error{Code: errcode.KeyNotFound, Message: "key not found"}},
		{name: "wrapped error keeps its code", err: fmt.Errorf("ctx: %w", errcode.ErrNotReady),
			wantErr: &errcode.Error{Code: errcode.NotReady, Message: "partition not ready on this node"}},
		{name: "plain error is internal", err: errors.New("disk on fire"),
			wantErr: &errcode.Error{Code: errcode.Internal, Message: "disk on fire"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := decodeResponse(encodeResponse(nil, tt.body, tt.err))
			if tt.wantErr == nil {
				if err != nil || !bytes.Equal(body, tt.wantBody) {
					t.Fatalf("got %q, %v; want %q", body, err, tt.wantBody)
				}
				return
			}
			var e *errcode.Error
			if !errors.As(err, &e) || e.Code != tt.wantErr.Code || e.Message != tt.wantErr.Message {
				t.Fatalf("got error %#v, want %#v", err, tt.wantErr)
			}
		})
	}
}

func TestReadFrameRejectsBadLengths(t *testing.T) {
	tests := []struct {
		name  string
		frame []byte
	}{
		{"shorter than a header", []byte{0, 0, 0, 3, 1, 2, 3}},
		{"larger than the limit", []byte{0xff, 0xff, 0xff, 0xff}},
		{"truncated payload", append([]byte{0, 0, 0, 20}, make([]byte, 14)...)},
		{"empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, _, _, err := readFrame(bufio.NewReader(bytes.NewReader(tt.frame))); err == nil {
				t.Fatal("bad frame accepted")
			}
		})
	}
}

func FuzzDecodeReplicate(f *testing.F) {
	f.Add(encodeReplicate(ReplicateReq{Partition: 1, Epoch: 2, Seq: 3, Version: 4, From: "n1", Entries: []Entry{{Key: "a", Value: "b"}}}))
	f.Add([]byte{0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeReplicate(b)
		if err != nil {
			return
		}
		again, err := decodeReplicate(encodeReplicate(r))
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("re-encoding %+v gave %+v, %v", r, again, err)
		}
	})
}
