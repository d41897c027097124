package debmirror

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/bangerdev/banger/internal/hostexec"
)

// ErrVerify marks every integrity failure: a bad or missing signature, a
// hash or size that does not match what the signed Release promised.
// Callers must treat the data as hostile and not retry silently.
var ErrVerify = errors.New("verification failed")

// Verifier checks a clearsigned InRelease file. Contract: Verify returns the
// signed content (the part covered by a good signature from a trusted key,
// never text outside the signature) or an error wrapping ErrVerify when no
// trusted good signature covers it. It must not trust the input in any other
// way.
type Verifier interface {
	Verify(ctx context.Context, inRelease []byte) ([]byte, error)
}

// DefaultKeyring is the keyring apt uses for the Debian archive.
const DefaultKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// GPGV verifies with gpgv(1) against a keyring, as apt does.
type GPGV struct {
	Runner  hostexec.Runner
	Keyring string // "" = DefaultKeyring
}

// Verify implements Verifier. It runs
// `gpgv --keyring K --status-fd 2 --output - -` with the InRelease on stdin
// and, like apt, requires at least one GOODSIG+VALIDSIG (signatures by
// expired, revoked or unknown keys do not count but are not fatal, since the
// archive signs with several keys) and no BADSIG.
func (g GPGV) Verify(ctx context.Context, inRelease []byte) ([]byte, error) {
	keyring := g.Keyring
	if keyring == "" {
		keyring = DefaultKeyring
	}
	if g.Runner == nil {
		return nil, errors.New("gpgv verifier: no runner configured")
	}
	res, err := g.Runner.Run(ctx, hostexec.Cmd{
		Name:  "gpgv",
		Args:  []string{"--keyring", keyring, "--status-fd", "2", "--output", "-", "-"},
		Stdin: bytes.NewReader(inRelease),
	})
	if err != nil {
		if errors.Is(err, hostexec.ErrNotFound) {
			return nil, fmt.Errorf("verify InRelease: %w (apt-get install gpgv)", err)
		}
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: InRelease signature not trusted by %s: %v", ErrVerify, keyring, err)
	}
	good, valid := false, false
	sc := bufio.NewScanner(bytes.NewReader(res.Stderr))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "[GNUPG:]" {
			continue
		}
		switch f[1] {
		case "GOODSIG":
			good = true
		case "VALIDSIG":
			valid = true
		case "BADSIG":
			return nil, fmt.Errorf("%w: InRelease has a %s signature (status: %s)", ErrVerify, f[1], strings.Join(f[1:], " "))
		}
	}
	if !good || !valid {
		return nil, fmt.Errorf("%w: gpgv reported no good signature for InRelease from %s", ErrVerify, keyring)
	}
	if len(res.Stdout) == 0 {
		return nil, fmt.Errorf("%w: gpgv returned no signed content", ErrVerify)
	}
	return res.Stdout, nil
}
