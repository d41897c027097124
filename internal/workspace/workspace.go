// Package workspace copies a developer's git repository into a guest and
// brings the guest's changes back as a patch.
//
// The flow is:
//
//  1. Inspect reads the host repository through git (via hostexec.Runner):
//     its root, HEAD, branch and the list of files to ship. It is cheap and
//     side-effect free, so `vm run --dry-run` can print Snapshot.Files.
//  2. Stream writes ONE tar stream holding the files and a shallow .git.
//     Prepare pipes that stream into ONE remote command (GuestScript), so a
//     copy costs a single ssh session and no per-file round trips.
//  3. Export runs one remote command that prints a binary-safe git patch of
//     everything the guest changed, which `git apply` takes on the host.
//
// # What is shipped
//
// Files: every tracked file as it is in the host's work tree (uncommitted
// edits included), plus untracked-but-not-ignored files when
// Options.IncludeUntracked is set. Ignored files are never shipped. Regular
// files keep their exact permission bits, symlinks stay symlinks (never
// followed), directories keep their mode (with u+rwx added), modification
// times are kept to the second, owners are not (files belong to the user
// that extracts them). With Options.From the files are a `git
// checkout-index` of that commit in the guest (the repository's
// .gitattributes apply, e.g. end-of-line conversion; filters whose drivers
// the guest lacks, such as LFS, leave the blob as is).
//
// Transport: a file whose host bytes are exactly its index blob (git calls
// it clean, and no filter, ident, working-tree-encoding or CR-carrying
// end-of-line normalisation applies) is not sent as bytes: the guest writes
// it from the shipped objects with `git checkout-index`, which also records
// its stat data so the guest never rehashes it. Only dirty and untracked
// files, symlinks and files under conversions travel as bytes. Since the
// objects are shipped anyway (the guest repository is complete), this
// sends each clean file once, compressed, instead of twice.
//
// Git metadata: a fresh .git holding HEAD's commit (plus Options.Depth-1
// ancestors), all trees and blobs reachable from them (a complete shallow
// repository: `git log`, `git show`, `git blame`, `git fsck` all work), the
// blobs the host's index refers to, the host index's entries (so staged and
// unstaged changes stay distinct in the guest), the host's info/exclude and
// info/attributes and the few core.* settings that change how git reads
// the work tree (autocrlf, eol, filemode, symlinks, ignorecase). Objects
// that are loose on the host are shipped as they are (no recompression);
// the others go in one pack made by `git pack-objects`, which reuses the
// host's packed data. The guest builds its index from the shipped entries,
// checks the clean files out and refreshes the index (hashing only the
// files that came as bytes). The HEAD shipped is recorded as
// refs/banger/base, and the tree exactly as prepared (uncommitted changes
// included) as PreparedRef, the default base of Export: what Export
// returns then is only what changed in the guest, and Apply puts it into
// the host's tree, dirty or not.
//
// # Where the guest's time goes
//
// Under QEMU TCG every byte the guest handles costs emulated CPU, so the
// path matters more than the format. Measured here (2 vCPUs on a 2-core
// host, 2026-12-05): 100 MB into the guest took 7–9 s over ssh and as
// long through the agent's virtio-serial port (its guest driver takes one
// 4 KiB buffer per interrupt), but 0.5–0.8 s over a plain TCP connection
// on the VM network. So the daemon sends the stream to the guest agent
// over TCP (agent.FeatureTCPStdin; ssh only for a guest without an agent).
// What is left is the guest's own work, traced per step on the three
// benchmark corpora: e2e-200m (stream 160 MB) 11.5 s = extraction 4.3 s,
// `git checkout-index` 5.6 s (inflating and writing 205 MB), index
// refresh and prepared tree 0.8 s; mixed (165 MB) 14.4 s = 6.2 + 5.5 +
// 1.6; source (35 MB for 128 MB in 11478 files) 12.2 s = 2.3 + 7.6 +
// 1.3. Single runs of the same copy vary by ±30% here. Storing the pack
// uncompressed (no inflating in the guest, but more to write) was tried:
// faster on mixed, slower on the other two. Two ways to overlap the
// guest's work were tried and dropped earlier: checking out each batch of
// objects while the next arrives (no measurable gain, more guest CPU),
// and refreshing the index while recording the prepared tree (slower on
// the e2e corpus, 3 runs of 3).
//
// # Guest requirements
//
// A POSIX shell, GNU tar (or any tar that reads PAX), coreutils (mktemp,
// mv -T, find, chmod) and git.
package workspace

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Sentinel errors callers branch on (test with errors.Is).
var (
	// ErrNotGitRepo: the path is not inside a git work tree.
	ErrNotGitRepo = errors.New("not a git repository")
	// ErrSubmodules: the repository has submodules, which are not copied.
	// The error is a *SubmoduleError naming them.
	ErrSubmodules = errors.New("repository has submodules")
	// ErrUnsupportedName: a file that would be shipped has a name banger
	// refuses (a newline in it, or a ".git" path component).
	ErrUnsupportedName = errors.New("unsupported file name")
	// ErrInvalidOptions: Options (or a guest path) are invalid.
	ErrInvalidOptions = errors.New("invalid workspace options")
	// ErrChanged: a file changed while it was being copied.
	ErrChanged = errors.New("file changed while copying")
	// ErrGuest: the guest side of a prepare or export failed; the error is a
	// *GuestError with the exit status and the guest's message.
	ErrGuest = errors.New("guest command failed")
)

