package update

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// get fetches a small file fully into memory, refusing more than max
// bytes.
func (u *Updater) get(ctx context.Context, url string, max int64) ([]byte, error) {
	resp, err := u.do(ctx, url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > max {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", ErrTooLarge, url, resp.ContentLength, max)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s: %v", ErrTruncated, url, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%w: %s is more than the %d bytes allowed", ErrTooLarge, url, max)
	}
	if resp.ContentLength >= 0 && int64(len(data)) != resp.ContentLength {
		return nil, fmt.Errorf("%w: %s: got %d of %d bytes", ErrTruncated, url, len(data), resp.ContentLength)
	}
	return data, nil
}

// do GETs url. The request is abandoned when the server sends nothing for
// Stall: no answer (ErrUnreachable) or a body that stops flowing (a read
// error, reported as a truncated download).
func (u *Updater) do(ctx context.Context, url string) (*http.Response, error) {
	limit := u.Stall
	if limit <= 0 {
		limit = DefaultStall
	}
	rctx, cancel := context.WithCancel(ctx)
	var stalled atomic.Bool
	timer := time.AfterFunc(limit, func() { stalled.Store(true); cancel() })
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		timer.Stop()
		cancel()
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, url, err)
	}
	req.Header.Set("User-Agent", "banger-update/"+u.Current.Version)
	resp, err := u.client().Do(req)
	if err != nil {
		timer.Stop()
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case stalled.Load():
			return nil, fmt.Errorf("%w: %s did not answer within %s", ErrUnreachable, url, limit)
		}
		return nil, fmt.Errorf("%w: %v (check the network, or --manifest-url)", ErrUnreachable, err)
	}
	if resp.StatusCode != http.StatusOK {
		timer.Stop()
		cancel()
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%w: %s: 404 not found (the release server lacks a file the manifest names)", ErrUnreachable, url)
		}
		return nil, fmt.Errorf("%w: %s: HTTP %s", ErrUnreachable, url, resp.Status)
	}
	timer.Reset(limit)
	resp.Body = &stallBody{ReadCloser: resp.Body, timer: timer, limit: limit, stalled: &stalled, cancel: cancel}
	return resp, nil
}

// DefaultStall is how long a release server may send nothing.
const DefaultStall = 60 * time.Second

// stallBody re-arms the stall timer on every read that returns data.
type stallBody struct {
	io.ReadCloser
	timer   *time.Timer
	limit   time.Duration
	stalled *atomic.Bool
	cancel  context.CancelFunc
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.timer.Reset(b.limit)
	}
	if err != nil && err != io.EOF && b.stalled.Load() {
		err = fmt.Errorf("the server sent nothing for %s", b.limit)
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.timer.Stop()
	b.cancel()
	return b.ReadCloser.Close()
}

func (u *Updater) client() *http.Client {
	if u.HTTP != nil {
		return u.HTTP
	}
	return NewHTTPClient()
}

// NewHTTPClient is the client `banger update` uses: http and https, plus
// file:// URLs for channels on a local or mounted directory. Every byte it
// fetches is verified, so redirects are followed.
func NewHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.RegisterProtocol("file", http.NewFileTransport(http.Dir("/")))
	return &http.Client{Transport: tr} // stalls are bounded by Updater.Stall
}

// download streams url into dst (created 0644 beside a .partial file),
// hashing on the fly. dst appears only when the byte count matches the
// server's Content-Length (when sent) and the SHA-256 equals want; a
// truncated or altered download leaves nothing behind. A dst that already
// holds the wanted bytes is reused without a download.
func (u *Updater) download(ctx context.Context, url, dst, want string, max int64) error {
	if got, err := hashFile(dst); err == nil && got == want {
		u.logf("using the verified copy in %s", dst)
		return nil
	}
	resp, err := u.do(ctx, url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.ContentLength > max {
		return fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", ErrTooLarge, url, resp.ContentLength, max)
	}
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".partial-*")
	if err != nil {
		return fmt.Errorf("download to the cache: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, max+1))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %s: the connection closed after %d of %d bytes; retry", ErrTruncated, url, n, resp.ContentLength)
		}
		return fmt.Errorf("%w: %s after %d bytes: %v", ErrTruncated, url, n, err)
	}
	if n > max {
		return fmt.Errorf("%w: %s is more than the %d bytes allowed", ErrTooLarge, url, max)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fmt.Errorf("%w: %s: got %d of %d bytes; retry", ErrTruncated, url, n, resp.ContentLength)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%w: %s has sha256 %s, the signed SHA256SUMS says %s (a corrupted or tampered download; nothing was installed)", ErrHashMismatch, filepath.Base(dst), got, want)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("download to the cache: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("download to the cache: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), dst)
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
