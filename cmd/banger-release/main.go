// Command banger-release signs banger releases: it generates release keys
// and publishes built binaries into a release channel directory
// (manifest.json, tarball, SHA256SUMS, SHA256SUMS.sig). scripts/release
// wraps it; see docs/update.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/bangerdev/banger/internal/update"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("banger-release", flag.ContinueOnError)
	genKey := fs.String("gen-key", "", "write a new ECDSA P-256 private key to `KEYFILE` (0600) and its public key to KEYFILE.pub")
	keyFile := fs.String("key", "", "sign with the PEM private key in `KEYFILE`")
	out := fs.String("out", "", "release channel `DIR` (manifest.json is created or updated)")
	version := fs.String("version", "", "release `VERSION` (vX.Y.Z)")
	bin := fs.String("bin", "", "`DIR` holding the built banger and bangerd")
	goos := fs.String("os", runtime.GOOS, "target OS of the binaries")
	goarch := fs.String("arch", runtime.GOARCH, "target architecture of the binaries")
	pub := fs.Bool("print-pubkey", false, "print KEYFILE's public key in the one-line form the Makefile's UPDATE_PUBKEY takes")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: banger-release --gen-key KEYFILE\n       banger-release --key KEYFILE --print-pubkey\n       banger-release --key KEYFILE --out DIR --version vX.Y.Z --bin DIR")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "banger-release: %v\n", err)
		return 1
	}
	if *genKey != "" {
		p, err := update.WriteNewKeyPair(*genKey)
		if err != nil {
			return fail(err)
		}
		fmt.Printf("wrote %s (private, 0600) and %s.pub (public, %s)\n", *genKey, *genKey, p.Fingerprint())
		return 0
	}
	if *keyFile == "" {
		fs.Usage()
		return 2
	}
	data, err := os.ReadFile(*keyFile)
	if err != nil {
		return fail(err)
	}
	key, err := update.ParsePrivateKey(data)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", *keyFile, err))
	}
	if *pub {
		fmt.Println(key.Public().Base64())
		return 0
	}
	if *out == "" || *version == "" || *bin == "" {
		fs.Usage()
		return 2
	}
	rel, err := update.Publish(update.ReleaseOptions{
		OutDir: *out, Version: *version, GOOS: *goos, GOARCH: *goarch, Key: key, Now: time.Now(),
		Files: map[string]string{"banger": *bin + "/banger", "bangerd": *bin + "/bangerd", "banger-agent": *bin + "/banger-agent"},
	})
	if err != nil {
		return fail(err)
	}
	fmt.Printf("published %s: %s/%s (signed by %s)\n", rel.Version, *out, rel.Tarball, key.Public().Fingerprint())
	return 0
}
