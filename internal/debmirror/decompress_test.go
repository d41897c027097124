package debmirror

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

func compressed(t *testing.T, ext string, data []byte) []byte {
	var b bytes.Buffer
	switch ext {
	case ".gz":
		w := gzip.NewWriter(&b)
		w.Write(data)
		w.Close()
	case ".xz":
		w, _ := xz.NewWriter(&b)
		w.Write(data)
		w.Close()
	case ".zst":
		w, _ := zstd.NewWriter(&b)
		w.Write(data)
		w.Close()
	default:
		return data
	}
	return b.Bytes()
}

func TestDecompress(t *testing.T) {
	data := bytes.Repeat([]byte("Package: x\n"), 10000)
	runners := map[string]hostexec.Runner{"go": nil, "tool missing": notFoundRunner{}}
	for _, tool := range []string{"xz", "gzip", "zstd"} {
		if _, err := (hostexec.Real{}).Run(context.Background(), hostexec.Cmd{Name: tool, Args: []string{"--version"}}); err == nil {
			runners["host"] = hostexec.Real{}
		} else {
			runners["host"] = nil
			t.Logf("%s not installed; host path exercised by the tools present", tool)
		}
		for _, ext := range []string{".xz", ".gz", ".zst", ""} {
			if map[string]string{"xz": ".xz", "gzip": ".gz", "zstd": ".zst"}[tool] != ext && ext != "" {
				continue
			}
			for name, r := range runners {
				t.Run(tool+ext+"/"+name, func(t *testing.T) {
					rc, err := Decompress(context.Background(), r, "Packages"+ext, bytes.NewReader(compressed(t, ext, data)))
					if err != nil {
						t.Fatal(err)
					}
					defer rc.Close()
					got, err := io.ReadAll(rc)
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("got %d bytes, %v; want %d", len(got), err, len(data))
					}
				})
			}
		}
	}
	// corrupt input is an error with both paths
	for name, r := range map[string]hostexec.Runner{"go": nil, "host": hostexec.Real{}} {
		rc, err := Decompress(context.Background(), r, "x.gz", strings.NewReader("\x1f\x8b\x08\x00garbage"))
		if err == nil {
			_, err = io.ReadAll(rc)
			rc.Close()
		}
		if err == nil {
			t.Errorf("%s: corrupt gzip decompressed without error", name)
		}
	}
}

// notFoundRunner behaves like hostexec.Real for a program not on PATH: it
// fails before touching stdin.
type notFoundRunner struct{}

func (notFoundRunner) Run(_ context.Context, c hostexec.Cmd) (hostexec.Result, error) {
	return hostexec.Result{ExitCode: -1}, fmt.Errorf("%s: %w", c.Name, hostexec.ErrNotFound)
}
