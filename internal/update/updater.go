package update

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/buildinfo"
	"github.com/bangerdev/banger/internal/hostexec"
)

// Mode is how banger runs on this host.
type Mode string

// Modes.
const (
	ModeUser   Mode = "user"   // the CLI starts bangerd as the user
	ModeSystem Mode = "system" // systemd runs bangerd and the root helper
)

// Services stops and starts what runs the installed binaries.
//
// Contract:
//   - InFlight never changes anything; it names the daemon operations
//     running now (none when no daemon answers).
//   - RefreshUnits re-renders the service definitions from the binaries
//     now installed (the new build after a swap, the old one after a
//     rollback), so changed unit templates ship with the update. In user
//     mode it does nothing.
//   - Restart restarts the root helper, then the daemon (system mode), or
//     the user daemon (starting it if it was not running), from the
//     installed binaries, and returns once the daemon answers on its
//     socket. Running VMs survive it.
//   - Running reports the build of the daemon that answers.
type Services interface {
	Mode() Mode
	InFlight(ctx context.Context) ([]string, error)
	RefreshUnits(ctx context.Context) error
	Restart(ctx context.Context) error
	Running(ctx context.Context) (buildinfo.Info, error)
}

// Updater replaces the installed banger binaries with a signed release.
//
// Contract: Update and Rollback either finish with the requested build
// installed, running and passing `banger doctor`, or leave the install as
// it was (automatically rolling back once the swap happened, reported by
// an error wrapping ErrRolledBack). Every refusal happens before the
// first byte of the install changes: a manifest that cannot be fetched or
// parsed, an unknown version, a signature that does not verify against
// Key, a tarball SHA256SUMS does not list, a download whose hash or
// length is wrong, an archive with anything but the expected regular
// files, binaries that do not report the release's version, a new
// bangerd that reports incompatible migrations, operations in flight
// (unless Force), or missing permissions.
type Updater struct {
	ManifestURL string
	Key         *PublicKey
	Current     buildinfo.Info
	Install     Installation
	// CacheDir holds downloads and staging directories. In system mode it
	// must be a root-owned directory nobody else can write.
	CacheDir string
	Services Services
	// Runner runs the staged and installed binaries (version,
	// --check-migrations, doctor).
	Runner hostexec.Runner
	// Env is added to the environment of the new binaries' checks (system
	// mode: BANGER_MODE=system, so they look at the system state store).
	Env []string
	// RunAsOwner prefixes `bangerd --check-migrations` (system mode:
	// setpriv to the owner), so root never opens the owner's state store
	// and cannot leave root-owned files beside it.
	RunAsOwner []string
	HTTP       *http.Client  // nil = NewHTTPClient()
	Stall      time.Duration // a server silent this long is given up on (0 = DefaultStall)
	Out        io.Writer     // progress lines; nil = discard
	Euid       func() int    // nil = os.Geteuid
	GOOS       string        // "" = runtime.GOOS
	GOARCH     string        // "" = runtime.GOARCH
}

// Options select what Update does.
type Options struct {
	To     string // version to install ("" = the manifest's latest)
	DryRun bool   // stop after staging and the migrations check
	Force  bool   // update while operations are in flight; reinstall the same version
}

// Plan is what Check found.
type Plan struct {
	Current  string   `json:"current"`
	Target   string   `json:"target"`
	Latest   string   `json:"latest"`
	Tarball  string   `json:"tarball"`
	UpToDate bool     `json:"up_to_date"`
	Older    bool     `json:"older"` // Target is older than Current
	Release  *Release `json:"-"`
	sum      string
	base     *url.URL
}

// Result is what Update did.
type Result struct {
	Plan
	Migrations string `json:"migrations"` // what the new bangerd said
	DryRun     bool   `json:"dry_run"`
	Installed  bool   `json:"installed"`
	Daemon     string `json:"daemon,omitempty"` // version of the daemon now answering
}

func (u *Updater) logf(format string, args ...any) {
	if u.Out != nil {
		fmt.Fprintf(u.Out, format+"\n", args...)
	}
}

