package update

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// PublicKey is a pinned release key: ECDSA P-256 or ed25519.
//
// Signature scheme (compatible with openssl):
//   - ECDSA P-256: ASN.1 DER signature over SHA-256(SHA256SUMS)
//     (`openssl dgst -sha256 -sign key.pem -out SHA256SUMS.sig SHA256SUMS`);
//   - ed25519: the 64-byte signature of the SHA256SUMS bytes themselves
//     (`openssl pkeyutl -sign -rawin -inkey key.pem -in SHA256SUMS`).
//
// Public keys are PEM "PUBLIC KEY" blocks (PKIX SubjectPublicKeyInfo),
// the format of `openssl pkey -pubout`; build stamps carry the same DER
// base64-encoded on one line.
type PublicKey struct {
	key crypto.PublicKey
}

// ParsePublicKey reads a PEM "PUBLIC KEY" block, or the base64 of its DER
// (the form stamped into builds).
func ParsePublicKey(data []byte) (*PublicKey, error) {
	var der []byte
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("%w: PEM block is %q, want \"PUBLIC KEY\"", ErrBadKey, block.Type)
		}
		der = block.Bytes
	} else {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
		if err != nil {
			return nil, fmt.Errorf("%w: neither a PEM public key nor base64 DER", ErrBadKey)
		}
		der = b
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: ECDSA key on %s, want P-256", ErrBadKey, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("%w: %T keys are not accepted (ECDSA P-256 or ed25519)", ErrBadKey, k)
	}
	return &PublicKey{key: k}, nil
}

// Verify checks sig over msg (the SHA256SUMS bytes). It returns an error
// wrapping ErrBadSignature when the signature does not verify.
func (p *PublicKey) Verify(msg, sig []byte) error {
	if len(sig) == 0 {
		return fmt.Errorf("%w: the signature is empty", ErrBadSignature)
	}
	ok := false
	switch k := p.key.(type) {
	case *ecdsa.PublicKey:
		h := sha256.Sum256(msg)
		ok = ecdsa.VerifyASN1(k, h[:], sig)
	case ed25519.PublicKey:
		ok = len(sig) == ed25519.SignatureSize && ed25519.Verify(k, msg, sig)
	}
	if !ok {
		return fmt.Errorf("%w: SHA256SUMS is not signed by the pinned release key (%s)", ErrBadSignature, p.Fingerprint())
	}
	return nil
}

// Fingerprint is "sha256:" + the first 16 hex digits of SHA-256 of the DER
// public key: enough to tell keys apart in messages.
func (p *PublicKey) Fingerprint() string {
	der, err := x509.MarshalPKIXPublicKey(p.key)
	if err != nil {
		return "unknown"
	}
	h := sha256.Sum256(der)
	return fmt.Sprintf("sha256:%x", h[:8])
}

// Base64 is the one-line form stamped into builds.
func (p *PublicKey) Base64() string {
	der, _ := x509.MarshalPKIXPublicKey(p.key)
	return base64.StdEncoding.EncodeToString(der)
}

// PrivateKey signs releases (used by cmd/banger-release only).
type PrivateKey struct {
	key crypto.Signer
}

// GenerateKey makes a new ECDSA P-256 release key.
func GenerateKey() (*PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &PrivateKey{key: k}, nil
}

// ParsePrivateKey reads a PEM "PRIVATE KEY" (PKCS#8) block holding an
// ECDSA P-256 or ed25519 key (`openssl genpkey` writes this format).
func ParsePrivateKey(data []byte) (*PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%w: not a PEM \"PRIVATE KEY\" (PKCS#8) file", ErrBadKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: ECDSA key on %s, want P-256", ErrBadKey, k.Curve.Params().Name)
		}
		return &PrivateKey{key: k}, nil
	case ed25519.PrivateKey:
		return &PrivateKey{key: k}, nil
	}
	return nil, fmt.Errorf("%w: %T keys are not accepted (ECDSA P-256 or ed25519)", ErrBadKey, k)
}

// Public returns the matching public key.
func (k *PrivateKey) Public() *PublicKey { return &PublicKey{key: k.key.Public()} }

// Sign signs msg (the SHA256SUMS bytes) with the scheme PublicKey.Verify
// checks.
func (k *PrivateKey) Sign(msg []byte) ([]byte, error) {
	switch s := k.key.(type) {
	case *ecdsa.PrivateKey:
		h := sha256.Sum256(msg)
		return ecdsa.SignASN1(rand.Reader, s, h[:])
	case ed25519.PrivateKey:
		return ed25519.Sign(s, msg), nil
	}
	return nil, errors.New("unsupported key")
}

// PEM renders the private key as PEM PKCS#8.
func (k *PrivateKey) PEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// PEM renders the public key as a PEM "PUBLIC KEY" block.
func (p *PublicKey) PEM() []byte {
	der, _ := x509.MarshalPKIXPublicKey(p.key)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// WriteNewKeyPair generates a key and writes it to path (0600, refusing
// to overwrite) and its public key to path+".pub" (0644).
func WriteNewKeyPair(path string) (*PublicKey, error) {
	k, err := GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	priv, err := k.PEM()
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(path + ".pub"); err == nil {
		return nil, fmt.Errorf("%s.pub already exists: move it away or pick another KEYFILE", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%s already exists: refusing to overwrite a release key", path)
		}
		return nil, fmt.Errorf("write key: %w", err)
	}
	_, werr := f.Write(priv)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write key %s: %w", path, err)
	}
	pub := k.Public()
	if err := os.WriteFile(path+".pub", pub.PEM(), 0o644); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write public key: %w", err)
	}
	_ = syncDir(filepath.Dir(path))
	return pub, nil
}
