// Package debmirror is a small client for a Debian archive: it fetches the
// signed InRelease of a suite, verifies it the way apt does (gpgv against
// the Debian archive keyring), then follows the hash chain InRelease ->
// Packages index -> .deb, refusing anything whose SHA256 or size does not
// match what the signed Release promised.
package debmirror

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bangerdev/banger/internal/hostexec"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// DefaultSuite is used when Mirror.Suite is empty: the release banger's
// default image is built from.
const DefaultSuite = "bookworm"

// Mirror is one suite of a Debian archive. The zero values of the optional
// fields are usable defaults. A Mirror memoizes the verified Release and
// Packages index it has read; it is safe for concurrent use.
type Mirror struct {
	URL        string   // archive root, e.g. from HostMirror
	Suite      string   // codename or suite name; "" = DefaultSuite
	Components []string // searched in order; nil = [main]
	Arch       string   // "" = amd64
	Keyring    string   // "" = DefaultKeyring (used by the default verifier)
	HTTP       *http.Client
	Runner     hostexec.Runner // runs gpgv for the default verifier
	Verifier   Verifier        // nil = GPGV{Runner, Keyring}
	CacheDir   string          // verified downloads by sha256; "" = no cache

	mu      sync.Mutex
	release *Release
	index   map[string]*Package
}

// FromHost returns a Mirror for the archive the host's apt uses (see
// HostSource), verifying with runner and caching in cacheDir.
func FromHost(aptDir string, runner hostexec.Runner, cacheDir string) (*Mirror, error) {
	src, err := HostSource(aptDir)
	if err != nil {
		return nil, err
	}
	return &Mirror{URL: src.URL, Suite: src.Suite, Runner: runner, CacheDir: cacheDir}, nil
}

// FileHash is what a Release file promises about one index file.
type FileHash struct {
	SHA256 string
	Size   int64
}

// Release is the verified content of a suite's InRelease.
type Release struct {
	Suite         string
	Codename      string
	Date          string
	ValidUntil    time.Time // zero when absent
	AcquireByHash bool
	Files         map[string]FileHash // path relative to dists/<suite>/ -> hash
}

// Relation is one package relation, e.g. "linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)".
type Relation struct {
	Name    string
	Op      string // "", "=", ">=", "<=", ">>", "<<"
	Version string
}

// Package is one binary package stanza from a verified Packages index.
type Package struct {
	Name     string
	Version  string
	Arch     string
	Filename string // relative to the archive root (pool/...)
	SHA256   string
	Size     int64
	Depends  [][]Relation // AND of OR-alternatives (Pre-Depends and Depends)

	depends string // raw fields, parsed on Lookup
}

func (m *Mirror) suite() string {
	if m.Suite == "" {
		return DefaultSuite
	}
	return m.Suite
}

func (m *Mirror) arch() string {
	if m.Arch == "" {
		return "amd64"
	}
	return m.Arch
}

func (m *Mirror) components() []string {
	if len(m.Components) == 0 {
		return []string{"main"}
	}
	return m.Components
}

func (m *Mirror) client() *http.Client {
	if m.HTTP != nil {
		return m.HTTP
	}
	return &http.Client{Transport: http.DefaultTransport}
}

func (m *Mirror) verifier() Verifier {
	if m.Verifier != nil {
		return m.Verifier
	}
	return GPGV{Runner: m.Runner, Keyring: m.Keyring}
}

// Release fetches dists/<suite>/InRelease, verifies its signature and
// parses it. The result is memoized for the Mirror's lifetime.
func (m *Mirror) Release(ctx context.Context) (*Release, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.releaseLocked(ctx)
}

func (m *Mirror) releaseLocked(ctx context.Context) (*Release, error) {
	if m.release != nil {
		return m.release, nil
	}
	if m.URL == "" {
		return nil, errors.New("debian mirror URL not set: configure apt sources or set the mirror in banger's config")
	}
	progress.Stage(ctx, "mirror-release", m.URL+" "+m.suite())
	body, err := m.fetchSmall(ctx, "dists/"+m.suite()+"/InRelease", 16<<20)
	if err != nil {
		return nil, err
	}
	content, err := m.verifier().Verify(ctx, body)
	if err != nil {
		return nil, fmt.Errorf("mirror %s suite %s: %w", m.URL, m.suite(), err)
	}
	rel, err := ParseRelease(content)
	if err != nil {
		return nil, fmt.Errorf("mirror %s suite %s: %w", m.URL, m.suite(), err)
	}
	if rel.Suite != m.suite() && rel.Codename != m.suite() {
		return nil, fmt.Errorf("%w: mirror %s served Release for suite %q (codename %q), asked for %q",
			ErrVerify, m.URL, rel.Suite, rel.Codename, m.suite())
	}
	if !rel.ValidUntil.IsZero() && time.Now().After(rel.ValidUntil) {
		return nil, fmt.Errorf("%w: Release of %s expired at %s (stale mirror?)", ErrVerify, m.suite(), rel.ValidUntil.Format(time.RFC3339))
	}
	if err := m.checkFreshness(rel); err != nil {
		return nil, err
	}
	m.release = rel
	return rel, nil
}

