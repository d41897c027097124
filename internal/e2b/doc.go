// Package e2b serves an E2B-compatible API on the host, so the unmodified
// e2b SDKs drive banger VMs (docs/e2b.md). One HTTP handler holds two
// parts:
//
//   - the control plane (the SDK's E2B_API_URL): POST /v2/sandboxes and
//     v1 POST /sandboxes, GET /v2/sandboxes and GET /sandboxes/{id},
//     POST /v2/sandboxes/{id}/connect (and v1), POST
//     /sandboxes/{id}/timeout, DELETE /sandboxes/{id}. Every call carries
//     X-API-KEY; a key sees only the sandboxes it created (another key's
//     sandbox is "not found"). Create answers once the guest's envd
//     answers its health check, so the SDK can use the sandbox at once.
//   - the envd router (the SDK's E2B_SANDBOX_URL): a request carrying an
//     E2b-Sandbox-Id header, or a Host of the form <port>-<id>.<domain>,
//     is proxied to http://<vm-ip>:<port> (port from E2b-Sandbox-Port or
//     the Host, envd's 49983 by default), streaming both ways. The router
//     authenticates nothing itself: envd checks its access token on every
//     request. An unknown sandbox gets 502, as from E2B's proxy.
//
// Banger itself is reached through Backend (the daemon's RPC API in
// production: DaemonBackend), so the package has no host side effects of
// its own and is tested against a fake backend and a real envd server.
package e2b
