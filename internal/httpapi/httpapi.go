// Package httpapi holds what both client-facing HTTP APIs (management and
// KV) share: the one place an error becomes an HTTP status and a JSON body
// {"error": ..., "code": ...}, the JSON writer, and the route fallbacks.
package httpapi

import (
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/clusterkit/clusterkit/errcode"
)

// Status maps an error code to its HTTP status.
func Status(code string) int {
	switch code {
	case errcode.BadRequest, errcode.InvalidJSON, errcode.InvalidQuery, errcode.MissingKey,
		errcode.MissingValue, errcode.InvalidKey, errcode.InvalidValue,
		errcode.InvalidTTL, errcode.InvalidCondition, errcode.CrossPartition,
		errcode.InvalidCursor, errcode.InvalidToken, errcode.InvalidRange, errcode.InvalidLimit:
		return http.StatusBadRequest
	case errcode.Unauthorized:
		return http.StatusUnauthorized
	case errcode.Forbidden, errcode.CrossOrigin:
		return http.StatusForbidden
	case errcode.NotFound, errcode.KeyNotFound:
		return http.StatusNotFound
	case errcode.MethodNotAllowed:
		return http.StatusMethodNotAllowed
	case errcode.Timeout:
		return http.StatusRequestTimeout
	case errcode.Conflict, errcode.EpochMismatch, errcode.ConditionFailed, errcode.Aborted:
		return http.StatusConflict
	case errcode.KeyTooLarge, errcode.ValueTooLarge, errcode.BodyTooLarge, errcode.TooManyOps:
		return http.StatusRequestEntityTooLarge
	case errcode.HostNotAllowed:
		return http.StatusMisdirectedRequest
	case errcode.Unavailable, errcode.NotReady, errcode.NotLeader, errcode.OutcomeUnknown, errcode.NoLeader, errcode.NotEnoughReplicas,
		errcode.TooManyWatchers:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// WriteError answers with err's status and its JSON body.
func WriteError(w http.ResponseWriter, err error) {
	e := errcode.As(err)
	body := make(map[string]any, 2+len(e.Details))
	for k, v := range e.Details {
		body[k] = v
	}
	body["error"] = e.Message
	body["code"] = e.Code
	if e.Code == errcode.Unauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="clusterkit"`)
	}
	WriteJSON(w, Status(e.Code), body)
}

// WriteJSON answers with status and v encoded as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Query parses r's query string, refusing a malformed one: url.Query
// silently drops what it cannot decode, which would make "key=%zz" a
// request without a key.
func Query(r *http.Request) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, errcode.New(errcode.InvalidQuery, "the query string is not valid URL encoding: %v", err)
	}
	return q, nil
}

// NotFound answers a request for a route that does not exist.
func NotFound(w http.ResponseWriter, r *http.Request) {
	WriteError(w, errcode.New(errcode.NotFound, "no route %s %s", r.Method, r.URL.Path))
}

// MethodNotAllowed answers a request with the wrong method for its route.
func MethodNotAllowed(w http.ResponseWriter, r *http.Request) {
	WriteError(w, errcode.New(errcode.MethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path))
}
