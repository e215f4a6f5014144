// Package apitest holds what the tests of both HTTP-facing layers check
// answers with: the contract's JSON error shape and a value read back.
package apitest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Resp is a raw HTTP answer.
type Resp struct {
	Status int
	CType  string
	Body   []byte
}

// Object decodes the body as a JSON object.
func (r Resp) Object(tb testing.TB) map[string]any {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		tb.Fatalf("body %q is not a JSON object: %v", r.Body, err)
	}
	return m
}

func (r Resp) String() string {
	return fmt.Sprintf("%d %s %s", r.Status, r.CType, bytes.TrimSpace(r.Body))
}

// MustValue asserts a get answered 200 with value.
func MustValue(tb testing.TB, r Resp, key, want string) {
	tb.Helper()
	if r.Status != http.StatusOK {
		tb.Fatalf("get %q: got %s, want 200", key, r)
	}
	m := r.Object(tb)
	if m["key"] != key || m["value"] != want {
		tb.Fatalf("get %q: got %v, want key=%q value=%q", key, m, key, want)
	}
}

// CheckError asserts the contract's error shape: JSON content type and a
// body {"error": non-empty, "code": non-empty}, with the status and code
// wanted ("" for any code).
func CheckError(tb testing.TB, r Resp, wantStatus int, wantCode string) {
	tb.Helper()
	if r.Status != wantStatus {
		tb.Errorf("status: got %s, want %d %s", r, wantStatus, wantCode)
	}
	if !strings.HasPrefix(r.CType, "application/json") {
		tb.Errorf("Content-Type = %q, want application/json (body %q)", r.CType, r.Body)
	}
	var e struct {
		Error *string `json:"error"`
		Code  *string `json:"code"`
	}
	if err := json.Unmarshal(r.Body, &e); err != nil {
		tb.Fatalf("error body %q is not JSON: %v", r.Body, err)
	}
	if e.Error == nil || *e.Error == "" || e.Code == nil || *e.Code == "" {
		tb.Errorf("error body %q lacks a non-empty error and code", r.Body)
		return
	}
	if wantCode != "" && *e.Code != wantCode {
		tb.Errorf("code = %q, want %q (body %q)", *e.Code, wantCode, r.Body)
	}
}
