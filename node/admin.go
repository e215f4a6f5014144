package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/clusterkit/clusterkit/auth"
	"github.com/clusterkit/clusterkit/clusterkey"
	"github.com/clusterkit/clusterkit/consensus"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/httpapi"
	"github.com/clusterkit/clusterkit/kvapi"
	"github.com/clusterkit/clusterkit/peer"
)

// maxAdminBody bounds the body of a management mutation.
const maxAdminBody = 64 << 10

// lookupToken finds a token by the hash of its secret in the cluster state.
func (ck *ClusterKit) lookupToken(hash string) (id string, scopes []string, ok bool) {
	t, ok := ck.raft.State().TokenByHash(hash)
	return t.ID, t.Scopes, ok
}

// kvAuth serves the KV API's view of authentication from the cluster
// state (kvapi.Auth).
type kvAuth struct{ ck *ClusterKit }

var _ kvapi.Auth = kvAuth{}

func (a kvAuth) KVAuthRequired() bool { return a.ck.raft.State().KVAuth }

func (a kvAuth) LookupToken(hash string) (id string, scopes []string, ok bool) {
	return a.ck.lookupToken(hash)
}

// adminTokenConfigured reports whether management mutations need a token
// from every caller: once ADMIN_TOKEN is set here or the cluster has an
// admin token, loopback is no longer enough.
func (ck *ClusterKit) adminTokenConfigured() bool {
	return ck.cfg.AdminToken != "" || ck.raft.State().HasAdminToken()
}

// requireAdmin lets a management mutation through for an admin token, or,
// only while no admin token is configured, for a caller on loopback.
func (ck *ClusterKit) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g, ok, err := auth.Authenticate(r, ck.lookupToken)
		switch {
		case err != nil:
			httpapi.WriteError(w, err)
		case ok && g.Admin():
			next.ServeHTTP(w, r)
		case ok:
			httpapi.WriteError(w, errcode.New(errcode.Forbidden, "%s %s needs a token with the admin scope", r.Method, r.URL.Path))
		case !ck.adminTokenConfigured() && auth.FromLoopback(r):
			next.ServeHTTP(w, r)
		case ck.adminTokenConfigured():
			httpapi.WriteError(w, errcode.New(errcode.Unauthorized, "%s %s needs an admin token: send Authorization: Bearer TOKEN", r.Method, r.URL.Path))
		default:
			httpapi.WriteError(w, errcode.New(errcode.Unauthorized,
				"%s %s is accepted without a token only from loopback while the cluster has no admin token; set ADMIN_TOKEN and send Authorization: Bearer TOKEN", r.Method, r.URL.Path))
		}
	})
}

// decodeBody reads a management mutation's JSON body into v.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errcode.New(errcode.BodyTooLarge, "the body exceeds %d bytes", maxAdminBody)
		}
		return errcode.New(errcode.BadRequest, "read the body: %v", err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return errcode.New(errcode.InvalidJSON, "the body must be a JSON object: %v", err)
	}
	return nil
}

// apply proposes cmd through the leader and waits until this node's state
// shows it, so the answer and a following read agree.
func (ck *ClusterKit) apply(ctx context.Context, t consensus.CommandType, body any) error {
	cmd, err := consensus.Encode(t, body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	idx, err := ck.applyOnLeader(ctx, cmd)
	if err != nil {
		return err
	}
	return ck.raft.WaitApplied(ctx, idx)
}

// tokenJSON is a token as the API shows it: never its secret or hash.
type tokenJSON struct {
	ID      string   `json:"id"`
	Name    string   `json:"name,omitempty"`
	Scopes  []string `json:"scopes"`
	Created string   `json:"created"`
	// Token is the secret, only in the answer that made it.
	Token string `json:"token,omitempty"`
}

func toTokenJSON(t consensus.Token) tokenJSON {
	return tokenJSON{ID: t.ID, Name: t.Name, Scopes: t.Scopes, Created: t.Created.UTC().Format(time.RFC3339)}
}

// handleTokens serves GET /tokens.
func (ck *ClusterKit) handleTokens(w http.ResponseWriter, r *http.Request) {
	out := []tokenJSON{}
	for _, t := range ck.raft.State().Tokens {
		out = append(out, toTokenJSON(t))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created+out[i].ID < out[j].Created+out[j].ID })
	writeJSON(w, http.StatusOK, map[string]any{"tokens": out, "count": len(out)})
}

