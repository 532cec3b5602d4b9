//! ELF64 cores as QEMU's `dump-guest-memory` (without paging), `virsh dump --memory-only
//! --format elf` and Cloud Hypervisor's `ch-remote coredump` write them, read and written.
//!
//! Reading: one `PT_LOAD` per piece of guest RAM, placed by `p_paddr`; the program header
//! count may be `PN_XNUM` (0xffff), the real count then being section header 0's
//! `sh_info`. `PT_NOTE` segments hold, per CPU, an `NT_PRSTATUS` note (name `CORE`: the
//! general registers, Linux's `user_regs_struct` order) and a `QEMU` note
//! (`QEMUCPUState`, version 1, 432 bytes, or 440 with `kernel_gs_base`: general and
//! segment registers, CR0-CR4), plus one `VMCOREINFO` note (`KEY=VALUE` lines) when the
//! guest kernel published it. CPU N is the Nth `QEMU` note (and the Nth `NT_PRSTATUS`).
//!
//! Writing ([`write_core`], `vmm snapshot merge --format elf`): the same layout, so gdb,
//! crash, drgn, volatility3 and `vmm inspect --dump` read it: an `ET_CORE` header, one
//! `PT_NOTE` with `NT_PRSTATUS` and `QEMU` notes per vCPU, then one `PT_LOAD` per RAM
//! region at a page-aligned file offset.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{DumpCpu, DumpError, DumpFormat, Parsed, Segment, le32 as u32_at, le64 as u64_at};
use crate::arch::x86_64::regs::{Registers, SpecialRegisters};
use crate::files::{FileError, Output};

