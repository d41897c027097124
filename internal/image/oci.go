package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/bangerdev/banger/internal/atomicfile"
	"github.com/bangerdev/banger/internal/ext4"
	"github.com/bangerdev/banger/internal/model"
	"github.com/bangerdev/banger/internal/progress"
)

// Errors of Pull that callers may branch on.
var (
	// ErrRefNotFound: the registry does not know the repository or tag. It
	// also matches model.ErrNotFound.
	ErrRefNotFound = fmt.Errorf("image reference %w", model.ErrNotFound)
	// ErrAuth: the registry refused the credentials (or anonymous access).
	ErrAuth = errors.New("registry authentication failed")
	// ErrCorruptBlob: a blob's content does not match its digest.
	ErrCorruptBlob = errors.New("blob does not match its digest")
)

// PullOptions tunes Pull.
type PullOptions struct {
	Name      string            // image name; default derived from the reference ("alpine-3-20")
	Keychain  authn.Keychain    // default authn.DefaultKeychain (docker config, else anonymous)
	Insecure  bool              // allow plain-http registries (tests, local registries)
	Platform  string            // "linux/amd64" (the only supported one)
	SizeMiB   int64             // apparent image size; 0 = content x1.5 + 512 MiB, at least 1 GiB
	Kernel    string            // default kernel recorded with the image
	Replace   bool              // replace an existing image of that name
	Transport http.RoundTripper // optional HTTP transport (tests)
}

// DefaultPullName derives an image name from a reference:
// "docker.io/library/alpine:3.20" -> "alpine-3-20", "ghcr.io/o/tool" -> "tool".
func DefaultPullName(ref string) string {
	r := ref
	if i := strings.Index(r, "@"); i >= 0 {
		r = r[:i]
	}
	if i := strings.LastIndex(r, "/"); i >= 0 {
		r = r[i+1:]
	}
	repo, tag, _ := strings.Cut(r, ":")
	if tag == "" || tag == "latest" {
		return sanitizeName(repo)
	}
	return sanitizeName(repo + "-" + tag)
}

// Pull converts an OCI/Docker image into an ext4 image: the manifest for
// linux/amd64 is resolved, layers are fetched into the verified blob cache
// (each blob once, even for concurrent pulls of one name), flattened oldest
// first into a staging tree (whiteouts, opaque directories, hard links,
// symlinks confined to the root, ownership, modes, setuid bits, file
// capabilities; device nodes skipped), converted with mkfs.ext4 -d and
// given banger's guest pieces. Errors wrap ErrRefNotFound, ErrAuth,
// ErrCorruptBlob or ErrUnsafeEntry where they apply; nothing is published
// on failure or cancellation.
func (s *Store) Pull(ctx context.Context, ref string, o PullOptions) (*model.Image, error) {
	if o.Platform == "" {
		o.Platform = "linux/amd64"
	}
	if o.Platform != "linux/amd64" {
		return nil, fmt.Errorf("image pull: platform %q is not supported (linux/amd64 only)", o.Platform)
	}
	var nopts []name.Option
	if o.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("image pull: %q is not a valid image reference: %w", ref, err)
	}
	if o.Name == "" {
		o.Name = DefaultPullName(r.String())
	}
	if err := model.ValidateName(o.Name); err != nil {
		return nil, fmt.Errorf("image pull: %w (choose one with --name)", err)
	}
	if o.SizeMiB < 0 {
		return nil, fmt.Errorf("image pull: negative size")
	}
	key := fmt.Sprintf("pull\x00%s\x00%d\x00%s\x00%v", r.Name(), o.SizeMiB, o.Kernel, o.Replace)
	return s.coalesce(ctx, o.Name, key, func(ctx context.Context) (*model.Image, error) {
		return s.pull(ctx, r, o)
	})
}

func classifyRemote(ref string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w for %s: %v (log in with `docker login` or check ~/.docker/config.json)", ErrAuth, ref, err)
		case te.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%s: %w: %v (check the repository name and tag)", ref, ErrRefNotFound, err)
		}
		for _, d := range te.Errors {
			switch d.Code {
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%w for %s: %v (log in with `docker login` or check ~/.docker/config.json)", ErrAuth, ref, err)
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
				return fmt.Errorf("%s: %w: %v (check the repository name and tag)", ref, ErrRefNotFound, err)
			}
		}
	}
	if strings.Contains(err.Error(), "error verifying") {
		return fmt.Errorf("%s: %w: %v (the registry served corrupt data; try again)", ref, ErrCorruptBlob, err)
	}
	return fmt.Errorf("%s: %w", ref, err)
}

type layerInfo struct {
	digest v1.Hash
	size   int64
}

