package clusterkey

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustKey(t *testing.T) Key {
	t.Helper()
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParse(t *testing.T) {
	k := mustKey(t)
	good := []string{k.String(), strings.TrimRight(k.String(), "="), " " + k.String() + "\n"}
	for _, s := range good {
		got, err := Parse(s)
		if err != nil || got != k {
			t.Errorf("Parse(%q) = %v, %v", s, got, err)
		}
	}
	bad := map[string]string{
		"":                      "empty",
		"not base64 at all!":    "not base64",
		"c2hvcnQ=":              "short",
		strings.Repeat("A", 44): "all zero",
		k.String() + k.String(): "too long",
	}
	for s, why := range bad {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse accepted %s key %q", why, s)
		}
	}
}

// TestSubkeysDiffer: every use of the key gets a different subkey, the same
// on every node, and none of them is the key.
func TestSubkeysDiffer(t *testing.T) {
	k := mustKey(t)
	g := string(k.GossipKey())
	id := string(k.identity().Seed())
	if g == id || g == string(k[:]) || id == string(k[:]) || len(g) != 32 {
		t.Fatal("subkeys are not separate")
	}
	if again := k; string(again.GossipKey()) != g || again.Fingerprint() != k.Fingerprint() {
		t.Fatal("derivation is not deterministic")
	}
	if other := mustKey(t); other.Fingerprint() == k.Fingerprint() {
		t.Fatal("two keys share a fingerprint")
	}
	if !strings.HasPrefix(k.Fingerprint(), "sha256:") || len(k.Fingerprint()) != len("sha256:")+16 {
		t.Fatalf("fingerprint %q", k.Fingerprint())
	}
}

// handshake runs a TLS handshake between a server and a client keyring over
// loopback and returns the errors of both sides.
func handshake(t *testing.T, server, client *Keyring) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		done <- tls.Server(c, server.ServerTLS()).Handshake()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, client.ClientTLS())
	clientErr = tc.Handshake()
	if clientErr == nil {
		// In TLS 1.3 the client learns of a refused certificate only
		// when it reads.
		_, clientErr = tc.Read(make([]byte, 1))
		if errors.Is(clientErr, os.ErrDeadlineExceeded) || clientErr != nil && strings.Contains(clientErr.Error(), "EOF") {
			clientErr = nil
		}
	}
	return <-done, clientErr
}

func TestTLSMutualAuthentication(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	tests := []struct {
		name           string
		server, client *Keyring
		ok             bool
	}{
		{"same key", NewKeyring(k1), NewKeyring(k1), true},
		{"different keys", NewKeyring(k1), NewKeyring(k2), false},
		{"mid-rotation: each presents its primary and accepts both", NewKeyring(k2, k1), NewKeyring(k1, k2), true},
		{"the server has not installed the client's key", NewKeyring(k2), NewKeyring(k1, k2), false},
		{"the client has not installed the server's key", NewKeyring(k2, k1), NewKeyring(k1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serr, cerr := handshake(t, tt.server, tt.client)
			if tt.ok && (serr != nil || cerr != nil) {
				t.Fatalf("handshake failed: server %v, client %v", serr, cerr)
			}
			if !tt.ok && serr == nil {
				t.Fatalf("server accepted a client of another key (client err %v)", cerr)
			}
			if !tt.ok && cerr == nil {
				t.Fatalf("client accepted a server of another key")
			}
		})
	}
}

// TestTLSRefusesACertificateWithoutTheKey: a stranger that accepts any
// server and presents a certificate of its own making is refused by the
// server, which says why.
func TestTLSRefusesACertificateWithoutTheKey(t *testing.T) {
	member := NewKeyring(mustKey(t))
	own := certificate(mustKey(t).identity())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- tls.Server(c, member.ServerTLS()).Handshake()
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*own}, MinVersion: tls.VersionTLS13})
	if err == nil {
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	if serr := <-done; serr == nil || !strings.Contains(serr.Error(), "not derived from a key") {
		t.Fatalf("server error %v, want a refusal naming the keyring", serr)
	}
}

