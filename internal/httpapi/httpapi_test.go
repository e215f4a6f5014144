package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/clusterkit/clusterkit/errcode"
)

// TestWriteError pins the one place errors become HTTP answers: status,
// JSON content type, the {"error","code"} body, extra details, and that
// an error without a code is an internal error, never a leaked panic.
func TestWriteError(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   string
		retryable  bool
		wantExtra  map[string]any
	}{
		{"api error", errcode.New(errcode.MissingKey, "key is required"), 400, errcode.MissingKey, false, nil},
		{"wrapped sentinel", fmt.Errorf("ctx: %w", errcode.ErrKeyNotFound), 404, errcode.KeyNotFound, false, nil},
		{"plain error is internal", errors.New("disk on fire"), 500, errcode.Internal, false, nil},
		{"epoch mismatch", errcode.ErrEpochMismatch, 409, errcode.EpochMismatch, true, nil},
		{"not ready", errcode.ErrNotReady, 503, errcode.NotReady, true, nil},
		{"not leader", errcode.ErrNotLeader, 503, errcode.NotLeader, true, nil},
		{"unavailable", errcode.New(errcode.Unavailable, "x"), 503, errcode.Unavailable, true, nil},
		{"outcome unknown is not retryable", errcode.ErrOutcomeUnknown, 503, errcode.OutcomeUnknown, false, nil},
		{"unauthorized", errcode.New(errcode.Unauthorized, "no token"), 401, errcode.Unauthorized, false, nil},
		{"forbidden", errcode.New(errcode.Forbidden, "scope"), 403, errcode.Forbidden, false, nil},
		{"too large", errcode.New(errcode.BodyTooLarge, "big"), 413, errcode.BodyTooLarge, false, nil},
		{"details become fields", &errcode.Error{Code: errcode.Conflict, Message: "m", Details: map[string]any{"current": 3.0}},
			409, errcode.Conflict, false, map[string]any{"current": 3.0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			WriteError(w, tt.err)
			res := w.Result()
			if res.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d", res.StatusCode, tt.wantStatus)
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			var body map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", w.Body.Bytes(), err)
			}
			if body["code"] != tt.wantCode || body["error"] == "" || body["error"] == nil {
				t.Errorf("body %v, want code %q and a message", body, tt.wantCode)
			}
			for k, v := range tt.wantExtra {
				if body[k] != v {
					t.Errorf("body[%q] = %v, want %v", k, body[k], v)
				}
			}
			if got := errcode.Retryable(tt.err); got != tt.retryable {
				t.Errorf("Retryable(%v) = %v, want %v", tt.err, got, tt.retryable)
			}
			if (tt.wantStatus == 401) != (res.Header.Get("WWW-Authenticate") != "") {
				t.Errorf("WWW-Authenticate = %q for status %d", res.Header.Get("WWW-Authenticate"), tt.wantStatus)
			}
		})
	}
}