func (s *Store) pull(ctx context.Context, ref name.Reference, o PullOptions) (*model.Image, error) {
	// An existing image of this name is not an error yet: pulling the same
	// content again (same repository and digest, kernel and size) is a
	// no-op, as with docker pull, so that pulls which just missed a
	// concurrent identical one still succeed.
	existing, absentErr := s.existingImage(ctx, o.Name, o.Replace)
	if absentErr != nil && existing == nil {
		return nil, absentErr
	}
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})}
	if o.Transport != nil {
		ropts = append(ropts, remote.WithTransport(o.Transport))
	}
	progress.Stage(ctx, "resolve", ref.String())
	desc, err := remote.Get(ref, ropts...)
	if err != nil {
		return nil, fmt.Errorf("image pull: %w", classifyRemote(ref.String(), err))
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("image pull: %w", classifyRemote(ref.String(), err))
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("image pull: %w", classifyRemote(ref.String(), err))
	}
	if existing != nil {
		if sameOCIContent(existing, ref, digest, o) {
			progress.Stage(ctx, "done", fmt.Sprintf("image %q is up to date (%s)", o.Name, digest))
			return existing, nil
		}
		return nil, absentErr
	}
	manifest, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("image pull: %w", classifyRemote(ref.String(), err))
	}
	// config: cached blob or fetched, verified, then checked for the platform
	cfgRaw, err := s.cachedBlob(manifest.Config.Digest, func() ([]byte, error) { return img.RawConfigFile() })
	if err != nil {
		return nil, fmt.Errorf("image pull: config: %w", classifyRemote(ref.String(), err))
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(cfgRaw, &cfg); err != nil {
		return nil, fmt.Errorf("image pull: %s: bad config: %w", ref, err)
	}
	if (cfg.OS != "" && cfg.OS != "linux") || (cfg.Architecture != "" && cfg.Architecture != "amd64") {
		return nil, fmt.Errorf("image pull: %s is a %s/%s image; banger runs linux/amd64", ref, cfg.OS, cfg.Architecture)
	}
	layers := make([]layerInfo, len(manifest.Layers))
	refs := []string{manifest.Config.Digest.String()}
	for i, l := range manifest.Layers {
		if l.Digest.Algorithm != "sha256" {
			return nil, fmt.Errorf("image pull: layer %s: only sha256 digests are supported", l.Digest)
		}
		layers[i] = layerInfo{digest: l.Digest, size: l.Size}
		refs = append(refs, l.Digest.String())
	}
	if err := s.fetchLayers(ctx, img, layers); err != nil {
		return nil, fmt.Errorf("image pull: %w", classifyRemote(ref.String(), err))
	}

	work, cleanup, err := s.tempDir("pull")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	root := filepath.Join(work, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, fmt.Errorf("image pull: %w", err)
	}
	asRoot := os.Geteuid() == 0 && !s.unprivileged
	u, err := newUnpacker(root, asRoot)
	if err != nil {
		return nil, fmt.Errorf("image pull: %w", err)
	}
	defer u.close()
	start := time.Now()
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		progress.Report(ctx, progress.Event{Stage: "unpack", Message: fmt.Sprintf("layer %d/%d %s", i+1, len(layers), l.digest.Hex[:12]), Fraction: float64(i) / float64(len(layers))})
		if err := s.applyBlob(u, l.digest); err != nil {
			return nil, fmt.Errorf("image pull: %s: layer %d (%s): %w", ref, i+1, l.digest, err)
		}
	}
	u.finish()
	for _, n := range u.notes {
		progress.Stage(ctx, "unpack", n)
	}
	progress.Report(ctx, progress.Event{Stage: "unpack", Message: fmt.Sprintf("%d entries in %s", u.entries, time.Since(start).Round(time.Millisecond)), Fraction: 1})

	content := diskUsage(root)
	size := o.SizeMiB << 20
	if size == 0 {
		size = content*3/2 + 512<<20
		if size < 1<<30 {
			size = 1 << 30
		}
		size = (size + 64<<20 - 1) / (64 << 20) * (64 << 20)
	}
	var inodes int64
	if need := u.entries*3/2 + 4096; need > size/16384 {
		inodes = need
	}
	tmp, cleanupImg, err := s.tempFile("pull")
	if err != nil {
		return nil, err
	}
	defer cleanupImg()
	progress.Stage(ctx, "mkfs", fmt.Sprintf("mkfs.ext4 -d (%d MiB, %d MiB of content)", size>>20, content>>20))
	if err := ext4.Build(ctx, s.Runner, ext4.BuildOptions{SourceDir: root, Out: tmp, SizeBytes: size, Label: "rootfs", Inodes: inodes}); err != nil {
		return nil, fmt.Errorf("image pull: %s: %w", ref, err)
	}
	progress.Stage(ctx, "guest", "banger guest pieces")
	facts := inspectTree(root)
	facts.Source = ociSource(ref, digest)
	facts.Busybox = s.Busybox
	b := &ext4.Batch{}
	if !asRoot {
		facts.MetaOf = func(rel string) (int, int, os.FileMode, bool) {
			m, ok := u.meta[rel]
			return m.uid, m.gid, os.FileMode(m.mode), ok
		}
		// The staging tree is owned by us with relaxed modes: set the
		// layers' ownership and modes in the image itself.
		for _, rel := range u.relPaths() {
			m := u.meta[rel]
			b.Chown("/"+rel, m.uid, m.gid)
			if !m.symlink {
				b.Chmod("/"+rel, os.FileMode(m.mode))
			}
		}
	}
	if err := guestBatch(b, root, facts); err != nil {
		return nil, fmt.Errorf("image pull: %w", err)
	}
	if err := ext4.Apply(ctx, s.Runner, tmp, b); err != nil {
		return nil, fmt.Errorf("image pull: %s: %w", ref, err)
	}
	im := &model.Image{Name: o.Name, Source: facts.Source, Kernel: o.Kernel}
	return s.publish(ctx, tmp, im, refs, o.Replace)
}

