package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/bangerdev/banger/internal/model"
)

// allocateAttempts bounds retries after a lost race on the UNIQUE
// constraints (only possible if another writer bypassed BEGIN IMMEDIATE).
const allocateAttempts = 5

// AllocateLease returns the address leased to vmID, allocating the lowest
// free address in [first, last] if it has none. It is idempotent per vmID;
// a lease outside [first, last] (the network was reconfigured) is replaced.
// Allocation runs in a write transaction (BEGIN IMMEDIATE) and ip and vm_id
// are UNIQUE, so an address is never handed out twice, across goroutines
// and processes. A full range gives an error wrapping model.ErrExhausted.
func (s *Store) AllocateLease(ctx context.Context, vmID string, first, last netip.Addr) (netip.Addr, error) {
	first, last = first.Unmap(), last.Unmap()
	switch {
	case vmID == "":
		return netip.Addr{}, fmt.Errorf("allocate lease: empty vm id")
	case !first.IsValid() || !last.IsValid():
		return netip.Addr{}, fmt.Errorf("allocate lease for vm %s: invalid range %v-%v", vmID, first, last)
	case first.BitLen() != last.BitLen() || first.Compare(last) > 0:
		return netip.Addr{}, fmt.Errorf("allocate lease for vm %s: bad range %v-%v (first must not be above last, same family)", vmID, first, last)
	}
	var lastErr error
	for attempt := 0; attempt < allocateAttempts; attempt++ {
		ip, err := s.allocateOnce(ctx, vmID, first, last)
		if err == nil || !isConstraint(err) {
			return ip, err
		}
		lastErr = err
	}
	return netip.Addr{}, fmt.Errorf("allocate lease for vm %s: %w", vmID, lastErr)
}

func (s *Store) allocateOnce(ctx context.Context, vmID string, first, last netip.Addr) (netip.Addr, error) {
	tx, err := s.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE (see dsn)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocate lease for vm %s: %w", vmID, err)
	}
	defer rollback(tx)

	var cur string
	switch err := tx.QueryRowContext(ctx, `SELECT ip FROM ip_leases WHERE vm_id = ?`, vmID).Scan(&cur); {
	case err == nil:
		if a, perr := netip.ParseAddr(cur); perr == nil && inRange(a, first, last) {
			return a, nil
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM ip_leases WHERE vm_id = ?`, vmID); err != nil {
			return netip.Addr{}, fmt.Errorf("replace out-of-range lease %s of vm %s: %w", cur, vmID, err)
		}
	case !errors.Is(err, sql.ErrNoRows):
		return netip.Addr{}, fmt.Errorf("allocate lease for vm %s: %w", vmID, err)
	}

	taken, err := leasedAddrs(ctx, tx)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocate lease for vm %s: %w", vmID, err)
	}
	ip := first
	for taken[ip] {
		if ip == last {
			return netip.Addr{}, fmt.Errorf("allocate lease for vm %s: all %s addresses in %v-%v are leased: %w (delete unused VMs or widen network.cidr)",
				vmID, countRange(first, last), first, last, model.ErrExhausted)
		}
		ip = ip.Next()
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO ip_leases (ip, vm_id, created_at) VALUES (?, ?, ?)`,
		ip.String(), vmID, formatTime(s.now())); err != nil {
		return netip.Addr{}, err // isConstraint is checked by the caller
	}
	if err := tx.Commit(); err != nil {
		return netip.Addr{}, fmt.Errorf("allocate lease for vm %s: commit: %w", vmID, err)
	}
	return ip, nil
}

func inRange(a, first, last netip.Addr) bool {
	a = a.Unmap()
	return a.BitLen() == first.BitLen() && a.Compare(first) >= 0 && a.Compare(last) <= 0
}

func countRange(first, last netip.Addr) string {
	if first.Is4() {
		f, l := first.As4(), last.As4()
		n := (uint64(l[0])<<24 | uint64(l[1])<<16 | uint64(l[2])<<8 | uint64(l[3])) -
			(uint64(f[0])<<24 | uint64(f[1])<<16 | uint64(f[2])<<8 | uint64(f[3])) + 1
		return fmt.Sprint(n)
	}
	return "the"
}

func leasedAddrs(ctx context.Context, tx *sql.Tx) (map[netip.Addr]bool, error) {
	rows, err := tx.QueryContext(ctx, `SELECT ip FROM ip_leases`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	taken := map[netip.Addr]bool{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		if a, err := netip.ParseAddr(s); err == nil {
			taken[a.Unmap()] = true
		}
	}
	return taken, rows.Err()
}

// ReleaseLease frees the address leased to vmID. Releasing a VM without a
// lease is not an error.
func (s *Store) ReleaseLease(ctx context.Context, vmID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM ip_leases WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("release lease of vm %s: %w", vmID, err)
	}
	return nil
}

// ListLeases returns every lease in address order.
func (s *Store) ListLeases(ctx context.Context) ([]model.Lease, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT ip, vm_id, created_at FROM ip_leases`)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	defer rows.Close()
	var out []model.Lease
	for rows.Next() {
		var l model.Lease
		var created string
		if err := rows.Scan(&l.IP, &l.VMID, &created); err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		if l.CreatedAt, err = parseTime(created); err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		a, ea := netip.ParseAddr(out[i].IP)
		b, eb := netip.ParseAddr(out[j].IP)
		if ea != nil || eb != nil {
			return out[i].IP < out[j].IP
		}
		return a.Less(b)
	})
	return out, nil
}
