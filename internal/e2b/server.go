package e2b

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/envd"
)

// Defaults of Options.
const (
	DefaultTimeout      = 300 * time.Second // a sandbox's life when the request names none
	DefaultReadyTimeout = 3 * time.Minute
	maxControlBody      = 1 << 20
	clientID            = "banger"
)

// Options configure a Server.
type Options struct {
	Backend Backend
	// EnvdPort is the guest port of envd (envd.Port when 0); tests point
	// it elsewhere.
	EnvdPort int
	// ReadyTimeout bounds the wait for a new sandbox's envd.
	ReadyTimeout time.Duration
	// Transport reaches guests (a pooled http.Transport when nil).
	Transport http.RoundTripper
	Logger    *slog.Logger
	Now       func() time.Time
}

// routeTTL is how long the router reuses a sandbox's address and state:
// a command loop would otherwise ask the daemon once per call. A kill
// through this server drops the entry at once; a sandbox deleted
// elsewhere (timeout, `vm delete`) is routed to for at most this long.
const routeTTL = 2 * time.Second

// Server is the E2B-compatible API. Create it with New.
type Server struct {
	o      Options
	client *http.Client
	proxy  *httputil.ReverseProxy

	mu     sync.Mutex
	routes map[string]routeEntry
}

type routeEntry struct {
	sb      *Sandbox
	expires time.Time
}

// lookupRoute returns the sandbox for routing, from the cache when fresh.
func (s *Server) lookupRoute(ctx context.Context, id string) (*Sandbox, error) {
	now := s.o.Now()
	s.mu.Lock()
	e, ok := s.routes[id]
	s.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.sb, nil
	}
	sb, err := s.o.Backend.Get(ctx, id)
	if err != nil {
		s.forget(id)
		return nil, err
	}
	s.mu.Lock()
	if len(s.routes) > 4096 { // bounded: drop everything rather than track ages
		s.routes = map[string]routeEntry{}
	}
	s.routes[id] = routeEntry{sb: sb, expires: now.Add(routeTTL)}
	s.mu.Unlock()
	return sb, nil
}

func (s *Server) forget(id string) {
	s.mu.Lock()
	delete(s.routes, id)
	s.mu.Unlock()
}

// New returns a Server.
func New(o Options) *Server {
	if o.EnvdPort == 0 {
		o.EnvdPort = envd.Port
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = DefaultReadyTimeout
	}
	if o.Transport == nil {
		// No connection reuse towards guests: a pooled connection could
		// be closed under a new streaming response by the late
		// cancellation of the request that used it before (seen as a
		// cut Connect stream, "use of closed network connection"). A new
		// TCP connection to a guest on the local bridge costs next to
		// nothing.
		o.Transport = &http.Transport{
			DialContext:       (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			DisableKeepAlives: true,
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{o: o, client: &http.Client{Transport: o.Transport}, routes: map[string]routeEntry{}}
	s.proxy = &httputil.ReverseProxy{
		Rewrite:       func(*httputil.ProxyRequest) {}, // the target is set by route
		Transport:     o.Transport,
		FlushInterval: -1, // Connect streams: every event at once
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			o.Logger.Debug("e2b router", "url", r.URL.String(), "err", err)
			writeError(w, http.StatusBadGateway, "sandbox unreachable: "+err.Error())
		},
	}
	return s
}

// apiError is the control plane's (and the router's) error body.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(apiError{Code: status, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// backendError answers err with the status its sentinel implies.
func backendError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrUnauthorized):
		writeError(w, http.StatusUnauthorized, err.Error())
	case errors.Is(err, ErrBadRequest):
		writeError(w, http.StatusBadRequest, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// Handler returns the handler serving both the control plane and the
// router.
func (s *Server) Handler() http.Handler {
	cp := http.NewServeMux()
	cp.HandleFunc("POST /sandboxes", s.auth(s.create))
	cp.HandleFunc("POST /v2/sandboxes", s.auth(s.create))
	cp.HandleFunc("GET /sandboxes", s.auth(s.list))
	cp.HandleFunc("GET /v2/sandboxes", s.auth(s.list))
	cp.HandleFunc("GET /sandboxes/{id}", s.auth(s.get))
	cp.HandleFunc("DELETE /sandboxes/{id}", s.auth(s.kill))
	cp.HandleFunc("POST /sandboxes/{id}/timeout", s.auth(s.timeout))
	cp.HandleFunc("POST /sandboxes/{id}/connect", s.auth(s.connect))
	cp.HandleFunc("POST /v2/sandboxes/{id}/connect", s.auth(s.connect))
	cp.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	cp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotImplemented, fmt.Sprintf("%s %s is not implemented by banger's E2B API", r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, port, ok := sandboxTarget(r); ok {
			s.route(w, r, id, port)
			return
		}
		cp.ServeHTTP(w, r)
	})
}

// sandboxTarget finds the sandbox a request is for: the E2b-Sandbox-Id
// header (port from E2b-Sandbox-Port), or a Host "<port>-<id>.<domain>".
func sandboxTarget(r *http.Request) (id string, port int, ok bool) {
	if id := r.Header.Get("E2b-Sandbox-Id"); id != "" {
		port := envd.Port
		if p := r.Header.Get("E2b-Sandbox-Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return id, -1, true
			}
			port = n
		}
		return id, port, true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, _, found := strings.Cut(host, ".")
	if !found {
		return "", 0, false
	}
	ps, id, found := strings.Cut(label, "-")
	if !found || id == "" {
		return "", 0, false
	}
	n, err := strconv.Atoi(ps)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, false
	}
	return id, n, true
}

