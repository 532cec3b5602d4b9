//! Memory dumps made by other tools, opened for an offline walk: QEMU / libvirt /
//! Cloud Hypervisor ELF cores ([`elf`]), LiME captures ([`lime`]), and memory files whose
//! regions are concatenated without a header (Firecracker, Cloud Hypervisor, this VMM's
//! own `gen-000000.mem`), placed by a [`Layout`].
//!
//! A dump is mapped, not copied: every segment whose file offset is page-aligned is
//! mapped private and read-only ([`vm_memory::GuestMemoryMmap`], so the walker runs
//! unchanged and holes between segments are "outside memory" faults as in a raw file).
//! A segment at an offset that cannot be mapped (QEMU's ELF cores put their first
//! `PT_LOAD` right after the notes; LiME's data follows each 32-byte header) and a
//! kdump-compressed dump's pages are backed by anonymous memory and read on demand:
//! [`Dump::prepare_walk`] reads (and decompresses) exactly the table pages a walk from a
//! root will read, so opening and walking a 1 GiB dump costs what its tables cost, not
//! what its RAM does. Mapped segments are watched for the file shrinking
//! ([`crate::sigbus`]).
//!
//! Every offset, size and count read from a file is checked against the file's size with
//! checked arithmetic before anything is allocated or mapped; overlapping segments are
//! refused. Registers come from the dump where it has them (QEMU's per-CPU notes:
//! CR0, CR3, CR4; `NT_PRSTATUS`: general registers); see [`DumpCpu`].

pub mod elf;
pub mod kdump;
pub mod lime;
pub mod lzo;

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use walker::{ControlRegisters, PagingContext};

use crate::arch::x86_64::regs::{CR0_PG, CR4_LA57, CR4_PAE};
use crate::files::{FileError, open_input};
use crate::sigbus::{self, FaultWatch};

/// Why a dump cannot be opened. Every message names the file.
#[derive(Debug, Error)]
pub enum DumpError {
    /// The path is not a readable regular file.
    #[error(transparent)]
    File(#[from] FileError),
    /// Reading failed.
    #[error("cannot read the dump {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not of a format this VMM reads.
    #[error(
        "{path} is not a dump vmm recognises (it starts {start}): an ELF core, a LiME capture, or, with --layout or --regions, a headerless memory file"
    )]
    Unknown {
        /// The file.
        path: PathBuf,
        /// Its first bytes, escaped.
        start: String,
    },
    /// The file is of a known format but malformed.
    #[error("{path} is not a valid {format}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format it claims to be.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A layout that does not fit the file.
    #[error("{path}: {reason}")]
    Layout {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// Mapping a segment failed.
    #[error("cannot map {path} at file offset {offset:#x}: {reason}")]
    Map {
        /// The file.
        path: PathBuf,
        /// The segment's file offset.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// A CPU the dump does not have.
    #[error("{path} has no CPU {cpu} with control registers (it has {count}): {hint}")]
    NoSuchCpu {
        /// The file.
        path: PathBuf,
        /// Asked for.
        cpu: usize,
        /// How many it has.
        count: usize,
        /// What to do.
        hint: &'static str,
    },
    /// The file shrank while mapped.
    #[error(
        "the dump {path} shrank while it was read: what was read past its new end is not the dump's"
    )]
    Shrank {
        /// The file.
        path: PathBuf,
    },
}

/// The little-endian `u32` at `at` of `b` (the caller has checked the length).
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian `u64` at `at` of `b` (the caller has checked the length).
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// One piece of guest-physical memory in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// Where its bytes are in the file.
    pub file_offset: u64,
}

/// A CPU's state as the dump records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpCpu {
    /// Control registers CR0..CR4 (QEMU's note), when the dump has them.
    pub cr: Option<[u64; 5]>,
    /// RIP, from QEMU's note or `NT_PRSTATUS`.
    pub rip: Option<u64>,
    /// RSP, likewise.
    pub rsp: Option<u64>,
}

/// The kind of file, as detected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DumpFormat {
    /// An ELF64 core (QEMU `dump-guest-memory`, `virsh dump --memory-only`, `ch-remote
    /// coredump`, or `vmm snapshot merge --format elf`).
    #[default]
    Elf,
    /// A LiME capture (`EMiL` range headers).
    Lime,
    /// A kdump-compressed dump (makedumpfile's format), flattened or seekable.
    Kdump {
        /// The flattened stream variant.
        flattened: bool,
    },
    /// A headerless memory file placed by a [`Layout`].
    Layout(Layout),
}

impl std::fmt::Display for DumpFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Elf => f.write_str("ELF core"),
            Self::Lime => f.write_str("LiME capture"),
            Self::Kdump { flattened: false } => f.write_str("kdump-compressed dump"),
            Self::Kdump { flattened: true } => {
                f.write_str("kdump-compressed dump (flattened stream)")
            }
            Self::Layout(l) => write!(f, "headerless memory file ({l})"),
        }
    }
}

