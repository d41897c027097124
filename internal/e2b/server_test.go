package e2b

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/envd"
)

// fakeBackend keeps sandboxes in memory; every sandbox's "guest" is one
// real envd server on loopback.
type fakeBackend struct {
	mu      sync.Mutex
	gets    int
	keys    map[string]string // secret -> key id
	sbs     map[string]*Sandbox
	n       int
	token   string
	deleted []string
}

func (f *fakeBackend) VerifyKey(_ context.Context, secret string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id, ok := f.keys[secret]; ok {
		return id, nil
	}
	return "", fmt.Errorf("%w: unknown key", ErrUnauthorized)
}

func (f *fakeBackend) Create(_ context.Context, req CreateRequest) (*Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.Template != BaseTemplate {
		return nil, fmt.Errorf("%w: template %q", ErrNotFound, req.Template)
	}
	f.n++
	sb := &Sandbox{ID: fmt.Sprintf("%016x", 0xabc000+f.n), KeyID: req.KeyID, Template: req.Template, Metadata: req.Metadata,
		Running: true, IP: "127.0.0.1", EnvdToken: f.token, StartedAt: time.Now(), EndAt: time.Now().Add(req.Timeout), VCPU: 2}
	f.sbs[sb.ID] = sb
	cp := *sb
	return &cp, nil
}

func (f *fakeBackend) Get(_ context.Context, id string) (*Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	sb, ok := f.sbs[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	cp := *sb
	return &cp, nil
}

func (f *fakeBackend) List(context.Context) ([]*Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*Sandbox
	for _, sb := range f.sbs {
		cp := *sb
		out = append(out, &cp)
	}
	return out, nil
}

func (f *fakeBackend) Delete(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sbs[id]; !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	delete(f.sbs, id)
	f.deleted = append(f.deleted, id)
	return nil
}

func (f *fakeBackend) SetEnd(_ context.Context, id string, end time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	sb, ok := f.sbs[id]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	sb.EndAt = end
	return nil
}

type selfAccounts struct{ home string }

func (a selfAccounts) Lookup(name string) (*envd.Account, error) {
	u, _ := user.Current()
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &envd.Account{Name: name, UID: uint32(uid), GID: uint32(gid), Home: a.home}, nil
}

const (
	keyA = "e2b_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	keyB = "e2b_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

type fixture struct {
	api     *httptest.Server
	backend *fakeBackend
	home    string
}

func newFixture(t *testing.T, envdToken string) *fixture {
	t.Helper()
	home := t.TempDir()
	guest := envd.New(envd.Options{
		Token:            func() (string, error) { return "guest-token", nil },
		Accounts:         selfAccounts{home: home},
		SwitchCredential: func(*envd.Account) bool { return false },
	})
	gs := httptest.NewServer(guest.Handler())
	t.Cleanup(gs.Close)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(gs.URL, "http://"))
	p, _ := strconv.Atoi(port)
	fb := &fakeBackend{keys: map[string]string{keyA: "ka", keyB: "kb"}, sbs: map[string]*Sandbox{}, token: envdToken}
	srv := New(Options{Backend: fb, EnvdPort: p, ReadyTimeout: 2 * time.Second})
	api := httptest.NewServer(srv.Handler())
	t.Cleanup(api.Close)
	return &fixture{api: api, backend: fb, home: home}
}

func (f *fixture) call(t *testing.T, method, path, key string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, f.api.URL+path, rd)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("X-API-KEY", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func (f *fixture) create(t *testing.T, key string, body map[string]any) sandboxBody {
	t.Helper()
	st, data := f.call(t, "POST", "/v2/sandboxes", key, body)
	if st != http.StatusCreated {
		t.Fatalf("create: %d %s", st, data)
	}
	var sb sandboxBody
	if err := json.Unmarshal(data, &sb); err != nil {
		t.Fatal(err)
	}
	return sb
}

// run starts a command through the router (header routing) and returns
// its stdout and exit code.
func (f *fixture) run(t *testing.T, sandboxID, token, cmd string, hostRouting bool) (string, int32, int) {
	t.Helper()
	msg, _ := json.Marshal(map[string]any{"process": map[string]any{"cmd": "/bin/sh", "args": []string{"-c", cmd}}})
	env := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(env[1:], uint32(len(msg)))
	copy(env[5:], msg)
	req, _ := http.NewRequest("POST", f.api.URL+"/process.Process/Start", bytes.NewReader(env))
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("X-Access-Token", token)
	req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("user:")))
	if hostRouting {
		req.Host = "49983-" + sandboxID + ".sandbox.local"
	} else {
		req.Header.Set("E2b-Sandbox-Id", sandboxID)
		req.Header.Set("E2b-Sandbox-Port", "49983")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", 0, resp.StatusCode
	}
	var out string
	var code int32 = -100
	for {
		flags, payload, err := envd.ReadEnvelope(resp.Body, envd.MaxMessage)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if flags&2 != 0 {
			if string(payload) != "{}" {
				t.Fatalf("stream error: %s", payload)
			}
			return out, code, 200
		}
		var ev envd.EventResponse
		json.Unmarshal(payload, &ev)
		if ev.Event.Data != nil {
			out += string(ev.Event.Data.Stdout)
		}
		if ev.Event.End != nil {
			code = ev.Event.End.ExitCode
		}
	}
}

