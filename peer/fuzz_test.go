package peer

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/clusterkey"
)

// FuzzHandshake feeds the server side of the handshake whatever a stranger
// might send. It must never panic or hang, and it must accept only a
// well-formed hello of this cluster's name.
func FuzzHandshake(f *testing.F) {
	f.Add(appendHello(nil, selRPC, "c", "node-2"))
	f.Add(appendHello(nil, selRaft, "c", ""))
	f.Add(appendHello(nil, selStream, "other", "node-9"))
	f.Add(append(appendHello(nil, selRPC, "c", "n"), 0, 0, 0, 17, 1))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{tlsRecordHandshake, 3, 1, 0, 5})
	f.Add([]byte{selRPC, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	k, err := clusterkey.Generate()
	if err != nil {
		f.Fatal(err)
	}
	plain := &Listener{cfg: Config{Self: "server", ClusterName: "c", HandshakeTimeout: 200 * time.Millisecond, Logger: discardLogger()}}
	keyed := &Listener{cfg: Config{Self: "server", ClusterName: "c", HandshakeTimeout: 200 * time.Millisecond, Logger: discardLogger(),
		Security: clusterkey.NewKeyring(k)}}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, l := range []*Listener{plain, keyed} {
			server, client := net.Pipe()
			done := make(chan bool, 1)
			go func() {
				a, ok := l.serverHandshake(server)
				if ok {
					a.nc.Close()
				}
				done <- ok
			}()
			go func() {
				// Say it and hang up: the server must decide on what it
				// got.
				_ = client.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = client.Write(in)
				client.Close()
			}()
			var ok bool
			select {
			case ok = <-done:
			case <-time.After(3 * time.Second):
				t.Fatal("the handshake hung past its timeout")
			}
			if ok && (l == keyed || !validHello(in, "c")) {
				t.Fatalf("accepted %q", in)
			}
		}
	})
}

// validHello reports whether in starts with a hello this server accepts.
func validHello(in []byte, cluster string) bool {
	if len(in) < 1 || (in[0] != selRaft && in[0] != selRPC && in[0] != selStream) {
		return false
	}
	d := decoder{b: in[1:]}
	if d.uvarint() != protoVersion {
		return false
	}
	name, node := d.string(), d.string()
	return d.err == nil && name == cluster && len(name) <= maxHelloStringBytes && len(node) <= maxHelloStringBytes
}

// FuzzDecode: no payload a peer sends makes a decoder panic, and whatever
// decodes re-encodes to the same message.
func FuzzDecode(f *testing.F) {
	f.Add(encodeForward(ForwardReq{Partition: 1, Epoch: 2, Ops: []Op{{Key: "k", Value: "v"}}}))
	f.Add(encodeRead(ReadReq{Partition: 3, Epoch: 4, Stale: true, Key: "k"}))
	f.Add(encodeResponse(nil, []byte("body"), nil))
	f.Add(encodeLogReq(LogReq{Partition: 1, After: 5, Prefix: "p"}))
	f.Add(encodeScanReq(ScanReq{Partition: 1, Start: "a", HasEnd: true, End: "b"}))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeForward(b); err == nil {
			if again, err := decodeForward(encodeForward(r)); err != nil || !reflect.DeepEqual(again, r) {
				t.Fatalf("forward %+v re-decoded as %+v, %v", r, again, err)
			}
		}
		if r, err := decodeRead(b); err == nil {
			if again, err := decodeRead(encodeRead(r)); err != nil || again.Key != r.Key || again.Partition != r.Partition {
				t.Fatalf("read %+v re-decoded as %+v, %v", r, again, err)
			}
		}
		if r, err := decodeLogReq(b); err == nil {
			if again, err := decodeLogReq(encodeLogReq(r)); err != nil || !reflect.DeepEqual(again, r) {
				t.Fatalf("log request %+v re-decoded as %+v, %v", r, again, err)
			}
		}
		if r, err := decodeScanReq(b); err == nil {
			if again, err := decodeScanReq(encodeScanReq(r)); err != nil || !reflect.DeepEqual(again, r) {
				t.Fatalf("scan request %+v re-decoded as %+v, %v", r, again, err)
			}
		}
		_, _ = decodeLogResp(b)
		_, _ = decodeScanResp(b)
		_, _ = decodeResponse(b)
		var lr LeaseReq
		_ = decodeJSON(b, &lr)
	})
}

// FuzzInstallStream: a damaged or hostile copy stream is an error, never a
// panic, an entry over the limits, or an endless read.
func FuzzInstallStream(f *testing.F) {
	var good bytes.Buffer
	iw, _ := NewInstallWriter(&good, 7)
	_ = iw.Pair([]byte("k"), []byte("v"))
	_ = iw.End()
	f.Add(good.Bytes())
	f.Add(binary.AppendUvarint(binary.AppendUvarint(nil, 1), 1<<40))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, next, err := ReadInstall(bytes.NewReader(b), 64, 64)
		if err != nil {
			return
		}
		for range len(b) + 1 {
			k, v, ok, err := next()
			if err != nil || !ok {
				return
			}
			if len(k) == 0 || len(k) > 64 || len(v) > 64 {
				t.Fatalf("entry of %d/%d bytes passed", len(k), len(v))
			}
		}
		t.Fatal("more entries than bytes")
	})
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
