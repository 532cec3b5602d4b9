//! Snapshots of a running guest: a full one, then diffs of the pages dirtied since the
//! previous one; loading (any generation), merging, and offline inspection.
//!
//! # The snapshot directory
//!
//! A directory holds **generations** `0, 1, 2, ...`, each made of two files:
//!
//! | file | what |
//! |---|---|
//! | `gen-NNNNNN.mem` | generation 0 (a *full* snapshot): guest RAM, the regions concatenated in GPA order, as Firecracker's memory file; the region table (GPA, length, file offset) is in the state file |
//! | `gen-NNNNNN.diff` | a later generation (a *diff*): only the pages dirtied since the previous generation (format below) |
//! | `gen-NNNNNN.state` | the state file: written **last**, so a generation exists exactly when its state file does |
//!
//! `NNNNNN` is the generation, six decimal digits. Every file is written under a
//! temporary name (`.NAME.XXXXXXXX.tmp`, [`crate::files::Output`]) in the same directory, fsynced, renamed to its name and
//! the directory fsynced; the data file first, the state file last. A crash or a failed
//! write (disk full) therefore leaves at most temporaries and, for a generation whose state
//! was never renamed, a data file without a state, which readers ignore; the writer removes
//! both when it sees the failure. Generation `G > 0` is a diff whose parent is `G - 1`;
//! loading `G` reads generation 0 and applies every diff `1..=G` in order.
//!
//! # State file (`gen-NNNNNN.state`, version [`FORMAT_VERSION`])
//!
//! One header line, then one JSON object ([`SnapshotState`]):
//!
//! ```text
//! GWSNAP-STATE 2 <json length in bytes> <CRC32 of the JSON bytes, 8 hex digits>\n
//! {"version":2,"generation":3,"parent":2,"kind":"diff","page_size":4096,
//!  "regions":[{"gpa":0,"len":67108864,"file_offset":0}],
//!  "data":{"name":"gen-000003.diff","len":57376,"crc32":1234567890},"pages":14,
//!  "vcpus":[{"index":0,"regs":{"rax":0,...,"rip":1049000,"rflags":2},
//!            "sregs":{"cs":{...},...,"cr0":2147549233,"cr3":2101248,"cr4":160,"efer":3329,...},
//!            "kvm":{"cpuid":[{"function":0,"index":0,"flags":0,"eax":13,...},...],
//!                   "mp_state":0,"interrupt_bitmap":[0,0,0,0],"xsave":"7f03...",
//!                   "xcrs":[{"xcr":0,"value":7}],"debug":{"db":[0,0,0,0],"dr6":4294905840,...},
//!                   "lapic":null,"msrs":[{"index":16,"value":123456789},...],
//!                   "events":"0000...","tsc_khz":2899998}}],
//!  "paging":{"phys_addr_bits":46,"gbpages":false,"la57":false,"nx":true},
//!  "guest_cr3s":[2101248,2109440],
//!  "vm":{"clock_ns":1234567,"irqchip":null},
//!  "devices":{"serial":{"baud_divisor_low":12,...,"in_buffer":[]},"legacy":null},
//!  "boot":{"source":"builtin","mode":"normal","kernel":null,"initrd":null,"cmdline":null,
//!          "memory_bytes":67108864,"vcpus":1}}
//! ```
//!
//! The header carries the version (so a reader refuses a newer format before parsing it),
//! and the length and CRC32 of the JSON (so a truncated or corrupted state is refused by
//! name). `data` names the generation's data file with its exact length and CRC32 (CRC-32/
//! ISO-HDLC, as zlib's `crc32`, over the whole file). `vcpus` holds each vCPU's general and
//! special registers (the VMM's own [`Registers`] and [`SpecialRegisters`]: CR0, CR3, CR4,
//! EFER, segments, ...); `paging` the guest's CPUID paging features (MAXPHYADDR, 1 GiB
//! pages), so an offline walk needs no flags; `guest_cr3s` the address spaces the built-in
//! guest listed in its descriptor, when known. JSON because the state is small (about
//! 16 KiB per vCPU), read by people when something goes wrong, and already a dependency;
//! the bulk data is binary.
//!
//! Format 2 adds what a restore needs ([`crate::kvm::state`]): each vCPU's `kvm` (its
//! CPUID as given, MP state, XSAVE area, XCRs, debug registers, LAPIC, every MSR KVM
//! lists as saveable and reads, pending events, TSC frequency; KVM's own structures as
//! hex strings of their bytes) and the VM's `vm` (the kvmclock; the PICs, IOAPIC and PIT
//! of a Linux guest) and `devices` (COM1's registers and FIFO; the Linux VM's CMOS RAM
//! and reset control register) and `boot` (the boot source and configuration, for
//! information: built-in mode or kernel, initrd and command line; RAM and vCPUs). All are
//! absent in format 1 (which this VMM still reads, lists,
//! inspects and merges, but does not resume) and in snapshots written from memory
//! ([`SnapshotSource`] without a VM). The diff file format did not change
//! ([`DIFF_FORMAT_VERSION`]).
//!
//! # Memory file (`gen-000000.mem`)
//!
//! The bytes of each region in `regions` order, region `i` at `regions[i].file_offset`
//! (the sum of the lengths before it). For a guest of at most 3 GiB (one region at GPA 0)
//! byte N is GPA N, the same as [`crate::memfile`]'s raw files.
//!
//! # Diff file (`gen-NNNNNN.diff`): a page list
//!
//! ```text
//! offset 0   8 bytes  magic "GWSNAPDF"
//!        8   u32 LE   format version (1)
//!       12   u32 LE   page size (4096)
//!       16   u64 LE   generation
//!       24   u64 LE   page count n
//!       32   n × u64 LE   GPAs of the pages, strictly increasing, page-aligned, inside the regions
//!  32 + 8n   n × 4096     the pages' bytes, in the same order
//! ```
//!
//! A page list rather than a sparse file the size of guest RAM: it is as small as the dirty
//! data (a sparse file's apparent size is the whole of RAM, and tools that copy it may
//! inflate it), it is written and read sequentially, its page set is explicit (a sparse
//! file cannot tell a dirty page of zeros from a clean one without relying on how the
//! filesystem reports holes), and it does not depend on the filesystem supporting holes.
//! Applying it costs one positioned write per page, which merging does anyway.
//!
//! # Taking snapshots
//!
//! [`SnapshotDir`] writes generations; [`crate::vm::Vm::snapshot`] pauses every vCPU,
//! fetches the dirty set (which resets it: the next diff holds what was dirtied after this
//! pause), reads the registers, writes the files and resumes. The first generation is
//! full; diffs need dirty logging (`VmConfig::dirty`).
//! Nothing else may fetch the VM's dirty set between two generations (a dirty scan would
//! take pages away from the next diff). When a write fails, the dirty set it fetched is
//! kept and merged into the next generation's, so no page is lost.
//!
//! # Reading
//!
//! [`load`] verifies and maps a generation (the memory file mapped private, so diffs are
//! applied copy-on-write and the files never change); [`merge`] writes it out as a raw
//! memory file ([`crate::memfile`]); [`Snapshot::paging_context`] gives the walker the
//! saved registers of a vCPU.
//!
//! [`Registers`]: crate::arch::x86_64::regs::Registers
//! [`SpecialRegisters`]: crate::arch::x86_64::regs::SpecialRegisters

