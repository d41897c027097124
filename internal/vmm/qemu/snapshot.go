package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/vmm"
)

// migrationURI returns the exec: migration URI that writes (save) or reads
// (restore) path. QEMU 7.2 has no file: URI, so the stream goes through cat;
// the path is single-quoted for the shell QEMU runs it with.
func migrationURI(path string, save bool) (string, error) {
	if !filepath.IsAbs(path) || strings.ContainsAny(path, "'\n\x00") {
		return "", fmt.Errorf("state file %q: want an absolute path without quotes or newlines", path)
	}
	if save {
		return "exec:cat > '" + path + "'", nil
	}
	return "exec:cat '" + path + "'", nil
}

type migrateInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// Save implements vmm.Snapshotter: QMP stop, migrate to path, wait until the
// migration completed. The guest stays paused.
func (d *Driver) Save(ctx context.Context, h *vmm.Handle, path string) error {
	uri, err := migrationURI(path, true)
	if err != nil {
		return fmt.Errorf("qemu: save: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("qemu: save: %s already exists", path)
	}
	q, err := d.qmp(ctx, h)
	if err != nil {
		return fmt.Errorf("qemu: save: %w", err)
	}
	defer q.Close()
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("qemu: save: pause guest: %w", err)
	}
	if err := q.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return fmt.Errorf("qemu: save: start migration: %w", err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var mi migrateInfo
		if err := q.Execute(ctx, "query-migrate", nil, &mi); err != nil {
			return fmt.Errorf("qemu: save: query migration: %w", err)
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("qemu: save to %s: migration %s: %s", path, mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			_ = q.Execute(context.WithoutCancel(ctx), "migrate_cancel", nil, nil)
			return errors.Join(fmt.Errorf("qemu: save: %w", ctx.Err()), os.Remove(path))
		case <-tick.C:
		}
	}
}

// VMMVersion implements vmm.Versioner: the first line of `qemu --version`
// with the machine type and accelerator, since a state saved under TCG or
// one machine type cannot be loaded under another.
func (d *Driver) VMMVersion(ctx context.Context) (string, error) {
	d.versionOnce.Do(func() {
		res, err := d.cfg.Runner.Run(ctx, hostexec.Cmd{Name: d.cfg.Binary, Args: []string{"--version"}})
		if err != nil {
			d.versionErr = fmt.Errorf("qemu: version: %w", err)
			return
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(res.Stdout)), "\n")
		if line == "" {
			d.versionErr = fmt.Errorf("qemu: %s --version printed nothing", d.cfg.Binary)
			return
		}
		accel, _ := d.Accel()
		d.version = strings.TrimSpace(line) + "; machine " + d.cfg.Machine + "; accel " + accel
	})
	return d.version, d.versionErr
}

// ResizeDrive implements vmm.DriveResizer with QMP block_resize on the
// drive's block backend ("drive<index>", see Args): QEMU grows the file and
// raises the virtio-blk config-change interrupt, so the guest sees the new
// capacity at once.
func (d *Driver) ResizeDrive(ctx context.Context, h *vmm.Handle, index int, sizeBytes int64) error {
	if index < 0 || sizeBytes <= 0 || sizeBytes%512 != 0 {
		return fmt.Errorf("qemu: resize drive %d to %d bytes: want a drive index and a positive multiple of 512", index, sizeBytes)
	}
	q, err := d.qmp(ctx, h)
	if err != nil {
		return fmt.Errorf("qemu: resize drive %d: %w", index, err)
	}
	defer q.Close()
	if err := q.Execute(ctx, "block_resize", map[string]any{"device": "drive" + strconv.Itoa(index), "size": sizeBytes}, nil); err != nil {
		return fmt.Errorf("qemu: resize drive %d: %w", index, err)
	}
	return nil
}
