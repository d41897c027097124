package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/bangerdev/banger/internal/model"
)

// ReconcileReport says what Reconcile decided for each VM it touched.
type ReconcileReport struct {
	Reattached []string          // running, VMM verifiably alive: kept as is
	Demoted    []string          // recorded running but the VMM was gone: resources released, now stopped
	RolledBack []string          // caught mid-create/start/stop by a crash: rolled back
	Cleaned    []string          // not running, but held leftovers: released
	Taps       []string          // stale taps deleted
	Errors     map[string]string // VM name (or "taps") -> what failed
}

// Reconcile brings the records in line with the host after a daemon start;
// call it before serving requests. For every VM:
//
//   - running with a VMM found by evidence (pidfile + /proc comm and
//     command-line marker): re-attached untouched (disks, tap and NAT kept;
//     its DNS record re-added);
//   - running without one (the VMM died, or its pid now belongs to another
//     process): demoted to stopped and its resources released;
//   - creating/starting (a crash interrupted the start): the VMM, if any, is
//     killed and everything the start made is released from the stored
//     teardown identity; a VM that was never provisioned also loses its
//     half-made disks and its lease. The VM is left in state "error" naming
//     the interrupted step;
//   - stopping: the stop is finished;
//   - stopped/error with recorded leftovers: they are released.
//
// Afterwards the leftovers of a template that was being made are removed
// (its VMM killed by evidence, its runtime and staging directories), and
// taps carrying banger's prefix that no running VM records (made by a crash
// before their name was stored, or a template's) are deleted. VMs are handled
// concurrently; one failing does not stop the others.
func (m *Manager) Reconcile(ctx context.Context) (*ReconcileReport, error) {
	vms, err := m.o.Store.ListVMs(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	rep := &ReconcileReport{Errors: map[string]string{}}
	var mu sync.Mutex
	add := func(list *[]string, name string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if list != nil {
			*list = append(*list, name)
		}
		if err != nil {
			rep.Errors[name] = errorText(err)
		}
	}
	var wg sync.WaitGroup
	for _, vm := range vms {
		wg.Add(1)
		go func(vm *model.VM) {
			defer wg.Done()
			list, err := m.reconcileOne(ctx, vm, rep)
			if err != nil {
				m.o.Logger.ErrorContext(ctx, "reconcile", "vm", vm.Name, "err", err)
			}
			add(list, vm.Name, err)
		}(vm)
	}
	wg.Wait()
	if err := m.reconcileTemplates(ctx); err != nil {
		rep.Errors["templates"] = errorText(err)
	}

	inUse := map[string]bool{}
	if vms, err := m.o.Store.ListVMs(ctx); err == nil {
		for _, vm := range vms {
			if vm.Runtime.Tap != "" {
				inUse[vm.Runtime.Tap] = true
			}
		}
		taps, err := m.o.Network.Reclaim(ctx, func(t string) bool { return inUse[t] })
		rep.Taps = taps
		if err != nil {
			rep.Errors["taps"] = errorText(err)
		}
	} else {
		rep.Errors["taps"] = errorText(err)
	}
	for _, l := range [][]string{rep.Reattached, rep.Demoted, rep.RolledBack, rep.Cleaned} {
		sort.Strings(l)
	}
	m.o.Logger.InfoContext(ctx, "reconciled", "reattached", rep.Reattached, "demoted", rep.Demoted,
		"rolled_back", rep.RolledBack, "cleaned", rep.Cleaned, "taps", rep.Taps, "errors", len(rep.Errors))
	if len(rep.Errors) > 0 {
		return rep, fmt.Errorf("reconcile: %d problem(s): %v", len(rep.Errors), rep.Errors)
	}
	return rep, nil
}

// reconcileOne decides for one VM and returns the report list it belongs to.
func (m *Manager) reconcileOne(ctx context.Context, vm *model.VM, rep *ReconcileReport) (*[]string, error) {
	switch vm.State {
	case model.StateRunning:
		_, hs, err := m.vmmHandles(ctx, vm)
		if err != nil {
			return nil, err
		}
		if len(hs) > 0 {
			h := hs[0]
			if h.PID != vm.Runtime.PID || vm.Runtime.Marker == "" {
				started := vm.Runtime.StartedAt
				recordHandle(vm, h, m.o.Now())
				if !started.IsZero() {
					vm.Runtime.StartedAt = started
				}
				if err := m.save(ctx, vm); err != nil {
					return nil, err
				}
			}
			if ip, err := netip.ParseAddr(vm.IP); err == nil {
				if m.o.DNS != nil {
					m.o.DNS.Set(vm.Name, ip)
				}
				// Restore the forwards this daemon's predecessor served.
				if len(vm.Ports) > 0 && m.o.Forwards != nil {
					if err := m.o.Forwards.Set(ctx, vm.ID, ip, vm.Ports); err != nil {
						m.o.Logger.WarnContext(ctx, "reconcile: port forwards", "vm", vm.Name, "err", err)
					}
				}
			}
			return &rep.Reattached, nil
		}
		m.o.Logger.WarnContext(ctx, "reconcile: VMM gone; demoting to stopped", "vm", vm.Name, "pid", vm.Runtime.PID)
		vm.State = model.StateStopping
		_, err = m.finishStop(ctx, vm, nil)
		return &rep.Demoted, err

	case model.StateCreating, model.StateStarting:
		interrupted := vm.Runtime.Step
		what := "start"
		if vm.State == model.StateCreating {
			what = "create"
		}
		err := m.teardown(ctx, vm)
		if !vm.Runtime.Provisioned {
			err = errors.Join(err, m.unprovision(ctx, vm))
		}
		vm.Runtime.Step = ""
		vm.State = model.StateError
		vm.Error = fmt.Sprintf("%s was interrupted at step %q when bangerd stopped; its resources were released. Start it again with `banger vm start %s`, or delete it",
			what, interrupted, vm.Name)
		if err != nil {
			vm.Error += "; cleanup problems: " + errorText(err)
		}
		return &rep.RolledBack, errors.Join(err, m.save(ctx, vm))

	case model.StateStopping:
		_, err := m.finishStop(ctx, vm, nil)
		return &rep.RolledBack, err

	default:
		if !hasTransient(vm) {
			return nil, nil
		}
		err := m.teardown(ctx, vm)
		return &rep.Cleaned, errors.Join(err, m.save(ctx, vm))
	}
}

// unprovision removes what an interrupted first start made: root and work
// disks, the VM's directory and its lease. The VM returns to "never
// started".
func (m *Manager) unprovision(ctx context.Context, vm *model.VM) error {
	var errs []error
	if err := m.removeDisks(ctx, vm); err != nil {
		errs = append(errs, err)
	}
	if err := m.o.Store.ReleaseLease(ctx, vm.ID); err != nil {
		errs = append(errs, err)
	} else {
		if vm.IP != "" {
			_ = m.o.Guests.Forget(append(m.aliases(vm), vm.IP)...)
		}
		vm.IP, vm.MAC = "", ""
	}
	return errors.Join(errs...)
}
