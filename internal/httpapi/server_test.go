package httpapi

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHosts(t *testing.T) {
	h := NewHosts("kv.example.com", "Admin.Example.ORG.")
	tests := []struct {
		host string
		want bool
	}{
		{"127.0.0.1:9080", true},
		{"10.1.2.3", true},
		{"[::1]:8080", true},
		{"localhost:8080", true},
		{"app.localhost", true},
		{"node-2:8081", true},
		{"kv.example.com:9080", true},
		{"admin.example.org", true},
		{"KV.EXAMPLE.COM", true},
		{"evil.example.com:9080", false},
		{"attacker.test", false},
		{"127.0.0.1.nip.io:9080", false},
		{"", true},
	}
	for _, tt := range tests {
		if got := h.Allowed(tt.host); got != tt.want {
			t.Errorf("Allowed(%q) = %v, want %v", tt.host, got, tt.want)
		}
	}
	if !NewHosts("*").Allowed("anything.example") {
		t.Error(`"*" does not allow every name`)
	}
}

// TestGuard: what a browser page may not do, and what curl may.
func TestGuard(t *testing.T) {
	hits := 0
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("boom")
		}
		hits++
		WriteJSON(w, http.StatusOK, map[string]string{"ok": "yes"})
	})
	g := Guard(NewHosts(), slog.New(slog.NewTextHandler(io.Discard, nil)))(handler)
	tests := []struct {
		name     string
		method   string
		host     string
		header   map[string]string
		path     string
		status   int
		wantCode string
	}{
		{"curl -d: no browser headers", "POST", "127.0.0.1:9080", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "/kv/set", 200, ""},
		{"same-origin browser POST", "POST", "localhost:9080", map[string]string{"Origin": "http://localhost:9080", "Sec-Fetch-Site": "same-origin"}, "/kv/set", 200, ""},
		{"cross-site form POST", "POST", "localhost:9080", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "application/x-www-form-urlencoded"}, "/kv/set", 403, "cross_origin"},
		{"cross-site text/plain POST, Origin only", "POST", "localhost:8080", map[string]string{"Origin": "https://evil.example", "Content-Type": "text/plain"}, "/cluster/leave", 403, "cross_origin"},
		{"cross-site DELETE", "DELETE", "127.0.0.1:9080", map[string]string{"Sec-Fetch-Site": "cross-site"}, "/kv/delete", 403, "cross_origin"},
		{"cross-site GET is a read", "GET", "localhost:9080", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, "/kv/get", 200, ""},
		{"DNS rebinding: the page's own name", "GET", "evil.example:9080", nil, "/kv/get", 421, "host_not_allowed"},
		{"DNS rebinding POST", "POST", "evil.example:8080", map[string]string{"Origin": "http://evil.example:8080"}, "/cluster/leave", 421, "host_not_allowed"},
		{"panic becomes a JSON 500", "GET", "localhost", nil, "/panic", 500, "internal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := hits
			r := httptest.NewRequest(tt.method, "http://"+tt.host+tt.path, strings.NewReader("key=a&value=b"))
			r.Host = tt.host
			for k, v := range tt.header {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			g.ServeHTTP(w, r)
			if w.Code != tt.status {
				t.Fatalf("status %d (%s), want %d", w.Code, w.Body, tt.status)
			}
			if tt.status == 200 {
				return
			}
			var body map[string]string
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["code"] != tt.wantCode || body["error"] == "" {
				t.Fatalf("body %q, want code %q", w.Body, tt.wantCode)
			}
			if hits != before {
				t.Fatal("the refused request reached the handler")
			}
		})
	}
}

// serveLimited runs a real server with l on loopback and returns its
// address.
func serveLimited(t *testing.T, l Limits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		if err != nil {
			WriteError(w, fmt.Errorf("read body: %w", err))
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"ok": "yes"})
	}), l, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// closedWithin reads from c until it is closed, and fails unless that
// happens within d.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d + 2*time.Second))
	start := time.Now()
	_, _ = io.Copy(io.Discard, c)
	if took := time.Since(start); took > d+time.Second {
		t.Fatalf("connection open for %s, want closed within %s", took, d)
	}
}

func TestLimits(t *testing.T) {
	l := Limits{HeaderTimeout: 500 * time.Millisecond, BodyTimeout: time.Second, IdleTimeout: time.Second, MaxHeaderBytes: 4 << 10}
	addr := serveLimited(t, l)
	t.Run("a body that never ends is cut off", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /kv/set HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		stop := make(chan struct{})
		defer close(stop)
		go func() { // keep trickling, as a slow attacker would
			for {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
					if _, err := fmt.Fprintf(c, "1\r\nx\r\n"); err != nil {
						return
					}
				}
			}
		}()
		closedWithin(t, c, l.BodyTimeout)
	})
	t.Run("a header that never ends is cut off", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n")
		closedWithin(t, c, l.HeaderTimeout)
	})
	t.Run("an idle keep-alive connection is closed", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("first request: %v %v", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(l.IdleTimeout + 3*time.Second))
		_, _ = io.Copy(io.Discard, br)
		if took := time.Since(start); took > l.IdleTimeout+time.Second {
			t.Fatalf("idle connection open for %s", took)
		}
	})
	t.Run("a huge header is refused", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Header.Set("X-Big", strings.Repeat("a", 8<<10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want 431", resp.StatusCode)
		}
	})
}
