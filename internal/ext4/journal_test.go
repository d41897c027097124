package ext4

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
)

func TestNeedsRecoveryReadsTheSuperblock(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, magic uint16, incompat uint32, size int) string {
		b := make([]byte, size)
		if size >= superblockOffset+0x64 {
			binary.LittleEndian.PutUint16(b[superblockOffset+offMagic:], magic)
			binary.LittleEndian.PutUint32(b[superblockOffset+offIncompat:], incompat)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		path    string
		want    bool
		wantErr error
	}{
		{mk("clean", ext4Magic, 0x2c2, 4096), false, nil},
		{mk("dirty", ext4Magic, 0x2c2|incompatRecover, 4096), true, nil},
		{mk("xfs", 0x1234, incompatRecover, 4096), false, ErrNotExt4},
		{mk("short", 0, 0, 100), false, ErrNotExt4},
	} {
		got, err := NeedsRecovery(c.path)
		if got != c.want || !errors.Is(err, c.wantErr) {
			t.Errorf("%s: %v, %v; want %v, %v", filepath.Base(c.path), got, err, c.want, c.wantErr)
		}
	}
	// A clean image costs no e2fsck run.
	rec := &hostexec.Recorder{}
	if err := ReplayJournal(context.Background(), rec, filepath.Join(dir, "clean")); err != nil || len(rec.Calls()) != 0 {
		t.Errorf("clean image: %v, calls %v", err, rec.Calls())
	}
}

// A guest killed before its journal was checkpointed leaves writes in the
// journal only. debugfs edits made on such an image (the per-VM guest
// configuration at every start) were undone and the directory block
// corrupted when the guest's kernel replayed the journal at the next boot:
// ssh and networking failed to start. Apply must replay the journal first.
func TestIntegrationApplyOnAnImageWithAPendingJournal(t *testing.T) {
	tools(t)
	ctx := context.Background()
	r := hostexec.Real{}
	dir := t.TempDir()
	img := filepath.Join(dir, "root.ext4")
	if err := Create(ctx, r, img, 32<<20, "root"); err != nil {
		t.Fatal(err)
	}
	b := &Batch{}
	b.Mkdir("/etc", 0o755, 0, 0)
	b.WriteFile("/etc/old", []byte("old\n"), 0o644, 0, 0)
	if err := Apply(ctx, r, img, b); err != nil {
		t.Fatal(err)
	}
	// Put /etc's directory block, as it is now, into the journal as an
	// uncommitted-to-disk transaction: what a killed guest leaves behind.
	res, err := r.Run(ctx, hostexec.Cmd{Name: "debugfs", Args: []string{"-R", "blocks /etc", img}})
	if err != nil {
		t.Fatal(err)
	}
	var blk int64
	if _, err := fmt.Sscan(strings.TrimSpace(string(res.Stdout)), &blk); err != nil {
		t.Fatalf("blocks /etc: %q: %v", res.Stdout, err)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 4096)
	_, err = f.ReadAt(block, blk*4096)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	blockFile := filepath.Join(dir, "block")
	script := filepath.Join(dir, "journal")
	if err := os.WriteFile(blockFile, block, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, []byte(fmt.Sprintf("jo\njw -b %d %s\njc\n", blk, blockFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, hostexec.Cmd{Name: "debugfs", Args: []string{"-w", "-f", script, img}}); err != nil {
		t.Fatal(err)
	}
	if dirty, err := NeedsRecovery(img); err != nil || !dirty {
		t.Fatalf("the test image should need recovery: %v %v", dirty, err)
	}

	// The per-VM configuration written while the journal is pending...
	b = &Batch{}
	b.WriteFile("/etc/new", []byte("new\n"), 0o644, 0, 0)
	if err := Apply(ctx, r, img, b); err != nil {
		t.Fatal(err)
	}
	// ...must survive the replay the guest's kernel does at mount.
	if _, err := r.Run(ctx, hostexec.Cmd{Name: "e2fsck", Args: []string{"-p", "-E", "journal_only", img}}); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if got, err := ReadFile(ctx, r, img, "/etc/new"); err != nil || string(got) != "new\n" {
		t.Errorf("/etc/new after the guest's replay: %q, %v", got, err)
	}
	if got, err := ReadFile(ctx, r, img, "/etc/old"); err != nil || string(got) != "old\n" {
		t.Errorf("/etc/old after the guest's replay: %q, %v", got, err)
	}
	if err := Check(ctx, r, img); err != nil {
		t.Error(err)
	}
}
