package agent_test

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/agent"
)

func TestFrameRoundTrip(t *testing.T) {
	in := &agent.Frame{V: agent.Protocol, ID: 42, Kind: agent.KindStdout, Data: []byte("a\nb\x00\xff")}
	b, err := agent.EncodeFrame(in)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(b, []byte{'\n'}) != 1 || b[len(b)-1] != '\n' {
		t.Fatalf("frame %q is not exactly one line", b)
	}
	out, err := agent.NewFrameReader(bytes.NewReader(b), 0).ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if out.ID != 42 || out.Kind != agent.KindStdout || !bytes.Equal(out.Data, in.Data) {
		t.Fatalf("got %+v", out)
	}
}

func TestFrameReaderResync(t *testing.T) {
	good := func(id int) string {
		b, _ := agent.EncodeFrame(&agent.Frame{V: 1, ID: uint64(id), Kind: agent.KindPing})
		return string(b)
	}
	stream := "half a fra" + "\n" + // torn frame from an earlier host
		strings.Repeat("y", 300) + "\n" + // too large for a 256-byte reader
		good(1) +
		"{\"v\":1}\n" + // no id, no kind
		good(2) +
		`{"v":1,"id":3,"kind":"ping"} trailing` + "\n" +
		good(4) +
		`{"v":1,"id":5,"kind":"ping"` // torn at EOF
	fr := agent.NewFrameReader(strings.NewReader(stream), 256)
	var ids []uint64
	var bad, large int
	for {
		f, err := fr.ReadFrame()
		switch {
		case errors.Is(err, io.EOF):
			if len(ids) != 3 || ids[0] != 1 || ids[1] != 2 || ids[2] != 4 || bad != 3 || large != 1 {
				t.Fatalf("ids %v, %d bad, %d too large", ids, bad, large)
			}
			return
		case errors.Is(err, agent.ErrBadFrame):
			bad++
		case errors.Is(err, agent.ErrFrameTooLarge):
			large++
		case err != nil:
			t.Fatal(err)
		default:
			ids = append(ids, f.ID)
		}
	}
}

