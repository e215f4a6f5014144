// Package kvapi serves the client key-value API (/kv/*): it parses and
// validates requests, hands them to the data plane through the Engine
// interface it declares, and answers in JSON with the errors of the
// contract. It holds no data-plane logic of its own.
package kvapi
