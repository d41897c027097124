package workspace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Remote runs one shell command in the guest. *guest.Client implements it.
//
// Contract: Run runs cmd with the guest user's login shell (`sh -c`
// semantics, as ssh does), feeds it stdin until stdin returns EOF or an
// error (then closes the command's stdin; a nil stdin is empty), copies its
// stdout and stderr to the writers (nil = discard), and returns the
// command's exit status once the command has exited and its output is
// copied — without waiting for stdin to be exhausted (it stops reading
// stdin then). A command killed by a signal returns a non-zero status. err
// is non-nil only when the command could not be run or the transport
// failed; Run must return promptly when ctx ends.
type Remote interface {
	Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error)
}

// Installer is a Remote that installs a workspace itself: the guest agent,
// which does in its own process what GuestScript does with about nine
// (see Install).
//
// Contract: Install does what Install(ctx, nil, req, stdin) does in the
// guest, reading the stream from stdin (and stopping reading it once it
// fails); it returns Install's exit status (0 on success, an
// InstallError's Status otherwise) with the error's message written to
// stderr, and on success the InstallResult as JSON to stdout. err is
// non-nil only when the transport failed. Prepare gives it only the
// streams of snapshots it can take (nativeOK).
type Installer interface {
	Remote
	Install(ctx context.Context, req InstallRequest, stdin io.Reader, stdout, stderr io.Writer) (int, error)
}

// stopGrace is how long Prepare lets the guest notice a failed stream
// (stdin closed early) before it cancels the remote command.
const stopGrace = 10 * time.Second

// CheckGuestPath validates a guest workspace path: absolute, clean, not
// "/", no NUL or newline.
func CheckGuestPath(p string) error {
	switch {
	case p == "" || p[0] != '/':
		return fmt.Errorf("guest path %q must be absolute: %w", p, ErrInvalidOptions)
	case strings.ContainsAny(p, "\x00\n"):
		return fmt.Errorf("guest path %q contains a newline or NUL: %w", p, ErrInvalidOptions)
	case path.Clean(p) != p:
		return fmt.Errorf("guest path %q is not clean (want %q): %w", p, path.Clean(p), ErrInvalidOptions)
	case p == "/":
		return fmt.Errorf("guest path %q: pick a directory such as %s: %w", p, DefaultGuestPath, ErrInvalidOptions)
	}
	return nil
}