/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;
const ET_CORE: u16 = 4;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NT_PRSTATUS: u32 = 1;
/// Program header count meaning "see section header 0".
const PN_XNUM: u16 = 0xffff;
const EHDR_LEN: usize = 64;
const PHDR_LEN: u64 = 56;
const SHDR_LEN: u64 = 64;
/// The most notes read from one `PT_NOTE` (a few hundred bytes per CPU in practice).
const MAX_NOTES: u64 = 64 << 20;
/// Bytes of `struct elf_prstatus` on x86-64, and where `pr_reg` starts in it.
const PRSTATUS_LEN: usize = 336;
const PR_REG_AT: usize = 112;
/// `QEMUCPUState`: the version this reads and writes, its sizes, where CR0 starts.
const QEMU_CPU_VERSION: u32 = 1;
const QEMU_CPU_LEN: usize = 440;
const QEMU_CPU_MIN_LEN: usize = 432;
const QEMU_CR_AT: usize = 392;

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Parses an ELF core's headers and notes (see the module docs).
pub(crate) fn parse(path: &Path, file: &File, file_len: u64) -> Result<Parsed, DumpError> {
    let bad = |reason: String| DumpError::Malformed {
        path: path.to_owned(),
        format: "ELF core",
        reason,
    };
    let read = |offset: u64, len: u64, what: &str| -> Result<Vec<u8>, DumpError> {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > file_len) {
            return Err(bad(format!(
                "its {what} ({len} bytes at offset {offset:#x}) runs past the end of the file ({file_len} bytes)"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|source| DumpError::Read {
                path: path.to_owned(),
                source,
            })?;
        Ok(buf)
    };
    let ehdr = read(0, EHDR_LEN as u64, "file header")?;
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(bad(format!(
            "EI_CLASS {} / EI_DATA {}: only 64-bit little-endian cores are read",
            ehdr[4], ehdr[5]
        )));
    }
    let kind = u16_at(&ehdr, 0x10);
    if kind != ET_CORE {
        return Err(bad(format!(
            "e_type is {kind}, not 4 (a core file): a vmlinux is a kernel, not a dump"
        )));
    }
    let machine = u16_at(&ehdr, 0x12);
    if machine != EM_X86_64 {
        return Err(bad(format!(
            "e_machine is {machine}: only x86-64 (62) dumps are walked"
        )));
    }
    let phoff = u64_at(&ehdr, 0x20);
    let shoff = u64_at(&ehdr, 0x28);
    let phentsize = u16_at(&ehdr, 0x36);
    if u64::from(phentsize) != PHDR_LEN {
        return Err(bad(format!("e_phentsize is {phentsize}, not 56")));
    }
    let mut phnum = u64::from(u16_at(&ehdr, 0x38));
    if phnum == u64::from(PN_XNUM) {
        let shdr = read(shoff, SHDR_LEN, "section header 0 (PN_XNUM)")?;
        phnum = u64::from(u32_at(&shdr, 44));
    }
    // A count whose headers do not fit in the file is refused before anything is read.
    let phdrs_len = phnum
        .checked_mul(PHDR_LEN)
        .ok_or_else(|| bad(format!("{phnum} program headers")))?;
    let phdrs = read(phoff, phdrs_len, &format!("{phnum} program headers"))?;
    let mut parsed = Parsed {
        format: DumpFormat::Elf,
        machine: Some(machine),
        ..Parsed::default()
    };
    let mut found = NoteSet::default();
    for i in 0..phnum as usize {
        let p = &phdrs[i * PHDR_LEN as usize..(i + 1) * PHDR_LEN as usize];
        let (kind, offset, paddr, filesz, memsz) = (
            u32_at(p, 0),
            u64_at(p, 8),
            u64_at(p, 24),
            u64_at(p, 32),
            u64_at(p, 40),
        );
        match kind {
            PT_LOAD => {
                if filesz > memsz {
                    return Err(bad(format!(
                        "PT_LOAD {i} has p_filesz {filesz:#x} larger than p_memsz {memsz:#x}"
                    )));
                }
                // What is not in the file (p_memsz beyond p_filesz) is not known: it
                // stays outside memory.
                parsed.segments.push(Segment {
                    gpa: paddr,
                    len: filesz,
                    file_offset: offset,
                });
            }
            PT_NOTE => {
                if filesz > MAX_NOTES {
                    return Err(bad(format!(
                        "PT_NOTE {i} is {filesz} bytes, more than the {MAX_NOTES} read"
                    )));
                }
                let notes = read(offset, filesz, &format!("PT_NOTE {i}"))?;
                found.add(&notes).map_err(|reason| {
                    bad(format!("PT_NOTE {i} at offset {offset:#x}: {reason}"))
                })?;
            }
            _ => {}
        }
    }
    parsed.cpus = found.cpus();
    parsed.vmcoreinfo = found.vmcoreinfo;
    Ok(parsed)
}

/// What the notes of a dump say: per-CPU states and VMCOREINFO.
#[derive(Debug, Default)]
pub(crate) struct NoteSet {
    qemu: Vec<DumpCpu>,
    prstatus: Vec<(u64, u64)>,
    /// VMCOREINFO's `KEY=VALUE` lines.
    pub vmcoreinfo: Vec<(String, String)>,
}

impl NoteSet {
    /// Reads the notes in `notes` (an ELF note segment's bytes), or says why not.
    pub fn add(&mut self, notes: &[u8]) -> Result<(), String> {
        for note in Notes::new(notes) {
            let (name, kind, desc) = note?;
            match (name, kind) {
                (b"CORE", NT_PRSTATUS) if desc.len() >= PR_REG_AT + 27 * 8 => {
                    let reg = |n: usize| u64_at(desc, PR_REG_AT + 8 * n);
                    self.prstatus.push((reg(16), reg(19)));
                }
                (b"QEMU", 0) => {
                    let size = if desc.len() >= 8 {
                        u32_at(desc, 4) as usize
                    } else {
                        0
                    };
                    if desc.len() < QEMU_CPU_MIN_LEN || size < QEMU_CPU_MIN_LEN || size > desc.len()
                    {
                        return Err(format!(
                            "QEMU note {} is {} bytes and says {size}: a QEMUCPUState is 432 or 440",
                            self.qemu.len(),
                            desc.len()
                        ));
                    }
                    let mut cr = [0u64; 5];
                    for (n, c) in cr.iter_mut().enumerate() {
                        *c = u64_at(desc, QEMU_CR_AT + 8 * n);
                    }
                    self.qemu.push(DumpCpu {
                        cr: Some(cr),
                        rip: Some(u64_at(desc, 136)),
                        rsp: Some(u64_at(desc, 8 + 6 * 8)),
                    });
                }
                (b"VMCOREINFO", 0) => self.add_vmcoreinfo(desc),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads VMCOREINFO's text (`KEY=VALUE` lines).
    pub fn add_vmcoreinfo(&mut self, text: &[u8]) {
        self.vmcoreinfo = String::from_utf8_lossy(text)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.to_owned(), v.trim_end_matches('\0').to_owned()))
            })
            .take(4096)
            .collect();
    }

    /// CPU N: the Nth QEMU note, with the Nth NT_PRSTATUS's RIP and RSP where it has none.
    pub fn cpus(&self) -> Vec<DumpCpu> {
        let count = self.qemu.len().max(self.prstatus.len());
        (0..count)
            .map(|i| {
                let mut cpu = self.qemu.get(i).copied().unwrap_or_default();
                if let Some((rip, rsp)) = self.prstatus.get(i) {
                    cpu.rip = cpu.rip.or(Some(*rip));
                    cpu.rsp = cpu.rsp.or(Some(*rsp));
                }
                cpu
            })
            .collect()
    }
}

