package loadgen

import (
	"context"
	"errors"
	"strconv"
)

// Target is a KV store under load. RunTarget calls it from Config.Concurrency
// workers numbered from 0; calls with the same worker number never overlap,
// so an implementation may keep unsynchronised per-worker state.
type Target interface {
	// Set writes value under key.
	Set(ctx context.Context, worker int, key string, value []byte) error
	// Get reads key. It reports found=false, with a nil error, for a key the
	// store does not have.
	Get(ctx context.Context, worker int, key string) (found bool, err error)
	// Close releases the target's connections.
	Close() error
}

// CASTarget is a Target that can write conditionally on a key's revision,
// as -workload cas needs: each of its writes is a GetRevision followed by
// a SetIf with the revision read.
type CASTarget interface {
	Target
	// GetRevision reads key's revision. It reports found=false and
	// revision 0, with a nil error, for a key the store does not have.
	GetRevision(ctx context.Context, worker int, key string) (rev uint64, found bool, err error)
	// SetIf writes value under key if key's revision is still rev (0: if
	// the key does not exist). It reports conflict=true, with a nil error,
	// when the condition did not hold and nothing was written.
	SetIf(ctx context.Context, worker int, key string, value []byte, rev uint64) (conflict bool, err error)
}

// BatchTarget is a Target that can write many keys in one request, as
// -batch needs.
type BatchTarget interface {
	Target
	// SetBatch writes value under every key in one request. err is set
	// when the request as a whole failed: then no key counts as written.
	// Otherwise failed holds the error of each key that was not written
	// (nil when all were); the slice is valid until the worker's next call.
	SetBatch(ctx context.Context, worker int, keys []string, value []byte) (failed []error, err error)
}

// KindError is an error with a short kind ("http_503", "transport", ...)
// under which the summary counts it. A Target returns one, possibly
// wrapped, to choose the kind; other errors are counted by ErrorKind.
type KindError struct {
	Kind string
	Err  error // optional detail
}

func (e *KindError) Error() string {
	if e.Err == nil {
		return e.Kind
	}
	return e.Kind + ": " + e.Err.Error()
}

func (e *KindError) Unwrap() error { return e.Err }

// ErrorKind names the kind of err for the summary: the Kind of the first
// KindError in its chain, else "timeout" for a passed deadline, "canceled"
// for a canceled context, and "other" for anything else.
func ErrorKind(err error) string {
	var ke *KindError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ke):
		return ke.Kind
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "other"
}

// DefaultKeyPrefix is what the bench keys start with (Config.KeyPrefix).
const DefaultKeyPrefix = "bench:"

// Key returns the i-th key of the key space, "bench:%08d", without fmt.
func Key(i int) string {
	var b [32]byte
	return string(appendKey(b[:0], DefaultKeyPrefix, i))
}

// appendKey appends the i-th key of the key space whose keys start with
// prefix: prefix and i in decimal, padded with zeros to 8 digits.
func appendKey(dst []byte, prefix string, i int) []byte {
	dst = append(dst, prefix...)
	if i < 0 {
		return strconv.AppendInt(dst, int64(i), 10)
	}
	var digits [20]byte
	d := strconv.AppendInt(digits[:0], int64(i), 10)
	for n := len(d); n < 8; n++ {
		dst = append(dst, '0')
	}
	return append(dst, d...)
}

// keyIndex is the inverse of appendKey: the i whose key is key, if key is
// one of the key space's (exactly as appendKey writes it).
func keyIndex(key []byte, prefix string) (int, bool) {
	if len(key) < len(prefix)+8 || string(key[:len(prefix)]) != prefix {
		return 0, false
	}
	d := key[len(prefix):]
	if len(d) > 8 && d[0] == '0' || len(d) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
