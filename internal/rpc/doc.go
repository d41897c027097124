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
// # Streams
//
// A method registered with HandleStream streams: after its request the
// client may send stream frames, and before its final frame the server may
// send them (between event frames, in order). A stream frame is either a
// message or an acknowledgement:
//
//	{"stream":{"ch":0,"data":"<base64>"}}   data on channel ch (0-15)
//	{"stream":{"ch":0,"eof":true}}          the end of channel ch
//	{"stream":{"ctl":{"signal":"INT"}}}     a control message (a JSON object)
//	{"ack":65792}                           window returned to the peer
//
// A message carries exactly one of data (at most StreamChunk bytes, 32
// KiB), eof and ctl (at most MaxStreamCtl bytes, 4 KiB); channels and
// control messages mean what the method says. Flow control is per
// direction: a sender keeps at most StreamWindow (256 KiB) unacknowledged,
// where each message costs its data length plus 256; the receiver
// acknowledges what its reader consumed (in batches of a quarter window).
// A client frame over 64 KiB, a malformed or unknown frame, data beyond
// the window or an ack of more than was sent ends the call with
// bad_request (the handler is cancelled). The final frame ends the stream;
// later frames are ignored. A client hangs up to cancel, as with any call.
// Call on a streaming method works (it acknowledges and drops the
// server's messages and sends none); OpenStream on a plain method just
// waits for its answer.
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
//   - After its request the client sends nothing more (except the stream
//     frames of a streaming method) and must not half-close its side: the server reads the connection while the handler
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
