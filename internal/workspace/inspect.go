package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
)

// gitlinkMode is the index/tree mode of a submodule entry.
const gitlinkMode = "160000"

// Inspect reads the git repository that contains path (any directory inside
// its work tree; the whole repository is the workspace) and decides what
// Stream will ship. Every git call goes through r as `git -C <root> ...`.
//
// Errors: ErrNotGitRepo when path is not inside a work tree; a
// *SubmoduleError (errors.Is ErrSubmodules) naming the submodules (gitlinks
// in the index or tree, or entries in .gitmodules); ErrUnsupportedName for a
// file to ship whose name has a newline; ErrInvalidOptions for bad Options
// (an unknown From, an invalid Branch, From with IncludeUntracked).
//
// Tracked files missing from the work tree are skipped (SkipDeleted), not
// errors: the guest's `git status` shows them deleted, as the host's does.
func Inspect(ctx context.Context, r hostexec.Runner, path string, o Options) (*Snapshot, error) {
	if err := checkOptions(&o); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("workspace path %q: %w", path, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("workspace %s does not exist (pass the path of a git repository): %w", abs, err)
		}
		return nil, fmt.Errorf("workspace %s: %w", abs, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("workspace %s is not a directory (pass the path of a git repository): %w", abs, ErrNotGitRepo)
	}
	g := gitCmd{r: r}
	top, err := g.out(ctx, abs, "rev-parse", "--show-toplevel")
	if err != nil {
		var ee *hostexec.ExitError
		if errors.As(err, &ee) {
			switch {
			case strings.Contains(ee.Stderr, "not a git repository"):
				return nil, fmt.Errorf("%s is %w (run git init or pass a repository path)", abs, ErrNotGitRepo)
			case strings.Contains(ee.Stderr, "work tree"):
				return nil, fmt.Errorf("%s is inside a git directory, not a work tree: %w (pass the repository's work tree)", abs, ErrNotGitRepo)
			}
		}
		return nil, fmt.Errorf("inspect %s: %w", abs, err)
	}
	s := &Snapshot{Root: strings.TrimSuffix(top, "\n"), Options: o, runner: r, inspectedAt: time.Now()}
	if s.Root == "" {
		return nil, fmt.Errorf("%s is %w (run git init or pass a repository path)", abs, ErrNotGitRepo)
	}

	info, err := g.out(ctx, s.Root, "rev-parse", "--show-object-format", "--git-path", "objects", "--git-path", "info/exclude", "--git-path", "shallow", "--git-path", "info/attributes")
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", s.Root, err)
	}
	lines := strings.Split(strings.TrimSuffix(info, "\n"), "\n")
	if len(lines) != 5 {
		return nil, fmt.Errorf("inspect %s: unexpected rev-parse output %q", s.Root, info)
	}
	s.ObjectFormat = lines[0]
	if s.ObjectFormat != "sha1" && s.ObjectFormat != "sha256" {
		return nil, fmt.Errorf("inspect %s: unsupported object format %q", s.Root, s.ObjectFormat)
	}
	s.gitDirs = gitPaths{objects: s.abs(lines[1]), exclude: s.abs(lines[2]), shallow: s.abs(lines[3]), attributes: s.abs(lines[4])}

	if s.Head, err = Head(ctx, r, s.Root); err != nil {
		return nil, err
	}
	ref, err := g.maybe(ctx, s.Root, "symbolic-ref", "-q", "HEAD")
	if err != nil {
		return nil, fmt.Errorf("read branch of %s: %w", s.Root, err)
	}
	s.HostBranch = strings.TrimPrefix(strings.TrimSpace(ref), "refs/heads/")

	if o.Branch != "" {
		if _, err := g.out(ctx, "", "check-ref-format", "refs/heads/"+o.Branch); err != nil {
			return nil, fmt.Errorf("branch name %q is not valid in git: %w", o.Branch, ErrInvalidOptions)
		}
	}
	if err := s.readConfig(ctx, g); err != nil {
		return nil, err
	}
	if o.From != "" {
		err = s.inspectCommit(ctx, g)
	} else {
		s.Branch = s.HostBranch
		err = s.inspectWorkTree(ctx, g)
	}
	if err != nil {
		return nil, err
	}
	if o.Branch != "" {
		s.Branch = o.Branch
	}
	return s, nil
}

