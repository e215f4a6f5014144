// Package client is the Go client of a ClusterKit cluster. It learns the
// partition table from any node's management API and sends each key's
// request straight to the node that owns it (RoutePrimary), so a request
// does not cost the extra hop a node pays to forward it; it refreshes the
// table when a node answers with a newer table version or a retryable
// error, and retries what is safe to retry within the caller's deadline.
//
// Every failure a node reports is an *Error carrying the server's code;
// a write whose answer was lost is an *Error with Code "outcome_unknown"
// and is never sent again by the client.
package client
