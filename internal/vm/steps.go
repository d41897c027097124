package vm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// Operation names (StepError.Op, Options.StepHook).
const (
	OpCreate    = "create" // the first start of a VM: provisions its disks
	OpStart     = "start"
	OpStop      = "stop"
	OpKill      = "kill"
	OpDestroy   = "destroy"
	OpTeardown  = "teardown"
	OpReconcile = "reconcile"
)

// Steps of create and start, in order. Create runs all of them; a later
// start reuses the disks (StepRootDisk re-attaches, StepWorkDisk keeps).
// A create that restores a template (template.go) adds StepTemplate after
// StepArtifacts and StepIdentity after StepVMM, and clones the template's
// disks instead of the image's.
const (
	StepCleanup     = "cleanup"      // release what a failed teardown left recorded
	StepArtifacts   = "artifacts"    // ensure image and kernel; resolve the driver
	StepLease       = "lease"        // IP lease (stable across starts) and MAC
	StepRootDisk    = "root-disk"    // copy-on-write root disk over the image
	StepWorkDisk    = "work-disk"    // /root disk: seeded, authorized_keys, git identity
	StepGuestConfig = "guest-config" // hostname, hosts, network, host key into the root disk
	StepTap         = "tap"          // tap on the bridge (warm pool)
	StepNAT         = "nat"          // network policy: tap bound to IP+MAC; NAT and LAN access as the VM says
	StepPorts       = "ports"        // port forwards from the host (only for VMs with ports)
	StepVMM         = "vmm"          // VMM process
	StepDNS         = "dns"          // <name>.vm record
	StepSSH         = "ssh"          // wait until the guest's sshd accepts the key
)

// Steps of stop and teardown (teardown runs every step even when one
// fails).
const (
	StepShutdown  = "shutdown"    // sync + poweroff over ssh, wait, else kill
	StepRelease   = "release-vmm" // make sure the VMM is gone
	StepUnPorts   = "ports-off"
	StepUnNAT     = "nat-off"
	StepUntap     = "tap-off"
	StepUnDNS     = "dns-off"
	StepDetach    = "disk-detach"
	StepRunDir    = "runtime-dir"
	StepRemove    = "remove-disks"
	StepForgetKey = "known-hosts"
	StepUnlease   = "release-lease"
)

// StepError is returned when a step of an operation failed. Undo holds the
// joined errors of the undos that failed (nil when every undo succeeded).
type StepError struct {
	Op   string
	VM   string
	Step string
	Err  error
	Undo error
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("%s %s: %s: %v", e.Op, e.VM, e.Step, e.Err)
	if e.Undo != nil {
		msg += fmt.Sprintf(" (and cleaning up failed: %v)", e.Undo)
	}
	return msg
}

// Unwrap returns the step's error and the undo errors.
func (e *StepError) Unwrap() []error {
	if e.Undo == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Undo}
}

// step is one named step of an operation. do pushes an undo for every
// resource it makes, right after the resource's teardown identity is
// recorded.
type step struct {
	name   string
	detail string
	do     func(ctx context.Context, u *undoStack) error
	// when, if set, is asked right before the step: false skips it
	// (no stage, no hook), for steps an earlier step decides about.
	when func() bool
}

type undoItem struct {
	name string
	fn   func(ctx context.Context) error
}

// undoStack collects the undos of an operation.
type undoStack struct{ items []undoItem }

func (u *undoStack) push(name string, fn func(ctx context.Context) error) {
	u.items = append(u.items, undoItem{name, fn})
}

// run runs the undos in reverse order, every one of them, and joins their
// errors.
func (u *undoStack) run(ctx context.Context) error {
	var errs []error
	for i := len(u.items) - 1; i >= 0; i-- {
		it := u.items[i]
		if err := it.fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", it.name, err))
		}
	}
	u.items = nil
	return errors.Join(errs...)
}

// undoTimeout bounds the cleanup after a failed operation.
const undoTimeout = 2 * time.Minute

// runSteps runs steps in order for vm, recording the current step in the
// store and reporting it as a progress stage. On the first failure (or when
// ctx ends) it runs the undos pushed so far, in reverse, on a context that
// is not cancelled, and returns a *StepError.
func (m *Manager) runSteps(ctx context.Context, op string, vm *model.VM, steps []step) error {
	var u undoStack
	fail := func(name string, err error) error {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		if len(u.items) > 0 {
			progress.Stage(ctx, "rollback", fmt.Sprintf("undoing %d step(s) after %s failed", len(u.items), name))
		}
		uerr := u.run(uctx)
		if uerr != nil {
			m.o.Logger.ErrorContext(ctx, "undo failed", "vm", vm.Name, "op", op, "step", name, "err", uerr)
		}
		return &StepError{Op: op, VM: vm.Name, Step: name, Err: err, Undo: uerr}
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return fail(s.name, fmt.Errorf("cancelled: %w", context.Cause(ctx)))
		}
		if s.when != nil && !s.when() {
			continue
		}
		vm.Runtime.Step = s.name
		if err := m.save(ctx, vm); err != nil {
			return fail(s.name, err)
		}
		progress.Stage(ctx, s.name, s.detail)
		if h := m.o.StepHook; h != nil {
			if err := h(ctx, vm.ID, op, s.name); err != nil {
				return fail(s.name, err)
			}
		}
		start := m.o.Now()
		if err := s.do(ctx, &u); err != nil {
			return fail(s.name, err)
		}
		m.o.Logger.DebugContext(ctx, "step done", "vm", vm.Name, "op", op, "step", s.name, "took", m.o.Now().Sub(start))
	}
	return nil
}

// runAll runs every step, even after failures, and joins the errors (each
// prefixed by its step name). It is the shape of teardown.
func (m *Manager) runAll(ctx context.Context, op string, vm *model.VM, steps []step) error {
	var errs []error
	for _, s := range steps {
		if h := m.o.StepHook; h != nil {
			if err := h(ctx, vm.ID, op, s.name); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
				continue
			}
		}
		if err := s.do(ctx, nil); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		}
	}
	return errors.Join(errs...)
}

// errorText is err's message for the VM record, bounded in size.
func errorText(err error) string {
	msg := strings.TrimSpace(err.Error())
	if len(msg) > 4000 {
		msg = msg[:4000] + " ..."
	}
	return msg
}