/// The notes of a `PT_NOTE` segment: `(name without its NUL, type, descriptor)`, or why
/// the next one is malformed.
struct Notes<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Notes<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
}

impl<'a> Iterator for Notes<'a> {
    type Item = Result<(&'a [u8], u32, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.bytes;
        if self.at >= b.len() {
            return None;
        }
        let at = self.at;
        if b.len() - at < 12 {
            self.at = b.len();
            return Some(Err(format!(
                "a note header at +{at:#x} is cut off by the segment's end"
            )));
        }
        let (namesz, descsz, kind) = (
            u32_at(b, at) as usize,
            u32_at(b, at + 4) as usize,
            u32_at(b, at + 8),
        );
        let name_at = at + 12;
        let desc_at = name_at.checked_add(namesz.div_ceil(4) * 4);
        let end = desc_at.and_then(|d| d.checked_add(descsz.div_ceil(4) * 4));
        let (Some(desc_at), Some(end)) = (desc_at, end) else {
            self.at = b.len();
            return Some(Err(format!("the note at +{at:#x} has absurd sizes")));
        };
        // The last note's padding may be missing.
        if desc_at + descsz > b.len() || name_at + namesz > b.len() {
            self.at = b.len();
            return Some(Err(format!(
                "the note at +{at:#x} (name {namesz} bytes, descriptor {descsz} bytes) runs past its segment ({} bytes)",
                b.len()
            )));
        }
        self.at = end.min(b.len());
        let mut name = &b[name_at..name_at + namesz];
        if let [rest @ .., 0] = name {
            name = rest;
        }
        Some(Ok((name, kind, &b[desc_at..desc_at + descsz])))
    }
}

