package peer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/clusterkit/clusterkit/errcode"
)

// Op is a client write as it travels to the partition's primary, which
// checks its conditions and turns it into log entries.
type Op struct {
	Delete bool   `json:"delete,omitempty"`
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	// Touch changes only the key's TTL (POST /kv/expire); the value stays.
	Touch bool `json:"touch,omitempty"`
	// Expire deletes the key only if its deadline has passed (the sweep).
	Expire bool `json:"expire,omitempty"`
	// HasIfRevision makes the write conditional on the key's revision
	// being IfRevision (0: the key must not exist).
	HasIfRevision bool   `json:"has_if_revision,omitempty"`
	IfRevision    uint64 `json:"if_revision,omitempty"`
	// IfExists makes the write conditional on the key existing.
	IfExists bool `json:"if_exists,omitempty"`
	// TTLMillis, when positive, gives a set (or a touch) a deadline that
	// many milliseconds after the primary receives it.
	TTLMillis int64 `json:"ttl_ms,omitempty"`
	// KeepTTL makes a set keep the key's current deadline.
	KeepTTL bool `json:"keep_ttl,omitempty"`
	// Prev asks for the key's previous value and revision in the result.
	Prev bool `json:"prev,omitempty"`
	// Get reads the key (in Result.Prev) and writes nothing: a read
	// inside an atomic batch, at the batch's point in the order.
	Get bool `json:"get,omitempty"`
}

// ForwardReq is a client write, or a batch of writes of one partition, sent
// to the partition's primary, tagged with the epoch the sender's table
// showed. The ops are committed in one replication round; Atomic commits
// all of them or none.
type ForwardReq struct {
	Partition int
	Epoch     uint64
	Ops       []Op
	Atomic    bool
	// MinCopies raises the copy floor for these writes (0: the cluster's).
	MinCopies int
}

// Result codes of one op in a ForwardResp (empty: applied).
const (
	ResultConditionFailed = "condition_failed"
	// ResultAborted: an atomic batch was not applied because another of
	// its ops failed.
	ResultAborted = "aborted"
	// ResultNotFound: a touch of a key that does not exist.
	ResultNotFound = "key_not_found"
)

// Result is the outcome of one op.
type Result struct {
	Code string
	// Revision is the revision the op produced; for a failed condition,
	// the key's current revision (0 when it does not exist).
	Revision uint64
	// Exists is whether the key existed before the op.
	Exists bool
	// ExpiresAt is the key's deadline after the op (Unix ms, 0: none).
	ExpiresAt int64
	// Prev is the key's state before the op, when asked for and present.
	Prev *Versioned
}

// Versioned is a value with its revision.
type Versioned struct {
	Value    string
	Revision uint64
}

// ForwardResp holds one Result per op of a ForwardReq, in order.
type ForwardResp struct {
	Results []Result
}

// ReadReq is a client read sent to the partition's primary (or, when Stale,
// to any in-sync copy).
type ReadReq struct {
	Partition int
	Epoch     uint64
	Stale     bool
	Key       string
}

// ReadResp is a key's value as the serving copy holds it.
type ReadResp struct {
	Value     string
	Revision  uint64
	ExpiresAt int64 // Unix ms, 0: none
	// Applied is the serving copy's last applied revision of the
	// partition, and HeardAgoMillis how long since it last heard from the
	// partition's primary (0 on the primary): how stale a stale read is.
	Applied        uint64
	HeardAgoMillis int64
}

// Entry is one write of a partition's log, as the primary decided it: a
// replica applies it as it is, with no condition to check. Entry number
// Seq+i of a ReplicateReq gives its key the revision Seq+i.
type Entry struct {
	Delete bool
	// Expired marks a delete that is an expiry.
	Expired bool
	Key     string
	Value   string
	// ExpiresAt is the key's deadline (Unix ms, 0: none); PrevExpiresAt
	// the one it had before, so that the expiry index is kept blind.
	ExpiresAt     int64
	PrevExpiresAt int64
}

