package envd

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testToken = "tok-123"

// fakeAccounts maps every name to the test's own identity with home.
type fakeAccounts struct{ home string }

func (f fakeAccounts) Lookup(name string) (*Account, error) {
	if name != "user" && name != "root" {
		return nil, fmt.Errorf("%w: %s", ErrNoUser, name)
	}
	u, _ := user.Current()
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &Account{Name: name, UID: uint32(uid), GID: uint32(gid), Home: f.home, Shell: "/bin/sh"}, nil
}

func newTestServer(t *testing.T, mut func(*Options)) (*httptest.Server, string) {
	t.Helper()
	home := t.TempDir()
	o := Options{
		Token:            func() (string, error) { return testToken, nil },
		Accounts:         fakeAccounts{home: home},
		SwitchCredential: func(*Account) bool { return false },
		MaxUpload:        1 << 20,
	}
	if mut != nil {
		mut(&o)
	}
	ts := httptest.NewServer(New(o).Handler())
	t.Cleanup(ts.Close)
	return ts, home
}

func do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func unary(t *testing.T, ts *httptest.Server, method string, body any, out any) (int, *Error) {
	t.Helper()
	data, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", ts.URL+"/"+method, bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Access-Token", testToken)
	resp := do(t, req)
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		var e Error
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("%s: status %d, undecodable error %q", method, resp.StatusCode, raw)
		}
		return resp.StatusCode, &e
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s: decode %q: %v", method, raw, err)
		}
	}
	return 200, nil
}

func envelope(v any) []byte {
	data, _ := json.Marshal(v)
	var b bytes.Buffer
	_ = WriteEnvelope(&b, 0, data)
	return b.Bytes()
}

// startStream calls Process/Start and returns every event and the end error.
func startStream(t *testing.T, ts *httptest.Server, method string, req any, hdr map[string]string) ([]*ProcessEvent, *Error) {
	t.Helper()
	r, _ := http.NewRequest("POST", ts.URL+"/process.Process/"+method, bytes.NewReader(envelope(req)))
	r.Header.Set("Content-Type", "application/connect+json")
	r.Header.Set("X-Access-Token", testToken)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	resp := do(t, r)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/connect+json" {
		t.Fatalf("%s: status %d %s", method, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var evs []*ProcessEvent
	for {
		flags, payload, err := ReadEnvelope(resp.Body, MaxMessage)
		if err != nil {
			t.Fatalf("stream ended without end-of-stream envelope: %v", err)
		}
		if flags&flagEndStream != 0 {
			var es endStream
			if err := json.Unmarshal(payload, &es); err != nil {
				t.Fatalf("end stream %q: %v", payload, err)
			}
			if _, _, err := ReadEnvelope(resp.Body, MaxMessage); err != io.EOF {
				t.Fatalf("data after end of stream: %v", err)
			}
			return evs, es.Error
		}
		var er EventResponse
		if err := json.Unmarshal(payload, &er); err != nil {
			t.Fatalf("event %q: %v", payload, err)
		}
		evs = append(evs, er.Event)
	}
}

func collect(evs []*ProcessEvent) (pid uint32, stdout, stderr string, end *EndEvent) {
	for _, e := range evs {
		switch {
		case e.Start != nil:
			pid = e.Start.PID
		case e.Data != nil:
			stdout += string(e.Data.Stdout)
			stderr += string(e.Data.Stderr)
		case e.End != nil:
			end = e.End
		}
	}
	return
}

func TestEnvelopeRoundTripAndErrors(t *testing.T) {
	var b bytes.Buffer
	if err := WriteEnvelope(&b, flagEndStream, []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	raw := append([]byte(nil), b.Bytes()...)
	flags, p, err := ReadEnvelope(&b, 100)
	if err != nil || flags != flagEndStream || string(p) != `{"a":1}` {
		t.Fatalf("round trip: %x %q %v", flags, p, err)
	}
	if _, _, err := ReadEnvelope(&b, 100); err != io.EOF {
		t.Fatalf("clean end: %v", err)
	}
	if _, _, err := ReadEnvelope(bytes.NewReader(raw[:len(raw)-1]), 100); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("torn payload: %v", err)
	}
	if _, _, err := ReadEnvelope(bytes.NewReader(raw[:3]), 100); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("torn header: %v", err)
	}
	big := make([]byte, 5)
	binary.BigEndian.PutUint32(big[1:], 101)
	if _, _, err := ReadEnvelope(bytes.NewReader(big), 100); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
}

