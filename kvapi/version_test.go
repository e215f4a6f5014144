package kvapi

import (
	"bytes"
	"net/http"
	"strconv"
	"testing"
)

// TestTableVersionHeader checks that every KV answer, success, miss or
// error, carries the node's partition-table version: clients that route by
// their own copy of the table learn from it that their copy is old.
func TestTableVersionHeader(t *testing.T) {
	n, c := singleNode(t, testParts)
	want := strconv.Itoa(fixedTableVersion)
	tests := []struct {
		name, method, path string
		body               []byte
	}{
		{"set", http.MethodPost, "/kv/set", setBodyJSON("k", "v")},
		{"get", http.MethodGet, "/kv/get?key=k", nil},
		{"get miss", http.MethodGet, "/kv/get?key=absent", nil},
		{"bad json", http.MethodPost, "/kv/set", []byte("x")},
		{"scan", http.MethodGet, "/kv/scan?prefix=k", nil},
		{"stats", http.MethodGet, "/kv/stats", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, n.url+tt.path, nil)
			if tt.body != nil {
				req, err = http.NewRequest(tt.method, n.url+tt.path, bytes.NewReader(tt.body))
			}
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.Header.Get(TableVersionHeader); got != want {
				t.Errorf("%s %s (status %d): %s = %q, want %q", tt.method, tt.path, resp.StatusCode, TableVersionHeader, got, want)
			}
		})
	}
}
