package kvapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Error is an API error: an HTTP status, a machine-readable code and a
// message for people. It is also what travels between nodes, so a
// forwarding node can tell a retryable refusal from a real failure.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"error"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Is makes errors.Is match on the code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Error codes. Those marked retryable mean the operation was not applied.
const (
	CodeBadRequest       = "bad_request"
	CodeInvalidJSON      = "invalid_json"
	CodeMissingKey       = "missing_key"
	CodeMissingValue     = "missing_value"
	CodeInvalidKey       = "invalid_key"
	CodeKeyTooLarge      = "key_too_large"
	CodeValueTooLarge    = "value_too_large"
	CodeBodyTooLarge     = "body_too_large"
	CodeNotFound         = "not_found"
	CodeKeyNotFound      = "key_not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeUnavailable      = "unavailable"     // retryable: not applied
	CodeEpochMismatch    = "epoch_mismatch"  // retryable (internal)
	CodeNotReady         = "not_ready"       // retryable (internal)
	CodeOutcomeUnknown   = "outcome_unknown" // may or may not have been applied
	CodeInternal         = "internal"
)

// Sentinels for errors.Is.
var (
	ErrKeyNotFound    = &Error{Status: http.StatusNotFound, Code: CodeKeyNotFound, Message: "key not found"}
	ErrEpochMismatch  = &Error{Status: http.StatusConflict, Code: CodeEpochMismatch, Message: "partition epoch mismatch"}
	ErrNotReady       = &Error{Status: http.StatusServiceUnavailable, Code: CodeNotReady, Message: "partition not ready on this node"}
	ErrUnavailable    = &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "owners unreachable"}
	ErrOutcomeUnknown = &Error{Status: http.StatusServiceUnavailable, Code: CodeOutcomeUnknown, Message: "outcome unknown"}
)

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// retryable reports whether err says the operation was certainly not applied
// and may be sent again, possibly to another node.
func retryable(err error) bool {
	return errors.Is(err, ErrEpochMismatch) || errors.Is(err, ErrNotReady) || errors.Is(err, ErrUnavailable)
}

// writeError maps any error to its status and JSON body, in one place.
func writeError(w http.ResponseWriter, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: err.Error()}
	}
	writeJSON(w, e.Status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
