package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/testreq"
)

// Debian bookworm's own text of the two files loginBatch edits.
const (
	bookwormProfile = `# /etc/profile: system-wide .profile file for the Bourne shell (sh(1))
if [ "$(id -u)" -eq 0 ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  PATH="/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
fi
export PATH
`
	bookwormRootProfile = `# ~/.profile: executed by Bourne-compatible login shells.

if [ "$BASH" ]; then
  if [ -f ~/.bashrc ]; then
    . ~/.bashrc
  fi
fi

mesg n 2> /dev/null || true
`
)

// TestLoginBatchEditsTheLoginShell builds an ext4 from a tree with
// bookworm's /etc/profile and /root/.profile (seeded to the work seed as
// guestBatch does), applies loginBatch, and checks the edited files: the
// same text but for the two process-spawning lines, and still the same
// PATH for root under bash and under sh.
func TestLoginBatchEditsTheLoginShell(t *testing.T) {
	testreq.Tools(t, "mkfs.ext4", "debugfs", "bash", "sh")
	ctx := context.Background()
	r := hostexec.Real{}
	tree := t.TempDir()
	for p, data := range map[string]string{"etc/profile": bookwormProfile, "root/.profile": bookwormRootProfile, "etc/hostname": "x\n"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, p), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "root.ext4")
	if err := ext4.Build(ctx, r, ext4.BuildOptions{SourceDir: tree, Out: img, SizeBytes: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	b := &ext4.Batch{}
	b.Mkdir(GuestWorkSeed, 0o700, 0, 0)
	b.WriteFile(GuestWorkSeed+"/.profile", []byte(bookwormRootProfile), 0o644, 0, 0)
	if err := loginBatch(b, tree); err != nil {
		t.Fatal(err)
	}
	if err := ext4.Apply(ctx, r, img, b); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		data, err := ext4.ReadFile(ctx, r, img, p)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	profile := read("/etc/profile")
	if want := strings.Replace(bookwormProfile, `"$(id -u)"`, `"${EUID:-$(id -u)}"`, 1); profile != want {
		t.Errorf("/etc/profile:\n%s\nwant:\n%s", profile, want)
	}
	for _, p := range []string{"/root/.profile", GuestWorkSeed + "/.profile"} {
		got := read(p)
		if want := strings.Replace(bookwormRootProfile, "mesg n 2> /dev/null || true", "if [ -t 0 ]; then mesg n 2> /dev/null || true; fi", 1); got != want {
			t.Errorf("%s:\n%s\nwant:\n%s", p, got, want)
		}
	}
	if read("/etc/hostname") != "x\n" {
		t.Error("loginBatch touched a file it does not edit")
	}

	// The edited profile still gives root its PATH, in bash and in sh
	// (where $EUID is unset and id runs as before).
	f := filepath.Join(t.TempDir(), "profile")
	if err := os.WriteFile(f, []byte(profile), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, sh := range []string{"bash", "sh"} {
		out, err := exec.Command(sh, "-c", `PATH=/usr/bin:/bin; . "$1"; echo "$PATH"`, sh, f).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", sh, err, out)
		}
		uid := os.Getuid()
		want := "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
		if uid == 0 {
			want = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("%s sourcing the edited profile as uid %d: PATH=%s, want %s", sh, uid, got, want)
		}
	}
}

// A release whose files differ is left alone.
func TestLoginBatchLeavesOtherTextAlone(t *testing.T) {
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc/profile"), []byte("export PATH=/bin\n"), 0o644)
	b := &ext4.Batch{}
	if err := loginBatch(b, tree); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 0 {
		t.Errorf("loginBatch queued %d edits for files without the original text", b.Len())
	}
}
