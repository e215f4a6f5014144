package peer

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// A partition copy is streamed as the sequence number the copy corresponds
// to, then each pair as uvarint key length, uvarint value length, key and
// value, then a zero key length as the end mark (keys are never empty);
// then the partition's retained history: the uvarint floor, each entry as
// uvarint write number, uvarint length and the entry as stored, and a zero
// write number as the end mark.

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

// Log starts the copy's history, after End: floor is where it starts.
func (iw *InstallWriter) Log(floor uint64) error {
	_, err := iw.w.Write(binary.AppendUvarint(iw.hdr[:0], floor))
	return err
}

// LogEntry writes one history entry as stored (seq is never 0).
func (iw *InstallWriter) LogEntry(seq uint64, raw []byte) error {
	if seq == 0 {
		return fmt.Errorf("install stream: history entry 0")
	}
	b := binary.AppendUvarint(iw.hdr[:0], seq)
	b = binary.AppendUvarint(b, uint64(len(raw)))
	if _, err := iw.w.Write(b); err != nil {
		return err
	}
	_, err := iw.w.Write(raw)
	return err
}

// EndLog writes the history's end mark, the end of the stream.
func (iw *InstallWriter) EndLog() error { return iw.End() }

// InstallReader decodes a copy's stream: Seq, then the pairs (Next), then
// the history (Log, then NextLog).
type InstallReader struct {
	// Seq is the write number the copy corresponds to.
	Seq              uint64
	r                io.Reader
	br               io.ByteReader
	maxKey, maxValue uint64
	pairsDone        bool
	logDone          bool
}

// NewInstallReader starts decoding a copy's stream. Keys longer than
// maxKey and values longer than maxValue are errors; a history entry may
// hold both and a little more.
func NewInstallReader(r io.Reader, maxKey, maxValue uint64) (*InstallReader, error) {
	br, isBuffered := r.(io.ByteReader)
	if !isBuffered {
		b := bufio.NewReaderSize(r, 64<<10)
		br, r = b, b
	}
	seq, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, fmt.Errorf("read install stream: %w", err)
	}
	return &InstallReader{Seq: seq, r: r, br: br, maxKey: maxKey, maxValue: maxValue}, nil
}

// Next yields the next pair, then ok=false after the pairs' end mark.
func (ir *InstallReader) Next() (key, value []byte, ok bool, err error) {
	if ir.pairsDone {
		return nil, nil, false, nil
	}
	kl, err := binary.ReadUvarint(ir.br)
	if err != nil {
		return nil, nil, false, fmt.Errorf("read install stream: %w", err)
	}
	if kl == 0 {
		ir.pairsDone = true
		return nil, nil, false, nil
	}
	vl, err := binary.ReadUvarint(ir.br)
	if err != nil {
		return nil, nil, false, fmt.Errorf("read install stream: %w", err)
	}
	if kl > ir.maxKey || vl > ir.maxValue {
		return nil, nil, false, fmt.Errorf("install stream entry too large (key %d bytes, value %d bytes)", kl, vl)
	}
	buf := make([]byte, kl+vl)
	if _, err := io.ReadFull(ir.r, buf); err != nil {
		return nil, nil, false, fmt.Errorf("read install stream: %w", err)
	}
	return buf[:kl], buf[kl:], true, nil
}

// Log reads where the copy's history starts; call it once Next is done.
func (ir *InstallReader) Log() (floor uint64, err error) {
	if !ir.pairsDone {
		return 0, fmt.Errorf("install stream: history before the end of the pairs")
	}
	floor, err = binary.ReadUvarint(ir.br)
	if err != nil {
		return 0, fmt.Errorf("read install stream history: %w", err)
	}
	return floor, nil
}

// NextLog yields the next history entry, then ok=false after the end mark.
func (ir *InstallReader) NextLog() (seq uint64, raw []byte, ok bool, err error) {
	if ir.logDone {
		return 0, nil, false, nil
	}
	seq, err = binary.ReadUvarint(ir.br)
	if err != nil {
		return 0, nil, false, fmt.Errorf("read install stream history: %w", err)
	}
	if seq == 0 {
		ir.logDone = true
		return 0, nil, false, nil
	}
	n, err := binary.ReadUvarint(ir.br)
	if err != nil {
		return 0, nil, false, fmt.Errorf("read install stream history: %w", err)
	}
	if n > ir.maxKey+ir.maxValue+64 {
		return 0, nil, false, fmt.Errorf("install stream history entry too large (%d bytes)", n)
	}
	raw = make([]byte, n)
	if _, err := io.ReadFull(ir.r, raw); err != nil {
		return 0, nil, false, fmt.Errorf("read install stream history: %w", err)
	}
	return seq, raw, true, nil
}

// ReadInstall decodes a copy's stream: it returns the sequence number and a
// function that yields the pairs, then ok=false after the end mark. Keys
// longer than maxKey and values longer than maxValue are errors.
func ReadInstall(r io.Reader, maxKey, maxValue uint64) (seq uint64, next func() (key, value []byte, ok bool, err error), err error) {
	ir, err := NewInstallReader(r, maxKey, maxValue)
	if err != nil {
		return 0, nil, err
	}
	return ir.Seq, ir.Next, nil
}
