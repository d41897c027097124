// Package rpc is banger's JSON RPC over a unix socket: the CLI talks to
// bangerd with it, and bangerd talks to its root helper with it.
//
// # Wire protocol (version 1)
//
// One request per connection. Frames are single-line JSON objects, each
// ended by "\n".
//
// The client connects and sends one request frame (at most MaxRequestSize
// bytes, 4 MiB):
//
//	{"v":1,"op_id":"op-3f9c2a1b7d","method":"vm.list","params":{...},"events":true}
//
// Its fields:
//
//   - v: the protocol version; required. Any other value (or none) is
//     answered with bad_version, whatever else the frame holds.
//   - op_id: optional, client-chosen: 1-64 characters of [A-Za-z0-9._:-],
//     starting with a letter or digit. A missing or malformed one is
//     replaced by a fresh id from the server.
//   - method: required, 1-128 characters of [A-Za-z0-9._-].
//   - params: optional; any JSON value the method accepts. Methods built
//     with Typed reject unknown fields.
//   - events: optional; true asks for progress event frames.
//   - Unknown top-level fields are bad_request.
//
// The server answers with zero or more event frames (only when events was
// true), in the order the handler reported them:
//
//	{"event":{"stage":"debootstrap","message":"...","fraction":-1,"time":"..."}}
//
// followed by exactly one final frame, either
//
//	{"result":<any JSON, null when the method returns nothing>,"op_id":"op-..."}
//
// or
//
//	{"error":{"code":"not_found","message":"no VM matches \"x\"","op_id":"op-..."}}
//
// and then closes the connection.
//
// # Behaviour
//
//   - Before reading anything, the server checks the peer's uid with
//     SO_PEERCRED; a uid that ServerOptions.AllowUID refuses (by default:
//     any uid but the server's own) gets an unauthorized error frame and the
//     request is never read.
//   - Error codes: see the Code constants. Clients treat an unknown code
//     like operation_failed.
//   - Every request has an op id, put in the handler context (OpIDFrom),
//     logged with the method, duration and code, and returned on results and
//     errors. The client forwards OpIDFrom(ctx) so ids carry across hops
//     (CLI -> daemon -> root helper).
//   - After its request the client sends nothing more and must not
//     half-close its side: the server reads the connection while the handler
//     runs, and EOF or an error there means the client hung up, which
//     cancels the handler's context. A client cancels a call by closing the
//     connection.
//   - When the server shuts down, handler contexts are cancelled and Serve
//     waits for the handlers to return; their clients still get the final
//     frame.
//   - A panicking handler answers operation_failed "internal error"; the
//     panic and stack are logged with the op id. The server keeps running.
//   - Sockets are created with mode 0600 (see Listen).
package rpc
