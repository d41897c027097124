package envd

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// resolvePath makes p absolute for a: "~" and "~/x" are the home,
// relative paths are relative to the home; the result is cleaned. It
// grants nothing: every operation on it runs with a's filesystem identity,
// so the kernel checks each component (".." and symlinks included).
func resolvePath(a *Account, p string) string {
	switch {
	case p == "~":
		p = a.Home
	case strings.HasPrefix(p, "~/"):
		p = filepath.Join(a.Home, p[2:])
	case !filepath.IsAbs(p):
		p = filepath.Join(a.Home, p)
	}
	return filepath.Clean(p)
}

// fsError maps a filesystem error to a Connect error.
func fsError(op, path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errorf(CodeNotFound, "%s %s: no such file or directory", op, path)
	case errors.Is(err, fs.ErrPermission):
		return errorf(CodePermissionDenied, "%s %s: permission denied", op, path)
	case errors.Is(err, fs.ErrExist):
		return errorf(CodeAlreadyExists, "%s %s: already exists", op, path)
	case errors.Is(err, syscall.ENOTDIR):
		return errorf(CodeInvalidArgument, "%s %s: not a directory", op, path)
	case errors.Is(err, syscall.ENOSPC):
		return errorf(CodeResourceExhausted, "%s %s: no space left on device", op, path)
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return errorf(CodeInternal, "%s %s: %v", op, path, err)
}

// entryInfo describes path (not following a final symlink).
func entryInfo(path string) (*EntryInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	return infoOf(path, fi), nil
}

func infoOf(path string, fi fs.FileInfo) *EntryInfo {
	e := &EntryInfo{
		Name:         fi.Name(),
		Path:         path,
		Size:         fi.Size(),
		Mode:         uint32(fi.Mode().Perm()),
		Permissions:  fi.Mode().String(),
		ModifiedTime: fi.ModTime().UTC().Format(time.RFC3339Nano),
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = FileTypeSymlink
		if t, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = &t
		}
	case fi.IsDir():
		e.Type = FileTypeDirectory
	default:
		e.Type = FileTypeFile
	}
	e.Mode = uint32(fi.Mode().Perm()) | modeType(fi.Mode())
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Owner = userName(st.Uid)
		e.Group = groupName(st.Gid)
	}
	return e
}

// modeType is the S_IFMT bits of m.
func modeType(m fs.FileMode) uint32 {
	switch {
	case m&fs.ModeSymlink != 0:
		return syscall.S_IFLNK
	case m.IsDir():
		return syscall.S_IFDIR
	case m.IsRegular():
		return syscall.S_IFREG
	}
	return 0
}

func userName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	return strconv.FormatUint(uint64(uid), 10)
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
		return g.Name
	}
	return strconv.FormatUint(uint64(gid), 10)
}

// fsCall runs a unary filesystem RPC: decode req, resolve the user, run fn
// with the user's filesystem identity, answer its result.
func fsCall[Req any](s *Server, w http.ResponseWriter, r *http.Request, fn func(a *Account, req *Req) (any, error)) {
	var req Req
	if err := readUnary(r, &req); err != nil {
		writeUnaryError(w, err)
		return
	}
	a, err := s.rpcUser(r)
	if err != nil {
		writeUnaryError(w, err)
		return
	}
	var resp any
	err = s.o.AsUser(a, func() error {
		var ferr error
		resp, ferr = fn(a, &req)
		return ferr
	})
	if err != nil {
		writeUnaryError(w, err)
		return
	}
	writeUnary(w, resp)
}

func (s *Server) fsStat(w http.ResponseWriter, r *http.Request) {
	fsCall(s, w, r, func(a *Account, req *PathRequest) (any, error) {
		p := resolvePath(a, req.Path)
		e, err := entryInfo(p)
		if err != nil {
			return nil, fsError("stat", p, err)
		}
		return &EntryResponse{Entry: e}, nil
	})
}

// maxListDepth bounds ListDir's recursion.
const maxListDepth = 32

func (s *Server) fsListDir(w http.ResponseWriter, r *http.Request) {
	fsCall(s, w, r, func(a *Account, req *ListDirRequest) (any, error) {
		p := resolvePath(a, req.Path)
		depth := int(req.Depth)
		if depth == 0 {
			depth = 1
		}
		if depth > maxListDepth {
			return nil, errorf(CodeInvalidArgument, "depth %d: at most %d", depth, maxListDepth)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fsError("list", p, err)
		}
		if !fi.IsDir() {
			return nil, errorf(CodeInvalidArgument, "list %s: not a directory", p)
		}
		resp := &ListDirResponse{Entries: []*EntryInfo{}}
		if err := listDir(p, depth, &resp.Entries); err != nil {
			return nil, fsError("list", p, err)
		}
		return resp, nil
	})
}

func listDir(dir string, depth int, out *[]*EntryInfo) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		fi, err := de.Info()
		if err != nil {
			continue // vanished meanwhile
		}
		*out = append(*out, infoOf(p, fi))
		if depth > 1 && de.IsDir() {
			if err := listDir(p, depth-1, out); err != nil && !errors.Is(err, fs.ErrPermission) {
				return err
			}
		}
	}
	return nil
}

func (s *Server) fsMakeDir(w http.ResponseWriter, r *http.Request) {
	fsCall(s, w, r, func(a *Account, req *PathRequest) (any, error) {
		p := resolvePath(a, req.Path)
		if fi, err := os.Lstat(p); err == nil {
			if fi.IsDir() {
				return nil, errorf(CodeAlreadyExists, "directory %s already exists", p)
			}
			return nil, errorf(CodeInvalidArgument, "%s exists and is not a directory", p)
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, fsError("make directory", p, err)
		}
		e, err := entryInfo(p)
		if err != nil {
			return nil, fsError("stat", p, err)
		}
		return &EntryResponse{Entry: e}, nil
	})
}

func (s *Server) fsMove(w http.ResponseWriter, r *http.Request) {
	fsCall(s, w, r, func(a *Account, req *MoveRequest) (any, error) {
		src, dst := resolvePath(a, req.Source), resolvePath(a, req.Destination)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, fsError("move", dst, err)
		}
		if err := os.Rename(src, dst); err != nil {
			return nil, fsError("move", src, err)
		}
		e, err := entryInfo(dst)
		if err != nil {
			return nil, fsError("stat", dst, err)
		}
		return &EntryResponse{Entry: e}, nil
	})
}

func (s *Server) fsRemove(w http.ResponseWriter, r *http.Request) {
	fsCall(s, w, r, func(a *Account, req *PathRequest) (any, error) {
		p := resolvePath(a, req.Path)
		if _, err := os.Lstat(p); err != nil {
			return nil, fsError("remove", p, err)
		}
		if err := os.RemoveAll(p); err != nil {
			return nil, fsError("remove", p, err)
		}
		return struct{}{}, nil
	})
}
