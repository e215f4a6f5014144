// Package clusterkey holds the secret that makes a node a member: the
// cluster key (CLUSTER_KEY, 32 random bytes in base64) and a node's keyring
// of keys during a rotation.
//
// Nothing is sent or stored in the key's own form but the keyring file.
// Each use gets its own subkey, derived with HKDF-SHA256:
//   - gossip: memberlist's AES-256 keyring is made of one subkey per key;
//   - the internal port: an Ed25519 key pair per key, from which each node
//     makes the same self-signed certificate. TLS 1.3 with client
//     certificates then proves, in both directions and fresh for every
//     connection, that the other side holds the key: a peer is accepted
//     only if its certificate's public key is one derived from a key in
//     this node's keyring. Replaying a recorded handshake does not work,
//     since TLS signs a transcript that includes both sides' fresh randoms.
package clusterkey

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Size is the length of a cluster key in bytes.
const Size = 32

// Key is a cluster key.
type Key [Size]byte

// Generate returns a new random key.
func Generate() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate cluster key: %w", err)
	}
	return k, nil
}

// Parse reads a key written by String (standard base64, with or without
// padding; URL-safe base64 too).
func Parse(s string) (Key, error) {
	s = strings.TrimSpace(s)
	var b []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return Key{}, errors.New("not base64")
	}
	if len(b) != Size {
		return Key{}, fmt.Errorf("%d bytes, want %d", len(b), Size)
	}
	var k Key
	copy(k[:], b)
	if k == (Key{}) {
		return Key{}, errors.New("all zero bytes")
	}
	return k, nil
}

// String is the key in standard base64, as CLUSTER_KEY takes it.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// derive returns n bytes of the subkey for purpose.
func (k Key) derive(purpose string, n int) []byte {
	b, err := hkdf.Key(sha256.New, k[:], []byte("clusterkit"), purpose, n)
	if err != nil {
		// Only an n too large for HKDF fails; ours are constants.
		panic(fmt.Sprintf("clusterkey: derive %s: %v", purpose, err))
	}
	return b
}

// Fingerprint names the key without revealing it: "sha256:" and 16 hex
// digits of a subkey. Two nodes show the same fingerprint for the same key.
func (k Key) Fingerprint() string {
	return "sha256:" + hex.EncodeToString(k.derive("clusterkit fingerprint v1", 8))
}

// GossipKey is the AES-256 key gossip is encrypted with.
func (k Key) GossipKey() []byte { return k.derive("clusterkit gossip aes-256 v1", 32) }

// identity is the Ed25519 key pair every holder of k presents on the
// internal port.
func (k Key) identity() ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(k.derive("clusterkit internal tls ed25519 v1", ed25519.SeedSize))
}