/// Where the regions of a headerless memory file go: regions concatenated in GPA order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Firecracker's x86-64 memory file: RAM below its 32-bit MMIO gap
    /// (`MMIO_MEM_START`, 4 GiB - 768 MiB), the rest from 4 GiB.
    Firecracker,
    /// Cloud Hypervisor's, and this VMM's own (`gen-000000.mem`): RAM below 3 GiB, the
    /// rest from 4 GiB.
    CloudHypervisor,
    /// Explicit regions `(gpa, len)`, in file order.
    Regions(Vec<(u64, u64)>),
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Firecracker => f.write_str("Firecracker layout"),
            Self::CloudHypervisor => f.write_str("Cloud Hypervisor layout"),
            Self::Regions(r) => write!(f, "{} regions given", r.len()),
        }
    }
}

/// 4 GiB: where RAM above the 32-bit gap starts.
const FOUR_GIB: u64 = 1 << 32;

impl Layout {
    /// The regions of a file of `len` bytes.
    fn regions(&self, len: u64) -> Vec<(u64, u64)> {
        let gap = match self {
            Self::Firecracker => FOUR_GIB - (768 << 20),
            Self::CloudHypervisor => 3 << 30,
            Self::Regions(r) => return r.clone(),
        };
        if len <= gap {
            vec![(0, len)]
        } else {
            vec![(0, gap), (FOUR_GIB, len - gap)]
        }
    }

    /// Parses `GPA:LEN,GPA:LEN,...` (hex, optional `0x`; LEN may end in K, M or G).
    pub fn parse_regions(text: &str) -> Result<Self, String> {
        let mut regions = Vec::new();
        for part in text.split(',') {
            let (gpa, len) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not GPA:LEN"))?;
            let gpa = crate::introspect::parse_hex(gpa)
                .ok_or_else(|| format!("{gpa:?} is not a hexadecimal GPA"))?;
            let len = parse_len(len).ok_or_else(|| {
                format!("{len:?} is not a length (hex bytes, or a number with K, M or G)")
            })?;
            if gpa % 4096 != 0 || len == 0 || len % 4096 != 0 {
                return Err(format!(
                    "region {gpa:#x}:{len:#x} is not page-aligned and non-empty"
                ));
            }
            regions.push((gpa, len));
        }
        Ok(Self::Regions(regions))
    }
}

fn parse_len(text: &str) -> Option<u64> {
    let t = text.trim();
    let unit = match t.chars().last()? {
        'K' | 'k' => 1u64 << 10,
        'M' | 'm' => 1 << 20,
        'G' | 'g' => 1 << 30,
        _ => return crate::introspect::parse_hex(t),
    };
    t[..t.len() - 1].parse::<u64>().ok()?.checked_mul(unit)
}

/// An opened dump: its guest-physical memory, CPUs and notes.
#[derive(Debug)]
pub struct Dump {
    /// The file.
    pub path: PathBuf,
    /// What it is.
    pub format: DumpFormat,
    /// Its memory, in GPA order.
    pub segments: Vec<Segment>,
    /// Its CPUs, in order.
    pub cpus: Vec<DumpCpu>,
    /// The `VMCOREINFO` note's `KEY=VALUE` lines, when present.
    pub vmcoreinfo: Vec<(String, String)>,
    /// Bytes of the file.
    pub file_len: u64,
    /// The ELF machine (62 for x86-64), for an ELF core.
    pub machine: Option<u16>,
    // Dropped before the memory: the watches end before the mappings go.
    watches: Vec<FaultWatch>,
    memory: GuestMemoryMmap,
    /// Where the pages that are not mapped come from when a walk needs them.
    on_demand: OnDemand,
}

/// The pages of a dump that are backed by anonymous memory and read when a walk needs
/// them (see the module docs).
#[derive(Debug)]
enum OnDemand {
    /// Every segment is mapped.
    Nothing,
    /// Segments at file offsets that cannot be mapped (not page-aligned, as in QEMU's ELF
    /// cores and LiME captures), read from `file`.
    Unaligned { file: File, segments: Vec<Segment> },
    /// A kdump-compressed dump's pages, decompressed.
    Kdump(kdump::Kdump),
}

/// Bytes of a file's start quoted when it is not recognised.
const QUOTE: usize = 16;

