package envd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNoUser is wrapped when a user does not exist.
var ErrNoUser = errors.New("no such user")

// FileAccounts reads accounts from passwd and group files under Root
// ("/" in a guest). It reads them on every lookup: users added while the
// agent runs are seen.
type FileAccounts struct {
	Root string
}

// Lookup implements Accounts.
func (f FileAccounts) Lookup(name string) (*Account, error) {
	pf, err := os.Open(filepath.Join(f.Root, "etc/passwd"))
	if err != nil {
		return nil, fmt.Errorf("read passwd: %w", err)
	}
	defer pf.Close()
	a, err := parsePasswd(pf, name)
	if err != nil {
		return nil, err
	}
	if gf, err := os.Open(filepath.Join(f.Root, "etc/group")); err == nil {
		defer gf.Close()
		a.Groups = parseGroups(gf, a.Name, a.GID)
	} else {
		a.Groups = []uint32{a.GID}
	}
	return a, nil
}

// parsePasswd finds name in a passwd(5) stream.
func parsePasswd(r io.Reader, name string) (*Account, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 7 || f[0] != name {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("passwd entry of %s: bad uid or gid", name)
		}
		home := f[5]
		if home == "" {
			home = "/"
		}
		return &Account{Name: name, UID: uint32(uid), GID: uint32(gid), Home: home, Shell: f[6]}, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read passwd: %w", err)
	}
	return nil, fmt.Errorf("%w: %s", ErrNoUser, name)
}

// parseGroups returns gid and the gids of the groups listing user.
func parseGroups(r io.Reader, user string, gid uint32) []uint32 {
	out := []uint32{gid}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 4 {
			continue
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == user {
				if g, err := strconv.ParseUint(f[2], 10, 32); err == nil && uint32(g) != gid {
					out = append(out, uint32(g))
				}
				break
			}
		}
	}
	return out
}
