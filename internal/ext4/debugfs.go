package ext4

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
)

// debugfs parses each command line with libss: whitespace separates
// arguments, a double-quoted string is one argument and `""` inside it is a
// literal quote; there is no other escape. Lines are read with fgets into an
// 8 KiB buffer and cut at the first newline or carriage return.

const (
	maxNameLen = 255  // ext4 directory entry name
	maxPathLen = 4095 // PATH_MAX - 1; also keeps every script line under debugfs's 8 KiB buffer
)

// quoteArg returns s as one debugfs argument.
func quoteArg(s string) (string, error) {
	if i := strings.IndexAny(s, "\n\r\x00"); i >= 0 {
		return "", fmt.Errorf("%w: %q contains %q", ErrUnrepresentable, s, s[i])
	}
	if len(s) > maxPathLen {
		return "", fmt.Errorf("%w: argument of %d bytes is longer than %d", ErrUnrepresentable, len(s), maxPathLen)
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`, nil
}

// CheckPath validates an in-image path: absolute, clean, every component at
// most 255 bytes, no newline/CR/NUL. It is what every function of this
// package accepts.
func CheckPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("ext4: path %q is not absolute", p)
	}
	if path.Clean(p) != p {
		return fmt.Errorf("ext4: path %q is not clean (want %q)", p, path.Clean(p))
	}
	if i := strings.IndexAny(p, "\n\r\x00"); i >= 0 {
		return fmt.Errorf("%w: %q contains %q", ErrUnrepresentable, p, p[i])
	}
	if len(p) > maxPathLen {
		return fmt.Errorf("%w: path of %d bytes is longer than %d", ErrUnrepresentable, len(p), maxPathLen)
	}
	for _, c := range strings.Split(p[1:], "/") {
		if len(c) > maxNameLen {
			return fmt.Errorf("%w: name %q... is %d bytes, longer than %d", ErrUnrepresentable, c[:32], len(c), maxNameLen)
		}
	}
	return nil
}

// FileInfo describes one inode as debugfs reports it.
type FileInfo struct {
	Path   string
	Inode  uint64
	Mode   os.FileMode // type bits, permissions, setuid/setgid/sticky
	UID    int
	GID    int
	Size   int64
	Links  int
	Target string // symlink target
}

// IsDir reports whether the inode is a directory.
func (f FileInfo) IsDir() bool { return f.Mode.IsDir() }

// kind classifies an inode for Batch planning.
type kind int

const (
	kindMissing kind = iota
	kindDir
	kindFile // regular file or special file
	kindSymlink
)

func (f FileInfo) kind() kind {
	switch {
	case f.Mode.IsDir():
		return kindDir
	case f.Mode&os.ModeSymlink != 0:
		return kindSymlink
	default:
		return kindFile
	}
}

// unixMode converts an os.FileMode's permission and special bits to the
// low 12 bits of an inode mode. Raw unix bits (0o4000, 0o2000, 0o1000) are
// accepted as well as os.ModeSetuid, os.ModeSetgid and os.ModeSticky.
func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm()) | uint32(m&0o7000)
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

func fileModeFrom(typ string, perm uint32) (os.FileMode, error) {
	m := os.FileMode(perm & 0o777)
	if perm&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if perm&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if perm&0o1000 != 0 {
		m |= os.ModeSticky
	}
	switch typ {
	case "regular":
	case "directory":
		m |= os.ModeDir
	case "symlink":
		m |= os.ModeSymlink
	case "block special":
		m |= os.ModeDevice
	case "character special":
		m |= os.ModeDevice | os.ModeCharDevice
	case "FIFO":
		m |= os.ModeNamedPipe
	case "socket":
		m |= os.ModeSocket
	default:
		return 0, fmt.Errorf("unknown inode type %q", typ)
	}
	return m, nil
}

// parseStat parses the output of debugfs's `stat` command.
func parseStat(p string, out []byte) (FileInfo, error) {
	fi := FileInfo{Path: p}
	s := string(out)
	var typ string
	var perm uint64
	first, _, _ := strings.Cut(s, "\n")
	// Inode: 17   Type: regular    Mode:  04755   Flags: 0x80000
	if !strings.HasPrefix(first, "Inode:") {
		return fi, fmt.Errorf("ext4: unexpected debugfs stat output for %s: %q", p, truncate(s))
	}
	fields := strings.Fields(first)
	for i := 0; i+1 < len(fields); i++ {
		switch fields[i] {
		case "Inode:":
			fi.Inode, _ = strconv.ParseUint(fields[i+1], 10, 64)
		case "Type:":
			typ = fields[i+1]
			if (typ == "block" || typ == "character" || typ == "bad") && i+2 < len(fields) {
				typ += " " + fields[i+2]
			}
		case "Mode:":
			perm, _ = strconv.ParseUint(fields[i+1], 8, 32)
		}
	}
	m, err := fileModeFrom(typ, uint32(perm))
	if err != nil {
		return fi, fmt.Errorf("ext4: stat %s: %w", p, err)
	}
	fi.Mode = m
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "User:":
				fi.UID, _ = strconv.Atoi(f[i+1])
			case "Group:":
				fi.GID, _ = strconv.Atoi(f[i+1])
			case "Size:":
				if f[0] == "User:" {
					fi.Size, _ = strconv.ParseInt(f[i+1], 10, 64)
				}
			case "Links:":
				fi.Links, _ = strconv.Atoi(f[i+1])
			}
		}
	}
	if marker := "Fast link dest: \""; strings.Contains(s, marker) {
		i := strings.Index(s, marker) + len(marker)
		j := strings.LastIndex(s, "\"")
		if j >= i {
			fi.Target = s[i:j]
		}
	}
	return fi, nil
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// debugfsErrors returns stderr lines other than debugfs's version banner.
func debugfsErrors(stderr []byte) []string {
	var errs []string
	for _, l := range strings.Split(string(stderr), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "debugfs ") && strings.HasSuffix(l, ")") {
			continue
		}
		errs = append(errs, l)
	}
	return errs
}

func isNotFound(lines []string) bool {
	for _, l := range lines {
		if strings.Contains(l, "File not found by ext2_lookup") {
			return true
		}
	}
	return false
}

// request runs one read-only debugfs request (-R).
func request(ctx context.Context, r hostexec.Runner, image, req string) (hostexec.Result, []string, error) {
	res, err := r.Run(ctx, hostexec.Cmd{Name: "debugfs", Args: []string{"-R", req, image}})
	if err != nil {
		return res, nil, fmt.Errorf("ext4: debugfs %s on %s: %w", req, image, err)
	}
	return res, debugfsErrors(res.Stderr), nil
}

// Stat describes the inode at path (symlinks are not followed). A missing
// path returns an error wrapping fs.ErrNotExist.
func Stat(ctx context.Context, r hostexec.Runner, image, p string) (FileInfo, error) {
	if err := CheckPath(p); err != nil {
		return FileInfo{}, err
	}
	q, _ := quoteArg(p)
	res, errs, err := request(ctx, r, image, "stat "+q)
	if err != nil {
		return FileInfo{}, err
	}
	if isNotFound(errs) {
		return FileInfo{}, fmt.Errorf("ext4: %s in %s: %w", p, image, fs.ErrNotExist)
	}
	if len(errs) > 0 {
		return FileInfo{}, fmt.Errorf("ext4: stat %s in %s: %s", p, image, strings.Join(errs, "; "))
	}
	fi, err := parseStat(p, res.Stdout)
	if err != nil {
		return fi, err
	}
	if fi.Mode&os.ModeSymlink != 0 && fi.Target == "" && fi.Size > 0 {
		// slow symlink: the target lives in a data block; cat dumps it.
		res, errs, err := request(ctx, r, image, "cat "+q)
		if err != nil {
			return fi, err
		}
		if len(errs) > 0 {
			return fi, fmt.Errorf("ext4: read link %s in %s: %s", p, image, strings.Join(errs, "; "))
		}
		fi.Target = string(res.Stdout)
	}
	return fi, nil
}

// ReadFile returns the content of the regular file at path. A missing path
// returns an error wrapping fs.ErrNotExist.
func ReadFile(ctx context.Context, r hostexec.Runner, image, p string) ([]byte, error) {
	fi, err := Stat(ctx, r, image, p)
	if err != nil {
		return nil, err
	}
	if !fi.Mode.IsRegular() {
		return nil, fmt.Errorf("ext4: read %s in %s: not a regular file (%s)", p, image, fi.Mode.Type())
	}
	q, _ := quoteArg(p)
	res, errs, err := request(ctx, r, image, "cat "+q)
	if err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("ext4: read %s in %s: %s", p, image, strings.Join(errs, "; "))
	}
	if int64(len(res.Stdout)) != fi.Size {
		return nil, fmt.Errorf("ext4: read %s in %s: got %d bytes, inode says %d", p, image, len(res.Stdout), fi.Size)
	}
	return res.Stdout, nil
}

// Extract copies the file or directory tree at path out of the image into
// dstDir/<base name of path> (path "/" copies the root's entries into dstDir
// itself), with `debugfs rdump`. Modes, owners (when run as root) and times
// are kept; hard links become separate files and setuid/setgid bits are
// lost (rdump applies chown after chmod).
func Extract(ctx context.Context, r hostexec.Runner, image, p, dstDir string) error {
	if err := CheckPath(p); err != nil {
		return err
	}
	abs, err := filepath.Abs(dstDir)
	if err != nil {
		return fmt.Errorf("ext4: extract: %w", err)
	}
	if st, err := os.Stat(abs); err != nil || !st.IsDir() {
		return fmt.Errorf("ext4: extract: destination %s must be an existing directory", dstDir)
	}
	if _, err := Stat(ctx, r, image, p); err != nil {
		return err
	}
	src, _ := quoteArg(p)
	dst, err := quoteArg(abs)
	if err != nil {
		return err
	}
	_, errs, err := request(ctx, r, image, "rdump "+src+" "+dst)
	if err != nil {
		return err
	}
	var real []string
	for _, l := range errs {
		if os.Geteuid() != 0 && strings.Contains(l, "while changing ownership") {
			continue // expected without root: files end up owned by the caller
		}
		real = append(real, l)
	}
	if len(real) > 0 {
		return fmt.Errorf("ext4: extract %s from %s: %s", p, image, strings.Join(real, "; "))
	}
	return nil
}

// Batch is an ordered list of edits applied to an image by Apply in one
// `debugfs -w` run. The zero value is an empty batch. Methods record the
// edit; validation errors are reported by Apply. A Batch is not safe for
// concurrent use.
type Batch struct {
	ops []op
	err error
}

type opKind int

const (
	opMkdir opKind = iota
	opWrite
	opSymlink
	opRemove
	opChown
	opChmod
)

type op struct {
	kind     opKind
	path     string
	mode     os.FileMode
	uid, gid int
	data     []byte
	target   string
}

func (b *Batch) add(o op) {
	if b.err != nil {
		return
	}
	if err := CheckPath(o.path); err != nil {
		b.err = err
		return
	}
	if o.path == "/" && o.kind != opChown && o.kind != opChmod && o.kind != opMkdir {
		b.err = fmt.Errorf("ext4: cannot replace or remove the root directory")
		return
	}
	if o.uid < 0 || o.gid < 0 {
		b.err = fmt.Errorf("ext4: %s: negative uid/gid", o.path)
		return
	}
	b.ops = append(b.ops, o)
}

// Len is the number of recorded edits.
func (b *Batch) Len() int { return len(b.ops) }

// Mkdir creates a directory (and missing parents, as root:root 0755) or, if
// it already exists, sets its mode and owner. Mkdir over an existing
// non-directory fails.
func (b *Batch) Mkdir(p string, mode os.FileMode, uid, gid int) {
	b.add(op{kind: opMkdir, path: p, mode: mode, uid: uid, gid: gid})
}

// WriteFile creates a regular file with data, mode and owner, replacing an
// existing file or symlink at path (never following it). The parent must
// exist or be created earlier in the batch.
func (b *Batch) WriteFile(p string, data []byte, mode os.FileMode, uid, gid int) {
	b.add(op{kind: opWrite, path: p, data: append([]byte(nil), data...), mode: mode, uid: uid, gid: gid})
}

// Symlink creates a symlink (owned by root) at path pointing to target,
// replacing an existing file or symlink.
func (b *Batch) Symlink(p, target string) {
	if b.err == nil && target == "" {
		b.err = fmt.Errorf("ext4: symlink %s: empty target", p)
	}
	if b.err == nil {
		if _, err := quoteArg(target); err != nil {
			b.err = fmt.Errorf("ext4: symlink %s: %w", p, err)
		}
	}
	b.add(op{kind: opSymlink, path: p, target: target})
}

// Remove deletes a file, symlink or empty directory; a missing path is not
// an error.
func (b *Batch) Remove(p string) { b.add(op{kind: opRemove, path: p}) }

// Chown sets the owner of an existing inode (symlinks are not followed).
func (b *Batch) Chown(p string, uid, gid int) { b.add(op{kind: opChown, path: p, uid: uid, gid: gid}) }

// Chmod sets the permission and setuid/setgid/sticky bits of an existing
// inode, keeping its type.
func (b *Batch) Chmod(p string, mode os.FileMode) { b.add(op{kind: opChmod, path: p, mode: mode}) }

// ApplyError is returned when debugfs reported errors while applying a
// batch; the image may be partly edited.
type ApplyError struct {
	Image  string
	Errors []string
}

func (e *ApplyError) Error() string {
	return fmt.Sprintf("ext4: debugfs reported errors editing %s: %s", e.Image, strings.Join(e.Errors, "; "))
}

// Apply performs the batch on image. It first probes every path the batch
// touches (one read-only debugfs run) and refuses the whole batch, editing
// nothing, when an edit cannot succeed (parent missing, directory where a
// file is wanted...). It then writes all edits in one `debugfs -w -f` run
// and returns an *ApplyError if debugfs printed any error (debugfs exits 0
// on most failures, so its output is what is checked).
func Apply(ctx context.Context, r hostexec.Runner, image string, b *Batch) error {
	if b.err != nil {
		return b.err
	}
	if len(b.ops) == 0 {
		return nil
	}
	if _, err := os.Stat(image); err != nil {
		return fmt.Errorf("ext4: apply: %w", err)
	}
	if err := ReplayJournal(ctx, r, image); err != nil {
		return err
	}
	// Probe the paths and their ancestors.
	var probe []string
	seen := map[string]bool{}
	for _, o := range b.ops {
		for p := o.path; ; p = path.Dir(p) {
			if !seen[p] {
				seen[p] = true
				probe = append(probe, p)
			}
			if p == "/" {
				break
			}
		}
	}
	state, err := probeKinds(ctx, r, image, probe)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "banger-ext4-")
	if err != nil {
		return fmt.Errorf("ext4: apply: %w", err)
	}
	defer os.RemoveAll(tmp)
	script, err := plan(b.ops, state, tmp)
	if err != nil {
		return err
	}
	sf := filepath.Join(tmp, "script")
	if err := os.WriteFile(sf, script, 0o600); err != nil {
		return fmt.Errorf("ext4: apply: %w", err)
	}
	res, err := r.Run(ctx, hostexec.Cmd{Name: "debugfs", Args: []string{"-w", "-f", sf, image}})
	if err != nil {
		return fmt.Errorf("ext4: apply to %s: %w", image, err)
	}
	if errs := debugfsErrors(res.Stderr); len(errs) > 0 {
		return &ApplyError{Image: image, Errors: errs}
	}
	return nil
}

type probed struct {
	kind kind
	mode os.FileMode
}

// probeKinds stats paths in one read-only run. Output is split on the
// echoed command lines ("debugfs: stat ...") which debugfs prints to stdout
// before each command's own output.
func probeKinds(ctx context.Context, r hostexec.Runner, image string, paths []string) (map[string]probed, error) {
	var script bytes.Buffer
	cmds := make([]string, len(paths))
	for i, p := range paths {
		q, err := quoteArg(p)
		if err != nil {
			return nil, err
		}
		cmds[i] = "stat " + q
		script.WriteString(cmds[i] + "\n")
	}
	tmp, err := os.CreateTemp("", "banger-ext4-probe-")
	if err != nil {
		return nil, fmt.Errorf("ext4: probe: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(script.Bytes()); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("ext4: probe: %w", err)
	}
	tmp.Close()
	res, err := r.Run(ctx, hostexec.Cmd{Name: "debugfs", Args: []string{"-f", tmp.Name(), image}})
	if err != nil {
		return nil, fmt.Errorf("ext4: probe %s: %w", image, err)
	}
	for _, l := range debugfsErrors(res.Stderr) {
		if !strings.Contains(l, "File not found by ext2_lookup") {
			return nil, fmt.Errorf("ext4: probe %s: %s", image, l)
		}
	}
	out := string(res.Stdout)
	state := map[string]probed{}
	for i, p := range paths {
		echo := "debugfs: " + cmds[i] + "\n"
		start := strings.Index(out, echo)
		if start < 0 {
			return nil, fmt.Errorf("ext4: probe %s: debugfs output lacks the echo of %q", image, cmds[i])
		}
		out = out[start+len(echo):]
		seg := out
		if i+1 < len(paths) {
			if next := strings.Index(out, "debugfs: "+cmds[i+1]+"\n"); next >= 0 {
				seg = out[:next]
			}
		}
		if strings.TrimSpace(seg) == "" {
			state[p] = probed{kind: kindMissing}
			continue
		}
		fi, err := parseStat(p, []byte(seg))
		if err != nil {
			return nil, err
		}
		state[p] = probed{kind: fi.kind(), mode: fi.Mode}
	}
	return state, nil
}

// plan turns ops into a debugfs script given the probed state, simulating
// the effect of each op so later ops see earlier ones. Data files are
// written into tmp.
func plan(ops []op, state map[string]probed, tmp string) ([]byte, error) {
	var s bytes.Buffer
	get := func(p string) probed {
		if st, ok := state[p]; ok {
			return st
		}
		// Not probed: a descendant of something created or replaced in
		// this batch, or of a missing path.
		return probed{kind: kindMissing}
	}
	q := func(p string) string { v, _ := quoteArg(p); return v }
	line := func(parts ...string) { s.WriteString(strings.Join(parts, " ")); s.WriteByte('\n') }
	setAttrs := func(p string, typeBits uint32, mode os.FileMode, uid, gid int) {
		line("sif", q(p), "mode", fmt.Sprintf("0%o", typeBits|unixMode(mode)))
		line("sif", q(p), "uid", strconv.Itoa(uid))
		line("sif", q(p), "gid", strconv.Itoa(gid))
	}
	forget := func(p string) { // p removed or replaced: descendants are gone
		for k := range state {
			if strings.HasPrefix(k, p+"/") {
				delete(state, k)
			}
		}
	}
	needParent := func(o op) error {
		parent := path.Dir(o.path)
		switch get(parent).kind {
		case kindDir, kindSymlink: // a symlinked parent is followed inside the image
			return nil
		case kindMissing:
			return fmt.Errorf("ext4: %s: parent directory %s does not exist (add a Mkdir before it)", o.path, parent)
		default:
			return fmt.Errorf("ext4: %s: parent %s is not a directory", o.path, parent)
		}
	}
	for n, o := range ops {
		cur := get(o.path)
		switch o.kind {
		case opMkdir:
			// create missing ancestors first
			var chain []string
			for p := o.path; p != "/"; p = path.Dir(p) {
				chain = append([]string{p}, chain...)
			}
			for _, p := range chain {
				st := get(p)
				switch st.kind {
				case kindMissing:
					line("mkdir", q(p))
					mode, uid, gid := os.FileMode(0o755), 0, 0
					if p == o.path {
						mode, uid, gid = o.mode, o.uid, o.gid
					}
					setAttrs(p, 0o040000, mode, uid, gid)
					state[p] = probed{kind: kindDir, mode: os.ModeDir | mode}
				case kindDir:
					if p == o.path {
						setAttrs(p, 0o040000, o.mode, o.uid, o.gid)
					}
				case kindSymlink:
					if p == o.path {
						return nil, fmt.Errorf("ext4: mkdir %s: a symlink exists there", p)
					}
				default:
					return nil, fmt.Errorf("ext4: mkdir %s: %s exists and is not a directory", o.path, p)
				}
			}
			if o.path == "/" {
				setAttrs("/", 0o040000, o.mode, o.uid, o.gid)
			}
		case opWrite:
			if err := needParent(o); err != nil {
				return nil, err
			}
			switch cur.kind {
			case kindDir:
				return nil, fmt.Errorf("ext4: write %s: a directory exists there", o.path)
			case kindFile, kindSymlink:
				line("rm", q(o.path))
			}
			host := filepath.Join(tmp, strconv.Itoa(n))
			if err := os.WriteFile(host, o.data, 0o600); err != nil {
				return nil, fmt.Errorf("ext4: stage %s: %w", o.path, err)
			}
			line("cd", q(path.Dir(o.path)))
			line("write", q(host), q(path.Base(o.path)))
			line("cd", q("/"))
			setAttrs(o.path, 0o100000, o.mode, o.uid, o.gid)
			state[o.path] = probed{kind: kindFile, mode: o.mode}
		case opSymlink:
			if err := needParent(o); err != nil {
				return nil, err
			}
			switch cur.kind {
			case kindDir:
				return nil, fmt.Errorf("ext4: symlink %s: a directory exists there", o.path)
			case kindFile, kindSymlink:
				line("rm", q(o.path))
			}
			line("cd", q(path.Dir(o.path)))
			line("symlink", q(path.Base(o.path)), q(o.target))
			line("cd", q("/"))
			state[o.path] = probed{kind: kindSymlink, mode: os.ModeSymlink | 0o777}
		case opRemove:
			switch cur.kind {
			case kindMissing:
				continue
			case kindDir:
				for k, st := range state {
					if strings.HasPrefix(k, o.path+"/") && st.kind != kindMissing {
						return nil, fmt.Errorf("ext4: remove %s: directory is not empty (%s)", o.path, k)
					}
				}
				line("rmdir", q(o.path))
			default:
				line("rm", q(o.path))
			}
			forget(o.path)
			state[o.path] = probed{kind: kindMissing}
		case opChown:
			if cur.kind == kindMissing {
				return nil, fmt.Errorf("ext4: chown %s: %w", o.path, fs.ErrNotExist)
			}
			line("sif", q(o.path), "uid", strconv.Itoa(o.uid))
			line("sif", q(o.path), "gid", strconv.Itoa(o.gid))
		case opChmod:
			if cur.kind == kindMissing {
				return nil, fmt.Errorf("ext4: chmod %s: %w", o.path, fs.ErrNotExist)
			}
			line("sif", q(o.path), "mode", fmt.Sprintf("0%o", typeBits(cur.mode)|unixMode(o.mode)))
			cur.mode = cur.mode.Type() | o.mode
			state[o.path] = cur
		}
	}
	return s.Bytes(), nil
}

func typeBits(m os.FileMode) uint32 {
	switch {
	case m.IsDir():
		return 0o040000
	case m&os.ModeSymlink != 0:
		return 0o120000
	case m&os.ModeNamedPipe != 0:
		return 0o010000
	case m&os.ModeSocket != 0:
		return 0o140000
	case m&os.ModeCharDevice != 0:
		return 0o020000
	case m&os.ModeDevice != 0:
		return 0o060000
	default:
		return 0o100000
	}
}
