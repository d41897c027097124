package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// RecipeDebianBookworm is the default image recipe.
const RecipeDebianBookworm = "debian-bookworm"

// DefaultImageName is the name of the default image.
const DefaultImageName = "debian-bookworm"

// recipeVersion changes whenever the recipe's output changes, so cached
// debootstrap trees of an older recipe are not reused.
const recipeVersion = "1"

// buildVersion changes whenever what Build adds to a debootstrap tree
// changes (BuildHash), so cached image files of an older build are not
// reused while the tree still is.
const buildVersion = "2"

// DefaultPackages are installed in the "default" variant.
var DefaultPackages = []string{"systemd-sysv", "openssh-server", "udev", "dbus", "iproute2", "ca-certificates",
	"git", "curl", "make", "sudo", "kmod", "less", "procps"}

// MinbasePackages are installed in the "minbase" variant (tests).
var MinbasePackages = []string{"openssh-server", "iproute2", "systemd-sysv", "udev", "kmod"}

// BuildOptions describes a Debian image build.
type BuildOptions struct {
	Name     string   // image name; default "debian-bookworm"
	Recipe   string   // only "debian-bookworm"
	Suite    string   // default "bookworm"
	Mirror   string   // default Store.Mirror, else the host's apt sources
	Packages []string // extra packages
	Variant  string   // "default" (full package list) or "minbase" (small, for tests)
	SizeMiB  int64    // apparent size of the image; default 4096
	Kernel   string   // default kernel recorded with the image
	Replace  bool     // replace an existing image of that name
}

func (o *BuildOptions) defaults(storeMirror string) error {
	if o.Name == "" {
		o.Name = DefaultImageName
	}
	if err := model.ValidateName(o.Name); err != nil {
		return err
	}
	if o.Recipe == "" {
		o.Recipe = RecipeDebianBookworm
	}
	if o.Recipe != RecipeDebianBookworm {
		return fmt.Errorf("unknown image recipe %q (known: %s)", o.Recipe, RecipeDebianBookworm)
	}
	if o.Suite == "" {
		o.Suite = "bookworm"
	}
	if o.Variant == "" {
		o.Variant = "default"
	}
	if o.Variant != "default" && o.Variant != "minbase" {
		return fmt.Errorf("unknown variant %q (default or minbase)", o.Variant)
	}
	if o.SizeMiB == 0 {
		o.SizeMiB = 4096
	}
	if o.SizeMiB < 256 {
		return fmt.Errorf("image size %d MiB is too small for a Debian image (at least 256)", o.SizeMiB)
	}
	for _, p := range o.Packages {
		if !validPackage(p) {
			return fmt.Errorf("invalid package name %q", p)
		}
	}
	if o.Mirror == "" {
		o.Mirror = storeMirror
	}
	if o.Mirror == "" {
		m, err := HostMirror("/etc/apt")
		if err != nil {
			return err
		}
		o.Mirror = m
	}
	if !strings.HasPrefix(o.Mirror, "http://") && !strings.HasPrefix(o.Mirror, "https://") && !strings.HasPrefix(o.Mirror, "file:/") {
		return fmt.Errorf("mirror %q is not an http(s):// or file:/ URL", o.Mirror)
	}
	return nil
}

func validPackage(p string) bool {
	if p == "" || len(p) > 100 {
		return false
	}
	for i, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || (i > 0 && strings.ContainsRune("+-.", r))
		if !ok {
			return false
		}
	}
	return true
}

func (o BuildOptions) packages() []string {
	base := DefaultPackages
	if o.Variant == "minbase" {
		base = MinbasePackages
	}
	set := map[string]bool{}
	for _, p := range append(append([]string{}, base...), o.Packages...) {
		set[p] = true
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// RecipeHash identifies the debootstrap tree a build uses (suite, variant,
// package set, mirror, recipe version).
func (o BuildOptions) RecipeHash() string {
	h := sha256.New()
	fmt.Fprintf(h, "v%s\x00%s\x00%s\x00%s\x00%s", recipeVersion, o.Recipe, o.Suite, o.Variant, o.Mirror)
	for _, p := range o.packages() {
		fmt.Fprintf(h, "\x00%s", p)
	}
	return hex.EncodeToString(h.Sum(nil))[:24]
}

// BuildHash identifies the image file a build makes: the debootstrap tree
// (RecipeHash) and what the build adds to it (buildVersion). The guest
// contract's own pieces are keyed separately (GuestContract).
func (o BuildOptions) BuildHash() string {
	h := sha256.Sum256([]byte(o.RecipeHash() + "\x00build" + buildVersion))
	return hex.EncodeToString(h[:])[:24]
}

// HostMirror returns the first Debian mirror URL named in the host's apt
// sources under aptDir (deb822 sources.list.d/*.sources first, then
// sources.list), skipping security mirrors.
func HostMirror(aptDir string) (string, error) {
	files, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*.sources"))
	sort.Strings(files)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, stanza := range strings.Split(string(data), "\n\n") {
			var uri, suites string
			for _, l := range strings.Split(stanza, "\n") {
				if v, ok := strings.CutPrefix(l, "URIs:"); ok && uri == "" {
					if fs := strings.Fields(v); len(fs) > 0 {
						uri = fs[0]
					}
				}
				if v, ok := strings.CutPrefix(l, "Suites:"); ok {
					suites = v
				}
			}
			if uri != "" && !strings.Contains(uri, "security") && !strings.Contains(suites, "security") {
				return strings.TrimSuffix(uri, "/"), nil
			}
		}
	}
	if data, err := os.ReadFile(filepath.Join(aptDir, "sources.list")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 3 && f[0] == "deb" {
				i := 1
				if strings.HasPrefix(f[1], "[") { // [signed-by=...] options
					for i < len(f) && !strings.HasSuffix(f[i], "]") {
						i++
					}
					i++
				}
				if i < len(f) && !strings.Contains(f[i], "security") {
					return strings.TrimSuffix(f[i], "/"), nil
				}
			}
		}
	}
	return "", errors.New("no Debian mirror found in the host's apt sources: set the mirror in banger's config (or pass --mirror URL)")
}

