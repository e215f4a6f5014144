package peer

import (
	"context"
	"encoding/binary"
)

// LogReq asks a partition's primary for its history (the change feed)
// after a position: the committed writes numbered above After.
type LogReq struct {
	Partition int
	// Epoch, if not zero, is the epoch the sender expects the primary at.
	Epoch uint64
	After uint64
	// Now asks only for the current position, with no entries.
	Now   bool
	Limit int
	// Prefix selects the entries returned (all when empty); Exact makes
	// it a single key.
	Prefix string
	Exact  bool
	// WaitMillis holds the request up to that long while there is no
	// new write to return.
	WaitMillis int64
}

// LogEntry is one committed write of a partition's history.
type LogEntry struct {
	Seq uint64
	Entry
}

// LogResp answers a LogReq.
type LogResp struct {
	Entries []LogEntry
	// Position is how far the primary read: every write numbered above
	// the request's After and at or below Position has been considered.
	Position uint64
	// Compacted: After is older than the retained history, which can be
	// read from Floor on.
	Compacted bool
	Floor     uint64
}

// ScanReq asks a partition's primary (or, when Stale, any copy) for its
// keys in [Start, End), or after Start when Exclusive.
type ScanReq struct {
	Partition int
	Epoch     uint64
	Stale     bool
	Start     string
	Exclusive bool
	End       string
	HasEnd    bool
	Limit     int
	MaxBytes  int
	Values    bool
}

// ScanItem is one key of a ScanResp.
type ScanItem struct {
	Key      string
	Value    string
	Revision uint64
}

// ScanResp answers a ScanReq.
type ScanResp struct {
	Items []ScanItem
	// More: the range may hold keys after the last item.
	More bool
	// Position is the partition's write number the items are a view of.
	Position uint64
}

// CopyInfoReq asks a replica about its copy of a partition.
type CopyInfoReq struct {
	Partition int `json:"partition"`
}

// CopyInfo describes a replica's copy: the epoch it was installed at and
// the last write it holds.
type CopyInfo struct {
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func encodeLogReq(r LogReq) []byte {
	b := make([]byte, 0, 48+len(r.Prefix))
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	b = binary.AppendUvarint(b, r.After)
	b = append(b, boolByte(r.Now)|boolByte(r.Exact)<<1)
	b = binary.AppendUvarint(b, uint64(r.Limit))
	b = appendString(b, r.Prefix)
	return binary.AppendVarint(b, r.WaitMillis)
}

func decodeLogReq(b []byte) (LogReq, error) {
	d := decoder{b: b}
	r := LogReq{Partition: d.int(), Epoch: d.uvarint(), After: d.uvarint()}
	f := d.byte()
	r.Now, r.Exact = f&1 != 0, f&2 != 0
	r.Limit, r.Prefix, r.WaitMillis = d.int(), d.string(), d.varint()
	return r, d.err
}

func encodeLogResp(r LogResp) []byte {
	size := 32
	for _, e := range r.Entries {
		size += 32 + len(e.Key) + len(e.Value)
	}
	b := make([]byte, 0, size)
	b = binary.AppendUvarint(b, r.Position)
	b = append(b, boolByte(r.Compacted))
	b = binary.AppendUvarint(b, r.Floor)
	b = binary.AppendUvarint(b, uint64(len(r.Entries)))
	for _, e := range r.Entries {
		b = binary.AppendUvarint(b, e.Seq)
		b = appendEntry(b, e.Entry)
	}
	return b
}

func decodeLogResp(b []byte) (LogResp, error) {
	d := decoder{b: b}
	r := LogResp{Position: d.uvarint(), Compacted: d.byte() == 1, Floor: d.uvarint()}
	n := d.count(6)
	r.Entries = make([]LogEntry, 0, n)
	for range n {
		r.Entries = append(r.Entries, LogEntry{Seq: d.uvarint(), Entry: d.entry()})
	}
	return r, d.err
}

func encodeScanReq(r ScanReq) []byte {
	b := make([]byte, 0, 48+len(r.Start)+len(r.End))
	b = binary.AppendUvarint(b, uint64(r.Partition))
	b = binary.AppendUvarint(b, r.Epoch)
	b = append(b, boolByte(r.Stale)|boolByte(r.Exclusive)<<1|boolByte(r.HasEnd)<<2|boolByte(r.Values)<<3)
	b = appendString(b, r.Start)
	b = appendString(b, r.End)
	b = binary.AppendUvarint(b, uint64(r.Limit))
	return binary.AppendUvarint(b, uint64(r.MaxBytes))
}

func decodeScanReq(b []byte) (ScanReq, error) {
	d := decoder{b: b}
	r := ScanReq{Partition: d.int(), Epoch: d.uvarint()}
	f := d.byte()
	r.Stale, r.Exclusive, r.HasEnd, r.Values = f&1 != 0, f&2 != 0, f&4 != 0, f&8 != 0
	r.Start, r.End, r.Limit, r.MaxBytes = d.string(), d.string(), d.int(), d.int()
	return r, d.err
}

func encodeScanResp(r ScanResp) []byte {
	size := 32
	for _, it := range r.Items {
		size += 16 + len(it.Key) + len(it.Value)
	}
	b := make([]byte, 0, size)
	b = append(b, boolByte(r.More))
	b = binary.AppendUvarint(b, r.Position)
	b = binary.AppendUvarint(b, uint64(len(r.Items)))
	for _, it := range r.Items {
		b = appendString(b, it.Key)
		b = appendString(b, it.Value)
		b = binary.AppendUvarint(b, it.Revision)
	}
	return b
}

func decodeScanResp(b []byte) (ScanResp, error) {
	d := decoder{b: b}
	r := ScanResp{More: d.byte() == 1, Position: d.uvarint()}
	n := d.count(3)
	r.Items = make([]ScanItem, 0, n)
	for range n {
		r.Items = append(r.Items, ScanItem{Key: d.string(), Value: d.string(), Revision: d.uvarint()})
	}
	return r, d.err
}

// Log asks node, a partition's primary, for its history.
func (c *Client) Log(ctx context.Context, node string, req LogReq) (LogResp, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Data.ServeLog(ctx, req)
	}
	b, err := c.call(ctx, node, kindLog, encodeLogReq(req))
	if err != nil {
		return LogResp{}, err
	}
	return decodeLogResp(b)
}

// Scan asks node for a range of a partition's keys.
func (c *Client) Scan(ctx context.Context, node string, req ScanReq) (ScanResp, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Data.ServeScan(ctx, req)
	}
	b, err := c.call(ctx, node, kindScan, encodeScanReq(req))
	if err != nil {
		return ScanResp{}, err
	}
	return decodeScanResp(b)
}

// CopyInfo asks node about its copy of a partition.
func (c *Client) CopyInfo(ctx context.Context, node string, req CopyInfoReq) (CopyInfo, error) {
	if h := c.localHandlers(node); h != nil {
		return h.Data.ServeCopyInfo(ctx, req)
	}
	var out CopyInfo
	b, err := c.call(ctx, node, kindCopyInfo, encodeJSON(req))
	if err == nil {
		err = decodeJSON(b, &out)
	}
	return out, err
}