func (u *Updater) goos() string {
	if u.GOOS != "" {
		return u.GOOS
	}
	return runtime.GOOS
}

func (u *Updater) goarch() string {
	if u.GOARCH != "" {
		return u.GOARCH
	}
	return runtime.GOARCH
}

func (u *Updater) euid() int {
	if u.Euid != nil {
		return u.Euid()
	}
	return os.Geteuid()
}

func (u *Updater) needRoot(what string) error {
	if u.Services != nil && u.Services.Mode() == ModeSystem && u.euid() != 0 {
		return fmt.Errorf("%w: banger runs as a system service here; run `sudo banger %s`", ErrNeedsRoot, what)
	}
	return nil
}

// Check fetches the manifest and the release's signed SHA256SUMS and
// says what Update would install. It changes nothing.
func (u *Updater) Check(ctx context.Context, to string) (*Plan, error) {
	if u.ManifestURL == "" || u.Key == nil {
		return nil, fmt.Errorf("%w: this build pins no release key or manifest URL; pass --manifest-url and --pubkey-file, or set update.manifest_url and update.pubkey_file in config.toml", ErrNoChannel)
	}
	if to != "" && !ValidVersion(to) {
		return nil, fmt.Errorf("%w: %q is not a version like v1.2.3", ErrUnknownVersion, to)
	}
	base, err := url.Parse(u.ManifestURL)
	if err != nil || (base.Scheme != "https" && base.Scheme != "http" && base.Scheme != "file") || base.Host == "" && base.Scheme != "file" {
		return nil, fmt.Errorf("%w: manifest URL %q is not an http(s) URL", ErrUnreachable, u.ManifestURL)
	}
	u.logf("fetching release manifest %s", u.ManifestURL)
	data, err := u.get(ctx, u.ManifestURL, MaxManifestBytes)
	if err != nil {
		return nil, fmt.Errorf("fetch release manifest: %w", err)
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%w (from %s)", err, u.ManifestURL)
	}
	rel, err := m.Find(to)
	if err != nil {
		return nil, err
	}
	want := TarballName(rel.Version, u.goos(), u.goarch())
	if path.Base(rel.Tarball) != want {
		return nil, fmt.Errorf("%w: the manifest's tarball for %s is %q, expected %s", ErrNotListed, rel.Version, path.Base(rel.Tarball), want)
	}
	sums, err := u.verifiedSums(ctx, base, rel)
	if err != nil {
		return nil, err
	}
	sum, err := sums.Lookup(want)
	if err != nil {
		return nil, err
	}
	p := &Plan{Current: u.Current.Version, Target: rel.Version, Latest: m.Latest, Tarball: want, Release: rel, sum: sum, base: base}
	p.UpToDate = rel.Version == u.Current.Version
	if ValidVersion(u.Current.Version) {
		p.Older = CompareVersions(rel.Version, u.Current.Version) < 0
	}
	return p, nil
}

// verifiedSums fetches SHA256SUMS and its signature and verifies them
// against the pinned key before parsing.
func (u *Updater) verifiedSums(ctx context.Context, base *url.URL, rel *Release) (Sums, error) {
	sumsData, err := u.get(ctx, resolve(base, rel.Sums), MaxSumsBytes)
	if err != nil {
		return nil, fmt.Errorf("fetch SHA256SUMS: %w", err)
	}
	sig, err := u.get(ctx, resolve(base, rel.Signature), MaxSignatureBytes)
	if err != nil {
		if errors.Is(err, ErrUnreachable) {
			return nil, fmt.Errorf("%w: cannot fetch SHA256SUMS.sig: %v", ErrBadSignature, err)
		}
		return nil, fmt.Errorf("fetch SHA256SUMS.sig: %w", err)
	}
	if err := u.Key.Verify(sumsData, sig); err != nil {
		return nil, fmt.Errorf("%w; refusing release %s", err, rel.Version)
	}
	sums, err := ParseSums(sumsData)
	if err != nil {
		return nil, err
	}
	return sums, nil
}

