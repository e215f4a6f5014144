package engine

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

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
				return encodeForward(forwardReq{Partition: 7, Epoch: 1 << 40, Op: Op{Key: "k", Value: big}})
			},
			decode: func(b []byte) (any, error) { return decodeForward(b) },
			want:   forwardReq{Partition: 7, Epoch: 1 << 40, Op: Op{Key: "k", Value: big}},
		},
		{
			name: "forward delete with an empty value",
			encode: func() []byte {
				return encodeForward(forwardReq{Partition: 0, Epoch: 3, Op: Op{Delete: true, Key: "gone"}})
			},
			decode: func(b []byte) (any, error) { return decodeForward(b) },
			want:   forwardReq{Partition: 0, Epoch: 3, Op: Op{Delete: true, Key: "gone"}},
		},
		{
			name:   "stale read",
			encode: func() []byte { return encodeRead(readReq{Partition: 4095, Epoch: 9, Stale: true, Key: "user:1"}) },
			decode: func(b []byte) (any, error) { return decodeRead(b) },
			want:   readReq{Partition: 4095, Epoch: 9, Stale: true, Key: "user:1"},
		},
		{
			name: "replication round",
			encode: func() []byte {
				return encodeReplicate(replicateReq{Partition: 2, Epoch: 5, Seq: 11, Version: 77, From: "node-1",
					Ops: []Op{{Key: "a", Value: "1"}, {Delete: true, Key: "b"}, {Key: "c", Value: ""}}})
			},
			decode: func(b []byte) (any, error) { return decodeReplicate(b) },
			want: replicateReq{Partition: 2, Epoch: 5, Seq: 11, Version: 77, From: "node-1",
				Ops: []Op{{Key: "a", Value: "1"}, {Delete: true, Key: "b"}, {Key: "c", Value: ""}}},
		},
		{
			name: "replication round with the primary's key count",
			encode: func() []byte {
				return encodeReplicate(replicateReq{Partition: 2, Epoch: 5, Seq: 11, Version: 77, From: "node-1",
					Ops: []Op{{Key: "a", Value: "1"}}, Keys: new(uint64(300))})
			},
			decode: func(b []byte) (any, error) { return decodeReplicate(b) },
			want: replicateReq{Partition: 2, Epoch: 5, Seq: 11, Version: 77, From: "node-1",
				Ops: []Op{{Key: "a", Value: "1"}}, Keys: new(uint64(300))},
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
	f.Add(encodeReplicate(replicateReq{Partition: 1, Epoch: 2, Seq: 3, Version: 4, From: "n1", Ops: []Op{{Key: "a", Value: "b"}}}))
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

// TestRPCRedialsAfterPeerClosed: a pooled connection that the peer closed
// (a restart, say) is not an error for the next call: the caller notices
// the close and dials again, so the write is acknowledged, not reported
// with an unknown outcome.
func TestRPCRedialsAfterPeerClosed(t *testing.T) {
	const parts = 2
	c := newCluster(t, clusterConfig{
		parts: parts, ids: []string{"n1", "n2"},
		row: primaryWithReplicas(1, []string{"n2"}, []string{"n2"}),
	})
	c.waitReady(t)
	key := keyIn(t, "redial", 0, parts)
	for i := range 3 {
		if r := kvSet(t, c.nodes["n2"], key, "v"); r.status != http.StatusOK {
			t.Fatalf("forwarded set %d: %s", i, r)
		}
		// n1 drops every connection it serves, as a restarted node would
		// have none; wait until n2 has noticed.
		n1 := c.nodes["n1"].srv
		n1.connMu.Lock()
		var served []*rpcConn
		for conn := range n1.conns {
			served = append(served, conn)
		}
		n1.connMu.Unlock()
		if len(served) == 0 {
			t.Fatal("n1 serves no RPC connection after a forwarded write")
		}
		for _, conn := range served {
			conn.close(errors.New("test: peer restarted"))
		}
		rc := c.nodes["n2"].srv.peers.rpc
		rc.mu.Lock()
		peer := rc.peers[c.nodes["n1"].addr()]
		rc.mu.Unlock()
		waitFor(t, 5*time.Second, "n2 to notice the closed connection", func() bool {
			peer.mu.Lock()
			defer peer.mu.Unlock()
			return peer.conn == nil || peer.conn.closed()
		})
	}
	if r := kvSet(t, c.nodes["n2"], key, "last"); r.status != http.StatusOK {
		t.Fatalf("forwarded set after the last close: %s", r)
	}
}

// TestRPCSilentPeerIsDropped: a call that times out on a connection that
// has delivered nothing since closes it, so the next call dials afresh
// rather than queueing behind a peer that is cut off.
func TestRPCSilentPeerIsDropped(t *testing.T) {
	c := newCluster(t, clusterConfig{
		parts: 1, ids: []string{"n1", "n2"},
		row: primaryWithReplicas(1, []string{"n2"}, []string{"n2"}),
	})
	c.waitReady(t)
	c.nodes["n1"].rec.setStall("/read")
	peers := c.nodes["n2"].srv.peers
	addr := c.nodes["n1"].addr()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	first, err := peers.rpc.conn(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = peers.read(ctx, addr, 0, 1, "k", false)
	if !errors.Is(err, errcode.ErrOutcomeUnknown) {
		t.Fatalf("read from a stalled peer: %v, want outcome_unknown", err)
	}
	if !first.closed() {
		t.Fatal("the silent connection was kept")
	}
}
