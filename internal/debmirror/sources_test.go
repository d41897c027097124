package debmirror

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestHostSource(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  Source
	}{
		{
			name: "deb822 first stanza",
			files: map[string]string{
				"sources.list.d/debian.sources": "Types: deb\n# comment\nURIs: http://mirror.test/debian/\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /x.gpg\n\n" +
					"Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n",
				"sources.list": "deb http://ignored.test/debian bookworm main\n",
			},
			want: Source{URL: "http://mirror.test/debian", Suite: "bookworm", Components: []string{"main", "contrib"}},
		},
		{
			name: "deb822 skips security-only, disabled and deb-src stanzas",
			files: map[string]string{
				"sources.list.d/a.sources": "Types: deb\nURIs: http://sec.test/debian-security\nSuites: bookworm-security\nComponents: main\n\n" +
					"Types: deb\nURIs: http://off.test/debian\nSuites: trixie\nComponents: main\nEnabled: no\n\n" +
					"Types: deb-src\nURIs: http://src.test/debian\nSuites: trixie\nComponents: main\n\n" +
					"Types: deb deb-src\nURIs: http://good.test/debian\nSuites: trixie-updates trixie\nComponents: main\n",
			},
			want: Source{URL: "http://good.test/debian", Suite: "trixie", Components: []string{"main"}},
		},
		{
			name: "security-only falls back to it",
			files: map[string]string{
				"sources.list.d/a.sources": "Types: deb\nURIs: http://sec.test/debian-security\nSuites: bookworm-security\nComponents: main\n",
			},
			want: Source{URL: "http://sec.test/debian-security", Suite: "bookworm-security", Components: []string{"main"}},
		},
		{
			name: "sources.list with options and comments",
			files: map[string]string{
				"sources.list": "# deb http://commented.test/debian bookworm main\ndeb-src http://src.test/debian bookworm main\n" +
					"deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://list.test/debian bookworm main non-free # trailing\n",
			},
			want: Source{URL: "http://list.test/debian", Suite: "bookworm", Components: []string{"main", "non-free"}},
		},
		{
			name: "sources.list.d list file when sources.list is absent",
			files: map[string]string{
				"sources.list.d/z.list": "deb http://d.test/debian/ bookworm main\n",
			},
			want: Source{URL: "http://d.test/debian", Suite: "bookworm", Components: []string{"main"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := HostSource(writeTree(t, tt.files))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("HostSource = %+v, want %+v", got, tt.want)
			}
			url, err := HostMirror(writeTree(t, tt.files))
			if err != nil || url != tt.want.URL {
				t.Fatalf("HostMirror = %q, %v; want %q", url, err, tt.want.URL)
			}
		})
	}
}

func TestHostSourceNone(t *testing.T) {
	dir := writeTree(t, map[string]string{"sources.list": "# nothing\n", "sources.list.d/x.sources": "Types: deb-src\nURIs: http://x.test\nSuites: a\n"})
	if _, err := HostSource(dir); !errors.Is(err, ErrNoSource) {
		t.Fatalf("err = %v, want ErrNoSource", err)
	}
}

func TestHostSourceMalformedDeb822(t *testing.T) {
	dir := writeTree(t, map[string]string{"sources.list.d/x.sources": " continuation first\n"})
	if _, err := HostSource(dir); err == nil {
		t.Fatal("malformed deb822 file accepted")
	}
}
