package consensus

import (
	"fmt"
	"time"
)

// Token is a client credential as the cluster stores it: the SHA-256 of
// the secret, never the secret.
type Token struct {
	// ID names the token for management; it is not a secret.
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
	// Hash is the hex SHA-256 of the secret a client presents.
	Hash string `json:"hash"`
	// Scopes are what the token allows ("admin", "read:PREFIX",
	// "readwrite:PREFIX"); package auth parses and checks them.
	Scopes []string `json:"scopes"`
	// Created is stamped by the proposing node (every replica of the FSM
	// stores the same value).
	Created time.Time `json:"created"`
}

// IsAdmin reports whether the token has the admin scope.
func (t Token) IsAdmin() bool {
	for _, s := range t.Scopes {
		if s == "admin" {
			return true
		}
	}
	return false
}

// TokenCmd adds a token (CmdTokenCreate, CmdTokenBootstrap).
type TokenCmd struct {
	Token Token `json:"token"`
}

// TokenDeleteCmd removes the token with ID.
type TokenDeleteCmd struct {
	ID string `json:"id"`
}

// KVAuthCmd turns KV authentication on or off.
type KVAuthCmd struct {
	Required bool `json:"required"`
}

// TokenByHash returns the token whose secret hashes to hash.
func (s *State) TokenByHash(hash string) (Token, bool) {
	if s == nil {
		return Token{}, false
	}
	t, ok := s.Tokens[hash]
	return t, ok
}

// HasAdminToken reports whether any token has the admin scope.
func (s *State) HasAdminToken() bool {
	if s == nil {
		return false
	}
	for _, t := range s.Tokens {
		if t.IsAdmin() {
			return true
		}
	}
	return false
}

func validToken(t Token) error {
	switch {
	case t.ID == "" || len(t.ID) > 64:
		return fmt.Errorf("%w: token id must have 1 to 64 characters", ErrInvalid)
	case len(t.Hash) != 64:
		return fmt.Errorf("%w: token hash must be a hex SHA-256", ErrInvalid)
	case len(t.Scopes) == 0:
		return fmt.Errorf("%w: token without a scope", ErrInvalid)
	}
	return nil
}

func applyTokenCreate(s *State, c TokenCmd) error {
	if err := validToken(c.Token); err != nil {
		return err
	}
	if _, ok := s.Tokens[c.Token.Hash]; ok {
		return fmt.Errorf("%w: a token with this secret exists", ErrInvalid)
	}
	for _, t := range s.Tokens {
		if t.ID == c.Token.ID {
			return fmt.Errorf("%w: token id %s exists", ErrInvalid, c.Token.ID)
		}
	}
	if s.Tokens == nil {
		s.Tokens = map[string]Token{}
	}
	s.Tokens[c.Token.Hash] = c.Token
	return nil
}

// applyTokenBootstrap adds the first admin token, from ADMIN_TOKEN; it is
// refused once any admin token exists, so a revoked one never comes back
// through a node's environment.
func applyTokenBootstrap(s *State, c TokenCmd) error {
	if s.HasAdminToken() {
		return fmt.Errorf("%w: the cluster has an admin token already", ErrInvalid)
	}
	if !c.Token.IsAdmin() {
		return fmt.Errorf("%w: a bootstrap token must be an admin token", ErrInvalid)
	}
	return applyTokenCreate(s, c)
}

func applyTokenDelete(s *State, c TokenDeleteCmd) error {
	for h, t := range s.Tokens {
		if t.ID == c.ID {
			delete(s.Tokens, h)
			if len(s.Tokens) == 0 {
				s.Tokens = nil
			}
			return nil
		}
	}
	return fmt.Errorf("%w: no token %s", ErrInvalid, c.ID)
}

func applyKVAuth(s *State, c KVAuthCmd) error {
	s.KVAuth = c.Required
	return nil
}
