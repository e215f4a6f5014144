package engine

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net/http"

	"github.com/clusterkit/clusterkit/storage"
)

// PartitionDigest summarises one partition's local copy, so that tests and
// operators can check that the copies of a partition are identical.
type PartitionDigest struct {
	Partition int    `json:"partition"`
	Role      string `json:"role"` // primary, in-sync, catching-up or none
	Epoch     uint64 `json:"epoch"`
	Seq       uint64 `json:"seq"`
	Keys      uint64 `json:"keys"`
	// SHA256 covers every key and value in key order.
	SHA256 string `json:"sha256"`
}

// digest hashes partition p's copy from one storage snapshot.
func (s *Engine) digest(p int) (PartitionDigest, error) {
	h := sha256.New()
	var m storage.Meta
	var lenBuf [binary.MaxVarintLen64]byte
	err := s.store.Snapshot(p, func(meta storage.Meta) error { m = meta; return nil }, func(k, v []byte) error {
		h.Write(binary.AppendUvarint(lenBuf[:0], uint64(len(k))))
		h.Write(k)
		h.Write(binary.AppendUvarint(lenBuf[:0], uint64(len(v))))
		h.Write(v)
		return nil
	})
	if err != nil {
		return PartitionDigest{}, err
	}
	d := PartitionDigest{Partition: p, Epoch: m.Epoch, Seq: m.Seq, Keys: m.Keys, SHA256: hex.EncodeToString(h.Sum(nil)), Role: "none"}
	if rt, ok := s.router.Route(p); ok {
		self := s.router.Self()
		switch {
		case rt.Primary == self:
			d.Role = "primary"
		case rt.IsInSync(self):
			d.Role = "in-sync"
		case rt.HasReplica(self):
			d.Role = "catching-up"
		}
	}
	return d, nil
}

// handleDigest serves GET /internal/v1/digest: one digest per partition.
// Each partition is read under its lock, so no write is half-applied.
func (s *Engine) handleDigest(w http.ResponseWriter, r *http.Request) {
	out := []PartitionDigest{}
	for p := range s.router.Partitions() {
		l := s.lock(p)
		l.RLock()
		d, err := s.digest(p)
		l.RUnlock()
		if err != nil {
			writeError(w, err)
			return
		}
		out = append(out, d)
	}
	writeJSON(w, http.StatusOK, out)
}
