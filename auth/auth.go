// Package auth is client authentication: bearer tokens with scopes.
//
// A token's secret is shown once, when it is made; the cluster keeps only
// its SHA-256 (in the Raft state), and finds a presented token by that
// hash. Scopes:
//
//	admin             management mutations (leave, drain, keyring, tokens,
//	                  KV auth) and every key
//	read:PREFIX       reads of keys that start with PREFIX
//	readwrite:PREFIX  reads and writes of keys that start with PREFIX
//
// An empty PREFIX covers every key ("read:", "readwrite:").
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/clusterkit/clusterkit/errcode"
)

// Scope kinds.
const (
	ScopeAdmin     = "admin"
	ScopeRead      = "read"
	ScopeReadWrite = "readwrite"
)

// TokenPrefix starts every token the cluster makes, so a leaked one is
// easy to recognise (secret scanners, logs).
const TokenPrefix = "ck_"

// Limits on tokens and scopes.
const (
	MinTokenBytes = 16
	MaxTokenBytes = 256
	MaxScopes     = 32
	// MaxPrefixBytes matches the longest key.
	MaxPrefixBytes = 1024
)

// NewSecret returns a new token secret: "ck_" and 32 random bytes in
// URL-safe base64.
func NewSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make a token: %w", err)
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// NewID returns a token ID: 16 hex digits, not a secret.
func NewID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make a token id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Hash is what the cluster stores of a secret.
func Hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// ValidSecret checks a secret given to the cluster (ADMIN_TOKEN, or a
// bearer token before it is looked up).
func ValidSecret(s string) error {
	switch {
	case len(s) < MinTokenBytes:
		return fmt.Errorf("a token must have at least %d characters", MinTokenBytes)
	case len(s) > MaxTokenBytes:
		return fmt.Errorf("a token must have at most %d characters", MaxTokenBytes)
	}
	for _, c := range s {
		if c <= ' ' || c > '~' {
			return errors.New("a token must be printable ASCII without spaces")
		}
	}
	return nil
}

// Scope is one parsed scope.
type Scope struct {
	Kind   string // ScopeAdmin, ScopeRead or ScopeReadWrite
	Prefix string
}

func (s Scope) String() string {
	if s.Kind == ScopeAdmin {
		return ScopeAdmin
	}
	return s.Kind + ":" + s.Prefix
}

// ParseScope reads one scope.
func ParseScope(s string) (Scope, error) {
	if s == ScopeAdmin {
		return Scope{Kind: ScopeAdmin}, nil
	}
	kind, prefix, ok := strings.Cut(s, ":")
	if !ok || (kind != ScopeRead && kind != ScopeReadWrite) {
		return Scope{}, fmt.Errorf("scope %q: want admin, read:PREFIX or readwrite:PREFIX", s)
	}
	if len(prefix) > MaxPrefixBytes || !utf8.ValidString(prefix) {
		return Scope{}, fmt.Errorf("scope %q: the prefix must be valid UTF-8 of at most %d bytes", s, MaxPrefixBytes)
	}
	return Scope{Kind: kind, Prefix: prefix}, nil
}

// ParseScopes reads a token's scopes; there must be at least one.
func ParseScopes(ss []string) ([]Scope, error) {
	if len(ss) == 0 {
		return nil, errors.New("a token needs at least one scope")
	}
	if len(ss) > MaxScopes {
		return nil, fmt.Errorf("a token has at most %d scopes", MaxScopes)
	}
	out := make([]Scope, 0, len(ss))
	for _, s := range ss {
		sc, err := ParseScope(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sc)
	}
	return out, nil
}

// Grants is what a token allows.
type Grants struct {
	ID     string
	Scopes []Scope
}

// GrantsOf parses a stored token's scopes; a scope that does not parse
// (stored by a newer version, say) grants nothing.
func GrantsOf(id string, scopes []string) Grants {
	g := Grants{ID: id}
	for _, s := range scopes {
		if sc, err := ParseScope(s); err == nil {
			g.Scopes = append(g.Scopes, sc)
		}
	}
	return g
}

// Admin reports whether the grants include admin.
func (g Grants) Admin() bool {
	for _, s := range g.Scopes {
		if s.Kind == ScopeAdmin {
			return true
		}
	}
	return false
}

// CanRead reports whether key may be read.
func (g Grants) CanRead(key string) bool {
	for _, s := range g.Scopes {
		if s.Kind == ScopeAdmin || strings.HasPrefix(key, s.Prefix) {
			return true
		}
	}
	return false
}

// CanWrite reports whether key may be written.
func (g Grants) CanWrite(key string) bool {
	for _, s := range g.Scopes {
		if s.Kind == ScopeAdmin || (s.Kind == ScopeReadWrite && strings.HasPrefix(key, s.Prefix)) {
			return true
		}
	}
	return false
}

// Lookup finds a token by the hash of its secret.
type Lookup func(hash string) (id string, scopes []string, ok bool)

// Authenticate reads the bearer token of r, if any. It returns ok=false
// and no error when r carries none, and an Unauthorized error for a
// malformed or unknown one.
func Authenticate(r *http.Request, lookup Lookup) (g Grants, ok bool, err error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Grants{}, false, nil
	}
	scheme, secret, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return Grants{}, false, errcode.New(errcode.Unauthorized, "the Authorization header must be \"Bearer TOKEN\"")
	}
	secret = strings.TrimSpace(secret)
	if ValidSecret(secret) != nil {
		return Grants{}, false, errcode.New(errcode.Unauthorized, "the token is not valid")
	}
	id, scopes, known := lookup(Hash(secret))
	if !known {
		return Grants{}, false, errcode.New(errcode.Unauthorized, "the token is not valid")
	}
	return GrantsOf(id, scopes), true, nil
}

// FromLoopback reports whether r came from a loopback peer address.
func FromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
