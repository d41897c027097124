package qemu

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func TestMigrationURI(t *testing.T) {
	for _, c := range []struct {
		path string
		save bool
		want string
	}{
		{"/s/t 1/state", true, "exec:cat > '/s/t 1/state'"},
		{"/s/state", false, "exec:cat '/s/state'"},
		{"rel/state", false, ""},
		{"/s/it's", true, ""},
		{"/s/a\nb", true, ""},
	} {
		got, err := migrationURI(c.path, c.save)
		if (err != nil) != (c.want == "") || got != c.want {
			t.Errorf("migrationURI(%q, %v) = %q, %v; want %q", c.path, c.save, got, err, c.want)
		}
	}
}

func TestArgsRestore(t *testing.T) {
	spec := testSpec("/run/b/vm1")
	spec.RestoreFrom = "/state/t/state"
	a := Args("qemu-system-x86_64", spec, MachineMicrovm, AccelTCG)
	i := slices.Index(a, "-incoming")
	if i < 0 || a[i+1] != "exec:cat '/state/t/state'" {
		t.Fatalf("argv lacks -incoming: %s", strings.Join(a, " "))
	}
	spec.RestoreFrom = "/bad'path"
	d := &Driver{}
	if _, err := d.Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("Start with a quoted state path: %v", err)
	}
}
