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
	return DecodeFrame(line)
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
	switch f.Kind {
	case KindPing, KindIdentity, KindPorts, KindExec, KindHalt, KindStdin, KindCancel, KindSignal,
		KindStdout, KindStderr, KindResult, KindAck:
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

// EncodeFrame renders f as one line (newline included), checking MaxFrame.
func EncodeFrame(f *Frame) ([]byte, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("encode frame: %w", err)
	}
	b = append(b, '\n')
	if len(b) > MaxFrame {
		return nil, fmt.Errorf("encode frame: %w (%d > %d bytes)", ErrFrameTooLarge, len(b), MaxFrame)
	}
	return b, nil
}