impl Dump {
    /// Opens `path`: an ELF core or a LiME capture (detected from the contents), or with
    /// `layout` a headerless memory file.
    pub fn open(path: &Path, layout: Option<Layout>) -> Result<Self, DumpError> {
        let input = open_input(path, "dump")?;
        let file_len = input.len();
        let file = input.into_file();
        let read_error = |source| DumpError::Read {
            path: path.to_owned(),
            source,
        };
        let mut magic = [0u8; 12];
        let n = file
            .read_at(&mut magic, 0)
            .map_err(read_error)?
            .min(magic.len());
        if layout.is_none() {
            let flattened = magic[..n].starts_with(kdump::FLAT_SIGNATURE);
            if flattened || magic[..n].starts_with(kdump::SIGNATURE) {
                return Self::open_kdump(path, file, file_len, flattened);
            }
        }
        let parsed = if let Some(layout) = layout {
            let mut segments = Vec::new();
            let mut offset = 0u64;
            for (gpa, len) in layout.regions(file_len) {
                segments.push(Segment {
                    gpa,
                    len,
                    file_offset: offset,
                });
                offset = offset.saturating_add(len);
            }
            if offset != file_len {
                return Err(DumpError::Layout {
                    path: path.to_owned(),
                    reason: format!(
                        "the {layout} covers {offset} bytes, but the file is {file_len} bytes"
                    ),
                });
            }
            Parsed {
                format: DumpFormat::Layout(layout),
                segments,
                ..Parsed::default()
            }
        } else if magic[..n].starts_with(b"\x7fELF") {
            elf::parse(path, &file, file_len)?
        } else if magic[..n].starts_with(&lime::MAGIC.to_le_bytes()) {
            lime::parse(path, &file, file_len)?
        } else {
            return Err(DumpError::Unknown {
                path: path.to_owned(),
                start: crate::files::excerpt(&magic[..n.min(8)], QUOTE),
            });
        };
        let mut segments = parsed.segments;
        check_segments(path, &parsed.format, &mut segments, file_len)?;
        let (memory, watches) = map_segments(path, &file, &segments)?;
        let unaligned: Vec<Segment> = segments
            .iter()
            .filter(|g| g.file_offset % 4096 != 0)
            .copied()
            .collect();
        Ok(Self {
            path: path.to_owned(),
            format: parsed.format,
            segments,
            cpus: parsed.cpus,
            vmcoreinfo: parsed.vmcoreinfo,
            file_len,
            machine: parsed.machine,
            watches,
            memory,
            on_demand: if unaligned.is_empty() {
                OnDemand::Nothing
            } else {
                OnDemand::Unaligned {
                    file,
                    segments: unaligned,
                }
            },
        })
    }

    fn open_kdump(
        path: &Path,
        file: File,
        file_len: u64,
        flattened: bool,
    ) -> Result<Self, DumpError> {
        let (k, mut segments, notes) = kdump::open(path, file, file_len, flattened)?;
        let format = DumpFormat::Kdump {
            flattened: k.is_flattened(),
        };
        if segments.is_empty() {
            return Err(DumpError::Malformed {
                path: path.to_owned(),
                format: "kdump-compressed dump",
                reason: "its 1st bitmap marks no RAM".into(),
            });
        }
        segments.sort_by_key(|g| g.gpa);
        let memory = kdump::memory(path, &segments)?;
        Ok(Self {
            path: path.to_owned(),
            format,
            segments,
            cpus: notes.cpus(),
            vmcoreinfo: notes.vmcoreinfo,
            file_len,
            machine: None,
            watches: Vec::new(),
            memory,
            on_demand: OnDemand::Kdump(k),
        })
    }

    /// Makes the memory ready for a walk with `ctx` (its root and paging mode): reads
    /// (and for a kdump-compressed dump decompresses) the table pages the walk will read
    /// that are not mapped (see the module docs). Returns what was read, `None` when
    /// everything is mapped.
    pub fn prepare_walk(&self, ctx: &PagingContext) -> Result<Option<LoadStats>, DumpError> {
        let (root, levels) = (ctx.root().0, ctx.mode().root_level() as u8);
        let (file, segments) = match &self.on_demand {
            OnDemand::Nothing => return Ok(None),
            OnDemand::Kdump(k) => return k.load_tables(&self.memory, root, levels).map(Some),
            OnDemand::Unaligned { file, segments } => (file, segments),
        };
        load_tables(&self.memory, root, levels, |pfn| {
            let at = pfn * 4096;
            let Some(g) = segments.iter().find(|g| at >= g.gpa && at - g.gpa < g.len) else {
                return Ok(Page::Mapped);
            };
            let mut page = vec![0u8; 4096];
            let n = (g.len - (at - g.gpa)).min(4096) as usize;
            file.read_exact_at(&mut page[..n], g.file_offset + (at - g.gpa))
                .map_err(|source| DumpError::Read {
                    path: self.path.clone(),
                    source,
                })?;
            Ok(Page::Data(page))
        })
        .map(Some)
    }

