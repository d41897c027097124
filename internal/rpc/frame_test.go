package rpc

import (
	"bufio"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	for _, tc := range []struct {
		line string
		code Code   // "" = accepted
		msg  string // substring of the error message
	}{
		{`{"v":1,"method":"vm.list"}`, "", ""},
		{`{"v":1,"method":"vm.create","op_id":"cli-7","params":{"name":"a"},"events":true}`, "", ""},
		{`{"v":2,"method":"vm.list"}`, CodeBadVersion, "version 2"},
		{`{"v":2,"method":"vm.list","new_field":1}`, CodeBadVersion, "speaks 1"},
		{`{"method":"vm.list"}`, CodeBadVersion, "no protocol version"},
		{`{"v":null,"method":"vm.list"}`, CodeBadVersion, "no protocol version"},
		{`{"v":"1","method":"vm.list"}`, CodeBadVersion, `"1"`},
		{`{"v":1}`, CodeBadRequest, "no method"},
		{`{"v":1,"method":"vm list"}`, CodeBadRequest, "malformed method"},
		{`{"v":1,"method":"vm.list","extra":true}`, CodeBadRequest, `"extra"`},
		{`{"v":1,"method":"vm.list"} {"v":1}`, CodeBadRequest, "after top-level value"},
		{`{"v":1,"method":"vm.list"}}`, CodeBadRequest, "after top-level value"},
		{`{"v":1,"method":7}`, CodeBadRequest, `"method"`},
		{`[]`, CodeBadRequest, "malformed request"},
		{`hello`, CodeBadRequest, "malformed request"},
		{``, CodeBadRequest, "empty"},
		{"   ", CodeBadRequest, "empty"},
	} {
		req, err := decodeRequest([]byte(tc.line), "this server")
		if tc.code == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.line, err)
			} else if req.V != ProtocolVersion || req.Method == "" {
				t.Errorf("%s: decoded %+v", tc.line, req)
			}
			continue
		}
		if err == nil || err.Code != tc.code || !strings.Contains(err.Message, tc.msg) {
			t.Errorf("%s: got %v, want %s containing %q", tc.line, err, tc.code, tc.msg)
		}
	}

	req, err := decodeRequest([]byte(`{"v":1,"method":"a","op_id":"bad id\n"}`), "s")
	if err != nil || req.OpID != "" {
		t.Fatalf("malformed op id kept: %+v %v", req, err)
	}
	req, err = decodeRequest([]byte(`{"v":1,"method":"a","op_id":"cli-1","params":{"x":[1,2]}}`), "s")
	if err != nil || req.OpID != "cli-1" || string(req.Params) != `{"x":[1,2]}` {
		t.Fatalf("decoded %+v %v", req, err)
	}
}

func TestReadFrame(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader("abc\ndef"), 16)
	if l, err := readFrame(br, 100); err != nil || string(l) != "abc" {
		t.Fatalf("first frame %q %v", l, err)
	}
	if l, err := readFrame(br, 100); err != nil || string(l) != "def" {
		t.Fatalf("EOF-terminated frame %q %v", l, err)
	}
	long := strings.Repeat("x", 100) + "\n"
	br = bufio.NewReaderSize(strings.NewReader(long), 16)
	if l, err := readFrame(br, 101); err != nil || len(l) != 100 {
		t.Fatalf("frame at the limit: %d %v", len(l), err)
	}
	br = bufio.NewReaderSize(strings.NewReader(long), 16)
	if _, err := readFrame(br, 100); CodeOf(err) != CodeBadRequest {
		t.Fatalf("oversized frame: %v", err)
	}
	if _, err := readFrame(bufio.NewReader(strings.NewReader("")), 100); err == nil {
		t.Fatal("empty stream gave a frame")
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"method":"vm.list"}`,
		`{"v":1,"op_id":"x","method":"vm.create","params":{"name":"a"},"events":true}`,
		`{"v":2}`, `{"v":1,"method":""}`, `{}`, `null`, `[`, `{"v":1e0,"method":"a"}`,
		`{"v":1,"method":"a","params":null}`, "{\"v\":1,\"method\":\"a\",\"op_id\":\"\\u0000\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := decodeRequest(line, "s")
		if err != nil {
			if err.Code != CodeBadRequest && err.Code != CodeBadVersion {
				t.Fatalf("unexpected code %q", err.Code)
			}
			if err.Message == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if req.V != ProtocolVersion || !validMethod(req.Method) {
			t.Fatalf("accepted invalid request %+v", req)
		}
		if req.OpID != "" && !validOpID(req.OpID) {
			t.Fatalf("kept malformed op id %q", req.OpID)
		}
		if len(req.Params) > 0 && !json.Valid(req.Params) {
			t.Fatalf("params not valid JSON: %q", req.Params)
		}
		// The accepted request re-encodes and decodes to the same thing.
		b, merr := json.Marshal(req)
		if merr != nil {
			t.Fatal(merr)
		}
		again, err2 := decodeRequest(b, "s")
		if err2 != nil || again.Method != req.Method || again.OpID != req.OpID || again.Events != req.Events {
			t.Fatalf("re-decode of %s: %+v %v", b, again, errors.Unwrap(err2))
		}
	})
}