// handleCreateToken serves POST /tokens {"name", "scopes"}: the answer
// holds the secret, which the cluster does not keep.
func (ck *ClusterKit) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name   string   `json:"name"`
		Scopes []string `json:"scopes"`
	}
	if err := decodeBody(w, r, &in); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if _, err := auth.ParseScopes(in.Scopes); err != nil {
		httpapi.WriteError(w, errcode.New(errcode.BadRequest, "%v", err))
		return
	}
	if len(in.Name) > 256 {
		httpapi.WriteError(w, errcode.New(errcode.BadRequest, "a token name has at most 256 bytes"))
		return
	}
	secret, err := auth.NewSecret()
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id, err := auth.NewID()
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	t := consensus.Token{ID: id, Name: in.Name, Hash: auth.Hash(secret), Scopes: in.Scopes, Created: time.Now().UTC()}
	if err := ck.apply(r.Context(), consensus.CmdTokenCreate, consensus.TokenCmd{Token: t}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	ck.log.Info("token created", "id", id, "name", in.Name, "scopes", in.Scopes)
	out := toTokenJSON(t)
	out.Token = secret
	writeJSON(w, http.StatusCreated, out)
}

// handleDeleteToken serves DELETE /tokens/{id}.
func (ck *ClusterKit) handleDeleteToken(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	found := false
	for _, t := range ck.raft.State().Tokens {
		found = found || t.ID == id
	}
	if !found {
		httpapi.WriteError(w, errcode.New(errcode.NotFound, "no token %q", id))
		return
	}
	if err := ck.apply(r.Context(), consensus.CmdTokenDelete, consensus.TokenDeleteCmd{ID: id}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	ck.log.Info("token deleted", "id", id)
	writeJSON(w, http.StatusOK, map[string]any{"status": "deleted", "id": id})
}

// handleKVAuth serves GET /cluster/kv-auth.
func (ck *ClusterKit) handleKVAuth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"required": ck.raft.State().KVAuth})
}

// handleSetKVAuth serves PUT /cluster/kv-auth {"required": bool}.
func (ck *ClusterKit) handleSetKVAuth(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Required *bool `json:"required"`
	}
	if err := decodeBody(w, r, &in); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if in.Required == nil {
		httpapi.WriteError(w, errcode.New(errcode.BadRequest, `the body must be {"required": true|false}`))
		return
	}
	if err := ck.apply(r.Context(), consensus.CmdKVAuth, consensus.KVAuthCmd{Required: *in.Required}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	ck.log.Info("KV authentication changed", "required", *in.Required)
	writeJSON(w, http.StatusOK, map[string]any{"required": *in.Required})
}

