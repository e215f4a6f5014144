// Package errcode is the one error type that crosses ClusterKit's
// boundaries: between the HTTP APIs and their clients, between the data
// plane and the handlers, and between nodes. An Error carries a stable,
// machine-readable code and a message for people; the code alone decides
// whether an operation may be retried and which HTTP status it maps to
// (package httpapi), so every layer agrees on what a failure means.
package errcode

import (
	"errors"
	"fmt"
)

// Error is a failure with a machine-readable code.
type Error struct {
	Code    string
	Message string
	// Details are extra fields of the JSON error body (for example the
	// current revision of a failed condition). Optional.
	Details map[string]any
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Is makes errors.Is match any *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Codes. The retryable ones guarantee the operation was not applied.
const (
	BadRequest       = "bad_request"
	InvalidJSON      = "invalid_json"
	InvalidQuery     = "invalid_query"
	MissingKey       = "missing_key"
	MissingValue     = "missing_value"
	InvalidKey       = "invalid_key"
	InvalidValue     = "invalid_value"
	KeyTooLarge      = "key_too_large"
	ValueTooLarge    = "value_too_large"
	BodyTooLarge     = "body_too_large"
	NotFound         = "not_found"
	KeyNotFound      = "key_not_found"
	MethodNotAllowed = "method_not_allowed"
	Unauthorized     = "unauthorized"     // no or unknown credentials
	Forbidden        = "forbidden"        // credentials that do not cover the request
	HostNotAllowed   = "host_not_allowed" // DNS-rebinding guard
	CrossOrigin      = "cross_origin"     // CSRF guard
	Conflict         = "conflict"         // the request contradicts the cluster's state
	Timeout          = "request_timeout"  // the request did not arrive in time
	Unavailable      = "unavailable"      // retryable: not applied
	EpochMismatch    = "epoch_mismatch"   // retryable (between nodes)
	NotReady         = "not_ready"        // retryable (between nodes)
	NotLeader        = "not_leader"       // retryable (between nodes)
	OutcomeUnknown   = "outcome_unknown"  // may or may not have been applied
	NoLeader         = "no_leader"        // no Raft leader known right now
	Internal         = "internal"         // a bug or a broken disk

	// The data model's codes.
	ConditionFailed   = "condition_failed"    // if_revision, if_absent or if_exists did not hold
	Aborted           = "aborted"             // an atomic batch op not applied because another failed
	NotEnoughReplicas = "not_enough_replicas" // fewer copies in sync than the write needs; not applied
	CrossPartition    = "cross_partition"     // an atomic batch spans partitions
	TooManyOps        = "too_many_ops"        // a batch over its limits
	InvalidTTL        = "invalid_ttl"
	InvalidCondition  = "invalid_condition"

	// Range reads and watches.
	InvalidCursor   = "invalid_cursor"    // a scan cursor that does not decode or is for another range
	InvalidToken    = "invalid_token"     // a watch token that does not decode or is for another cluster or layout
	InvalidRange    = "invalid_range"     // prefix with start/end, or start after end
	InvalidLimit    = "invalid_limit"     // limit outside 1..10000
	TooManyWatchers = "too_many_watchers" // the node serves its maximum of watches
)

// New returns an Error with a formatted message.
func New(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels for errors.Is; they match on the code only.
var (
	ErrKeyNotFound    = &Error{Code: KeyNotFound, Message: "key not found"}
	ErrEpochMismatch  = &Error{Code: EpochMismatch, Message: "partition epoch mismatch"}
	ErrNotReady       = &Error{Code: NotReady, Message: "partition not ready on this node"}
	ErrNotLeader      = &Error{Code: NotLeader, Message: "not the raft leader"}
	ErrUnavailable    = &Error{Code: Unavailable, Message: "owners unreachable"}
	ErrOutcomeUnknown = &Error{Code: OutcomeUnknown, Message: "outcome unknown"}
)

// Of returns err's code: the code of the first *Error in its chain, or
// Internal for any other error (and "" for nil).
func Of(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// As returns err as an *Error: the first one in its chain, or an Internal
// error carrying err's text.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: Internal, Message: err.Error()}
}

// Retryable reports whether err guarantees that nothing was applied, so
// the operation may be sent again, possibly to another node.
func Retryable(err error) bool {
	switch Of(err) {
	case EpochMismatch, NotReady, Unavailable, NotLeader:
		return true
	}
	return false
}
