package peer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/clusterkit/clusterkit/errcode"
)

// Op is a write (a set or a delete) as it travels between nodes.
type Op struct {
	Delete bool   `json:"delete,omitempty"`
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
}

// ForwardReq is a client write sent to the partition's primary, tagged with
// the epoch the sender's table showed.
type ForwardReq struct {
	Partition int
	Epoch     uint64
	Op        Op
}

// ReadReq is a client read sent to the partition's primary (or, when Stale,
// to any in-sync copy).
type ReadReq struct {
	Partition int
	Epoch     uint64
	Stale     bool
	Key       string
}

// ReplicateReq carries a round of consecutive writes from a primary to a
// replica: Ops[i] is write number Seq+i of the partition.
type ReplicateReq struct {
	Partition int
	Epoch     uint64
	Seq       uint64
	From      string
	// Version is the sender's partition-table version; the replica acts
	// only once its own table has reached it.
	Version uint64
	Ops     []Op
	// Keys, when set, is the primary's key count after Ops; the replica,
	// whose copy mirrors the primary's, then writes without reading each
	// key to count it.
	Keys *uint64
}

// LeaseReq asks a replica for read leases on the listed partitions, on
// behalf of their primary From.
type LeaseReq struct {
	From       string      `json:"from"`
	Partitions []LeasePart `json:"partitions"`
}

// LeasePart is one partition of a LeaseReq at the epoch the primary leads.
type LeasePart struct {
	Partition int    `json:"partition"`
	Epoch     uint64 `json:"epoch"`
}

// LeaseResp lists the partitions whose lease the replica granted.
type LeaseResp struct {
	Granted []int `json:"granted"`
}

// InstallReq heads a partition copy streamed from a primary to a replica.
type InstallReq struct {
	Partition int    `json:"partition"`
	Epoch     uint64 `json:"epoch"`
	Version   uint64 `json:"version"`
	From      string `json:"from"`
}

// Digest summarises one partition's local copy, so that tests and
// operators can check that the copies of a partition are identical.
type Digest struct {
	Partition int    `json:"partition"`
	Role      string `json:"role"` // primary, in-sync, catching-up or none
	Epoch     uint64 `json:"epoch"`
	Seq       uint64 `json:"seq"`
	Keys      uint64 `json:"keys"`
	// SHA256 covers every key and value in key order.
	SHA256 string `json:"sha256"`
}

// Member is one gossip member, as a joining node needs it.
type Member struct {
	ID         string `json:"id"`
	GossipAddr string `json:"gossip_addr"`
	State      string `json:"state"`
}

// applyReq carries a consensus command to the Raft leader.
type applyReq struct {
	Command []byte `json:"command"`
}

type applyResp struct {
	Index uint64 `json:"index"`
}

type drainReq struct {
	Node string `json:"node"`
}

// KeyringReq changes or lists a node's cluster keys: Op is "list",
// "install", "use" or "remove", Key the key in base64 (not for "list").
type KeyringReq struct {
	Op  string `json:"op"`
	Key string `json:"key,omitempty"`
}

// KeyringStatus is a node's keyring by fingerprints.
type KeyringStatus struct {
	Node    string   `json:"node"`
	Primary string   `json:"primary"`
	Keys    []string `json:"keys"`
}

// ---------------------------------------------------------------------------
// binary encoding of the hot messages

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendOp(b []byte, op Op) []byte {
	var flags byte
	if op.Delete {
		flags = 1
	}
	b = append(b, flags)
	b = appendString(b, op.Key)
	return appendString(b, op.Value)
}

// errMalformed is returned for a payload that does not decode.
var errMalformed = errors.New("malformed frame")

// decoder reads what the append functions wrote; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errMalformed
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) op() Op {
	flags := d.byte()
	return Op{Delete: flags&1 != 0, Key: d.string(), Value: d.string()}
}

func (d *decoder) int() int {
	v := d.uvarint()
	if v > 1<<31 {
		d.fail()
	}
	return int(v)
}

func encodeForward(r ForwardReq) []byte {
	b := make([]byte, 0, 32+len(r.Op.Key)+len(r.Op.Value))
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	return appendOp(b, r.Op)
}

func decodeForward(b []byte) (ForwardReq, error) {
	d := decoder{b: b}
	r := ForwardReq{Partition: d.int(), Epoch: d.uvarint(), Op: d.op()}
	return r, d.err
}

func encodeRead(r ReadReq) []byte {
	b := make([]byte, 0, 24+len(r.Key))
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	stale := byte(0)
	if r.Stale {
		stale = 1
	}
	b = append(b, stale)
	return appendString(b, r.Key)
}

func decodeRead(b []byte) (ReadReq, error) {
	d := decoder{b: b}
	r := ReadReq{Partition: d.int(), Epoch: d.uvarint(), Stale: d.byte() == 1, Key: d.string()}
	return r, d.err
}

func encodeReplicate(r ReplicateReq) []byte {
	size := 64 + len(r.From)
	for _, op := range r.Ops {
		size += 12 + len(op.Key) + len(op.Value)
	}
	b := make([]byte, 0, size)
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	b = binary.AppendUvarint(b, r.Seq)
	b = binary.AppendUvarint(b, r.Version)
	b = appendString(b, r.From)
	b = binary.AppendUvarint(b, uint64(len(r.Ops)))
	for _, op := range r.Ops {
		b = appendOp(b, op)
	}
	if r.Keys != nil {
		// Trailing and optional: a receiver that predates it ignores it.
		b = binary.AppendUvarint(b, *r.Keys)
	}
	return b
}

func decodeReplicate(b []byte) (ReplicateReq, error) {
	d := decoder{b: b}
	r := ReplicateReq{Partition: d.int(), Epoch: d.uvarint(), Seq: d.uvarint(), Version: d.uvarint(), From: d.string()}
	n := d.uvarint()
	if n > uint64(len(d.b)) { // every op takes at least three bytes
		d.fail()
	}
	if d.err != nil {
		return r, d.err
	}
	r.Ops = make([]Op, 0, n)
	for range n {
		r.Ops = append(r.Ops, d.op())
	}
	if d.err == nil && len(d.b) > 0 {
		keys := d.uvarint()
		r.Keys = &keys
	}
	return r, d.err
}

// The rare messages travel as JSON.
func encodeJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own message types are encoded; they always marshal.
		panic(fmt.Sprintf("peer: encode %T: %v", v, err))
	}
	return b
}

func decodeJSON(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", errMalformed, err)
	}
	return nil
}

// A response payload is one byte, 0 for success and 1 for an error, then
// the body, or the error's code and message.
func encodeResponse(b, body []byte, err error) []byte {
	if err == nil {
		b = append(b, 0)
		return append(b, body...)
	}
	e := errcode.As(err)
	b = append(b, 1)
	b = appendString(b, e.Code)
	return appendString(b, e.Message)
}

func decodeResponse(p []byte) ([]byte, error) {
	d := decoder{b: p}
	switch d.byte() {
	case 0:
		return d.b, nil
	case 1:
		e := &errcode.Error{Code: d.string(), Message: d.string()}
		if d.err != nil {
			return nil, d.err
		}
		return nil, e
	}
	d.fail()
	return nil, d.err
}