func TestEncodeFrameTooLarge(t *testing.T) {
	_, err := agent.EncodeFrame(&agent.Frame{V: 1, ID: 1, Kind: agent.KindStdout, Data: make([]byte, agent.MaxFrame)})
	if !errors.Is(err, agent.ErrFrameTooLarge) {
		t.Fatalf("err = %v", err)
	}
	// A full chunk always fits.
	if _, err := agent.EncodeFrame(&agent.Frame{V: 1, ID: 1, Kind: agent.KindStdout, Data: make([]byte, agent.ChunkSize)}); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeFrameRejects(t *testing.T) {
	for _, s := range []string{
		"", "null", "[]", `"x"`, "{", `{"id":1}`, `{"id":1,"kind":"nope"}`, `{"id":0,"kind":"ping"}`,
		`{"id":1,"kind":"error"}`, `{"id":1,"kind":"ping","data":"not base64!"}`, `{"id":-1,"kind":"ping"}`,
		`{"id":1,"kind":"ping"}{"id":2,"kind":"ping"}`,
	} {
		if _, err := agent.DecodeFrame([]byte(s)); !errors.Is(err, agent.ErrBadFrame) {
			t.Errorf("DecodeFrame(%q) = %v, want ErrBadFrame", s, err)
		}
	}
}

// FuzzDecodeFrame: the decoder never panics, and whatever it accepts
// re-encodes to a frame it accepts again with the same id and kind.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"id":1,"kind":"ping","token":"abc"}`,
		`{"v":1,"id":2,"kind":"exec","body":{"argv":["sh","-c","true"]}}`,
		`{"v":1,"id":3,"kind":"stdin","data":"aGVsbG8=","eof":true}`,
		`{"v":1,"id":0,"kind":"error","error":{"code":"too_large","message":"x"}}`,
		`{"v":1,"id":4,"kind":"ack","n":32768}`,
		`{"v":1,"id":5,"kind":"stdin","size":4}`,
		"\x00\xff", "{}", `{"id":1e400}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		fr, err := agent.DecodeFrame(line)
		if err != nil {
			if !errors.Is(err, agent.ErrBadFrame) && !errors.Is(err, agent.ErrFrameTooLarge) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		b, err := agent.EncodeFrame(fr)
		if err != nil {
			if errors.Is(err, agent.ErrFrameTooLarge) {
				return
			}
			t.Fatal(err)
		}
		again, err := agent.DecodeFrame(b[:len(b)-1])
		if err != nil || again.ID != fr.ID || again.Kind != fr.Kind {
			t.Fatalf("re-decode of %q: %+v %v", b, again, err)
		}
	})
}

// FuzzFrameReader: any byte stream yields frames or recoverable errors
// until EOF, never a panic, and never a frame over the limit.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte("{\"v\":1,\"id\":1,\"kind\":\"ping\"}\n\n\xff\n{\"v\":1,\"id\":2,\"kind\":\"ack\"}"))
	f.Add(bytes.Repeat([]byte("x"), 600))
	f.Add([]byte("{\"v\":1,\"id\":1,\"kind\":\"stdout\",\"size\":3}\nabc{\"v\":1,\"id\":2,\"kind\":\"stdin\",\"size\":9}\nab"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := agent.NewFrameReader(bytes.NewReader(data), 512)
		for i := 0; i < len(data)+2; i++ {
			_, err := fr.ReadFrame()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil && !errors.Is(err, agent.ErrBadFrame) && !errors.Is(err, agent.ErrFrameTooLarge) {
				t.Fatalf("unexpected error: %v", err)
			}
		}
		t.Fatal("reader did not reach EOF")
	})
}

func TestFrameRawPayload(t *testing.T) {
	data := []byte("raw\nbytes\x00\xff{\"v\":1}\n")
	b, err := agent.EncodeFrame(&agent.Frame{V: 1, ID: 7, Kind: agent.KindStdin, Token: "tok", Data: data, Raw: true})
	if err != nil {
		t.Fatal(err)
	}
	line, payload, _ := bytes.Cut(b, []byte{'\n'})
	if !bytes.Contains(line, []byte(`"size":`+strconv.Itoa(len(data)))) || bytes.Contains(line, []byte(`"data"`)) || !bytes.Equal(payload, data) {
		t.Fatalf("encoded %q", b)
	}
	next, _ := agent.EncodeFrame(&agent.Frame{V: 1, ID: 8, Kind: agent.KindPing})
	fr := agent.NewFrameReader(bytes.NewReader(append(b, next...)), 0)
	f, err := fr.ReadFrame()
	if err != nil || f.ID != 7 || !bytes.Equal(f.Data, data) {
		t.Fatalf("got %+v %v", f, err)
	}
	if f, err := fr.ReadFrame(); err != nil || f.ID != 8 {
		t.Fatalf("frame after the payload: %+v %v", f, err)
	}
	// A payload cut short is a torn frame.
	if _, err := agent.NewFrameReader(bytes.NewReader(b[:len(b)-3]), 0).ReadFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("torn payload: %v", err)
	}
}

func TestFrameReaderRefusedPayloadIsReadAsLines(t *testing.T) {
	inner, _ := agent.EncodeFrame(&agent.Frame{V: 1, ID: 9, Kind: agent.KindPing, Token: "good"})
	b, _ := agent.EncodeFrame(&agent.Frame{V: 1, ID: 7, Kind: agent.KindStdin, Token: "bad", Data: inner, Raw: true})
	fr := agent.NewFrameReader(bytes.NewReader(b), 0)
	fr.Accept = func(f *agent.Frame) bool { return f.Token == "good" }
	f, err := fr.ReadFrame()
	if err != nil || f.ID != 7 || f.Data != nil || f.Size != 0 {
		t.Fatalf("refused frame: %+v %v", f, err)
	}
	// The payload was not skipped: the frame inside it is read.
	if f, err := fr.ReadFrame(); err != nil || f.ID != 9 {
		t.Fatalf("payload as lines: %+v %v", f, err)
	}
}

func TestDecodeFrameRejectsBadSizes(t *testing.T) {
	for s, want := range map[string]error{
		`{"v":1,"id":1,"kind":"ping","size":3}`:                 agent.ErrBadFrame,
		`{"v":1,"id":1,"kind":"stdin","size":-1}`:               agent.ErrFrameTooLarge,
		`{"v":1,"id":1,"kind":"stdin","size":1048577}`:          agent.ErrFrameTooLarge,
		`{"v":1,"id":1,"kind":"stdout","size":2,"data":"eA=="}`: agent.ErrBadFrame,
	} {
		if _, err := agent.DecodeFrame([]byte(s)); !errors.Is(err, want) {
			t.Errorf("DecodeFrame(%s) = %v, want %v", s, err, want)
		}
	}
}