func TestRotation(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	r := NewKeyring(k1)
	if err := r.Use(k2); !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("Use of an unknown key: %v", err)
	}
	r.Install(k2)
	r.Install(k2)
	if keys := r.Keys(); len(keys) != 2 || keys[0] != k1 {
		t.Fatalf("keys after install: %v", keys)
	}
	if err := r.Remove(k1); !errors.Is(err, ErrRemovePrimary) {
		t.Fatalf("Remove of the primary: %v", err)
	}
	if err := r.Use(k2); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(k1); err != nil {
		t.Fatal(err)
	}
	if keys := r.Keys(); len(keys) != 1 || keys[0] != k2 || !r.WasRemoved(k1) {
		t.Fatalf("keys after rotation: %v, removed %v", keys, r.Removed())
	}
	if serr, _ := handshake(t, r, NewKeyring(k1)); serr == nil {
		t.Fatal("a removed key is still accepted")
	}
	if g := r.GossipKeys(); len(g) != 1 || string(g[0]) != string(k2.GossipKey()) {
		t.Fatal("gossip keys do not follow the rotation")
	}
}

func TestSaveLoad(t *testing.T) {
	k1, k2, k3 := mustKey(t), mustKey(t), mustKey(t)
	r := NewKeyring(k1, k2, k3)
	if err := r.Use(k2); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(k3); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keyring.json")
	if err := r.Save(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file mode %v, %v; want 0600", fi.Mode(), err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Primary() != k2 || len(got.Keys()) != 2 || !got.WasRemoved(k3) {
		t.Fatalf("loaded primary %v keys %d removed %v", got.Primary().Fingerprint(), len(got.Keys()), got.Removed())
	}
	if _, err := Load(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of no file: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"keys":["nope"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil {
		t.Fatal("Load accepted a damaged keyring")
	}
}

func TestStartup(t *testing.T) {
	k1, k2, k3 := mustKey(t), mustKey(t), mustKey(t)
	rotated := func(t *testing.T, path string) {
		// The file after a rotation from k1 to k2.
		r := NewKeyring(k1, k2)
		if err := r.Use(k2); err != nil {
			t.Fatal(err)
		}
		if err := r.Remove(k1); err != nil {
			t.Fatal(err)
		}
		if err := r.Save(path); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name        string
		file        bool
		given       *Key
		wantNil     bool
		wantPrimary Key
		wantNote    string
	}{
		{name: "no file and no key: no keyring", wantNil: true},
		{name: "no file: the given key", given: &k1, wantPrimary: k1},
		{name: "file and no key: the file", file: true, wantPrimary: k2},
		{name: "file and its key: the file", file: true, given: &k2, wantPrimary: k2},
		{name: "file and a removed key: the file", file: true, given: &k1, wantPrimary: k2, wantNote: "was removed"},
		{name: "file and a new key: the new key is primary", file: true, given: &k3, wantPrimary: k3, wantNote: "new to this node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keyring.json")
			if tt.file {
				rotated(t, path)
			}
			r, note, err := Startup(path, tt.given)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantNil {
				if r != nil {
					t.Fatal("got a keyring")
				}
				return
			}
			if r.Primary() != tt.wantPrimary {
				t.Errorf("primary %s, want %s", r.Primary().Fingerprint(), tt.wantPrimary.Fingerprint())
			}
			if !strings.Contains(note, tt.wantNote) || (tt.wantNote == "" && note != "") {
				t.Errorf("note %q, want it to say %q", note, tt.wantNote)
			}
			// What the node starts with is what the next start reads.
			again, err := Load(path)
			if err != nil || again.Primary() != r.Primary() {
				t.Errorf("saved keyring: %v (%v)", again, err)
			}
		})
	}
}
