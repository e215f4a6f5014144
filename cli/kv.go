package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/clusterkit/clusterkit/client"
)

func kvCommands() []*cmd {
	return []*cmd{
		{name: "kv get", args: "KEY", summary: "print a key's value", setup: kvGet,
			help: "Prints the value followed by a newline (-json: the whole answer, with the revision and TTL).\nA missing key exits 3."},
		{name: "kv set", args: "KEY VALUE", summary: "write a key (VALUE - reads it from stdin)", setup: kvSet,
			help: "A failed condition exits 4 and writes nothing. -if-revision 0 means the key must not exist."},
		{name: "kv del", args: "KEY", summary: "delete a key", setup: kvDel,
			help: "Deleting a missing key succeeds and changes nothing, unless -if-exists or -if-revision is given (then it exits 4)."},
		{name: "kv expire", args: "KEY TTL", summary: "set, refresh (TTL 30s) or remove (TTL 0) a key's TTL", setup: kvExpire,
			help: "An expire is a write: it gives the key a new revision. A missing key exits 3."},
		{name: "kv list", args: "", summary: "list the keys one node stores (primary or replica)", setup: kvList},
		{name: "kv scan", args: "[PREFIX]", summary: "read a range of keys across the cluster, in key order", setup: kvScan,
			help: "The range is PREFIX (or -prefix), or -start (inclusive) and -end (exclusive); none is every key.\nWithout -all it prints one page; the cursor of the next page goes to stderr."},
		{name: "kv watch", args: "[KEY]", summary: "print every change of a key or a prefix as it happens", setup: kvWatch, stream: true,
			help: "One line per event (set user:1 = Alice (rev 9)); -json: one JSON object per line.\nRuns until interrupted (Ctrl-C exits 0), resuming on its own through another node if one fails."},
		{name: "kv batch", args: "[FILE]", summary: "run several ops in one request (JSON from FILE or stdin)", setup: kvBatch,
			help: `The input is the body of POST /kv/batch (see README "Batches"), or just its ops array:
  {"ops":[{"op":"set","key":"user:1","value":"Alice","ttl":"30s"},
          {"op":"get","key":"user:2"},
          {"op":"delete","key":"user:3","if_exists":true}],"atomic":false}
FILE - or no FILE reads stdin. Exits 0 when every op succeeded, else with the code of the first
failed op (3 a get of a missing key, 4 a failed condition or aborted atomic batch, 5, 6, 7).`},
	}
}

// consistencyFlags are -stale and -consistency.
type consistencyFlags struct {
	stale bool
	mode  string
}

func (c *consistencyFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&c.stale, "stale", false, "read from a nearby in-sync copy, which may be a moment old (-consistency stale)")
	fs.StringVar(&c.mode, "consistency", "", "linearizable (the default) or stale")
}

func (c *consistencyFlags) value() (client.Consistency, error) {
	return parseConsistency(c.mode, c.stale)
}

func parseConsistency(mode string, stale bool) (client.Consistency, error) {
	switch strings.ToLower(mode) {
	case "", "linearizable", "strong":
		if stale {
			if mode != "" {
				return "", usagef("-stale and -consistency %s contradict each other", mode)
			}
			return client.Stale, nil
		}
		return client.Linearizable, nil
	case "stale":
		return client.Stale, nil
	}
	return "", usagef("-consistency %q: want linearizable or stale", mode)
}

// kvJSON is a key as the KV API writes it.
type kvJSON struct {
	Key       string  `json:"key"`
	Value     *string `json:"value,omitempty"`
	Revision  uint64  `json:"revision"`
	ExpiresAt string  `json:"expires_at,omitempty"`
	TTLMillis *int64  `json:"ttl_ms,omitempty"`
}

func toKVJSON(kv client.KV, withValue bool) kvJSON {
	out := kvJSON{Key: kv.Key, Revision: kv.Revision}
	if withValue {
		v := kv.Value
		out.Value = &v
	}
	if !kv.ExpiresAt.IsZero() {
		out.ExpiresAt = rfc3339Milli(kv.ExpiresAt)
		ms := remaining(kv).Milliseconds()
		out.TTLMillis = &ms
	}
	return out
}

// remaining is the key's TTL left, from TTL or from its deadline.
func remaining(kv client.KV) time.Duration {
	if kv.TTL > 0 || kv.ExpiresAt.IsZero() {
		return kv.TTL
	}
	return max(0, time.Until(kv.ExpiresAt))
}