fn note(out: &mut Vec<u8>, name: &[u8], kind: u32, desc: &[u8]) {
    let namesz = name.len() + 1;
    out.extend_from_slice(&(namesz as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A vCPU's registers as a core records them: its index, general and special registers.
pub type CoreVcpu = (u8, Registers, SpecialRegisters);

/// The `NT_PRSTATUS` and `QEMU` notes of one vCPU.
fn vcpu_notes(out: &mut Vec<u8>, (index, r, s): &CoreVcpu) {
    let mut prstatus = vec![0u8; PRSTATUS_LEN];
    // pr_pid: the vCPU's index + 1, as QEMU numbers them.
    prstatus[32..36].copy_from_slice(&(u32::from(*index) + 1).to_le_bytes());
    let pr_reg = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rax,
        r.rip,
        u64::from(s.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ];
    for (i, value) in pr_reg.iter().enumerate() {
        prstatus[PR_REG_AT + 8 * i..PR_REG_AT + 8 * i + 8].copy_from_slice(&value.to_le_bytes());
    }
    note(out, b"CORE", NT_PRSTATUS, &prstatus);

    let mut q = Vec::with_capacity(QEMU_CPU_LEN);
    q.extend_from_slice(&QEMU_CPU_VERSION.to_le_bytes());
    q.extend_from_slice(&(QEMU_CPU_LEN as u32).to_le_bytes());
    for value in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        q.extend_from_slice(&value.to_le_bytes());
    }
    let segment = |q: &mut Vec<u8>, selector: u16, limit: u32, flags: u32, base: u64| {
        q.extend_from_slice(&u32::from(selector).to_le_bytes());
        q.extend_from_slice(&limit.to_le_bytes());
        q.extend_from_slice(&flags.to_le_bytes());
        q.extend_from_slice(&0u32.to_le_bytes());
        q.extend_from_slice(&base.to_le_bytes());
    };
    for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
        // QEMU's descriptor flags: type at 8, S 12, DPL 13, P 15, L 21, DB 22, G 23.
        let flags = (u32::from(seg.type_) << 8)
            | (u32::from(seg.s) << 12)
            | (u32::from(seg.dpl & 3) << 13)
            | (u32::from(seg.present) << 15)
            | (u32::from(seg.l) << 21)
            | (u32::from(seg.db) << 22)
            | (u32::from(seg.g) << 23);
        segment(&mut q, seg.selector, seg.limit, flags, seg.base);
    }
    segment(&mut q, 0, u32::from(s.gdt.limit), 0, s.gdt.base);
    segment(&mut q, 0, u32::from(s.idt.limit), 0, s.idt.base);
    for cr in [s.cr0, 0, s.cr2, s.cr3, s.cr4] {
        q.extend_from_slice(&cr.to_le_bytes());
    }
    // kernel_gs_base: not in the snapshot's registers.
    q.extend_from_slice(&0u64.to_le_bytes());
    note(out, b"QEMU", 0, &q);
}

/// Writes `memory` and `vcpus` as a QEMU-style ELF core to `out` and commits it (see the
/// module docs).
pub fn write_core<M: GuestMemoryBackend>(
    memory: &M,
    vcpus: &[CoreVcpu],
    mut out: Output,
) -> Result<(), FileError> {
    let regions: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
    let mut notes = Vec::new();
    for v in vcpus {
        vcpu_notes(&mut notes, v);
    }
    let phnum = 1 + regions.len();
    let notes_at = EHDR_LEN as u64 + PHDR_LEN * phnum as u64;
    let mut data_at = (notes_at + notes.len() as u64).next_multiple_of(4096);
    let mut head = Vec::new();
    head.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    head.resize(16, 0);
    head.extend_from_slice(&ET_CORE.to_le_bytes());
    head.extend_from_slice(&EM_X86_64.to_le_bytes());
    head.extend_from_slice(&1u32.to_le_bytes()); // e_version
    head.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    head.extend_from_slice(&(EHDR_LEN as u64).to_le_bytes()); // e_phoff
    head.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    head.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    head.extend_from_slice(&(EHDR_LEN as u16).to_le_bytes());
    head.extend_from_slice(&(PHDR_LEN as u16).to_le_bytes());
    // More regions than fit in e_phnum would need PN_XNUM; a VM has a handful.
    head.extend_from_slice(&(phnum.min(usize::from(PN_XNUM - 1)) as u16).to_le_bytes());
    head.extend_from_slice(&(SHDR_LEN as u16).to_le_bytes());
    head.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    head.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr = |head: &mut Vec<u8>, kind: u32, offset: u64, paddr: u64, len: u64, align: u64| {
        head.extend_from_slice(&kind.to_le_bytes());
        head.extend_from_slice(&if kind == PT_LOAD { 7u32 } else { 0 }.to_le_bytes());
        for v in [offset, 0, paddr, len, len, align] {
            head.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut head, PT_NOTE, notes_at, 0, notes.len() as u64, 4);
    let mut loads = Vec::new();
    for (gpa, len) in &regions {
        phdr(&mut head, PT_LOAD, data_at, *gpa, *len, 4096);
        loads.push((data_at, *gpa, *len));
        data_at += len;
    }
    head.extend_from_slice(&notes);
    let error = |out: &Output, e: std::io::Error| out.error(e);
    let file = out.file()?;
    let written = file.write_all(&head);
    written.map_err(|e| error(&out, e))?;
    let mut buf = vec![0u8; 1 << 20];
    for (offset, gpa, len) in loads {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            memory
                .read_slice(&mut buf[..n], GuestAddress(gpa + done))
                .map_err(|e| error(&out, std::io::Error::other(e.to_string())))?;
            let w = out.file()?.write_all_at(&buf[..n], offset + done);
            w.map_err(|e| error(&out, e))?;
            done += n as u64;
        }
    }
    out.commit()
}