// validID: sandbox ids are banger VM ids (lower-case hex).
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// route proxies an envd (or other guest port) request to its sandbox.
func (s *Server) route(w http.ResponseWriter, r *http.Request, id string, port int) {
	if port < 0 {
		writeError(w, http.StatusBadRequest, "E2b-Sandbox-Port is not a port number")
		return
	}
	if !validID(id) {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("sandbox %q not found", id))
		return
	}
	sb, err := s.lookupRoute(r.Context(), id)
	if err != nil || !sb.Running || sb.IP == "" {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("sandbox %q not found or not running", id))
		return
	}
	if port == envd.Port {
		port = s.o.EnvdPort
	}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort(sb.IP, strconv.Itoa(port))}
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = target.Scheme, target.Host
	out.Host = target.Host
	out.RequestURI = ""
	out.Header.Del("E2b-Sandbox-Id")
	out.Header.Del("E2b-Sandbox-Port")
	// An HTTP/1 server closes the request body once response headers
	// are flushed; the transport's final read of the forwarded body then
	// fails and it closes the guest connection under the streaming
	// response (a cut Connect stream, "use of closed network
	// connection"). Full duplex keeps the body readable.
	_ = http.NewResponseController(w).EnableFullDuplex()
	s.proxy.ServeHTTP(w, out)
}

type keyCtx struct{}

// auth checks X-API-KEY and passes the key id on in the context.
func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		secret := r.Header.Get("X-API-KEY")
		if secret == "" {
			writeError(w, http.StatusUnauthorized, "missing X-API-KEY: create a key with `banger e2b key create`")
			return
		}
		id, err := s.o.Backend.VerifyKey(r.Context(), secret)
		if err != nil {
			if errors.Is(err, ErrUnauthorized) {
				writeError(w, http.StatusUnauthorized, "invalid API key")
				return
			}
			backendError(w, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), keyCtx{}, id)))
	}
}

func keyID(r *http.Request) string { v, _ := r.Context().Value(keyCtx{}).(string); return v }

// readBody decodes a JSON body of at most maxControlBody bytes (an empty
// body leaves v alone).
func readBody(w http.ResponseWriter, r *http.Request, v any) bool {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxControlBody+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "read body: "+err.Error())
		return false
	}
	if len(data) > maxControlBody {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", maxControlBody))
		return false
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return true
	}
	if err := json.Unmarshal(data, v); err != nil {
		writeError(w, http.StatusBadRequest, "decode body: "+err.Error())
		return false
	}
	return true
}

