package engine

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"

	"github.com/clusterkit/clusterkit/peer"
	"github.com/clusterkit/clusterkit/storage"
)

// digest hashes partition p's copy from one storage snapshot.
func (s *Engine) digest(p int) (peer.Digest, error) {
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
		return peer.Digest{}, err
	}
	d := peer.Digest{Partition: p, Epoch: m.Epoch, Seq: m.Seq, Keys: m.Keys, SHA256: hex.EncodeToString(h.Sum(nil)), Role: "none"}
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

// ServeDigest returns one digest per partition. Each partition is read
// under its lock, so no write is half-applied.
func (s *Engine) ServeDigest(ctx context.Context) ([]peer.Digest, error) {
	out := []peer.Digest{}
	for p := range s.router.Partitions() {
		l := s.lock(p)
		l.RLock()
		d, err := s.digest(p)
		l.RUnlock()
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}