// Update installs a release (see the Updater contract).
func (u *Updater) Update(ctx context.Context, o Options) (*Result, error) {
	if err := u.needRoot("update"); err != nil {
		return nil, err
	}
	unlock, err := u.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	plan, err := u.Check(ctx, o.To)
	if err != nil {
		return nil, err
	}
	res := &Result{Plan: *plan, DryRun: o.DryRun}
	switch {
	case plan.UpToDate && !o.Force:
		u.logf("banger %s is already installed (--force reinstalls it)", plan.Current)
		return res, nil
	case plan.Older && o.To == "":
		return nil, fmt.Errorf("%w (%s < %s); pass --to %s to downgrade", ErrDowngrade, plan.Target, plan.Current, plan.Target)
	}
	if !o.DryRun {
		if err := u.Install.CheckWritable(); err != nil {
			return nil, err
		}
	}
	tarball := filepath.Join(u.CacheDir, plan.Tarball)
	u.logf("downloading %s", resolve(plan.base, plan.Release.Tarball))
	start := time.Now()
	if err := u.download(ctx, resolve(plan.base, plan.Release.Tarball), tarball, plan.sum, MaxTarballBytes); err != nil {
		return nil, err
	}
	var size int64
	if st, err := os.Stat(tarball); err == nil {
		size = st.Size()
	}
	u.logf("verified %s: %.1f MiB, sha256 %s… (%s)", plan.Tarball, float64(size)/(1<<20), plan.sum[:16], time.Since(start).Round(time.Millisecond))
	st, err := stage(tarball, u.CacheDir, u.Install.Names(), ReleaseEntries, MaxBinaryBytes)
	if err != nil {
		return nil, fmt.Errorf("%w; nothing was installed", err)
	}
	defer os.RemoveAll(st.Dir)
	if err := u.checkBuild(ctx, st, plan.Target); err != nil {
		return nil, err
	}
	detail, err := u.checkMigrations(ctx, st.Files["bangerd"])
	if err != nil {
		return nil, err
	}
	res.Migrations = detail
	u.logf("state store: %s", detail)
	if o.DryRun {
		u.logf("dry run: %s is verified and staged; nothing was installed", plan.Target)
		return res, nil
	}
	ops, err := u.Services.InFlight(ctx)
	if err != nil {
		return nil, fmt.Errorf("ask the daemon for operations in flight: %w (pass --force to update anyway)", err)
	}
	if len(ops) > 0 && !o.Force {
		return nil, fmt.Errorf("%w: %s; wait for them (`banger daemon operations`) or pass --force", ErrInFlight, strings.Join(ops, ", "))
	}
	baseline := u.doctorFails(ctx)
	u.logf("installing %s", plan.Target)
	sw, err := u.Install.Swap(st)
	if err != nil {
		return nil, fmt.Errorf("install: %w (the previous install is in place)", err)
	}
	daemon, err := u.activate(ctx, plan.Target, baseline)
	if err != nil {
		// Once swapped, an interrupt must not stop the way back.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		return nil, u.rollback(rctx, sw, err)
	}
	sw.Commit()
	res.Installed = true
	res.Daemon = daemon
	u.logf("banger %s installed; %s kept as %s", plan.Target, plan.Current, PreviousSuffix)
	return res, nil
}