// Build makes a Debian image with debootstrap (as root; the debootstrap
// tree is cached by recipe hash under CacheDir/debootstrap) and banger's
// guest pieces, converted to ext4 with mkfs.ext4 -d and edited with
// debugfs: nothing is mounted. Concurrent builds of one name coalesce.
func (s *Store) Build(ctx context.Context, o BuildOptions) (*model.Image, error) {
	if err := o.defaults(s.Mirror); err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	if os.Geteuid() != 0 && s.Rootfs == nil {
		return nil, fmt.Errorf("image build: debootstrap %w: run banger's daemon as root, install banger as a system service (`sudo banger system install`), or register an image built elsewhere", ErrNeedsRoot)
	}
	key := fmt.Sprintf("build\x00%s\x00%d\x00%s\x00%v", o.RecipeHash(), o.SizeMiB, o.Kernel, o.Replace)
	return s.coalesce(ctx, o.Name, key, func(ctx context.Context) (*model.Image, error) {
		return s.build(ctx, o)
	})
}

func (s *Store) build(ctx context.Context, o BuildOptions) (*model.Image, error) {
	if err := s.ensureAbsent(ctx, o.Name, o.Replace); err != nil {
		return nil, err
	}
	tmp, cleanup, err := s.tempFile("build")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	if os.Geteuid() == 0 {
		if err := s.BuildFile(ctx, o, tmp); err != nil {
			return nil, err
		}
	} else {
		// Not root: the root helper debootstraps and builds the file in
		// its own cache; copy it into the store (holes stay holes).
		progress.Stage(ctx, "debootstrap", "asking the root helper to build the root file system")
		path, release, err := s.Rootfs.BuildRootfs(ctx, o)
		if err != nil {
			return nil, fmt.Errorf("image build %q: %w", o.Name, err)
		}
		err = sparseCopy(ctx, path, tmp)
		release()
		if err != nil {
			return nil, fmt.Errorf("image build %q: copy the helper's image: %w", o.Name, err)
		}
	}
	img := &model.Image{Name: o.Name, Source: fmt.Sprintf("debootstrap:%s:%s+%s", o.Suite, o.Variant, o.RecipeHash()), Kernel: o.Kernel}
	return s.publish(ctx, tmp, img, []string{"recipe:" + o.RecipeHash()}, o.Replace)
}

// Validate fills in o's defaults (mirror: storeMirror, else the host's apt
// sources) and checks every field. Build calls it; the root helper calls
// it on a request before anything else.
func (o *BuildOptions) Validate(storeMirror string) error { return o.defaults(storeMirror) }

// BuildFile makes the image file out for o (validated): the cached
// debootstrap tree (built as root), mkfs.ext4 -d, then banger's guest
// pieces with debugfs. It needs root.
func (s *Store) BuildFile(ctx context.Context, o BuildOptions, out string) error {
	tree, err := s.debootstrapTree(ctx, o)
	if err != nil {
		return err
	}
	start := time.Now()
	progress.Stage(ctx, "mkfs", fmt.Sprintf("mkfs.ext4 -d (%d MiB)", o.SizeMiB))
	if err := ext4.Build(ctx, s.Runner, ext4.BuildOptions{SourceDir: tree, Out: out, SizeBytes: o.SizeMiB << 20, Label: "rootfs"}); err != nil {
		return fmt.Errorf("image build %q: %w", o.Name, err)
	}
	progress.Stage(ctx, "guest", fmt.Sprintf("banger guest pieces (mkfs took %s)", time.Since(start).Round(time.Millisecond)))
	facts := inspectTree(tree)
	facts.Source = "debootstrap:" + o.Suite + ":" + o.Variant
	if !facts.Systemd || !facts.SSHD {
		return fmt.Errorf("image build %q: the debootstrap tree lacks systemd or sshd (recipe %s)", o.Name, o.RecipeHash())
	}
	b := &ext4.Batch{}
	if err := guestBatch(b, tree, facts); err != nil {
		return fmt.Errorf("image build %q: %w", o.Name, err)
	}
	if err := loginBatch(b, tree); err != nil {
		return fmt.Errorf("image build %q: %w", o.Name, err)
	}
	if err := ext4.Apply(ctx, s.Runner, out, b); err != nil {
		return fmt.Errorf("image build %q: %w", o.Name, err)
	}
	return nil
}

