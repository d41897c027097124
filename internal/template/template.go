// Package template stores and makes VM templates: a booted, idle guest,
// paused and saved (memory and device state) together with its root and work
// disks as they were at that instant. A VM restored from a template skips the
// kernel and systemd boot; it then gets its own identity (hostname, MAC,
// address, ssh host key, machine id, RNG seed, clock) from the guest agent.
//
// # Contract
//
//   - A template is addressed by its Key: everything that makes one saved
//     guest unusable for another (image digest, kernel digest, vCPUs,
//     memory, guest-contract version, driver and VMM version, work-disk size
//     and a digest of the daemon's guest inputs). Key.ID is a
//     stable digest of those fields; the image name is kept for listing and
//     removal but is not part of the ID.
//   - The Store keeps each template in its own directory <root>/<id>/ with a
//     manifest written last. A directory without a readable manifest that
//     matches its own id is not a template: Get reports ErrNotFound and
//     removes it (a crash during creation, or corruption, never yields a
//     half template).
//   - Manager.Ensure returns the template for a key, making it with the
//     Maker on first need. Concurrent Ensure calls for one key make it once
//     and all get the result (or the error). Making a template for a key
//     removes the templates of the same image whose key differs (the key
//     changed: the old ones can never match again).
//   - Discard removes a template that failed to restore; the caller then
//     cold-boots and warns. Nothing here fails a user's command because a
//     template is missing or broken: callers treat every error from Ensure
//     as "cold-boot instead".
//   - A restored guest keeps the template's kernel boot_id
//     (/proc/sys/kernel/random/boot_id): it is set once at kernel boot and
//     cannot be changed without rebooting. Everything else that names the
//     machine is replaced by the identity step.
package template

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// ErrNotFound is returned (wrapped) when no usable template exists for a key
// or id.
var ErrNotFound = errors.New("template not found")

// Key is everything a saved guest depends on. Two VMs can share a template
// only if their keys are equal.
type Key struct {
	Image         string `json:"image"`          // image name, for listing and removal; not part of ID
	Kernel        string `json:"kernel"`         // kernel name, for the Maker and listing; not part of ID
	ImageDigest   string `json:"image_digest"`   // content digest of the image's root filesystem
	KernelDigest  string `json:"kernel_digest"`  // digest of kernel (+ initrd)
	VCPU          int    `json:"vcpu"`           // vCPUs
	MemoryMiB     int64  `json:"memory_mib"`     // guest memory
	GuestContract int    `json:"guest_contract"` // guest-contract version installed in the image
	Driver        string `json:"driver"`         // "qemu" or "firecracker"
	VMMVersion    string `json:"vmm_version"`    // e.g. "QEMU emulator version 9.2.1; machine microvm; accel tcg"
	// DiskMiB is the size of the template's work disk: VMs with a larger
	// disk grow theirs after restore, smaller ones cold-boot.
	DiskMiB int64 `json:"disk_mib,omitempty"`
	// Guest is a digest of what the daemon writes into every guest before
	// boot and that a restored guest keeps: the agent binary, the managed
	// ssh key, the kernel arguments, the DNS domain.
	Guest string `json:"guest,omitempty"`
}

// Validate reports a key that cannot address a template.
func (k Key) Validate() error {
	switch {
	case k.ImageDigest == "":
		return errors.New("template key: image digest is empty")
	case k.KernelDigest == "":
		return errors.New("template key: kernel digest is empty")
	case k.VCPU < 1:
		return fmt.Errorf("template key: vcpu %d is not positive", k.VCPU)
	case k.MemoryMiB < 1:
		return fmt.Errorf("template key: memory %d MiB is not positive", k.MemoryMiB)
	case k.Driver == "":
		return errors.New("template key: driver is empty")
	case k.VMMVersion == "":
		return errors.New("template key: vmm version is empty")
	}
	return nil
}

// ID is the template's stable identifier: the first 16 bytes of a SHA-256
// over the key's fields, image and kernel names excluded, in hex.
func (k Key) ID() string {
	k.Image, k.Kernel = "", ""
	b, _ := json.Marshal(k) // a struct of strings and ints always marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

var idPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ValidID reports whether id has the form Key.ID produces.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// Files names a template's parts, relative to its directory.
type Files struct {
	State    string `json:"state"`     // memory + device state (QEMU migration stream / Firecracker snapshot)
	Memory   string `json:"memory"`    // Firecracker memory file; "" for QEMU (inside State)
	RootDisk string `json:"root_disk"` // root disk as at the save
	WorkDisk string `json:"work_disk"` // work disk as at the save
}

// Template is one stored template.
type Template struct {
	ID        string        `json:"id"`
	Key       Key           `json:"key"`
	Files     Files         `json:"files"`
	Dir       string        `json:"-"` // absolute directory; Files are relative to it
	CreatedAt time.Time     `json:"created_at"`
	MakeTime  time.Duration `json:"make_time_ns"` // how long making it took
	SizeBytes int64         `json:"size_bytes"`   // allocated bytes on disk when stored
}

// Maker boots a guest for key, waits until it is idle, pauses and saves it
// into dir (an empty directory the Store owns) and returns the file names it
// wrote, relative to dir. On error the Store removes dir; the Maker must
// leave no VMM running either way.
type Maker interface {
	Make(ctx context.Context, key Key, dir string) (Files, error)
}

// MakerFunc adapts a function to Maker.
type MakerFunc func(ctx context.Context, key Key, dir string) (Files, error)

// Make calls f.
func (f MakerFunc) Make(ctx context.Context, key Key, dir string) (Files, error) {
	return f(ctx, key, dir)
}
