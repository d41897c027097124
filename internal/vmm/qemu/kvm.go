package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KVM ioctl numbers (x86_64, linux/kvm.h).
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemRegion    = 0x4020AE46
	kvmRun                 = 0xAE80
	kvmSetRegs             = 0x4090AE82
	kvmGetSregs            = 0x8138AE83
	kvmSetSregs            = 0x4138AE84
	kvmExitIO              = 2
	kvmExitHLT             = 5
	kvmSregsSize           = 312
	kvmRunExitReasonOffset = 8
)

func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// kvmProbe proves dev can run a guest: it creates a VM with one page of
// real-mode code (out 0x10; hlt), one vCPU, and runs it until the HLT exit.
// A KVM_RUN that does not come back within timeout counts as unusable (its
// thread and descriptors are then abandoned; this runs once per driver).
func kvmProbe(dev string, timeout time.Duration) error {
	kvm, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	v, err := ioctl(kvm, kvmGetAPIVersion, 0)
	if err != nil {
		unix.Close(kvm)
		return fmt.Errorf("%s: KVM_GET_API_VERSION: %w", dev, err)
	}
	if v != 12 {
		unix.Close(kvm)
		return fmt.Errorf("%s: KVM API version %d, want 12", dev, v)
	}
	done := make(chan error, 1)
	go func() { done <- kvmRunHLT(kvm) }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s: %w", dev, err)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s: KVM_RUN of a test guest did not return within %s", dev, timeout)
	}
}

func kvmRunHLT(kvm int) (err error) {
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	closers = append(closers, func() { unix.Close(kvm) })
	vm, err := ioctl(kvm, kvmCreateVM, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	closers = append(closers, func() { unix.Close(int(vm)) })
	mem, err := unix.Mmap(-1, 0, 0x1000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap guest memory: %w", err)
	}
	closers = append(closers, func() { _ = unix.Munmap(mem) })
	copy(mem, []byte{0xb0, 0x42, 0xe6, 0x10, 0xf4}) // mov al,0x42; out 0x10,al; hlt
	region := struct {
		slot, flags         uint32
		gpa, size, userAddr uint64
	}{0, 0, 0x1000, 0x1000, uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, err := ioctl(int(vm), kvmSetUserMemRegion, uintptr(unsafe.Pointer(&region))); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	vcpu, err := ioctl(int(vm), kvmCreateVCPU, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	closers = append(closers, func() { unix.Close(int(vcpu)) })
	size, err := ioctl(kvm, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	run, err := unix.Mmap(int(vcpu), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap kvm_run: %w", err)
	}
	closers = append(closers, func() { _ = unix.Munmap(run) })
	var sregs [kvmSregsSize]byte
	if _, err := ioctl(int(vcpu), kvmGetSregs, uintptr(unsafe.Pointer(&sregs[0]))); err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	*(*uint64)(unsafe.Pointer(&sregs[0])) = 0  // cs.base
	*(*uint16)(unsafe.Pointer(&sregs[12])) = 0 // cs.selector
	if _, err := ioctl(int(vcpu), kvmSetSregs, uintptr(unsafe.Pointer(&sregs[0]))); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	var regs [18]uint64
	regs[16], regs[17] = 0x1000, 0x2 // rip, rflags
	if _, err := ioctl(int(vcpu), kvmSetRegs, uintptr(unsafe.Pointer(&regs[0]))); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	for range 4 {
		if _, err := ioctl(int(vcpu), kvmRun, 0); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("KVM_RUN: %w", err)
		}
		switch reason := *(*uint32)(unsafe.Pointer(&run[kvmRunExitReasonOffset])); reason {
		case kvmExitHLT:
			return nil
		case kvmExitIO:
		default:
			return fmt.Errorf("KVM_RUN: unexpected exit reason %d", reason)
		}
	}
	return errors.New("KVM_RUN: test guest never halted")
}

// ErrPVM says /dev/kvm is served by the PVM module (kvm_pvm): a
// paravirtualized KVM that runs only PVM-enabled guest kernels. Stock
// guest kernels cannot run on it at all, so banger uses TCG there.
var ErrPVM = errors.New("/dev/kvm is a PVM device (module kvm_pvm): stock guest kernels cannot run on it, so guests run under QEMU TCG emulation")

// PVMDevice reports whether the kvm_pvm module provides /dev/kvm on this
// host (sysModule is normally /sys/module).
func PVMDevice(sysModule string) bool {
	st, err := os.Stat(filepath.Join(sysModule, "kvm_pvm"))
	return err == nil && st.IsDir()
}
