package agent

import (
	"context"
	"reflect"
	"testing"
)

func TestParseWritableBlockMounts(t *testing.T) {
	mounts := `/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=100k 0 0
/dev/vdb /root ext4 ro,relatime 0 0
/dev/vdc /srv ext4 relatime,rw 0 0
/dev/root /mnt ext4 rwx 0 0
short line
`
	got := parseWritableBlockMounts(mounts)
	if want := []string{"/", "/srv"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// Halt acts on the running kernel only: a test tree (Kernel false) must
// never reach the host's sysrq trigger.
func TestHaltRefusesWithoutKernel(t *testing.T) {
	g := &Guest{Root: t.TempDir(), ProcRoot: t.TempDir()}
	if err := g.Halt(context.Background()); err == nil {
		t.Fatal("halt with Kernel false succeeded")
	}
}
