package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/clusterkit/clusterkit/client"
)

// Exit codes: the same for every command, so a script can branch on them.
const (
	ExitOK           = 0 // success; for a read, the key was found
	ExitError        = 1 // any other error
	ExitUsage        = 2 // bad command line
	ExitNotFound     = 3 // the key (or token, member) does not exist
	ExitCondition    = 4 // a condition (-if-revision, -if-absent, -if-exists) did not hold; nothing was written
	ExitUnavailable  = 5 // the cluster cannot serve it now; not applied, safe to retry
	ExitUnknown      = 6 // a write may or may not have been applied
	ExitUnauthorized = 7 // missing, unknown or insufficient token
)

// usageError is a bad command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitError carries an explicit exit code and machine code, for failures
// the CLI itself detects (a batch with a failed op, a resync).
type exitError struct {
	code int
	name string
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// writeOp marks an error from a write, so that a deadline that expired
// while it was in flight counts as outcome unknown rather than unavailable.
type writeOp struct{ err error }

func (w *writeOp) Error() string { return w.err.Error() }
func (w *writeOp) Unwrap() error { return w.err }

// asWrite marks err (if any) as the error of a write.
func asWrite(err error) error {
	if err == nil {
		return nil
	}
	return &writeOp{err: err}
}

// codeExit maps a server's (or the client's) machine code to an exit code.
func codeExit(code string, status int) int {
	switch code {
	case "key_not_found", "not_found":
		return ExitNotFound
	case "condition_failed", "aborted":
		return ExitCondition
	case "unavailable", "not_enough_replicas", "request_timeout", "no_leader", "not_ready",
		"not_leader", "epoch_mismatch", "too_many_watchers":
		return ExitUnavailable
	case "outcome_unknown":
		return ExitUnknown
	case "unauthorized", "forbidden":
		return ExitUnauthorized
	}
	switch {
	case status == 404:
		return ExitNotFound
	case status == 401 || status == 403:
		return ExitUnauthorized
	case status == 503 || status == 504:
		return ExitUnavailable
	}
	return ExitError
}

// ExitCode maps an error of a command to its exit code.
func ExitCode(err error) int {
	code, _ := classify(err)
	return code
}

// classify returns the exit code of err and the machine code shown in
// its error line.
func classify(err error) (int, string) {
	if err == nil {
		return ExitOK, ""
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return ExitUsage, "usage"
	}
	var xe *exitError
	if errors.As(err, &xe) {
		return xe.code, xe.name
	}
	var wo *writeOp
	write := errors.As(err, &wo)
	var ce *client.Error
	if errors.As(err, &ce) && ce.Code != "" {
		return codeExit(ce.Code, ce.Status), ce.Code
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// Our own -timeout ran out. A write that was sent may have
		// been applied; a read was simply not answered in time.
		if write {
			return ExitUnknown, "outcome_unknown"
		}
		return ExitUnavailable, "timeout"
	}
	if errors.Is(err, context.Canceled) {
		if write {
			return ExitUnknown, "outcome_unknown"
		}
		return ExitError, "interrupted"
	}
	var ne net.Error
	if errors.Is(err, syscall.ECONNREFUSED) || errors.As(err, &ne) {
		return ExitUnavailable, "unavailable"
	}
	if ce != nil {
		return codeExit("", ce.Status), "error"
	}
	return ExitError, "error"
}

// message is the human part of err's error line: a client.Error's own
// message without its code (which the line shows in parentheses).
func message(err error) string {
	var wo *writeOp
	if errors.As(err, &wo) {
		err = wo.err
	}
	var ce *client.Error
	if errors.As(err, &ce) && ce.Code != "" && errors.Is(err, ce) {
		// Only when err is the client.Error itself, or wraps it: the
		// context we added in front of it is worth keeping.
		msg := ce.Message
		if msg == "" {
			msg = ce.Code
		}
		if ce.Code == "condition_failed" {
			if ce.Exists {
				msg = fmt.Sprintf("%s: the key is at revision %d", msg, ce.CurrentRevision)
			} else {
				msg += ": the key does not exist"
			}
		}
		if pre, ok := prefixOf(err, ce); ok {
			msg = pre + msg
		}
		// Which node answered matters when the cluster is in trouble,
		// not for a missing key or a failed condition.
		if c := codeExit(ce.Code, ce.Status); ce.Node != "" && (c == ExitError || c == ExitUnavailable || c == ExitUnknown) {
			msg += " [" + ce.Node + "]"
		}
		return msg
	}
	return err.Error()
}

// prefixOf returns what err says before ce's own text, when err wraps ce
// with fmt.Errorf("...: %w", ce).
func prefixOf(err error, ce *client.Error) (string, bool) {
	full, own := err.Error(), ce.Error()
	if len(full) > len(own) && full[len(full)-len(own):] == own {
		return full[:len(full)-len(own)], true
	}
	return "", false
}
