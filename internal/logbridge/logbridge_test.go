package logbridge

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// record is what the capturing handler keeps of a slog.Record.
type record struct {
	level slog.Level
	msg   string
	attrs map[string]any
}

// capture is a slog.Handler that keeps every record it is given.
type capture struct {
	min   slog.Level
	mu    *sync.Mutex
	recs  *[]record
	attrs []slog.Attr // from WithAttrs
}

func newCapture(min slog.Level) *capture {
	return &capture{min: min, mu: &sync.Mutex{}, recs: &[]record{}}
}

func (c *capture) Enabled(_ context.Context, l slog.Level) bool { return l >= c.min }

func (c *capture) Handle(_ context.Context, r slog.Record) error {
	rec := record{level: r.Level, msg: r.Message, attrs: map[string]any{}}
	for _, a := range c.attrs {
		rec.attrs[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.Any()
		return true
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.recs = append(*c.recs, rec)
	return nil
}

func (c *capture) WithAttrs(as []slog.Attr) slog.Handler {
	cp := *c
	cp.attrs = append(slices.Clone(c.attrs), as...)
	return &cp
}

func (c *capture) WithGroup(string) slog.Handler { return c }

func (c *capture) records() []record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(*c.recs)
}

func TestStdLogHook(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		wantLevel slog.Level
		wantMsg   string
	}{
		{"warn", "[WARN] memberlist: x", slog.LevelWarn, "x"},
		{"warning", "[WARNING] memberlist: disk slow", slog.LevelWarn, "disk slow"},
		{"err", "[ERR] memberlist: Failed fallback TCP ping: dial tcp: refused", slog.LevelError, "Failed fallback TCP ping: dial tcp: refused"},
		{"error", "[ERROR] memberlist: boom", slog.LevelError, "boom"},
		{"info", "[INFO] memberlist: Suspect node-2 has failed, no acks received", slog.LevelInfo, "Suspect node-2 has failed, no acks received"},
		{"debug", "[DEBUG] memberlist: Stream connection from=127.0.0.1:1234", slog.LevelDebug, "Stream connection from=127.0.0.1:1234"},
		{"trace", "[TRACE] memberlist: tick", slog.LevelDebug, "tick"},
		{"lower-case level", "[warn] memberlist: x", slog.LevelWarn, "x"},
		{"unknown level is info", "[NOTICE] memberlist: x", slog.LevelInfo, "x"},
		{"no level", "memberlist: x", slog.LevelInfo, "x"},
		{"no prefix at all", "plain line", slog.LevelInfo, "plain line"},
		{"surrounding space", "  [WARN]   memberlist: x  \n", slog.LevelWarn, "x"},
		{"only the first prefix is removed", "[WARN] memberlist: memberlist: x", slog.LevelWarn, "memberlist: x"},
		{"brackets later in the line", "[INFO] memberlist: got [1 2]", slog.LevelInfo, "got [1 2]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newCapture(slog.LevelDebug)
			var hooked []string
			l := StdLogHook(slog.New(h), func(msg string) bool { hooked = append(hooked, msg); return true })
			l.Print(tt.in)
			recs := h.records()
			if len(recs) != 1 {
				t.Fatalf("got %d records, want 1: %+v", len(recs), recs)
			}
			if recs[0].level != tt.wantLevel || recs[0].msg != tt.wantMsg {
				t.Errorf("record = %v %q, want %v %q", recs[0].level, recs[0].msg, tt.wantLevel, tt.wantMsg)
			}
			if !slices.Equal(hooked, []string{tt.wantMsg}) {
				t.Errorf("hook saw %q, want [%q]", hooked, tt.wantMsg)
			}
		})
	}
}

// The hook must see lines the handler filters out: membership detects
// suspicion from an INFO line even when the node logs at WARN.
func TestStdLogHookSeesFilteredLines(t *testing.T) {
	t.Parallel()
	h := newCapture(slog.LevelWarn)
	var hooked []string
	l := StdLogHook(slog.New(h), func(msg string) bool { hooked = append(hooked, msg); return true })
	l.Printf("[INFO] memberlist: Suspect %s has failed, no acks received", "node-2")
	l.Printf("[DEBUG] memberlist: %s", "noise")
	l.Printf("[WARN] memberlist: %s", "kept")

	if want := []string{"Suspect node-2 has failed, no acks received", "noise", "kept"}; !slices.Equal(hooked, want) {
		t.Errorf("hook saw %q, want %q", hooked, want)
	}
	recs := h.records()
	if len(recs) != 1 || recs[0].msg != "kept" {
		t.Errorf("handler got %+v, want only the WARN line", recs)
	}
}

func TestStdLogWithoutHook(t *testing.T) {
	t.Parallel()
	h := newCapture(slog.LevelDebug)
	l := StdLog(slog.New(h).With("lib", "memberlist"))
	l.Printf("[ERR] memberlist: Failed to send UDP ping: %v", errors.New("refused"))
	recs := h.records()
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	if r := recs[0]; r.level != slog.LevelError || r.msg != "Failed to send UDP ping: refused" || r.attrs["lib"] != "memberlist" {
		t.Errorf("record = %+v", r)
	}
}

func TestStdLogConcurrent(t *testing.T) {
	t.Parallel()
	h := newCapture(slog.LevelDebug)
	var mu sync.Mutex
	hooked := 0
	l := StdLogHook(slog.New(h), func(string) bool { mu.Lock(); hooked++; mu.Unlock(); return true })
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				l.Print("[INFO] memberlist: tick")
			}
		})
	}
	wg.Wait()
	if n := len(h.records()); n != 400 || hooked != 400 {
		t.Errorf("got %d records and %d hook calls, want 400 each", n, hooked)
	}
}

