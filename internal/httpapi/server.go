package httpapi

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/clusterkit/clusterkit/errcode"
)

// Defaults of the limits every client listener enforces.
const (
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultBodyTimeout    = 30 * time.Second
	DefaultIdleTimeout    = 60 * time.Second
	DefaultMaxHeaderBytes = 64 << 10
)

// Limits bound what one client connection can hold.
type Limits struct {
	// HeaderTimeout bounds reading a request's header.
	HeaderTimeout time.Duration
	// BodyTimeout bounds reading a whole request, body included: a body
	// that never ends is cut off.
	BodyTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request.
	IdleTimeout time.Duration
	// WriteTimeout bounds writing an answer (0: none).
	WriteTimeout time.Duration
	// MaxHeaderBytes bounds a request's header (431 beyond it).
	MaxHeaderBytes int
}

func orDefault[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// NewServer is an http.Server with l's bounds, logging its own errors
// (a client's broken TLS handshake, say) at debug level.
func NewServer(h http.Handler, l Limits, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: orDefault(l.HeaderTimeout, DefaultHeaderTimeout),
		ReadTimeout:       orDefault(l.BodyTimeout, DefaultBodyTimeout),
		IdleTimeout:       orDefault(l.IdleTimeout, DefaultIdleTimeout),
		WriteTimeout:      l.WriteTimeout,
		MaxHeaderBytes:    orDefault(l.MaxHeaderBytes, DefaultMaxHeaderBytes),
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}

// Hosts decides which Host headers a node answers. A page in a browser
// that rebinds its own DNS name to a node's address (DNS rebinding) would
// otherwise be same-origin with the node; it always sends its own name.
type Hosts struct {
	names map[string]bool
	any   bool
}

// NewHosts allows IP addresses, localhost and *.localhost, names without
// a dot (a container's service name, a host's short name), this machine's
// host name, and the names listed (ALLOWED_HOSTS; "*" allows every name).
func NewHosts(listed ...string) *Hosts {
	h := &Hosts{names: map[string]bool{}}
	if name, err := os.Hostname(); err == nil {
		h.names[strings.ToLower(name)] = true
	}
	for _, n := range listed {
		n = strings.ToLower(strings.TrimSpace(n))
		switch n {
		case "":
		case "*":
			h.any = true
		default:
			h.names[strings.TrimSuffix(n, ".")] = true
		}
	}
	return h
}

// Allowed reports whether a request's Host header may be answered.
func (h *Hosts) Allowed(host string) bool {
	if h.any {
		return true
	}
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	switch {
	case host == "":
		return true // HTTP/1.0 without Host: no browser sends that
	case net.ParseIP(host) != nil:
		return true
	case host == "localhost" || strings.HasSuffix(host, ".localhost"):
		return true
	case !strings.Contains(host, "."):
		return true
	}
	return h.names[host]
}

// Guard is what every client listener puts in front of its routes:
//   - a panic becomes a JSON 500 and a log line, never a dropped
//     connection or a plain-text body;
//   - a Host header that is not allowed is refused (DNS rebinding);
//   - a browser's cross-origin request that could change state (a form
//     or text/plain POST from another site) is refused (CSRF), while
//     requests without browser headers, such as curl -d, pass.
func Guard(hosts *Hosts, logger *slog.Logger) func(http.Handler) http.Handler {
	csrf := http.NewCrossOriginProtection()
	csrf.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, errcode.New(errcode.CrossOrigin,
			"a cross-origin %s from a browser page was refused (Origin %q); ClusterKit's APIs take requests from their own origin or from non-browser clients",
			r.Method, r.Header.Get("Origin")))
	}))
	return func(next http.Handler) http.Handler {
		protected := csrf.Handler(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if v := recover(); v != nil {
					if v == http.ErrAbortHandler {
						panic(v)
					}
					logger.Error("handler panicked", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
					WriteError(w, errcode.New(errcode.Internal, "internal error"))
				}
			}()
			if !hosts.Allowed(r.Host) {
				WriteError(w, errcode.New(errcode.HostNotAllowed,
					"Host %q is not a name this node answers to; add it to ALLOWED_HOSTS (a browser page on another site may be pointing its DNS name at this node)", r.Host))
				return
			}
			protected.ServeHTTP(w, r)
		})
	}
}
