package ext4

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Superblock layout (see the kernel's struct ext4_super_block): it starts
// 1024 bytes into the device; s_magic is at 0x38, s_feature_incompat at
// 0x60.
const (
	superblockOffset = 1024
	offMagic         = 0x38
	offIncompat      = 0x60
	ext4Magic        = 0xEF53
	incompatRecover  = 0x0004 // EXT4_FEATURE_INCOMPAT_RECOVER: the journal must be replayed
)

// ErrNotExt4 is wrapped when an image has no ext2/3/4 superblock.
var ErrNotExt4 = errors.New("not an ext4 filesystem")

// NeedsRecovery reports whether image's journal holds writes that were
// never applied to the filesystem: it was not unmounted cleanly (a guest
// that was killed, a host that lost power). Read from the superblock.
func NeedsRecovery(image string) (bool, error) {
	f, err := os.Open(image)
	if err != nil {
		return false, fmt.Errorf("ext4: %w", err)
	}
	defer f.Close()
	sb := make([]byte, 0x64)
	if _, err := f.ReadAt(sb, superblockOffset); err != nil {
		if errors.Is(err, io.EOF) {
			return false, fmt.Errorf("ext4: %s: %w (too short)", image, ErrNotExt4)
		}
		return false, fmt.Errorf("ext4: read superblock of %s: %w", image, err)
	}
	if binary.LittleEndian.Uint16(sb[offMagic:]) != ext4Magic {
		return false, fmt.Errorf("ext4: %s: %w", image, ErrNotExt4)
	}
	return binary.LittleEndian.Uint32(sb[offIncompat:])&incompatRecover != 0, nil
}

// ReplayJournal applies a pending journal (`e2fsck -p -E journal_only`)
// when the superblock says one is there, and does nothing otherwise.
//
// debugfs neither replays a journal nor refuses to write past one: an
// edit made on such an image is undone, or worse, mixed with stale
// blocks, when the guest's kernel replays the journal at its next mount.
// Every writer (Apply) calls this first. The image must not be in use.
func ReplayJournal(ctx context.Context, r hostexec.Runner, image string) error {
	dirty, err := NeedsRecovery(image)
	if err != nil || !dirty {
		return err
	}
	res, err := r.Run(ctx, hostexec.Cmd{Name: "e2fsck", Args: []string{"-p", "-E", "journal_only", image}})
	if err != nil {
		var ee *hostexec.ExitError
		// 1: errors corrected (the replay) — success for -p.
		if errors.As(err, &ee) && ee.ExitCode == 1 {
			return nil
		}
		return fmt.Errorf("ext4: replay the journal of %s (it was not unmounted cleanly): %w%s", image, err, tailIf(string(res.Stdout)))
	}
	if dirty, err := NeedsRecovery(image); err != nil || dirty {
		return errors.Join(err, fmt.Errorf("ext4: %s still needs journal recovery after e2fsck: %s", image, strings.TrimSpace(string(res.Stdout))))
	}
	return nil
}
