package certs

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCAAndCertificates(t *testing.T) {
	dir := t.TempDir()
	if err := CreateCA(dir, "test CA", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := CreateCA(dir, "again", time.Hour); err == nil {
		t.Fatal("a second CA overwrote the first")
	}
	if fi, err := os.Stat(filepath.Join(dir, CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode %v (%v), want 0600", fi.Mode(), err)
	}
	if err := Issue(dir, Cert{Name: "node-1", Hosts: []string{"node-1", "localhost", "127.0.0.1"}, Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, Cert{Name: "client", ClientOnly: true, Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	node := Files{Cert: CertFile(dir, "node-1"), Key: KeyFile(dir, "node-1"), CA: filepath.Join(dir, CAFile)}
	srvCfg, err := node.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	ts.TLS = srvCfg
	ts.StartTLS()
	defer ts.Close()
	_, port, _ := net.SplitHostPort(ts.Listener.Addr().String())

	get := func(f Files, host string) error {
		cfg, err := f.ClientConfig()
		if err != nil {
			return err
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
		resp, err := c.Get("https://" + net.JoinHostPort(host, port) + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	ca := filepath.Join(dir, CAFile)
	client := Files{Cert: CertFile(dir, "client"), Key: KeyFile(dir, "client"), CA: ca}
	tests := []struct {
		name string
		f    Files
		host string
		ok   bool
	}{
		{"client certificate, by IP", client, "127.0.0.1", true},
		{"client certificate, by name", client, "localhost", true},
		{"a node's certificate works as a client's", node, "127.0.0.1", true},
		{"no client certificate", Files{CA: ca}, "127.0.0.1", false},
		{"the CA not trusted", Files{Cert: client.Cert, Key: client.Key}, "127.0.0.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := get(tt.f, tt.host); (err == nil) != tt.ok {
				t.Fatalf("err %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if _, err := (Files{Cert: node.Cert}).ServerConfig(); err == nil {
		t.Error("a certificate without its key was accepted")
	}
	if _, err := (Files{Cert: node.Cert, Key: node.Key, CA: node.Key}).ServerConfig(); err == nil {
		t.Error("a CA file without a certificate was accepted")
	}
}