func TestControlPlaneAuth(t *testing.T) {
	f := newFixture(t, "guest-token")
	for _, key := range []string{"", "e2b_0000000000000000000000000000000000000000", "nope"} {
		if st, data := f.call(t, "POST", "/v2/sandboxes", key, map[string]any{"templateID": "base"}); st != 401 || !strings.Contains(string(data), `"code":401`) {
			t.Errorf("key %q: %d %s", key, st, data)
		}
	}
	if len(f.backend.sbs) != 0 {
		t.Fatal("an unauthenticated request created a sandbox")
	}
}

func TestCreateRunKillAndIsolation(t *testing.T) {
	f := newFixture(t, "guest-token")
	sb := f.create(t, keyA, map[string]any{"templateID": "base", "timeout": 60, "metadata": map[string]string{"k": "v"}, "envVars": map[string]string{"FOO": "from-create"}})
	if sb.SandboxID == "" || sb.EnvdVersion != envd.Version || sb.EnvdAccessToken != "guest-token" || sb.TemplateID != "base" || sb.ClientID == "" {
		t.Fatalf("create body %+v", sb)
	}
	if end := f.backend.sbs[sb.SandboxID].EndAt; time.Until(end) > 61*time.Second || time.Until(end) < 50*time.Second {
		t.Fatalf("end %v", end)
	}
	for _, host := range []bool{false, true} {
		out, code, st := f.run(t, sb.SandboxID, sb.EnvdAccessToken, `echo "$FOO"; exit 4`, host)
		if st != 200 || out != "from-create\n" || code != 4 {
			t.Fatalf("run (host routing %v): %d %q %d", host, st, out, code)
		}
	}
	if _, _, st := f.run(t, sb.SandboxID, "wrong", "true", false); st != 200 {
		// envd answers a stream call with a unary 401
		if st != 401 {
			t.Fatalf("wrong envd token: %d", st)
		}
	} else {
		t.Fatal("wrong envd token accepted")
	}
	// Another key sees nothing of it.
	for _, c := range []struct{ method, path string }{
		{"GET", "/sandboxes/" + sb.SandboxID}, {"DELETE", "/sandboxes/" + sb.SandboxID},
		{"POST", "/v2/sandboxes/" + sb.SandboxID + "/connect"}, {"POST", "/sandboxes/" + sb.SandboxID + "/timeout"},
	} {
		if st, data := f.call(t, c.method, c.path, keyB, map[string]any{"timeout": 10}); st != 404 {
			t.Errorf("key B %s %s: %d %s", c.method, c.path, st, data)
		}
	}
	st, data := f.call(t, "GET", "/v2/sandboxes", keyB, nil)
	if st != 200 || strings.TrimSpace(string(data)) != "[]" {
		t.Fatalf("key B list: %d %s", st, data)
	}
	st, data = f.call(t, "GET", "/v2/sandboxes?metadata="+"k%3Dv", keyA, nil)
	var lst []listedBody
	json.Unmarshal(data, &lst)
	if st != 200 || len(lst) != 1 || lst[0].SandboxID != sb.SandboxID || lst[0].State != "running" || lst[0].Metadata["k"] != "v" {
		t.Fatalf("key A list: %d %s", st, data)
	}
	// timeout and connect extend the end
	if st, data := f.call(t, "POST", "/sandboxes/"+sb.SandboxID+"/timeout", keyA, map[string]any{"timeout": 3600}); st != 204 {
		t.Fatalf("timeout: %d %s", st, data)
	}
	if end := f.backend.sbs[sb.SandboxID].EndAt; time.Until(end) < 3500*time.Second {
		t.Fatalf("timeout not applied: %v", end)
	}
	st, data = f.call(t, "POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", keyA, map[string]any{"timeout": 10})
	var cb sandboxBody
	json.Unmarshal(data, &cb)
	if st != 200 || cb.SandboxID != sb.SandboxID || cb.EnvdAccessToken != "guest-token" {
		t.Fatalf("connect: %d %s", st, data)
	}
	if st, _ := f.call(t, "DELETE", "/sandboxes/"+sb.SandboxID, keyA, nil); st != 204 {
		t.Fatalf("kill: %d", st)
	}
	if st, data := f.call(t, "POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", keyA, map[string]any{}); st != 404 || !strings.Contains(string(data), `"code":404`) {
		t.Fatalf("connect after kill: %d %s", st, data)
	}
	if st, _ := f.call(t, "DELETE", "/sandboxes/"+sb.SandboxID, keyA, nil); st != 404 {
		t.Fatalf("kill twice: %d", st)
	}
	if _, _, st := f.run(t, sb.SandboxID, sb.EnvdAccessToken, "true", false); st != http.StatusBadGateway {
		t.Fatalf("route to killed sandbox: %d", st)
	}
}