// owned returns the caller's sandbox id, or answers 404.
func (s *Server) owned(w http.ResponseWriter, r *http.Request) (*Sandbox, bool) {
	id := r.PathValue("id")
	if !validID(id) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("sandbox %q not found", id))
		return nil, false
	}
	sb, err := s.o.Backend.Get(r.Context(), id)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			writeError(w, http.StatusNotFound, fmt.Sprintf("sandbox %q not found", id))
			return nil, false
		}
		backendError(w, err)
		return nil, false
	}
	if sb.KeyID != keyID(r) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("sandbox %q not found", id))
		return nil, false
	}
	return sb, true
}

// createBody is the subset of E2B's NewSandbox the API honours.
type createBody struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int64            `json:"timeout"` // seconds
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
}

// sandboxBody is E2B's Sandbox (create and connect answers).
type sandboxBody struct {
	TemplateID      string  `json:"templateID"`
	SandboxID       string  `json:"sandboxID"`
	Alias           string  `json:"alias,omitempty"`
	ClientID        string  `json:"clientID"`
	EnvdVersion     string  `json:"envdVersion"`
	EnvdAccessToken string  `json:"envdAccessToken,omitempty"`
	Domain          *string `json:"domain"`
}

func (s *Server) sandboxBody(sb *Sandbox) sandboxBody {
	return sandboxBody{TemplateID: sb.Template, SandboxID: sb.ID, Alias: sb.Template, ClientID: clientID,
		EnvdVersion: envd.Version, EnvdAccessToken: sb.EnvdToken}
}

// listedBody is E2B's ListedSandbox (and, with the token, SandboxDetail).
type listedBody struct {
	TemplateID      string            `json:"templateID"`
	Alias           string            `json:"alias,omitempty"`
	SandboxID       string            `json:"sandboxID"`
	ClientID        string            `json:"clientID"`
	StartedAt       time.Time         `json:"startedAt"`
	EndAt           time.Time         `json:"endAt"`
	CPUCount        int               `json:"cpuCount"`
	MemoryMB        int64             `json:"memoryMB"`
	DiskSizeMB      int64             `json:"diskSizeMB"`
	Metadata        map[string]string `json:"metadata"`
	State           string            `json:"state"`
	EnvdVersion     string            `json:"envdVersion"`
	EnvdAccessToken string            `json:"envdAccessToken,omitempty"`
	Domain          *string           `json:"domain"`
}

func listed(sb *Sandbox) listedBody {
	state := "running"
	if !sb.Running {
		state = "paused"
	}
	md := sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return listedBody{TemplateID: sb.Template, Alias: sb.Template, SandboxID: sb.ID, ClientID: clientID,
		StartedAt: sb.StartedAt.UTC(), EndAt: sb.EndAt.UTC(), CPUCount: sb.VCPU, MemoryMB: sb.MemoryMiB,
		DiskSizeMB: sb.DiskMiB, Metadata: md, State: state, EnvdVersion: envd.Version}
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var body createBody
	if !readBody(w, r, &body) {
		return
	}
	timeout := DefaultTimeout
	if body.Timeout != nil {
		if *body.Timeout <= 0 || *body.Timeout > 86400 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("timeout %d s: give 1 to 86400 seconds", *body.Timeout))
			return
		}
		timeout = time.Duration(*body.Timeout) * time.Second
	}
	tmpl := body.TemplateID
	if tmpl == "" {
		tmpl = BaseTemplate
	}
	sb, err := s.o.Backend.Create(r.Context(), CreateRequest{
		KeyID: keyID(r), Template: tmpl, Metadata: body.Metadata, Timeout: timeout,
		Internet: body.AllowInternetAccess != nil && *body.AllowInternetAccess,
	})
	if err != nil {
		backendError(w, err)
		return
	}
	if err := s.waitReady(r.Context(), sb, body.EnvVars); err != nil {
		s.o.Logger.Warn("sandbox not ready: deleting it", "id", sb.ID, "err", err)
		if derr := s.o.Backend.Delete(context.WithoutCancel(r.Context()), sb.ID); derr != nil {
			s.o.Logger.Warn("delete sandbox", "id", sb.ID, "err", derr)
		}
		writeError(w, http.StatusInternalServerError, fmt.Sprintf("sandbox %s did not become ready: %v", sb.ID, err))
		return
	}
	s.o.Logger.Info("sandbox created", "id", sb.ID, "template", sb.Template, "key", sb.KeyID)
	writeJSON(w, http.StatusCreated, s.sandboxBody(sb))
}

