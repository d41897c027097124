package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/internal/api"
	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/config"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/paths"
	"github.com/bangerdev/banger/internal/rpc"
	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/update"
)

// systemUpdateCache is root's own download and staging directory in
// system mode: /var/cache/banger belongs to the owner, who must not be
// able to plant anything root then installs.
const systemUpdateCache = "/var/cache/banger-update"

func (a *app) updateCmd() *cobra.Command {
	var check, dryRun, force, rollback, asJSON bool
	var to, manifestURL, pubkeyFile string
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Update banger to a signed release (or roll back)",
		Long: `Update the installed banger and bangerd to a release from the release
channel, verifying it end to end before anything changes:

  1. fetch the channel's manifest.json (--manifest-url, update.manifest_url
     in config.toml, or the URL built into this banger);
  2. fetch the release's SHA256SUMS and SHA256SUMS.sig and verify the
     signature against the pinned release key (--pubkey-file,
     update.pubkey_file, or the key built into this banger);
  3. download the tarball into the cache, hashing it as it streams, and
     compare with the signed SHA256SUMS;
  4. unpack exactly banger and bangerd (regular files only) and check they
     report the release's version and that the new bangerd can use the
     state store (bangerd --check-migrations);
  5. (--dry-run stops here) refuse while daemon operations are in flight,
     unless --force;
  6. swap the binaries atomically, keeping the old ones as <file>.previous,
     refresh the systemd units (system mode), restart the root helper and
     the daemon (or the user daemon), wait until the daemon answers, and
     run the new banger doctor;
  7. if the new daemon does not come up or doctor reports a new FAIL,
     restore the previous binaries and restart them.

Running VMs keep running through an update. --rollback swaps the installed
binaries with their .previous copies by hand (run it again to undo).
In system mode update needs root (sudo). See docs/update.md.`,
		Example: `  banger update --check                 # is there a newer release?
  sudo banger update                    # install the latest release (system mode)
  banger update --to v1.4.2 --dry-run   # verify and stage v1.4.2, change nothing
  banger update --rollback              # go back to the previous install
  banger update --manifest-url http://127.0.0.1:8000/manifest.json --pubkey-file release.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if rollback && (check || dryRun || to != "") {
				return errors.New("--rollback cannot be combined with --check, --dry-run or --to")
			}
			u, err := a.updater(manifestURL, pubkeyFile, rollback)
			if err != nil {
				return err
			}
			if rollback {
				v, err := u.Rollback(ctx, force)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.env.Stdout, "rolled back: banger %s is running\n", v)
				return nil
			}
			if check {
				plan, err := u.Check(ctx, to)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.env.Stdout, plan)
				}
				switch {
				case plan.UpToDate:
					fmt.Fprintf(a.env.Stdout, "banger %s is up to date (latest release %s)\n", plan.Current, plan.Latest)
				case plan.Older:
					fmt.Fprintf(a.env.Stdout, "banger %s is newer than %s (latest release %s)\n", plan.Current, plan.Target, plan.Latest)
				default:
					fmt.Fprintf(a.env.Stdout, "banger %s is available (installed: %s); run `banger update`\n", plan.Target, plan.Current)
				}
				return nil
			}
			res, err := u.Update(ctx, update.Options{To: to, DryRun: dryRun, Force: force})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.env.Stdout, res)
			}
			switch {
			case res.UpToDate && !res.Installed && !res.DryRun:
				fmt.Fprintf(a.env.Stdout, "banger %s is up to date\n", res.Current)
			case res.DryRun:
				fmt.Fprintf(a.env.Stdout, "dry run: %s verified and staged (state store: %s); nothing changed\n", res.Target, res.Migrations)
			default:
				fmt.Fprintf(a.env.Stdout, "updated banger %s -> %s (daemon %s running; `banger update --rollback` goes back)\n", res.Current, res.Target, res.Daemon)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&check, "check", false, "only say whether a newer release exists")
	f.StringVar(&to, "to", "", "install this version (vX.Y.Z) instead of the latest; allows downgrades")
	f.BoolVar(&dryRun, "dry-run", false, "verify and stage the release, then stop before changing anything")
	f.BoolVar(&force, "force", false, "update even while daemon operations are in flight; reinstall the same version")
	f.BoolVar(&rollback, "rollback", false, "swap the installed binaries with their .previous copies and restart")
	f.StringVar(&manifestURL, "manifest-url", "", "release manifest URL (default: update.manifest_url, else built in)")
	f.StringVar(&pubkeyFile, "pubkey-file", "", "PEM public key releases must be signed with (default: update.pubkey_file, else built in)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// updater assembles an update.Updater for this host.
func (a *app) updater(manifestURL, pubkeyFile string, rollback bool) (*update.Updater, error) {
	layout, err := a.layout()
	if err != nil {
		return nil, err
	}
	cfg, err := config.Load(layout.ConfigFile(), config.DetectHost(), a.env.Getenv)
	if err != nil {
		return nil, err
	}
	if manifestURL == "" {
		manifestURL = cfg.Update.ManifestURL
	}
	if manifestURL == "" {
		manifestURL = buildinfo.UpdateManifestURL
	}
	var key *update.PublicKey
	switch {
	case pubkeyFile != "" || cfg.Update.PubKeyFile != "":
		if pubkeyFile == "" {
			pubkeyFile = cfg.Update.PubKeyFile
		}
		data, err := os.ReadFile(pubkeyFile)
		if err != nil {
			return nil, fmt.Errorf("read release public key: %w", err)
		}
		if key, err = update.ParsePublicKey(data); err != nil {
			return nil, fmt.Errorf("%s: %w", pubkeyFile, err)
		}
	case buildinfo.UpdatePublicKey != "":
		if key, err = update.ParsePublicKey([]byte(buildinfo.UpdatePublicKey)); err != nil {
			return nil, fmt.Errorf("the release key built into banger: %w (pass --pubkey-file)", err)
		}
	}
	runner := hostexec.Real{}
	u := &update.Updater{
		ManifestURL: manifestURL,
		Key:         key,
		Current:     a.env.Build,
		Runner:      runner,
		HTTP:        update.NewHTTPClient(),
		Out:         a.env.Stderr,
	}
	if layout.Mode == paths.ModeSystem {
		u.Install = update.Installation{Targets: []update.Target{{Name: system.CLIBinary, Path: system.CLIPath}, {Name: system.DaemonBinary, Path: system.DaemonPath}, {Name: system.AgentBinary, Path: system.AgentPath}}}
		u.CacheDir = systemUpdateCache
		u.Services = &systemServices{a: a, layout: layout, runner: runner, install: u.Install, cacheDir: systemUpdateCache}
		u.Env = []string{paths.EnvMode + "=" + paths.ModeSystem}
		if rec, err := system.ReadRecord(a.env.SystemRoot); err == nil {
			u.RunAsOwner = []string{"setpriv", fmt.Sprintf("--reuid=%d", rec.Owner.UID), fmt.Sprintf("--regid=%d", rec.Owner.GID), "--clear-groups", "--"}
		} else if !rollback {
			return nil, err
		}
		return u, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this banger: %w", err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return nil, fmt.Errorf("find this banger: %w", err)
	}
	d, err := a.daemonBinary()
	if err != nil {
		return nil, err
	}
	if d, err = filepath.EvalSymlinks(d); err != nil {
		return nil, fmt.Errorf("find bangerd: %w", err)
	}
	u.Install = update.Installation{Targets: []update.Target{{Name: "banger", Path: self}, {Name: "bangerd", Path: d}}}
	// The guest agent beside bangerd (where the daemon finds it) is
	// replaced too when this install has one.
	if ag := filepath.Join(filepath.Dir(d), system.AgentBinary); isRegular(ag) {
		u.Install.Targets = append(u.Install.Targets, update.Target{Name: system.AgentBinary, Path: ag})
	}
	u.CacheDir = filepath.Join(layout.CacheDir, "updates")
	u.Services = &userServices{a: a, layout: layout, runner: runner, install: u.Install}
	return u, nil
}

// inFlight names the daemon's running operations (none if it is down).
func inFlight(ctx context.Context, layout paths.Layout) ([]string, error) {
	var res api.OperationsList
	err := rpc.NewClient(layout.DaemonSocket()).Call(ctx, api.MethodOperationsList, api.OperationsListParams{}, &res)
	if errors.Is(err, rpc.ErrUnreachable) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, op := range res.Operations {
		if op.Done || op.EndedAt != nil {
			continue
		}
		n := op.Kind
		if op.Target != "" {
			n += " " + op.Target
		}
		names = append(names, fmt.Sprintf("%s (%s, %s)", n, op.Stage, op.ID))
	}
	return names, nil
}

// installedBuild asks an installed banger for its build identity.
func installedBuild(ctx context.Context, r hostexec.Runner, bin string) (buildinfo.Info, error) {
	res, err := r.Run(ctx, hostexec.Cmd{Name: bin, Args: []string{"version", "--json"}})
	if err != nil {
		return buildinfo.Info{}, err
	}
	var b buildinfo.Info
	if err := json.Unmarshal(res.Stdout, &b); err != nil {
		return buildinfo.Info{}, fmt.Errorf("%s version --json: %w", bin, err)
	}
	return b, nil
}

// userServices restarts the user-mode daemon from the installed binaries.
type userServices struct {
	a       *app
	layout  paths.Layout
	runner  hostexec.Runner
	install update.Installation
}

func (s *userServices) Mode() update.Mode { return update.ModeUser }
func (s *userServices) InFlight(ctx context.Context) ([]string, error) {
	return inFlight(ctx, s.layout)
}
func (s *userServices) RefreshUnits(context.Context) error { return nil }

func (s *userServices) Restart(ctx context.Context) error {
	b, err := installedBuild(ctx, s.runner, s.install.Path("banger"))
	if err != nil {
		return fmt.Errorf("the installed banger does not run: %w", err)
	}
	c := rpc.NewClient(s.layout.DaemonSocket())
	if err := c.Call(ctx, api.MethodShutdown, nil, nil); err == nil {
		if err := waitGone(ctx, c, 15*time.Second); err != nil {
			return err
		}
	} else if !errors.Is(err, rpc.ErrUnreachable) {
		return fmt.Errorf("stop the daemon: %w", err)
	}
	env := s.a.env
	env.Build = b
	env.DaemonBinary = s.install.Path("bangerd")
	sub := &app{env: env, logLevel: s.a.logLevel}
	return sub.startDaemon(ctx, s.layout, c)
}

func (s *userServices) Running(ctx context.Context) (buildinfo.Info, error) {
	p, err := s.a.ping(ctx, rpc.NewClient(s.layout.DaemonSocket()))
	if err != nil {
		return buildinfo.Info{}, err
	}
	return p.Build, nil
}

// systemServices drives the systemd units through the installed banger
// CLI, so that unit templates come from the build now installed.
type systemServices struct {
	a        *app
	layout   paths.Layout
	runner   hostexec.Runner
	install  update.Installation
	cacheDir string
}

func (s *systemServices) Mode() update.Mode { return update.ModeSystem }
func (s *systemServices) InFlight(ctx context.Context) ([]string, error) {
	return inFlight(ctx, s.layout)
}

// RefreshUnits runs the installed build's `banger system install
// --no-start` for the recorded owner: it re-renders both units from that
// build's templates, rewrites the install record (with that build's
// version) and reloads systemd. Install takes bangerd from the directory
// of the banger it runs, so both are linked into a private directory
// first.
func (s *systemServices) RefreshUnits(ctx context.Context) error {
	rec, err := system.ReadRecord(s.a.env.SystemRoot)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(s.cacheDir, "units-*")
	if err != nil {
		return fmt.Errorf("refresh units: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	for _, t := range s.install.Targets {
		if err := os.Link(t.Path, filepath.Join(dir, t.Name)); err != nil {
			data, rerr := os.ReadFile(t.Path)
			if rerr != nil {
				return fmt.Errorf("refresh units: %w", rerr)
			}
			if err := os.WriteFile(filepath.Join(dir, t.Name), data, 0o755); err != nil {
				return fmt.Errorf("refresh units: %w", err)
			}
		}
	}
	_, err = s.runner.Run(ctx, hostexec.Cmd{Name: filepath.Join(dir, system.CLIBinary), Args: []string{"system", "install", "--owner", rec.Owner.User, "--no-start"}})
	return err
}

func (s *systemServices) Restart(ctx context.Context) error {
	_, err := s.runner.Run(ctx, hostexec.Cmd{Name: s.install.Path(system.CLIBinary), Args: []string{"system", "restart"}})
	return err
}

func (s *systemServices) Running(ctx context.Context) (buildinfo.Info, error) {
	p, err := s.a.ping(ctx, rpc.NewClient(s.layout.DaemonSocket()))
	if err != nil {
		return buildinfo.Info{}, err
	}
	return p.Build, nil
}

// isRegular reports whether p is a regular file (not following a final
// symlink).
func isRegular(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}
