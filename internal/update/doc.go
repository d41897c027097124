// Package update installs signed banger releases over the running install
// (`banger update`) and publishes them (cmd/banger-release).
//
// A release channel is a static directory:
//
//	manifest.json                               unsigned index: versions → file references
//	<version>/banger_<version>_<os>_<arch>.tar.gz   banger, bangerd and banger-agent, regular files
//	<version>/SHA256SUMS                        sha256sum output listing the tarball
//	<version>/SHA256SUMS.sig                    ECDSA P-256 (ASN.1, over SHA-256) or ed25519
//
// Trust comes only from the pinned public key (built in, config, or
// --pubkey-file): the manifest is a hint; SHA256SUMS must verify before it
// is parsed; the tarball's name (which carries version, OS and
// architecture) must be listed there and its bytes must hash to the
// listed digest as they stream into the cache; the unpacked binaries must
// report the release's version. The Updater contract (updater.go) says
// what is refused and what is rolled back; Installation (install.go) says
// how binaries are swapped with .previous copies. docs/update.md is the
// operator's view.
package update
