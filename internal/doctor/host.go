package doctor

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
)

// Arch checks the host architecture.
func Arch(goarch string) Check {
	return Check{Name: "architecture", Run: func(ctx context.Context) Result {
		if goarch == "amd64" {
			return Result{Status: Pass, Message: "x86_64"}
		}
		return Result{Status: Fail, Message: "unsupported architecture " + goarch, Hint: "banger supports Linux x86_64 hosts"}
	}}
}

// HostArch is Arch for the running binary.
func HostArch() Check { return Arch(runtime.GOARCH) }

// KVM reports whether hardware virtualization is usable. probe returns
// (usable, detail).
func KVM(probe func() (bool, string)) Check {
	return Check{Name: "kvm", Run: func(ctx context.Context) Result {
		ok, detail := probe()
		if ok {
			return Result{Status: Pass, Message: "/dev/kvm usable" + suffix(detail)}
		}
		if strings.Contains(detail, "PVM device") {
			return Result{Status: Warn, Message: detail + " (several times slower than KVM)",
				Hint: "nothing to fix for banger: PVM runs only PVM-enabled guest kernels; use a host with hardware virtualization (or nested VT-x/AMD-V) for KVM speed"}
		}
		return Result{Status: Warn, Message: "/dev/kvm not usable" + suffix(detail) + "; guests run under QEMU TCG emulation (several times slower)",
			Hint: "enable virtualization (VT-x/AMD-V, nested virtualization on cloud VMs), load kvm_intel/kvm_amd, and make /dev/kvm readable and writable by you"}
	}}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

var versionRE = regexp.MustCompile(`v?(\d+\.\d+(\.\d+)?)`)

// toolVersion runs `name args...` and extracts the first version number.
func toolVersion(ctx context.Context, r hostexec.Runner, name string, args ...string) (string, error) {
	res, err := r.Run(ctx, hostexec.Cmd{Name: name, Args: args})
	if err != nil {
		return "", err
	}
	out := string(res.Stdout) + string(res.Stderr)
	if m := versionRE.FindStringSubmatch(out); m != nil {
		return m[1], nil
	}
	first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	return first, nil
}

// VMMBinaries checks the VMM programs. At least one usable way to run
// guests must exist: qemu (KVM or TCG), or firecracker with KVM.
func VMMBinaries(r hostexec.Runner, qemu, firecracker, jailer string, kvm func() (bool, string)) []Check {
	return []Check{
		{Name: "qemu", Run: func(ctx context.Context) Result {
			v, err := toolVersion(ctx, r, qemu, "--version")
			if err != nil {
				if errors.Is(err, hostexec.ErrNotFound) {
					fc := have(firecracker)
					kvmOK, _ := kvm()
					if fc && kvmOK {
						return Result{Status: Warn, Message: qemu + " not installed (firecracker will be used)", Hint: "apt-get install qemu-system-x86 to run guests without KVM"}
					}
					return Result{Status: Fail, Message: qemu + " not installed and firecracker+KVM unavailable: no way to run guests", Hint: "apt-get install qemu-system-x86"}
				}
				return Result{Status: Fail, Message: err.Error(), Hint: "reinstall qemu-system-x86"}
			}
			return Result{Status: Pass, Message: qemu + " " + v}
		}},
		{Name: "firecracker", Run: func(ctx context.Context) Result {
			v, err := toolVersion(ctx, r, firecracker, "--version")
			if err != nil {
				return Result{Status: Warn, Message: firecracker + " not found; the qemu driver is used",
					Hint: "install firecracker (>= 1.5) and jailer on PATH, or set [firecracker] binary in config.toml, for faster microVMs on KVM hosts"}
			}
			return Result{Status: Pass, Message: firecracker + " " + v}
		}},
		{Name: "jailer", Run: func(ctx context.Context) Result {
			if !have(jailer) {
				return Result{Status: Warn, Message: jailer + " not found; firecracker runs without the jailer",
					Hint: "install the jailer that ships with firecracker for chroot + uid isolation"}
			}
			return Result{Status: Pass, Message: jailer + " present"}
		}},
	}
}

func have(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// Tool describes a host program banger needs.
type Tool struct {
	Name     string
	Package  string // Debian package that provides it
	Optional bool   // WARN instead of FAIL when missing
	Purpose  string
}

// RequiredTools is the list of host programs banger calls.
var RequiredTools = []Tool{
	{Name: "mkfs.ext4", Package: "e2fsprogs", Purpose: "build disks"},
	{Name: "debugfs", Package: "e2fsprogs", Purpose: "write guest config into disks"},
	{Name: "e2fsck", Package: "e2fsprogs", Purpose: "check disks"},
	{Name: "ip", Package: "iproute2", Purpose: "networking"},
	{Name: "nft", Package: "nftables", Optional: true, Purpose: "NAT (iptables is the fallback)"},
	{Name: "ssh", Package: "openssh-client", Purpose: "interactive sessions"},
	{Name: "git", Package: "git", Purpose: "workspaces"},
	{Name: "debootstrap", Package: "debootstrap", Optional: true, Purpose: "build the default image"},
}

// Tools checks each tool is on PATH.
func Tools(tools []Tool) []Check {
	var checks []Check
	for _, t := range tools {
		t := t
		checks = append(checks, Check{Name: "tool " + t.Name, Run: func(ctx context.Context) Result {
			if p, err := exec.LookPath(t.Name); err == nil {
				return Result{Status: Pass, Message: p}
			}
			st := Fail
			if t.Optional {
				st = Warn
			}
			return Result{Status: st, Message: fmt.Sprintf("%s not found (needed to %s)", t.Name, t.Purpose), Hint: "apt-get install " + t.Package}
		}})
	}
	return checks
}