func TestCodeHTTPStatus(t *testing.T) {
	for code, want := range map[Code]int{CodeNotFound: 404, CodeUnauthenticated: 401, CodeInvalidArgument: 400,
		CodeAlreadyExists: 409, CodeResourceExhausted: 429, CodeUnimplemented: 501, CodeInternal: 500, CodeCanceled: 499} {
		if got := code.HTTPStatus(); got != want {
			t.Errorf("%s: %d, want %d", code, got, want)
		}
	}
}

func TestTokenCheckedOnEveryRoute(t *testing.T) {
	ts, _ := newTestServer(t, nil)
	routes := []struct{ method, path, ct string }{
		{"GET", "/health", ""},
		{"GET", "/files?path=x", ""},
		{"POST", "/files?path=x", "application/octet-stream"},
		{"POST", "/init", "application/json"},
		{"POST", "/process.Process/List", "application/json"},
		{"POST", "/process.Process/Start", "application/connect+json"},
		{"POST", "/filesystem.Filesystem/Stat", "application/json"},
	}
	for _, rt := range routes {
		for _, tok := range []string{"", "wrong", testToken[:3], testToken + "x"} {
			req, _ := http.NewRequest(rt.method, ts.URL+rt.path, strings.NewReader("{}"))
			if rt.ct != "" {
				req.Header.Set("Content-Type", rt.ct)
			}
			if tok != "" {
				req.Header.Set("X-Access-Token", tok)
			}
			if resp := do(t, req); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s token %q: status %d, want 401", rt.method, rt.path, tok, resp.StatusCode)
			}
		}
	}
	req, _ := http.NewRequest("GET", ts.URL+"/health", nil)
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("health with token: %d", resp.StatusCode)
	}
	// A server without a token refuses everything.
	ts2, _ := newTestServer(t, func(o *Options) { o.Token = func() (string, error) { return "", nil } })
	req, _ = http.NewRequest("GET", ts2.URL+"/health", nil)
	req.Header.Set("X-Access-Token", "")
	if resp := do(t, req); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("empty server token: %d", resp.StatusCode)
	}
}

func TestAccessTokenDerivation(t *testing.T) {
	a, b := AccessToken("x"), AccessToken("y")
	if a == b || len(a) != 64 || a == "x" || AccessToken("x") != a {
		t.Fatalf("derivation: %q %q", a, b)
	}
}

func TestProcessStartStreams(t *testing.T) {
	ts, home := newTestServer(t, nil)
	cwd := "sub"
	if err := os.Mkdir(filepath.Join(home, cwd), 0o755); err != nil {
		t.Fatal(err)
	}
	evs, endErr := startStream(t, ts, "Start", StartRequest{Process: &ProcessConfig{
		Cmd: "/bin/sh", Args: []string{"-c", `echo out; echo err >&2; pwd; echo "$FOO $HOME"; exit 3`},
		Envs: map[string]string{"FOO": "bar"}, Cwd: &cwd,
	}}, map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("user:"))})
	if endErr != nil {
		t.Fatalf("end error: %v", endErr)
	}
	if evs[0].Start == nil {
		t.Fatalf("first event %+v is not start", evs[0])
	}
	pid, stdout, stderr, end := collect(evs)
	want := "out\n" + filepath.Join(home, cwd) + "\nbar " + home + "\n"
	if pid == 0 || stdout != want || stderr != "err\n" {
		t.Fatalf("pid %d stdout %q (want %q) stderr %q", pid, stdout, want, stderr)
	}
	if end == nil || end.ExitCode != 3 || !end.Exited || end.Status != "exit status 3" {
		t.Fatalf("end %+v", end)
	}
	if evs[len(evs)-1].End == nil {
		t.Fatal("end is not the last event")
	}
}

func TestProcessUnknownUserAndBadRequest(t *testing.T) {
	ts, _ := newTestServer(t, nil)
	_, e := startStream(t, ts, "Start", StartRequest{Process: &ProcessConfig{Cmd: "/bin/true"}},
		map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("mallory:"))})
	if e == nil || e.Code != CodeInvalidArgument {
		t.Fatalf("unknown user: %v", e)
	}
	_, e = startStream(t, ts, "Start", StartRequest{}, nil)
	if e == nil || e.Code != CodeInvalidArgument {
		t.Fatalf("no cmd: %v", e)
	}
	_, e = startStream(t, ts, "Start", StartRequest{Process: &ProcessConfig{Cmd: "/nonexistent/x"}}, nil)
	if e == nil {
		t.Fatal("missing binary started")
	}
	_, e = startStream(t, ts, "Start", StartRequest{Process: &ProcessConfig{Cmd: "/bin/sleep", Args: []string{"5"}}}, map[string]string{"Connect-Timeout-Ms": "200"})
	if e == nil || e.Code != CodeDeadlineExceeded {
		t.Fatalf("timeout: %v", e)
	}
}

