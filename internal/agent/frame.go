package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Frame kinds. Host → guest: KindPing, KindIdentity, KindPorts, KindExec,
// KindHalt (requests), KindStdin, KindCancel and KindSignal (about a running exec). Guest → host:
// KindStdout, KindStderr (stream), KindResult and KindError (final).
const (
	KindPing     = "ping"
	KindIdentity = "identity"
	KindPorts    = "ports"
	KindExec     = "exec"
	KindHalt     = "halt"
	KindStdin    = "stdin"
	KindCancel   = "cancel"
	KindSignal   = "signal" // body {"signal":"INT"}: signal a running exec's process group (FeatureSignal)

	KindAck = "ack" // guest → host: N bytes of stdin were handed to the process
	// KindStdinPort, guest → host, answers an exec with stdin_tcp: N is
	// the TCP port to send stdin to, 0 to send it as frames
	// (FeatureTCPStdin).
	KindStdinPort = "stdin-port"

	KindStdout = "stdout"
	KindStderr = "stderr"
	KindResult = "result"
	KindError  = "error"
)

// Frame is one protocol message (see the package doc).
type Frame struct {
	V     int             `json:"v"`
	ID    uint64          `json:"id"`
	Kind  string          `json:"kind"`
	Token string          `json:"token,omitempty"` // host frames only
	Body  json.RawMessage `json:"body,omitempty"`  // request params / result
	Data  []byte          `json:"data,omitempty"`  // stream bytes (base64 in JSON)
	EOF   bool            `json:"eof,omitempty"`   // KindStdin: no more input
	N     int             `json:"n,omitempty"`     // KindAck: stdin bytes consumed
	Error *Error          `json:"error,omitempty"` // KindError
	// Size, on a stream frame (KindStdin, KindStdout, KindStderr) of a
	// peer that reported FeatureBinary, says that Size raw bytes follow
	// the line: the frame's Data, without base64 or JSON around it (see
	// the package doc). Data is then absent from the line.
	Size int `json:"size,omitempty"`
	// Raw asks EncodeFrame to send Data as a raw payload (Size) instead of
	// base64 in the line.
	Raw bool `json:"-"`
}

// ErrFrameTooLarge is returned (wrapped) by ReadFrame for a line longer
// than MaxFrame; the line has been skipped and the reader can go on.
var ErrFrameTooLarge = errors.New("frame larger than the limit")

// ErrBadFrame is returned (wrapped) by ReadFrame for a line that is not a
// frame; the line has been skipped and the reader can go on.
var ErrBadFrame = errors.New("malformed frame")

// FrameReader reads frames from a byte stream, at most max bytes each.
// Errors wrapping ErrFrameTooLarge or ErrBadFrame are recoverable (the next
// call reads the next line); any other error is the stream's.
type FrameReader struct {
	r   *bufio.Reader
	max int
	// Accept, when set, decides whether the raw payload a frame's Size
	// announces is read (the guest accepts only frames with its token).
	// A frame it refuses is returned without its payload, whose bytes
	// are then read as lines: a peer that does not hold the token can
	// never make the reader skip the next frames.
	Accept func(*Frame) bool
}

// NewFrameReader reads frames of at most max bytes (MaxFrame when max <= 0).
func NewFrameReader(r io.Reader, max int) *FrameReader {
	if max <= 0 {
		max = MaxFrame
	}
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// ReadFrame reads the next frame.
func (fr *FrameReader) ReadFrame() (*Frame, error) {
	line, err := fr.readLine()
	if err != nil {
		return nil, err
	}
	f, err := DecodeFrame(line)
	if err != nil || f.Size == 0 {
		return f, err
	}
	if f.Size > fr.max {
		return nil, fmt.Errorf("%w: payload of %d bytes (limit %d)", ErrFrameTooLarge, f.Size, fr.max)
	}
	if fr.Accept != nil && !fr.Accept(f) {
		f.Size = 0
		return f, nil
	}
	f.Data = make([]byte, f.Size)
	if _, err := io.ReadFull(fr.r, f.Data); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.EOF // a torn payload, like a torn line
		}
		return nil, err
	}
	return f, nil
}