mod file;
mod read;
mod write;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::cpuid::PagingFeatures;
use crate::arch::x86_64::regs::{Registers, SpecialRegisters};
use crate::kvm::state::{VcpuKvmState, VmKvmState};

pub use read::{
    MemoryLoad, Snapshot, diff_pages, generations, load, load_for_restore, merge, merge_elf,
    merge_snapshot, read_state,
};
pub use write::{SnapshotDir, SnapshotInfo, SnapshotSource, state_bytes};

/// The state-file format this VMM writes (2: with what KVM holds of the vCPUs and the VM).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest state-file format this VMM reads (1: registers only; inspected, listed and
/// merged, never resumed).
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// The diff-file format (unchanged since version 1 of the snapshots).
pub const DIFF_FORMAT_VERSION: u32 = 1;
/// Size of a page in diffs and dirty sets.
pub const PAGE_SIZE: u64 = 4096;
/// First word of a state file.
pub const STATE_MAGIC: &str = "GWSNAP-STATE";
/// First 8 bytes of a diff file.
pub const DIFF_MAGIC: [u8; 8] = *b"GWSNAPDF";
/// Size of a diff file's header.
pub const DIFF_HEADER_LEN: u64 = 32;

/// The state file of generation `generation`.
pub fn state_file_name(generation: u64) -> String {
    format!("gen-{generation:06}.state")
}

