package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/clusterkit/clusterkit/client"
)

func errorsIsResync(err error) bool { return errors.Is(err, client.ErrResyncRequired) }

// batchInput is POST /kv/batch's body, as the CLI reads it.
type batchInput struct {
	Ops       []batchOpInput `json:"ops"`
	Atomic    bool           `json:"atomic"`
	MinCopies int            `json:"min_copies"`
}

type batchOpInput struct {
	Op          string  `json:"op"`
	Key         string  `json:"key"`
	Value       *string `json:"value"`
	TTL         string  `json:"ttl"`
	KeepTTL     bool    `json:"keep_ttl"`
	IfRevision  *uint64 `json:"if_revision"`
	IfAbsent    bool    `json:"if_absent"`
	IfExists    bool    `json:"if_exists"`
	Prev        bool    `json:"prev"`
	Consistency string  `json:"consistency"`
}

// parseBatch reads a batch body, or a bare array of ops.
func parseBatch(b []byte) (batchInput, []client.Op, error) {
	var in batchInput
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return in, nil, usagef("the batch is empty: give {\"ops\":[...]} in FILE or on stdin")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var err error
	if b[0] == '[' {
		err = dec.Decode(&in.Ops)
	} else {
		err = dec.Decode(&in)
	}
	if err != nil {
		return in, nil, usagef("batch input: %v; want {\"ops\":[{\"op\":\"set\",\"key\":...,\"value\":...}]}", err)
	}
	if len(in.Ops) == 0 {
		return in, nil, usagef("the batch has no ops")
	}
	ops := make([]client.Op, len(in.Ops))
	for i, o := range in.Ops {
		op := strings.ToLower(o.Op)
		if op == "del" {
			op = "delete"
		}
		if op != "set" && op != "get" && op != "delete" {
			return in, nil, usagef("ops[%d]: op %q: want set, get or delete", i, o.Op)
		}
		if o.Key == "" {
			return in, nil, usagef("ops[%d]: no key", i)
		}
		c, err := parseConsistency(o.Consistency, false)
		if err != nil {
			return in, nil, usagef("ops[%d]: %v", i, err)
		}
		x := client.Op{Op: op, Key: o.Key, KeepTTL: o.KeepTTL, IfRevision: o.IfRevision, IfAbsent: o.IfAbsent,
			IfExists: o.IfExists, Prev: o.Prev, Consistency: c}
		if op == "set" {
			if o.Value == nil {
				return in, nil, usagef("ops[%d]: a set needs a value", i)
			}
			x.Value = *o.Value
		}
		if o.TTL != "" {
			if x.TTL, err = time.ParseDuration(o.TTL); err != nil {
				return in, nil, usagef("ops[%d]: ttl %q: want a duration such as 30s", i, o.TTL)
			}
		}
		ops[i] = x
	}
	return in, ops, nil
}

func kvBatch(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	atomic := fs.Bool("atomic", false, "commit every write together or none (the keys must share a partition)")
	minCopies := fs.Int("min-copies", 0, "acknowledge the writes only once they are on `N` copies")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, 1, "at most a FILE"); err != nil {
			return err
		}
		var raw []byte
		var err error
		if len(args) == 0 || args[0] == "-" {
			raw, err = io.ReadAll(io.LimitReader(e.in, 16<<20))
		} else {
			raw, err = os.ReadFile(args[0])
		}
		if err != nil {
			return fmt.Errorf("read the batch: %w", err)
		}
		in, ops, err := parseBatch(raw)
		if err != nil {
			return err
		}
		o := &client.BatchOptions{Atomic: in.Atomic || *atomic, MinCopies: in.MinCopies}
		if *minCopies > 0 {
			o.MinCopies = *minCopies
		}
		cl, err := e.client(ctx)
		if err != nil {
			return err
		}
		res, err := cl.Batch(ctx, ops, o)
		if err != nil {
			return asWrite(fmt.Errorf("batch: %w", err))
		}
		if e.g.json {
			out := make([]map[string]any, len(res))
			for i, r := range res {
				out[i] = opResultJSON(r, ops[i])
			}
			if err := e.printJSON(map[string]any{"count": len(out), "results": out}); err != nil {
				return err
			}
		} else if err := printBatch(e, res, ops); err != nil {
			return err
		}
		// The op to blame: the first failure, but in an aborted atomic
		// batch the one whose condition failed, not the first aborted.
		first := -1
		for i, r := range res {
			if r.Err == nil && r.Status < 300 {
				continue
			}
			if first == -1 || (res[first].Err != nil && res[first].Err.Code == "aborted" && (r.Err == nil || r.Err.Code != "aborted")) {
				first = i
			}
		}
		for i, r := range res {
			if i == first {
				code := ""
				if r.Err != nil {
					code = r.Err.Code
				}
				return &exitError{code: codeExit(code, r.Status), name: orStatus(code, r.Status),
					msg: fmt.Sprintf("batch: op %d (%s %s) failed", i, r.Op, r.Key)}
			}
		}
		return nil
	}
}

func orStatus(code string, status int) string {
	if code != "" {
		return code
	}
	return strconv.Itoa(status)
}

func opResultJSON(r client.OpResult, op client.Op) map[string]any {
	m := map[string]any{"status": r.Status, "op": r.Op, "key": r.Key}
	if r.Err != nil {
		m["code"], m["error"] = r.Err.Code, r.Err.Message
		if r.Err.Code == "condition_failed" {
			m["current_revision"], m["exists"] = r.Err.CurrentRevision, r.Err.Exists
		}
		return m
	}
	if r.Op == "get" {
		m["value"] = r.Value
	}
	if r.Revision > 0 || r.Op != "delete" {
		m["revision"] = r.Revision
	}
	if r.Op == "delete" {
		m["deleted"] = r.Deleted
	}
	if !r.ExpiresAt.IsZero() {
		m["expires_at"] = rfc3339Milli(r.ExpiresAt)
		m["ttl_ms"] = max(0, time.Until(r.ExpiresAt)).Milliseconds()
	}
	if op.Prev {
		if r.Prev == nil {
			m["prev"] = nil
		} else {
			m["prev"] = map[string]any{"value": r.Prev.Value, "revision": r.Prev.Revision}
		}
	}
	return m
}

func printBatch(e *env, res []client.OpResult, ops []client.Op) error {
	rows := make([][]string, len(res))
	for i, r := range res {
		var result string
		switch {
		case r.Err != nil:
			result = r.Err.Code
			if r.Err.Code == "condition_failed" {
				if r.Err.Exists {
					result += fmt.Sprintf(" (at rev %d)", r.Err.CurrentRevision)
				} else {
					result += " (does not exist)"
				}
			}
		case r.Status == 404:
			result = "not found"
		case r.Op == "get":
			result = fmt.Sprintf("= %s (rev %d)", quoteIfNeeded(r.Value), r.Revision)
		case r.Op == "delete" && !r.Deleted:
			result = "did not exist"
		default:
			result = fmt.Sprintf("rev %d", r.Revision)
		}
		if !r.ExpiresAt.IsZero() {
			result += ", expires " + rfc3339Milli(r.ExpiresAt)
		}
		if ops[i].Prev && r.Err == nil {
			if r.Prev == nil {
				result += ", prev: none"
			} else {
				result += fmt.Sprintf(", prev: %s (rev %d)", quoteIfNeeded(r.Prev.Value), r.Prev.Revision)
			}
		}
		rows[i] = []string{strconv.Itoa(i), r.Op, r.Key, strconv.Itoa(r.Status), result}
	}
	return e.table([]string{"#", "OP", "KEY", "STATUS", "RESULT"}, rows)
}
