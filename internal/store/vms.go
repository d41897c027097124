package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/bangerdev/banger/internal/model"
)

// MinIDPrefix is the shortest id prefix ResolveVM matches.
const MinIDPrefix = 4

// ErrAmbiguous is wrapped by *AmbiguousRefError.
var ErrAmbiguous = errors.New("ambiguous reference")

// AmbiguousRefError is returned by ResolveVM when an id prefix matches
// several VMs.
type AmbiguousRefError struct {
	Ref        string
	Candidates []string // "name (id)", sorted
}

func (e *AmbiguousRefError) Error() string {
	return fmt.Sprintf("%q matches %d VMs: %s (use a longer id prefix or the name)", e.Ref, len(e.Candidates), strings.Join(e.Candidates, ", "))
}

// Unwrap makes errors.Is(err, ErrAmbiguous) true.
func (e *AmbiguousRefError) Unwrap() error { return ErrAmbiguous }

const vmColumns = `id, name, state, image, kernel, driver, vcpu, memory_mib, disk_size_mib, nat, ip, mac, error, runtime, workspace, created_at, updated_at, allow_lan, ports, sandbox`

// CreateVM inserts vm. Zero CreatedAt/UpdatedAt are set to now (on vm as
// well). A taken name or id gives an error wrapping model.ErrAlreadyExists
// that names the VM; an invalid name wraps model.ErrInvalidName.
func (s *Store) CreateVM(ctx context.Context, vm *model.VM) error {
	if vm.ID == "" {
		return fmt.Errorf("create vm %q: empty id", vm.Name)
	}
	if err := model.ValidateName(vm.Name); err != nil {
		return fmt.Errorf("create vm: %w", err)
	}
	now := s.now()
	if vm.CreatedAt.IsZero() {
		vm.CreatedAt = now
	}
	if vm.UpdatedAt.IsZero() {
		vm.UpdatedAt = vm.CreatedAt
	}
	rt, ws, err := vmJSON(vm)
	if err != nil {
		return err
	}
	ports, err := portsJSON(vm)
	if err != nil {
		return err
	}
	sb, err := sandboxJSON(vm)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		vm.ID, vm.Name, string(vm.State), vm.Image, vm.Kernel, vm.Driver, vm.VCPU, vm.MemoryMiB, vm.DiskSizeMiB,
		boolInt(vm.NAT), vm.IP, vm.MAC, vm.Error, rt, ws, formatTime(vm.CreatedAt), formatTime(vm.UpdatedAt),
		boolInt(vm.AllowLAN), ports, sb)
	if err != nil {
		if isConstraint(err) {
			return s.duplicateVM(ctx, vm, err)
		}
		return fmt.Errorf("create vm %s: %w", vm.Name, err)
	}
	return nil
}

// duplicateVM explains which of name or id collided.
func (s *Store) duplicateVM(ctx context.Context, vm *model.VM, cause error) error {
	if other, err := s.GetVMByName(ctx, vm.Name); err == nil && other.ID != vm.ID {
		return fmt.Errorf("%w: a VM named %q already exists (id %s)", model.ErrAlreadyExists, vm.Name, other.ID)
	}
	if other, err := s.GetVM(ctx, vm.ID); err == nil {
		return fmt.Errorf("%w: VM id %s is already used by %q", model.ErrAlreadyExists, vm.ID, other.Name)
	}
	return fmt.Errorf("%w: vm %s: %v", model.ErrAlreadyExists, vm.Name, cause)
}

func vmJSON(vm *model.VM) (runtime string, workspace sql.NullString, err error) {
	rt, err := json.Marshal(vm.Runtime)
	if err != nil {
		return "", workspace, fmt.Errorf("encode runtime of vm %s: %w", vm.Name, err)
	}
	if vm.Workspace != nil {
		ws, err := json.Marshal(vm.Workspace)
		if err != nil {
			return "", workspace, fmt.Errorf("encode workspace of vm %s: %w", vm.Name, err)
		}
		workspace = sql.NullString{String: string(ws), Valid: true}
	}
	return string(rt), workspace, nil
}

// portsJSON encodes the VM's port forwards ("[]" for none).
func portsJSON(vm *model.VM) (string, error) {
	if len(vm.Ports) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(vm.Ports)
	if err != nil {
		return "", fmt.Errorf("encode ports of vm %s: %w", vm.Name, err)
	}
	return string(b), nil
}

