package e2b

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
)

// FuzzSandboxTarget: any Host and routing headers give either no target
// or a target whose port is a valid port (or -1 for a bad header).
func FuzzSandboxTarget(f *testing.F) {
	f.Add("49983-abc.e2b.local", "", "")
	f.Add("x", "0123456789abcdef", "49983")
	f.Add("65536-a.b", "", "")
	f.Add("-.", "id", "-1")
	f.Fuzz(func(t *testing.T, host, id, port string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = host
		r.Header.Set("E2b-Sandbox-Id", id)
		r.Header.Set("E2b-Sandbox-Port", port)
		gotID, gotPort, ok := sandboxTarget(r)
		if !ok {
			return
		}
		if gotID == "" {
			t.Fatal("target with an empty id")
		}
		if gotPort != -1 && (gotPort < 1 || gotPort > 65535) {
			t.Fatalf("port %d out of range", gotPort)
		}
	})
}

// FuzzCreateBody: the create body decoder accepts or refuses any bytes
// without panicking; accepted timeouts are what the handler validates.
func FuzzCreateBody(f *testing.F) {
	f.Add([]byte(`{"templateID":"base","timeout":300,"metadata":{"a":"b"},"envVars":{"X":"1"},"allow_internet_access":true}`))
	f.Add([]byte(`{"timeout":-1}`))
	f.Add([]byte(`{"metadata":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var b createBody
		if err := json.Unmarshal(data, &b); err != nil {
			return
		}
		if _, err := json.Marshal(b); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
	})
}
