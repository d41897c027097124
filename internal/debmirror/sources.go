package debmirror

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Source is one Debian archive named by the host's apt configuration.
type Source struct {
	URL        string   // archive root, e.g. http://mirror.example/debian (no trailing slash)
	Suite      string   // first suite listed for it, preferring a release suite over -updates/-security
	Components []string // e.g. [main]
}

// ErrNoSource is returned when the apt configuration names no usable archive.
var ErrNoSource = errors.New("no Debian archive found in the apt configuration")

// DefaultAptDir is where apt keeps its sources.
const DefaultAptDir = "/etc/apt"

// HostMirror returns the archive URL the host's apt uses: the URIs of the
// first deb822 stanza (aptDir/sources.list.d/*.sources, in name order) with
// Types containing "deb", else the first `deb` line of aptDir/sources.list
// and aptDir/sources.list.d/*.list. aptDir "" means /etc/apt.
func HostMirror(aptDir string) (string, error) {
	s, err := HostSource(aptDir)
	if err != nil {
		return "", err
	}
	return s.URL, nil
}

// HostSource is HostMirror returning suite and components as well. A stanza
// or line whose suites are all -security/-updates/-backports is used only when
// nothing else exists, since those archives carry only part of a release.
func HostSource(aptDir string) (Source, error) {
	if aptDir == "" {
		aptDir = DefaultAptDir
	}
	var found []Source
	deb822, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*.sources"))
	sort.Strings(deb822)
	for _, f := range deb822 {
		srcs, err := readDeb822Sources(f)
		if err != nil {
			return Source{}, err
		}
		found = append(found, srcs...)
	}
	if len(found) == 0 {
		lists, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*.list"))
		sort.Strings(lists)
		lists = append([]string{filepath.Join(aptDir, "sources.list")}, lists...)
		for _, f := range lists {
			srcs, err := readOneLineSources(f)
			if err != nil {
				return Source{}, err
			}
			found = append(found, srcs...)
		}
	}
	if len(found) == 0 {
		return Source{}, fmt.Errorf("%w under %s: configure apt or set the mirror URL in banger's config", ErrNoSource, aptDir)
	}
	for _, s := range found {
		if !partialSuite(s.Suite) {
			return s, nil
		}
	}
	return found[0], nil
}

func partialSuite(s string) bool {
	for _, suf := range []string{"-security", "-updates", "-backports", "-proposed-updates"} {
		if strings.HasSuffix(s, suf) {
			return true
		}
	}
	return strings.Contains(s, "/") // e.g. bookworm/updates
}

func readDeb822Sources(path string) ([]Source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read apt sources: %w", err)
	}
	defer f.Close()
	var out []Source
	err = ParseControl(f, func(p Paragraph) error {
		if strings.EqualFold(p.Get("Enabled"), "no") {
			return nil
		}
		if !containsWord(p.Get("Types"), "deb") {
			return nil
		}
		uris := strings.Fields(p.Get("URIs"))
		suites := strings.Fields(p.Get("Suites"))
		if len(uris) == 0 || len(suites) == 0 {
			return nil
		}
		suite := suites[0]
		for _, s := range suites {
			if !partialSuite(s) {
				suite = s
				break
			}
		}
		out = append(out, Source{URL: strings.TrimRight(uris[0], "/"), Suite: suite, Components: strings.Fields(p.Get("Components"))})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return out, nil
}

func readOneLineSources(path string) ([]Source, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read apt sources: %w", err)
	}
	defer f.Close()
	var out []Source
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		rest := fields[1:]
		if strings.HasPrefix(rest[0], "[") { // [arch=amd64 signed-by=...]
			i := 0
			for i < len(rest) && !strings.HasSuffix(rest[i], "]") {
				i++
			}
			rest = rest[min(i+1, len(rest)):]
		}
		if len(rest) < 2 {
			continue
		}
		out = append(out, Source{URL: strings.TrimRight(rest[0], "/"), Suite: rest[1], Components: rest[2:]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

func containsWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if f == w {
			return true
		}
	}
	return false
}
