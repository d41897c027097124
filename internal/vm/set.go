package vm

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bangerdev/banger/internal/disk"
	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/privops"
)

// Changes are the settings Set changes; nil fields are kept.
type Changes struct {
	VCPU        *int
	MemoryMiB   *int64
	DiskSizeMiB *int64 // the /root disk; grow only
	NAT         *bool
}

// Set changes a VM that is not running: vCPUs, memory, NAT (applied at the
// next start) and the size of its /root disk, which is grown now (file,
// e2fsck, resize2fs; shrinking is refused). A running VM gives an error
// wrapping ErrBadState.
func (m *Manager) Set(ctx context.Context, vm *model.VM, c Changes) (*model.VM, error) {
	switch vm.State {
	case model.StateStopped, model.StateError:
	default:
		return vm, fmt.Errorf("VM %s is %s: %w: stop it first (`banger vm stop %s`)", vm.Name, vm.State, ErrBadState, vm.Name)
	}
	if hasTransient(vm) {
		return vm, fmt.Errorf("VM %s still holds resources of an earlier run: %w: run `banger vm stop %s` first", vm.Name, ErrBadState, vm.Name)
	}
	next := *vm
	if c.VCPU != nil {
		if err := model.ValidateVCPU(*c.VCPU); err != nil {
			return vm, err
		}
		next.VCPU = *c.VCPU
	}
	if c.MemoryMiB != nil {
		if err := model.ValidateMemoryMiB(*c.MemoryMiB); err != nil {
			return vm, err
		}
		next.MemoryMiB = *c.MemoryMiB
	}
	if c.NAT != nil {
		next.NAT = *c.NAT
	}
	if c.DiskSizeMiB != nil {
		n := *c.DiskSizeMiB
		if n < vm.DiskSizeMiB {
			return vm, fmt.Errorf("disk size %s is smaller than the current %s: shrinking the /root disk is not supported: %w",
				model.FormatMiB(n), model.FormatMiB(vm.DiskSizeMiB), model.ErrInvalidSize)
		}
		if n > vm.DiskSizeMiB {
			path := filepath.Join(m.o.Layout.VMDir(vm.ID), workDiskFile)
			if exists(path) {
				if err := ext4.Grow(ctx, m.o.Runner, path, n<<20); err != nil {
					return vm, fmt.Errorf("grow the /root disk of %s: %w", vm.Name, err)
				}
			}
		}
		next.DiskSizeMiB = n
	}
	if err := m.save(ctx, &next); err != nil {
		return vm, err
	}
	return &next, nil
}

// Stats are a VM's resource figures.
type Stats struct {
	PID        int           // 0 when not running
	CPUSeconds float64       // user + system CPU time of the VMM
	RSSBytes   int64         // resident memory of the VMM
	Uptime     time.Duration // since the VMM started
	RootDisk   DiskUsage
	WorkDisk   DiskUsage
}

// DiskUsage is the apparent size of a disk file and the space it takes.
type DiskUsage struct {
	Path           string
	SizeBytes      int64
	AllocatedBytes int64
}

// Stats reports the VMM's CPU time and RSS (when it runs, verified by
// evidence) and the size and allocated space of the VM's disks.
func (m *Manager) Stats(ctx context.Context, vm *model.VM) (*Stats, error) {
	st := &Stats{}
	if h := recordedHandle(vm); h != nil && vm.State == model.StateRunning && privops.VerifyProcess(h.Identity()) == nil {
		st.PID = h.PID
		cpu, start, err := procStat(h.PID)
		if err == nil {
			st.CPUSeconds = cpu
			if boot, err := bootTime(); err == nil {
				st.Uptime = time.Since(boot.Add(start)).Round(time.Second)
			}
		}
		st.RSSBytes, _ = procRSS(h.PID)
	}
	if h, err := decodeHandle(vm.Runtime.DiskHandle); err == nil && h != nil {
		p := h.Path
		if h.Strategy == disk.DM {
			p = h.COWFile
		}
		st.RootDisk = usage(p)
	}
	st.WorkDisk = usage(filepath.Join(m.o.Layout.VMDir(vm.ID), workDiskFile))
	return st, nil
}

func usage(p string) DiskUsage {
	u := DiskUsage{Path: p}
	var s syscall.Stat_t
	if err := syscall.Stat(p, &s); err == nil {
		u.SizeBytes, u.AllocatedBytes = s.Size, s.Blocks*512
	}
	return u
}

// clockTicks is USER_HZ, 100 on every Linux architecture banger supports.
const clockTicks = 100

// procStat returns the CPU seconds (utime+stime) and the start time since
// boot of pid, from /proc/PID/stat.
func procStat(pid int) (cpu float64, start time.Duration, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// fields after the comm: state(0) ... utime(11) stime(12) ... starttime(19)
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stm, _ := strconv.ParseInt(f[12], 10, 64)
	st, _ := strconv.ParseInt(f[19], 10, 64)
	return float64(ut+stm) / clockTicks, time.Duration(st) * time.Second / clockTicks, nil
}

// procRSS returns VmRSS of pid in bytes.
func procRSS(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fs := strings.Fields(v)
			if len(fs) >= 1 {
				kb, err := strconv.ParseInt(fs[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// bootTime is when the host booted (btime in /proc/stat).
func bootTime() (time.Time, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "btime "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return time.Unix(n, 0), err
		}
	}
	return time.Time{}, fmt.Errorf("no btime in /proc/stat")
}
