package peer

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// A partition copy is streamed as the sequence number the copy corresponds
// to, then each pair as uvarint key length, uvarint value length, key and
// value, then a zero key length as the end mark (keys are never empty).

// InstallWriter writes the stream of a partition copy.
type InstallWriter struct {
	w   io.Writer
	hdr [2 * binary.MaxVarintLen64]byte
}

// NewInstallWriter starts a copy at sequence number seq on w.
func NewInstallWriter(w io.Writer, seq uint64) (*InstallWriter, error) {
	iw := &InstallWriter{w: w}
	_, err := w.Write(binary.AppendUvarint(iw.hdr[:0], seq))
	return iw, err
}

// Pair writes one key and value.
func (iw *InstallWriter) Pair(k, v []byte) error {
	if len(k) == 0 {
		return fmt.Errorf("install stream: empty key")
	}
	b := binary.AppendUvarint(iw.hdr[:0], uint64(len(k)))
	b = binary.AppendUvarint(b, uint64(len(v)))
	if _, err := iw.w.Write(b); err != nil {
		return err
	}
	if _, err := iw.w.Write(k); err != nil {
		return err
	}
	_, err := iw.w.Write(v)
	return err
}

// End writes the end mark.
func (iw *InstallWriter) End() error {
	_, err := iw.w.Write(binary.AppendUvarint(iw.hdr[:0], 0))
	return err
}

// ReadInstall decodes a copy's stream: it returns the sequence number and a
// function that yields the pairs, then ok=false after the end mark. Keys
// longer than maxKey and values longer than maxValue are errors.
func ReadInstall(r io.Reader, maxKey, maxValue uint64) (seq uint64, next func() (key, value []byte, ok bool, err error), err error) {
	br, isBuffered := r.(io.ByteReader)
	if !isBuffered {
		b := bufio.NewReaderSize(r, 64<<10)
		br, r = b, b
	}
	seq, err = binary.ReadUvarint(br)
	if err != nil {
		return 0, nil, fmt.Errorf("read install stream: %w", err)
	}
	done := false
	next = func() ([]byte, []byte, bool, error) {
		if done {
			return nil, nil, false, nil
		}
		kl, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, nil, false, fmt.Errorf("read install stream: %w", err)
		}
		if kl == 0 {
			done = true
			return nil, nil, false, nil
		}
		vl, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, nil, false, fmt.Errorf("read install stream: %w", err)
		}
		if kl > maxKey || vl > maxValue {
			return nil, nil, false, fmt.Errorf("install stream entry too large (key %d bytes, value %d bytes)", kl, vl)
		}
		buf := make([]byte, kl+vl)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, nil, false, fmt.Errorf("read install stream: %w", err)
		}
		return buf[:kl], buf[kl:], true, nil
	}
	return seq, next, nil
}
