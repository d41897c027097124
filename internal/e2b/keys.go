package e2b

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// KeyPrefix starts every API key (the SDKs check the format).
const KeyPrefix = "e2b_"

// keyHexLen is the number of hex digits after the prefix (160 bits).
const keyHexLen = 40

// BaseTemplate is the template name meaning banger's default image.
const BaseTemplate = "base"

// NewKey returns a fresh API key secret: "e2b_" and 40 hex digits.
func NewKey() (string, error) {
	var b [keyHexLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate api key: %w", err)
	}
	return KeyPrefix + hex.EncodeToString(b[:]), nil
}

// NewKeyID returns a short random key id, shown in listings.
func NewKeyID() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate api key id: %w", err)
	}
	return "k" + hex.EncodeToString(b[:]), nil
}

// ValidKeyFormat reports whether s looks like an API key.
func ValidKeyFormat(s string) bool {
	h, ok := strings.CutPrefix(s, KeyPrefix)
	if !ok || len(h) != keyHexLen {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}

// HashKey is what the state store keeps of a key: its SHA-256, hex. Keys
// carry 160 random bits, so a fast hash suffices.
func HashKey(secret string) string {
	s := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(s[:])
}
