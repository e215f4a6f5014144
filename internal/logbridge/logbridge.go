// Package logbridge routes the log output of hashicorp/raft (hclog) and
// hashicorp/memberlist (*log.Logger) into one log/slog logger, so every line
// a node prints has the same shape and carries the component name.
package logbridge

import (
	"bytes"
	"context"
	"encoding/json"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// HCLog returns an hclog.Logger whose lines are re-emitted through l.
// hclog is asked for JSON so that level, message and key/value pairs survive
// the trip without guessing at a text format.
func HCLog(name string, l *slog.Logger, level hclog.Level) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      level,
		JSONFormat: true,
		Output:     &hclogWriter{l: l},
	})
}

type hclogWriter struct{ l *slog.Logger }

func (w *hclogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			w.l.Info(string(line))
			continue
		}
		lvl := parseLevel(str(rec["@level"]))
		msg := str(rec["@message"])
		attrs := make([]any, 0, 2*len(rec))
		for k, v := range rec {
			if strings.HasPrefix(k, "@") {
				continue
			}
			attrs = append(attrs, k, v)
		}
		w.l.Log(context.Background(), lvl, msg, attrs...)
	}
	return len(p), nil
}

// StdLog returns a *log.Logger (what memberlist takes) whose lines are
// re-emitted through l. memberlist prefixes lines with "[LEVEL] memberlist: ".
func StdLog(l *slog.Logger) *log.Logger {
	return StdLogHook(l, nil)
}

// StdLogHook is StdLog with a hook that sees every message (without its
// level prefix) before it is logged; a message the hook returns false for
// is not logged (the hook said it better).
func StdLogHook(l *slog.Logger, hook func(msg string) bool) *log.Logger {
	return log.New(&stdWriter{l: l, hook: hook}, "", 0)
}

type stdWriter struct {
	l    *slog.Logger
	hook func(string) bool
}

func (w *stdWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			lvl = parseLevel(line[1:end])
			line = strings.TrimSpace(line[end+1:])
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	if w.hook != nil && !w.hook(line) {
		return len(p), nil
	}
	w.l.Log(context.Background(), lvl, line)
	return len(p), nil
}

func parseLevel(s string) slog.Level {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "TRACE", "DEBUG":
		return slog.LevelDebug
	case "WARN", "WARNING":
		return slog.LevelWarn
	case "ERR", "ERROR":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
