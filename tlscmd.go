package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/clusterkit/clusterkit/internal/certs"
)

const tlsUsage = `usage: clusterkit tls ca   [-dir DIR] [-days N]
       clusterkit tls cert [-dir DIR] -name NAME [-hosts H1,H2] [-client] [-days N]

Makes the certificates of a test or demo cluster's client listeners:
  ca    a certificate authority: DIR/ca.pem and DIR/ca-key.pem (0600)
  cert  a certificate signed by it: DIR/NAME.pem and DIR/NAME-key.pem (0600),
        valid for NAME, localhost, 127.0.0.1 and the -hosts given;
        -client makes one for a client only (a tool, the load tool)

A node then runs with TLS_CERT_FILE=DIR/NAME.pem TLS_KEY_FILE=DIR/NAME-key.pem,
and with TLS_CA_FILE=DIR/ca.pem to require client certificates signed by it.
`

// tlsCmd makes a CA and certificates, as consul tls ca create / cert create.
func tlsCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "help" || args[0] == "--help" {
		fmt.Fprint(stdout, tlsUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	fs := flag.NewFlagSet("tls "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, tlsUsage) }
	dir := fs.String("dir", "tls", "directory of the CA and the certificates")
	days := fs.Int("days", 365, "validity in days")
	name := fs.String("name", "", "certificate name (cert)")
	hosts := fs.String("hosts", "", "comma-separated DNS names and IP addresses besides NAME, localhost and 127.0.0.1 (cert)")
	client := fs.Bool("client", false, "a client certificate, not a node's (cert)")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	validity := time.Duration(*days) * 24 * time.Hour
	if *days < 1 {
		fmt.Fprintln(stderr, "tls: -days must be at least 1")
		return 2
	}
	switch args[0] {
	case "ca":
		if err := certs.CreateCA(*dir, "ClusterKit CA", validity); err != nil {
			fmt.Fprintf(stderr, "tls ca: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "wrote %s and %s\n", filepath.Join(*dir, certs.CAFile), filepath.Join(*dir, certs.CAKeyFile))
	case "cert":
		if *name == "" || strings.ContainsAny(*name, "/\\ ") {
			fmt.Fprintln(stderr, "tls cert: -name is required (a file name: no slashes or spaces)")
			return 2
		}
		hs := []string{*name, "localhost", "127.0.0.1", "::1"}
		for _, h := range strings.Split(*hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hs = append(hs, h)
			}
		}
		if *client {
			hs = nil
		}
		if err := certs.Issue(*dir, certs.Cert{Name: *name, Hosts: hs, ClientOnly: *client, Validity: validity}); err != nil {
			fmt.Fprintf(stderr, "tls cert: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "wrote %s and %s\n", certs.CertFile(*dir, *name), certs.KeyFile(*dir, *name))
	default:
		fmt.Fprintf(stderr, "tls: unknown command %q\n\n%s", args[0], tlsUsage)
		return 2
	}
	return 0
}