func kvGet(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	var cons consistencyFlags
	cons.register(fs)
	detailed := fs.Bool("detailed", false, "print the revision and TTL too, one field a line")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, 1, "KEY"); err != nil {
			return err
		}
		c, err := cons.value()
		if err != nil {
			return err
		}
		cl, err := e.client(ctx)
		if err != nil {
			return err
		}
		kv, err := cl.Get(ctx, args[0], &client.GetOptions{Consistency: c})
		if client.IsNotFound(err) {
			return &exitError{code: ExitNotFound, name: "key_not_found", msg: fmt.Sprintf("key %q not found", args[0])}
		}
		if err != nil {
			return fmt.Errorf("get %q: %w", args[0], err)
		}
		switch {
		case e.g.json:
			return e.printJSON(toKVJSON(*kv, true))
		case *detailed:
			rows := [][]string{{"key", kv.Key}, {"value", kv.Value}, {"revision", strconv.FormatUint(kv.Revision, 10)}}
			if !kv.ExpiresAt.IsZero() {
				rows = append(rows, []string{"expires_at", rfc3339Milli(kv.ExpiresAt)}, []string{"ttl", fmtTTL(remaining(*kv))})
			}
			for _, r := range rows {
				fmt.Fprintf(e.out, "%-10s %s\n", r[0]+":", r[1])
			}
			return nil
		}
		_, err = fmt.Fprintln(e.out, kv.Value)
		return err
	}
}

// writeFlags are the options of set, del and expire.
type writeFlags struct {
	ifRevision uintFlag
	ifAbsent   bool
	ifExists   bool
	prev       bool
	minCopies  int
}

func (w *writeFlags) register(fs *flag.FlagSet, absent, prev bool) {
	fs.Var(&w.ifRevision, "if-revision", "write only if the key is at revision `N` (0: only if it does not exist)")
	if absent {
		fs.BoolVar(&w.ifAbsent, "if-absent", false, "write only if the key does not exist")
	}
	if prev {
		fs.BoolVar(&w.ifExists, "if-exists", false, "write only if the key exists")
		fs.BoolVar(&w.prev, "prev", false, "print the previous value and revision too")
	}
	fs.IntVar(&w.minCopies, "min-copies", 0, "acknowledge only once the write is on `N` copies (default: the cluster's floor)")
}

func (w *writeFlags) check() error {
	if w.ifAbsent && w.ifExists {
		return usagef("-if-absent and -if-exists contradict each other")
	}
	if w.ifAbsent && w.ifRevision.set && w.ifRevision.v != 0 {
		return usagef("-if-absent and -if-revision %d contradict each other", w.ifRevision.v)
	}
	if w.minCopies < 0 {
		return usagef("-min-copies must be positive")
	}
	return nil
}

// writeOut prints a write's answer: status is "success" or "deleted".
func writeOut(e *env, op, status string, res *client.WriteResult, withPrev bool) error {
	if e.g.json {
		m := map[string]any{"key": res.Key, "status": status, "revision": res.Revision}
		if status == "deleted" {
			m["deleted"] = res.Deleted
		}
		if !res.ExpiresAt.IsZero() {
			m["expires_at"] = rfc3339Milli(res.ExpiresAt)
			m["ttl_ms"] = max(0, time.Until(res.ExpiresAt)).Milliseconds()
		}
		if withPrev {
			if res.Prev == nil {
				m["prev"] = nil
			} else {
				m["prev"] = map[string]any{"value": res.Prev.Value, "revision": res.Prev.Revision}
			}
		}
		return e.printJSON(m)
	}
	switch {
	case op == "delete" && !res.Deleted:
		fmt.Fprintf(e.out, "%s did not exist; nothing deleted\n", res.Key)
	case !res.ExpiresAt.IsZero():
		fmt.Fprintf(e.out, "%s %s (rev %d, expires %s, in %s)\n", op, res.Key, res.Revision,
			rfc3339Milli(res.ExpiresAt), fmtTTL(max(time.Second, time.Until(res.ExpiresAt))))
	default:
		fmt.Fprintf(e.out, "%s %s (rev %d)\n", op, res.Key, res.Revision)
	}
	if withPrev {
		if res.Prev == nil {
			fmt.Fprintln(e.out, "prev: none")
		} else {
			fmt.Fprintf(e.out, "prev: %s (rev %d)\n", quoteIfNeeded(res.Prev.Value), res.Prev.Revision)
		}
	}
	return nil
}

