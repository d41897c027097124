package rpc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bangerdev/banger/internal/progress"
)

// FuzzReadFrame: every frame is the input up to its first newline, never
// longer than the limit, and reading it consumes exactly the frame and the
// newline.
func FuzzReadFrame(f *testing.F) {
	for _, s := range []string{"", "\n", "a\nb", "{\"v\":1}\n{}", strings.Repeat("x", 40) + "\n", "no newline"} {
		f.Add([]byte(s), uint8(16))
	}
	f.Fuzz(func(t *testing.T, in []byte, lim uint8) {
		limit := int(lim) + 1
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		frame, err := readFrame(br, limit)
		if err != nil {
			var rerr *Error
			if errors.As(err, &rerr) {
				if rerr.Code != CodeBadRequest {
					t.Fatalf("code %q", rerr.Code)
				}
				if i := bytes.IndexByte(in, '\n'); i >= 0 && i+1 <= limit {
					t.Fatalf("frame of %d bytes refused with limit %d", i, limit)
				}
				return
			}
			if len(in) != 0 {
				t.Fatalf("error %v on %q", err, in)
			}
			return
		}
		if len(frame) > limit || bytes.IndexByte(frame, '\n') >= 0 || !bytes.HasPrefix(in, frame) {
			t.Fatalf("frame %q from %q (limit %d)", frame, in, limit)
		}
		rest := in[len(frame):]
		if len(rest) > 0 {
			if rest[0] != '\n' {
				t.Fatalf("frame %q stops before %q", frame, rest)
			}
			next, _ := br.Peek(br.Buffered())
			if len(next) > len(rest)-1 || !bytes.HasPrefix(rest[1:], next) {
				t.Fatalf("reader left %q, want a prefix of %q", next, rest[1:])
			}
		}
	})
}

// FuzzCallAnswer serves arbitrary bytes as a daemon's answer: Call never
// panics or hangs, returns either nil (a result frame), a *Error with a
// code (an error frame) or a plain error, and delivers only event frames
// as events.
func FuzzCallAnswer(f *testing.F) {
	for _, s := range []string{
		`{"result":{"name":"a"}}` + "\n",
		`{"event":{"stage":"vmm","detail":"x"}}` + "\n" + `{"result":null}` + "\n",
		`{"error":{"code":"not_found","message":"no such vm"}}` + "\n",
		`{"error":{"message":"x"}}`,
		`{"result":[1,2]}`, `{"event":{}}`, "garbage\n", "",
	} {
		f.Add([]byte(s))
	}
	sock := filepath.Join(f.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	answers := make(chan []byte)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			answer := <-answers
			go func() {
				defer conn.Close()
				_, _ = bufio.NewReader(conn).ReadBytes('\n')
				_, _ = conn.Write(answer)
			}()
		}
	}()
	c := NewClient(sock)
	f.Fuzz(func(t *testing.T, answer []byte) {
		done := make(chan struct{})
		go func() {
			select {
			case answers <- answer:
			case <-done:
			}
		}()
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var res struct {
			Name string `json:"name"`
		}
		events := 0
		err := c.Call(ctx, "vm.show", map[string]string{"ref": "a"}, &res, WithEvents(func(progress.Event) { events++ }))
		if ctx.Err() != nil {
			t.Fatalf("call hung on %q", answer)
		}
		if events > 0 && !bytes.Contains(answer, []byte(`"event"`)) {
			t.Fatalf("%d events from %q", events, answer)
		}
		var rerr *Error
		if errors.As(err, &rerr) && rerr.Code == "" {
			t.Fatalf("error frame without a code from %q", answer)
		}
	})
}
