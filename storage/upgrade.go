package storage

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
)

// formatKey records the store's data format. A store without it was
// written before values became records (format 1): its values are bare.
var formatKey = []byte{'F'}

const currentFormat = 1

// upgrade brings a store written by an older version to the current
// format, or marks a new store as current. Bare values become records
// whose revision is their partition's sequence number at the upgrade: no
// older write is known to be newer than another, and every later write
// gets a higher number. Each partition is rewritten in one atomic commit
// that also leaves a marker, and the format is recorded (and the markers
// removed) only after all are, so an upgrade cut short resumes with the
// partitions it has not done.
func (d *DB) upgrade(log *slog.Logger) error {
	v, ok, err := read(d.db, formatKey)
	if err != nil {
		return err
	}
	if ok {
		if len(v) != 1 || v[0] != currentFormat {
			return fmt.Errorf("data format %v is not one this version reads (%d)", v, currentFormat)
		}
		return nil
	}
	parts, err := d.storedPartitions()
	if err != nil {
		return err
	}
	for _, p := range parts {
		n, err := d.upgradePartition(p)
		if err != nil {
			return fmt.Errorf("partition %d: %w", p, err)
		}
		if n > 0 {
			log.Info("storage: upgraded a partition copy to revisioned records", "partition", p, "keys", n)
		}
	}
	b := d.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange([]byte{upgradedTag}, []byte{upgradedTag + 1}, nil); err != nil {
		return err
	}
	if err := b.Set(formatKey, []byte{currentFormat}, nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// upgradedTag prefixes the marker of a partition an unfinished upgrade has
// rewritten.
const upgradedTag = 'U'

// storedPartitions lists the partitions that have metadata on disk.
func (d *DB) storedPartitions() ([]int, error) {
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: []byte{metaTag}, UpperBound: []byte{metaTag + 1}})
	if err != nil {
		return nil, err
	}
	var out []int
	for it.First(); it.Valid(); it.Next() {
		if k := it.Key(); len(k) == 5 {
			out = append(out, int(uint32(k[1])<<24|uint32(k[2])<<16|uint32(k[3])<<8|uint32(k[4])))
		}
	}
	return out, it.Close()
}

func (d *DB) upgradePartition(p int) (int, error) {
	if _, done, err := read(d.db, prefix(upgradedTag, p)); err != nil || done {
		return 0, err
	}
	m, err := d.meta(d.db, p)
	if err != nil {
		return 0, err
	}
	lo, hi := dataBounds(p)
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, err
	}
	b := d.db.NewBatch()
	defer b.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		rec := EncodeRecord(Record{Value: it.Value(), Revision: m.Seq})
		if err := b.Set(it.Key(), rec, nil); err != nil {
			_ = it.Close()
			return 0, err
		}
		n++
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	if err := b.Set(prefix(upgradedTag, p), nil, nil); err != nil {
		return 0, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return 0, errors.Join(errors.New("commit upgraded records"), err)
	}
	return n, nil
}
