package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// cpioWriter writes a newc ("070701") cpio archive, the format the kernel
// unpacks into its initial rootfs. Entries get mtime 0 and uid/gid 0 so the
// output is reproducible.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

const (
	cpioModeDir  = 0o040000
	cpioModeReg  = 0o100000
	cpioModeLink = 0o120000
	cpioModeChr  = 0o020000
)

func (c *cpioWriter) header(name string, mode uint32, size int, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == cpioModeDir {
		nlink = 2
	}
	fields := []uint32{c.ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rdevMajor, rdevMinor, uint32(len(name) + 1), 0}
	var b strings.Builder
	b.WriteString("070701")
	for _, f := range fields {
		fmt.Fprintf(&b, "%08X", f)
	}
	b.WriteString(name)
	b.WriteByte(0)
	for (b.Len())%4 != 0 {
		b.WriteByte(0)
	}
	_, c.err = io.WriteString(c.w, b.String())
}

func (c *cpioWriter) data(p []byte) {
	if c.err != nil {
		return
	}
	if _, c.err = c.w.Write(p); c.err != nil {
		return
	}
	if pad := (4 - len(p)%4) % 4; pad > 0 {
		_, c.err = c.w.Write(make([]byte, pad))
	}
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm uint32) { c.header(name, cpioModeDir|perm, 0, 0, 0) }

// File adds a regular file.
func (c *cpioWriter) File(name string, perm uint32, content []byte) {
	c.header(name, cpioModeReg|perm, len(content), 0, 0)
	c.data(content)
}

// Symlink adds a symbolic link.
func (c *cpioWriter) Symlink(name, target string) {
	c.header(name, cpioModeLink|0o777, len(target), 0, 0)
	c.data([]byte(target))
}

// CharDev adds a character device node (needs no privileges: the kernel creates it).
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) {
	c.header(name, cpioModeChr|perm, 0, major, minor)
}

// Close writes the trailer.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	return c.err
}

// CpioEntry is one entry read back from a newc archive.
type CpioEntry struct {
	Name string
	Mode uint32 // full st_mode (type and permission bits)
	Size int64
	Data []byte // regular file contents or symlink target
}

// readCpio parses a newc archive until the trailer, calling fn per entry.
func readCpio(r io.Reader, fn func(CpioEntry) error) error {
	br := bufio.NewReader(r)
	var off int64
	skip := func(n int64) error {
		if _, err := io.CopyN(io.Discard, br, n); err != nil {
			return err
		}
		off += n
		return nil
	}
	for {
		hdr := make([]byte, 110)
		if _, err := io.ReadFull(br, hdr); err != nil {
			return fmt.Errorf("cpio: truncated header: %w", err)
		}
		off += 110
		if string(hdr[:6]) != "070701" && string(hdr[:6]) != "070702" {
			return errors.New("cpio: not a newc archive")
		}
		field := func(i int) (uint32, error) {
			v, err := strconv.ParseUint(string(hdr[6+8*i:6+8*i+8]), 16, 32)
			return uint32(v), err
		}
		mode, err1 := field(1)
		size, err2 := field(6)
		nameSize, err3 := field(11)
		if err := errors.Join(err1, err2, err3); err != nil {
			return fmt.Errorf("cpio: bad header field: %w", err)
		}
		if nameSize == 0 || nameSize > 4096 || size > 1<<30 {
			return errors.New("cpio: implausible header sizes")
		}
		name := make([]byte, nameSize)
		if _, err := io.ReadFull(br, name); err != nil {
			return fmt.Errorf("cpio: truncated name: %w", err)
		}
		off += int64(nameSize)
		if err := skip((4 - off%4) % 4); err != nil {
			return fmt.Errorf("cpio: %w", err)
		}
		n := strings.TrimRight(string(name), "\x00")
		if n == "TRAILER!!!" {
			return nil
		}
		e := CpioEntry{Name: n, Mode: mode, Size: int64(size)}
		if mode&0o170000 == cpioModeReg || mode&0o170000 == cpioModeLink {
			e.Data = make([]byte, size)
			if _, err := io.ReadFull(br, e.Data); err != nil {
				return fmt.Errorf("cpio: truncated data of %s: %w", n, err)
			}
			off += int64(size)
		} else if err := skip(int64(size)); err != nil {
			return fmt.Errorf("cpio: %w", err)
		}
		if err := skip((4 - off%4) % 4); err != nil {
			return fmt.Errorf("cpio: %w", err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}
