package loadgen

import "bytes"

// The CAS and batch workloads read a few fields of the server's answers: a
// get's revision, a failed set's code, a batch's per-op statuses. Every
// CAS op reads one and the batch answers grow with the batch, so they are
// picked out with a scan over the bytes rather than encoding/json's
// reflection and allocations, in keeping with the lean client (see
// h1Conn).

// walkJSON scans the JSON text b and calls f for every object member whose
// value is a scalar (string, number, true, false, null), with the depth of
// the objects and arrays around it (1: a member of the top-level object),
// the member's name as written between its quotes (escapes are not
// decoded), and its value's JSON text: a string with its quotes, or the
// literal. It reports false for text it cannot scan: an
// unterminated string or unbalanced brackets. It checks no more of the
// grammar than that; the answers come from the server being measured, and
// a malformed one shows up as a field not found.
func walkJSON(b []byte, f func(depth int, name, value []byte)) bool {
	return walkJSONEnds(b, f, nil)
}

// walkJSONEnds is walkJSON that also calls end, if not nil, as each
// object closes, with the depth of its members (1: the top-level object).
func walkJSONEnds(b []byte, f func(depth int, name, value []byte), end func(depth int)) bool {
	depth := 0
	var name []byte // the member whose value comes next, if any
	for i := 0; i < len(b); {
		switch b[i] {
		case ' ', '\t', '\r', '\n', ',', ':':
			i++
		case '{', '[':
			depth, name = depth+1, nil
			i++
		case '}', ']':
			if b[i] == '}' && end != nil && depth > 0 {
				end(depth)
			}
			depth, name = depth-1, nil
			if depth < 0 {
				return false
			}
			i++
		case '"':
			end := stringEnd(b, i+1)
			if end < 0 {
				return false
			}
			tok := b[i : end+1]
			i = end + 1
			// A string followed by a colon is a member's name.
			j := i
			for j < len(b) && (b[j] == ' ' || b[j] == '\t' || b[j] == '\r' || b[j] == '\n') {
				j++
			}
			if j < len(b) && b[j] == ':' {
				name, i = tok[1:len(tok)-1], j+1
				continue
			}
			if name != nil {
				f(depth, name, tok)
			}
			name = nil
		default:
			j := i + 1
			for j < len(b) && !isJSONDelim(b[j]) {
				j++
			}
			if name != nil {
				f(depth, name, b[i:j])
			}
			name, i = nil, j
		}
	}
	return depth == 0
}

// stringEnd returns the index of the quote that closes the JSON string
// whose contents start at b[i], or -1.
func stringEnd(b []byte, i int) int {
	for ; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++ // the escaped byte; \uXXXX's digits need no care
		case '"':
			return i
		}
	}
	return -1
}

func isJSONDelim(c byte) bool {
	switch c {
	case ',', '}', ']', ':', '"', '{', '[', ' ', '\t', '\r', '\n':
		return true
	}
	return false
}

// topUint returns the top-level member name of the JSON object b as an
// unsigned integer.
func topUint(b []byte, name string) (n uint64, ok bool) {
	walkJSON(b, func(depth int, k, v []byte) {
		if depth == 1 && !ok && string(k) == name {
			n, ok = parseUint(v)
		}
	})
	return n, ok
}

// topIs reports whether the top-level member name of the JSON object b is
// the string want.
func topIs(b []byte, name, want string) bool {
	found := false
	walkJSON(b, func(depth int, k, v []byte) {
		if depth == 1 && string(k) == name && len(v) == len(want)+2 && v[0] == '"' && string(v[1:len(v)-1]) == want {
			found = true
		}
	})
	return found
}

// parseUint parses a JSON number that is a non-negative integer, without
// the string conversion strconv would need.
func parseUint(v []byte) (uint64, bool) {
	if len(v) == 0 || len(v) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// batchStatuses calls f with the status of each result of a /kv/batch
// answer {"results":[{"status":200,...},...],"count":N}, in order, and
// reports whether the answer could be scanned. A result's status is a
// member of an object (depth 3) in the top-level array "results" (depth
// 2); the scan relies on "status" appearing nowhere else at that depth,
// which holds for the answer's shape.
func batchStatuses(b []byte, f func(status []byte)) bool {
	return bytes.Contains(b, []byte(`"results"`)) && walkJSON(b, func(depth int, k, v []byte) {
		if depth == 3 && string(k) == "status" {
			f(v)
		}
	})
}

// batchResults calls f with the status and the revision (nil when the
// result has none) of each result of a /kv/batch answer, in order, as
// batchStatuses does, whatever the order of the fields in a result.
func batchResults(b []byte, f func(status, revision []byte)) bool {
	var status, rev []byte
	return bytes.Contains(b, []byte(`"results"`)) && walkJSONEnds(b, func(depth int, k, v []byte) {
		if depth == 3 {
			switch string(k) {
			case "status":
				status = v
			case "revision":
				rev = v
			}
		}
	}, func(depth int) {
		if depth == 3 && status != nil {
			f(status, rev)
		}
		if depth <= 3 {
			status, rev = nil, nil
		}
	})
}

// statusKind is the error kind of a batch result's status: http_STATUS,
// as a single request with that answer counts.
func statusKind(status []byte) string {
	if _, ok := parseUint(status); !ok {
		return "bad_answer"
	}
	return "http_" + string(status)
}
