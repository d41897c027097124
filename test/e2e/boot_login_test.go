package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/testguest"
	"github.com/bangerdev/banger/internal/testreq"
)

// TestE2EKernelAndImageBootToLoginPrompt boots the kernel banger pulls and
// the image it builds with a plain qemu-system-x86_64 command line — no
// banger in between — and waits for the login prompt on the serial console.
func TestE2EKernelAndImageBootToLoginPrompt(t *testing.T) {
	testreq.E2E(t)
	k := testguest.Kernel(t)
	base := minbaseImage(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("cp", "--sparse=always", base, disk).CombinedOutput(); err != nil {
		t.Fatalf("copy image: %v: %s", err, out)
	}
	serial := filepath.Join(dir, "serial.log")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-M", "q35", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "512",
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-serial", "file:"+serial,
		"-kernel", k.Vmlinuz, "-initrd", k.Initrd,
		"-append", "console=ttyS0 root=/dev/vda rw panic=-1 init=/usr/lib/banger/init",
		"-drive", "if=none,id=d0,file="+disk+",format=raw", "-device", "virtio-blk-pci,drive=d0",
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	start := time.Now()
	deadline := time.After(150 * time.Second)
	for {
		data, _ := os.ReadFile(serial)
		if bytes.Contains(data, []byte(" login: ")) || bytes.HasSuffix(bytes.TrimRight(data, " \r\n"), []byte("login:")) {
			t.Logf("login prompt after %.1fs", time.Since(start).Seconds())
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			t.Logf("serial: %s", lines[len(lines)-1])
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("qemu exited before the login prompt: %v\n%s\nserial tail:\n%s", err, stderr.String(), tail(string(data), 3000))
		case <-deadline:
			t.Fatalf("no login prompt within 150s; serial tail:\n%s", tail(string(data), 3000))
		case <-time.After(250 * time.Millisecond):
		}
	}
}