// sandboxJSON encodes the VM's E2B sandbox record (NULL for none).
func sandboxJSON(vm *model.VM) (sql.NullString, error) {
	if vm.Sandbox == nil {
		return sql.NullString{}, nil
	}
	b, err := json.Marshal(vm.Sandbox)
	if err != nil {
		return sql.NullString{}, fmt.Errorf("encode sandbox of vm %s: %w", vm.Name, err)
	}
	return sql.NullString{String: string(b), Valid: true}, nil
}

type scanner interface{ Scan(dest ...any) error }

func scanVM(row scanner) (*model.VM, error) {
	var (
		vm                 model.VM
		state, rt, created string
		updated            string
		nat, allowLAN      int
		ws                 sql.NullString
		ports              string
		sb                 sql.NullString
	)
	if err := row.Scan(&vm.ID, &vm.Name, &state, &vm.Image, &vm.Kernel, &vm.Driver, &vm.VCPU, &vm.MemoryMiB,
		&vm.DiskSizeMiB, &nat, &vm.IP, &vm.MAC, &vm.Error, &rt, &ws, &created, &updated, &allowLAN, &ports, &sb); err != nil {
		return nil, err
	}
	vm.State = model.VMState(state)
	vm.NAT = nat != 0
	vm.AllowLAN = allowLAN != 0
	if ports != "" && ports != "[]" {
		if err := json.Unmarshal([]byte(ports), &vm.Ports); err != nil {
			return nil, fmt.Errorf("decode ports of vm %s: %w", vm.Name, err)
		}
	}
	if err := json.Unmarshal([]byte(rt), &vm.Runtime); err != nil {
		return nil, fmt.Errorf("decode runtime of vm %s: %w", vm.Name, err)
	}
	if ws.Valid {
		vm.Workspace = new(model.Workspace)
		if err := json.Unmarshal([]byte(ws.String), vm.Workspace); err != nil {
			return nil, fmt.Errorf("decode workspace of vm %s: %w", vm.Name, err)
		}
	}
	if sb.Valid {
		vm.Sandbox = new(model.Sandbox)
		if err := json.Unmarshal([]byte(sb.String), vm.Sandbox); err != nil {
			return nil, fmt.Errorf("decode sandbox of vm %s: %w", vm.Name, err)
		}
	}
	var err error
	if vm.CreatedAt, err = parseTime(created); err != nil {
		return nil, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	if vm.UpdatedAt, err = parseTime(updated); err != nil {
		return nil, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	return &vm, nil
}

func (s *Store) getVM(ctx context.Context, where string, arg any) (*model.VM, error) {
	vm, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE `+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, model.ErrNotFound
	}
	return vm, err
}

// GetVM returns the VM with this exact id, or an error wrapping
// model.ErrNotFound.
func (s *Store) GetVM(ctx context.Context, id string) (*model.VM, error) {
	vm, err := s.getVM(ctx, "id = ?", id)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, fmt.Errorf("vm with id %q: %w (see `banger vm list`)", id, err)
		}
		return nil, fmt.Errorf("get vm %s: %w", id, err)
	}
	return vm, nil
}

// GetVMByName returns the VM with this exact name, or an error wrapping
// model.ErrNotFound.
func (s *Store) GetVMByName(ctx context.Context, name string) (*model.VM, error) {
	vm, err := s.getVM(ctx, "name = ?", name)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, fmt.Errorf("vm %q: %w (see `banger vm list`)", name, err)
		}
		return nil, fmt.Errorf("get vm %s: %w", name, err)
	}
	return vm, nil
}

// ResolveVM finds the VM a user means by ref: an exact name, else an exact
// id, else a unique id prefix of at least MinIDPrefix characters. A prefix
// matching several VMs gives *AmbiguousRefError; no match gives an error
// wrapping model.ErrNotFound that names ref.
func (s *Store) ResolveVM(ctx context.Context, ref string) (*model.VM, error) {
	if ref == "" {
		return nil, fmt.Errorf("%w: empty VM reference (give a name, id or id prefix)", model.ErrNotFound)
	}
	if vm, err := s.getVM(ctx, "name = ?", ref); !errors.Is(err, model.ErrNotFound) {
		return vm, wrapGet(ref, err)
	}
	if vm, err := s.getVM(ctx, "id = ?", ref); !errors.Is(err, model.ErrNotFound) {
		return vm, wrapGet(ref, err)
	}
	if len(ref) >= MinIDPrefix {
		rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE substr(id, 1, ?) = ? ORDER BY id`, len(ref), ref)
		if err != nil {
			return nil, fmt.Errorf("resolve vm %q: %w", ref, err)
		}
		vms, err := collectVMs(rows)
		if err != nil {
			return nil, fmt.Errorf("resolve vm %q: %w", ref, err)
		}
		switch len(vms) {
		case 0:
		case 1:
			return vms[0], nil
		default:
			amb := &AmbiguousRefError{Ref: ref}
			for _, vm := range vms {
				amb.Candidates = append(amb.Candidates, fmt.Sprintf("%s (%s)", vm.Name, vm.ID))
			}
			sort.Strings(amb.Candidates)
			return nil, amb
		}
	}
	return nil, fmt.Errorf("%w: no VM named %q or with that id or id prefix (see `banger vm list`)", model.ErrNotFound, ref)
}

