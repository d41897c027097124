package privops

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
)

const (
	procMiscNoDM = "234 btrfs-control\n237 loop-control\n200 tun\n"
	procMiscDM   = procMiscNoDM + "236 device-mapper\n"
	procDevsNoDM = "Character devices:\n  1 mem\n 10 misc\n\nBlock devices:\n  7 loop\n254 virtblk\n"
	procDevsDM   = "Character devices:\n  1 mem\n 10 misc\n\nBlock devices:\n  7 loop\n253 device-mapper\n254 virtblk\n"
	// device-mapper as a character device name must not count.
	procDevsCharDM = "Character devices:\n253 device-mapper\n\nBlock devices:\n  7 loop\n"
)

func fakeProc(t *testing.T, misc, devices string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"misc": misc, "devices": devices} {
		if body == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDeviceMapperStatus(t *testing.T) {
	withDriver := func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte("Library version:   1.02.185 (2022-05-18)\nDriver version:    4.48.0\n")}, nil
	}
	// What dmsetup prints on this machine kind: it has just created
	// /dev/mapper/control itself, and the kernel has no driver.
	noDriver := func(c hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: 1, Stdout: []byte("Library version:   1.02.185 (2022-05-18)\n")},
			&hostexec.ExitError{Cmd: c.String(), ExitCode: 1, Stderr: "/dev/mapper/control: open failed: No such device\nFailure to communicate with kernel device-mapper driver."}
	}
	libOnly := func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{Stdout: []byte("Library version:   1.02.185 (2022-05-18)\n")}, nil
	}
	missing := func(hostexec.Cmd) (hostexec.Result, error) {
		return hostexec.Result{ExitCode: -1}, fmt.Errorf("dmsetup: %w", hostexec.ErrNotFound)
	}
	cases := []struct {
		name          string
		misc, devices string
		respond       func(hostexec.Cmd) (hostexec.Result, error)
		want, errHas  string
	}{
		{"misc lists it", procMiscDM, procDevsNoDM, withDriver, "4.48.0", ""},
		{"block major lists it", procMiscNoDM, procDevsDM, withDriver, "4.48.0", ""},
		{"kernel without dm, dmsetup claims a driver", procMiscNoDM, procDevsNoDM, withDriver, "", "kernel has no device-mapper"},
		{"char device named device-mapper", procMiscNoDM, procDevsCharDM, withDriver, "", "kernel has no device-mapper"},
		{"no proc files", "", "", withDriver, "", "kernel has no device-mapper"},
		{"listed but driver unreachable", procMiscDM, procDevsDM, noDriver, "", "cannot talk"},
		{"listed, no driver version", procMiscDM, procDevsDM, libOnly, "", "no driver version"},
		{"dmsetup missing", procMiscDM, procDevsDM, missing, "", "not installed"},
		{"this machine: control node made by dmsetup, no dm", procMiscNoDM, procDevsNoDM, noDriver, "", "kernel has no device-mapper"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &hostexec.Recorder{Respond: tc.respond}
			got, err := DeviceMapper{Proc: fakeProc(t, tc.misc, tc.devices), Runner: rec}.Status(context.Background())
			if tc.errHas == "" {
				if err != nil || got != tc.want {
					t.Fatalf("Status = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errHas) || !errors.Is(err, ErrNotSupported) {
				t.Fatalf("Status = %q, %v; want ErrNotSupported mentioning %q", got, err, tc.errHas)
			}
		})
	}
}

// TestDeviceMapperHost asks the real host. Whatever the answer, a
// /dev/mapper/control node alone must never make it yes.
func TestDeviceMapperHost(t *testing.T) {
	_, err := DeviceMapper{Runner: hostexec.Real{}}.Status(context.Background())
	listed := DeviceMapper{}.KernelListed() == nil
	if err == nil && !listed {
		t.Fatalf("Status says yes but the kernel does not list device-mapper")
	}
	t.Logf("device-mapper here: listed=%v status=%v", listed, err)
}

func FuzzProcDeviceLists(f *testing.F) {
	for _, s := range []string{procMiscDM, procMiscNoDM, procDevsDM, procDevsNoDM, procDevsCharDM, "", "\n\n", "Block devices:\ndevice-mapper\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		misc := procMiscHas(b, "device-mapper")
		blk := procDevicesHasBlock(b, "device-mapper")
		if (misc || blk) && !strings.Contains(string(b), "device-mapper") {
			t.Fatalf("listed without the name in %q", b)
		}
	})
}
