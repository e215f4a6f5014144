// Package cli is the command-line interface of ClusterKit: the
// subcommands of the clusterkit binary that operate a running cluster
// (kv, members, partitions, status, leave, token, keyring, kv-auth). Each
// command is a thin layer over package client: it parses flags, makes one
// client call, and prints a table for people or JSON (-json) for scripts.
//
// Every command ends with one of a fixed set of exit codes (ExitOK …
// ExitUnauthorized), so that a script can tell a missing key from a failed
// condition from a cluster that cannot serve the request right now.
package cli