// ReplicateReq carries a round of consecutive log entries from a primary to
// a replica: Entries[i] is write number Seq+i of the partition.
type ReplicateReq struct {
	Partition int
	Epoch     uint64
	Seq       uint64
	From      string
	// Version is the sender's partition-table version; the replica acts
	// only once its own table has reached it.
	Version uint64
	Entries []Entry
	// Keys, when set, is the primary's key count after Entries; the
	// replica, whose copy mirrors the primary's, then writes without
	// reading each key to count it.
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
	// Remove: the node leaves for good, so its Raft vote goes too.
	Remove bool `json:"remove,omitempty"`
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

// Op flag bits.
const (
	opDelete = 1 << iota
	opTouch
	opExpire
	opHasIf
	opIfExists
	opKeepTTL
	opPrev
	opGet
)

func appendOp(b []byte, op Op) []byte {
	var flags byte
	for _, f := range [...]struct {
		bit byte
		on  bool
	}{{opDelete, op.Delete}, {opTouch, op.Touch}, {opExpire, op.Expire}, {opHasIf, op.HasIfRevision},
		{opIfExists, op.IfExists}, {opKeepTTL, op.KeepTTL}, {opPrev, op.Prev}, {opGet, op.Get}} {
		if f.on {
			flags |= f.bit
		}
	}
	b = append(b, flags)
	b = appendString(b, op.Key)
	b = appendString(b, op.Value)
	b = binary.AppendUvarint(b, op.IfRevision)
	return binary.AppendVarint(b, op.TTLMillis)
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

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
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
	f := d.byte()
	return Op{
		Delete: f&opDelete != 0, Touch: f&opTouch != 0, Expire: f&opExpire != 0,
		HasIfRevision: f&opHasIf != 0, IfExists: f&opIfExists != 0, KeepTTL: f&opKeepTTL != 0, Prev: f&opPrev != 0, Get: f&opGet != 0,
		Key: d.string(), Value: d.string(), IfRevision: d.uvarint(), TTLMillis: d.varint(),
	}
}

func (d *decoder) int() int {
	v := d.uvarint()
	if v > 1<<31 {
		d.fail()
	}
	return int(v)
}

// count reads a list length; every element takes at least min bytes, so a
// length beyond what is left is malformed (and allocates nothing).
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)/min) {
		d.fail()
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func encodeForward(r ForwardReq) []byte {
	size := 32
	for _, op := range r.Ops {
		size += 24 + len(op.Key) + len(op.Value)
	}
	b := make([]byte, 0, size)
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	atomic := byte(0)
	if r.Atomic {
		atomic = 1
	}
	b = append(b, atomic)
	b = binary.AppendUvarint(b, uint64(r.MinCopies))
	b = binary.AppendUvarint(b, uint64(len(r.Ops)))
	for _, op := range r.Ops {
		b = appendOp(b, op)
	}
	return b
}

func decodeForward(b []byte) (ForwardReq, error) {
	d := decoder{b: b}
	r := ForwardReq{Partition: d.int(), Epoch: d.uvarint(), Atomic: d.byte() == 1, MinCopies: d.int()}
	n := d.count(5)
	r.Ops = make([]Op, 0, n)
	for range n {
		r.Ops = append(r.Ops, d.op())
	}
	return r, d.err
}

func encodeForwardResp(r ForwardResp) []byte {
	b := binary.AppendUvarint(nil, uint64(len(r.Results)))
	for _, res := range r.Results {
		b = appendString(b, res.Code)
		b = binary.AppendUvarint(b, res.Revision)
		flags := byte(0)
		if res.Exists {
			flags |= 1
		}
		if res.Prev != nil {
			flags |= 2
		}
		b = append(b, flags)
		b = binary.AppendVarint(b, res.ExpiresAt)
		if res.Prev != nil {
			b = appendString(b, res.Prev.Value)
			b = binary.AppendUvarint(b, res.Prev.Revision)
		}
	}
	return b
}

func decodeForwardResp(b []byte) (ForwardResp, error) {
	d := decoder{b: b}
	n := d.count(4)
	r := ForwardResp{Results: make([]Result, 0, n)}
	for range n {
		res := Result{Code: d.string(), Revision: d.uvarint()}
		flags := d.byte()
		res.Exists = flags&1 != 0
		res.ExpiresAt = d.varint()
		if flags&2 != 0 {
			res.Prev = &Versioned{Value: d.string(), Revision: d.uvarint()}
		}
		r.Results = append(r.Results, res)
	}
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

func encodeReadResp(r ReadResp) []byte {
	b := make([]byte, 0, 40+len(r.Value))
	b = binary.AppendUvarint(b, r.Revision)
	b = binary.AppendVarint(b, r.ExpiresAt)
	b = binary.AppendUvarint(b, r.Applied)
	b = binary.AppendVarint(b, r.HeardAgoMillis)
	return appendString(b, r.Value)
}

func decodeReadResp(b []byte) (ReadResp, error) {
	d := decoder{b: b}
	r := ReadResp{Revision: d.uvarint(), ExpiresAt: d.varint(), Applied: d.uvarint(), HeardAgoMillis: d.varint(), Value: d.string()}
	return r, d.err
}

func appendEntry(b []byte, e Entry) []byte {
	var flags byte
	if e.Delete {
		flags |= 1
	}
	if e.Expired {
		flags |= 2
	}
	b = append(b, flags)
	b = appendString(b, e.Key)
	b = appendString(b, e.Value)
	b = binary.AppendVarint(b, e.ExpiresAt)
	return binary.AppendVarint(b, e.PrevExpiresAt)
}

func (d *decoder) entry() Entry {
	f := d.byte()
	return Entry{Delete: f&1 != 0, Expired: f&2 != 0, Key: d.string(), Value: d.string(), ExpiresAt: d.varint(), PrevExpiresAt: d.varint()}
}

func encodeReplicate(r ReplicateReq) []byte {
	size := 64 + len(r.From)
	for _, e := range r.Entries {
		size += 24 + len(e.Key) + len(e.Value)
	}
	b := make([]byte, 0, size)
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	b = binary.AppendUvarint(b, r.Seq)
	b = binary.AppendUvarint(b, r.Version)
	b = appendString(b, r.From)
	b = binary.AppendUvarint(b, uint64(len(r.Entries)))
	for _, e := range r.Entries {
		b = appendEntry(b, e)
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
	n := d.count(5) // every entry takes at least five bytes
	if d.err != nil {
		return r, d.err
	}
	r.Entries = make([]Entry, 0, n)
	for range n {
		r.Entries = append(r.Entries, d.entry())
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