// activate refreshes units, restarts and checks the new install.
func (u *Updater) activate(ctx context.Context, version string, baseline []string) (string, error) {
	if err := u.Services.RefreshUnits(ctx); err != nil {
		return "", fmt.Errorf("refresh service units: %w", err)
	}
	u.logf("restarting %s", map[Mode]string{ModeSystem: "the root helper, then the daemon", ModeUser: "the daemon"}[u.Services.Mode()])
	if err := u.Services.Restart(ctx); err != nil {
		return "", fmt.Errorf("restart: %w", err)
	}
	b, err := u.Services.Running(ctx)
	if err != nil {
		return "", fmt.Errorf("the new daemon does not answer: %w", err)
	}
	if b.Version != version {
		return "", fmt.Errorf("the daemon answering is %s, not %s", b.Version, version)
	}
	u.logf("daemon %s is up; running `banger doctor`", b.Version)
	fails, err := u.doctor(ctx)
	if err != nil {
		return "", err
	}
	var fresh []string
	for _, f := range fails {
		name, _, _ := strings.Cut(f, ": ")
		if !slices.ContainsFunc(baseline, func(b string) bool { return strings.HasPrefix(b, name+": ") }) {
			fresh = append(fresh, f)
		}
	}
	if len(fresh) > 0 {
		return "", fmt.Errorf("the new `banger doctor` FAILs: %s", strings.Join(fresh, "; "))
	}
	if len(fails) > 0 {
		u.logf("note: doctor FAILs that the previous install had too: %s", strings.Join(fails, "; "))
	}
	return b.Version, nil
}