// GuestScript returns the shell command that, run in the guest with the
// tar stream from Stream on its stdin, installs the workspace at guestPath:
//
//   - checks git and tar are installed, and that guestPath is absent, an
//     empty directory, or (with o.Replace) anything;
//   - extracts the stream into a temporary sibling directory (keeping
//     permission bits, not owners), refuses it unless the completion
//     marker arrived (so a truncated stream changes nothing);
//   - builds the index from the shipped entries (`git update-index
//     --index-info`) and restores skip-worktree bits;
//   - writes the clean files from the shipped objects with `git
//     checkout-index -u` (one run per umask, so each file gets its host
//     permission bits; -u records their stat data, so git never rehashes
//     them). In work-tree mode a temporary info/attributes turns off every
//     conversion, so each file gets its blob's exact bytes (Inspect only
//     lists files whose host bytes are exactly that); with From the
//     checkout applies the repository's attributes like `git checkout`;
//   - refreshes the index (`git update-index --refresh`: hashes only the
//     files that came as bytes) and deletes the shipping files; when
//     nothing came as bytes and the index is HEAD's, the host ships
//     PreparedRef (HEAD's tree) and the guest skips the refresh and the
//     recording below;
//   - spends as few processes as it can: under emulation each one costs
//     the guest 50–100 ms (measured on a restored guest here, `sh -c
//     true` included), so the temporary directory is made 0755 at once,
//     the temporary attributes arrive in place, and the prepared-tree ref
//     is written by the shell;
//   - records the tree exactly as prepared — tracked files with the host's
//     uncommitted changes, and the untracked files that were shipped — as
//     PreparedRef (a ref to a tree, written through a copy of the index, so
//     only the files that came as bytes are hashed), the default base of
//     Export; it lives in the guest's repository, so it survives VM
//     stop/start and daemon restarts. The recording copies the refreshed
//     index (running both at once on a copy taken before the refresh was
//     measured slower on the e2e bench corpus, 3 runs of 3), and
//     stores the objects it writes uncompressed (core.looseCompression=0:
//     deflating an incompressible dirty file costs the guest more CPU than
//     hashing it);
//   - with o.ReadOnly, `chmod a-w` on the directories (files arrive
//     without write bits), except .git;
//   - renames the result to guestPath (replacing the old tree with
//     o.Replace).
//
// Exit statuses: 0 ok; 2 guestPath in the way; 3 truncated stream;
// 127 git or tar missing; others from the failing tool.
func GuestScript(guestPath string, o Options) string {
	var b strings.Builder
	b.WriteString("set -eu\numask 022\n")
	fmt.Fprintf(&b, "dest=%s\n", hostexec.Quote(guestPath))
	b.WriteString(`for t in git tar mktemp find; do
  command -v "$t" >/dev/null 2>&1 || { echo "banger: $t is not installed in the guest; install it in the image (the default image has it)" >&2; exit 127; }
done
if [ -e "$dest" ] || [ -L "$dest" ]; then
  if [ ! -d "$dest" ] || [ -L "$dest" ]; then echo "banger: $dest exists and is not a directory; remove it or pick another guest path" >&2; exit 2; fi
`)
	if !o.Replace {
		b.WriteString(`  if [ -n "$(ls -A -- "$dest")" ]; then echo "banger: $dest is not empty; re-sync with replace, or pick another guest path" >&2; exit 2; fi
`)
	}
	b.WriteString(`fi
parent=${dest%/*}
[ -n "$parent" ] || parent=/
[ -d "$parent" ] || mkdir -p -- "$parent"
tmp=$dest.banger-$$
mkdir -m 0755 -- "$tmp" 2>/dev/null || { tmp=$(mktemp -d -- "$dest.banger-XXXXXX") && chmod 0755 -- "$tmp"; }
trap 'chmod -R u+w -- "$tmp" 2>/dev/null; rm -rf -- "$tmp"' EXIT
# A tar that is a file of its own (GNU tar, as in the default image) reads
# 128 KiB records, not 10 KiB ones: a tenth of the reads from the pipe, 11%
# off a 205 MB copy here (4 of 4 alternating runs). A symlinked one
# (busybox) may not know -b/-B and reads its default records.
tb=
for d in /usr/local/bin /usr/bin /bin; do
  if [ -x "$d/tar" ]; then [ -L "$d/tar" ] || tb="-b 256 -B"; break; fi
done
if ! tar -x $tb -p -o -f - -C "$tmp"; then echo "banger: extracting the workspace failed (stream cut short, or guest disk full?); nothing was changed in $dest" >&2; exit 3; fi
if [ ! -f "$tmp/` + completeMarker + `" ]; then echo "banger: the workspace stream ended early; nothing was changed in $dest" >&2; exit 3; fi
cd -- "$tmp"
git update-index -z --index-info < ` + indexInfoFile + `
if [ -f ` + skipWorktreeFile + ` ]; then git update-index -z --skip-worktree --stdin < ` + skipWorktreeFile + `; fi
for list in ` + checkoutPrefix + `[0-7][0-7][0-7][0-7]; do
  [ -f "$list" ] || continue
  (umask "${list##*-}" && git -c checkout.workers=0 checkout-index -u -f -z --stdin < "$list")
done
if [ -f ` + attributesFile + ` ]; then mv ` + attributesFile + ` .git/info/attributes; elif [ -f ` + checkoutAttrs + ` ]; then rm -f ` + checkoutAttrs + `; fi
if [ ! -f .git/` + PreparedRef + ` ]; then
  git update-index -q --unmerged --refresh >/dev/null 2>&1 || true
  pidx=.git/banger/prepared-index
  cp .git/index "$pidx"
  if GIT_INDEX_FILE=$pidx git -c core.looseCompression=0 add -A --ignore-errors >/dev/null 2>&1 || [ "$?" = 1 ]; then
    tree=$(GIT_INDEX_FILE=$pidx git write-tree)
    # A loose ref, written by the shell: one process less than update-ref.
    [ -d .git/refs/banger ] || mkdir -p .git/refs/banger
    printf '%s\n' "$tree" > .git/` + PreparedRef + `
  fi
fi
rm -rf .git/banger
`)
	if o.ReadOnly {
		// Files arrive without write bits already (tar modes, checkout
		// umask), so their stat data in the index stays valid; only the
		// directories are left.
		b.WriteString(`find . -path ./.git -prune -o -type d -exec chmod a-w {} +
`)
	}
	b.WriteString(`cd /
if [ -e "$dest" ]; then
`)
	if o.Replace {
		b.WriteString(`  chmod -R u+w -- "$dest" 2>/dev/null || true
  rm -rf -- "$dest"
`)
	} else {
		b.WriteString(`  rmdir -- "$dest"
`)
	}
	b.WriteString(`fi
mv -T -- "$tmp" "$dest"
trap - EXIT
`)
	return b.String()
}

