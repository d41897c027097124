package envd

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// FuzzReadEnvelope: any input gives an envelope within the limit, a clean
// EOF, a torn-envelope error or ErrTooLarge; never a panic, never more
// payload than the limit.
func FuzzReadEnvelope(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{2, 0, 0, 0, 0})
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			_, p, err := ReadEnvelope(r, 64)
			if err != nil {
				if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrTooLarge) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(p) > 64 {
				t.Fatalf("payload of %d bytes over the limit", len(p))
			}
		}
	})
}

// FuzzDecodeMessages: the request decoders return a value or an
// invalid_argument error for any bytes, and what they accept re-encodes.
func FuzzDecodeMessages(f *testing.F) {
	f.Add([]byte(`{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"b"},"cwd":"/tmp"},"stdin":false,"tag":"x"}`))
	f.Add([]byte(`{"process":{"pid":7},"signal":"SIGNAL_SIGKILL"}`))
	f.Add([]byte(`{"process":{"tag":"t"},"input":{"stdin":"aGVsbG8="}}`))
	f.Add([]byte(`{"path":"~/a/../b","depth":3}`))
	f.Add([]byte(`{"signal":9}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		targets := []any{&StartRequest{}, &SendSignalRequest{}, &SendInputRequest{}, &ListDirRequest{}, &MoveRequest{}, &ConnectRequest{}}
		for _, v := range targets {
			err := decodeStrict(data, v)
			if err != nil {
				var e *Error
				if !errors.As(err, &e) || e.Code != CodeInvalidArgument {
					t.Fatalf("decode error is not invalid_argument: %v", err)
				}
				continue
			}
			if _, err := json.Marshal(v); err != nil {
				t.Fatalf("accepted value does not re-encode: %v", err)
			}
		}
	})
}
