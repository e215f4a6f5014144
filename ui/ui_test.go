package ui

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler())
	t.Cleanup(srv.Close)

	cases := []struct {
		name, method, path string
		status             int
		ctype              string // prefix of Content-Type
		body               string // substring of the body
	}{
		{"index", "GET", "/ui/", 200, "text/html; charset=utf-8", `<script src="dashboard.js"`},
		{"index by name", "GET", "/ui/index.html", 200, "text/html; charset=utf-8", "<title>ClusterKit dashboard</title>"},
		{"script", "GET", "/ui/dashboard.js", 200, "text/javascript; charset=utf-8", "/cluster/overview"},
		{"style", "GET", "/ui/dashboard.css", 200, "text/css; charset=utf-8", ".pgrid"},
		{"icon", "GET", "/ui/icon.svg", 200, "image/svg+xml", "<svg"},
		{"head", "HEAD", "/ui/", 200, "text/html; charset=utf-8", ""},
		{"unknown file", "GET", "/ui/nope.js", 404, "application/json", `"code":"not_found"`},
		{"unknown extension", "GET", "/ui/index.txt", 404, "application/json", `"code":"not_found"`},
		{"sub directory", "GET", "/ui/assets/index.html", 404, "application/json", `"code":"not_found"`},
		{"dot dot", "GET", "/ui/..%2fui.go", 404, "application/json", `"code":"not_found"`},
		{"outside /ui/", "GET", "/index.html", 404, "application/json", `"code":"not_found"`},
		{"post", "POST", "/ui/", 405, "application/json", `"code":"method_not_allowed"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d; body %s", res.StatusCode, tc.status, body)
			}
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
				t.Errorf("Content-Type %q, want %q", ct, tc.ctype)
			}
			if !strings.Contains(string(body), tc.body) {
				t.Errorf("body does not contain %q:\n%.300s", tc.body, body)
			}
			if tc.method == "HEAD" && len(body) != 0 {
				t.Errorf("HEAD answered with a %d-byte body", len(body))
			}
			if tc.status != 200 {
				var e struct{ Code, Error string }
				if err := json.Unmarshal(body, &e); err != nil || e.Code == "" || e.Error == "" {
					t.Errorf("error body is not the API's JSON error: %s (%v)", body, err)
				}
				return
			}
			want := map[string]string{
				"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
				"X-Content-Type-Options":  "nosniff",
				"Referrer-Policy":         "no-referrer",
				"Cache-Control":           "no-cache",
			}
			for k, v := range want {
				if got := res.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestAssetsCSPClean checks what the CSP would otherwise break at run time, and what the page must
// never do with cluster data: no inline script or style (blocked by default-src 'self'), nothing
// fetched from another origin, and no HTML built from strings.
func TestAssetsCSPClean(t *testing.T) {
	t.Parallel()
	entries, err := assets.ReadDir("assets")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := map[string]*regexp.Regexp{
		"inline script":        regexp.MustCompile(`<script(\s[^>]*)?>\s*[^<\s]`),
		"style element":        regexp.MustCompile(`<style[\s>]`),
		"style attribute":      regexp.MustCompile(`\sstyle\s*=`),
		"event handler attr":   regexp.MustCompile(`<[^>]+\son[a-z]+\s*=`),
		"remote URL":           regexp.MustCompile(`(?:src|href)\s*=\s*["']?(?:https?:)?//`),
		"HTML from a string":   regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function`),
		"token in a URL query": regexp.MustCompile(`[?&]token=`),
	}
	index, err := assets.ReadFile("assets/index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := assets.ReadFile("assets/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		for what, re := range forbidden {
			if loc := re.FindIndex(b); loc != nil {
				t.Errorf("%s: %s at byte %d: %q", e.Name(), what, loc[0], b[loc[0]:min(len(b), loc[1]+20)])
			}
		}
	}
	for _, tag := range regexp.MustCompile(`<script[^>]*>`).FindAll(index, -1) {
		if !strings.Contains(string(tag), ` src="`) {
			t.Errorf("index.html: script without src: %s", tag)
		}
	}
	// Every asset the page names must be served.
	refs := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllSubmatch(index, -1)
	if len(refs) < 3 {
		t.Fatalf("index.html names %d assets, want at least the script, the style and the icon", len(refs))
	}
	for _, m := range refs {
		rec := httptest.NewRecorder()
		Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/ui/"+string(m[1]), nil))
		if rec.Code != 200 {
			t.Errorf("index.html names %q, served with status %d", m[1], rec.Code)
		}
	}
}