/// The data file of generation `generation`.
pub fn data_file_name(generation: u64, kind: SnapshotKind) -> String {
    match kind {
        SnapshotKind::Full => format!("gen-{generation:06}.mem"),
        SnapshotKind::Diff => format!("gen-{generation:06}.diff"),
    }
}

/// Full or diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// All of guest RAM.
    Full,
    /// The pages dirtied since the parent generation.
    Diff,
}

/// One guest RAM region and where its bytes are in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes (a multiple of 4 KiB).
    pub len: u64,
    /// Offset of its first byte in the memory file.
    pub file_offset: u64,
}

/// The registers of one vCPU, and (format 2, from a VM) the rest of its KVM state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuRecord {
    /// vCPU index.
    pub index: u8,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: Registers,
    /// Segment, control and descriptor-table registers, EFER.
    pub sregs: SpecialRegisters,
    /// What KVM holds beyond the registers (CPUID, MP state, XSAVE, XCRs, debug
    /// registers, LAPIC, MSRs, events, TSC frequency); absent in format 1 and in
    /// snapshots written from memory rather than from a VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<VcpuKvmState>,
    /// The vCPU's debug-port argument latch (absent before it was recorded: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_argument: Option<u64>,
}

/// The data file of a generation, as its state file describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// File name in the snapshot directory.
    pub name: String,
    /// Exact length in bytes.
    pub len: u64,
    /// CRC32 of the whole file.
    pub crc32: u32,
}

/// The contents of a state file (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// This generation.
    pub generation: u64,
    /// The generation a diff applies to (`generation - 1`); `None` for a full snapshot.
    pub parent: Option<u64>,
    /// Full or diff.
    pub kind: SnapshotKind,
    /// [`PAGE_SIZE`].
    pub page_size: u64,
    /// Guest RAM regions, in GPA order.
    pub regions: Vec<RegionRecord>,
    /// The data file.
    pub data: DataFile,
    /// Pages in the data file (every page of RAM for a full snapshot).
    pub pages: u64,
    /// Every vCPU's registers.
    pub vcpus: Vec<VcpuRecord>,
    /// The guest's paging features (MAXPHYADDR, 1 GiB pages, ...).
    pub paging: PagingFeatures,
    /// The built-in guest's address spaces (its descriptor's CR3s), when known.
    pub guest_cr3s: Vec<u64>,
    /// What KVM holds of the VM (its clock; for a Linux guest its interrupt controllers
    /// and PIT); present exactly when every vCPU's `kvm` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmKvmState>,
    /// The devices' state (format 2, from a VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<crate::devices::DeviceRecord>,
    /// What the VM was booted from and with, for information (format 2, from a VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::vm::BootRecord>,
}

impl SnapshotState {
    /// Whether the state holds everything KVM had (format 2, taken from a VM).
    pub fn has_kvm_state(&self) -> bool {
        self.vm.is_some() && self.vcpus.iter().all(|v| v.kvm.is_some())
    }
}