// debootstrapTree returns the cached debootstrap tree for the recipe,
// making it when missing. Trees are built in a temporary directory and
// renamed into place when complete.
func (s *Store) debootstrapTree(ctx context.Context, o BuildOptions) (string, error) {
	dir := filepath.Join(s.CacheDir, "debootstrap", o.RecipeHash())
	tree := filepath.Join(dir, "rootfs")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		progress.Stage(ctx, "debootstrap", "cached tree "+o.RecipeHash())
		return tree, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("debootstrap cache: %w", err)
	}
	work, err := os.MkdirTemp(filepath.Dir(dir), o.RecipeHash()+".tmp-")
	if err != nil {
		return "", fmt.Errorf("debootstrap cache: %w", err)
	}
	defer removeTree(work)
	pkgs := o.packages()
	progress.Stage(ctx, "debootstrap", fmt.Sprintf("%s %s from %s (%d packages)", o.Suite, o.Variant, o.Mirror, len(pkgs)))
	start := time.Now()
	log := &stageWriter{ctx: ctx, stage: "debootstrap"}
	args := []string{"--variant=minbase", "--include=" + strings.Join(pkgs, ","), o.Suite, filepath.Join(work, "rootfs"), o.Mirror}
	if _, err := s.Runner.Run(ctx, hostexec.Cmd{Name: "debootstrap", Args: args, Stdout: log}); err != nil {
		return "", fmt.Errorf("debootstrap %s from %s: %w (see the mirror and network settings)", o.Suite, o.Mirror, err)
	}
	// debootstrap leaves downloaded packages and apt lists: not needed in the image
	for _, g := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages", "var/lib/apt/lists/*_InRelease"} {
		m, _ := filepath.Glob(filepath.Join(work, "rootfs", g))
		for _, f := range m {
			_ = os.Remove(f)
		}
	}
	if err := os.WriteFile(filepath.Join(work, "complete"), []byte(time.Since(start).String()+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("debootstrap cache: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return tree, nil // another build of the same recipe finished first
	}
	_ = removeTree(dir) // an incomplete leftover
	if err := os.Rename(work, dir); err != nil {
		return "", fmt.Errorf("debootstrap cache: %w", err)
	}
	progress.Stage(ctx, "debootstrap", fmt.Sprintf("done in %s", time.Since(start).Round(time.Second)))
	return tree, nil
}

// stageWriter turns a tool's output lines into progress messages.
type stageWriter struct {
	ctx   context.Context
	stage string
	buf   []byte
}

func (w *stageWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
		if strings.HasPrefix(line, "I: ") {
			progress.Stage(w.ctx, w.stage, strings.TrimPrefix(line, "I: "))
		}
	}
	if len(w.buf) > 64<<10 {
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

// Login shell edits of the recipe (loginBatch): the original text and its
// replacement. Each runs a process in every login shell, so in every `vm
// run` command (bash -l), for nothing: `id -u` where bash knows $EUID, and
// `mesg n` without a terminal. Each process costs 60–80 ms on a TCG guest.
var (
	profileIDFrom  = `"$(id -u)"`
	profileIDTo    = `"${EUID:-$(id -u)}"`
	rootMesgFrom   = "mesg n 2> /dev/null || true"
	rootMesgTo     = "if [ -t 0 ]; then mesg n 2> /dev/null || true; fi"
	loginFileEdits = []struct{ src, dst, from, to string }{
		{"etc/profile", "/etc/profile", profileIDFrom, profileIDTo},
		{"root/.profile", GuestWorkSeed + "/.profile", rootMesgFrom, rootMesgTo},
		{"root/.profile", "/root/.profile", rootMesgFrom, rootMesgTo},
	}
)

// loginBatch adds the recipe's login shell edits to b (after guestBatch,
// whose work seed it edits): a file that does not hold the original text
// (another Debian release) is left as it is.
func loginBatch(b *ext4.Batch, tree string) error {
	for _, e := range loginFileEdits {
		p := filepath.Join(tree, e.src)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("login shell: %w", err)
		}
		if !bytes.Contains(data, []byte(e.from)) {
			continue
		}
		uid, gid := owner(fi)
		b.WriteFile(e.dst, bytes.ReplaceAll(data, []byte(e.from), []byte(e.to)), fi.Mode().Perm(), uid, gid)
	}
	return nil
}