func TestProcessStdinConnectSignalList(t *testing.T) {
	ts, _ := newTestServer(t, nil)
	tag, yes := "t1", true
	type result struct {
		evs []*ProcessEvent
		err *Error
	}
	done := make(chan result, 1)
	go func() {
		evs, e := startStream(t, ts, "Start", StartRequest{Process: &ProcessConfig{Cmd: "/bin/cat"}, Tag: &tag, Stdin: &yes}, nil)
		done <- result{evs, e}
	}()
	var list ListResponse
	deadline := time.Now().Add(5 * time.Second)
	for len(list.Processes) == 0 && time.Now().Before(deadline) {
		unary(t, ts, "process.Process/List", struct{}{}, &list)
		time.Sleep(10 * time.Millisecond)
	}
	if len(list.Processes) != 1 || list.Processes[0].Tag == nil || *list.Processes[0].Tag != tag || list.Processes[0].Config.Cmd != "/bin/cat" {
		t.Fatalf("list: %+v", list)
	}
	pid := list.Processes[0].PID
	if st, e := unary(t, ts, "process.Process/SendInput", SendInputRequest{Process: &ProcessSelector{Tag: &tag}, Input: &ProcessInput{Stdin: []byte("hello\x00\xff")}}, nil); st != 200 {
		t.Fatalf("send input: %v", e)
	}
	if st, e := unary(t, ts, "process.Process/CloseStdin", CloseStdinRequest{Process: &ProcessSelector{PID: &pid}}, nil); st != 200 {
		t.Fatalf("close stdin: %v", e)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	_, stdout, _, end := collect(r.evs)
	if stdout != "hello\x00\xff" || end == nil || end.ExitCode != 0 {
		t.Fatalf("cat: %q %+v", stdout, end)
	}
	// Signals and Connect on a long process.
	go func() {
		evs, e := startStream(t, ts, "Start", StartRequest{Process: &ProcessConfig{Cmd: "/bin/sleep", Args: []string{"30"}}, Tag: &tag}, nil)
		done <- result{evs, e}
	}()
	var p *ProcessInfo
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		list = ListResponse{}
		unary(t, ts, "process.Process/List", struct{}{}, &list)
		if len(list.Processes) == 1 {
			p = &list.Processes[0]
			break
		}
	}
	if p == nil {
		t.Fatal("sleep never listed")
	}
	conn := make(chan result, 1)
	go func() {
		evs, e := startStream(t, ts, "Connect", ConnectRequest{Process: &ProcessSelector{PID: &p.PID}}, nil)
		conn <- result{evs, e}
	}()
	time.Sleep(100 * time.Millisecond)
	if st, e := unary(t, ts, "process.Process/SendSignal", map[string]any{"process": map[string]any{"pid": p.PID}, "signal": "SIGNAL_SIGKILL"}, nil); st != 200 {
		t.Fatalf("signal: %v", e)
	}
	for _, ch := range []chan result{done, conn} {
		r := <-ch
		_, _, _, end := collect(r.evs)
		if r.err != nil || end == nil || end.Exited || end.ExitCode != -1 || !strings.Contains(end.Status, "killed") {
			t.Fatalf("killed: %v %+v", r.err, end)
		}
	}
	missing := uint32(1)
	if st, e := unary(t, ts, "process.Process/SendSignal", SendSignalRequest{Process: &ProcessSelector{PID: &missing}, Signal: SignalSIGTERM}, nil); st != 404 || e.Code != CodeNotFound {
		t.Fatalf("missing pid: %d %v", st, e)
	}
}

func TestUnaryLimitsAndContentType(t *testing.T) {
	ts, _ := newTestServer(t, nil)
	big := `{"path":"` + strings.Repeat("a", MaxMessage) + `"}`
	req, _ := http.NewRequest("POST", ts.URL+"/filesystem.Filesystem/Stat", strings.NewReader(big))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("oversized unary: %d", resp.StatusCode)
	}
	req, _ = http.NewRequest("POST", ts.URL+"/filesystem.Filesystem/Stat", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/proto")
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("proto codec: %d", resp.StatusCode)
	}
	// A streaming request whose envelope claims more than the limit.
	hdr := make([]byte, 5)
	binary.BigEndian.PutUint32(hdr[1:], MaxMessage+1)
	req, _ = http.NewRequest("POST", ts.URL+"/process.Process/Start", bytes.NewReader(hdr))
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("X-Access-Token", testToken)
	resp := do(t, req)
	_, payload, err := ReadEnvelope(resp.Body, MaxMessage)
	if err != nil || !strings.Contains(string(payload), "resource_exhausted") {
		t.Fatalf("oversized envelope: %q %v", payload, err)
	}
	if st, e := unary(t, ts, "process.Process/Update", struct{}{}, nil); st != 501 || e.Code != CodeUnimplemented {
		t.Fatalf("unimplemented: %d %v", st, e)
	}
}