// rollback undoes a swap whose activation failed, restoring the binaries
// and .previous copies as they were, then restarts the old build.
func (u *Updater) rollback(ctx context.Context, sw *Swapped, cause error) error {
	u.logf("update failed: %v", cause)
	u.logf("rolling back to the previous install")
	if err := sw.Undo(); err != nil {
		return fmt.Errorf("%w: %v; then: %v; restore by hand: move each binary's %s copy back and restart (`banger system restart` or `banger daemon stop`)", ErrRollbackFailed, cause, err, PreviousSuffix)
	}
	var errs []error
	if err := u.Services.RefreshUnits(ctx); err != nil {
		errs = append(errs, fmt.Errorf("refresh units: %w", err))
	}
	if err := u.Services.Restart(ctx); err != nil {
		errs = append(errs, fmt.Errorf("restart: %w", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %v; the previous binaries are back but did not come up: %v", ErrRollbackFailed, cause, errors.Join(errs...))
	}
	return fmt.Errorf("%w: %v (rolled back to previous install)", ErrRolledBack, cause)
}

// Rollback swaps the installed binaries with their .previous copies and
// restarts; running it again undoes it.
func (u *Updater) Rollback(ctx context.Context, force bool) (string, error) {
	if err := u.needRoot("update --rollback"); err != nil {
		return "", err
	}
	unlock, err := u.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	if err := u.Install.HasPrevious(); err != nil {
		return "", err
	}
	if err := u.Install.CheckWritable(); err != nil {
		return "", err
	}
	ops, err := u.Services.InFlight(ctx)
	if err == nil && len(ops) > 0 && !force {
		return "", fmt.Errorf("%w: %s; wait for them (`banger daemon operations`) or pass --force", ErrInFlight, strings.Join(ops, ", "))
	}
	if err := u.Install.Restore(); err != nil {
		return "", fmt.Errorf("roll back: %w", err)
	}
	if err := u.Services.RefreshUnits(ctx); err != nil {
		return "", fmt.Errorf("rolled back the binaries, but refreshing the units failed: %w (run `sudo banger system install`)", err)
	}
	if err := u.Services.Restart(ctx); err != nil {
		return "", fmt.Errorf("rolled back the binaries, but the restart failed: %w", err)
	}
	b, err := u.Services.Running(ctx)
	if err != nil {
		return "", fmt.Errorf("rolled back the binaries, but the daemon does not answer: %w", err)
	}
	u.logf("rolled back to %s (run `banger update --rollback` again to undo)", b.Version)
	return b.Version, nil
}

// checkBuild runs the staged binaries and requires them to report the
// release's version: a signed tarball cannot be replayed under another
// version's name.
func (u *Updater) checkBuild(ctx context.Context, st *Staged, version string) error {
	res, err := u.Runner.Run(ctx, hostexec.Cmd{Name: st.Files["banger"], Args: []string{"version", "--json"}, Env: u.Env})
	if err != nil {
		return fmt.Errorf("%w: the new banger does not run here: %v", ErrBadBuild, err)
	}
	var b buildinfo.Info
	if err := json.Unmarshal(res.Stdout, &b); err != nil || b.Version != version {
		return fmt.Errorf("%w: the new banger reports version %q, the release is %s", ErrBadBuild, b.Version, version)
	}
	res, err = u.Runner.Run(ctx, hostexec.Cmd{Name: st.Files["bangerd"], Args: []string{"--version"}, Env: u.Env})
	if err != nil {
		return fmt.Errorf("%w: the new bangerd does not run here: %v", ErrBadBuild, err)
	}
	if f := strings.Fields(string(res.Stdout)); len(f) < 2 || f[1] != version {
		return fmt.Errorf("%w: the new bangerd reports %q, the release is %s", ErrBadBuild, strings.TrimSpace(string(res.Stdout)), version)
	}
	return nil
}

// Exit statuses of `bangerd --check-migrations`.
const (
	migrationsOK           = 0
	migrationsNeeded       = 1
	migrationsIncompatible = 2
)

func (u *Updater) checkMigrations(ctx context.Context, bangerd string) (string, error) {
	cmd := hostexec.Cmd{Name: bangerd, Args: []string{"--check-migrations"}, Env: u.Env}
	if len(u.RunAsOwner) > 0 {
		cmd = hostexec.Cmd{Name: u.RunAsOwner[0], Args: append(append(slices.Clone(u.RunAsOwner[1:]), bangerd), cmd.Args...), Env: u.Env}
	}
	res, err := u.Runner.Run(ctx, cmd)
	detail := strings.TrimSpace(string(res.Stdout))
	var ee *hostexec.ExitError
	switch {
	case err == nil:
		return detail, nil
	case errors.As(err, &ee) && ee.ExitCode == migrationsNeeded:
		return detail, nil
	case errors.As(err, &ee) && ee.ExitCode == migrationsIncompatible:
		return "", fmt.Errorf("%w: the new bangerd cannot use this state store: %s; nothing was installed", ErrIncompatible, detail)
	default:
		return "", fmt.Errorf("%w: the new bangerd could not check the state store: %v; nothing was installed", ErrIncompatible, err)
	}
}

// doctor runs the installed `banger doctor --json` and returns the
// checks that FAIL ("name: message").
func (u *Updater) doctor(ctx context.Context) ([]string, error) {
	res, err := u.Runner.Run(ctx, hostexec.Cmd{Name: u.Install.Path("banger"), Args: []string{"doctor", "--json"}, Env: u.Env})
	var outs []struct {
		Name    string `json:"name"`
		Status  string `json:"status"`
		Message string `json:"message"`
	}
	if jerr := json.Unmarshal(res.Stdout, &outs); jerr != nil {
		if err == nil {
			err = jerr
		}
		return nil, fmt.Errorf("the new `banger doctor` did not run: %w", err)
	}
	var fails []string
	for _, o := range outs {
		if o.Status == "FAIL" {
			fails = append(fails, o.Name+": "+o.Message)
		}
	}
	return fails, nil
}

// doctorFails is the doctor FAILs of the current install, so an update is
// judged only on what it breaks. A doctor that does not run counts as no
// FAILs.
func (u *Updater) doctorFails(ctx context.Context) []string {
	fails, _ := u.doctor(ctx)
	return fails
}

// lock serialises updates on this host with a lock file in CacheDir.
func (u *Updater) lock() (func(), error) {
	if err := os.MkdirAll(u.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("update cache %s: %w", u.CacheDir, err)
	}
	// Only this user may write where releases are unpacked before root
	// installs them.
	st, err := os.Lstat(u.CacheDir)
	if err != nil {
		return nil, fmt.Errorf("update cache %s: %w", u.CacheDir, err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !st.IsDir() || !ok || int(sys.Uid) != os.Geteuid() || st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("update cache %s must be a directory owned by uid %d and writable only by it (it is %v): remove it and retry", u.CacheDir, os.Geteuid(), st.Mode())
	}
	f, err := os.OpenFile(filepath.Join(u.CacheDir, "update.lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("update lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (lock %s held); wait for it to finish", ErrBusy, f.Name())
	}
	return func() { f.Close() }, nil
}