func TestHCLog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		log       func(hclog.Logger)
		wantLevel slog.Level
		wantMsg   string
		wantAttrs map[string]any
	}{
		{
			name:      "info with attrs",
			log:       func(l hclog.Logger) { l.Info("entering follower state", "follower", "node-1", "leader-address", "") },
			wantLevel: slog.LevelInfo,
			wantMsg:   "entering follower state",
			wantAttrs: map[string]any{"follower": "node-1", "leader-address": ""},
		},
		{
			name:      "warn with a number",
			log:       func(l hclog.Logger) { l.Warn("heartbeat timeout reached", "last-leader-id", "node-2", "term", 7) },
			wantLevel: slog.LevelWarn,
			wantMsg:   "heartbeat timeout reached",
			wantAttrs: map[string]any{"last-leader-id": "node-2", "term": float64(7)},
		},
		{
			name: "error value",
			log: func(l hclog.Logger) {
				l.Error("failed to contact", "server-id", "node-3", "error", errors.New("dial tcp: refused"))
			},
			wantLevel: slog.LevelError,
			wantMsg:   "failed to contact",
			wantAttrs: map[string]any{"server-id": "node-3", "error": "dial tcp: refused"},
		},
		{
			name:      "logger-level attrs",
			log:       func(l hclog.Logger) { l.With("peer", "node-4").Info("pipelining replication") },
			wantLevel: slog.LevelInfo,
			wantMsg:   "pipelining replication",
			wantAttrs: map[string]any{"peer": "node-4"},
		},
		{
			name:      "no attrs",
			log:       func(l hclog.Logger) { l.Info("starting restore from snapshot") },
			wantLevel: slog.LevelInfo,
			wantMsg:   "starting restore from snapshot",
			wantAttrs: map[string]any{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newCapture(slog.LevelDebug)
			tt.log(HCLog("raft", slog.New(h), hclog.Info))
			recs := h.records()
			if len(recs) != 1 {
				t.Fatalf("got %d records, want 1: %+v", len(recs), recs)
			}
			r := recs[0]
			if r.level != tt.wantLevel || r.msg != tt.wantMsg {
				t.Errorf("record = %v %q, want %v %q", r.level, r.msg, tt.wantLevel, tt.wantMsg)
			}
			for k := range r.attrs {
				if k != "" && k[0] == '@' {
					t.Errorf("hclog bookkeeping key %q leaked into attrs", k)
				}
			}
			if len(r.attrs) != len(tt.wantAttrs) {
				t.Errorf("attrs = %v, want %v", r.attrs, tt.wantAttrs)
			}
			for k, v := range tt.wantAttrs {
				if got, ok := r.attrs[k]; !ok || got != v {
					t.Errorf("attr %s = %#v (present %v), want %#v", k, got, ok, v)
				}
			}
		})
	}
}

func TestHCLogLevels(t *testing.T) {
	t.Parallel()
	h := newCapture(slog.LevelDebug)
	l := HCLog("raft", slog.New(h), hclog.Info)
	l.Trace("t")
	l.Debug("d") // below the hclog level: dropped by hclog
	l.Info("i")
	l.Warn("w")
	l.Error("e")
	var got []string
	for _, r := range h.records() {
		got = append(got, r.level.String()+":"+r.msg)
	}
	if want := []string{"INFO:i", "WARN:w", "ERROR:e"}; !slices.Equal(got, want) {
		t.Errorf("records = %v, want %v", got, want)
	}

	h = newCapture(slog.LevelDebug)
	l = HCLog("raft", slog.New(h), hclog.Trace)
	l.Trace("t")
	l.Debug("d")
	got = nil
	for _, r := range h.records() {
		got = append(got, r.level.String()+":"+r.msg)
	}
	if want := []string{"DEBUG:t", "DEBUG:d"}; !slices.Equal(got, want) {
		t.Errorf("records = %v, want %v", got, want)
	}
}

func TestHCLogWriter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want []string // level:msg
	}{
		{"two JSON lines in one write", `{"@level":"warn","@message":"a"}` + "\n" + `{"@level":"error","@message":"b"}` + "\n", []string{"WARN:a", "ERROR:b"}},
		{"not JSON", "panic: something\n", []string{"INFO:panic: something"}},
		{"blank lines skipped", "\n\n" + `{"@level":"debug","@message":"c"}` + "\n\n", []string{"DEBUG:c"}},
		{"missing level", `{"@message":"d","k":"v"}`, []string{"INFO:d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newCapture(slog.LevelDebug)
			w := &hclogWriter{l: slog.New(h)}
			n, err := w.Write([]byte(tt.in))
			if err != nil || n != len(tt.in) {
				t.Errorf("Write = %d, %v; want %d, nil", n, err, len(tt.in))
			}
			var got []string
			for _, r := range h.records() {
				got = append(got, r.level.String()+":"+r.msg)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("records = %v, want %v", got, tt.want)
			}
		})
	}
}

// A line the hook declines is not logged; the others are.
func TestStdLogHookSuppresses(t *testing.T) {
	h := newCapture(slog.LevelDebug)
	l := StdLogHook(slog.New(h), func(msg string) bool { return msg != "noise" })
	l.Printf("[ERR] memberlist: noise")
	l.Printf("[INFO] memberlist: kept")
	recs := h.records()
	if len(recs) != 1 || recs[0].msg != "kept" {
		t.Fatalf("logged %+v, want only the kept line", recs)
	}
}
