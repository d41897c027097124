package workspace

import (
	"context"
	"os"
	"testing"
)

func TestZZDump(t *testing.T) {
	repo := os.Getenv("WSCOPY_DUMP_REPO")
	if repo == "" {
		t.Skip()
	}
	e := newEnv(t)
	snap, err := Inspect(context.Background(), e.runner(), repo, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.Create(os.Getenv("WSCOPY_DUMP_OUT"))
	st, err := Stream(context.Background(), snap, f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", st)
	os.WriteFile(os.Getenv("WSCOPY_DUMP_OUT")+".sh", []byte(GuestScript("/root/ws", snap.Options)), 0o644)
}