func TestCreateErrors(t *testing.T) {
	f := newFixture(t, "guest-token")
	if st, data := f.call(t, "POST", "/v2/sandboxes", keyA, map[string]any{"templateID": "nope"}); st != 404 {
		t.Fatalf("unknown template: %d %s", st, data)
	}
	if st, _ := f.call(t, "POST", "/sandboxes", keyA, map[string]any{"templateID": "base", "timeout": -1}); st != 400 {
		t.Fatalf("bad timeout: %d", st)
	}
	big := map[string]any{"metadata": map[string]string{"x": strings.Repeat("a", maxControlBody)}}
	if st, _ := f.call(t, "POST", "/v2/sandboxes", keyA, big); st != http.StatusRequestEntityTooLarge {
		t.Fatalf("big body: %d", st)
	}
	// A guest whose envd refuses the token never becomes ready: the
	// sandbox is deleted and the create fails.
	g := newFixture(t, "not-the-guest-token")
	if st, data := g.call(t, "POST", "/v2/sandboxes", keyA, map[string]any{}); st != 500 {
		t.Fatalf("not ready: %d %s", st, data)
	}
	if len(g.backend.sbs) != 0 || len(g.backend.deleted) != 1 {
		t.Fatalf("unready sandbox kept: %+v", g.backend.sbs)
	}
	if st, _ := f.call(t, "POST", "/sandboxes/abc/pause", keyA, nil); st != 404 && st != 501 {
		t.Fatalf("pause: %d", st)
	}
}

func TestSandboxTarget(t *testing.T) {
	cases := []struct {
		host, hid, hport string
		id               string
		port             int
		ok               bool
	}{
		{host: "127.0.0.1:3999", ok: false},
		{host: "localhost", ok: false},
		{host: "49983-abc.e2b.local", id: "abc", port: 49983, ok: true},
		{host: "8080-abc.x.y:443", id: "abc", port: 8080, ok: true},
		{host: "99999-abc.x", ok: false},
		{host: "api.e2b.local", ok: false},
		{host: "x", hid: "abc", id: "abc", port: 49983, ok: true},
		{host: "x", hid: "abc", hport: "3000", id: "abc", port: 3000, ok: true},
		{host: "x", hid: "abc", hport: "0", id: "abc", port: -1, ok: true},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = c.host
		if c.hid != "" {
			r.Header.Set("E2b-Sandbox-Id", c.hid)
		}
		if c.hport != "" {
			r.Header.Set("E2b-Sandbox-Port", c.hport)
		}
		id, port, ok := sandboxTarget(r)
		if ok != c.ok || (ok && (id != c.id || port != c.port)) {
			t.Errorf("%+v: got %q %d %v", c, id, port, ok)
		}
	}
}

func TestKeys(t *testing.T) {
	k, err := NewKey()
	if err != nil || !ValidKeyFormat(k) || len(k) != 44 {
		t.Fatalf("key %q %v", k, err)
	}
	for _, bad := range []string{"", "e2b_", "e2b_XYZ", "e2b_" + strings.Repeat("A", 40), "xyz_" + strings.Repeat("a", 40), k + "0"} {
		if ValidKeyFormat(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
	if HashKey(k) == HashKey(k+"x") || len(HashKey(k)) != 64 || strings.Contains(HashKey(k), k[4:]) {
		t.Fatal("hash")
	}
}

func TestRouterCachesLookupsAndForgetsKilled(t *testing.T) {
	f := newFixture(t, "guest-token")
	sb := f.create(t, keyA, nil)
	f.backend.mu.Lock()
	before := f.backend.gets
	f.backend.mu.Unlock()
	for i := 0; i < 5; i++ {
		if _, code, st := f.run(t, sb.SandboxID, sb.EnvdAccessToken, "true", false); st != 200 || code != 0 {
			t.Fatalf("run %d: %d %d", i, st, code)
		}
	}
	f.backend.mu.Lock()
	gets := f.backend.gets - before
	f.backend.mu.Unlock()
	if gets != 1 {
		t.Fatalf("5 routed calls asked the backend %d times, want 1", gets)
	}
	if st, _ := f.call(t, "DELETE", "/sandboxes/"+sb.SandboxID, keyA, nil); st != 204 {
		t.Fatalf("kill: %d", st)
	}
	if _, _, st := f.run(t, sb.SandboxID, sb.EnvdAccessToken, "true", false); st != http.StatusBadGateway {
		t.Fatalf("routed to a killed sandbox from the cache: %d", st)
	}
}
