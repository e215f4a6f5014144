package kvapi

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
)

// writeParams are the options a write may carry, from its JSON body, its
// query string or both (a field given in both places must agree).
type writeParams struct {
	IfRevision *number `json:"if_revision"`
	IfAbsent   *bool   `json:"if_absent"`
	IfExists   *bool   `json:"if_exists"`
	TTL        *string `json:"ttl"`
	KeepTTL    *bool   `json:"keep_ttl"`
	Prev       *bool   `json:"prev"`
	MinCopies  *number `json:"min_copies"`
}

// number is a JSON number kept as written, so that its range is checked
// with a clear error; unlike json.Number it refuses a quoted string.
type number string

func (n *number) UnmarshalJSON(b []byte) error {
	var v json.Number
	if len(b) > 0 && b[0] == '"' {
		return fmt.Errorf("%s must be a number, not a string", b)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*n = number(v)
	return nil
}

// merge adds the query string's options to p (from a body, or empty).
func (p *writeParams) merge(q url.Values) error {
	str := func(name string, dst **string) error {
		v, ok := q[name]
		if !ok {
			return nil
		}
		if *dst != nil && **dst != v[0] {
			return errcode.New(errcode.BadRequest, "%s is given both in the body and the query string, with different values", name)
		}
		*dst = &v[0]
		return nil
	}
	num := func(name string, dst **number) error {
		var s *string
		if *dst != nil {
			t := string(**dst)
			s = &t
		}
		if err := str(name, &s); err != nil || s == nil {
			return err
		}
		n := number(*s)
		*dst = &n
		return nil
	}
	flag := func(name string, dst **bool) error {
		v, ok := q[name]
		if !ok {
			return nil
		}
		b, err := strconv.ParseBool(v[0])
		if err != nil {
			return errcode.New(errcode.InvalidCondition, "%s must be true or false, not %q", name, v[0])
		}
		if *dst != nil && **dst != b {
			return errcode.New(errcode.BadRequest, "%s is given both in the body and the query string, with different values", name)
		}
		*dst = &b
		return nil
	}
	for _, err := range []error{
		num("if_revision", &p.IfRevision), flag("if_absent", &p.IfAbsent), flag("if_exists", &p.IfExists),
		str("ttl", &p.TTL), flag("keep_ttl", &p.KeepTTL), flag("prev", &p.Prev), num("min_copies", &p.MinCopies),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

func isTrue(b *bool) bool { return b != nil && *b }

// conditions puts p's conditions on op.
func (p *writeParams) conditions(op *engine.Op) error {
	if p.IfRevision != nil {
		n, err := strconv.ParseUint(string(*p.IfRevision), 10, 64)
		if err != nil {
			return errcode.New(errcode.InvalidCondition, "if_revision must be a non-negative integer, not %q", string(*p.IfRevision))
		}
		op.HasIfRevision, op.IfRevision = true, n
	}
	if isTrue(p.IfAbsent) {
		if op.HasIfRevision && op.IfRevision != 0 {
			return errcode.New(errcode.InvalidCondition, "if_absent contradicts if_revision=%d", op.IfRevision)
		}
		op.HasIfRevision, op.IfRevision = true, 0
	}
	if isTrue(p.IfExists) {
		if isTrue(p.IfAbsent) || (op.HasIfRevision && op.IfRevision == 0) {
			return errcode.New(errcode.InvalidCondition, "if_exists contradicts if_absent (or if_revision=0): no key can meet both")
		}
		op.IfExists = true
	}
	op.Prev = isTrue(p.Prev)
	return nil
}

// ttl applies p's TTL options to a set.
func (p *writeParams) ttl(op *engine.Op) error {
	op.KeepTTL = isTrue(p.KeepTTL)
	if p.TTL == nil {
		return nil
	}
	if op.KeepTTL {
		return errcode.New(errcode.InvalidTTL, "ttl and keep_ttl exclude each other")
	}
	d, err := parseTTL(*p.TTL, false)
	if err != nil {
		return err
	}
	op.TTLMillis = d.Milliseconds()
	return nil
}

// parseTTL parses a TTL (a Go duration, "30s"); zero only if allowed.
func parseTTL(s string, zeroOK bool) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errcode.New(errcode.InvalidTTL, "ttl must be a duration such as \"30s\" or \"1h30m\", not %q", s)
	}
	if d == 0 && zeroOK {
		return 0, nil
	}
	if d < engine.MinTTL || d > engine.MaxTTL {
		return 0, errcode.New(errcode.InvalidTTL, "ttl must be from %s to %s, not %s", engine.MinTTL, fmtDuration(engine.MaxTTL), s)
	}
	if d%time.Millisecond != 0 {
		return 0, errcode.New(errcode.InvalidTTL, "ttl has a resolution of a millisecond, not %s", s)
	}
	return d, nil
}

func fmtDuration(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return d.String()
}

// minCopies parses min_copies (0: the cluster's floor).
func (p *writeParams) minCopies() (int, error) {
	if p.MinCopies == nil {
		return 0, nil
	}
	n, err := strconv.Atoi(string(*p.MinCopies))
	if err != nil || n < 1 || n > 7 {
		return 0, errcode.New(errcode.BadRequest, "min_copies must be an integer from 1 to 7, not %q", string(*p.MinCopies))
	}
	return n, nil
}
