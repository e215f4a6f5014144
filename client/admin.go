package client

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// mgmt runs a management call on any node (or addr) and decodes its
// answer into out. Management writes are not sent again once they may
// have reached a node.
func (c *Client) mgmt(ctx context.Context, method, path, addr string, in, out any) error {
	r := &request{method: method, path: path, mgmt: true, addr: addr, write: method != http.MethodGet}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		r.body = b
	}
	res, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	return decode(res, out)
}

// Cluster is GET /cluster. It also replaces the client's routing table
// when the answer is newer.
func (c *Client) Cluster(ctx context.Context) (*ClusterInfo, error) {
	var raw clusterJSON
	if err := c.mgmt(ctx, http.MethodGet, "/cluster", "", nil, &raw); err != nil {
		return nil, err
	}
	if t, err := c.newTable(&raw); err == nil && t.version > c.table.Load().version {
		c.table.Store(t)
	}
	return raw.info(), nil
}

// Members lists the cluster's members.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	info, err := c.Cluster(ctx)
	if err != nil {
		return nil, err
	}
	return info.Members, nil
}

// Partitions is GET /partitions: the partition table, in partition order.
func (c *Client) Partitions(ctx context.Context) ([]Partition, error) {
	var out struct {
		Partitions []partitionJSON `json:"partitions"`
	}
	if err := c.mgmt(ctx, http.MethodGet, "/partitions", "", nil, &out); err != nil {
		return nil, err
	}
	ps := make([]Partition, len(out.Partitions))
	for i, p := range out.Partitions {
		ps[i] = p.public()
	}
	return ps, nil
}

// Leader is GET /consensus/leader.
func (c *Client) Leader(ctx context.Context) (*Leader, error) {
	var out struct {
		ID        string `json:"leader_id"`
		Name      string `json:"leader_name"`
		IP        string `json:"leader_ip"`
		Term      uint64 `json:"term"`
		ElectedAt string `json:"elected_at"`
	}
	if err := c.mgmt(ctx, http.MethodGet, "/consensus/leader", "", nil, &out); err != nil {
		return nil, err
	}
	return &Leader{ID: out.ID, Name: out.Name, Addr: out.IP, Term: out.Term, ElectedAt: parseTime(out.ElectedAt)}, nil
}

// mgmtAddr is the management address of node: a member id, or an address
// used as is; "" is any node.
func (c *Client) mgmtAddr(node string) string {
	if node == "" {
		return ""
	}
	if m, ok := c.table.Load().members[node]; ok && m.mgmt != "" {
		return m.mgmt
	}
	return node
}

// Health is GET /health/detailed of one node (an id, a management
// address, or "" for any). An unhealthy node answers 503 with the same
// body: Health returns the body and an *Error with Code "unavailable".
func (c *Client) Health(ctx context.Context, node string) (map[string]any, error) {
	r := &request{method: http.MethodGet, path: "/health/detailed", mgmt: true, addr: c.mgmtAddr(node)}
	if r.addr != "" {
		// One node's health: ask once, an unhealthy answer is the answer.
		ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
		res := c.once(ctx, r.addr, r)
		if res.err != nil && res.body == nil {
			return nil, res.err
		}
		var out map[string]any
		if err := decode(res, &out); err != nil {
			return nil, err
		}
		if res.err != nil {
			return out, res.err
		}
		return out, nil
	}
	var out map[string]any
	err := c.mgmt(ctx, http.MethodGet, r.path, "", nil, &out)
	return out, err
}

// Leave is POST /cluster/leave: node (an id) hands its partitions over,
// leaves the cluster and stops; "" asks the node that answers to leave.
func (c *Client) Leave(ctx context.Context, node string) error {
	r := &request{method: http.MethodPost, path: "/cluster/leave", mgmt: true, write: true}
	if node != "" {
		r.query = url.Values{"node": {node}}
	}
	_, err := c.do(ctx, r)
	return err
}

type tokenJSON struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Scopes  []string `json:"scopes"`
	Created string   `json:"created"`
	Token   string   `json:"token"`
}

func (t tokenJSON) public() Token {
	created, _ := time.Parse(time.RFC3339, t.Created)
	return Token{ID: t.ID, Name: t.Name, Scopes: t.Scopes, Secret: t.Token, CreatedAt: created}
}

// Tokens is GET /tokens (admin): the cluster's tokens, without secrets.
func (c *Client) Tokens(ctx context.Context) ([]Token, error) {
	var out struct {
		Tokens []tokenJSON `json:"tokens"`
	}
	if err := c.mgmt(ctx, http.MethodGet, "/tokens", "", nil, &out); err != nil {
		return nil, err
	}
	ts := make([]Token, len(out.Tokens))
	for i, t := range out.Tokens {
		ts[i] = t.public()
	}
	return ts, nil
}

// CreateToken is POST /tokens {"name", "scopes"} (admin); the answer holds
// the secret, which the cluster does not keep.
func (c *Client) CreateToken(ctx context.Context, scopes []string, name string) (*Token, error) {
	in := map[string]any{"name": name, "scopes": scopes}
	var out tokenJSON
	if err := c.mgmt(ctx, http.MethodPost, "/tokens", "", in, &out); err != nil {
		return nil, err
	}
	t := out.public()
	return &t, nil
}

// DeleteToken is DELETE /tokens/{id} (admin).
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	return c.mgmt(ctx, http.MethodDelete, "/tokens/"+url.PathEscape(id), "", nil, nil)
}

// KVAuth reports whether the KV API requires tokens.
func (c *Client) KVAuth(ctx context.Context) (bool, error) {
	var out struct {
		Required bool `json:"required"`
	}
	err := c.mgmt(ctx, http.MethodGet, "/cluster/kv-auth", "", nil, &out)
	return out.Required, err
}

// SetKVAuth turns token checks on the KV API on or off (admin).
func (c *Client) SetKVAuth(ctx context.Context, on bool) error {
	return c.mgmt(ctx, http.MethodPut, "/cluster/kv-auth", "", map[string]bool{"required": on}, nil)
}

// Keyring is GET /cluster/keyring (admin): every live member's cluster
// keys by fingerprint.
func (c *Client) Keyring(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	err := c.mgmt(ctx, http.MethodGet, "/cluster/keyring", "", nil, &out)
	return out, err
}

// KeyringOp runs a keyring operation (install, use or remove) with key
// (base64) on every live member (admin).
func (c *Client) KeyringOp(ctx context.Context, op, key string) (map[string]any, error) {
	var out map[string]any
	err := c.mgmt(ctx, http.MethodPost, "/cluster/keyring/"+url.PathEscape(op), "", map[string]string{"key": key}, &out)
	return out, err
}