// SubmoduleError names the submodules that made Inspect refuse a repository.
type SubmoduleError struct {
	Root  string
	Paths []string
}

func (e *SubmoduleError) Error() string {
	return fmt.Sprintf("%s has submodules (%s): banger does not copy submodules; "+
		"use a repository without submodules, or copy them into the VM yourself",
		e.Root, strings.Join(e.Paths, ", "))
}

// Unwrap makes errors.Is(err, ErrSubmodules) true.
func (e *SubmoduleError) Unwrap() error { return ErrSubmodules }

// GuestError is a failed guest-side command: its exit status and the tail
// of its stderr, which says what went wrong.
type GuestError struct {
	Op     string // "prepare" or "export"
	Status int
	Stderr string
}

func (e *GuestError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 2000 {
		msg = "..." + msg[len(msg)-2000:]
	}
	if msg == "" {
		return fmt.Sprintf("workspace %s in the guest: exit status %d", e.Op, e.Status)
	}
	return fmt.Sprintf("workspace %s in the guest: exit status %d: %s", e.Op, e.Status, msg)
}

// Unwrap makes errors.Is(err, ErrGuest) true.
func (e *GuestError) Unwrap() error { return ErrGuest }

// PreparedRef names, in the guest's repository, the tree of the workspace
// as Prepare left it: the default base of Export.
const PreparedRef = "refs/banger/prepared"

// DefaultGuestPath is where `vm run` puts the workspace in the guest.
const DefaultGuestPath = "/root/repo"

// Options say what to ship and how the guest copy behaves.
type Options struct {
	// IncludeUntracked ships untracked files that are not ignored. Without
	// it they are listed in Snapshot.Skipped with SkipUntracked so the CLI
	// can say how many were left out. Not allowed together with From.
	IncludeUntracked bool

	// From, when set, ships the tree of this commit-ish (a branch, tag,
	// commit id, "HEAD~2", ...) instead of the work tree: a clean checkout
	// of that commit, no uncommitted changes, no untracked files. The
	// guest's HEAD is that commit.
	From string

	// Branch names the branch checked out in the guest; it is created there
	// pointing at the shipped commit. It never changes which content is
	// shipped (use From for that). Default: the host's current branch in
	// work-tree mode; with From, From itself when it names a local branch;
	// otherwise the guest's HEAD is detached.
	Branch string

	// Depth is how many commits of history are shipped (like `git clone
	// --depth`, counted in `git rev-list` order from HEAD). 0 means 1.
	Depth int

	// ReadOnly makes the guest's work tree read-only: files arrive without
	// write bits and the directories get chmod a-w, except .git, so git
	// itself keeps working (status, diff, export). It guards against
	// accidental writes; root in the guest can still write (permission
	// bits do not bind root).
	ReadOnly bool

	// Replace lets Prepare replace a non-empty guest directory (for
	// re-syncing a workspace). Without it Prepare refuses to overwrite a
	// directory that has content. The swap is atomic: the new copy is
	// extracted next to the old one and renamed over it only when complete.
	Replace bool
}

// Kind is the type of a shipped file.
type Kind uint8

// File kinds.
const (
	Regular Kind = iota
	Symlink
)

func (k Kind) String() string {
	if k == Symlink {
		return "symlink"
	}
	return "file"
}

