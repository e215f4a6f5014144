package auth

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/clusterkit/clusterkit/errcode"
)

func TestParseScope(t *testing.T) {
	tests := []struct {
		in     string
		want   Scope
		wantOK bool
	}{
		{"admin", Scope{Kind: ScopeAdmin}, true},
		{"read:", Scope{Kind: ScopeRead}, true},
		{"read:user:", Scope{Kind: ScopeRead, Prefix: "user:"}, true},
		{"readwrite:cache/", Scope{Kind: ScopeReadWrite, Prefix: "cache/"}, true},
		{"readwrite:a:b:c", Scope{Kind: ScopeReadWrite, Prefix: "a:b:c"}, true},
		{"write:x", Scope{}, false},
		{"Admin", Scope{}, false},
		{"read", Scope{}, false},
		{"", Scope{}, false},
		{"read:" + strings.Repeat("p", MaxPrefixBytes+1), Scope{}, false},
		{"read:\xff", Scope{}, false},
	}
	for _, tt := range tests {
		got, err := ParseScope(tt.in)
		if (err == nil) != tt.wantOK || got != tt.want {
			t.Errorf("ParseScope(%q) = %+v, %v; want %+v ok=%v", tt.in, got, err, tt.want, tt.wantOK)
		}
		if err == nil && got.String() != tt.in {
			t.Errorf("%q prints as %q", tt.in, got.String())
		}
	}
	if _, err := ParseScopes(nil); err == nil {
		t.Error("a token without scopes was accepted")
	}
}

func TestGrants(t *testing.T) {
	g := GrantsOf("t", []string{"read:user:", "readwrite:cache/", "bogus"})
	tests := []struct {
		key         string
		read, write bool
	}{
		{"user:1", true, false},
		{"user:", true, false},
		{"users", false, false},
		{"cache/x", true, true},
		{"cache", false, false},
		{"other", false, false},
	}
	for _, tt := range tests {
		if g.CanRead(tt.key) != tt.read || g.CanWrite(tt.key) != tt.write {
			t.Errorf("%q: read %v write %v, want %v %v", tt.key, g.CanRead(tt.key), g.CanWrite(tt.key), tt.read, tt.write)
		}
	}
	if g.Admin() {
		t.Error("a prefix token is admin")
	}
	admin := GrantsOf("a", []string{"admin"})
	if !admin.Admin() || !admin.CanWrite("anything") || !admin.CanRead("") {
		t.Error("admin does not cover every key")
	}
	all := GrantsOf("r", []string{"read:"})
	if !all.CanRead("x") || all.CanWrite("x") {
		t.Error("read: is not read-only on every key")
	}
}

func TestAuthenticate(t *testing.T) {
	secret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, TokenPrefix) || ValidSecret(secret) != nil {
		t.Fatalf("new secret %q", secret)
	}
	lookup := func(hash string) (string, []string, bool) {
		if hash == Hash(secret) {
			return "id1", []string{"readwrite:k"}, true
		}
		return "", nil, false
	}
	tests := []struct {
		name     string
		header   string
		wantOK   bool
		wantCode string
	}{
		{"no header", "", false, ""},
		{"valid", "Bearer " + secret, true, ""},
		{"scheme in lower case", "bearer " + secret, true, ""},
		{"unknown token", "Bearer ck_" + strings.Repeat("x", 40), false, errcode.Unauthorized},
		{"basic auth", "Basic dXNlcjpwYXNz", false, errcode.Unauthorized},
		{"bearer without a token", "Bearer ", false, errcode.Unauthorized},
		{"too short", "Bearer short", false, errcode.Unauthorized},
		{"too long", "Bearer " + strings.Repeat("x", MaxTokenBytes+1), false, errcode.Unauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			g, ok, err := Authenticate(r, lookup)
			if ok != tt.wantOK || errcode.Of(err) != tt.wantCode {
				t.Fatalf("ok %v err %v; want ok %v code %q", ok, err, tt.wantOK, tt.wantCode)
			}
			if ok && (g.ID != "id1" || !g.CanWrite("k1")) {
				t.Fatalf("grants %+v", g)
			}
		})
	}
}

func TestValidSecret(t *testing.T) {
	for s, ok := range map[string]bool{
		"0123456789abcdef":           true,
		"short":                      false,
		"with space 0123456789":      false,
		"tab\t0123456789abcdef":      false,
		"ünicode-0123456789abcdef":   false,
		strings.Repeat("a", 256):     true,
		strings.Repeat("a", 257):     false,
		"ck_AAAAAAAAAAAAAAAAAAAAAAA": true,
	} {
		if (ValidSecret(s) == nil) != ok {
			t.Errorf("ValidSecret(%q) = %v, want ok=%v", s, ValidSecret(s), ok)
		}
	}
}

func TestFromLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:5000": true, "127.9.9.9:1": true, "[::1]:80": true,
		"10.0.0.1:5000": false, "[2001:db8::1]:80": false, "garbage": false,
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = addr
		if got := FromLoopback(r); got != want {
			t.Errorf("FromLoopback(%s) = %v, want %v", addr, got, want)
		}
	}
}