    /// Guest-physical memory. Pages read on demand (see the module docs) hold what
    /// [`Dump::prepare_walk`] loaded, zeros elsewhere: call it before walking.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Fails, naming the file, if it shrank while mapped. Call it after using the memory.
    pub fn check_intact(&self) -> Result<(), DumpError> {
        if self.watches.iter().any(FaultWatch::faulted) {
            return Err(DumpError::Shrank {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The control registers of CPU `cpu` as the dump records them. No note carries
    /// EFER: for an x86-64 dump whose CR0 has PG and CR4 has PAE the CPU was in long
    /// mode, so EFER is taken as LME | LMA | NXE (NX on, as every 64-bit kernel sets it;
    /// `vmm inspect --efer` overrides it).
    pub fn control_registers(&self, cpu: usize) -> Result<ControlRegisters, DumpError> {
        let cr = self
            .cpus
            .get(cpu)
            .and_then(|c| c.cr)
            .ok_or(DumpError::NoSuchCpu {
                path: self.path.clone(),
                cpu,
                count: self.cpus.iter().filter(|c| c.cr.is_some()).count(),
                hint: "give the registers with --cr3 (and --cr4, --cr0, --efer)",
            })?;
        Ok(ControlRegisters {
            cr0: cr[0],
            cr3: cr[3],
            cr4: cr[4],
            efer: ControlRegisters::long_mode(0).efer,
        })
    }

    /// What `vmm inspect --dump FILE --info` prints: format, segments, CPUs with their
    /// control registers and paging mode, VMCOREINFO.
    pub fn info(&self) -> String {
        let mut s = String::new();
        let total: u64 = self.segments.iter().map(|g| g.len).sum();
        let _ = writeln!(s, "file: {} ({} bytes)", self.path.display(), self.file_len);
        let _ = writeln!(s, "format: {}", self.format);
        if let Some(m) = self.machine {
            let _ = writeln!(s, "machine: {m}{}", if m == 62 { " (x86-64)" } else { "" });
        }
        let _ = writeln!(
            s,
            "segments: {} ({} bytes of guest memory)",
            self.segments.len(),
            total
        );
        for g in &self.segments {
            let _ = writeln!(
                s,
                "  GPA {:#014x}-{:#014x} at file offset {:#x}",
                g.gpa,
                g.gpa + g.len,
                g.file_offset
            );
        }
        let _ = writeln!(s, "cpus: {}", self.cpus.len());
        for (i, c) in self.cpus.iter().enumerate() {
            match c.cr {
                Some(cr) => {
                    let mode = if cr[0] & CR0_PG == 0 {
                        "paging off"
                    } else if cr[4] & CR4_PAE == 0 {
                        "32-bit paging"
                    } else if cr[4] & CR4_LA57 != 0 {
                        "5-level paging"
                    } else {
                        "4-level paging"
                    };
                    let _ = writeln!(
                        s,
                        "  cpu {i}: CR0 {:#x} CR3 {:#x} CR4 {:#x}: {mode}{}",
                        cr[0],
                        cr[3],
                        cr[4],
                        c.rip.map(|r| format!(", RIP {r:#x}")).unwrap_or_default()
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  cpu {i}: no control registers{}",
                        c.rip.map(|r| format!(" (RIP {r:#x})")).unwrap_or_default()
                    );
                }
            }
        }
        if !self.vmcoreinfo.is_empty() {
            let _ = writeln!(s, "vmcoreinfo:");
            for (k, v) in &self.vmcoreinfo {
                if INFO_KEYS.iter().any(|p| k.starts_with(p)) {
                    let _ = writeln!(s, "  {k}={v}");
                }
            }
        }
        s
    }
}

/// The VMCOREINFO fields `--info` shows: those that decide how memory is walked.
const INFO_KEYS: [&str; 6] = [
    "OSRELEASE",
    "PAGESIZE",
    "NUMBER(pgtable_l5_enabled)",
    "NUMBER(phys_base)",
    "KERNELOFFSET",
    "SYMBOL(init_top_pgt)",
];

/// What a format parser found.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub format: DumpFormat,
    pub segments: Vec<Segment>,
    pub cpus: Vec<DumpCpu>,
    pub vmcoreinfo: Vec<(String, String)>,
    pub machine: Option<u16>,
}

/// Sorts the segments by GPA and refuses empty, overflowing, overlapping ones and ones
/// past the end of the file.
fn check_segments(
    path: &Path,
    format: &DumpFormat,
    segments: &mut Vec<Segment>,
    file_len: u64,
) -> Result<(), DumpError> {
    let bad = |reason: String| match format {
        DumpFormat::Layout(_) => DumpError::Layout {
            path: path.to_owned(),
            reason,
        },
        DumpFormat::Elf => DumpError::Malformed {
            path: path.to_owned(),
            format: "ELF core",
            reason,
        },
        DumpFormat::Lime => DumpError::Malformed {
            path: path.to_owned(),
            format: "LiME capture",
            reason,
        },
        DumpFormat::Kdump { .. } => DumpError::Malformed {
            path: path.to_owned(),
            format: "kdump-compressed dump",
            reason,
        },
    };
    segments.retain(|g| g.len > 0);
    if segments.is_empty() {
        return Err(bad("it holds no memory".into()));
    }
    for g in segments.iter() {
        let file_end = g.file_offset.checked_add(g.len);
        if file_end.is_none_or(|end| end > file_len) {
            return Err(bad(format!(
                "the segment of GPA {:#x} ({} bytes at file offset {:#x}) runs past the end of the file ({file_len} bytes)",
                g.gpa, g.len, g.file_offset
            )));
        }
        if g.gpa.checked_add(g.len).is_none() {
            return Err(bad(format!(
                "the segment of GPA {:#x} ({} bytes) runs past the top of the address space",
                g.gpa, g.len
            )));
        }
    }
    segments.sort_by_key(|g| g.gpa);
    for w in segments.windows(2) {
        if w[0].gpa + w[0].len > w[1].gpa {
            return Err(bad(format!(
                "the segments of GPA {:#x} ({} bytes) and {:#x} overlap",
                w[0].gpa, w[0].len, w[1].gpa
            )));
        }
    }
    Ok(())
}

/// What reading the table pages for a walk did ([`Dump::prepare_walk`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Table pages read (and decompressed) into memory.
    pub pages: u64,
    /// Of those, pages the dump left out (they read as zeros).
    pub missing: u64,
}

/// Where a page a walk needs comes from.
#[derive(Debug)]
pub(crate) enum Page {
    /// Already in memory (a mapped segment): nothing to do.
    Mapped,
    /// Not in the dump: zeros.
    Absent,
    /// Its bytes, to put in memory.
    Data(Vec<u8>),
}

/// Fills `memory` with every page a walk from `root` (in `levels`-level paging) will
/// read, from `fetch` (PFN to page): the root table and each table a present non-leaf
/// entry points to, level by level, each page read once and each (page, level) followed
/// once, so a hostile table that aliases itself costs at most one visit per page and
/// level.
pub(crate) fn load_tables(
    memory: &GuestMemoryMmap,
    root: u64,
    levels: u8,
    mut fetch: impl FnMut(u64) -> Result<Page, DumpError>,
) -> Result<LoadStats, DumpError> {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    const PS: u64 = 1 << 7;
    let mut stats = LoadStats::default();
    let mut loaded = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    let mut level_pages = vec![root & ADDR];
    for level in (1..=levels).rev() {
        let mut next = Vec::new();
        for table in level_pages {
            if !seen.insert((table, level)) {
                continue;
            }
            if loaded.insert(table) {
                match fetch(table / 4096)? {
                    Page::Mapped => {}
                    Page::Absent => {
                        stats.pages += 1;
                        stats.missing += 1;
                    }
                    Page::Data(page) => {
                        stats.pages += 1;
                        // A page outside RAM stays outside memory for the walker.
                        let _ = memory.write_slice(&page, GuestAddress(table));
                    }
                }
            }
            if level == 1 {
                continue;
            }
            let mut entries = [0u8; 4096];
            if memory
                .read_slice(&mut entries, GuestAddress(table))
                .is_err()
            {
                continue;
            }
            for e in entries.chunks_exact(8) {
                let mut w = [0u8; 8];
                w.copy_from_slice(e);
                let entry = u64::from_le_bytes(w);
                // Present and pointing to a table (PS at PDPT and PD is a leaf; at PML4
                // and PML5 it is a reserved bit the walker refuses).
                let leaf = (level == 2 || level == 3) && entry & PS != 0;
                if entry & 1 != 0 && !leaf {
                    next.push(entry & ADDR);
                }
            }
        }
        next.sort_unstable();
        next.dedup();
        level_pages = next;
    }
    Ok(stats)
}

/// Maps every segment (see the module docs).
fn map_segments(
    path: &Path,
    file: &File,
    segments: &[Segment],
) -> Result<(GuestMemoryMmap, Vec<FaultWatch>), DumpError> {
    let map_error = |offset: u64, reason: String| DumpError::Map {
        path: path.to_owned(),
        offset,
        reason,
    };
    let mut regions = Vec::new();
    let mut watches = Vec::new();
    for g in segments {
        let len = usize::try_from(g.len)
            .map_err(|_| map_error(g.file_offset, "the segment is too large".into()))?;
        let region = if g.file_offset % 4096 == 0 {
            let fd = file
                .try_clone()
                .map_err(|e| map_error(g.file_offset, e.to_string()))?;
            let region = MmapRegionBuilder::new(len)
                .with_file_offset(FileOffset::new(fd, g.file_offset))
                .with_mmap_prot(libc::PROT_READ)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| map_error(g.file_offset, e.to_string()))?;
            watches.push(
                sigbus::watch(region.as_ptr(), len, libc::PROT_READ)
                    .map_err(|e| map_error(g.file_offset, e.to_string()))?,
            );
            region
        } else {
            MmapRegionBuilder::new(len)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| map_error(g.file_offset, e.to_string()))?
        };
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(g.gpa))
                .ok_or_else(|| map_error(g.file_offset, "the segment overflows".into()))?,
        );
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| map_error(0, e.to_string()))?;
    Ok((memory, watches))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;

    use vm_memory::GuestMemoryBackend;
    use walker::{Granularity, PagingContext, WalkOptions};

    use super::*;
    use crate::arch::x86_64::regs::{Registers, SpecialRegisters};
    use crate::files::{Output, Replace};
    use crate::introspect::{Format, VaRange, print_walk};

    const MIB: u64 = 1 << 20;
    /// Where the test guest's second region starts: above a hole, as above 3 GiB.
    const HIGH: u64 = 4 << 30;

    /// Two regions, [0, 2 MiB) and [4 GiB, 4 GiB + 2 MiB), with 4-level tables at 0x1000
    /// mapping VA 0x40_0000 (4 KiB, to a page in the high region), VA 0x60_0000 (2 MiB
    /// leaf) and a PT that lives in the high region.
    pub(crate) fn guest() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 2 * MIB as usize),
            (GuestAddress(HIGH), 2 * MIB as usize),
        ])
        .unwrap();
        let w = |at: u64, v: u64| mem.write_obj(v, GuestAddress(at)).unwrap();
        w(0x1000, 0x2000 | 3); // PML4[0] -> PDPT
        w(0x2000, 0x3000 | 3); // PDPT[0] -> PD
        w(0x3000 + 2 * 8, HIGH | 0x67); // PD[2] -> PT in the high region
        w(0x3000 + 3 * 8, 0x20_0000 | 0xe3); // PD[3]: 2 MiB leaf, dirty
        w(HIGH, (HIGH + 0x5000) | 0x63); // PT[0]: 4 KiB leaf
        w(HIGH + 8, 0x8000 | 0x8000_0000_0000_0005); // PT[1]: NX user read-only
        mem
    }

    fn vcpu() -> elf::CoreVcpu {
        (
            0,
            Registers {
                rip: 0xffff_ffff_8100_0000,
                rsp: 0x7000,
                ..Registers::default()
            },
            SpecialRegisters {
                cr0: 0x8005_0033,
                cr3: 0x1000,
                cr4: 0x20,
                efer: 0xd01,
                ..SpecialRegisters::default()
            },
        )
    }

    /// A 4-level context at `cr3`.
    pub(crate) fn long_mode(cr3: u64) -> PagingContext {
        PagingContext::new(walker::ControlRegisters::long_mode(cr3)).unwrap()
    }

    /// Every leaf as mapped and split, in `vmm inspect --format tlb`'s lines.
    pub(crate) fn leaves<M: GuestMemoryBackend>(mem: &M, cr3: u64) -> Vec<String> {
        let ctx = PagingContext::new(walker::ControlRegisters::long_mode(cr3)).unwrap();
        let mut all = Vec::new();
        for g in [Granularity::AsMapped, Granularity::Split4K] {
            let mut out = Vec::new();
            let range: VaRange = "0-".parse().unwrap();
            print_walk(
                mem,
                &ctx,
                &range,
                g,
                Format::Tlb,
                WalkOptions::default(),
                &mut out,
            )
            .unwrap();
            all.extend(String::from_utf8(out).unwrap().lines().map(str::to_owned));
        }
        all
    }

    pub(crate) fn core(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = dir.join("core.elf");
        let out = Output::create(&path, "ELF core", Replace::Yes, &[]).unwrap();
        elf::write_core(&guest(), &[vcpu(), vcpu()], out).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    #[test]
    fn an_elf_core_round_trips_with_its_registers() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = core(dir.path());
        let dump = Dump::open(&path, None).unwrap();
        assert_eq!(dump.format, DumpFormat::Elf);
        assert_eq!(
            dump.segments
                .iter()
                .map(|g| (g.gpa, g.len))
                .collect::<Vec<_>>(),
            [(0, 2 * MIB), (HIGH, 2 * MIB)]
        );
        assert_eq!(dump.cpus.len(), 2);
        let regs = dump.control_registers(1).unwrap();
        assert_eq!((regs.cr0, regs.cr3, regs.cr4), (0x8005_0033, 0x1000, 0x20));
        assert_eq!(regs.efer, 0xd00, "long mode with NX assumed");
        assert_eq!(dump.cpus[0].rip, Some(0xffff_ffff_8100_0000));
        assert!(dump.control_registers(2).is_err());
        let expected = leaves(&guest(), 0x1000);
        assert_eq!(
            expected.len(),
            3 + 2 + 512,
            "two 4 KiB leaves and a 2 MiB one, then split"
        );
        assert_eq!(leaves(dump.memory(), 0x1000), expected);
        dump.check_intact().unwrap();
        let info = dump.info();
        assert!(
            info.contains("format: ELF core")
                && info.contains("cpu 1: CR0 0x80050033 CR3 0x1000 CR4 0x20: 4-level paging"),
            "{info}"
        );
    }

    /// The raw file of `guest()`: byte N = GPA N (sparse).
    fn raw(dir: &Path) -> PathBuf {
        let path = dir.join("raw.mem");
        crate::memfile::dump(&guest(), &path, Replace::Yes).unwrap();
        path
    }

    #[test]
    fn lime_and_headerless_layouts_read_the_same_leaves_as_the_raw_file() {
        let dir = tempfile::tempdir().unwrap();
        let mem = guest();
        let expected = leaves(&mem, 0x1000);
        let region = |gpa: u64| {
            let mut b = vec![0u8; 2 * MIB as usize];
            mem.read_slice(&mut b, GuestAddress(gpa)).unwrap();
            b
        };
        // LiME: a header before each range (so the data is at unaligned offsets).
        let lime_path = dir.path().join("capture.lime");
        let mut f = std::fs::File::create(&lime_path).unwrap();
        for gpa in [0, HIGH] {
            f.write_all(&lime::header(gpa, 2 * MIB)).unwrap();
            f.write_all(&region(gpa)).unwrap();
        }
        drop(f);
        let lime_dump = Dump::open(&lime_path, None).unwrap();
        assert_eq!(lime_dump.format, DumpFormat::Lime);
        // Its data is at unaligned offsets: nothing is read until a walk asks.
        assert_ne!(leaves(lime_dump.memory(), 0x1000), expected);
        let read = lime_dump.prepare_walk(&long_mode(0x1000)).unwrap().unwrap();
        assert_eq!((read.pages, read.missing), (4, 0), "PML4, PDPT, PD, PT");
        assert_eq!(leaves(lime_dump.memory(), 0x1000), expected);
        // Regions concatenated, placed by --regions.
        let cat = dir.path().join("guest.mem");
        let mut bytes = region(0);
        bytes.extend(region(HIGH));
        std::fs::write(&cat, &bytes).unwrap();
        let layout = Layout::parse_regions("0:2M,0x100000000:200000").unwrap();
        let placed = Dump::open(&cat, Some(layout)).unwrap();
        assert_eq!(leaves(placed.memory(), 0x1000), expected);
        // The raw file itself, as a sanity check of the comparison.
        let raw_file = crate::memfile::open(&raw(dir.path())).unwrap();
        assert_eq!(leaves(raw_file.memory(), 0x1000), expected);
        // A layout that does not cover the file is refused.
        let e = Dump::open(&cat, Some(Layout::parse_regions("0:2M").unwrap()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("covers 2097152 bytes, but the file is 4194304"),
            "{e}"
        );
    }

    /// A Firecracker memory file of a guest with RAM above its 3.25 GiB gap (sparse: only
    /// the tables and the pages they map are written), whose tables live in the high
    /// part: walked with `--layout firecracker`, its leaves are the raw file's.
    #[test]
    fn a_firecracker_file_above_the_gap_walks_like_the_raw_file() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let gap = Layout::Firecracker.regions(u64::MAX)[0].1;
        let high = |gpa: u64| gpa - HIGH + gap; // file offset of a GPA above 4 GiB
        let fc = dir.path().join("firecracker.mem");
        let raw = dir.path().join("raw.mem");
        let (fc_file, raw_file) = (
            std::fs::File::create(&fc).unwrap(),
            std::fs::File::create(&raw).unwrap(),
        );
        fc_file.set_len(gap + 4 * MIB).unwrap();
        raw_file.set_len(HIGH + 4 * MIB).unwrap();
        // PML4 at 0x1000 (low RAM); PDPT, PD and PT above 4 GiB.
        let entries = [
            (0x1000, (HIGH + 0x1000) | 3),
            (HIGH + 0x1000, (HIGH + 0x2000) | 3),
            (HIGH + 0x2000, (HIGH + 0x3000) | 3),
            (HIGH + 0x2008, (HIGH + 0x20_0000) | 0xe3),
            (HIGH + 0x3000, (HIGH + 0x5000) | 0x63),
            (HIGH + 0x3ff8, 0x7000 | 0x8000_0000_0000_0005),
        ];
        for (gpa, entry) in entries {
            let at = if gpa >= HIGH { high(gpa) } else { gpa };
            fc_file.write_all_at(&u64::to_le_bytes(entry), at).unwrap();
            raw_file
                .write_all_at(&u64::to_le_bytes(entry), gpa)
                .unwrap();
        }
        drop((fc_file, raw_file));
        let placed = Dump::open(&fc, Some(Layout::Firecracker)).unwrap();
        assert_eq!(
            placed
                .segments
                .iter()
                .map(|g| (g.gpa, g.len))
                .collect::<Vec<_>>(),
            [(0, gap), (HIGH, 4 * MIB)]
        );
        assert!(
            placed.prepare_walk(&long_mode(0x1000)).unwrap().is_none(),
            "all mapped"
        );
        let raw_mem = crate::memfile::open(&raw).unwrap();
        let expected = leaves(raw_mem.memory(), 0x1000);
        assert_eq!(expected.len(), 3 + 2 + 512);
        assert_eq!(leaves(placed.memory(), 0x1000), expected);
        // Cloud Hypervisor's gap (3 GiB) puts the same file's high part elsewhere.
        let wrong = Dump::open(&fc, Some(Layout::CloudHypervisor)).unwrap();
        assert_ne!(leaves(wrong.memory(), 0x1000), expected);
    }

    #[test]
    fn vendor_layouts_put_ram_above_the_gap_at_4_gib() {
        assert_eq!(Layout::Firecracker.regions(MIB), [(0, MIB)]);
        assert_eq!(
            Layout::Firecracker.regions(4 << 30),
            [(0, 0xd000_0000), (HIGH, (4 << 30) - 0xd000_0000)]
        );
        assert_eq!(
            Layout::CloudHypervisor.regions(4 << 30),
            [(0, 3 << 30), (HIGH, 1 << 30)]
        );
        assert!(Layout::parse_regions("0:1000,x").is_err());
        assert!(Layout::parse_regions("0x10:1000").is_err(), "unaligned");
    }

    fn refused(bytes: &[u8], dir: &Path, words: &[&str]) {
        let path = dir.join("bad.elf");
        std::fs::write(&path, bytes).unwrap();
        let e = Dump::open(&path, None).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("bad.elf"), "{e}");
        for w in words {
            assert!(e.contains(w), "{w:?} not in {e}");
        }
        assert!(e.len() < 400, "{e}");
    }

    #[test]
    fn bad_elf_cores_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (_, good) = core(dir.path());
        let phoff = 64usize;
        let load1 = phoff + 56; // the first PT_LOAD's program header
        let data = u64_le(&good, load1 + 8) as usize;
        // Truncated inside every header and at every segment.
        for cut in [
            10,
            63,
            phoff + 20,
            load1 + 30,
            data - 1,
            data + 100,
            good.len() - 1,
        ] {
            refused(&good[..cut], dir.path(), &["past the end of the file"]);
        }
        // Overlapping PT_LOADs.
        let mut b = good.clone();
        let load2 = load1 + 56;
        b[load2 + 24..load2 + 32].copy_from_slice(&0x1000u64.to_le_bytes());
        refused(&b, dir.path(), &["overlap"]);
        // An absurd PN_XNUM count (section header 0 says 4 billion headers).
        let mut b = good.clone();
        b[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
        let shoff = good.len() as u64;
        b[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        let mut shdr = [0u8; 64];
        shdr[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&shdr);
        refused(
            &b,
            dir.path(),
            &["4294967295 program headers", "past the end"],
        );
        // A note whose size runs past its segment.
        let mut b = good.clone();
        let notes = u64_le(&good, phoff + 8) as usize;
        b[notes + 4..notes + 8].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        refused(&b, dir.path(), &["runs past its segment"]);
        // A QEMU note of a wrong size.
        let mut b = good.clone();
        let qemu = good.windows(5).position(|w| w == b"QEMU\0").unwrap();
        b[qemu + 8 + 4..qemu + 8 + 8].copy_from_slice(&100u32.to_le_bytes());
        refused(&b, dir.path(), &["QEMUCPUState is 432 or 440"]);
        // Not a core, not x86-64, not a dump at all.
        let mut b = good.clone();
        b[0x10] = 2;
        refused(&b, dir.path(), &["e_type is 2"]);
        let mut b = good.clone();
        b[0x12] = 183;
        refused(&b, dir.path(), &["e_machine is 183"]);
        refused(
            &[0x42; 4096],
            dir.path(),
            &["not a dump vmm recognises", "BBBB"],
        );
        // A LiME range that runs past the end, and one that ends before it starts.
        let mut lime = lime::header(0, 8192).to_vec();
        lime.extend_from_slice(&[0u8; 4096]);
        refused(&lime, dir.path(), &["LiME", "runs past the end"]);
        let mut lime = lime::header(0x2000, 4096).to_vec();
        lime[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        refused(
            &lime,
            dir.path(),
            &["ends (0x1000) before it starts (0x2000)"],
        );
    }

    fn u64_le(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A valid core with bytes changed anywhere in its headers and notes: an error or
        /// a dump, never a panic, and the dump's memory never extends past the file.
        #[test]
        fn mutated_cores_never_panic(
            edits in proptest::collection::vec((0usize..2048, proptest::prelude::any::<u8>()), 1..6),
        ) {
            static CORE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let good = CORE.get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                core(dir.path()).1
            });
            let mut b = good.clone();
            for (at, v) in &edits {
                b[*at] = *v;
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.elf");
            std::fs::write(&path, &b).unwrap();
            if let Ok(dump) = Dump::open(&path, None) {
                for g in &dump.segments {
                    proptest::prop_assert!(g.file_offset + g.len <= b.len() as u64);
                }
            }
        }
    }
}
