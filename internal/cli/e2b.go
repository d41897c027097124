package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/e2b"
	"github.com/bangerdev/banger/internal/model"
)

func (a *app) e2bCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "e2b",
		Short: "Serve an E2B-compatible sandbox API backed by banger VMs",
		Long: `The e2b SDKs (npm "e2b", Python "e2b") create sandboxes, run commands and
move files through E2B's API. ` + "`banger e2b serve`" + ` serves that API on this
host, backed by banger VMs, so an unmodified SDK works locally by setting
two environment variables:

  E2B_API_URL=http://127.0.0.1:3999      (the control plane)
  E2B_SANDBOX_URL=http://127.0.0.1:3999  (the in-sandbox API, routed to VMs)
  E2B_API_KEY=<a key from ` + "`banger e2b key create`" + `>

Sandboxes are ordinary banger VMs (` + "`banger vm list`" + ` shows their key and time
left); templates are banger images ("base" is the default image). See
docs/e2b.md.`,
		Example: `  banger e2b key create --name laptop
  banger e2b serve
  E2B_API_URL=http://127.0.0.1:3999 E2B_SANDBOX_URL=http://127.0.0.1:3999 \
    E2B_API_KEY=e2b_... node agent.mjs`,
	}
	cmd.AddCommand(a.e2bServeCmd(), a.e2bKeyCmd())
	return cmd
}

func (a *app) e2bServeCmd() *cobra.Command {
	var listen string
	var allowRemote bool
	var readyTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "serve [--listen 127.0.0.1:3999]",
		Short: "Serve the E2B-compatible API in the foreground",
		Long: `Serve the E2B control plane (create, connect, list, timeout, kill
sandboxes) and the envd router (an SDK request with an E2b-Sandbox-Id
header, or a Host "49983-<id>.<domain>", is proxied to envd on the
sandbox's VM) on one HTTP listener, until interrupted. It talks to the
banger daemon like the CLI does.

The listener is loopback by default. Anyone who can reach it with a valid
API key can run code in VMs: a non-loopback address needs --allow-remote
(put TLS in front of it).`,
		Example: `  banger e2b serve
  banger e2b serve --listen 127.0.0.1:8080
  banger e2b serve --listen 0.0.0.0:3999 --allow-remote`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, _, err := net.SplitHostPort(listen)
			if err != nil {
				return fmt.Errorf("--listen %q: %w (give host:port, e.g. 127.0.0.1:3999)", listen, err)
			}
			ip := net.ParseIP(host)
			if (ip == nil || !ip.IsLoopback()) && host != "localhost" && !allowRemote {
				return fmt.Errorf("--listen %s is not a loopback address: anyone reaching it with a key runs code in your VMs; add --allow-remote if you mean it", listen)
			}
			c, err := a.daemon(cmd.Context())
			if err != nil {
				return err
			}
			return a.serveE2B(cmd.Context(), listen, e2b.DaemonBackend{Client: c}, readyTimeout)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:3999", "address to listen on (host:port)")
	cmd.Flags().BoolVar(&allowRemote, "allow-remote", false, "allow a non-loopback --listen address")
	cmd.Flags().DurationVar(&readyTimeout, "ready-timeout", e2b.DefaultReadyTimeout, "how long a new sandbox may take to answer")
	return cmd
}

func (a *app) serveE2B(ctx context.Context, listen string, b e2b.Backend, readyTimeout time.Duration) error {
	log := slog.New(slog.NewTextHandler(a.env.Stderr, nil))
	srv := e2b.New(e2b.Options{Backend: b, Logger: log, ReadyTimeout: readyTimeout})
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another `banger e2b serve` running?)", listen, err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(a.env.Stderr, "banger e2b: serving on %s\n  export E2B_API_URL=%s E2B_SANDBOX_URL=%s\n", url, url, url)
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (a *app) e2bKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Create, list and revoke E2B API keys",
		Long: `API keys authenticate SDK calls (E2B_API_KEY). The state store keeps only
each key's SHA-256; a key is shown once, when created. A key sees and kills
only the sandboxes it created.`,
		Example: `  banger e2b key create --name ci
  banger e2b key list
  banger e2b key revoke k1a2b3c4d`,
	}
	cmd.AddCommand(a.e2bKeyCreateCmd(), a.e2bKeyListCmd(), a.e2bKeyRevokeCmd())
	return cmd
}

func (a *app) e2bKeyCreateCmd() *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create [--name NAME]",
		Short: "Create an API key and print it (once)",
		Long: `Create an API key ("e2b_" and 40 hex digits). Its id and name go to
stderr; the key itself is printed alone on the last line of stdout, so
` + "`KEY=$(banger e2b key create | tail -n1)`" + ` captures it. It cannot be shown
again: store it now.`,
		Example: `  banger e2b key create --name laptop
  export E2B_API_KEY=$(banger e2b key create --name ci | tail -n1)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.E2BKeyCreated
			if err := a.call(cmd.Context(), api.MethodE2BKeyCreate, api.E2BKeyCreateParams{Name: name}, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res)
			}
			fmt.Fprintf(a.env.Stderr, "created API key %s%s (shown once; revoke with `banger e2b key revoke %s`)\n", res.Key.ID, nameSuffix(res.Key.Name), res.Key.ID)
			fmt.Fprintln(a.env.Stdout, res.Secret)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "a name to recognise the key by")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the key record and secret as JSON")
	return cmd
}

func nameSuffix(n string) string {
	if n == "" {
		return ""
	}
	return " (" + n + ")"
}

func (a *app) e2bKeyListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List API keys (never their secrets)",
		Long:    "List API keys: id, name, creation time and whether revoked. Secrets are not stored and cannot be listed.",
		Example: "  banger e2b key list\n  banger e2b key list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.E2BKeyList
			if err := a.call(cmd.Context(), api.MethodE2BKeyList, api.Empty{}, &res); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res.Keys)
			}
			if len(res.Keys) == 0 {
				fmt.Fprintln(a.env.Stderr, "no API keys (create one with `banger e2b key create`)")
				return nil
			}
			now := time.Now()
			t := newTable(a.env.Stdout, "ID", "NAME", "CREATED", "STATE")
			for _, k := range res.Keys {
				state := "active"
				if k.RevokedAt != nil {
					state = "revoked " + ago(now, *k.RevokedAt)
				}
				t.row(k.ID, orDash(k.Name), ago(now, k.CreatedAt), state)
			}
			t.flush()
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func (a *app) e2bKeyRevokeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke ID...",
		Short: "Revoke API keys",
		Long: `Revoke API keys by id (see ` + "`banger e2b key list`" + `). A revoked key is refused
at once; its sandboxes keep running until their timeout or ` + "`banger vm delete`" + `.`,
		Example: "  banger e2b key revoke k1a2b3c4d",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, id := range args {
				var k model.APIKey
				if err := a.call(cmd.Context(), api.MethodE2BKeyRevoke, api.E2BKeyRef{ID: id}, &k); err != nil {
					return err
				}
				fmt.Fprintf(a.env.Stdout, "revoked %s%s\n", k.ID, nameSuffix(k.Name))
			}
			return nil
		},
	}
	return cmd
}