// Prepare copies the workspace of snap into the guest at guestPath: Stream
// piped into ONE remote command, GuestScript(guestPath, snap.Options), or,
// when remote is an Installer and the snapshot suits it (a work tree with
// at most NativeLimit bytes of clean files, no conflicts, no
// skip-worktree entries), a native stream piped into its Install. It
// reports progress (stage "workspace") through the context's progress sink.
// The guest tree changes only if the whole stream arrived. A guest-side
// failure is a *GuestError (errors.Is ErrGuest) carrying the guest's
// message.
func Prepare(ctx context.Context, remote Remote, snap *Snapshot, guestPath string) (Stats, error) {
	start := time.Now()
	if err := CheckGuestPath(guestPath); err != nil {
		return Stats{}, err
	}
	pr, pw := io.Pipe()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type streamResult struct {
		stats Stats
		err   error
	}
	streamed := make(chan streamResult, 1)
	inst, native := remote.(Installer)
	native = native && snap.nativeOK()
	go func() {
		st, err := stream(ctx, snap, pw, native)
		if err != nil {
			pw.CloseWithError(err)
		} else {
			pw.Close()
		}
		streamed <- streamResult{st, err}
	}()

	type runResult struct {
		status int
		err    error
	}
	ran := make(chan runResult, 1)
	stderr := &hostexec.TailBuffer{Max: 16 << 10}
	stdout := &hostexec.TailBuffer{Max: 16 << 10}
	go func() {
		var status int
		var err error
		if native {
			status, err = inst.Install(rctx, InstallRequest{Dest: guestPath, Replace: snap.Options.Replace, ReadOnly: snap.Options.ReadOnly}, pr, stdout, stderr)
		} else {
			status, err = remote.Run(rctx, GuestScript(guestPath, snap.Options), pr, io.Discard, stderr)
		}
		// Unblock Stream if the guest stopped reading early.
		pr.CloseWithError(errGuestStopped)
		ran <- runResult{status, err}
	}()

	var sr streamResult
	var rr runResult
	select {
	case sr = <-streamed:
		if sr.err != nil {
			select {
			case rr = <-ran:
			case <-time.After(stopGrace):
				cancel()
				rr = <-ran
			}
		} else {
			rr = <-ran
		}
	case rr = <-ran:
		sr = <-streamed
	}
	sr.stats.Elapsed = time.Since(start)
	sr.stats.Native = native
	if native && rr.err == nil && rr.status == 0 {
		var res InstallResult
		if json.Unmarshal([]byte(stdout.String()), &res) == nil {
			sr.stats.Guest = &res
		}
	}
	// A failed stream is the cause of whatever the guest then did, unless
	// it failed because the guest stopped reading.
	switch {
	case sr.err != nil && !errors.Is(sr.err, errGuestStopped):
		return sr.stats, fmt.Errorf("workspace prepare: %w", sr.err)
	case rr.err != nil:
		return sr.stats, fmt.Errorf("workspace prepare: run in guest: %w", rr.err)
	case rr.status != 0:
		return sr.stats, &GuestError{Op: "prepare", Status: rr.status, Stderr: stderr.String()}
	case sr.err != nil:
		return sr.stats, fmt.Errorf("workspace prepare: %w", sr.err)
	}
	return sr.stats, nil
}

