package kvapi

import (
	"context"
	"net/http"

	"github.com/clusterkit/clusterkit/auth"
	"github.com/clusterkit/clusterkit/errcode"
)

// Auth is the cluster's KV authentication as the handlers need it.
type Auth interface {
	// KVAuthRequired reports whether every /kv/* call needs a token.
	KVAuthRequired() bool
	// LookupToken finds a token by the hash of its secret.
	LookupToken(hash string) (id string, scopes []string, ok bool)
}

type grantsKey struct{}

// authenticate refuses, while KV auth is on, a request without a valid
// token, before its body is read; the handlers then check the token's
// scope against the key.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.auth == nil || !s.auth.KVAuthRequired() {
			next.ServeHTTP(w, r)
			return
		}
		g, ok, err := auth.Authenticate(r, s.auth.LookupToken)
		if err == nil && !ok {
			err = errcode.New(errcode.Unauthorized, "KV authentication is on: send Authorization: Bearer TOKEN with a token whose scope covers the key")
		}
		if err != nil {
			writeError(w, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), grantsKey{}, g)))
	})
}

// permit checks that the request may read (or write) key: always while KV
// auth is off, otherwise if its token's scope covers the key.
func permit(r *http.Request, key string, write bool) error {
	g, ok := r.Context().Value(grantsKey{}).(auth.Grants)
	switch {
	case !ok:
		return nil // KV auth is off
	case write && !g.CanWrite(key):
		return errcode.New(errcode.Forbidden, "token %s may not write %q", g.ID, key)
	case !write && !g.CanRead(key):
		return errcode.New(errcode.Forbidden, "token %s may not read %q", g.ID, key)
	}
	return nil
}

// permitAll checks that the request may read every key (to list a node's).
func permitAll(r *http.Request) error {
	g, ok := r.Context().Value(grantsKey{}).(auth.Grants)
	if !ok || hasWholeKeyspace(g) {
		return nil
	}
	return errcode.New(errcode.Forbidden, "listing a node's keys needs a token that may read every key (admin, read: or readwrite:)")
}

// hasWholeKeyspace reports whether a scope covers every key: admin, or a
// scope with the empty prefix.
func hasWholeKeyspace(g auth.Grants) bool {
	for _, sc := range g.Scopes {
		if sc.Kind == auth.ScopeAdmin || sc.Prefix == "" {
			return true
		}
	}
	return false
}