// quoteIfNeeded quotes a value that would not read as itself on one line.
func quoteIfNeeded(s string) string {
	if s == "" || strings.TrimSpace(s) != s || strings.ContainsAny(s, "\n\r\t\"") || !strconv.IsPrint(firstRuneOr(s)) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func firstRuneOr(s string) rune {
	for _, r := range s {
		return r
	}
	return ' '
}

func kvSet(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	var w writeFlags
	w.register(fs, true, true)
	ttl := fs.Duration("ttl", 0, "give the key a TTL (a Go duration, 1s to 87600h; default none)")
	keepTTL := fs.Bool("keep-ttl", false, "keep the key's current deadline")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 2, 2, "KEY VALUE"); err != nil {
			return err
		}
		if err := w.check(); err != nil {
			return err
		}
		if *ttl < 0 {
			return usagef("-ttl must not be negative")
		}
		if *ttl > 0 && *keepTTL {
			return usagef("-ttl and -keep-ttl contradict each other")
		}
		key, value := args[0], args[1]
		if value == "-" {
			b, err := io.ReadAll(io.LimitReader(e.in, 8<<20))
			if err != nil {
				return fmt.Errorf("read the value from stdin: %w", err)
			}
			value = string(b)
		}
		cl, err := e.client(ctx)
		if err != nil {
			return err
		}
		res, err := cl.Set(ctx, key, value, &client.SetOptions{
			TTL: *ttl, KeepTTL: *keepTTL, IfRevision: w.ifRevision.ptr(), IfAbsent: w.ifAbsent, IfExists: w.ifExists,
			Prev: w.prev, MinCopies: w.minCopies,
		})
		if err != nil {
			return asWrite(fmt.Errorf("set %q: %w", key, err))
		}
		return writeOut(e, "set", "success", res, w.prev)
	}
}

func kvDel(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	var w writeFlags
	w.register(fs, false, true)
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 1, 1, "KEY"); err != nil {
			return err
		}
		if err := w.check(); err != nil {
			return err
		}
		cl, err := e.client(ctx)
		if err != nil {
			return err
		}
		res, err := cl.Delete(ctx, args[0], &client.DeleteOptions{
			IfRevision: w.ifRevision.ptr(), IfExists: w.ifExists, Prev: w.prev, MinCopies: w.minCopies,
		})
		if err != nil {
			return asWrite(fmt.Errorf("delete %q: %w", args[0], err))
		}
		return writeOut(e, "delete", "deleted", res, w.prev)
	}
}

func kvExpire(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	var w writeFlags
	w.register(fs, false, false)
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 2, 2, "KEY TTL"); err != nil {
			return err
		}
		if err := w.check(); err != nil {
			return err
		}
		ttl, err := time.ParseDuration(args[1])
		if err != nil || ttl < 0 {
			return usagef("TTL %q: want a duration such as 30s or 1h (0 removes the TTL)", args[1])
		}
		cl, err := e.client(ctx)
		if err != nil {
			return err
		}
		res, err := cl.Expire(ctx, args[0], ttl, &client.ExpireOptions{IfRevision: w.ifRevision.ptr(), MinCopies: w.minCopies})
		if client.IsNotFound(err) {
			return &exitError{code: ExitNotFound, name: "key_not_found", msg: fmt.Sprintf("key %q not found", args[0])}
		}
		if err != nil {
			return asWrite(fmt.Errorf("expire %q: %w", args[0], err))
		}
		return writeOut(e, "expire", "success", res, false)
	}
}