var errGuestStopped = errors.New("the guest stopped reading the workspace stream")

// ExportScript returns the shell command Export runs in the guest. It
// prints `git diff --cached --binary` of the whole work tree (tracked
// changes, deletions, mode changes and new files that are not ignored)
// against a base:
//
//   - baseCommit "" (the default): PreparedRef, the tree as Prepare left
//     it, so the patch holds only what changed in the guest and applies to
//     the host tree as it was prepared, uncommitted changes and all; a
//     workspace prepared before PreparedRef existed falls back to
//     refs/banger/base (the HEAD shipped), else the empty tree;
//   - a commit: everything since that commit (it must be in the guest's
//     shallow history).
//
// It stages into a temporary copy of the index (GIT_INDEX_FILE), so the
// guest's own index, and therefore its staged/unstaged state, is never
// touched; the temporary copy is removed on exit.
func ExportScript(guestPath, baseCommit string) string {
	var b strings.Builder
	b.WriteString("set -eu\n")
	fmt.Fprintf(&b, "dest=%s\nbase=%s\n", hostexec.Quote(guestPath), hostexec.Quote(baseCommit))
	b.WriteString(`command -v git >/dev/null 2>&1 || { echo "banger: git is not installed in the guest" >&2; exit 127; }
cd -- "$dest" 2>/dev/null || { echo "banger: no workspace at $dest (prepare one first)" >&2; exit 2; }
[ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$(pwd -P)" ] || { echo "banger: $dest is not the top of a git work tree" >&2; exit 2; }
if [ -n "$base" ]; then
  case "$base" in -*) echo "banger: base commit $base is not a commit" >&2; exit 2;; esac
  rev=$(git rev-parse --verify -q "$base^{commit}") || { echo "banger: base commit $base is not in the guest's repository (its history is shallow: pick a commit shipped with the workspace, e.g. the HEAD it was prepared from)" >&2; exit 2; }
else
  rev=$(git rev-parse --verify -q '` + PreparedRef + `^{tree}') || rev=$(git rev-parse --verify -q 'refs/banger/base^{commit}') || rev=$(git hash-object -t tree /dev/null)
fi
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
idx=$(git rev-parse --git-path index)
if [ -f "$idx" ]; then cp -- "$idx" "$tmp/index"; fi
GIT_INDEX_FILE="$tmp/index"
export GIT_INDEX_FILE
git add -A
git diff --cached --binary --full-index --no-color --no-ext-diff --no-textconv --no-renames --no-relative --src-prefix=a/ --dst-prefix=b/ "$rev" --
`)
	return b.String()
}

// Export writes to w a binary-safe git patch (see ExportScript) of
// everything changed in the guest's workspace at guestPath since it was
// prepared (baseCommit "") or since baseCommit. `git apply` takes the
// default patch on the host tree as it was prepared (see Apply), and a
// baseCommit patch in a clean checkout of that commit. It does not modify the
// guest's index or work tree. On error w may have received part of the
// patch: write to a temporary file and rename on success.
func Export(ctx context.Context, remote Remote, guestPath string, baseCommit string, w io.Writer) error {
	if err := CheckGuestPath(guestPath); err != nil {
		return err
	}
	if strings.ContainsAny(baseCommit, "\x00\n") || strings.HasPrefix(baseCommit, "-") {
		return fmt.Errorf("base commit %q is not a commit: %w", baseCommit, ErrInvalidOptions)
	}
	stderr := &hostexec.TailBuffer{Max: 16 << 10}
	status, err := remote.Run(ctx, ExportScript(guestPath, baseCommit), nil, w, stderr)
	if err != nil {
		return fmt.Errorf("workspace export: run in guest: %w", err)
	}
	if status != 0 {
		return &GuestError{Op: "export", Status: status, Stderr: stderr.String()}
	}
	return nil
}
