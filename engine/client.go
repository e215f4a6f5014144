package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/storage"
)

// InternalPrefix is the path prefix of the node-to-node routes.
const InternalPrefix = "/internal/v1"

// Op is a write (a set or a delete) as it travels between nodes.
type Op struct {
	Delete bool   `json:"delete,omitempty"`
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
}

func (o Op) storageOp() storage.Op {
	return storage.Op{Delete: o.Delete, Key: []byte(o.Key), Value: []byte(o.Value)}
}

type forwardReq struct {
	Partition int    `json:"partition"`
	Epoch     uint64 `json:"epoch"`
	Op        Op     `json:"op"`
}

// replicateReq carries a batch of consecutive writes: Ops[i] is write
// number Seq+i of the partition.
type replicateReq struct {
	Partition int    `json:"partition"`
	Epoch     uint64 `json:"epoch"`
	Seq       uint64 `json:"seq"`
	From      string `json:"from"`
	// Version is the sender's partition-table version; the replica acts
	// only once its own table has reached it.
	Version uint64 `json:"version"`
	Ops     []Op   `json:"ops"`
	// Keys, when set, is the primary's key count after Ops; the replica,
	// whose copy mirrors the primary's, then writes without reading each
	// key to count it. Senders that predate it leave it out.
	Keys *uint64 `json:"keys,omitempty"`
}

type readResp struct {
	Value string `json:"value"`
}

// peerClient talks to other nodes: the hot calls over multiplexed RPC
// connections (rpc.go), the rare ones over pooled keep-alive HTTP.
type peerClient struct {
	hc  *http.Client
	rpc *rpcClient
}

func newPeerClient() *peerClient {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Second, KeepAlive: 15 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     60 * time.Second,
	}
	return &peerClient{hc: &http.Client{Transport: tr}, rpc: newRPCClient()}
}

func (c *peerClient) close() {
	c.hc.CloseIdleConnections()
	c.rpc.close()
}

// do sends a request and decodes a JSON answer into out (if not nil). A
// failure to connect is errcode.ErrUnavailable (nothing was sent); a failure after
// the request may have been delivered is errcode.ErrOutcomeUnknown.
func (c *peerClient) do(ctx context.Context, method, addr, path string, q url.Values, body io.Reader, out any) error {
	u := "http://" + addr + InternalPrefix + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if isDialError(err) {
			return errcode.New(errcode.Unavailable, "cannot reach %s: %v", addr, err)
		}
		return errcode.New(errcode.OutcomeUnknown, "request to %s failed: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Code    string `json:"code"`
			Message string `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Code == "" {
			return errcode.New(errcode.OutcomeUnknown, "%s answered %d: %s", addr, resp.StatusCode, bytes.TrimSpace(b))
		}
		return &errcode.Error{Code: e.Code, Message: e.Message}
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return errcode.New(errcode.OutcomeUnknown, "bad answer from %s: %v", addr, err)
	}
	return nil
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (c *peerClient) forward(ctx context.Context, addr string, r forwardReq) error {
	_, err := c.rpc.call(ctx, addr, kindForward, encodeForward(r))
	return err
}

func (c *peerClient) read(ctx context.Context, addr string, p int, epoch uint64, key string, stale bool) (string, error) {
	b, err := c.rpc.call(ctx, addr, kindRead, encodeRead(readReq{Partition: p, Epoch: epoch, Stale: stale, Key: key}))
	return string(b), err
}

func (c *peerClient) replicate(ctx context.Context, addr string, r replicateReq) error {
	_, err := c.rpc.call(ctx, addr, kindReplicate, encodeReplicate(r))
	return err
}

// install streams a whole partition to a replica: the sequence number the
// copy corresponds to, then length-prefixed key and value pairs read straight
// out of one storage snapshot, then a zero-length key as the end mark.
func (c *peerClient) install(ctx context.Context, addr, from string, p int, epoch, version uint64, st Storage) error {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		bw := bufio.NewWriterSize(pw, 64<<10)
		var hdr [binary.MaxVarintLen64 * 2]byte
		err := st.Snapshot(p, func(m storage.Meta) error {
			_, err := bw.Write(binary.AppendUvarint(hdr[:0], m.Seq))
			return err
		}, func(k, v []byte) error {
			b := binary.AppendUvarint(hdr[:0], uint64(len(k)))
			b = binary.AppendUvarint(b, uint64(len(v)))
			if _, err := bw.Write(b); err != nil {
				return err
			}
			if _, err := bw.Write(k); err != nil {
				return err
			}
			_, err := bw.Write(v)
			return err
		})
		if err == nil {
			_, err = bw.Write(binary.AppendUvarint(hdr[:0], 0))
		}
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
	}()
	q := url.Values{"partition": {strconv.Itoa(p)}, "epoch": {strconv.FormatUint(epoch, 10)}, "from": {from},
		"version": {strconv.FormatUint(version, 10)}}
	err := c.do(ctx, http.MethodPost, addr, "/install", q, pr, nil)
	// Unblock the snapshot goroutine if the request ended early, and wait
	// for it: it reads the store, which may be closed after we return.
	pr.CloseWithError(errors.New("install request finished"))
	<-done
	return err
}

// readInstallStream decodes what install sends: the sequence number, and a
// function for Storage.Install that yields the pairs.
func readInstallStream(r *bufio.Reader, maxEntry uint64) (seq uint64, next func() (storage.KV, bool, error), err error) {
	seq, err = binary.ReadUvarint(r)
	if err != nil {
		return 0, nil, fmt.Errorf("read install stream: %w", err)
	}
	done := false
	next = func() (storage.KV, bool, error) {
		if done {
			return storage.KV{}, false, nil
		}
		kl, err := binary.ReadUvarint(r)
		if err != nil {
			return storage.KV{}, false, fmt.Errorf("read install stream: %w", err)
		}
		if kl == 0 {
			done = true
			return storage.KV{}, false, nil
		}
		vl, err := binary.ReadUvarint(r)
		if err != nil {
			return storage.KV{}, false, fmt.Errorf("read install stream: %w", err)
		}
		if kl > maxEntry || vl > maxEntry {
			return storage.KV{}, false, fmt.Errorf("install stream entry too large (%d, %d)", kl, vl)
		}
		buf := make([]byte, kl+vl)
		if _, err := io.ReadFull(r, buf); err != nil {
			return storage.KV{}, false, fmt.Errorf("read install stream: %w", err)
		}
		return storage.KV{Key: buf[:kl], Value: buf[kl:]}, true, nil
	}
	return seq, next, nil
}
