package api

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/bangerdev/banger/internal/model"
)

// Workspace methods.
const (
	// MethodVMWorkspacePrepare copies a host git repository into a running
	// VM (one tar stream over the daemon's ssh connection) and records it
	// in the VM's Workspace. Params WorkspacePrepareParams, result
	// WorkspacePrepareResult. Progress stage: "workspace".
	MethodVMWorkspacePrepare = "vm.workspace.prepare"
)

// WorkspacePrepareParams are the inputs of vm.workspace.prepare.
type WorkspacePrepareParams struct {
	Ref string `json:"ref"`
	// Path is an absolute host path inside a git work tree. The whole
	// repository is copied; when Path is a subdirectory the result names it
	// (Subdir) and it is recorded, so `vm exec` runs there.
	Path string `json:"path"`
	// GuestPath is where the repository goes in the guest (default
	// /root/repo).
	GuestPath        string `json:"guest_path,omitempty"`
	IncludeUntracked bool   `json:"include_untracked,omitempty"`
	Branch           string `json:"branch,omitempty"`
	From             string `json:"from,omitempty"`
	ReadOnly         bool   `json:"readonly,omitempty"`
	// Replace lets prepare replace a non-empty guest directory. The
	// daemon also replaces, without it, the workspace it recorded itself
	// at the same guest path (a re-sync).
	Replace bool `json:"replace,omitempty"`
}

// Validate checks the params without touching the host or the guest.
func (p WorkspacePrepareParams) Validate() error {
	switch {
	case strings.TrimSpace(p.Ref) == "":
		return errors.New("no VM given: name a VM by name, id or id prefix")
	case p.Path == "" || !filepath.IsAbs(p.Path):
		return fmt.Errorf("workspace path %q must be absolute", p.Path)
	case strings.ContainsAny(p.Path, "\x00\n"):
		return fmt.Errorf("workspace path %q contains a newline or NUL", p.Path)
	case p.From != "" && p.IncludeUntracked:
		return errors.New("--from ships a commit, which has no untracked files; drop --include-untracked")
	}
	return nil
}

// WorkspacePrepareResult describes a finished prepare.
type WorkspacePrepareResult struct {
	VM *model.VM `json:"vm"`
	// Root is the repository's top level on the host; Subdir the given
	// path relative to it ("" when Path is the top level).
	Root   string `json:"root"`
	Subdir string `json:"subdir,omitempty"`
	// GuestPath is where the repository is in the guest; WorkDir is
	// GuestPath joined with Subdir (where commands run).
	GuestPath string `json:"guest_path"`
	WorkDir   string `json:"work_dir"`
	Head      string `json:"head,omitempty"`
	Branch    string `json:"branch,omitempty"`
	Replaced  bool   `json:"replaced,omitempty"`

	Files            int   `json:"files"`
	Symlinks         int   `json:"symlinks"`
	FileBytes        int64 `json:"file_bytes"`
	StreamBytes      int64 `json:"stream_bytes"`
	SkippedUntracked int   `json:"skipped_untracked,omitempty"`
	ElapsedMS        int64 `json:"elapsed_ms"`
}
