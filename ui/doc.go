// Package ui is the ClusterKit web dashboard. Handler serves the page and its script and style,
// embedded from assets/, under /ui/ on the management port. The page itself (assets/dashboard.js)
// polls GET /cluster/overview every 2 s, and GET /tokens and GET /cluster/keyring for its admin
// panel, with the token the user typed kept in sessionStorage. The package has no state and makes
// no calls of its own.
package ui
