package envd

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// Messages of E2B's process.proto (package process) and filesystem.proto
// (package filesystem), written for the protobuf JSON mapping the Connect
// JSON codec uses: lowerCamelCase field names, bytes as base64, 64-bit
// integers as strings, enums by name, absent optional fields omitted.
// Field numbers are noted for reference; only the JSON names are on the
// wire here.

// ProcessConfig is process.ProcessConfig.
type ProcessConfig struct {
	Cmd  string            `json:"cmd"`            // 1
	Args []string          `json:"args,omitempty"` // 2
	Envs map[string]string `json:"envs,omitempty"` // 3
	Cwd  *string           `json:"cwd,omitempty"`  // 4, optional
}

// PTY is process.PTY (accepted, not supported: Start answers
// unimplemented when it is set).
type PTY struct {
	Size *struct {
		Cols uint32 `json:"cols"`
		Rows uint32 `json:"rows"`
	} `json:"size,omitempty"`
}

// StartRequest is process.StartRequest.
type StartRequest struct {
	Process *ProcessConfig `json:"process"`         // 1
	PTY     *PTY           `json:"pty,omitempty"`   // 2
	Tag     *string        `json:"tag,omitempty"`   // 3
	Stdin   *bool          `json:"stdin,omitempty"` // 4
}

// ProcessSelector is process.ProcessSelector (oneof selector).
type ProcessSelector struct {
	PID *uint32 `json:"pid,omitempty"` // 1
	Tag *string `json:"tag,omitempty"` // 2
}

// ConnectRequest is process.ConnectRequest.
type ConnectRequest struct {
	Process *ProcessSelector `json:"process"` // 1
}

// StartEvent is process.ProcessEvent.StartEvent.
type StartEvent struct {
	PID uint32 `json:"pid"` // 1
}

// DataEvent is process.ProcessEvent.DataEvent (oneof output).
type DataEvent struct {
	Stdout []byte `json:"stdout,omitempty"` // 1
	Stderr []byte `json:"stderr,omitempty"` // 2
	PTY    []byte `json:"pty,omitempty"`    // 3
}

// EndEvent is process.ProcessEvent.EndEvent.
type EndEvent struct {
	ExitCode int32   `json:"exitCode"`        // 1 (sint32)
	Exited   bool    `json:"exited"`          // 2
	Status   string  `json:"status"`          // 3
	Error    *string `json:"error,omitempty"` // 4
}

// KeepAlive is process.ProcessEvent.KeepAlive.
type KeepAlive struct{}

// ProcessEvent is process.ProcessEvent (oneof event).
type ProcessEvent struct {
	Start     *StartEvent `json:"start,omitempty"`     // 1
	Data      *DataEvent  `json:"data,omitempty"`      // 2
	End       *EndEvent   `json:"end,omitempty"`       // 3
	Keepalive *KeepAlive  `json:"keepalive,omitempty"` // 4
}

// EventResponse is process.StartResponse and process.ConnectResponse.
type EventResponse struct {
	Event *ProcessEvent `json:"event"` // 1
}

// ListResponse is process.ListResponse.
type ListResponse struct {
	Processes []ProcessInfo `json:"processes"` // 1
}

// ProcessInfo is process.ProcessInfo.
type ProcessInfo struct {
	Config *ProcessConfig `json:"config"`        // 1
	PID    uint32         `json:"pid"`           // 2
	Tag    *string        `json:"tag,omitempty"` // 3
}

// ProcessInput is process.ProcessInput (oneof input).
type ProcessInput struct {
	Stdin []byte `json:"stdin,omitempty"` // 1
	PTY   []byte `json:"pty,omitempty"`   // 2
}

// SendInputRequest is process.SendInputRequest.
type SendInputRequest struct {
	Process *ProcessSelector `json:"process"` // 1
	Input   *ProcessInput    `json:"input"`   // 2
}

// Signal is the process.Signal enum.
type Signal int32

// process.Signal values.
const (
	SignalUnspecified Signal = 0
	SignalSIGTERM     Signal = 15
	SignalSIGKILL     Signal = 9
)

var signalNames = map[string]Signal{
	"SIGNAL_UNSPECIFIED": SignalUnspecified,
	"SIGNAL_SIGTERM":     SignalSIGTERM,
	"SIGNAL_SIGKILL":     SignalSIGKILL,
}

// UnmarshalJSON accepts the enum's name or number.
func (s *Signal) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err == nil {
		v, ok := signalNames[name]
		if !ok {
			return fmt.Errorf("unknown signal %q", name)
		}
		*s = v
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 32)
	if err != nil {
		return fmt.Errorf("signal: %s is neither a name nor a number", b)
	}
	*s = Signal(n)
	return nil
}

// SendSignalRequest is process.SendSignalRequest.
type SendSignalRequest struct {
	Process *ProcessSelector `json:"process"` // 1
	Signal  Signal           `json:"signal"`  // 2
}

// CloseStdinRequest is process.CloseStdinRequest.
type CloseStdinRequest struct {
	Process *ProcessSelector `json:"process"` // 1
}

// FileType is the filesystem.FileType enum.
type FileType string

// filesystem.FileType values (by name, as JSON carries them).
const (
	FileTypeUnspecified FileType = "FILE_TYPE_UNSPECIFIED"
	FileTypeFile        FileType = "FILE_TYPE_FILE"
	FileTypeDirectory   FileType = "FILE_TYPE_DIRECTORY"
	FileTypeSymlink     FileType = "FILE_TYPE_SYMLINK"
)

// EntryInfo is filesystem.EntryInfo.
type EntryInfo struct {
	Name          string            `json:"name"`                    // 1
	Type          FileType          `json:"type"`                    // 2
	Path          string            `json:"path"`                    // 3
	Size          int64             `json:"size,string"`             // 4 (int64: a string in JSON)
	Mode          uint32            `json:"mode"`                    // 5
	Permissions   string            `json:"permissions"`             // 6
	Owner         string            `json:"owner"`                   // 7
	Group         string            `json:"group"`                   // 8
	ModifiedTime  string            `json:"modifiedTime,omitempty"`  // 9 (google.protobuf.Timestamp: RFC 3339)
	SymlinkTarget *string           `json:"symlinkTarget,omitempty"` // 10
	Metadata      map[string]string `json:"metadata,omitempty"`      // 11
}

// PathRequest is filesystem.StatRequest, MakeDirRequest and RemoveRequest.
type PathRequest struct {
	Path string `json:"path"` // 1
}

// EntryResponse is filesystem.StatResponse, MakeDirResponse and
// MoveResponse.
type EntryResponse struct {
	Entry *EntryInfo `json:"entry"` // 1
}

// ListDirRequest is filesystem.ListDirRequest.
type ListDirRequest struct {
	Path  string `json:"path"`  // 1
	Depth uint32 `json:"depth"` // 2
}

// ListDirResponse is filesystem.ListDirResponse.
type ListDirResponse struct {
	Entries []*EntryInfo `json:"entries"` // 1
}

// MoveRequest is filesystem.MoveRequest.
type MoveRequest struct {
	Source      string `json:"source"`      // 1
	Destination string `json:"destination"` // 2
}

// WriteInfo is one element of POST /files' answer (envd's OpenAPI
// EntryInfo: name, type "file" or "directory", path).
type WriteInfo struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Path string `json:"path"`
}
