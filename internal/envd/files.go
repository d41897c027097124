package envd

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
)

// httpStatus maps a filesystem error for the plain-HTTP /files routes.
func httpStatus(err error) (int, string) {
	e := asError(err)
	switch e.Code {
	case CodeNotFound:
		return http.StatusNotFound, e.Message
	case CodeInvalidArgument, CodeFailedPrecondition:
		return http.StatusBadRequest, e.Message
	case CodePermissionDenied:
		return http.StatusForbidden, e.Message
	case CodeResourceExhausted:
		return http.StatusInsufficientStorage, e.Message
	case CodeAlreadyExists:
		return http.StatusConflict, e.Message
	}
	return http.StatusInternalServerError, e.Message
}

func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request) {
	a, err := s.account(r.URL.Query().Get("username"))
	if err != nil {
		writeHTTPError(w, http.StatusBadRequest, asError(err).Message)
		return
	}
	q := r.URL.Query().Get("path")
	if q == "" {
		writeHTTPError(w, http.StatusBadRequest, "path is required")
		return
	}
	p := resolvePath(a, q)
	var f *os.File
	var size int64
	err = s.o.AsUser(a, func() error {
		var oerr error
		if f, oerr = os.Open(p); oerr != nil {
			return fsError("open", p, oerr)
		}
		fi, serr := f.Stat()
		if serr != nil {
			f.Close()
			return fsError("stat", p, serr)
		}
		if fi.IsDir() {
			f.Close()
			return errorf(CodeInvalidArgument, "%s is a directory", p)
		}
		size = fi.Size()
		return nil
	})
	if err != nil {
		status, msg := httpStatus(err)
		writeHTTPError(w, status, msg)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": filepath.Base(p)}))
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, io.LimitReader(f, size))
}

// writeFile writes r to path as a (parents made as needed).
func (s *Server) writeFile(a *Account, path string, r io.Reader) (*WriteInfo, error) {
	err := s.o.AsUser(a, func() error {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fsError("make directory", filepath.Dir(path), err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return fsError("create", path, err)
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return errorf(CodeResourceExhausted, "upload larger than %d bytes", mbe.Limit)
			}
			return fsError("write", path, err)
		}
		if err := f.Close(); err != nil {
			return fsError("write", path, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &WriteInfo{Name: filepath.Base(path), Type: "file", Path: path}, nil
}

func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	a, err := s.account(r.URL.Query().Get("username"))
	if err != nil {
		writeHTTPError(w, http.StatusBadRequest, asError(err).Message)
		return
	}
	if r.ContentLength > s.o.MaxUpload {
		writeHTTPError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("upload of %d bytes is larger than the limit of %d", r.ContentLength, s.o.MaxUpload))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.o.MaxUpload)
	query := r.URL.Query().Get("path")
	fail := func(err error) {
		status, msg := httpStatus(err)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) || asError(err).Code == CodeResourceExhausted {
			status, msg = http.StatusRequestEntityTooLarge, fmt.Sprintf("upload larger than %d bytes", s.o.MaxUpload)
		}
		writeHTTPError(w, status, msg)
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(r.Body)
		if err != nil {
			writeHTTPError(w, http.StatusBadRequest, "gzip body: "+err.Error())
			return
		}
		defer gz.Close()
		// The decompressed size is bounded too.
		body = http.MaxBytesReader(w, io.NopCloser(gz), s.o.MaxUpload)
	}
	ct, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var out []*WriteInfo
	switch ct {
	case "application/octet-stream":
		if query == "" {
			writeHTTPError(w, http.StatusBadRequest, "path is required for an octet-stream upload")
			return
		}
		wi, err := s.writeFile(a, resolvePath(a, query), body)
		if err != nil {
			fail(err)
			return
		}
		out = append(out, wi)
	case "multipart/form-data":
		if params["boundary"] == "" {
			writeHTTPError(w, http.StatusBadRequest, "multipart body without a boundary")
			return
		}
		mr, err := r.MultipartReader()
		if err != nil {
			writeHTTPError(w, http.StatusBadRequest, "multipart body: "+err.Error())
			return
		}
		for {
			part, err := mr.NextRawPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				fail(errorf(CodeInvalidArgument, "multipart body: %v", err))
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			// The raw file name: mime/multipart's FileName() keeps only
			// the base name, and the SDK sends whole paths.
			_, dp, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
			target := query
			if target == "" {
				target = dp["filename"]
			}
			if target == "" {
				part.Close()
				writeHTTPError(w, http.StatusBadRequest, "a file part has no path: give ?path= or a file name")
				return
			}
			wi, err := s.writeFile(a, resolvePath(a, target), part)
			part.Close()
			if err != nil {
				fail(err)
				return
			}
			out = append(out, wi)
		}
		if len(out) == 0 {
			writeHTTPError(w, http.StatusBadRequest, "no file part in the multipart body")
			return
		}
	default:
		writeHTTPError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q: use multipart/form-data or application/octet-stream", ct))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(out)
}
