package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"

	"github.com/clusterkit/clusterkit/client"
)

func adminCommands() []*cmd {
	return []*cmd{
		{name: "token list", summary: "list the API tokens (never their secrets)", setup: tokenList},
		{name: "token create", args: "SCOPE...", summary: "make a token and print its secret (shown only once)", setup: tokenCreate,
			help: "A scope is admin (management changes, and every key), read:PREFIX (reads of keys starting with PREFIX)\nor readwrite:PREFIX; read: and readwrite: cover every key. Scopes may also be given with -scope."},
		{name: "token delete", args: "ID", summary: "revoke a token on every node at once", setup: tokenDelete},
		{name: "keyring list", summary: "list every live member's cluster keys, by fingerprint", setup: keyringList},
		{name: "keyring install", args: "KEY", summary: "rotation step 1: every member accepts KEY", setup: keyringOp("install")},
		{name: "keyring use", args: "KEY", summary: "rotation step 2: every member presents KEY (installed everywhere first)", setup: keyringOp("use")},
		{name: "keyring remove", args: "KEY", summary: "rotation step 3: no member accepts KEY any more (primary nowhere)", setup: keyringOp("remove")},
		{name: "kv-auth status", summary: "print whether the KV API needs tokens", setup: kvAuth("status")},
		{name: "kv-auth on", summary: "make every /kv/* call need a token that covers its key", setup: kvAuth("on")},
		{name: "kv-auth off", summary: "open the KV API to callers without a token", setup: kvAuth("off")},
	}
}

type tokenJSON struct {
	ID      string   `json:"id"`
	Name    string   `json:"name,omitempty"`
	Scopes  []string `json:"scopes"`
	Created string   `json:"created"`
	Token   string   `json:"token,omitempty"`
}

func toTokenJSON(t client.Token) tokenJSON {
	return tokenJSON{ID: t.ID, Name: t.Name, Scopes: nonNil(t.Scopes), Created: fmtTime(t.CreatedAt), Token: t.Secret}
}

func tokenList(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		cl, err := e.clientWithArgs(ctx, args, 0, 0, "no arguments")
		if err != nil {
			return err
		}
		tokens, err := cl.Tokens(ctx)
		if err != nil {
			return fmt.Errorf("tokens: %w", err)
		}
		if e.g.json {
			out := make([]tokenJSON, len(tokens))
			for i, t := range tokens {
				out[i] = toTokenJSON(t)
			}
			return e.printJSON(map[string]any{"tokens": out, "count": len(out)})
		}
		rows := make([][]string, len(tokens))
		for i, t := range tokens {
			rows[i] = []string{t.ID, t.Name, strings.Join(t.Scopes, ","), fmtTime(t.CreatedAt)}
		}
		return e.table([]string{"ID", "NAME", "SCOPES", "CREATED"}, rows)
	}
}

func tokenCreate(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	name := fs.String("name", "", "a name to recognise the token by")
	var scopes listFlag
	fs.Var(&scopes, "scope", "a scope (repeatable; the same as an argument)")
	return func(ctx context.Context, e *env, args []string) error {
		all := append(append([]string(nil), scopes...), args...)
		if len(all) == 0 {
			return usagef("want at least one SCOPE (admin, read:PREFIX or readwrite:PREFIX)")
		}
		cl, err := e.client(ctx)
		if err != nil {
			return err
		}
		t, err := cl.CreateToken(ctx, all, *name)
		if err != nil {
			return asWrite(fmt.Errorf("create token: %w", err))
		}
		if e.g.json {
			return e.printJSON(toTokenJSON(*t))
		}
		fmt.Fprintf(e.out, "id:      %s\nname:    %s\nscopes:  %s\ncreated: %s\ntoken:   %s\n",
			t.ID, t.Name, strings.Join(t.Scopes, ","), fmtTime(t.CreatedAt), t.Secret)
		fmt.Fprintln(e.errw, "The secret is shown only now: keep it (clusterkit reads it from -token or CLUSTERKIT_TOKEN).")
		return nil
	}
}

func tokenDelete(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		cl, err := e.clientWithArgs(ctx, args, 1, 1, "the token's ID")
		if err != nil {
			return err
		}
		if err := cl.DeleteToken(ctx, args[0]); err != nil {
			return asWrite(fmt.Errorf("delete token %s: %w", args[0], err))
		}
		if e.g.json {
			return e.printJSON(map[string]any{"status": "deleted", "id": args[0]})
		}
		_, err = fmt.Fprintf(e.out, "deleted token %s\n", args[0])
		return err
	}
}

// keyringView is GET /cluster/keyring's answer.
type keyringView struct {
	Keys []struct {
		Fingerprint string   `json:"fingerprint"`
		PrimaryOn   []string `json:"primary_on"`
		InstalledOn []string `json:"installed_on"`
	} `json:"keys"`
	Errors map[string]string `json:"errors"`
}

func printKeyring(e *env, m map[string]any) error {
	if e.g.json {
		return e.printJSON(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	var v keyringView
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("keyring: unexpected answer: %w", err)
	}
	rows := make([][]string, len(v.Keys))
	for i, k := range v.Keys {
		rows[i] = []string{k.Fingerprint, list(k.PrimaryOn), list(k.InstalledOn)}
	}
	if err := e.table([]string{"FINGERPRINT", "PRIMARY ON", "INSTALLED ON"}, rows); err != nil {
		return err
	}
	ids := make([]string, 0, len(v.Errors))
	for id := range v.Errors {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(e.errw, "warning: %s did not answer: %s\n", id, v.Errors[id])
	}
	return nil
}

func keyringList(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		cl, err := e.clientWithArgs(ctx, args, 0, 0, "no arguments")
		if err != nil {
			return err
		}
		m, err := cl.Keyring(ctx)
		if err != nil {
			return fmt.Errorf("keyring: %w", err)
		}
		return printKeyring(e, m)
	}
}

func keyringOp(op string) func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
		return func(ctx context.Context, e *env, args []string) error {
			cl, err := e.clientWithArgs(ctx, args, 1, 1, "KEY (the base64 of 32 bytes; clusterkit keygen prints one)")
			if err != nil {
				return err
			}
			m, err := cl.KeyringOp(ctx, op, args[0])
			if err != nil {
				// A step that failed on some members says which.
				var ce *client.Error
				if errors.As(err, &ce) && ce.Body != nil {
					if errs, ok := ce.Body["errors"].(map[string]any); ok {
						for id, msg := range errs {
							fmt.Fprintf(e.errw, "%s: %v\n", id, msg)
						}
					}
				}
				return asWrite(fmt.Errorf("keyring %s: %w", op, err))
			}
			return printKeyring(e, m)
		}
	}
}

func kvAuth(op string) func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	return func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
		return func(ctx context.Context, e *env, args []string) error {
			cl, err := e.clientWithArgs(ctx, args, 0, 0, "no arguments")
			if err != nil {
				return err
			}
			var on bool
			if op == "status" {
				if on, err = cl.KVAuth(ctx); err != nil {
					return fmt.Errorf("kv-auth: %w", err)
				}
			} else {
				on = op == "on"
				if err := cl.SetKVAuth(ctx, on); err != nil {
					return asWrite(fmt.Errorf("kv-auth %s: %w", op, err))
				}
			}
			if e.g.json {
				return e.printJSON(map[string]any{"required": on})
			}
			if on {
				_, err = fmt.Fprintln(e.out, "KV authentication: on (every /kv/* call needs a token that covers its key)")
			} else {
				_, err = fmt.Fprintln(e.out, "KV authentication: off (the KV API is open)")
			}
			return err
		}
	}
}