// ociSource is the Source recorded for an image pulled from repository
// ref at digest.
func ociSource(ref name.Reference, digest v1.Hash) string {
	return "oci:" + ref.Context().Name() + "@" + digest.String()
}

// sameOCIContent reports whether im is what pulling ref at digest with o
// would produce: same repository and digest, same kernel, and the size
// asked for (0 = any size).
func sameOCIContent(im *model.Image, ref name.Reference, digest v1.Hash, o PullOptions) bool {
	return im.Source == ociSource(ref, digest) && im.Kernel == o.Kernel &&
		(o.SizeMiB == 0 || im.SizeBytes == o.SizeMiB<<20)
}

// cachedBlob returns a small blob from the cache, or fetches, verifies and
// caches it.
func (s *Store) cachedBlob(d v1.Hash, fetch func() ([]byte, error)) ([]byte, error) {
	p := s.blobPath(d.Hex)
	if data, err := os.ReadFile(p); err == nil {
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) == d.Hex {
			return data, nil
		}
		_ = os.Remove(p)
	}
	data, err := fetch()
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != d.Hex {
		return nil, fmt.Errorf("%w: %s", ErrCorruptBlob, d)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	return data, atomicfile.Write(p, data, 0o644)
}

// fetchLayers downloads missing layer blobs into the cache, three at a
// time, reporting byte progress.
func (s *Store) fetchLayers(ctx context.Context, img v1.Image, layers []layerInfo) error {
	var missing []layerInfo
	var total int64
	for _, l := range layers {
		if st, err := os.Stat(s.blobPath(l.digest.Hex)); err == nil && (l.size <= 0 || st.Size() == l.size) {
			continue
		}
		missing = append(missing, l)
		total += l.size
	}
	if len(missing) == 0 {
		progress.Report(ctx, progress.Event{Stage: "download", Message: "all layers cached", Fraction: 1})
		return nil
	}
	progress.Report(ctx, progress.Event{Stage: "download", Message: fmt.Sprintf("%d layers, %d bytes", len(missing), total), Fraction: 0})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var mu sync.Mutex
	last := time.Now()
	tick := func(n int64) {
		d := done.Add(n)
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) > 200*time.Millisecond && total > 0 {
			last = time.Now()
			progress.Report(ctx, progress.Event{Stage: "download", Fraction: float64(d) / float64(total)})
		}
	}
	sem := make(chan struct{}, 3)
	errs := make([]error, len(missing))
	var wg sync.WaitGroup
	seen := map[string]bool{}
	for i, l := range missing {
		if seen[l.digest.Hex] {
			continue // a layer listed twice is fetched once
		}
		seen[l.digest.Hex] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			defer func() { <-sem }()
			if err := s.fetchBlob(ctx, img, l, tick); err != nil {
				errs[i] = err
				cancel()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	progress.Report(ctx, progress.Event{Stage: "download", Message: fmt.Sprintf("%d bytes", total), Fraction: 1})
	return nil
}

type countWriter func(int64)

func (c countWriter) Write(p []byte) (int, error) { c(int64(len(p))); return len(p), nil }

func (s *Store) fetchBlob(ctx context.Context, img v1.Image, l layerInfo, tick func(int64)) error {
	final := s.blobPath(l.digest.Hex)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return err
	}
	layer, err := img.LayerByDigest(l.digest)
	if err != nil {
		return err
	}
	rc, err := layer.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.CreateTemp(filepath.Dir(final), l.digest.Hex+".part-*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h, countWriter(tick)), rc); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("download %s: %w", l.digest, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != l.digest.Hex {
		return fmt.Errorf("%w: %s has sha256:%s", ErrCorruptBlob, l.digest, got)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return err
	}
	ok = true
	return nil
}

// applyBlob decompresses a cached layer blob (gzip, zstd or plain tar, by
// magic), applies it and re-verifies the blob's digest as it is read.
func (s *Store) applyBlob(u *unpacker, d v1.Hash) error {
	p := s.blobPath(d.Hex)
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(f, h), 1<<20)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		defer gz.Close()
		r = gz
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		zr, err := zstd.NewReader(br)
		if err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		r = zr
	}
	if err := u.applyLayer(r); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		_ = os.Remove(p)
		return fmt.Errorf("%w: cached blob %s was corrupt and has been removed; pull again", ErrCorruptBlob, d)
	}
	return nil
}
