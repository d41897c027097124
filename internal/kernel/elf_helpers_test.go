package kernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
)

// testSection is one named section of a synthetic ELF file.
type testSection struct {
	name string
	typ  elf.SectionType
	data []byte
}

// buildELF writes a small valid ELF64 (x86-64, little endian). Executables
// get a PT_LOAD over payload and, when notes is non-nil, a PT_NOTE.
func buildELF(typ elf.Type, notes []byte, payload []byte, sections []testSection) []byte {
	le := binary.LittleEndian
	var progs []elf.Prog64
	nprog := 0
	if typ == elf.ET_EXEC {
		nprog = 1
		if notes != nil {
			nprog = 2
		}
	}
	off := uint64(64 + 56*nprog)
	var data bytes.Buffer
	addBlob := func(b []byte) uint64 {
		for (off+uint64(data.Len()))%8 != 0 {
			data.WriteByte(0)
		}
		o := off + uint64(data.Len())
		data.Write(b)
		return o
	}
	if typ == elf.ET_EXEC {
		lo := addBlob(payload)
		progs = append(progs, elf.Prog64{Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X), Off: lo, Vaddr: 0x1000000, Paddr: 0x1000000, Filesz: uint64(len(payload)), Memsz: uint64(len(payload)), Align: 0x1000})
		if notes != nil {
			no := addBlob(notes)
			progs = append(progs, elf.Prog64{Type: uint32(elf.PT_NOTE), Flags: uint32(elf.PF_R), Off: no, Filesz: uint64(len(notes)), Memsz: uint64(len(notes)), Align: 4})
		}
	}
	var shstr bytes.Buffer
	shstr.WriteByte(0)
	shdrs := []elf.Section64{{}}
	for _, s := range sections {
		nameOff := uint32(shstr.Len())
		shstr.WriteString(s.name + "\x00")
		o := addBlob(s.data)
		shdrs = append(shdrs, elf.Section64{Name: nameOff, Type: uint32(s.typ), Off: o, Size: uint64(len(s.data)), Addralign: 1})
	}
	strName := uint32(shstr.Len())
	shstr.WriteString(".shstrtab\x00")
	so := addBlob(shstr.Bytes())
	shdrs = append(shdrs, elf.Section64{Name: strName, Type: uint32(elf.SHT_STRTAB), Off: so, Size: uint64(shstr.Len()), Addralign: 1})
	for (off+uint64(data.Len()))%8 != 0 {
		data.WriteByte(0)
	}
	shoff := off + uint64(data.Len())

	var out bytes.Buffer
	h := elf.Header64{
		Type: uint16(typ), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Entry: 0x1000000, Phoff: 64, Shoff: shoff, Ehsize: 64, Phentsize: 56, Phnum: uint16(nprog),
		Shentsize: 64, Shnum: uint16(len(shdrs)), Shstrndx: uint16(len(shdrs) - 1),
	}
	if nprog == 0 {
		h.Phoff, h.Phentsize = 0, 0
	}
	copy(h.Ident[:], elfMagic)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&out, le, h)
	for _, p := range progs {
		binary.Write(&out, le, p)
	}
	out.Write(data.Bytes())
	for _, s := range shdrs {
		binary.Write(&out, le, s)
	}
	return out.Bytes()
}

// elfNote encodes one ELF note.
func elfNote(name string, typ uint32, desc []byte) []byte {
	var b bytes.Buffer
	le := binary.LittleEndian
	binary.Write(&b, le, uint32(len(name)+1))
	binary.Write(&b, le, uint32(len(desc)))
	binary.Write(&b, le, typ)
	b.WriteString(name + "\x00")
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// testVmlinux is a synthetic kernel ELF with a recognizable payload.
func testVmlinux(pvh bool) []byte { return testVmlinuxN(pvh, 2000) }

// testVmlinuxN is testVmlinux with reps copies of the payload text.
func testVmlinuxN(pvh bool, reps int) []byte {
	notes := elfNote("GNU", 3, []byte("build-id"))
	if pvh {
		notes = append(notes, elfNote("Xen", XenElfnotePhys32Entry, []byte{0, 0, 0, 1})...)
	}
	payload := bytes.Repeat([]byte("kernel text Linux version 6.1.0-test-amd64 (x@y) #1 SMP "), reps)
	return buildELF(elf.ET_EXEC, notes, payload, []testSection{{".notes", elf.SHT_NOTE, notes}})
}

// testModule is a synthetic .ko with a .modinfo section.
func testModule(name string, depends ...string) []byte {
	info := "license=GPL\x00name=" + name + "\x00depends=" + joinComma(depends) + "\x00vermagic=6.1.0-test\x00"
	return buildELF(elf.ET_REL, nil, nil, []testSection{{".modinfo", elf.SHT_PROGBITS, []byte(info)}, {".text", elf.SHT_PROGBITS, []byte("code")}})
}

func joinComma(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(x)
	}
	return b.String()
}