func kvList(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	node := fs.String("node", "", "the node (ID) whose keys to list (default: the node at -addr)")
	return func(ctx context.Context, e *env, args []string) error {
		cl, err := e.clientWithArgs(ctx, args, 0, 0, "no arguments")
		if err != nil {
			return err
		}
		target := *node
		if target == "" {
			if target, err = nodeAtAddr(ctx, e, cl); err != nil {
				return err
			}
		}
		keys, err := cl.List(ctx, target)
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		if e.g.json {
			return e.printJSON(map[string]any{"node_id": target, "keys": nonNil(keys), "count": len(keys)})
		}
		for _, k := range keys {
			fmt.Fprintln(e.out, k)
		}
		return nil
	}
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func kvScan(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	var o client.ScanOptions
	var cons consistencyFlags
	fs.StringVar(&o.Prefix, "prefix", "", "scan the keys that start with `P`")
	fs.StringVar(&o.Start, "start", "", "scan from key `A` (inclusive)")
	fs.StringVar(&o.End, "end", "", "scan up to key `B` (exclusive; default: to the last key)")
	fs.IntVar(&o.Limit, "limit", 0, "keys per page (default 100, at most 10000)")
	fs.StringVar(&o.Cursor, "cursor", "", "continue from a page's next cursor")
	fs.BoolVar(&o.Values, "values", true, "include the values (-values=false: keys and revisions only)")
	all := fs.Bool("all", false, "page through the whole range")
	cons.register(fs)
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, 1, "at most a PREFIX"); err != nil {
			return err
		}
		opts := o
		if len(args) == 1 {
			if opts.Prefix != "" {
				return usagef("give the prefix as an argument or with -prefix, not both")
			}
			opts.Prefix = args[0]
		}
		if opts.Prefix != "" && (opts.Start != "" || opts.End != "") {
			return usagef("a scan takes a prefix or -start/-end, not both")
		}
		if opts.Limit < 0 {
			return usagef("-limit must be positive")
		}
		var err error
		if opts.Consistency, err = cons.value(); err != nil {
			return err
		}
		cl, err := e.client(ctx)
		if err != nil {
			return err
		}
		var page *client.ScanPage
		if *all {
			page = &client.ScanPage{}
			page.Token, err = cl.ScanAll(ctx, opts, func(kv client.KV) error {
				page.Items = append(page.Items, kv)
				return nil
			})
		} else {
			page, err = cl.Scan(ctx, opts)
		}
		if err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		if e.g.json {
			items := make([]kvJSON, len(page.Items))
			for i, kv := range page.Items {
				items[i] = toKVJSON(kv, opts.Values)
			}
			return e.printJSON(map[string]any{"items": items, "count": len(items), "next_cursor": page.NextCursor, "token": page.Token})
		}
		header := []string{"KEY", "REVISION", "TTL"}
		if opts.Values {
			header = append(header, "VALUE")
		}
		rows := make([][]string, len(page.Items))
		for i, kv := range page.Items {
			rows[i] = []string{kv.Key, strconv.FormatUint(kv.Revision, 10), fmtTTL(remaining(kv))}
			if opts.Values {
				rows[i] = append(rows[i], quoteIfNeeded(kv.Value))
			}
		}
		if err := e.table(header, rows); err != nil {
			return err
		}
		if page.NextCursor != "" {
			var rng []string
			for _, f := range [][2]string{{"prefix", opts.Prefix}, {"start", opts.Start}, {"end", opts.End}} {
				if f[1] != "" {
					rng = append(rng, "-"+f[0]+" "+shellQuote(f[1]))
				}
			}
			if opts.Limit > 0 {
				rng = append(rng, "-limit "+strconv.Itoa(opts.Limit))
			}
			fmt.Fprintf(e.errw, "more keys: clusterkit kv scan %s -cursor %s (or -all for every page)\n",
				strings.Join(rng, " "), page.NextCursor)
		}
		return nil
	}
}

func kvWatch(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	prefix := fs.String("prefix", "", "watch the keys that start with `P` (default: every key, or KEY)")
	since := fs.String("since", "", "resume after `TOKEN` (an event's token or a scan's), or now (the default)")
	progress := fs.Bool("progress", false, "print progress events too (they carry the current token)")
	every := fs.Duration("progress-interval", 0, "how often the server sends progress events while nothing changes (100ms to 1m; default 5s)")
	return func(ctx context.Context, e *env, args []string) error {
		if err := wantArgs(args, 0, 1, "at most one KEY"); err != nil {
			return err
		}
		o := client.WatchOptions{Prefix: *prefix, Since: *since, Progress: *every}
		if len(args) == 1 {
			if o.Prefix != "" {
				return usagef("watch a KEY or a -prefix, not both")
			}
			o.Key = args[0]
		}
		cctx, cancel := context.WithTimeout(ctx, e.g.timeout)
		cl, err := e.client(cctx)
		cancel()
		if err != nil {
			return err
		}
		w, err := cl.Watch(ctx, o)
		if ctx.Err() != nil {
			return nil // interrupted: the normal end of a watch
		}
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		defer w.Close()
		for {
			ev, err := w.Next(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				if errorsIsResync(err) {
					return &exitError{code: ExitError, name: "resync_required",
						msg: "the cluster no longer holds the changes after this watch's position: scan the range again and watch from the scan's token"}
				}
				return fmt.Errorf("watch: %w", err)
			}
			if ev.Type == "progress" && !*progress {
				continue
			}
			if err := printEvent(e, ev); err != nil {
				return err
			}
		}
	}
}

func printEvent(e *env, ev client.Event) error {
	if e.g.json {
		if len(ev.Raw) > 0 {
			_, err := fmt.Fprintf(e.out, "%s\n", strings.TrimSpace(string(ev.Raw)))
			return err
		}
		return e.printJSON(map[string]any{"type": ev.Type, "key": ev.Key, "value": ev.Value, "revision": ev.Revision, "token": ev.Token})
	}
	var err error
	switch ev.Type {
	case "set":
		_, err = fmt.Fprintf(e.out, "set %s = %s (rev %d)\n", ev.Key, quoteIfNeeded(ev.Value), ev.Revision)
	case "progress", "resync_required":
		_, err = fmt.Fprintf(e.out, "%s (token %s)\n", ev.Type, ev.Token)
	default: // delete, expire
		_, err = fmt.Fprintf(e.out, "%s %s (rev %d)\n", ev.Type, ev.Key, ev.Revision)
	}
	return err
}

// shellQuote quotes s for a shell when it holds anything but safe
// characters.
func shellQuote(s string) string {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:/@%+=,", r)) {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}
