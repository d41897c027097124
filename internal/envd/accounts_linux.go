package envd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RunAsUser runs fn on a thread whose filesystem uid, gid and
// supplementary groups are a's, so every path fn touches is checked by the
// kernel as a would be. The thread is never handed back to the Go
// scheduler: the goroutine exits locked and the runtime retires it.
func RunAsUser(a *Account, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread's credentials are not restored.
		groups := a.Groups
		if len(groups) == 0 {
			groups = []uint32{a.GID}
		}
		// setgroups(2) on this thread only (syscall.Setgroups changes
		// every thread of the process).
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(unsafe.Pointer(&groups[0])), 0); e != 0 {
			errc <- fmt.Errorf("setgroups for %s: %w", a.Name, e)
			return
		}
		unix.Setfsgid(int(a.GID))
		unix.Setfsuid(int(a.UID))
		// setfsuid reports the previous value, not errors: verify.
		if prev, _ := unix.SetfsuidRetUid(-1); prev != int(a.UID) {
			errc <- fmt.Errorf("switch the filesystem uid to %s (%d): still %d", a.Name, a.UID, prev)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// EnsuringAccounts is FileAccounts that creates DefaultUser on first
// lookup when the image lacks it (EnsureUser). Creating it lazily, not at
// agent start, matters: the agent starts early in boot, possibly before
// the root filesystem is writable.
type EnsuringAccounts struct {
	Root string
	UID  uint32 // preferred uid of the created user (the next free one if taken)

	mu sync.Mutex
}

// Lookup implements Accounts.
func (e *EnsuringAccounts) Lookup(name string) (*Account, error) {
	fa := FileAccounts{Root: e.Root}
	a, err := fa.Lookup(name)
	if err == nil || name != DefaultUser || !errors.Is(err, ErrNoUser) {
		return a, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := EnsureUser(e.Root, name, e.UID); err != nil {
		return nil, err
	}
	return fa.Lookup(name)
}

// EnsureUser creates user name (home /home/<name>, shell /bin/bash when
// present) under root when it does not exist: with useradd when the image
// has it, else by appending to passwd, group and shadow.
func EnsureUser(root, name string, uid uint32) error {
	if _, err := (FileAccounts{Root: root}).Lookup(name); err == nil {
		return nil
	} else if !errors.Is(err, ErrNoUser) {
		return err
	}
	uid = freeUID(root, uid)
	shell := "/bin/sh"
	if _, err := os.Stat(filepath.Join(root, "bin/bash")); err == nil {
		shell = "/bin/bash"
	}
	home := "/home/" + name
	appendLine := func(file, line string) error {
		p := filepath.Join(root, file)
		data, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if len(data) > 0 && !strings.HasSuffix(string(data), "\n") {
			line = "\n" + line
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(line + "\n"); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if err := appendLine("etc/group", fmt.Sprintf("%s:x:%d:", name, uid)); err != nil {
		return fmt.Errorf("add user %s: %w", name, err)
	}
	if err := appendLine("etc/passwd", fmt.Sprintf("%s:x:%d:%d::%s:%s", name, uid, uid, home, shell)); err != nil {
		return fmt.Errorf("add user %s: %w", name, err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/shadow")); err == nil {
		if err := appendLine("etc/shadow", name+":*:19000:0:99999:7:::"); err != nil {
			return fmt.Errorf("add user %s: %w", name, err)
		}
	}
	h := filepath.Join(root, home)
	if err := os.MkdirAll(h, 0o750); err != nil {
		return fmt.Errorf("add user %s: home: %w", name, err)
	}
	if err := os.Chown(h, int(uid), int(uid)); err != nil {
		return fmt.Errorf("add user %s: home: %w", name, err)
	}
	return nil
}

// freeUID returns want, or the next uid (and gid) no passwd or group entry
// under root uses.
func freeUID(root string, want uint32) uint32 {
	used := map[uint32]bool{}
	for _, f := range []string{"etc/passwd", "etc/group"} {
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if fs := strings.Split(line, ":"); len(fs) >= 3 {
				if n, err := strconv.ParseUint(fs[2], 10, 32); err == nil {
					used[uint32(n)] = true
				}
			}
		}
	}
	for used[want] {
		want++
	}
	return want
}
