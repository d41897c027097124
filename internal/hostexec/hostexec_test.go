package hostexec

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRealRunCapturesAndReportsExit(t *testing.T) {
	ctx := context.Background()
	r := Real{}
	res, err := r.Run(ctx, Cmd{Name: "sh", Args: []string{"-c", "echo out; echo err >&2"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
		t.Fatalf("got %q %q", res.Stdout, res.Stderr)
	}
	_, err = r.Run(ctx, Cmd{Name: "sh", Args: []string{"-c", "echo boom >&2; exit 3"}})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.ExitCode != 3 || !strings.Contains(ee.Error(), "boom") {
		t.Fatalf("want exit error 3 with stderr, got %v", err)
	}
	_, err = r.Run(ctx, Cmd{Name: "definitely-not-a-program-xyz"})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
}

func TestRecorderAndQuoting(t *testing.T) {
	rec := &Recorder{}
	_, _ = rec.Run(context.Background(), Cmd{Name: "ip", Args: []string{"link", "add", "a b", "it's", ""}})
	got := rec.Lines()
	want := `ip link add 'a b' 'it'\''s' ''`
	if len(got) != 1 || got[0] != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

// FuzzQuote checks that /bin/sh reads Quote(s) back as exactly s, one word.
func FuzzQuote(f *testing.F) {
	for _, s := range []string{"", "plain-word_1.2/x=y:z,a+b@c%d", "a b", "it's", "''", `\`, "$HOME", "`id`", "*", "~", "#c", "!x", "a\nb", "-n", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.ContainsRune(s, 0) {
			t.Skip("a NUL cannot be passed in an argument")
		}
		q := Quote(s)
		res, err := Real{}.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", `printf '%s|' ` + q}})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(res.Stdout); got != s+"|" {
			t.Fatalf("Quote(%q) = %s, sh read it as %q", s, q, got)
		}
	})
}

func TestTailBufferKeepsTheEnd(t *testing.T) {
	tb := TailBuffer{Max: 8}
	var all strings.Builder
	for i := range 100 {
		s := strings.Repeat(string(rune('a'+i%26)), i%5)
		all.WriteString(s)
		if n, err := tb.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		want := all.String()
		if len(want) > 8 {
			want = want[len(want)-8:]
		}
		if got := tb.String(); got != want {
			t.Fatalf("after %d writes: %q, want %q", i+1, got, want)
		}
		if tb.buf.Len() > 2*8+4 {
			t.Fatalf("buffer grew to %d bytes", tb.buf.Len())
		}
	}
	var zero TailBuffer
	zero.Write([]byte("x"))
	if zero.String() != "" {
		t.Errorf("zero TailBuffer kept %q", zero.String())
	}
}

func TestRealRunStreamedStderrKeepsTail(t *testing.T) {
	var streamed strings.Builder
	script := `i=0; while [ $i -lt 20000 ]; do echo line-$i >&2; i=$((i+1)); done; echo last-line >&2; exit 1`
	res, err := Real{}.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", script}, Stderr: &streamed})
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("want ExitError, got %v", err)
	}
	if !strings.HasSuffix(string(res.Stderr), "last-line\n") || len(res.Stderr) != 64<<10 {
		t.Errorf("captured stderr: %d bytes ending %q; want the last 64 KiB", len(res.Stderr), res.Stderr[max(0, len(res.Stderr)-20):])
	}
	if !strings.HasPrefix(streamed.String(), "line-0\n") || !strings.HasSuffix(streamed.String(), "last-line\n") {
		t.Error("streamed stderr is not complete")
	}
}