func TestFilesystemRPCs(t *testing.T) {
	ts, home := newTestServer(t, nil)
	var mk EntryResponse
	if st, e := unary(t, ts, "filesystem.Filesystem/MakeDir", PathRequest{Path: "a/b"}, &mk); st != 200 {
		t.Fatalf("mkdir: %v", e)
	}
	if mk.Entry.Path != filepath.Join(home, "a/b") || mk.Entry.Type != FileTypeDirectory {
		t.Fatalf("mkdir entry %+v", mk.Entry)
	}
	if st, e := unary(t, ts, "filesystem.Filesystem/MakeDir", PathRequest{Path: "~/a/b"}, nil); st != 409 || e.Code != CodeAlreadyExists {
		t.Fatalf("mkdir twice: %d %v", st, e)
	}
	if err := os.WriteFile(filepath.Join(home, "a/b/f"), []byte("12345"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", filepath.Join(home, "a/b/l")); err != nil {
		t.Fatal(err)
	}
	var st EntryResponse
	unary(t, ts, "filesystem.Filesystem/Stat", PathRequest{Path: filepath.Join(home, "a/../a/b/f")}, &st)
	if st.Entry == nil || st.Entry.Size != 5 || st.Entry.Type != FileTypeFile || st.Entry.Permissions != "-rw-r-----" || st.Entry.ModifiedTime == "" {
		t.Fatalf("stat %+v", st.Entry)
	}
	var ls ListDirResponse
	unary(t, ts, "filesystem.Filesystem/ListDir", ListDirRequest{Path: "a", Depth: 2}, &ls)
	got := map[string]FileType{}
	for _, e := range ls.Entries {
		got[strings.TrimPrefix(e.Path, home+"/")] = e.Type
	}
	if got["a/b"] != FileTypeDirectory || got["a/b/f"] != FileTypeFile || got["a/b/l"] != FileTypeSymlink || len(got) != 3 {
		t.Fatalf("list: %v", got)
	}
	var mv EntryResponse
	if s, e := unary(t, ts, "filesystem.Filesystem/Move", MoveRequest{Source: "a/b/f", Destination: "c/g"}, &mv); s != 200 || mv.Entry.Name != "g" {
		t.Fatalf("move: %v %+v", e, mv.Entry)
	}
	if s, e := unary(t, ts, "filesystem.Filesystem/Remove", PathRequest{Path: "a"}, nil); s != 200 {
		t.Fatalf("remove: %v", e)
	}
	if s, e := unary(t, ts, "filesystem.Filesystem/Stat", PathRequest{Path: "a"}, nil); s != 404 || e.Code != CodeNotFound {
		t.Fatalf("stat removed: %d %v", s, e)
	}
	// int64 size travels as a JSON string (protobuf JSON mapping).
	raw, _ := json.Marshal(&EntryInfo{Size: 7})
	if !strings.Contains(string(raw), `"size":"7"`) {
		t.Fatalf("size encoding: %s", raw)
	}
}

func TestFilesUploadDownload(t *testing.T) {
	ts, home := newTestServer(t, func(o *Options) { o.MaxUpload = 1000 })
	bin := []byte{0, 1, 2, 0xff, '\n', 0xfe}
	// multipart, the path in the part's file name (a whole path, not a base name)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("file", "dir/x.bin")
	fw.Write(bin)
	fw2, _ := mw.CreateFormFile("file", filepath.Join(home, "y.txt"))
	fw2.Write([]byte("hello"))
	mw.Close()
	req, _ := http.NewRequest("POST", ts.URL+"/files", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("X-Access-Token", testToken)
	resp := do(t, req)
	var infos []WriteInfo
	if err := json.NewDecoder(resp.Body).Decode(&infos); err != nil || resp.StatusCode != 200 || len(infos) != 2 {
		t.Fatalf("upload: %d %v %+v", resp.StatusCode, err, infos)
	}
	if infos[0].Path != filepath.Join(home, "dir/x.bin") || infos[0].Type != "file" || infos[0].Name != "x.bin" {
		t.Fatalf("info %+v", infos[0])
	}
	// octet-stream
	req, _ = http.NewRequest("POST", ts.URL+"/files?path=z&username=root", bytes.NewReader([]byte("zz")))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != 200 {
		t.Fatalf("octet upload %d", resp.StatusCode)
	}
	get := func(path string) (int, []byte) {
		req, _ := http.NewRequest("GET", ts.URL+"/files?path="+path, nil)
		req.Header.Set("X-Access-Token", testToken)
		resp := do(t, req)
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, data
	}
	if st, data := get("dir/x.bin"); st != 200 || !bytes.Equal(data, bin) {
		t.Fatalf("download binary: %d %v", st, data)
	}
	if st, data := get("z"); st != 200 || string(data) != "zz" {
		t.Fatalf("download z: %d %q", st, data)
	}
	if st, _ := get("nope"); st != 404 {
		t.Fatalf("missing: %d", st)
	}
	if st, _ := get("dir"); st != 400 {
		t.Fatalf("directory: %d", st)
	}
	// over the limit: declared, and streamed without a length
	req, _ = http.NewRequest("POST", ts.URL+"/files?path=big", bytes.NewReader(make([]byte, 1001)))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("declared oversize: %d", resp.StatusCode)
	}
	req, _ = http.NewRequest("POST", ts.URL+"/files?path=big", io.MultiReader(bytes.NewReader(make([]byte, 1001))))
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Access-Token", testToken)
	if resp := do(t, req); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("streamed oversize: %d", resp.StatusCode)
	}
}