// releaseDatesFile records, in CacheDir, the newest Release Date seen per
// mirror and suite.
const releaseDatesFile = "release-dates.json"

// checkFreshness refuses a Release older than the newest one this cache
// has verified for the same mirror and suite — a replayed (validly signed
// but old) Release would otherwise pin banger to outdated packages — and
// records this one's date. Without a cache there is nothing to compare.
func (m *Mirror) checkFreshness(rel *Release) error {
	if m.CacheDir == "" {
		return nil
	}
	date, err := parseReleaseDate(rel.Date)
	if err != nil {
		return fmt.Errorf("%w: Release of %s: %w", ErrVerify, m.suite(), err)
	}
	path := filepath.Join(m.CacheDir, releaseDatesFile)
	seen := map[string]time.Time{}
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &seen)
	}
	key := m.URL + " " + m.suite()
	if last, ok := seen[key]; ok && date.Before(last) {
		return fmt.Errorf("%w: mirror %s served a Release of %s dated %s, older than the %s one verified before (a replayed or rolled-back mirror); check the mirror, or remove %s to accept it",
			ErrVerify, m.URL, m.suite(), date.Format(time.RFC3339), last.Format(time.RFC3339), path)
	}
	if last, ok := seen[key]; ok && !date.After(last) {
		return nil
	}
	seen[key] = date
	b, err := json.MarshalIndent(seen, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(m.CacheDir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(m.CacheDir, ".release-dates-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// parseReleaseDate parses a Release file's Date field (RFC 2822 style,
// "Sat, 08 Nov 2025 09:10:11 UTC").
func parseReleaseDate(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, errors.New("no Date field")
	}
	for _, layout := range []string{time.RFC1123, time.RFC1123Z, "Mon, 2 Jan 2006 15:04:05 MST", "Mon, 2 Jan 2006 15:04:05 -0700"} {
		if t, err := time.Parse(layout, strings.Replace(v, "UTC", "GMT", 1)); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("bad Date %q", truncate(v, 60))
}

// ParseRelease parses the (already verified) content of a Release file.
func ParseRelease(content []byte) (*Release, error) {
	var first Paragraph
	err := ParseControl(bytes.NewReader(content), func(p Paragraph) error {
		if first == nil {
			first = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("parse Release: %w", err)
	}
	if first == nil {
		return nil, fmt.Errorf("parse Release: empty")
	}
	rel := &Release{
		Suite:         first.Get("Suite"),
		Codename:      first.Get("Codename"),
		Date:          first.Get("Date"),
		AcquireByHash: strings.EqualFold(first.Get("Acquire-By-Hash"), "yes"),
		Files:         map[string]FileHash{},
	}
	if vu := first.Get("Valid-Until"); vu != "" {
		t, err := time.Parse(time.RFC1123, strings.Replace(vu, "UTC", "GMT", 1))
		if err != nil {
			t, err = time.Parse(time.RFC1123Z, vu)
		}
		if err != nil {
			return nil, fmt.Errorf("parse Release: bad Valid-Until %q", vu)
		}
		rel.ValidUntil = t
	}
	for _, line := range strings.Split(first.Get("SHA256"), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || !isSHA256Hex(f[0]) || size < 0 {
			return nil, fmt.Errorf("parse Release: bad SHA256 line %q", truncate(line, 120))
		}
		rel.Files[f[2]] = FileHash{SHA256: strings.ToLower(f[0]), Size: size}
	}
	if len(rel.Files) == 0 {
		return nil, fmt.Errorf("parse Release: no SHA256 file list (apt would refuse it too)")
	}
	return rel, nil
}

// Lookup returns the highest version of pkg in the suite's Packages
// indexes (components searched in order). It wraps model.ErrNotFound
// when no component has it.
func (m *Mirror) Lookup(ctx context.Context, pkg string) (*Package, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.index == nil {
		idx, err := m.loadIndexLocked(ctx)
		if err != nil {
			return nil, err
		}
		m.index = idx
	}
	p, ok := m.index[pkg]
	if !ok {
		return nil, fmt.Errorf("package %s in %s %s (%s): %w", pkg, m.URL, m.suite(), strings.Join(m.components(), ","), model.ErrNotFound)
	}
	cp := *p
	cp.Depends = ParseRelations(p.depends)
	return &cp, nil
}

func (m *Mirror) loadIndexLocked(ctx context.Context) (map[string]*Package, error) {
	rel, err := m.releaseLocked(ctx)
	if err != nil {
		return nil, err
	}
	index := map[string]*Package{}
	for _, comp := range m.components() {
		if err := m.loadComponent(ctx, rel, comp, index); err != nil {
			return nil, err
		}
	}
	return index, nil
}

func (m *Mirror) loadComponent(ctx context.Context, rel *Release, comp string, index map[string]*Package) error {
	base := comp + "/binary-" + m.arch() + "/Packages"
	var (
		name string
		fh   FileHash
	)
	exts := []string{".gz", ".xz", ""} // Go's gzip is much faster than its xz
	if m.Runner != nil {
		exts = []string{".xz", ".gz", ""} // host xz: smallest download
	}
	for _, ext := range exts {
		if h, ok := rel.Files[base+ext]; ok {
			name, fh = base+ext, h
			break
		}
	}
	if name == "" {
		return fmt.Errorf("mirror %s suite %s: Release lists no %s index", m.URL, m.suite(), base)
	}
	progress.Stage(ctx, "mirror-index", name)
	dists := "dists/" + m.suite() + "/"
	var rels []string
	if rel.AcquireByHash {
		rels = append(rels, dists+path.Dir(name)+"/by-hash/SHA256/"+fh.SHA256)
	}
	rels = append(rels, dists+name)
	file, err := m.fetchVerified(ctx, rels, fh, "index "+name)
	if err != nil {
		return err
	}
	defer file.cleanup()
	f, err := os.Open(file.path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := Decompress(ctx, m.Runner, name, f)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	defer r.Close()
	if err := parsePackagesInto(r, index); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

// parsePackagesInto reads a Packages index, keeping the highest version of
// each package. It only materializes the fields Package needs, so the 50 MB
// Debian index parses in well under a second.
func parsePackagesInto(r io.Reader, index map[string]*Package) error {
	br := bufio.NewReaderSize(r, 1<<20)
	var (
		cur   stanza
		field string
		lines int
	)
	flush := func() error {
		if cur == (stanza{}) {
			return nil
		}
		pkg, err := cur.pkg()
		cur = stanza{}
		if err != nil {
			return err
		}
		if old, ok := index[pkg.Name]; ok && CompareVersions(old.Version, pkg.Version) >= 0 {
			return nil
		}
		index[pkg.Name] = pkg
		return nil
	}
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// an overlong line (a huge Description); only continuation text can be this long
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			line = nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read Packages: %w", err)
		}
		lines++
		text := bytes.TrimRight(line, "\r\n")
		switch {
		case len(text) == 0:
			if ferr := flush(); ferr != nil {
				return ferr
			}
			field = ""
		case text[0] == ' ' || text[0] == '\t':
			if field == "Depends" || field == "Pre-Depends" {
				cur.depends += " " + string(bytes.TrimSpace(text))
			}
		default:
			i := bytes.IndexByte(text, ':')
			if i <= 0 {
				return fmt.Errorf("Packages line %d: want \"Field: value\"", lines)
			}
			field = ""
			value := bytes.TrimSpace(text[i+1:])
			switch string(text[:i]) {
			case "Package":
				cur.name = string(value)
			case "Version":
				cur.version = string(value)
			case "Architecture":
				cur.arch = string(value)
			case "Filename":
				cur.filename = string(value)
			case "Size":
				cur.size = string(value)
			case "SHA256":
				cur.sha256 = string(value)
			case "Depends", "Pre-Depends":
				field = string(text[:i])
				cur.depends += "," + string(value)
			}
		}
		if errors.Is(err, io.EOF) {
			return flush()
		}
	}
}

type stanza struct {
	name, version, arch, filename, size, sha256, depends string
}

func (s stanza) pkg() (*Package, error) {
	p := Paragraph{"Package": s.name, "Version": s.version, "Architecture": s.arch, "Filename": s.filename,
		"Size": s.size, "SHA256": s.sha256}
	pkg, err := packageFromParagraph(p)
	if err != nil {
		return nil, err
	}
	pkg.depends = s.depends
	return pkg, nil
}

func packageFromParagraph(p Paragraph) (*Package, error) {
	pkg := &Package{
		Name:     p.Get("Package"),
		Version:  p.Get("Version"),
		Arch:     p.Get("Architecture"),
		Filename: p.Get("Filename"),
		SHA256:   strings.ToLower(p.Get("SHA256")),
		depends:  p.Get("Pre-Depends") + "," + p.Get("Depends"),
	}
	size, err := strconv.ParseInt(p.Get("Size"), 10, 64)
	if pkg.Name == "" || pkg.Version == "" || pkg.Filename == "" || !isSHA256Hex(pkg.SHA256) || err != nil || size < 0 {
		return nil, fmt.Errorf("Packages index: malformed stanza for %q (needs Package, Version, Filename, SHA256, Size)", pkg.Name)
	}
	pkg.Size = size
	return pkg, nil
}

// isSHA256Hex reports whether s is a SHA-256 digest in hex (either case).
func isSHA256Hex(s string) bool {
	if len(s) != sha256.Size*2 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// ParseRelations parses a Depends-style field: comma-separated groups of
// "|"-separated alternatives, each "name [(op version)] [arch qualifiers]".
func ParseRelations(field string) [][]Relation {
	var out [][]Relation
	for _, group := range strings.Split(field, ",") {
		var alts []Relation
		for _, alt := range strings.Split(group, "|") {
			alt = strings.TrimSpace(alt)
			if i := strings.IndexAny(alt, "[<"); i >= 0 && !strings.Contains(alt[:i], "(") {
				alt = strings.TrimSpace(alt[:i]) // drop [arch] / <profile> qualifiers
			}
			if alt == "" {
				continue
			}
			var r Relation
			name, cons, hasCons := strings.Cut(alt, "(")
			r.Name = strings.TrimSpace(name)
			if i := strings.IndexByte(r.Name, ':'); i >= 0 { // name:any
				r.Name = r.Name[:i]
			}
			if r.Name == "" {
				continue // "(>= 1)" or ":any" alone names no package
			}
			if hasCons {
				cons, _, _ = strings.Cut(cons, ")")
				cons = strings.TrimSpace(cons)
				for _, op := range []string{">=", "<=", ">>", "<<", "=", ">", "<"} {
					if strings.HasPrefix(cons, op) {
						r.Op, r.Version = op, strings.TrimSpace(cons[len(op):])
						break
					}
				}
			}
			alts = append(alts, r)
		}
		if len(alts) > 0 {
			out = append(out, alts)
		}
	}
	return out
}

// Download fetches the package's .deb into dir (created if missing),
// verifying size and SHA256 against the signed index, and returns its path.
// With a CacheDir the verified file is kept there by hash and reused. Partial
// downloads are never left behind under the final name.
func (m *Mirror) Download(ctx context.Context, p *Package, dir string) (string, error) {
	base := path.Base(p.Filename)
	if base == "." || base == "/" || base == ".." || !strings.HasSuffix(base, ".deb") || strings.Contains(p.Filename, "..") {
		return "", fmt.Errorf("%w: package %s has an unsafe Filename %q", ErrVerify, p.Name, p.Filename)
	}
	if len(p.SHA256) != 64 {
		return "", fmt.Errorf("%w: package %s has no SHA256 in the index", ErrVerify, p.Name)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("download %s: %w", p.Name, err)
	}
	dst := filepath.Join(dir, base)
	if ok, _ := fileMatches(dst, FileHash{SHA256: p.SHA256, Size: p.Size}); ok {
		return dst, nil
	}
	progress.Stage(ctx, "download", fmt.Sprintf("%s %s (%d MiB)", p.Name, p.Version, (p.Size+(1<<20)-1)>>20))
	file, err := m.fetchVerified(ctx, []string{p.Filename}, FileHash{SHA256: p.SHA256, Size: p.Size}, p.Name+" "+p.Version)
	if err != nil {
		return "", err
	}
	defer file.cleanup()
	if err := placeCopy(file.path, dst); err != nil {
		return "", fmt.Errorf("download %s: %w", p.Name, err)
	}
	return dst, nil
}

// verifiedFile is a downloaded file whose hash matched; cleanup removes it
// unless it lives in the cache.
type verifiedFile struct {
	path    string
	cleanup func()
}

// fetchVerified returns a local file with the expected hash: from the cache
// when present (rehashed), otherwise downloaded from the first relative URL
// that answers (a 404 tries the next one) and verified.
func (m *Mirror) fetchVerified(ctx context.Context, rels []string, want FileHash, what string) (verifiedFile, error) {
	noop := func() {}
	dir := m.CacheDir
	if dir != "" {
		dir = filepath.Join(dir, "by-hash")
		cached := filepath.Join(dir, want.SHA256)
		if ok, _ := fileMatches(cached, want); ok {
			return verifiedFile{path: cached, cleanup: noop}, nil
		}
		os.Remove(cached) // stale or corrupt cache entry
	} else {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return verifiedFile{}, fmt.Errorf("download cache: %w", err)
	}
	var lastErr error
	for _, rel := range rels {
		tmp, err := m.download(ctx, rel, dir, want, what)
		if errors.Is(err, errNotFoundHTTP) {
			lastErr = err
			continue
		}
		if err != nil {
			return verifiedFile{}, err
		}
		if m.CacheDir == "" {
			return verifiedFile{path: tmp, cleanup: func() { os.Remove(tmp) }}, nil
		}
		final := filepath.Join(dir, want.SHA256)
		if err := os.Rename(tmp, final); err != nil {
			os.Remove(tmp)
			return verifiedFile{}, fmt.Errorf("download %s: %w", what, err)
		}
		return verifiedFile{path: final, cleanup: noop}, nil
	}
	return verifiedFile{}, lastErr
}

var errNotFoundHTTP = errors.New("not on the mirror (HTTP 404)")

func (m *Mirror) url(rel string) string {
	return strings.TrimRight(m.URL, "/") + "/" + strings.TrimLeft(rel, "/")
}

func (m *Mirror) get(ctx context.Context, rel string) (*http.Response, error) {
	u := m.url(rel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("mirror request %s: %w", u, err)
	}
	resp, err := m.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w (is the Debian mirror reachable? check apt sources or banger's mirror setting)", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("fetch %s: %w", u, errNotFoundHTTP)
		}
		return nil, fmt.Errorf("fetch %s: HTTP %s", u, resp.Status)
	}
	return resp, nil
}

func (m *Mirror) fetchSmall(ctx context.Context, rel string, limit int64) ([]byte, error) {
	resp, err := m.get(ctx, rel)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", m.url(rel), err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("fetch %s: larger than %d bytes", m.url(rel), limit)
	}
	return data, nil
}

// download writes rel into a temp file in dir, hashing as it goes, and
// returns the temp path only when size and SHA256 match.
func (m *Mirror) download(ctx context.Context, rel, dir string, want FileHash, what string) (string, error) {
	resp, err := m.get(ctx, rel)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	tmp, err := os.CreateTemp(dir, ".part-*")
	if err != nil {
		return "", fmt.Errorf("download %s: %w", what, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	pw := &progressWriter{ctx: ctx, stage: "download", what: what, total: want.Size}
	n, err := io.Copy(io.MultiWriter(tmp, h, pw), io.LimitReader(resp.Body, want.Size+1))
	if err != nil {
		return "", fmt.Errorf("download %s from %s: %w", what, m.url(rel), err)
	}
	if n != want.Size {
		return "", fmt.Errorf("%w: %s from %s is %d bytes, the signed index says %d", ErrVerify, what, m.url(rel), n, want.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return "", fmt.Errorf("%w: %s from %s has SHA256 %s, the signed index says %s (corrupt or tampered download)", ErrVerify, what, m.url(rel), got, want.SHA256)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("download %s: %w", what, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("download %s: %w", what, err)
	}
	ok = true
	return tmp.Name(), nil
}

type progressWriter struct {
	ctx         context.Context
	stage, what string
	total, done int64
	last        time.Time
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if p.total > 0 && (time.Since(p.last) > 200*time.Millisecond || p.done >= p.total) {
		p.last = time.Now()
		progress.Report(p.ctx, progress.Event{Stage: p.stage, Message: p.what, Fraction: min(1, float64(p.done)/float64(p.total))})
	}
	return len(b), nil
}

// fileMatches reports whether path exists with the given size and SHA256.
func fileMatches(path string, want FileHash) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() != want.Size {
		return false, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return hex.EncodeToString(h.Sum(nil)) == want.SHA256, nil
}

// placeCopy puts a copy of src at dst atomically (hard link when possible,
// else copy to a temp file + rename).
func placeCopy(src, dst string) error {
	f, err := os.CreateTemp(filepath.Dir(dst), ".place-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Close()
	os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			os.Remove(tmp)
			return err
		}
		if err := out.Sync(); err != nil {
			out.Close()
			os.Remove(tmp)
			return err
		}
		if err := out.Close(); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
