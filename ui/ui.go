package ui

import (
	"embed"
	"net/http"
	"path"
	"strings"

	"github.com/clusterkit/clusterkit/internal/httpapi"
)

//go:embed assets/*
var assets embed.FS

// contentTypes maps the asset extensions we ship to their media types. It is explicit rather than
// mime.TypeByExtension so the answer does not depend on the host's /etc/mime.types.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
}

// Handler serves the embedded dashboard for requests whose path starts with /ui/. /ui/ itself is the
// index page; any other path that is not an embedded asset gets the API's JSON 404.
func Handler() http.Handler {
	return http.HandlerFunc(serve)
}

func serve(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutPrefix(r.URL.Path, "/ui/")
	if !ok {
		httpapi.NotFound(w, r)
		return
	}
	if name == "" {
		name = "index.html"
	}
	// Reject anything that is not a plain file name in assets/ (no sub-directories, no dot-dot):
	// the asset set is flat, so this is both simpler and stricter than cleaning the path.
	if strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
		httpapi.NotFound(w, r)
		return
	}
	ctype, known := contentTypes[path.Ext(name)]
	if !known {
		httpapi.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		httpapi.MethodNotAllowed(w, r)
		return
	}
	body, err := assets.ReadFile("assets/" + name)
	if err != nil {
		httpapi.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	h.Set("Allow", "GET, HEAD")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}
