package envd

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Port is the guest TCP port envd listens on (E2B's).
const Port = 49983

// Version is the envd version this server implements the API of. The SDK
// picks request shapes by it (0.5.7: octet-stream uploads).
const Version = "0.5.7"

// DefaultUser is the user of requests that name none (the SDK's default).
const DefaultUser = "user"

// DefaultMaxUpload bounds one POST /files request body.
const DefaultMaxUpload = 1 << 30

// AccessToken derives the envd access token from a VM's agent token. It is
// one-way: a sandbox user holding it learns nothing about the agent token.
func AccessToken(agentToken string) string {
	m := hmac.New(sha256.New, []byte(agentToken))
	m.Write([]byte("banger envd access token v1"))
	return hex.EncodeToString(m.Sum(nil))
}

// Account is a guest user as envd runs things for it.
type Account struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups
	Home   string
	Shell  string
}

// Accounts looks users up.
type Accounts interface {
	// Lookup returns the account of name, or an error wrapping
	// ErrNoUser.
	Lookup(name string) (*Account, error)
}

// Options configure a Server.
type Options struct {
	// Token returns the access token requests must carry; an empty token
	// (or an error) refuses everything.
	Token func() (string, error)
	// Accounts resolves request users.
	Accounts Accounts
	// AsUser runs fn with the filesystem identity of a (see RunAsUser);
	// nil runs fn as the server's own identity (tests).
	AsUser func(a *Account, fn func() error) error
	// Credential reports whether processes must switch to a's uid/gid
	// (false when the server already runs as that user); nil: always.
	SwitchCredential func(a *Account) bool
	// MaxUpload bounds one upload (DefaultMaxUpload when 0).
	MaxUpload int64
	// BaseEnv is the environment every process starts from (PATH...).
	BaseEnv []string
	Logger  *slog.Logger
}

// Server serves envd's API. Create it with New; the zero value is not
// usable.
type Server struct {
	o     Options
	procs *processTable

	mu      sync.Mutex
	envVars map[string]string // set by POST /init
}

// New returns a Server.
func New(o Options) *Server {
	if o.MaxUpload == 0 {
		o.MaxUpload = DefaultMaxUpload
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.AsUser == nil {
		o.AsUser = func(_ *Account, fn func() error) error { return fn() }
	}
	if o.SwitchCredential == nil {
		o.SwitchCredential = func(*Account) bool { return true }
	}
	return &Server{o: o, procs: newProcessTable(), envVars: map[string]string{}}
}

// Handler returns the HTTP handler of every route.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("POST /init", s.handleInit)
	mux.HandleFunc("GET /files", s.handleDownload)
	mux.HandleFunc("POST /files", s.handleUpload)
	rpcs := map[string]http.HandlerFunc{
		"/process.Process/Start":         s.processStart,
		"/process.Process/Connect":       s.processConnect,
		"/process.Process/List":          s.processList,
		"/process.Process/SendInput":     s.processSendInput,
		"/process.Process/SendSignal":    s.processSendSignal,
		"/process.Process/CloseStdin":    s.processCloseStdin,
		"/filesystem.Filesystem/Stat":    s.fsStat,
		"/filesystem.Filesystem/ListDir": s.fsListDir,
		"/filesystem.Filesystem/MakeDir": s.fsMakeDir,
		"/filesystem.Filesystem/Move":    s.fsMove,
		"/filesystem.Filesystem/Remove":  s.fsRemove,
	}
	for path, h := range rpcs {
		mux.HandleFunc("POST "+path, h)
	}
	mux.HandleFunc("POST /process.Process/", unimplemented)
	mux.HandleFunc("POST /filesystem.Filesystem/", unimplemented)
	return s.authenticate(mux)
}

func unimplemented(w http.ResponseWriter, r *http.Request) {
	writeUnaryError(w, errorf(CodeUnimplemented, "%s is not implemented by banger's envd", r.URL.Path))
}

// authenticate checks X-Access-Token on every request.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.tokenOK(r.Header.Get("X-Access-Token")) {
			if strings.HasPrefix(r.URL.Path, "/process.") || strings.HasPrefix(r.URL.Path, "/filesystem.") {
				writeUnaryError(w, errorf(CodeUnauthenticated, "missing or wrong access token"))
				return
			}
			writeHTTPError(w, http.StatusUnauthorized, "missing or wrong access token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) tokenOK(got string) bool {
	if s.o.Token == nil {
		return false
	}
	want, err := s.o.Token()
	if err != nil || want == "" || got == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// writeHTTPError answers a plain-HTTP route with envd's JSON error body.
func writeHTTPError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{status, msg})
}

// initRequest is the body of POST /init (a subset of envd's).
type initRequest struct {
	EnvVars map[string]string `json:"envVars"`
}

func (s *Server) handleInit(w http.ResponseWriter, r *http.Request) {
	var req initRequest
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxMessage+1))
	if err != nil || len(data) > MaxMessage {
		writeHTTPError(w, http.StatusBadRequest, "read request: too large or torn")
		return
	}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &req); err != nil {
			writeHTTPError(w, http.StatusBadRequest, "decode request: "+err.Error())
			return
		}
	}
	s.mu.Lock()
	for k, v := range req.EnvVars {
		s.envVars[k] = v
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) sandboxEnv() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.envVars))
	for k, v := range s.envVars {
		out[k] = v
	}
	return out
}

// rpcUser is the account of an RPC: the Basic username, or DefaultUser.
func (s *Server) rpcUser(r *http.Request) (*Account, error) {
	name := ""
	if h := r.Header.Get("Authorization"); h != "" {
		enc, ok := strings.CutPrefix(h, "Basic ")
		if !ok {
			return nil, errorf(CodeInvalidArgument, "authorization header: only Basic <user:> is understood")
		}
		raw, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return nil, errorf(CodeInvalidArgument, "authorization header: %v", err)
		}
		name, _, _ = strings.Cut(string(raw), ":")
	}
	return s.account(name)
}

func (s *Server) account(name string) (*Account, error) {
	if name == "" {
		name = DefaultUser
	}
	a, err := s.o.Accounts.Lookup(name)
	if err != nil {
		return nil, errorf(CodeInvalidArgument, "user %q: %v", name, err)
	}
	return a, nil
}

// requestContext applies the Connect-Timeout-Ms header.
func requestContext(r *http.Request) (context.Context, context.CancelFunc, error) {
	v := r.Header.Get("Connect-Timeout-Ms")
	if v == "" {
		ctx, cancel := context.WithCancel(r.Context())
		return ctx, cancel, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 || len(v) > 10 {
		return nil, nil, errorf(CodeInvalidArgument, "Connect-Timeout-Ms %q is not a positive integer of at most 10 digits", v)
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(ms)*time.Millisecond)
	return ctx, cancel, nil
}

// ListenAndServe serves s on addr until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("envd: listen %s: %w", addr, err)
	}
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		s.procs.killAll()
	}()
	err = hs.Serve(ln)
	if err == http.ErrServerClosed {
		return nil
	}
	return err
}