func wrapGet(ref string, err error) error {
	if err != nil {
		return fmt.Errorf("resolve vm %q: %w", ref, err)
	}
	return nil
}

func collectVMs(rows *sql.Rows) ([]*model.VM, error) {
	defer rows.Close()
	var out []*model.VM
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	return out, rows.Err()
}

// ListVMs returns every VM ordered by creation time, then name.
func (s *Store) ListVMs(ctx context.Context) ([]*model.VM, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY created_at, name`)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	vms, err := collectVMs(rows)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	return vms, nil
}

// UpdateVM writes every field of vm to the record with vm.ID (a zero
// CreatedAt keeps the stored one; a claimed standby VM gets the time of
// its claim) and sets vm.UpdatedAt to now. A missing record gives an
// error wrapping model.ErrNotFound; renaming onto a taken name wraps
// model.ErrAlreadyExists.
func (s *Store) UpdateVM(ctx context.Context, vm *model.VM) error {
	if err := model.ValidateName(vm.Name); err != nil {
		return fmt.Errorf("update vm %s: %w", vm.ID, err)
	}
	rt, ws, err := vmJSON(vm)
	if err != nil {
		return err
	}
	ports, err := portsJSON(vm)
	if err != nil {
		return err
	}
	sb, err := sandboxJSON(vm)
	if err != nil {
		return err
	}
	updated := s.now()
	created := "" // zero: keep the stored one
	if !vm.CreatedAt.IsZero() {
		created = formatTime(vm.CreatedAt)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET name = ?, state = ?, image = ?, kernel = ?, driver = ?, vcpu = ?,
		memory_mib = ?, disk_size_mib = ?, nat = ?, ip = ?, mac = ?, error = ?, runtime = ?, workspace = ?, updated_at = ?,
		allow_lan = ?, ports = ?, sandbox = ?, created_at = COALESCE(NULLIF(?, ''), created_at)
		WHERE id = ?`,
		vm.Name, string(vm.State), vm.Image, vm.Kernel, vm.Driver, vm.VCPU, vm.MemoryMiB, vm.DiskSizeMiB,
		boolInt(vm.NAT), vm.IP, vm.MAC, vm.Error, rt, ws, formatTime(updated), boolInt(vm.AllowLAN), ports, sb, created, vm.ID)
	if err != nil {
		if isConstraint(err) {
			return fmt.Errorf("%w: cannot rename vm %s to %q: a VM with that name exists", model.ErrAlreadyExists, vm.ID, vm.Name)
		}
		return fmt.Errorf("update vm %s: %w", vm.Name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("update vm %s: %w", vm.Name, err)
	} else if n == 0 {
		return fmt.Errorf("update vm %s (%s): %w", vm.Name, vm.ID, model.ErrNotFound)
	}
	vm.UpdatedAt = updated
	return nil
}

// DeleteVM removes the VM record and releases its IP lease in one
// transaction. A missing record gives an error wrapping model.ErrNotFound
// (any lease still held under that id is released all the same).
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	defer rollback(tx)
	if _, err := tx.ExecContext(ctx, `DELETE FROM ip_leases WHERE vm_id = ?`, id); err != nil {
		return fmt.Errorf("delete vm %s: release lease: %w", id, err)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete vm %s: commit: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("delete vm with id %q: %w", id, model.ErrNotFound)
	}
	return nil
}
