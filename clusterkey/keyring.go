package clusterkey

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Keyring is a node's cluster keys: the primary one, which it presents and
// encrypts gossip with, and the others it still accepts. A rotation
// installs a new key on every node, makes it primary everywhere, and then
// removes the old one (as consul keyring does). It is safe for concurrent
// use; the TLS configurations read it at every handshake.
type Keyring struct {
	mu      sync.RWMutex
	keys    []Key // installed, primary included
	primary Key
	// removed are the fingerprints of keys removed from this keyring: a
	// node restarted with an old CLUSTER_KEY must not take it back.
	removed []string

	certs    map[Key]*tls.Certificate
	accepted map[string]bool // Ed25519 public keys of installed keys
}

// NewKeyring returns a keyring of primary and others.
func NewKeyring(primary Key, others ...Key) *Keyring {
	r := &Keyring{primary: primary}
	r.keys = append(r.keys, primary)
	for _, k := range others {
		if !slices.Contains(r.keys, k) {
			r.keys = append(r.keys, k)
		}
	}
	r.rebuild()
	return r
}

// rebuild recomputes the certificates and accepted keys; called with mu
// held for writing (or before the keyring is shared).
func (r *Keyring) rebuild() {
	r.certs = map[Key]*tls.Certificate{}
	r.accepted = map[string]bool{}
	for _, k := range r.keys {
		priv := k.identity()
		r.certs[k] = certificate(priv)
		r.accepted[string(priv.Public().(ed25519.PublicKey))] = true
	}
}

// certificate makes the self-signed certificate for an identity. It is
// the same on every node: only the key in it matters.
func certificate(priv ed25519.PrivateKey) *tls.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "clusterkit member"},
		NotBefore:    time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		// Ed25519 and a fixed template cannot fail.
		panic(fmt.Sprintf("clusterkey: make certificate: %v", err))
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// Primary is the key this node presents.
func (r *Keyring) Primary() Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.primary
}

// Keys lists the installed keys, the primary first.
func (r *Keyring) Keys() []Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := []Key{r.primary}
	for _, k := range r.keys {
		if k != r.primary {
			out = append(out, k)
		}
	}
	return out
}

// Removed lists the fingerprints of the keys removed from this keyring.
func (r *Keyring) Removed() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Clone(r.removed)
}

// GossipKeys returns the gossip subkeys of the installed keys, the
// primary's first, for memberlist's keyring.
func (r *Keyring) GossipKeys() [][]byte {
	var out [][]byte
	for _, k := range r.Keys() {
		out = append(out, k.GossipKey())
	}
	return out
}

// Errors of keyring changes.
var (
	ErrNotInstalled  = errors.New("the key is not installed")
	ErrRemovePrimary = errors.New("the primary key cannot be removed; make another key primary first")
)

// Install adds k (a no-op if it is installed). A removed key can be
// installed again on purpose.
func (r *Keyring) Install(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Contains(r.keys, k) {
		return
	}
	r.keys = append(r.keys, k)
	r.removed = slices.DeleteFunc(r.removed, func(fp string) bool { return fp == k.Fingerprint() })
	r.rebuild()
}

// Use makes an installed key the primary.
func (r *Keyring) Use(k Key) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Contains(r.keys, k) {
		return ErrNotInstalled
	}
	r.primary = k
	return nil
}

// Remove removes an installed key that is not the primary.
func (r *Keyring) Remove(k Key) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if k == r.primary {
		return ErrRemovePrimary
	}
	if !slices.Contains(r.keys, k) {
		return ErrNotInstalled
	}
	r.keys = slices.DeleteFunc(r.keys, func(x Key) bool { return x == k })
	if !slices.Contains(r.removed, k.Fingerprint()) {
		r.removed = append(r.removed, k.Fingerprint())
	}
	r.rebuild()
	return nil
}

// WasRemoved reports whether k was removed from this keyring.
func (r *Keyring) WasRemoved(k Key) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Contains(r.removed, k.Fingerprint())
}

func (r *Keyring) primaryCert() *tls.Certificate {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.certs[r.primary]
}