// waitReady polls the guest's envd health until it answers, then hands
// it the sandbox's environment variables.
func (s *Server) waitReady(ctx context.Context, sb *Sandbox, env map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, s.o.ReadyTimeout)
	defer cancel()
	base := "http://" + net.JoinHostPort(sb.IP, strconv.Itoa(s.o.EnvdPort))
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/health", nil)
		req.Header.Set("X-Access-Token", sb.EnvdToken)
		resp, err := s.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				break
			}
			last = fmt.Errorf("envd health: %s", resp.Status)
			if resp.StatusCode == http.StatusUnauthorized {
				return last // a wrong token will not heal
			}
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if len(env) == 0 {
		return nil
	}
	data, _ := json.Marshal(map[string]any{"envVars": env})
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/init", bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Access-Token", sb.EnvdToken)
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("envd init: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("envd init: %s", resp.Status)
	}
	return nil
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	all, err := s.o.Backend.List(r.Context())
	if err != nil {
		backendError(w, err)
		return
	}
	q := r.URL.Query()
	want := map[string]string{}
	if md := q.Get("metadata"); md != "" {
		vals, err := url.ParseQuery(md)
		if err != nil {
			writeError(w, http.StatusBadRequest, "metadata filter: "+err.Error())
			return
		}
		for k := range vals {
			want[k] = vals.Get(k)
		}
	}
	out := []listedBody{}
	for _, sb := range all {
		if sb.KeyID != keyID(r) {
			continue
		}
		match := true
		for k, v := range want {
			if sb.Metadata[k] != v {
				match = false
			}
		}
		if match {
			out = append(out, listed(sb))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.owned(w, r)
	if !ok {
		return
	}
	b := listed(sb)
	b.EnvdAccessToken = sb.EnvdToken
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.owned(w, r)
	if !ok {
		return
	}
	s.forget(sb.ID)
	if err := s.o.Backend.Delete(r.Context(), sb.ID); err != nil {
		backendError(w, err)
		return
	}
	s.forget(sb.ID)
	s.o.Logger.Info("sandbox killed", "id", sb.ID)
	w.WriteHeader(http.StatusNoContent)
}

type timeoutBody struct {
	Timeout *int64 `json:"timeout"` // seconds from now
}

func (s *Server) timeout(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.owned(w, r)
	if !ok {
		return
	}
	var body timeoutBody
	if !readBody(w, r, &body) {
		return
	}
	if body.Timeout == nil || *body.Timeout <= 0 || *body.Timeout > 86400 {
		writeError(w, http.StatusBadRequest, "timeout: give 1 to 86400 seconds")
		return
	}
	if err := s.o.Backend.SetEnd(r.Context(), sb.ID, s.o.Now().Add(time.Duration(*body.Timeout)*time.Second)); err != nil {
		backendError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	sb, ok := s.owned(w, r)
	if !ok {
		return
	}
	var body timeoutBody
	if !readBody(w, r, &body) {
		return
	}
	if !sb.Running {
		writeError(w, http.StatusConflict, fmt.Sprintf("sandbox %s is not running (start it with `banger vm start %s`)", sb.ID, sb.ID))
		return
	}
	// Connecting extends the sandbox's life to at least the timeout.
	if body.Timeout != nil && *body.Timeout > 0 && *body.Timeout <= 86400 {
		end := s.o.Now().Add(time.Duration(*body.Timeout) * time.Second)
		if end.After(sb.EndAt) {
			if err := s.o.Backend.SetEnd(r.Context(), sb.ID, end); err != nil {
				backendError(w, err)
				return
			}
		}
	}
	writeJSON(w, http.StatusOK, s.sandboxBody(sb))
}