// File is one file that Stream ships.
type File struct {
	Path      string      // slash-separated, relative to the repository root
	Kind      Kind        // Regular or Symlink
	Mode      fs.FileMode // permission bits (incl. setuid/setgid/sticky) of a regular file
	Size      int64       // bytes (for a symlink: length of the target)
	Target    string      // symlink target, as stored (never resolved)
	Untracked bool        // shipped because of IncludeUntracked

	// checkout: the guest writes this file from the shipped blob (git
	// checkout-index) instead of receiving its bytes.
	checkout bool
	// cleanLink: a symlink git calls clean. It travels as bytes in every
	// stream; a native one checks its target against the blob and lets
	// the host tell the prepared tree (see preparedTree).
	cleanLink bool
}

// SkipReason says why a path was not shipped.
type SkipReason string

// Skip reasons.
const (
	SkipUntracked     SkipReason = "untracked"             // untracked file, IncludeUntracked not set
	SkipDeleted       SkipReason = "deleted in work tree"  // tracked, missing from the work tree (the guest shows it deleted)
	SkipSpecial       SkipReason = "not a file or symlink" // fifo, socket, device, or a directory where a file is tracked
	SkipBeyondSymlink SkipReason = "beyond a symlink"      // a leading path component is a symlink
	SkipNestedRepo    SkipReason = "nested repository"     // an untracked directory holding its own .git
	SkipSparse        SkipReason = "outside sparse checkout"
)

// Skipped is a path Inspect found but will not ship.
type Skipped struct {
	Path   string
	Reason SkipReason
}

// indexEntry is one entry of the host index (or of From's tree), in the
// form `git update-index --index-info` reads: "mode oid stage\tpath".
type indexEntry struct {
	mode         string
	oid          string
	stage        string
	path         string
	skipWorktree bool
}

// Snapshot is the result of Inspect: what would be shipped. It is
// immutable; Stream may be called on it more than once (each call reads
// the work tree again).
type Snapshot struct {
	// Root is the absolute path of the repository's top level on the host
	// (Inspect accepts any path inside the work tree).
	Root string
	// Head is the commit the guest's HEAD will be: the host HEAD, or From
	// resolved. "" for a repository without commits.
	Head string
	// HostBranch is the host's current branch ("" when detached).
	HostBranch string
	// Branch is the branch the guest will have checked out ("" = detached).
	Branch string
	// ObjectFormat is "sha1" or "sha256".
	ObjectFormat string
	// Options as given to Inspect (Depth normalised).
	Options Options

	files       []File
	skipped     []Skipped
	index       []indexEntry
	config      []configItem
	gitDirs     gitPaths
	inspectedAt time.Time
	runner      hostexec.Runner
}

type configItem struct{ key, value string }

type gitPaths struct {
	objects    string // absolute
	exclude    string // absolute
	shallow    string // absolute
	attributes string // absolute: info/attributes
}

// Files returns the files Stream will ship, in shipping order. The CLI's
// `vm run --dry-run` prints these.
func (s *Snapshot) Files() []File { return append([]File(nil), s.files...) }

// Skipped returns the paths that will not be shipped and why.
func (s *Snapshot) Skipped() []Skipped { return append([]Skipped(nil), s.skipped...) }

// SkippedCount returns how many paths were skipped for reason r (e.g. the
// untracked files left out without IncludeUntracked).
func (s *Snapshot) SkippedCount(r SkipReason) int {
	n := 0
	for _, k := range s.skipped {
		if k.Reason == r {
			n++
		}
	}
	return n
}

// Bytes returns the total content size of the shipped files.
func (s *Snapshot) Bytes() int64 {
	var n int64
	for _, f := range s.files {
		if f.Kind == Regular {
			n += f.Size
		}
	}
	return n
}

// Stats describes one Stream or Prepare.
type Stats struct {
	Files       int            // regular files in the workspace
	Symlinks    int            // symlinks in the workspace
	Dirs        int            // directories in the workspace
	FileBytes   int64          // content bytes of the workspace's files
	RawFiles    int            // files (and symlinks) sent as bytes; the others are checked out in the guest from the shipped objects
	RawBytes    int64          // content bytes of the raw files
	GitObjects  int            // git objects shipped (loose + packed)
	GitBytes    int64          // bytes of .git content (objects, refs, index info, checkout lists)
	StreamBytes int64          // total bytes of the tar stream
	Elapsed     time.Duration  // wall time of Stream/Prepare
	Native      bool           // Prepare: installed by an Installer (every file sent as bytes), not GuestScript
	Guest       *InstallResult // Prepare, native: what the Installer reported
}