// verify accepts a peer whose certificate carries a key derived from one
// in this keyring. TLS has already checked that the peer holds the
// certificate's private key (its handshake signature).
func (r *Keyring) verify(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	if len(rawCerts) == 0 {
		return errors.New("the peer presented no certificate")
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("the peer's certificate does not parse: %w", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	r.mu.RLock()
	known := ok && r.accepted[string(pub)]
	r.mu.RUnlock()
	if !known {
		return errors.New("the peer's certificate is not derived from a key in this node's keyring (another CLUSTER_KEY)")
	}
	return nil
}

const alpn = "clusterkit-internal/1"

// ServerTLS is the configuration of the internal port's server side.
func (r *Keyring) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.primaryCert(), nil },
		ClientAuth:             tls.RequireAnyClientCert,
		VerifyPeerCertificate:  r.verify,
		SessionTicketsDisabled: true,
		NextProtos:             []string{alpn},
	}
}

// ClientTLS is the configuration of the internal port's client side.
// Certificate chains and names mean nothing here; verify checks the key.
func (r *Keyring) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		InsecureSkipVerify:    true, // the peer's key is checked by verify instead
		VerifyPeerCertificate: r.verify,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return r.primaryCert(), nil
		},
		NextProtos: []string{alpn},
	}
}

// fileFormat is the keyring file: keys in base64, the primary first.
type fileFormat struct {
	Keys    []string `json:"keys"`
	Removed []string `json:"removed,omitempty"`
}

// Save writes the keyring to path (mode 0600), atomically.
func (r *Keyring) Save(path string) error {
	var f fileFormat
	for _, k := range r.Keys() {
		f.Keys = append(f.Keys, k.String())
	}
	f.Removed = r.Removed()
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keyring-*")
	if err != nil {
		return fmt.Errorf("save keyring: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("save keyring: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("save keyring: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save keyring: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save keyring: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save keyring: %w", err)
	}
	return nil
}

// Load reads a keyring saved by Save. It returns an error satisfying
// errors.Is(err, fs.ErrNotExist) when there is none.
func Load(path string) (*Keyring, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f fileFormat
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("keyring %s: %w", path, err)
	}
	if len(f.Keys) == 0 {
		return nil, fmt.Errorf("keyring %s holds no key", path)
	}
	keys := make([]Key, len(f.Keys))
	for i, s := range f.Keys {
		if keys[i], err = Parse(s); err != nil {
			return nil, fmt.Errorf("keyring %s: key %d: %w", path, i+1, err)
		}
	}
	r := NewKeyring(keys[0], keys[1:]...)
	r.removed = f.Removed
	return r, nil
}

// Startup decides the keyring a node starts with, from its keyring file at
// path (written by earlier runs) and the CLUSTER_KEY it was given (nil if
// none). The file wins, as it holds the result of every rotation since:
//   - no file and no key: nil (the node runs without a key);
//   - no file: a keyring of the given key, saved to path;
//   - a key the file holds: the file as it is;
//   - a key a rotation removed: the file as it is (note says so);
//   - a key the file does not know: installed and made primary, saved (an
//     operator who sets a new CLUSTER_KEY means it).
//
// note, when not empty, is worth a log line.
func Startup(path string, given *Key) (r *Keyring, note string, err error) {
	r, err = Load(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && given == nil:
		return nil, "", nil
	case errors.Is(err, os.ErrNotExist):
		r = NewKeyring(*given)
		return r, "", r.Save(path)
	case err != nil:
		return nil, "", err
	case given == nil || slices.Contains(r.Keys(), *given):
		return r, "", nil
	case r.WasRemoved(*given):
		return r, fmt.Sprintf("CLUSTER_KEY (%s) was removed from this node's keyring by a rotation; using %s (primary %s)",
			given.Fingerprint(), path, r.Primary().Fingerprint()), nil
	}
	r.Install(*given)
	if err := r.Use(*given); err != nil {
		return nil, "", err
	}
	return r, fmt.Sprintf("CLUSTER_KEY (%s) is new to this node's keyring in %s; installed it as the primary key",
		given.Fingerprint(), path), r.Save(path)
}