// Head returns the commit HEAD points to in the repository at root, or ""
// when it has no commit yet. `vm exec` compares it with the HEAD recorded
// at prepare to warn that the host moved on.
func Head(ctx context.Context, r hostexec.Runner, root string) (string, error) {
	out, err := gitCmd{r: r}.maybe(ctx, root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
	if err != nil {
		return "", fmt.Errorf("read HEAD of %s: %w", root, err)
	}
	return strings.TrimSpace(out), nil
}

func checkOptions(o *Options) error {
	if o.Depth < 0 {
		return fmt.Errorf("depth %d: must be 1 or more: %w", o.Depth, ErrInvalidOptions)
	}
	if o.Depth == 0 {
		o.Depth = 1
	}
	if o.From != "" && o.IncludeUntracked {
		return fmt.Errorf("--from ships a commit, which has no untracked files; drop --include-untracked: %w", ErrInvalidOptions)
	}
	if o.From != "" && (strings.HasPrefix(o.From, "-") || strings.ContainsAny(o.From, "\x00\n\r\t ")) {
		return fmt.Errorf("--from %q is not a commit-ish: %w", o.From, ErrInvalidOptions)
	}
	if o.Branch != "" && (strings.HasPrefix(o.Branch, "-") || strings.ContainsAny(o.Branch, "\x00\n")) {
		return fmt.Errorf("branch name %q is not valid in git: %w", o.Branch, ErrInvalidOptions)
	}
	return nil
}

func (s *Snapshot) abs(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(s.Root, p)
}

// inspectWorkTree lists the index and the work tree.
func (s *Snapshot) inspectWorkTree(ctx context.Context, g gitCmd) error {
	// Status first: a `git add` racing with us then at worst makes a file
	// look dirty (shipped as bytes), never clean with a stale blob.
	dirty, err := g.dirty(ctx, s.Root)
	if err != nil {
		return fmt.Errorf("read status of %s: %w", s.Root, err)
	}
	out, err := g.out(ctx, s.Root, "ls-files", "-z", "-s", "-t")
	if err != nil {
		return fmt.Errorf("list tracked files of %s: %w", s.Root, err)
	}
	entries, err := parseLsFiles(out)
	if err != nil {
		return fmt.Errorf("list tracked files of %s: %w", s.Root, err)
	}
	s.index = entries
	var gitlinks []string
	hasGitmodules := false
	lst := newLstater(s.Root)
	var candidates []int // s.files indexes that may be checked out in the guest
	for i, e := range entries {
		if e.mode == gitlinkMode {
			gitlinks = append(gitlinks, e.path)
			continue
		}
		if i > 0 && e.path == entries[i-1].path { // unmerged: one file, several stages
			continue
		}
		if e.path == ".gitmodules" {
			hasGitmodules = true
		}
		f, skip, err := lst.file(e.path)
		if err != nil {
			return err
		}
		if skip != "" {
			if skip == SkipDeleted && e.skipWorktree {
				skip = SkipSparse
			}
			s.skipped = append(s.skipped, Skipped{Path: e.path, Reason: skip})
			continue
		}
		unmerged := e.stage != "0" || (i+1 < len(entries) && entries[i+1].path == e.path)
		if f.Kind == Regular && !unmerged && !e.skipWorktree && !dirty[e.path] && checkoutMode(e.mode, f.Mode) {
			candidates = append(candidates, len(s.files))
		}
		f.cleanLink = f.Kind == Symlink && !unmerged && !e.skipWorktree && !dirty[e.path] && e.mode == "120000"
		s.files = append(s.files, f)
	}
	if hasGitmodules {
		declared, err := g.configPaths(ctx, s.Root, "-f", filepath.Join(s.Root, ".gitmodules"))
		if err != nil {
			return fmt.Errorf("read .gitmodules of %s: %w", s.Root, err)
		}
		gitlinks = append(gitlinks, declared...)
	}
	if err := s.refuseSubmodules(gitlinks); err != nil {
		return err
	}
	if err := s.markCheckout(ctx, g, candidates); err != nil {
		return err
	}

	out, err = g.out(ctx, s.Root, "ls-files", "-z", "-o", "--exclude-standard")
	if err != nil {
		return fmt.Errorf("list untracked files of %s: %w", s.Root, err)
	}
	for _, p := range splitZ(out) {
		switch {
		case strings.HasSuffix(p, "/"):
			s.skipped = append(s.skipped, Skipped{Path: p, Reason: SkipNestedRepo})
		case !s.Options.IncludeUntracked:
			s.skipped = append(s.skipped, Skipped{Path: p, Reason: SkipUntracked})
		default:
			f, skip, err := lst.file(p)
			if err != nil {
				return err
			}
			if skip != "" {
				s.skipped = append(s.skipped, Skipped{Path: p, Reason: skip})
				continue
			}
			f.Untracked = true
			s.files = append(s.files, f)
		}
	}
	sort.Slice(s.files, func(i, j int) bool { return s.files[i].Path < s.files[j].Path })
	return nil
}

// inspectCommit lists the tree of Options.From.
func (s *Snapshot) inspectCommit(ctx context.Context, g gitCmd) error {
	from := s.Options.From
	commit, err := g.maybe(ctx, s.Root, "rev-parse", "--verify", "-q", from+"^{commit}")
	if err != nil {
		return fmt.Errorf("resolve %q in %s: %w", from, s.Root, err)
	}
	commit = strings.TrimSpace(commit)
	if commit == "" {
		return fmt.Errorf("--from %q is not a commit in %s (check the name, or fetch it first): %w", from, s.Root, ErrInvalidOptions)
	}
	s.Head = commit
	full, err := g.maybe(ctx, s.Root, "rev-parse", "--symbolic-full-name", from)
	if err != nil {
		return fmt.Errorf("resolve %q in %s: %w", from, s.Root, err)
	}
	if b, ok := strings.CutPrefix(strings.TrimSpace(full), "refs/heads/"); ok {
		s.Branch = b
	}
	out, err := g.out(ctx, s.Root, "ls-tree", "-r", "-z", "-l", "--full-tree", commit)
	if err != nil {
		return fmt.Errorf("list files of %s: %w", commit, err)
	}
	var gitlinks []string
	hasGitmodules := false
	for _, rec := range splitZ(out) {
		meta, p, ok := strings.Cut(rec, "\t")
		fields := strings.Fields(meta)
		if !ok || len(fields) != 4 {
			return fmt.Errorf("list files of %s: unexpected ls-tree record %q", commit, rec)
		}
		mode, typ, oid, size := fields[0], fields[1], fields[2], fields[3]
		if !isHex(oid) {
			return fmt.Errorf("list files of %s: unexpected ls-tree record %q", commit, rec)
		}
		if mode == gitlinkMode || typ == "commit" {
			gitlinks = append(gitlinks, p)
			continue
		}
		if p == ".gitmodules" {
			hasGitmodules = true
		}
		if err := checkName(p); err != nil {
			return err
		}
		n, err := strconv.ParseInt(size, 10, 64)
		if err != nil || typ != "blob" {
			return fmt.Errorf("list files of %s: unexpected ls-tree record %q", commit, rec)
		}
		f := File{Path: p, Size: n, checkout: true}
		switch mode {
		case "120000":
			f.Kind = Symlink
		case "100755":
			f.Mode = 0o755
		default:
			f.Mode = 0o644
		}
		s.files = append(s.files, f)
		s.index = append(s.index, indexEntry{mode: mode, oid: oid, stage: "0", path: p})
	}
	if hasGitmodules {
		declared, err := g.configPaths(ctx, s.Root, "--blob", commit+":.gitmodules")
		if err != nil {
			return fmt.Errorf("read .gitmodules of %s: %w", commit, err)
		}
		gitlinks = append(gitlinks, declared...)
	}
	return s.refuseSubmodules(gitlinks)
}

func (s *Snapshot) refuseSubmodules(paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	slices.Sort(paths)
	return &SubmoduleError{Root: s.Root, Paths: slices.Compact(paths)}
}

// readConfig reads the core.* settings that change how git reads a work
// tree, so the guest's `git status` agrees with the host's.
func (s *Snapshot) readConfig(ctx context.Context, g gitCmd) error {
	out, err := g.maybe(ctx, s.Root, "config", "-z", "--get-regexp", `^core\.(autocrlf|eol|filemode|symlinks|ignorecase)$`)
	if err != nil {
		return fmt.Errorf("read git config of %s: %w", s.Root, err)
	}
	seen := map[string]int{}
	for _, rec := range splitZ(out) {
		k, v, _ := strings.Cut(rec, "\n")
		if !configValueOK(v) {
			continue
		}
		if i, ok := seen[k]; ok { // last one wins, as in git
			s.config[i].value = v
			continue
		}
		seen[k] = len(s.config)
		s.config = append(s.config, configItem{key: k, value: v})
	}
	return nil
}

func configValueOK(v string) bool {
	if v == "" || len(v) > 16 {
		return false
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// checkoutMode reports whether `git checkout-index` under some umask
// writes a file of index mode indexMode with exactly the permission bits
// perm: 0666&^umask for 100644, 0777&^umask for 100755; never setuid,
// setgid or sticky bits.
func checkoutMode(indexMode string, perm fs.FileMode) bool {
	switch indexMode {
	case "100644":
		return perm&^0o666 == 0
	case "100755":
		return perm&^0o777 == 0
	}
	return false
}

// checkoutUmask is the umask under which checkout-index writes perm.
func checkoutUmask(perm fs.FileMode) fs.FileMode { return 0o777 &^ perm }

// conversionAttrs are the attributes under which a work-tree file may
// differ from its blob although git calls it clean.
var conversionAttrs = []string{"filter", "ident", "working-tree-encoding", "text", "eol", "crlf"}

// markCheckout decides which clean files the guest writes from the
// shipped blobs (git checkout-index) instead of receiving their bytes: only
// those whose work-tree bytes are exactly the blob's, i.e. no clean/smudge
// filter, no ident, no working-tree-encoding, and no CR byte in a file
// subject to end-of-line normalisation.
func (s *Snapshot) markCheckout(ctx context.Context, g gitCmd, candidates []int) error {
	if len(candidates) == 0 {
		return nil
	}
	var in strings.Builder
	for _, i := range candidates {
		in.WriteString(s.files[i].Path)
		in.WriteByte(0)
	}
	res, err := g.r.Run(ctx, hostexec.Cmd{Name: "git", Args: append([]string{"-C", s.Root, "check-attr", "-z", "--stdin"}, conversionAttrs...),
		Stdin: strings.NewReader(in.String())})
	if err != nil {
		return fmt.Errorf("read attributes of %s: %w", s.Root, err)
	}
	attrs, err := parseCheckAttr(string(res.Stdout))
	if err != nil {
		return fmt.Errorf("read attributes of %s: %w", s.Root, err)
	}
	eolByConfig := false
	for _, c := range s.config {
		if c.key == "core.autocrlf" && (strings.EqualFold(c.value, "true") || strings.EqualFold(c.value, "input")) {
			eolByConfig = true
		}
	}
	for _, i := range candidates {
		f := &s.files[i]
		a := attrs[f.Path]
		specified := func(name string) bool { v := a[name]; return v != "" && v != "unspecified" && v != "unset" }
		if specified("filter") || specified("ident") || specified("working-tree-encoding") {
			continue
		}
		eol := a["text"] != "unset" && a["crlf"] != "unset" && (specified("text") || specified("eol") || specified("crlf") || eolByConfig)
		if eol {
			hasCR, err := containsCR(filepath.Join(s.Root, filepath.FromSlash(f.Path)))
			if err != nil || hasCR {
				continue // ship the bytes; Stream reports a read error
			}
		}
		f.checkout = true
	}
	return nil
}

// parseCheckAttr parses `git check-attr -z` output: path, attribute, value
// triples, each NUL-terminated.
func parseCheckAttr(out string) (map[string]map[string]string, error) {
	recs := splitZ(out)
	if len(recs)%3 != 0 {
		return nil, fmt.Errorf("unexpected check-attr output (%d fields)", len(recs))
	}
	m := map[string]map[string]string{}
	for i := 0; i < len(recs); i += 3 {
		p, a, v := recs[i], recs[i+1], recs[i+2]
		if m[p] == nil {
			m[p] = map[string]string{}
		}
		m[p][a] = v
	}
	return m, nil
}

func containsCR(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if bytes.IndexByte(buf[:n], '\r') >= 0 {
			return true, nil
		}
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// parseLsFiles parses `git ls-files -z -s -t` output:
// "T MODE OID STAGE\tPATH\0".
func parseLsFiles(out string) ([]indexEntry, error) {
	var entries []indexEntry
	for _, rec := range splitZ(out) {
		meta, p, ok := strings.Cut(rec, "\t")
		fields := strings.Fields(meta)
		if !ok || p == "" || len(fields) != 4 {
			return nil, fmt.Errorf("unexpected ls-files record %q", rec)
		}
		e := indexEntry{mode: fields[1], oid: fields[2], stage: fields[3], path: p, skipWorktree: fields[0] == "S"}
		if !isOctal(e.mode) || !isHex(e.oid) || len(e.stage) != 1 || e.stage[0] < '0' || e.stage[0] > '3' {
			return nil, fmt.Errorf("unexpected ls-files record %q", rec)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

func isOctal(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '7' {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// splitZ splits NUL-terminated records.
func splitZ(out string) []string {
	out = strings.TrimSuffix(out, "\x00")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\x00")
}

// lstater classifies work-tree paths without following symlinks.
type lstater struct {
	root string
	// dirs caches, per leading directory, whether it is a real directory
	// (false: a symlink, a file, or missing).
	dirs map[string]bool
}

func newLstater(root string) *lstater { return &lstater{root: root, dirs: map[string]bool{}} }

func (l *lstater) realDir(d string) bool {
	if ok, seen := l.dirs[d]; seen {
		return ok
	}
	fi, err := os.Lstat(filepath.Join(l.root, filepath.FromSlash(d)))
	ok := err == nil && fi.IsDir()
	l.dirs[d] = ok
	return ok
}

// file returns the File for p, or a skip reason, or an error for a name
// that must not be shipped or a file that cannot be read.
func (l *lstater) file(p string) (File, SkipReason, error) {
	if err := checkName(p); err != nil {
		return File{}, "", err
	}
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && !l.realDir(p[:i]) {
			if fi, err := os.Lstat(filepath.Join(l.root, filepath.FromSlash(p[:i]))); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
				return File{}, SkipBeyondSymlink, nil
			}
			return File{}, SkipDeleted, nil
		}
	}
	full := filepath.Join(l.root, filepath.FromSlash(p))
	fi, err := os.Lstat(full)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return File{}, SkipDeleted, nil
		}
		return File{}, "", fmt.Errorf("read %s: %w", full, err)
	}
	switch {
	case fi.Mode().IsRegular():
		return File{Path: p, Kind: Regular, Mode: permBits(fi.Mode()), Size: fi.Size()}, "", nil
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(full)
		if err != nil {
			return File{}, "", fmt.Errorf("read symlink %s: %w", full, err)
		}
		return File{Path: p, Kind: Symlink, Size: int64(len(target)), Target: target}, "", nil
	default:
		return File{}, SkipSpecial, nil
	}
}

// permBits converts Go's mode to the Unix permission bits incl. setuid,
// setgid and sticky.
func permBits(m fs.FileMode) fs.FileMode {
	p := m.Perm()
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// gitCmd runs git through the runner.
type gitCmd struct{ r hostexec.Runner }

// cmd is `git [-C dir] args...` with untranslated messages (Inspect
// recognises some of them).
func (g gitCmd) cmd(dir string, args ...string) hostexec.Cmd {
	if dir != "" {
		args = append([]string{"-C", dir}, args...)
	}
	return hostexec.Cmd{Name: "git", Args: args, Env: []string{"LC_ALL=C", "LANGUAGE="}}
}

// out runs git and returns its stdout.
func (g gitCmd) out(ctx context.Context, dir string, args ...string) (string, error) {
	res, err := g.r.Run(ctx, g.cmd(dir, args...))
	if err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			return "", fmt.Errorf("git is not installed on the host (install git): %w", err)
		}
		return "", err
	}
	return string(res.Stdout), nil
}

// maybe is out, but exit status 1 (git's "no such thing") yields "".
func (g gitCmd) maybe(ctx context.Context, dir string, args ...string) (string, error) {
	out, err := g.out(ctx, dir, args...)
	var ee *hostexec.ExitError
	if errors.As(err, &ee) && ee.ExitCode == 1 {
		return "", nil
	}
	return out, err
}

// dirty returns the tracked paths whose work-tree state differs from the
// index (or that are unmerged), as `git status` sees them. It does not
// write the host's index (GIT_OPTIONAL_LOCKS=0).
func (g gitCmd) dirty(ctx context.Context, dir string) (map[string]bool, error) {
	c := g.cmd(dir, "status", "--porcelain=v1", "-z", "--untracked-files=no", "--no-renames", "--ignore-submodules=none")
	c.Env = append(c.Env, "GIT_OPTIONAL_LOCKS=0")
	res, err := g.r.Run(ctx, c)
	if err != nil {
		return nil, err
	}
	return parseStatus(string(res.Stdout))
}

// parseStatus parses `git status --porcelain=v1 -z --no-renames` output
// ("XY path\0") into the set of paths whose work tree differs from the
// index or that are unmerged.
func parseStatus(out string) (map[string]bool, error) {
	dirty := map[string]bool{}
	for _, rec := range splitZ(out) {
		if len(rec) < 4 || rec[2] != ' ' {
			return nil, fmt.Errorf("unexpected status record %q", rec)
		}
		x, y := rec[0], rec[1]
		if y != ' ' || x == 'U' || (x == 'A' && y == 'A') || (x == 'D' && y == 'D') {
			dirty[rec[3:]] = true
		}
	}
	return dirty, nil
}

// configPaths returns the submodule paths a .gitmodules declares.
func (g gitCmd) configPaths(ctx context.Context, dir string, source ...string) ([]string, error) {
	args := append([]string{"config", "-z"}, source...)
	args = append(args, "--get-regexp", `^submodule\..*\.path$`)
	out, err := g.maybe(ctx, dir, args...)
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, rec := range splitZ(out) {
		_, v, _ := strings.Cut(rec, "\n")
		if v == "" {
			v = rec
		}
		paths = append(paths, v)
	}
	return paths, nil
}

// checkName refuses names banger will not ship: a newline breaks the
// line-based tools users run on file lists, and a ".git" component would
// clobber the shipped repository. Git itself never tracks either of those
// except for the newline.
func checkName(p string) error {
	if err := validPath(p); err != nil {
		return fmt.Errorf("%w: %q: %v (rename the file, or leave it untracked and omit --include-untracked)", ErrUnsupportedName, p, err)
	}
	return nil
}

var errNameBytes = errors.New("contains a newline or NUL")

// validPath is the path rule for every tar entry name of a workspace file:
// relative, slash-separated, clean (no "", "." or ".." components), no
// ".git" component, no NUL, no newline.
func validPath(p string) error {
	if p == "" {
		return errors.New("empty name")
	}
	if strings.ContainsAny(p, "\x00\n") {
		return errNameBytes
	}
	if p[0] == '/' {
		return errors.New("absolute path")
	}
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "", ".", "..":
			return fmt.Errorf("path component %q", c)
		case ".git":
			return errors.New("a .git path component")
		}
	}
	return nil
}