func TestResolvePath(t *testing.T) {
	a := &Account{Home: "/home/user"}
	for in, want := range map[string]string{
		"x":              "/home/user/x",
		"~":              "/home/user",
		"~/a/../b":       "/home/user/b",
		"../../etc/x":    "/etc/x", // lexical only: the kernel decides access (RunAsUser)
		"/tmp/./a//b/":   "/tmp/a/b",
		"/a/../../../..": "/",
	} {
		if got := resolvePath(a, in); got != want {
			t.Errorf("resolvePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseAccounts(t *testing.T) {
	passwd := "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\nbad:x:zz:1::/:/bin/sh\n"
	a, err := parsePasswd(strings.NewReader(passwd), "user")
	if err != nil || a.UID != 1000 || a.Home != "/home/user" {
		t.Fatalf("%+v %v", a, err)
	}
	if _, err := parsePasswd(strings.NewReader(passwd), "nobody"); !errors.Is(err, ErrNoUser) {
		t.Fatalf("missing: %v", err)
	}
	if _, err := parsePasswd(strings.NewReader(passwd), "bad"); err == nil {
		t.Fatal("bad uid accepted")
	}
	g := parseGroups(strings.NewReader("user:x:1000:\nsudo:x:27:alice,user\nx:y\n"), "user", 1000)
	if len(g) != 2 || g[1] != 27 {
		t.Fatalf("groups %v", g)
	}
}

func TestEnsureUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown of the new home needs root")
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh"), 0o644)
	if err := EnsureUser(root, "user", 4242); err != nil {
		t.Fatal(err)
	}
	a, err := FileAccounts{Root: root}.Lookup("user")
	if err != nil || a.Home != "/home/user" || a.UID != 4242 || a.GID != 4242 {
		t.Fatalf("%+v %v", a, err)
	}
	if fi, err := os.Stat(filepath.Join(root, "home/user")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 4242 {
		t.Fatalf("home: %v", err)
	}
	if err := EnsureUser(root, "user", 4242); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if strings.Count(string(data), "\nuser:") != 1 || !strings.HasPrefix(string(data), "root:x:0:0:root:/root:/bin/sh\n") {
		t.Fatalf("passwd %q", data)
	}
}

func TestEnsuringAccountsCreatesDefaultUserOnce(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nother:x:1000:1000::/home/other:/bin/sh\n"), 0o644)
	ea := &EnsuringAccounts{Root: root, UID: 1000}
	if _, err := ea.Lookup("mallory"); !errors.Is(err, ErrNoUser) {
		t.Fatalf("only the default user is created: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("chown of the new home needs root")
	}
	a, err := ea.Lookup(DefaultUser)
	if err != nil || a.UID != 1001 || a.Home != "/home/user" {
		t.Fatalf("created %+v %v (uid 1000 is taken)", a, err)
	}
	if b, err := ea.Lookup(DefaultUser); err != nil || b.UID != a.UID {
		t.Fatalf("second lookup %+v %v", b, err)
	}
}