/// Why a snapshot cannot be taken, read or merged. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is shorter than its state (or its own header) says.
    #[error("{path} is truncated: {found} bytes, expected {expected}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its expected length.
        expected: u64,
        /// Its length.
        found: u64,
    },
    /// A checksum does not match.
    #[error("{path} is corrupted: its CRC32 is {found:#010x}, expected {expected:#010x}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The recorded CRC32.
        expected: u32,
        /// The computed CRC32.
        found: u32,
    },
    /// A file of another format version.
    #[error(
        "{path} has snapshot format version {found}; this vmm reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it has.
        found: u64,
    },
    /// A file that is not what it should be.
    #[error("{path} is not a valid snapshot file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A generation of the chain has no state file.
    #[error("{path} is missing: generation {needed_by} needs generation {generation}")]
    MissingGeneration {
        /// The state file that should exist.
        path: PathBuf,
        /// The missing generation.
        generation: u64,
        /// The generation being loaded.
        needed_by: u64,
    },
    /// The directory has no generation.
    #[error("{0} holds no snapshot generation (no gen-NNNNNN.state file)")]
    Empty(PathBuf),
    /// Writing into a directory that already holds generations.
    #[error(
        "{0} already holds snapshot generations: choose an empty or new directory (generations of two runs cannot be mixed)"
    )]
    NotEmpty(PathBuf),
    /// A vCPU is still inside an instruction KVM has not completed.
    #[error(
        "vCPU {vcpu} is inside a string I/O instruction that did not complete while pausing: \
         its registers cannot be resumed from, so no snapshot is taken"
    )]
    InstructionPending {
        /// The vCPU.
        vcpu: u8,
    },
    /// A merged snapshot directory asked for inside the snapshot it merges.
    #[error(
        "{out} is inside the snapshot directory {dir}: write the merged snapshot somewhere else"
    )]
    OutputInsideSnapshot {
        /// The output directory.
        out: PathBuf,
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// A diff was asked for without dirty logging.
    #[error(
        "a diff snapshot needs dirty logging: build the VM with dirty logging (VmConfig::dirty)"
    )]
    NoDirtyLog,
    /// A diff was asked for before a full snapshot.
    #[error("the first snapshot of {0} must be full")]
    FirstMustBeFull(PathBuf),
    /// Reading guest memory failed.
    #[error("cannot read guest memory at {addr:#x}: {source}")]
    Memory {
        /// The guest-physical address.
        addr: u64,
        /// The error.
        source: vm_memory::GuestMemoryError,
    },
    /// Mapping a memory file failed.
    #[error("cannot map {path}: {reason}")]
    Map {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A vCPU index that the snapshot does not have.
    #[error("the snapshot has no vCPU {vcpu} (it has {count})")]
    NoSuchVcpu {
        /// Asked for.
        vcpu: usize,
        /// How many there are.
        count: usize,
    },
    /// The saved registers do not describe paging the walker reads.
    #[error("the saved registers of vCPU {vcpu} do not describe 4- or 5-level paging: {reason}")]
    Context {
        /// The vCPU.
        vcpu: usize,
        /// Why.
        reason: String,
    },
    /// Fetching the dirty set failed.
    #[error(transparent)]
    Dirty(#[from] crate::dirty::DirtyError),
    /// Pausing or resuming the vCPUs failed.
    #[error(transparent)]
    Vm(#[from] Box<crate::vm::VmError>),
    /// Writing a merged memory file failed.
    #[error(transparent)]
    MemFile(#[from] crate::memfile::MemFileError),
    /// A file cannot be opened, read or written safely ([`crate::files`]).
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// The snapshot directory's path is not a directory.
    #[error("the snapshot directory {path} is {kind}, not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: crate::files::FileKind,
    },
    /// The snapshot directory holds something that is not vmm's.
    #[error(
        "{dir} holds {name:?}, which is not a snapshot file of vmm's: give a new or empty directory for --snapshot-dir (vmm never deletes files it did not create)"
    )]
    ForeignFile {
        /// The directory.
        dir: PathBuf,
        /// The first entry that is not ours.
        name: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, SnapshotError>;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
    use walker::DirtyBitmap;

    use super::*;

    const HOLE_REGION: u64 = 0x10_0000;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-snap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Two regions with a hole between them, as a guest above 3 GiB has.
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(HOLE_REGION), 0x8000),
        ])
        .unwrap()
    }

    fn vcpu(cr3: u64) -> VcpuRecord {
        let mut record = VcpuRecord {
            index: 0,
            regs: Registers::default(),
            sregs: SpecialRegisters::default(),
            kvm: None,
            debug_argument: None,
        };
        record.regs.rip = 0x10_0000;
        record.sregs.cr3 = cr3;
        record.sregs.cr0 = 0x8001_0001;
        record.sregs.cr4 = 0x20;
        record.sregs.efer = 0xd00;
        record
    }

    fn paging() -> PagingFeatures {
        PagingFeatures {
            phys_addr_bits: 46,
            gbpages: false,
            la57: false,
            nx: true,
        }
    }

    fn dirty(mem: &GuestMemoryMmap, pages: &[u64]) -> Vec<DirtyBitmap> {
        mem.iter()
            .map(|r| {
                let mut b = DirtyBitmap::new(r.start_addr(), r.len());
                for p in pages {
                    if (r.start_addr().0..r.start_addr().0 + r.len()).contains(p) {
                        b.set(GuestAddress(*p));
                    }
                }
                b
            })
            .collect()
    }

    fn source<'a>(mem: &'a GuestMemoryMmap, pages: &[u64]) -> SnapshotSource<'a, GuestMemoryMmap> {
        SnapshotSource {
            memory: mem,
            vcpus: vec![vcpu(0x1000)],
            vm: None,
            devices: None,
            boot: None,
            paging: paging(),
            dirty: Some(dirty(mem, pages)),
        }
    }

    fn contents<M: GuestMemoryBackend>(mem: &M) -> Vec<u8> {
        let mut all = Vec::new();
        for r in mem.iter() {
            let mut buf = vec![0u8; r.len() as usize];
            mem.read_slice(&mut buf, r.start_addr()).unwrap();
            all.extend_from_slice(&buf);
        }
        all
    }

    /// Writes generation 0 and `rounds` diffs, each writing `round` into a few pages.
    /// Returns the memory contents at each generation.
    fn series(dir: &Path, mem: &GuestMemoryMmap, rounds: u64) -> Vec<Vec<u8>> {
        let mut snaps = SnapshotDir::create(dir).unwrap();
        snaps.set_guest_cr3s(vec![0x1000, 0x2000]);
        mem.write_obj(0xfeed_u64, GuestAddress(0x3000)).unwrap();
        let info = snaps.write(source(mem, &[])).unwrap();
        assert_eq!(
            (info.generation, info.kind, info.pages),
            (0, SnapshotKind::Full, 24)
        );
        let mut at = vec![contents(mem)];
        for round in 1..=rounds {
            let pages = [0x1000 * round, HOLE_REGION + 0x1000 * (round % 8), 0xf000];
            for p in pages {
                mem.write_obj(round, GuestAddress(p + 8 * round)).unwrap();
            }
            let info = snaps.write(source(mem, &pages)).unwrap();
            assert_eq!((info.generation, info.kind), (round, SnapshotKind::Diff));
            assert_eq!(info.pages, 3);
            assert_eq!(info.data_bytes, DIFF_HEADER_LEN + 3 * (8 + PAGE_SIZE));
            at.push(contents(mem));
        }
        at
    }

    #[test]
    fn full_then_diffs_load_to_the_memory_at_each_generation() {
        let dir = temp("series");
        let mem = memory();
        let at = series(&dir, &mem, 4);
        assert_eq!(generations(&dir).unwrap(), vec![0, 1, 2, 3, 4]);
        for (g, expected) in at.iter().enumerate() {
            let snap = load(&dir, Some(g as u64)).unwrap();
            assert_eq!(&contents(snap.memory()), expected, "generation {g}");
            assert_eq!(snap.chain, (0..=g as u64).collect::<Vec<_>>());
            assert_eq!(snap.state.vcpus, vec![vcpu(0x1000)]);
            assert_eq!(snap.state.paging, paging());
            assert_eq!(snap.state.guest_cr3s, vec![0x1000, 0x2000]);
            let ctx = snap.paging_context(0, None).unwrap();
            assert_eq!(ctx.registers().cr3, 0x1000);
            assert!(snap.paging_context(1, None).is_err());
        }
        // Merge: byte-identical to a raw dump of the memory (hole included).
        let out = temp("series-out");
        std::fs::create_dir_all(&out).unwrap();
        let merged = out.join("merged.raw");
        let dumped = out.join("dumped.raw");
        let state = merge(&dir, None, &merged, crate::files::Replace::No).unwrap();
        assert_eq!(state.generation, 4);
        crate::memfile::dump(&mem, &dumped, crate::files::Replace::No).unwrap();
        assert_eq!(
            std::fs::read(&merged).unwrap(),
            std::fs::read(&dumped).unwrap()
        );
        assert_eq!(
            diff_pages(&dir, 2).unwrap(),
            vec![
                GuestAddress(0x2000),
                GuestAddress(0xf000),
                GuestAddress(HOLE_REGION + 0x2000)
            ]
        );
        std::fs::remove_dir_all(&out).unwrap();
        // The files are untouched by loading (copy-on-write).
        let base = load(&dir, Some(0)).unwrap();
        assert_eq!(contents(base.memory()), at[0]);
        // A directory with generations is not written over.
        assert!(matches!(
            SnapshotDir::create(&dir),
            Err(SnapshotError::NotEmpty(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn copy_dir(from: &Path, name: &str) -> PathBuf {
        let to = temp(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    }

    fn flip(path: &Path, at: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at as usize] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn damaged_snapshots_are_refused_naming_the_file() {
        let good = temp("damaged");
        series(&good, &memory(), 3);
        let refused = |dir: &Path, file: &str| -> SnapshotError {
            let e = load(dir, None).expect_err("a damaged snapshot loaded");
            assert!(e.to_string().contains(file), "{file}: {e}");
            std::fs::remove_dir_all(dir).unwrap();
            e
        };
        // Truncated memory file.
        let d = copy_dir(&good, "truncated");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("gen-000000.mem"))
            .unwrap();
        f.set_len(0x9000).unwrap();
        let e = refused(&d, "gen-000000.mem");
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
        // A flipped byte in the memory file, in a diff's page data, in a state.
        for (file, at) in [
            ("gen-000000.mem", 0x3001),
            ("gen-000002.diff", DIFF_HEADER_LEN + 3 * 8 + 100),
            ("gen-000003.state", 60),
        ] {
            let d = copy_dir(&good, "flipped");
            flip(&d.join(file), at);
            let e = refused(&d, file);
            assert!(matches!(e, SnapshotError::Checksum { .. }), "{e}");
            assert!(e.to_string().contains("corrupted"), "{e}");
        }
        // A truncated state.
        let d = copy_dir(&good, "short-state");
        let state = d.join("gen-000003.state");
        let bytes = std::fs::read(&state).unwrap();
        std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
        let e = refused(&d, "gen-000003.state");
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
        // Wrong versions: a state file and a diff header.
        let d = copy_dir(&good, "version");
        let state = d.join("gen-000001.state");
        let text = std::fs::read_to_string(&state).unwrap();
        std::fs::write(
            &state,
            text.replacen("GWSNAP-STATE 2 ", "GWSNAP-STATE 3 ", 1),
        )
        .unwrap();
        let e = refused(&d, "gen-000001.state");
        assert!(matches!(e, SnapshotError::Version { found: 3, .. }), "{e}");
        assert!(
            e.to_string().contains("this vmm reads versions 1 to 2"),
            "{e}"
        );
        let d = copy_dir(&good, "diff-version");
        flip(&d.join("gen-000001.diff"), 8);
        let e = refused(&d, "gen-000001.diff");
        assert!(matches!(e, SnapshotError::Version { .. }), "{e}");
        // A missing diff in the chain: its state gone, or only its data file.
        let d = copy_dir(&good, "missing");
        std::fs::remove_file(d.join("gen-000002.state")).unwrap();
        std::fs::remove_file(d.join("gen-000002.diff")).unwrap();
        let e = refused(&d, "gen-000002.state");
        assert!(
            matches!(
                e,
                SnapshotError::MissingGeneration {
                    generation: 2,
                    needed_by: 3,
                    ..
                }
            ),
            "{e}"
        );
        let d = copy_dir(&good, "missing-data");
        std::fs::remove_file(d.join("gen-000001.diff")).unwrap();
        refused(&d, "gen-000001.diff");
        // Not a snapshot directory at all.
        let d = temp("empty");
        std::fs::create_dir_all(&d).unwrap();
        let e = refused(&d, "gw-snap-empty");
        assert!(matches!(e, SnapshotError::Empty(_)), "{e}");
        // The good one still loads.
        load(&good, None).unwrap();
        std::fs::remove_dir_all(&good).unwrap();
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_write_leaves_no_generation_and_loses_no_page() {
        let dir = temp("failed");
        let mem = memory();
        let mut snaps = SnapshotDir::create(&dir).unwrap();
        // A full snapshot that fails half-way: nothing left, still generation 0 next.
        snaps.fail_writes_after(Some(0x5000));
        let e = snaps.write(source(&mem, &[])).unwrap_err();
        assert!(e.to_string().contains("/.gen-000000.mem."), "{e}");
        assert!(files(&dir).is_empty(), "{:?}", files(&dir));
        assert_eq!(snaps.next_generation(), 0);
        snaps.fail_writes_after(None);
        snaps.write(source(&mem, &[])).unwrap();
        mem.write_obj(1u64, GuestAddress(0x1000)).unwrap();
        snaps.write(source(&mem, &[0x1000])).unwrap();
        let gen1 = contents(&mem);
        // Generation 2 fails in its data file, then (with a larger limit) in its state.
        mem.write_obj(2u64, GuestAddress(0x2000)).unwrap();
        let diff_len = DIFF_HEADER_LEN + 8 + PAGE_SIZE;
        for limit in [100, diff_len + 10] {
            snaps.fail_writes_after(Some(limit));
            let e = snaps.write(source(&mem, &[0x2000])).unwrap_err();
            assert!(e.to_string().contains("no space left"), "{e}");
            assert_eq!(
                files(&dir),
                [
                    "gen-000000.mem",
                    "gen-000000.state",
                    "gen-000001.diff",
                    "gen-000001.state"
                ]
            );
            let latest = load(&dir, None).unwrap();
            assert_eq!(latest.state.generation, 1);
            assert_eq!(contents(latest.memory()), gen1);
        }
        // The next diff still has the page of the failed one.
        snaps.fail_writes_after(None);
        mem.write_obj(3u64, GuestAddress(HOLE_REGION)).unwrap();
        let info = snaps.write(source(&mem, &[HOLE_REGION])).unwrap();
        assert_eq!((info.generation, info.pages), (2, 2));
        assert_eq!(contents(load(&dir, None).unwrap().memory()), contents(&mem));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_diff_needs_a_dirty_set() {
        let dir = temp("nodirty");
        let mem = memory();
        let mut snaps = SnapshotDir::create(&dir).unwrap();
        let mut src = source(&mem, &[]);
        src.dirty = None;
        snaps.write(src).unwrap();
        let mut src = source(&mem, &[]);
        src.dirty = None;
        assert!(matches!(snaps.write(src), Err(SnapshotError::NoDirtyLog)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_memory_file_truncated_while_loaded_is_named() {
        let dir = temp("shrunk");
        let mem = memory();
        series(&dir, &mem, 1);
        let snap = load(&dir, None).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("gen-000000.mem"))
            .unwrap()
            .set_len(0x1000)
            .unwrap();
        // Pages the diff did not touch are still the file's: reading them faults.
        let mut buf = vec![0u8; 0x4000];
        snap.memory()
            .read_slice(&mut buf, GuestAddress(HOLE_REGION))
            .unwrap();
        let e = snap.check_intact().unwrap_err().to_string();
        assert!(e.contains("gen-000000.mem") && e.contains("shrank"), "{e}");
        drop(snap);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writer_leftovers_are_told_from_foreign_files() {
        let dir = temp("leftovers");
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            ".gen-000000.mem.ab12cd34.tmp",
            ".gen-000001.state.x.tmp",
            "gen-000003.diff",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        SnapshotDir::create(&dir).unwrap();
        assert!(files(&dir).is_empty());
        for foreign in ["gen-000001.txt", ".gen-1.mem.x.tmp", "notes", ".hidden.tmp"] {
            std::fs::write(dir.join(foreign), b"x").unwrap();
            let e = SnapshotDir::create(&dir).unwrap_err();
            assert!(
                matches!(e, SnapshotError::ForeignFile { .. }),
                "{foreign}: {e}"
            );
            assert_eq!(files(&dir), [foreign], "not deleted");
            std::fs::remove_file(dir.join(foreign)).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Valid state and diff files of one generation, to mutate: made once.
    fn valid_files() -> &'static (Vec<u8>, Vec<u8>, SnapshotState) {
        static FILES: std::sync::OnceLock<(Vec<u8>, Vec<u8>, SnapshotState)> =
            std::sync::OnceLock::new();
        FILES.get_or_init(|| {
            let dir = temp("valid-files");
            series(&dir, &memory(), 1);
            let state_bytes = std::fs::read(dir.join("gen-000001.state")).unwrap();
            let diff = std::fs::read(dir.join("gen-000001.diff")).unwrap();
            let state = read_state(&dir, 1).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            (state_bytes, diff, state)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any bytes as a state file: an error or a state, never a panic, and an error
        /// message of bounded length whatever the input.
        #[test]
        fn state_reader_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
            let path = Path::new("gen-000001.state");
            if let Err(e) = read::parse_state(path, 1, &bytes) {
                proptest::prop_assert!(e.to_string().len() < 600, "{}", e);
            }
        }

        /// A valid state or diff with a few bytes changed: refused with a message, or
        /// (a change the format cannot see, such as inside a page) read consistently.
        #[test]
        fn mutated_files_are_refused_or_consistent(
            edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..4),
            in_diff in proptest::prelude::any::<bool>(),
        ) {
            let (state_bytes, diff, good) = valid_files();
            let (mut state_bytes, mut diff) = (state_bytes.clone(), diff.clone());
            let dir = Path::new("S");
            let target = if in_diff { &mut diff } else { &mut state_bytes };
            for (at, value) in &edits {
                let i = at.index(target.len());
                target[i] = *value;
            }
            let path = dir.join("gen-000001.state");
            match read::parse_state(&path, 1, &state_bytes) {
                Err(e) => proptest::prop_assert!(e.to_string().contains("gen-000001.state"), "{}", e),
                Ok(state) => {
                    proptest::prop_assert_eq!(state.generation, 1);
                    if in_diff {
                        let mut reader = std::io::Cursor::new(&diff);
                        let pages = read::read_diff_header(&dir.join("gen-000001.diff"), &state, &mut reader);
                        if let Ok(pages) = pages {
                            proptest::prop_assert_eq!(pages.len() as u64, state.pages);
                            proptest::prop_assert!(pages.windows(2).all(|w| w[0] < w[1]));
                        }
                    } else {
                        proptest::prop_assert_eq!(&state.regions, &good.regions);
                    }
                }
            }
        }

        /// Any bytes as a diff of a valid state: an error, or a sorted page list inside
        /// the regions; never a panic or an allocation beyond the state's own sizes.
        #[test]
        fn diff_reader_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let (_, _, state) = valid_files();
            let mut reader = std::io::Cursor::new(&bytes);
            if let Ok(pages) = read::read_diff_header(Path::new("gen-000001.diff"), state, &mut reader) {
                proptest::prop_assert_eq!(pages.len() as u64, state.pages);
            }
        }
    }
}
