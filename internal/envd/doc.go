// Package envd is the guest side of banger's E2B compatibility: the subset
// of E2B's in-sandbox agent ("envd") that the e2b SDKs use, served by
// banger-agent on TCP port Port of every VM.
//
// Contract (what the SDK relies on; see docs/e2b.md):
//
//   - Connect protocol, JSON codec, over HTTP/1.1: services
//     process.Process (Start and Connect server-streaming; List, SendInput,
//     SendSignal, CloseStdin unary) and filesystem.Filesystem (Stat,
//     ListDir, MakeDir, Move, Remove unary). Message and field names follow
//     E2B's public process.proto and filesystem.proto; messages.go holds
//     the definitions, written by hand for the protobuf JSON mapping.
//   - Plain HTTP: GET /files?path=&username= answers the raw bytes, POST
//     /files?path=&username= takes multipart/form-data ("file" parts, the
//     part's file name as the path when path is empty) or
//     application/octet-stream, and answers a JSON array of written
//     entries; GET /health answers 204.
//   - Every request, /health included, carries the sandbox's access token
//     in X-Access-Token; a missing or wrong token gets 401 and nothing
//     runs. The token is AccessToken(agent token): the host derives it
//     from the VM's agent token, the guest from its token file, so it
//     follows the agent token when a snapshot-restored VM gets its own.
//   - The user is the Basic username of the Authorization header (RPCs) or
//     the username query parameter (/files); empty means DefaultUser.
//     Processes run with that user's uid, gids and home; file operations
//     run on a thread whose filesystem uid and groups are the user's, so
//     the kernel's permission checks (symlinks and ".." included) decide
//     what a user may reach. Relative paths are relative to the home.
//   - Limits: a unary request or stream envelope is at most MaxMessage
//     bytes; an upload at most Options.MaxUpload.
package envd