// ensureAuthSettings registers ADMIN_TOKEN as the first admin token and
// turns KV auth on for KV_AUTH=required, once the cluster is initialised:
// retried until done, then it returns. The FSM refuses a second bootstrap
// token, so a revoked ADMIN_TOKEN does not come back while another admin
// token exists.
func (ck *ClusterKit) ensureAuthSettings(ctx context.Context) {
	if ck.cfg.AdminToken == "" && !ck.cfg.KVAuth {
		return
	}
	for {
		st := ck.raft.State()
		var errs []error
		if st.Initialized() {
			if ck.cfg.AdminToken != "" && !st.HasAdminToken() {
				t := consensus.Token{ID: "admin-token", Name: "ADMIN_TOKEN", Hash: auth.Hash(ck.cfg.AdminToken),
					Scopes: []string{auth.ScopeAdmin}, Created: time.Now().UTC()}
				if err := ck.apply(ctx, consensus.CmdTokenBootstrap, consensus.TokenCmd{Token: t}); err != nil {
					errs = append(errs, fmt.Errorf("register ADMIN_TOKEN: %w", err))
				} else {
					ck.log.Info("ADMIN_TOKEN registered as the cluster's first admin token")
				}
			}
			if ck.cfg.KVAuth && !st.KVAuth {
				if err := ck.apply(ctx, consensus.CmdKVAuth, consensus.KVAuthCmd{Required: true}); err != nil {
					errs = append(errs, fmt.Errorf("turn KV auth on: %w", err))
				} else {
					ck.log.Info("KV_AUTH=required: KV authentication is on for the cluster")
				}
			}
			st = ck.raft.State()
			if (ck.cfg.AdminToken == "" || st.HasAdminToken()) && (!ck.cfg.KVAuth || st.KVAuth) {
				return
			}
		}
		if err := errors.Join(errs...); err != nil && ctx.Err() == nil {
			ck.log.Debug("auth settings not applied yet; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// handleLeave serves POST /cluster/leave: this node (or ?node=ID, another
// one) drains its partitions, leaves the cluster and stops.
func (ck *ClusterKit) handleLeave(w http.ResponseWriter, r *http.Request) {
	target := r.URL.Query().Get("node")
	if target != "" && target != ck.cfg.NodeID {
		n, ok := ck.raft.State().Nodes[target]
		if !ok || n.Status == consensus.StatusLeft {
			httpapi.WriteError(w, errcode.New(errcode.NotFound, "no member %q", target))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := ck.peers.Leave(ctx, target); err != nil {
			httpapi.WriteError(w, err)
			return
		}
		ck.log.Info("asked another node to leave", "node", target)
		writeJSON(w, http.StatusAccepted, map[string]any{"status": "leaving", "node_id": target,
			"message": "handing partitions over, then leaving the cluster and stopping"})
		return
	}
	ck.requestLeave()
	writeJSON(w, http.StatusAccepted, map[string]any{
		"status":  "leaving",
		"node_id": ck.cfg.NodeID,
		"message": "handing partitions over, then leaving the cluster and stopping",
	})
}

// requestLeave is an operator's leave: this node hands its partitions
// over, gives up its Raft vote and stops, and the cluster is one node
// smaller (a signal's stop keeps the vote; see Drain).
func (ck *ClusterKit) requestLeave() {
	ck.removing.Store(true)
	ck.leaving.Store(true)
	ck.leaveOnce.Do(func() { close(ck.leaveCh) })
}

// ServeLeave is another node asking this one to leave (peer.ControlHandler).
func (c controlServer) ServeLeave(ctx context.Context) error {
	c.ck.log.Info("leave requested by a peer")
	c.ck.requestLeave()
	return nil
}

// ServeKeyring lists or changes this node's cluster keys
// (peer.ControlHandler): the keyring used on the internal port, gossip's,
// and the keyring file, together.
func (c controlServer) ServeKeyring(ctx context.Context, req peer.KeyringReq) (peer.KeyringStatus, error) {
	ck := c.ck
	if ck.keyring == nil {
		return peer.KeyringStatus{}, errcode.New(errcode.Conflict, "%s runs without CLUSTER_KEY: there is no keyring to change", ck.cfg.NodeID)
	}
	if req.Op != "list" {
		k, err := clusterkey.Parse(req.Key)
		if err != nil {
			return peer.KeyringStatus{}, errcode.New(errcode.BadRequest, "key: %v", err)
		}
		ck.keyringMu.Lock()
		err = ck.changeKeyring(req.Op, k)
		ck.keyringMu.Unlock()
		if err != nil {
			return peer.KeyringStatus{}, err
		}
		ck.log.Info("keyring changed", "op", req.Op, "key", k.Fingerprint(), "primary", ck.keyring.Primary().Fingerprint())
	}
	return ck.keyringStatus(), nil
}

// changeKeyring applies one keyring operation; the caller holds keyringMu.
func (ck *ClusterKit) changeKeyring(op string, k clusterkey.Key) error {
	switch op {
	case "install":
		ck.keyring.Install(k)
	case "use":
		if err := ck.keyring.Use(k); err != nil {
			return errcode.New(errcode.Conflict, "use %s: %v", k.Fingerprint(), err)
		}
	case "remove":
		if err := ck.keyring.Remove(k); errors.Is(err, clusterkey.ErrNotInstalled) {
			return nil // already gone: removing is idempotent
		} else if err != nil {
			return errcode.New(errcode.Conflict, "remove %s: %v", k.Fingerprint(), err)
		}
	default:
		return errcode.New(errcode.BadRequest, "keyring operation %q: want install, use or remove", op)
	}
	if err := ck.members.SetGossipKeys(ck.keyring.GossipKeys()); err != nil {
		return fmt.Errorf("gossip keyring: %w", err)
	}
	return ck.keyring.Save(ck.keyringPath())
}

func (ck *ClusterKit) keyringStatus() peer.KeyringStatus {
	st := peer.KeyringStatus{Node: ck.cfg.NodeID, Primary: ck.keyring.Primary().Fingerprint()}
	for _, k := range ck.keyring.Keys() {
		st.Keys = append(st.Keys, k.Fingerprint())
	}
	return st
}

// liveMembers lists the members to fan a keyring operation out to.
func (ck *ClusterKit) liveMembers() []string {
	var out []string
	for _, n := range ck.raft.State().SortedNodes() {
		if n.Status == consensus.StatusAlive || n.Status == consensus.StatusSuspect {
			out = append(out, n.ID)
		}
	}
	if !slices.Contains(out, ck.cfg.NodeID) {
		out = append(out, ck.cfg.NodeID)
	}
	return out
}

// fanOutKeyring runs req on every live member, in parallel.
func (ck *ClusterKit) fanOutKeyring(ctx context.Context, req peer.KeyringReq) (map[string]peer.KeyringStatus, map[string]string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var mu sync.Mutex
	ok, failed := map[string]peer.KeyringStatus{}, map[string]string{}
	var wg sync.WaitGroup
	for _, n := range ck.liveMembers() {
		wg.Go(func() {
			st, err := ck.peers.Keyring(ctx, n, req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[n] = err.Error()
			} else {
				ok[n] = st
			}
		})
	}
	wg.Wait()
	return ok, failed
}

// keyringJSON is the cluster's keyring as GET /cluster/keyring shows it.
func keyringJSON(nodes map[string]peer.KeyringStatus, failed map[string]string) map[string]any {
	type keyInfo struct {
		Fingerprint string   `json:"fingerprint"`
		PrimaryOn   []string `json:"primary_on"`
		InstalledOn []string `json:"installed_on"`
	}
	byFP := map[string]*keyInfo{}
	for _, id := range sortedKeys(nodes) {
		st := nodes[id]
		for _, fp := range st.Keys {
			ki, ok := byFP[fp]
			if !ok {
				ki = &keyInfo{Fingerprint: fp, PrimaryOn: []string{}, InstalledOn: []string{}}
				byFP[fp] = ki
			}
			ki.InstalledOn = append(ki.InstalledOn, id)
			if fp == st.Primary {
				ki.PrimaryOn = append(ki.PrimaryOn, id)
			}
		}
	}
	keys := []keyInfo{}
	for _, fp := range sortedKeys(byFP) {
		keys = append(keys, *byFP[fp])
	}
	return map[string]any{"keys": keys, "nodes": nodes, "errors": failed}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// handleKeyring serves GET /cluster/keyring: every live member's keys, by
// fingerprint (never the keys themselves).
func (ck *ClusterKit) handleKeyring(w http.ResponseWriter, r *http.Request) {
	if ck.keyring == nil {
		httpapi.WriteError(w, errcode.New(errcode.Conflict, "this cluster runs without CLUSTER_KEY: there is no keyring"))
		return
	}
	nodes, failed := ck.fanOutKeyring(r.Context(), peer.KeyringReq{Op: "list"})
	writeJSON(w, http.StatusOK, keyringJSON(nodes, failed))
}

// handleKeyringOp serves POST /cluster/keyring/{install,use,remove}
// {"key": BASE64}: the operation on every live member. "use" needs the key
// installed on every member first, and "remove" needs it primary on none,
// so no step of a rotation cuts a member off.
func (ck *ClusterKit) handleKeyringOp(w http.ResponseWriter, r *http.Request) {
	op := chi.URLParam(r, "op")
	if op != "install" && op != "use" && op != "remove" {
		httpapi.WriteError(w, errcode.New(errcode.NotFound, "no keyring operation %q: want install, use or remove", op))
		return
	}
	if ck.keyring == nil {
		httpapi.WriteError(w, errcode.New(errcode.Conflict, "this cluster runs without CLUSTER_KEY: start every node with one to use a keyring"))
		return
	}
	var in struct {
		Key string `json:"key"`
	}
	if err := decodeBody(w, r, &in); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	k, err := clusterkey.Parse(in.Key)
	if err != nil {
		httpapi.WriteError(w, errcode.New(errcode.BadRequest, "key: %v; want the base64 of 32 random bytes (clusterkit keygen prints one)", err))
		return
	}
	fp := k.Fingerprint()
	if op == "use" || op == "remove" {
		nodes, failed := ck.fanOutKeyring(r.Context(), peer.KeyringReq{Op: "list"})
		if len(failed) > 0 {
			httpapi.WriteError(w, &errcode.Error{Code: errcode.Unavailable,
				Message: "not every member answered; a rotation step needs them all", Details: map[string]any{"errors": failed}})
			return
		}
		for _, id := range sortedKeys(nodes) {
			st := nodes[id]
			if op == "use" && !slices.Contains(st.Keys, fp) {
				httpapi.WriteError(w, errcode.New(errcode.Conflict, "%s has not installed %s: install it on every member first", id, fp))
				return
			}
			if op == "remove" && st.Primary == fp {
				httpapi.WriteError(w, errcode.New(errcode.Conflict, "%s still uses %s as its primary key: use another key first", id, fp))
				return
			}
		}
	}
	nodes, failed := ck.fanOutKeyring(r.Context(), peer.KeyringReq{Op: op, Key: in.Key})
	body := keyringJSON(nodes, failed)
	body["op"], body["key"] = op, fp
	if len(failed) > 0 {
		httpapi.WriteError(w, &errcode.Error{Code: errcode.Unavailable, Details: body,
			Message: fmt.Sprintf("%s of %s failed on %d member(s); run it again once they are back", op, fp, len(failed))})
		return
	}
	writeJSON(w, http.StatusOK, body)
}
