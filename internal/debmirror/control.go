package debmirror

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Paragraph is one stanza of a Debian control file (Release, Packages,
// deb822 sources): field name -> value, continuation lines joined with "\n".
// Field names are kept as written; look them up with Get (case-insensitive).
type Paragraph map[string]string

// Get returns a field value, matching the name case-insensitively as dpkg does.
func (p Paragraph) Get(name string) string {
	if v, ok := p[name]; ok {
		return v
	}
	for k, v := range p {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// ParseControl reads control-file paragraphs from r, calling fn for each.
// Comment lines (#) are skipped. fn returning an error stops the scan.
func ParseControl(r io.Reader, fn func(Paragraph) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	para := Paragraph{}
	last := ""
	line := 0
	flush := func() error {
		if len(para) == 0 {
			return nil
		}
		p := para
		para = Paragraph{}
		last = ""
		return fn(p)
	}
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		if text[0] == '#' {
			continue
		}
		if text[0] == ' ' || text[0] == '\t' {
			if last == "" {
				return fmt.Errorf("control data line %d: continuation line without a field", line)
			}
			para[last] += "\n" + strings.TrimSpace(text)
			continue
		}
		name, value, ok := strings.Cut(text, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return fmt.Errorf("control data line %d: want \"Field: value\", got %q", line, truncate(text, 80))
		}
		last = name
		para[name] = strings.TrimSpace(value)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read control data: %w", err)
	}
	return flush()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