// readLine returns the next line without its newline. A line over the limit
// is consumed and reported as ErrFrameTooLarge. A partial line at EOF is
// dropped (io.EOF): it is a torn frame.
func (fr *FrameReader) readLine() ([]byte, error) {
	var buf []byte
	for {
		chunk, err := fr.r.ReadSlice('\n')
		if len(buf)+len(chunk) > fr.max {
			// Too long: skip to the end of this line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = fr.r.ReadSlice('\n')
			}
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w (%d bytes)", ErrFrameTooLarge, fr.max)
		}
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			return bytes.TrimSuffix(buf[:len(buf)-1], []byte{'\r'}), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}

// DecodeFrame parses one line (without its newline) into a frame and checks
// its shape: a known kind, a non-zero id. It does not check V or Token;
// that is the server's job, so it can answer with the right code.
func DecodeFrame(line []byte) (*Frame, error) {
	if len(line) > MaxFrame {
		return nil, fmt.Errorf("%w (%d bytes)", ErrFrameTooLarge, MaxFrame)
	}
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrBadFrame)
	}
	var f Frame
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrBadFrame)
	}
	if f.ID == 0 && f.Kind != KindError {
		// Id 0 is reserved for the guest's errors about a frame it could
		// not read (too large, malformed), which have no id to answer.
		return nil, fmt.Errorf("%w: no id", ErrBadFrame)
	}
	if f.Size != 0 {
		switch {
		case f.Size < 0 || f.Size > MaxFrame:
			return nil, fmt.Errorf("%w: payload size %d (limit %d)", ErrFrameTooLarge, f.Size, MaxFrame)
		case len(f.Data) != 0:
			return nil, fmt.Errorf("%w: both data and a payload size", ErrBadFrame)
		case f.Kind != KindStdin && f.Kind != KindStdout && f.Kind != KindStderr:
			return nil, fmt.Errorf("%w: a payload on a %q frame", ErrBadFrame, f.Kind)
		}
	}
	switch f.Kind {
	case KindPing, KindIdentity, KindPorts, KindExec, KindHalt, KindStdin, KindCancel, KindSignal,
		KindStdout, KindStderr, KindResult, KindAck, KindStdinPort:
	case KindError:
		if f.Error == nil {
			return nil, fmt.Errorf("%w: error frame without error", ErrBadFrame)
		}
	default:
		return nil, fmt.Errorf("%w: unknown kind %q", ErrBadFrame, f.Kind)
	}
	return &f, nil
}

// FrameWriter writes whole frames; safe for concurrent use (frames never
// interleave).
type FrameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewFrameWriter writes frames to w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// WriteFrame encodes f as one line and writes it in a single Write.
func (fw *FrameWriter) WriteFrame(f *Frame) error {
	b, err := EncodeFrame(f)
	if err != nil {
		return err
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_, err = fw.w.Write(b)
	return err
}

// EncodeFrame renders f as one line (newline included), checking MaxFrame;
// with f.Raw and Data, the line announces Size and Data follows it raw.
func EncodeFrame(f *Frame) ([]byte, error) {
	var payload []byte
	if f.Raw && len(f.Data) > 0 {
		if len(f.Data) > MaxFrame {
			return nil, fmt.Errorf("encode frame: %w (payload %d > %d bytes)", ErrFrameTooLarge, len(f.Data), MaxFrame)
		}
		hdr := *f
		hdr.Data, hdr.Size = nil, len(f.Data)
		f, payload = &hdr, f.Data
	}
	b, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("encode frame: %w", err)
	}
	b = append(b, '\n')
	if len(b) > MaxFrame {
		return nil, fmt.Errorf("encode frame: %w (%d > %d bytes)", ErrFrameTooLarge, len(b), MaxFrame)
	}
	return append(b, payload...), nil
}
