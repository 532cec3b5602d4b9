//! Loading a Linux bzImage for the 64-bit boot protocol (Documentation/arch/x86/boot.rst):
//! the protected-mode kernel at [`layout::LINUX_KERNEL_START`] (`linux-loader`'s
//! `BzImage`), the command line at [`layout::CMDLINE_START`], the initrd as high as
//! possible below the 3 GiB hole, and the zero page (`struct boot_params`, with the
//! image's setup header and our e820 map) at [`layout::BOOT_PARAMS_START`].
//!
//! By default vmm decompresses the bzImage's payload itself ([`payload`]) and enters the
//! kernel proper at its `startup_64`, with the KASLR offsets the guest's decompressor
//! would have chosen; [`Decompress::Guest`] (or a payload format vmm does not decode)
//! loads the bzImage as it is and lets its decompressor run in the guest.
//!
//! The pure parts (header checks, e820 map, initrd placement, zero page) are separate
//! functions so they are tested without files or KVM.

use std::fs::File;

use crate::files::open_input;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::{
    E820_MAX_ENTRIES_ZEROPAGE, boot_e820_entry, boot_params, setup_header,
};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::bitmap::Bitmap;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::x86_64::layout;
use crate::memory::{GuestRam, MemorySize, ram_ranges};

pub mod payload;

use payload::{Compression, PayloadError, Relocations, Vmlinux};

/// What to boot: a bzImage, an optional initrd and a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initrd / initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Boot even on a PVM host (where a stock kernel dies on instructions PVM cannot run).
    pub force: bool,
    /// Who decompresses a bzImage.
    pub decompress: Decompress,
}

/// Who decompresses a bzImage's payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Decompress {
    /// vmm, on the host, when it decodes the format (gzip, lz4, zstd); then the guest
    /// starts in the kernel proper. Otherwise the guest's decompressor runs.
    #[default]
    Vmm,
    /// The bzImage's own decompressor, in the guest (what QEMU and most VMMs do).
    Guest,
}

/// Offset of the setup header in a bzImage (and in the zero page).
pub const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// "HdrS", the setup header's magic (`header` field, at offset 0x202).
pub const SETUP_HEADER_MAGIC: u32 = 0x5372_6448;
/// `loadflags` bit 0: the protected-mode kernel is loaded at 1 MiB (a bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags` bit 5: QUIET_FLAG (suppress early decompressor messages).
pub const QUIET_FLAG: u8 = 1 << 5;
/// `loadflags` bit 6: KEEP_SEGMENTS (32-bit protocol only).
pub const KEEP_SEGMENTS: u8 = 1 << 6;
/// `loadflags` bit 7: CAN_USE_HEAP (`heap_end_ptr` is valid; real-mode setup only).
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// `loadflags` bit 1: KASLR_FLAG (the decompressor randomized the kernel's place, so the
/// kernel proper randomizes its memory regions too).
pub const KASLR_FLAG: u8 = 1 << 1;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at +0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 5: the kernel supports 5-level paging (`CONFIG_X86_5LEVEL`).
pub const XLF_5LEVEL: u16 = 1 << 5;
/// `type_of_loader` for a boot loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;
/// The oldest boot protocol with `xloadflags` (2.12).
pub const MIN_PROTOCOL_VERSION: u16 = 0x020c;

/// Errors while loading a Linux guest. Each names the file or the limit involved.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// The kernel or initrd path is not a readable regular file ([`crate::files`]).
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// The kernel file cannot be opened or read.
    #[error("cannot read the kernel {path}: {source}")]
    ReadKernel {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is not a bzImage.
    #[error("{path} is not a Linux bzImage: {reason}")]
    NotBzImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A bzImage without the 64-bit entry point.
    #[error(
        "{path} cannot be booted with the 64-bit boot protocol: boot protocol {version:#06x}, \
         xloadflags {xloadflags:#x} (needs 2.12+ with XLF_KERNEL_64, i.e. an x86_64 kernel)"
    )]
    Not64Bit {
        /// The file.
        path: PathBuf,
        /// `version` of the setup header.
        version: u16,
        /// `xloadflags` of the setup header.
        xloadflags: u16,
    },
    /// The kernel does not fit in guest RAM below the hole.
    #[error(
        "the kernel {path} needs guest memory up to {needed_end:#x} (loaded at {load:#x}, \
         {init_size} bytes once decompressed), but RAM below the 3 GiB hole ends at \
         {ram_end:#x}: use a larger --memory"
    )]
    KernelTooBig {
        /// The file.
        path: PathBuf,
        /// Load address.
        load: u64,
        /// `init_size` of the setup header.
        init_size: u32,
        /// First byte the kernel does not need.
        needed_end: u64,
        /// End of RAM below the hole.
        ram_end: u64,
    },
    /// An ELF kernel whose file header is wrong.
    #[error("the kernel {path} is not an x86-64 ELF kernel: {reason}")]
    BadElf {
        /// The file.
        path: PathBuf,
        /// The field that is wrong.
        reason: String,
    },
    /// `linux-loader` refused the image.
    #[error("cannot load the kernel {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The loader's error.
        reason: String,
    },
    /// An ELF kernel without the PVH entry note.
    #[error(
        "{path} is an ELF file without a PVH entry (no XEN_ELFNOTE_PHYS32_ENTRY note): boot a bzImage, or a vmlinux built with CONFIG_PVH"
    )]
    NoPvhEntry {
        /// The kernel file.
        path: PathBuf,
    },
    /// The decompressed kernel does not fit below the initrd (or the end of low RAM).
    #[error(
        "the kernel {path} takes {image:#x} bytes from {base:#x} once decompressed, but \
         only {room:#x} bytes are free there ({what}): use a larger --memory"
    )]
    KernelDoesNotFit {
        /// The file.
        path: PathBuf,
        /// Its link-time load address.
        base: u64,
        /// The size of its image (`_end - _text`).
        image: u64,
        /// The room from `base`.
        room: u64,
        /// What ends the room.
        what: &'static str,
    },
    /// The initrd does not fit between the kernel and the top of RAM.
    #[error(
        "the initrd {path} ({size} bytes) does not fit in guest memory between the kernel's \
         end at {kernel_end:#x} and {top:#x}: use a larger --memory"
    )]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// First byte above the kernel's decompression area.
        kernel_end: u64,
        /// The highest end an initrd may have.
        top: u64,
    },
    /// The command line is too long.
    #[error(
        "the kernel command line is {len} bytes; this kernel takes at most {max} (plus the NUL)"
    )]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The most the kernel accepts.
        max: u64,
    },
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// The bzImage's payload cannot be decompressed or loaded.
    #[error(
        "cannot boot the kernel {path} without its decompressor: {source} (--guest-decompressor lets the guest try)"
    )]
    Payload {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: PayloadError,
    },
    /// No random numbers for KASLR.
    #[error("cannot choose the kernel's KASLR offsets: no random numbers from the host: {0}")]
    Random(String),
    /// Writing into guest memory failed.
    #[error("cannot write {what} into guest memory: {reason}")]
    WriteMemory {
        /// What was being written.
        what: &'static str,
        /// The error.
        reason: String,
    },
}

impl LinuxError {
    /// How an I/O error on the kernel file `path` becomes a [`LinuxError::ReadKernel`]
    /// (for `map_err`).
    fn read_kernel(path: &Path) -> impl Fn(std::io::Error) -> Self + Copy + '_ {
        move |source| Self::ReadKernel {
            path: path.to_owned(),
            source,
        }
    }
}

/// What [`load`] put where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedLinux {
    /// How the kernel is entered.
    pub protocol: BootProtocol,
    /// The entry point: `startup_64` of a bzImage, the PVH entry of an ELF vmlinux.
    pub entry: GuestAddress,
    /// The zero page (bzImage) or the `hvm_start_info` (PVH).
    pub boot_params: GuestAddress,
    /// The initrd's start and size, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// Who decompressed a bzImage, and where its kernel went.
    pub decompressed: Decompressed,
}

/// What became of a bzImage's compressed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decompressed {
    /// Not a bzImage, or [`Decompress::Guest`] was asked for.
    NotByVmm,
    /// vmm could not decompress it (a format it does not decode, or no payload fields
    /// in the header): the guest's decompressor runs.
    LeftToGuest {
        /// Why.
        reason: String,
    },
    /// vmm decompressed it and placed the kernel proper.
    ByVmm {
        /// The format.
        format: &'static str,
        /// Bytes in the bzImage.
        compressed: u64,
        /// Bytes decompressed (the ELF file and its relocation table).
        decompressed: u64,
        /// Where the kernel's image starts in guest-physical memory.
        physical: GuestAddress,
        /// How far its virtual base moved from the link address (KASLR); `None` when
        /// KASLR is off (`nokaslr`, or a kernel without relocations).
        virtual_offset: Option<u64>,
    },
}

/// How a loaded kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// A bzImage: the 64-bit boot protocol (long mode, RSI = the zero page), entered at
    /// its decompressor's `startup_64`.
    Linux64,
    /// A bzImage vmm decompressed: the 64-bit boot protocol, entered at the kernel
    /// proper's `startup_64`. With `five_level` the kernel takes 5-level paging (it
    /// supports it, and `no5lvl` is not on its command line): it is then entered in
    /// 5-level paging when the vCPU offers LA57, as its decompressor would switch to it.
    Vmlinux64 {
        /// The kernel would run 5-level paging where LA57 is offered.
        five_level: bool,
    },
    /// An ELF vmlinux: the PVH entry (32-bit protected mode, paging off, RBX = the
    /// `hvm_start_info`). No decompressor runs.
    Pvh,
}

/// The `hvm_start_info` magic.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Whether `file` starts with the ELF magic (then it is loaded as a vmlinux, PVH).
fn is_elf(path: &Path, file: &mut File) -> Result<bool, LinuxError> {
    let mut magic = [0u8; 4];
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read(&mut magic))
        .map_err(LinuxError::read_kernel(path))?;
    Ok(read == 4 && magic == *b"\x7fELF")
}

/// Checks an ELF kernel's file header field by field, naming the first wrong one: a
/// 64-bit little-endian x86-64 executable whose program headers lie inside the file.
fn check_elf_header(path: &Path, file: &mut File) -> Result<(), LinuxError> {
    let len = file
        .metadata()
        .map_err(LinuxError::read_kernel(path))?
        .len();
    let bad = |reason: String| LinuxError::BadElf {
        path: path.to_owned(),
        reason,
    };
    if len < 64 {
        return Err(bad(format!(
            "it is {len} bytes, shorter than an ELF64 file header (64 bytes)"
        )));
    }
    let ehdr = read_at::<64>(path, file, 0)?;
    let u16_at = |i: usize| u16::from_le_bytes([ehdr[i], ehdr[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([ehdr[i], ehdr[i + 1], ehdr[i + 2], ehdr[i + 3]]);
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&ehdr[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff);
    match ehdr[4] {
        2 => {}
        1 => return Err(bad("EI_CLASS is 1 (32-bit ELF), not 2 (64-bit)".into())),
        c => return Err(bad(format!("EI_CLASS is {c}, not 2 (64-bit)"))),
    }
    if ehdr[5] != 1 {
        return Err(bad(format!(
            "EI_DATA is {}, not 1 (little-endian)",
            ehdr[5]
        )));
    }
    let machine = u16_at(0x12);
    if machine != 62 {
        let name = match machine {
            3 => " (i386)",
            8 => " (MIPS)",
            20 => " (PowerPC)",
            21 => " (PowerPC 64)",
            22 => " (s390)",
            40 => " (ARM)",
            183 => " (AArch64)",
            243 => " (RISC-V)",
            258 => " (LoongArch)",
            _ => "",
        };
        return Err(bad(format!(
            "e_machine is {machine}{name}: a kernel for another machine (x86-64 is 62)"
        )));
    }
    let kind = u16_at(0x10);
    if kind != 2 && kind != 3 {
        return Err(bad(format!(
            "e_type is {kind}, not 2 (an executable, as a vmlinux is) or 3"
        )));
    }
    if u32_at(0x14) != 1 {
        return Err(bad(format!("e_version is {}, not 1", u32_at(0x14))));
    }
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    if phentsize != 56 {
        return Err(bad(format!(
            "e_phentsize is {phentsize}, not 56 (an ELF64 program header)"
        )));
    }
    if phnum == 0 {
        return Err(bad("e_phnum is 0: no program header to load".into()));
    }
    let end = phoff.checked_add(u64::from(phnum) * 56);
    if end.is_none_or(|end| end > len) {
        return Err(bad(format!(
            "e_phoff {phoff:#x} with e_phnum {phnum} runs past the end of the file ({len} bytes)"
        )));
    }
    Ok(())
}

/// Whether an ELF file has Xen's PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`, type 18, name
/// "Xen") in a PT_NOTE segment. Bounds-checked throughout: a malformed file is simply one
/// without the note.
fn has_pvh_note(path: &Path, file: &mut File) -> Result<bool, LinuxError> {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    // The kernel's notes are a few KiB; a bigger segment is not a kernel's.
    const MAX_NOTES: u64 = 1 << 20;
    let read_err = LinuxError::read_kernel(path);
    let mut at = |offset: u64, len: usize| -> Result<Option<Vec<u8>>, LinuxError> {
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
        match file.read_exact(&mut buf) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(read_err(e)),
        }
    };
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |b: &[u8], i: usize| {
        b.get(i..i + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let Some(ehdr) = at(0, 64)? else {
        return Ok(false);
    };
    // ELFCLASS64, little-endian.
    if ehdr.get(4..6) != Some(&[2, 1][..]) {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (
        u64_at(&ehdr, 0x20),
        u16_at(&ehdr, 0x36),
        u16_at(&ehdr, 0x38),
    ) else {
        return Ok(false);
    };
    if phentsize < 56 {
        return Ok(false);
    }
    for i in 0..u64::from(phnum) {
        let Some(offset) = phoff.checked_add(i * u64::from(phentsize)) else {
            return Ok(false);
        };
        let Some(phdr) = at(offset, 56)? else {
            return Ok(false);
        };
        if u32_at(&phdr, 0) != Some(PT_NOTE) {
            continue;
        }
        let (Some(notes_at), Some(size)) = (u64_at(&phdr, 8), u64_at(&phdr, 32)) else {
            continue;
        };
        let Some(notes) = at(notes_at, size.min(MAX_NOTES) as usize)? else {
            continue;
        };
        let mut i = 0usize;
        while let (Some(namesz), Some(descsz), Some(kind)) = (
            u32_at(&notes, i),
            u32_at(&notes, i + 4),
            u32_at(&notes, i + 8),
        ) {
            let name_at = i + 12;
            let name_len = (namesz as usize).div_ceil(4) * 4;
            let desc_len = (descsz as usize).div_ceil(4) * 4;
            let name = notes.get(name_at..name_at + namesz as usize);
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(&b"Xen\0"[..]) {
                return Ok(true);
            }
            let Some(next) = name_at
                .checked_add(name_len)
                .and_then(|n| n.checked_add(desc_len))
            else {
                break;
            };
            i = next;
        }
    }
    Ok(false)
}

/// Reads and checks the setup header of a bzImage: magic, a protected-mode part after
/// the setup sectors, the 64-bit entry point.
pub fn read_setup_header(path: &Path, file: &mut File) -> Result<setup_header, LinuxError> {
    let read_err = LinuxError::read_kernel(path);
    let not_bz = |reason: String| LinuxError::NotBzImage {
        path: path.to_owned(),
        reason,
    };
    let len = file.metadata().map_err(read_err)?.len();
    let header_end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>() as u64;
    if len < header_end {
        return Err(not_bz(format!(
            "it is {len} bytes, shorter than a boot sector and setup header ({header_end} bytes)"
        )));
    }
    let mut header = setup_header::default();
    file.seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .and_then(|_| file.read_exact(header.as_mut_slice()))
        .map_err(read_err)?;
    check_setup_header(&header, len).map_err(|e| match e {
        HeaderProblem::Not64Bit => LinuxError::Not64Bit {
            path: path.to_owned(),
            version: header.version,
            xloadflags: header.xloadflags,
        },
        HeaderProblem::Invalid(reason) => not_bz(reason),
    })?;
    Ok(header)
}

/// Why a setup header is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Not a (complete) bzImage.
    Invalid(String),
    /// A bzImage without the 64-bit entry.
    Not64Bit,
}

/// Checks a setup header read from a file of `file_len` bytes.
pub fn check_setup_header(header: &setup_header, file_len: u64) -> Result<(), HeaderProblem> {
    let magic = header.header;
    if magic != SETUP_HEADER_MAGIC {
        return Err(HeaderProblem::Invalid(format!(
            "no \"HdrS\" magic at offset 0x202 (found {magic:#010x})"
        )));
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(HeaderProblem::Invalid(
            "a zImage (LOADED_HIGH clear), not a bzImage".into(),
        ));
    }
    let setup = setup_bytes(header);
    if file_len <= setup {
        return Err(HeaderProblem::Invalid(format!(
            "truncated: {file_len} bytes end inside its {setup} bytes of setup code"
        )));
    }
    let syssize = u64::from(header.syssize) * 16;
    let version = header.version;
    if version >= 0x0204 && syssize > 0 && file_len < setup + syssize {
        return Err(HeaderProblem::Invalid(format!(
            "truncated: {file_len} bytes, but its header says {} (setup {setup} + kernel {syssize})",
            setup + syssize
        )));
    }
    let xloadflags = header.xloadflags;
    if version < MIN_PROTOCOL_VERSION || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(HeaderProblem::Not64Bit);
    }
    let init_size = header.init_size;
    if u64::from(init_size) > MAX_KERNEL_IMAGE_SIZE {
        return Err(HeaderProblem::Invalid(format!(
            "its setup header's init_size {init_size:#x} is more than an x86-64 kernel can occupy (KERNEL_IMAGE_SIZE, {MAX_KERNEL_IMAGE_SIZE:#x})"
        )));
    }
    Ok(())
}

/// The most an x86-64 kernel image can occupy (`KERNEL_IMAGE_SIZE` with KASLR, 1 GiB): a
/// setup header's `init_size` above it is not a kernel's.
pub const MAX_KERNEL_IMAGE_SIZE: u64 = 1 << 30;

/// Bytes of the real-mode part (boot sector + setup sectors) that precede the kernel.
fn setup_bytes(header: &setup_header) -> u64 {
    let sects = match header.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    (sects + 1) * 512
}

/// The guest-physical range the kernel needs at boot: from where it is loaded to the end
/// of where the decompressor puts it (a relocatable kernel decompresses at its load
/// address aligned up to `kernel_alignment`, but never below `pref_address`), `init_size`
/// bytes long.
pub fn kernel_extent(header: &setup_header, load: GuestAddress) -> (u64, u64) {
    let align = u64::from(header.kernel_alignment).max(1);
    let aligned = load.0.div_ceil(align) * align;
    let start = aligned.max(header.pref_address);
    (load.0, start + u64::from(header.init_size))
}

/// The e820 map of `memory` bytes of RAM ([`ram_ranges`]): RAM below the EBDA, the
/// legacy area up to 1 MiB reserved, RAM from 1 MiB to the 3 GiB hole, and RAM above
/// 4 GiB when there is more.
pub fn e820_map(memory: MemorySize) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, kind: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type: kind,
    };
    let mut map = vec![
        entry(0, layout::EBDA_START.0, E820_RAM),
        entry(layout::EBDA_START.0, layout::HIMEM_START.0, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(memory) {
        let begin = start.0.max(layout::HIMEM_START.0);
        let end = start.0 + len;
        if end > begin {
            map.push(entry(begin, end, E820_RAM));
        }
    }
    map
}

/// End of RAM below the 3 GiB hole.
pub fn low_ram_end(memory: MemorySize) -> u64 {
    ram_ranges(memory)
        .first()
        .map_or(0, |(start, len)| start.0 + len)
}

/// Where an initrd of `size` bytes goes: as high as possible with its end at most `top`
/// (the end of low RAM, or the kernel's `initrd_addr_max + 1` if lower), its start
/// aligned down to [`layout::INITRD_ALIGN`] and at or above `kernel_end`.
pub fn place_initrd(size: u64, kernel_end: u64, top: u64) -> Option<GuestAddress> {
    let start = top.checked_sub(size)? / layout::INITRD_ALIGN * layout::INITRD_ALIGN;
    (start >= kernel_end).then_some(GuestAddress(start))
}

/// The most command-line bytes (without the NUL) this kernel takes: its header's
/// `cmdline_size` (protocol 2.06+), never more than [`layout::CMDLINE_MAX_SIZE`] - 1.
pub fn cmdline_limit(header: &setup_header) -> u64 {
    let ours = layout::CMDLINE_MAX_SIZE - 1;
    let theirs = header.cmdline_size;
    if header.version >= 0x0206 && theirs > 0 {
        u64::from(theirs).min(ours)
    } else {
        ours
    }
}

/// The command line as the bytes written to guest memory (with the NUL), checked
/// against the kernel's limit.
pub fn cmdline_bytes(cmdline: &str, header: &setup_header) -> Result<Vec<u8>, LinuxError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(LinuxError::CmdlineNul);
    }
    let max = cmdline_limit(header);
    if cmdline.len() as u64 > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    Ok(bytes)
}

/// The zero page: the image's setup header with the loader's fields filled in, the e820
/// map, and where the ACPI RSDP is (if the VM has ACPI tables).
pub fn build_boot_params(
    header: &setup_header,
    cmdline: (GuestAddress, u64),
    initrd: Option<(GuestAddress, u64)>,
    e820: &[boot_e820_entry],
    rsdp: Option<GuestAddress>,
) -> boot_params {
    let mut params = boot_params {
        hdr: *header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    // Early messages on; no real-mode heap or 32-bit segment rules (64-bit entry); no
    // KASLR_FLAG from the image (it is for the kernel's own use: only a decompressor
    // that randomized the kernel sets it).
    params.hdr.loadflags = (header.loadflags | LOADED_HIGH)
        & !(KASLR_FLAG | QUIET_FLAG | KEEP_SEGMENTS | CAN_USE_HEAP);
    params.hdr.cmd_line_ptr = cmdline.0.0 as u32;
    params.ext_cmd_line_ptr = (cmdline.0.0 >> 32) as u32;
    if let Some((start, size)) = initrd {
        params.hdr.ramdisk_image = start.0 as u32;
        params.ext_ramdisk_image = (start.0 >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    // Protocol 2.14's field; older kernels find the RSDP by scanning [0xe0000, 1 MiB).
    params.acpi_rsdp_addr = rsdp.map_or(0, |at| at.0);
    let count = e820.len().min(E820_MAX_ENTRIES_ZEROPAGE);
    params.e820_table[..count].copy_from_slice(&e820[..count]);
    params.e820_entries = count as u8;
    params
}

/// Checks the files of `boot` without guest memory or KVM: the kernel is a readable
/// 64-bit bzImage, the initrd (if any) is readable. Cheap, so bad paths are reported
/// before anything else (such as the PVM refusal).
pub fn check_files(boot: &LinuxBoot) -> Result<(), LinuxError> {
    let mut file = open_input(&boot.kernel, "kernel")?.into_file();
    if is_elf(&boot.kernel, &mut file)? {
        check_elf_header(&boot.kernel, &mut file)?;
        // The loader checks the rest of the ELF file when it loads it.
        if !has_pvh_note(&boot.kernel, &mut file)? {
            return Err(LinuxError::NoPvhEntry {
                path: boot.kernel.clone(),
            });
        }
    } else {
        read_setup_header(&boot.kernel, &mut file)?;
    }
    if let Some(initrd) = &boot.initrd {
        open_input(initrd, "initrd")?;
    }
    Ok(())
}

/// Loads everything of `boot` into `memory` (`memory_size` bytes of RAM) and writes the
/// zero page, pointing it at the ACPI RSDP at `rsdp` if the tables were written.
///
/// Call it before any vCPU of the VM exists: a kernel vmm decompresses is relocated
/// through host pointers into `memory`, which nothing else may touch meanwhile.
pub fn load(
    memory: &GuestRam,
    memory_size: MemorySize,
    boot: &LinuxBoot,
    rsdp: Option<GuestAddress>,
) -> Result<LoadedLinux, LinuxError> {
    let path = &boot.kernel;
    let mut file = open_input(path, "kernel")?.into_file();
    if is_elf(path, &mut file)? {
        check_elf_header(path, &mut file)?;
        return load_pvh(memory, memory_size, boot, rsdp, file);
    }
    let header = read_setup_header(path, &mut file)?;
    let mut decompressed = Decompressed::NotByVmm;
    if boot.decompress == Decompress::Vmm {
        match load_decompressed(memory, memory_size, boot, rsdp, &mut file, &header)? {
            Ok(loaded) => return Ok(loaded),
            Err(reason) => decompressed = Decompressed::LeftToGuest { reason },
        }
    }
    let ram_end = low_ram_end(memory_size);
    let (load, kernel_end) = kernel_extent(&header, layout::LINUX_KERNEL_START);
    let file_len = file.metadata().map_or(0, |m| m.len());
    let kernel_end = kernel_end.max(load + file_len);
    if kernel_end > ram_end {
        return Err(LinuxError::KernelTooBig {
            path: path.clone(),
            load,
            init_size: header.init_size,
            needed_end: kernel_end,
            ram_end,
        });
    }
    let loaded = BzImage::load(
        memory,
        Some(layout::LINUX_KERNEL_START),
        &mut file,
        Some(layout::HIMEM_START),
    )
    .map_err(|e| LinuxError::Load {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    // linux-loader's copy of the header, with code32_start set to the load address.
    let header = loaded.setup_header.unwrap_or(header);

    let cmdline = write_cmdline(memory, &boot.cmdline, &header)?;

    let max = u64::from(header.initrd_addr_max);
    let top = if max == 0 {
        ram_end
    } else {
        ram_end.min(max + 1)
    };
    let initrd = load_initrd(memory, boot, kernel_end, top)?;

    let params = build_boot_params(
        &header,
        (layout::CMDLINE_START, cmdline.len() as u64),
        initrd,
        &e820_map(memory_size),
        rsdp,
    );
    write_zero_page(memory, &params)?;
    Ok(LoadedLinux {
        protocol: BootProtocol::Linux64,
        entry: GuestAddress(loaded.kernel_load.0 + layout::LINUX_64BIT_ENTRY_OFFSET),
        boot_params: layout::BOOT_PARAMS_START,
        initrd,
        decompressed,
    })
}

/// Writes the zero page at [`layout::BOOT_PARAMS_START`].
fn write_zero_page(memory: &GuestRam, params: &boot_params) -> Result<(), LinuxError> {
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(params, layout::BOOT_PARAMS_START),
        memory,
    )
    .map_err(|e| LinuxError::WriteMemory {
        what: "the zero page",
        reason: e.to_string(),
    })
}

/// CR3 bit 12 under Linux's page-table isolation (PTI): the user copy of a PGD is the
/// page after the kernel's (`PTI_USER_PGTABLE_BIT`).
pub const PTI_USER_PGD_BIT: u64 = 1 << 12;

/// The kernel half of a PTI address space: for a vCPU running a process under PTI, its
/// CR3 is the user PGD, and the kernel's own PGD (the kernel half, direct map and all) is
/// the page before it. `Some(kernel CR3)` only when `cr3` has the user bit set and the two
/// pages are what Linux makes them: the same user half (Linux writes every user entry
/// into both, adding NX in the kernel's copy), at least one user entry present, and more
/// kernel entries present in the kernel PGD than in the user PGD's sparse kernel half. A
/// guest without PTI, or one
/// that lies, gets `None` (reads that fail are a `None` too): the scan then walks only
/// the vCPU's CR3, which is always right.
pub fn pti_kernel_cr3<M: GuestMemoryBackend>(memory: &M, cr3: u64) -> Option<u64> {
    const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
    if cr3 & PTI_USER_PGD_BIT == 0 {
        return None;
    }
    let user = cr3 & ADDRESS;
    let kernel = user - PTI_USER_PGD_BIT;
    let read = |root: u64| -> Option<Vec<u64>> {
        let mut bytes = [0u8; 4096];
        memory.read_slice(&mut bytes, GuestAddress(root)).ok()?;
        Some(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect(),
        )
    };
    let (user_entries, kernel_entries) = (read(user)?, read(kernel)?);
    let present = |entries: &[u64]| entries.iter().filter(|e| *e & 1 != 0).count();
    // The kernel's copy of a user entry has NX set (pti_set_user_pgtbl: user memory is
    // never executable in kernel mode), the user's does not: compare without it.
    const NX: u64 = 1 << 63;
    let same_user_half = user_entries[..256]
        .iter()
        .zip(&kernel_entries[..256])
        .all(|(u, k)| u & !NX == k & !NX);
    (same_user_half
        && present(&user_entries[..256]) > 0
        && present(&kernel_entries[256..]) > present(&user_entries[256..]))
    .then_some(kernel)
}

/// Whether an option starting with `prefix` (such as `mem=`) is on the kernel's part of
/// `cmdline` (before any `--`).
pub fn cmdline_has_prefix(cmdline: &str, prefix: &str) -> bool {
    kernel_options(cmdline).any(|word| word.starts_with(prefix))
}

/// Whether `option` is on the kernel's part of `cmdline` (before any `--`).
pub fn cmdline_has(cmdline: &str, option: &str) -> bool {
    kernel_options(cmdline).any(|word| word == option)
}

/// The options of `cmdline` that are the kernel's: those before any `--` (the rest go
/// to init).
fn kernel_options(cmdline: &str) -> impl Iterator<Item = &str> {
    cmdline
        .split_ascii_whitespace()
        .take_while(|word| *word != "--")
}

/// Where the compressed payload of the bzImage `file` is (setup header fields
/// `payload_offset` and `payload_length`, from the protected-mode kernel's start): its
/// offset in the file and length, checked to lie inside the file and to hold at least
/// a format's magic and the length trailer.
fn payload_extent(
    path: &Path,
    file: &File,
    header: &setup_header,
) -> Result<(u64, u64), LinuxError> {
    let start = setup_bytes(header) + u64::from(header.payload_offset);
    let len = u64::from(header.payload_length);
    let file_len = file
        .metadata()
        .map_err(LinuxError::read_kernel(path))?
        .len();
    if len < 8 || start + len > file_len {
        let what = if len < 8 {
            "too short for a compressed kernel"
        } else {
            "not inside the file"
        };
        return Err(LinuxError::NotBzImage {
            path: path.to_owned(),
            reason: format!(
                "its payload ({len} bytes at offset {start:#x}) is {what} ({file_len} bytes)"
            ),
        });
    }
    Ok((start, len))
}

/// Reads `N` bytes of `file` at `at`.
fn read_at<const N: usize>(path: &Path, file: &mut File, at: u64) -> Result<[u8; N], LinuxError> {
    let mut bytes = [0u8; N];
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(LinuxError::read_kernel(path))?;
    Ok(bytes)
}

/// Puts a kernel that is being decompressed into guest memory: [`payload::Place`]
/// chooses its physical place once the ELF headers say how big it is (a random
/// `align`-aligned one between `base` and `room` when `random`), then copies each
/// piece there. Its own errors are kept in `error` (the decompressor only sees
/// [`PayloadError::Place`]).
struct GuestKernel<'a> {
    memory: &'a GuestRam,
    path: &'a Path,
    base: u64,
    room: u64,
    below_initrd: bool,
    align: u64,
    random: bool,
    physical: u64,
    error: Option<LinuxError>,
}

impl GuestKernel<'_> {
    fn fail(&mut self, error: LinuxError) -> PayloadError {
        let message = error.to_string();
        self.error = Some(error);
        PayloadError::Place(message)
    }
}

impl payload::Place for GuestKernel<'_> {
    fn start(&mut self, vmlinux: &Vmlinux) -> Result<(), PayloadError> {
        let image = vmlinux.end - self.base;
        if self.base + image > self.room {
            return Err(self.fail(LinuxError::KernelDoesNotFit {
                path: self.path.to_owned(),
                base: self.base,
                image,
                room: self.room - self.base,
                what: if self.below_initrd {
                    "below the initrd"
                } else {
                    "below the end of low RAM"
                },
            }));
        }
        self.physical = self.base;
        if self.random {
            match random_below(payload::slots(self.base, image, self.room, self.align)) {
                Ok(slot) => self.physical += slot * self.align,
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }

    fn bytes(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PayloadError> {
        let at = GuestAddress(self.physical + offset);
        write(self.memory, at, bytes, "the kernel").map_err(|e| self.fail(e))
    }
}

/// Why [`relocate`] failed.
enum Relocate {
    /// The table names a field outside the kernel.
    Table(PayloadError),
    /// Guest memory.
    Memory(LinuxError),
}

/// Applies the relocation `table` in guest memory to a kernel whose segments start
/// `shift` bytes above their link-time physical addresses and whose virtual base moves
/// by `delta` (nothing changes with a zero `delta`, but every entry is checked).
///
/// A kernel has some 200,000 relocations: they go through one host pointer per
/// segment rather than a guest-memory lookup each (which took 0.4 s of a 4 s boot on
/// the emulated host). The segments' bytes are marked dirty in the memory's bitmap, as
/// a write through vm-memory would.
///
/// Only for a VM whose vCPUs do not exist yet ([`load`]'s rule).
fn relocate(
    memory: &GuestRam,
    vmlinux: &Vmlinux,
    table: &Relocations,
    shift: u64,
    delta: u64,
) -> Result<(), Relocate> {
    let failed = |e: vm_memory::GuestMemoryError| {
        Relocate::Memory(LinuxError::WriteMemory {
            what: "a kernel relocation",
            reason: e.to_string(),
        })
    };
    let slices = vmlinux
        .segments
        .iter()
        .map(|s| memory.get_slice(GuestAddress(s.paddr + shift), s.filesz as usize))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    let guards: Vec<_> = slices.iter().map(|slice| slice.ptr_guard_mut()).collect();
    for site in vmlinux.sites(table) {
        let site = site.map_err(Relocate::Table)?;
        if delta == 0 {
            continue;
        }
        let field = guards[site.segment]
            .as_ptr()
            .wrapping_add(site.offset as usize);
        match site.field {
            payload::Field::Abs64 => {
                let field = field.cast::<u64>();
                // SAFETY: `field` is `site.offset` bytes into the host mapping of the
                // segment's `filesz` bytes of guest memory (checked by `get_slice`), and
                // `Vmlinux::sites` checked that the whole field lies inside them. The
                // mapping lives as long as `memory`, which is borrowed; no vCPU exists yet
                // (the rule of `load`, whose only caller builds the vCPUs after it), so
                // nothing else touches it. Fields need not be aligned: unaligned access.
                unsafe { field.write_unaligned(site.relocate(field.read_unaligned(), delta)) };
            }
            payload::Field::Abs32 | payload::Field::Inverse32 => {
                let field = field.cast::<u32>();
                // SAFETY: as above, for a four-byte field.
                unsafe {
                    let value = site.relocate(u64::from(field.read_unaligned()), delta);
                    field.write_unaligned(value as u32);
                }
            }
        }
    }
    for slice in &slices {
        slice.bitmap().mark_dirty(0, slice.len());
    }
    Ok(())
}

/// Writes `len` zero bytes at `at` (a segment's bss), a page-sized piece at a time.
fn zero(memory: &GuestRam, mut at: GuestAddress, mut len: u64) -> Result<(), LinuxError> {
    let zeroes = [0u8; 4096];
    while len > 0 {
        let n = len.min(zeroes.len() as u64);
        write(memory, at, &zeroes[..n as usize], "the kernel's bss")?;
        at = GuestAddress(at.0 + n);
        len -= n;
    }
    Ok(())
}

/// A random number below `bound` (at least 1), from the host's random source.
fn random_below(bound: u64) -> Result<u64, LinuxError> {
    if bound <= 1 {
        return Ok(0);
    }
    getrandom::u64()
        .map(|r| r % bound)
        .map_err(|e| LinuxError::Random(e.to_string()))
}

/// The bzImage path of [`load`] when vmm decompresses: the payload decompressed, its ELF
/// segments placed (at a random 2 MiB-aligned physical address below the initrd, and
/// relocated to a random virtual base, unless KASLR is off), then the command line, the
/// initrd and the zero page as for any bzImage. `Ok(Err(format))` when vmm does not
/// decode the payload (or the header has no payload fields), with the reason; nothing
/// has been written to guest memory then.
fn load_decompressed(
    memory: &GuestRam,
    memory_size: MemorySize,
    boot: &LinuxBoot,
    rsdp: Option<GuestAddress>,
    file: &mut File,
    header: &setup_header,
) -> Result<Result<LoadedLinux, String>, LinuxError> {
    let path = &boot.kernel;
    if header.payload_length == 0 {
        return Ok(Err(
            "its setup header does not say where its payload is".into()
        ));
    }
    let (start, len) = payload_extent(path, file, header)?;
    let format = Compression::of(&read_at::<8>(path, file, start)?);
    if let Compression::Other(name) = format {
        return Ok(Err(format!(
            "its payload is compressed with {name}, which vmm does not decompress"
        )));
    }
    let bad = |source| LinuxError::Payload {
        path: path.clone(),
        source,
    };
    let not_bz = |reason: String| LinuxError::NotBzImage {
        path: path.clone(),
        reason,
    };
    let trailer = read_at::<4>(path, file, start + len - 4)?;
    let ram_end = low_ram_end(memory_size);
    // LOAD_PHYSICAL_ADDR, which the ELF file is linked for, and CONFIG_PHYSICAL_ALIGN.
    let base = header.pref_address;
    let kernel_alignment = header.kernel_alignment;
    let align = u64::from(kernel_alignment).max(layout::INITRD_ALIGN);
    if !align.is_power_of_two() || base % align != 0 || base < layout::HIMEM_START.0 {
        return Err(not_bz(format!(
            "its setup header's pref_address {base:#x} and kernel_alignment {kernel_alignment:#x} are not a 2 MiB-aligned address above 1 MiB"
        )));
    }
    // The kernel needs init_size bytes from where it is linked: a VM with less RAM is
    // too small, whatever else the image says.
    let needed_end = base + u64::from(header.init_size);
    if needed_end > ram_end {
        return Err(LinuxError::KernelTooBig {
            path: path.clone(),
            load: base,
            init_size: header.init_size,
            needed_end,
            ram_end,
        });
    }
    // KASLR as the guest's decompressor does it: unless `nokaslr`, a relocatable kernel
    // goes to a random physical place, and one with relocations to a random virtual base.
    let random = header.relocatable_kernel != 0 && !cmdline_has(&boot.cmdline, "nokaslr");
    // `mem=` and `memmap=` change what the kernel takes as RAM; the guest's decompressor
    // keeps its random physical choice inside them. vmm keeps the kernel where it is
    // linked then (its virtual offset is still random).
    let memory_options =
        cmdline_has_prefix(&boot.cmdline, "mem=") || cmdline_has_prefix(&boot.cmdline, "memmap=");

    // The initrd first, as high as it goes, above the kernel's whole `init_size`; the
    // kernel then anywhere below it.
    let max = u64::from(header.initrd_addr_max);
    let top = if max == 0 {
        ram_end
    } else {
        ram_end.min(max + 1)
    };
    let initrd = load_initrd(memory, boot, base + u64::from(header.init_size), top)?;
    let room = initrd.map_or(top, |(at, _)| at.0);
    let mut placer = payload::Placer::new(
        base,
        u64::from(u32::from_le_bytes(trailer)),
        GuestKernel {
            memory,
            path,
            base,
            room,
            below_initrd: initrd.is_some(),
            align,
            random: random && !memory_options,
            physical: base,
            error: None,
        },
    );
    file.seek(SeekFrom::Start(start))
        .map_err(LinuxError::read_kernel(path))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, &mut *file);
    let decompressed = payload::decompress_into(format, reader, len, trailer, ram_end, &mut placer);
    let decompressed = match decompressed {
        Ok(bytes) => bytes,
        Err(e) => return Err(placer.into_place().error.unwrap_or_else(|| bad(e))),
    };
    let (vmlinux, tail, placed) = placer.finish().map_err(bad)?;
    let physical = placed.physical;
    // Like the guest's decompressor, the table is only read to move the kernel.
    let relocations = match random {
        true => Relocations::parse(&tail).map_err(bad)?,
        false => None,
    };
    let image = vmlinux.end - base;
    let virtual_offset = match relocations {
        Some(table) => {
            let size = image.max(decompressed);
            let slots = payload::slots(base, size, payload::KERNEL_IMAGE_SIZE, align);
            let delta = random_below(slots)? * align;
            // Also with a zero offset, so a bad table fails every boot, not some.
            relocate(memory, &vmlinux, &table, physical - base, delta).map_err(|e| match e {
                Relocate::Table(e) => bad(e),
                Relocate::Memory(e) => e,
            })?;
            Some(delta)
        }
        None => None,
    };
    for segment in &vmlinux.segments {
        let at = physical + (segment.paddr - base) + segment.filesz;
        zero(memory, GuestAddress(at), segment.memsz - segment.filesz)?;
    }
    let kaslr = virtual_offset.is_some();
    let cmdline = write_cmdline(memory, &boot.cmdline, header)?;
    let mut params = build_boot_params(
        header,
        (layout::CMDLINE_START, cmdline.len() as u64),
        initrd,
        &e820_map(memory_size),
        rsdp,
    );
    if kaslr {
        params.hdr.loadflags |= KASLR_FLAG;
    }
    write_zero_page(memory, &params)?;
    Ok(Ok(LoadedLinux {
        protocol: BootProtocol::Vmlinux64 {
            five_level: header.xloadflags & XLF_5LEVEL != 0
                && !cmdline_has(&boot.cmdline, "no5lvl"),
        },
        entry: GuestAddress(physical + (vmlinux.entry - base)),
        boot_params: layout::BOOT_PARAMS_START,
        initrd,
        decompressed: Decompressed::ByVmm {
            format: format.name(),
            compressed: len,
            decompressed,
            physical: GuestAddress(physical),
            virtual_offset,
        },
    }))
}

/// Writes the command line (checked against `header`'s limit) at
/// [`layout::CMDLINE_START`]; returns its bytes with the NUL.
fn write_cmdline(
    memory: &GuestRam,
    cmdline: &str,
    header: &setup_header,
) -> Result<Vec<u8>, LinuxError> {
    let bytes = cmdline_bytes(cmdline, header)?;
    write(
        memory,
        layout::CMDLINE_START,
        &bytes,
        "the kernel command line",
    )?;
    Ok(bytes)
}

/// Loads the initrd of `boot` (if any) as high as possible below `top`, above `kernel_end`.
fn load_initrd(
    memory: &GuestRam,
    boot: &LinuxBoot,
    kernel_end: u64,
    top: u64,
) -> Result<Option<(GuestAddress, u64)>, LinuxError> {
    let Some(initrd_path) = &boot.initrd else {
        return Ok(None);
    };
    let input = open_input(initrd_path, "initrd")?;
    let size = input.len();
    let start = place_initrd(size, kernel_end, top).ok_or_else(|| LinuxError::InitrdTooBig {
        path: initrd_path.clone(),
        size,
        kernel_end,
        top,
    })?;
    // Bounded by the room it was given: a file that grows meanwhile is refused.
    let bytes = input.read_all(size)?;
    write(memory, start, &bytes, "the initrd")?;
    Ok(Some((start, bytes.len() as u64)))
}

/// Loads an ELF vmlinux for the PVH entry: its segments where its program headers say
/// (linux-loader checks them against guest memory), the command line, the initrd as a
/// module, and the `hvm_start_info` with the e820 map as its memory map and the RSDP.
fn load_pvh(
    memory: &GuestRam,
    memory_size: MemorySize,
    boot: &LinuxBoot,
    rsdp: Option<GuestAddress>,
    mut file: File,
) -> Result<LoadedLinux, LinuxError> {
    let path = &boot.kernel;
    let loaded = Elf::load(memory, None, &mut file, Some(layout::HIMEM_START)).map_err(|e| {
        LinuxError::Load {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(LinuxError::NoPvhEntry { path: path.clone() });
    };
    // No setup header: the command line gets the VMM's own limit.
    write_cmdline(memory, &boot.cmdline, &setup_header::default())?;
    let initrd = load_initrd(memory, boot, loaded.kernel_end, low_ram_end(memory_size))?;

    let memmap: Vec<hvm_memmap_table_entry> = e820_map(memory_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.r#type,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|&(start, size)| hvm_modlist_entry {
            paddr: start.0,
            size,
            ..Default::default()
        })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            layout::PVH_MODLIST_START.0
        },
        cmdline_paddr: layout::CMDLINE_START.0,
        rsdp_paddr: rsdp.map_or(0, |at| at.0),
        memmap_paddr: layout::PVH_MEMMAP_START.0,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, layout::PVH_START_INFO);
    params.set_sections(&memmap, layout::PVH_MEMMAP_START);
    if !modules.is_empty() {
        params.set_modules(&modules, layout::PVH_MODLIST_START);
    }
    PvhBootConfigurator::write_bootparams(&params, memory).map_err(|e| {
        LinuxError::WriteMemory {
            what: "the PVH start info",
            reason: e.to_string(),
        }
    })?;
    Ok(LoadedLinux {
        protocol: BootProtocol::Pvh,
        entry,
        boot_params: layout::PVH_START_INFO,
        initrd,
        decompressed: Decompressed::NotByVmm,
    })
}

fn write(
    memory: &GuestRam,
    at: GuestAddress,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), LinuxError> {
    memory
        .write_slice(bytes, at)
        .map_err(|e| LinuxError::WriteMemory {
            what,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    const MIB: u64 = 1 << 20;

    fn size(bytes: u64) -> MemorySize {
        MemorySize::from_bytes(bytes).unwrap_or_default()
    }

    /// PTI's two PGDs (kernel at 0x10_0000, user the page after) are recognized; a CR3
    /// without the user bit, a neighbour page with other user entries, and a kernel page
    /// that maps no more of the kernel half than the user page are not.
    #[test]
    fn the_kernel_half_of_a_pti_address_space_is_found_only_where_linux_put_it() {
        let Ok(mem) = create_guest_memory(size(4 * MIB)) else {
            panic!("guest memory");
        };
        let (kernel, user) = (0x10_0000u64, 0x10_1000u64);
        let write = |root: u64, index: u64, value: u64| {
            mem.write_obj(value, GuestAddress(root + index * 8))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        // The same user entry in both; the kernel half full in the kernel PGD, one
        // entry (the entry trampoline's) in the user PGD.
        write(user, 0, 0x20_0067);
        write(kernel, 0, 0x20_0067 | 1 << 63);
        for index in 256..300 {
            write(kernel, index, 0x30_0063 + (index << 12));
        }
        write(user, 510, 0x40_0063);
        assert_eq!(
            pti_kernel_cr3(&mem, user | PTI_USER_PGD_BIT | 0x801),
            Some(kernel)
        );
        assert_eq!(pti_kernel_cr3(&mem, kernel), None, "no user bit");
        // A user entry only in the user PGD: not Linux's pair.
        write(user, 1, 0x50_0067);
        assert_eq!(pti_kernel_cr3(&mem, user), None);
        write(user, 1, 0);
        // A kernel page with no more kernel entries than the user page.
        for index in 256..300 {
            write(kernel, index, 0);
        }
        assert_eq!(pti_kernel_cr3(&mem, user), None);
        // Outside RAM.
        assert_eq!(pti_kernel_cr3(&mem, (64 * MIB) | PTI_USER_PGD_BIT), None);
    }

    /// A 64-bit bzImage header: one setup sector, 2 MiB alignment, decompressed at
    /// 16 MiB into `init_size` bytes.
    fn header(init_size: u32) -> setup_header {
        setup_header {
            setup_sects: 1,
            header: SETUP_HEADER_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH | QUIET_FLAG | CAN_USE_HEAP,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64 | 0x2,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size,
            ..Default::default()
        }
    }

    /// A file with `header` at 0x1f1 and `kernel_bytes` of "kernel" after the setup.
    fn image(header: &setup_header, kernel_bytes: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; setup_bytes(header) as usize + kernel_bytes];
        let at = SETUP_HEADER_OFFSET as usize;
        bytes[at..at + header.as_slice().len()].copy_from_slice(header.as_slice());
        bytes
    }

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> Self {
            let path =
                std::env::temp_dir().join(format!("guestwalk-linux-{}-{name}", std::process::id()));
            if let Err(e) = std::fs::write(&path, contents) {
                panic!("cannot write {}: {e}", path.display());
            }
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn boot(kernel: &TempFile, initrd: Option<&TempFile>, cmdline: &str) -> LinuxBoot {
        LinuxBoot {
            kernel: kernel.0.clone(),
            initrd: initrd.map(|f| f.0.clone()),
            cmdline: cmdline.into(),
            force: false,
            decompress: Decompress::Vmm,
        }
    }

    #[test]
    fn e820_below_the_hole() {
        let map = e820_map(size(512 * MIB));
        let triples: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            triples,
            vec![
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x10_0000 - 0x9_fc00, E820_RESERVED),
                (0x10_0000, 512 * MIB - 0x10_0000, E820_RAM),
            ]
        );
        assert_eq!(low_ram_end(size(512 * MIB)), 512 * MIB);
    }

    #[test]
    fn e820_above_the_hole() {
        let map = e820_map(size(5 << 30));
        let triples: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            triples[2..],
            [
                (0x10_0000, (3 << 30) - 0x10_0000, E820_RAM),
                (4 << 30, 2 << 30, E820_RAM),
            ]
        );
        // Nothing in the hole is RAM.
        assert!(
            map.iter()
                .all(|e| e.addr + e.size <= 3 << 30 || e.addr >= 4 << 30)
        );
        assert_eq!(low_ram_end(size(5 << 30)), 3 << 30);
    }

    #[test]
    fn boot_params_carry_the_loader_fields() {
        let e820 = e820_map(size(5 << 30));
        let p = build_boot_params(
            &header(32 * MIB as u32),
            (layout::CMDLINE_START, 12),
            Some((GuestAddress(0x1_2340_0000), 0x1_0000_1000)),
            &e820,
            Some(GuestAddress(0xe_0000)),
        );
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!(
            p.hdr.loadflags, LOADED_HIGH,
            "quiet, heap and segment flags cleared"
        );
        let magic = p.hdr.header;
        assert_eq!(magic, SETUP_HEADER_MAGIC);
        let (cmd, ext_cmd) = (p.hdr.cmd_line_ptr, p.ext_cmd_line_ptr);
        assert_eq!((cmd, ext_cmd), (0x2_0000, 0));
        let (image, ext_image) = (p.hdr.ramdisk_image, p.ext_ramdisk_image);
        let (rd_size, ext_size) = (p.hdr.ramdisk_size, p.ext_ramdisk_size);
        assert_eq!((image, ext_image), (0x2340_0000, 1));
        assert_eq!((rd_size, ext_size), (0x1000, 1));
        assert_eq!(usize::from(p.e820_entries), e820.len());
        let last = p.e820_table[e820.len() - 1];
        let (addr, len) = (last.addr, last.size);
        assert_eq!((addr, len), (4 << 30, 2 << 30));
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, 0xe_0000);
        let none = build_boot_params(&header(0), (layout::CMDLINE_START, 1), None, &[], None);
        let (image, rd_size, rsdp) = (
            none.hdr.ramdisk_image,
            none.hdr.ramdisk_size,
            none.acpi_rsdp_addr,
        );
        assert_eq!((image, rd_size, none.e820_entries, rsdp), (0, 0, 0, 0));
    }

    #[test]
    fn cmdline_limits() {
        let h = header(0);
        assert_eq!(
            cmdline_bytes("console=ttyS0", &h).ok(),
            Some(b"console=ttyS0\0".to_vec())
        );
        assert_eq!(cmdline_limit(&h), 2047);
        let short = setup_header {
            cmdline_size: 255,
            ..h
        };
        assert_eq!(cmdline_limit(&short), 255);
        assert!(cmdline_bytes(&"x".repeat(255), &short).is_ok());
        let err = cmdline_bytes(&"x".repeat(256), &short)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "the kernel command line is 256 bytes; this kernel takes at most 255 (plus the NUL)"
            )
        );
        // Old protocols have no cmdline_size: our own limit applies.
        let old = setup_header {
            version: 0x0205,
            cmdline_size: 10,
            ..h
        };
        assert_eq!(cmdline_limit(&old), layout::CMDLINE_MAX_SIZE - 1);
        assert!(matches!(
            cmdline_bytes("a\0b", &h),
            Err(LinuxError::CmdlineNul)
        ));
    }

    #[test]
    fn kernel_extent_and_initrd_placement() {
        let h = header(40 * MIB as u32);
        assert_eq!(
            kernel_extent(&h, layout::LINUX_KERNEL_START),
            (0x10_0000, 56 * MIB)
        );
        // Loaded above pref_address: decompressed at the aligned load address.
        assert_eq!(
            kernel_extent(&h, GuestAddress(0x210_0000)).1,
            0x220_0000 + 40 * MIB
        );
        // As high as possible, aligned down to 2 MiB.
        assert_eq!(
            place_initrd(2 * MIB + 1, 56 * MIB, 512 * MIB),
            Some(GuestAddress(508 * MIB))
        );
        assert_eq!(
            place_initrd(MIB, 56 * MIB, 512 * MIB),
            Some(GuestAddress(510 * MIB))
        );
        assert_eq!(place_initrd(457 * MIB, 56 * MIB, 512 * MIB), None);
        assert_eq!(place_initrd(600 * MIB, 0, 512 * MIB), None);
    }

    #[test]
    fn bad_kernel_files_give_errors_naming_them() {
        let Ok(memory) = create_guest_memory(size(64 * MIB)) else {
            panic!("cannot map test memory");
        };
        let load_err = |file: &TempFile| {
            load(&memory, size(64 * MIB), &boot(file, None, ""), None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let missing = LinuxBoot {
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: None,
            cmdline: String::new(),
            force: false,
            decompress: Decompress::Vmm,
        };
        let e = load(&memory, size(64 * MIB), &missing, None)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.starts_with("cannot open the kernel /nonexistent/vmlinuz")),
            "{e:?}"
        );

        let empty = TempFile::new("empty", &[]);
        let e = load_err(&empty);
        assert!(
            e.contains(&*empty.0.to_string_lossy()) && e.contains("is empty (0 bytes)"),
            "{e}"
        );

        let elf = TempFile::new("elf", &[0x7f; 4096]);
        let e = load_err(&elf);
        assert!(
            e.contains("is not a Linux bzImage") && e.contains("HdrS"),
            "{e}"
        );

        let h = header(MIB as u32);
        let truncated = TempFile::new("truncated", &image(&h, 0)[..900]);
        let e = load_err(&truncated);
        assert!(e.contains("truncated"), "{e}");
        let sized = setup_header {
            syssize: 0x1000,
            ..h
        };
        let short_kernel = TempFile::new("short", &image(&sized, 4096));
        let e = load_err(&short_kernel);
        assert!(e.contains("truncated") && e.contains("kernel 65536"), "{e}");

        let old = setup_header { xloadflags: 0, ..h };
        let i386 = TempFile::new("i386", &image(&old, 4096));
        let e = load_err(&i386);
        assert!(
            e.contains("64-bit boot protocol") && e.contains(&*i386.0.to_string_lossy()),
            "{e}"
        );

        let huge = TempFile::new("huge", &image(&header(60 * MIB as u32), 4096));
        let e = load_err(&huge);
        assert!(
            e.contains("use a larger --memory") && e.contains("0x4c00000"),
            "{e}"
        );
    }

    /// A minimal ELF64 executable of 16 `hlt`s at 1 MiB, with or without a PVH entry.
    fn elf(pvh_entry: Option<u32>) -> Vec<u8> {
        crate::test_support::tiny_elf_kernel(&[0xf4; 16], pvh_entry)
    }

    #[test]
    fn elf_kernels_boot_through_the_pvh_entry_or_are_refused() {
        use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry};
        let Ok(memory) = create_guest_memory(size(64 * MIB)) else {
            panic!("cannot map test memory");
        };
        let plain = TempFile::new("plain-elf", &elf(None));
        let early = check_files(&boot(&plain, None, ""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(early.contains("without a PVH entry"), "{early}");
        let e = load(&memory, size(64 * MIB), &boot(&plain, None, ""), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("without a PVH entry") && e.contains("plain-elf"),
            "{e}"
        );

        let pvh = TempFile::new("pvh-elf", &elf(Some(0x10_0008)));
        assert!(check_files(&boot(&pvh, None, "")).is_ok());
        // Truncated in the middle of its notes: refused the same way, no panic.
        let cut = TempFile::new("cut-elf", &elf(Some(0x10_0008))[..200]);
        assert!(check_files(&boot(&cut, None, "")).is_err());
        let initrd = TempFile::new("pvh-initrd", &[0x5a; 3000]);
        let loaded = load(
            &memory,
            size(64 * MIB),
            &boot(&pvh, Some(&initrd), "console=ttyS0"),
            Some(GuestAddress(0xe_0000)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.protocol, BootProtocol::Pvh);
        assert_eq!(loaded.entry, GuestAddress(0x10_0008));
        assert_eq!(loaded.boot_params, layout::PVH_START_INFO);
        let code: u8 = memory.read_obj(GuestAddress(0x10_0000)).unwrap_or(0);
        assert_eq!(code, 0xf4, "the PT_LOAD segment is loaded");
        let info: hvm_start_info = memory.read_obj(layout::PVH_START_INFO).unwrap_or_default();
        let (magic, version, cmdline, rsdp) = (
            info.magic,
            info.version,
            info.cmdline_paddr,
            info.rsdp_paddr,
        );
        assert_eq!((magic, version), (XEN_HVM_START_MAGIC, 1));
        assert_eq!((cmdline, rsdp), (layout::CMDLINE_START.0, 0xe_0000));
        let (entries, memmap) = (info.memmap_entries, info.memmap_paddr);
        assert_eq!(entries as usize, e820_map(size(64 * MIB)).len());
        let last: hvm_memmap_table_entry = memory
            .read_obj(GuestAddress(memmap + 24 * (u64::from(entries) - 1)))
            .unwrap_or_default();
        let (addr, len, kind) = (last.addr, last.size, last.type_);
        assert_eq!((addr, addr + len, kind), (0x10_0000, 64 * MIB, E820_RAM));
        let (count, modlist) = (info.nr_modules, info.modlist_paddr);
        assert_eq!(count, 1);
        let module: hvm_modlist_entry = memory.read_obj(GuestAddress(modlist)).unwrap_or_default();
        let (paddr, msize) = (module.paddr, module.size);
        assert_eq!(Some((GuestAddress(paddr), msize)), loaded.initrd);
        assert_eq!(msize, 3000);
        let first: u8 = memory.read_obj(GuestAddress(paddr)).unwrap_or(0);
        assert_eq!(first, 0x5a);
        let mut text = [0u8; 14];
        assert!(memory.read_slice(&mut text, layout::CMDLINE_START).is_ok());
        assert_eq!(&text, b"console=ttyS0\0");
    }

    #[test]
    fn loads_kernel_initrd_cmdline_and_zero_page() {
        let Ok(memory) = create_guest_memory(size(64 * MIB)) else {
            panic!("cannot map test memory");
        };
        let kernel = TempFile::new("good", &image(&header(MIB as u32), 8192));
        let initrd = TempFile::new("initrd", &[0xab; 5000]);
        let loaded = match load(
            &memory,
            size(64 * MIB),
            &boot(&kernel, Some(&initrd), "quiet"),
            None,
        ) {
            Ok(loaded) => loaded,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(loaded.entry, GuestAddress(0x10_0200));
        assert_eq!(loaded.initrd, Some((GuestAddress(62 * MIB), 5000)));
        let params: boot_params = memory
            .read_obj(layout::BOOT_PARAMS_START)
            .unwrap_or_default();
        let (image, rd_size, cmd) = (
            params.hdr.ramdisk_image,
            params.hdr.ramdisk_size,
            params.hdr.cmd_line_ptr,
        );
        assert_eq!((image, rd_size, cmd), (62 << 20, 5000, 0x2_0000));
        assert_eq!(params.e820_entries, 3);
        let mut text = [0u8; 6];
        assert!(memory.read_slice(&mut text, layout::CMDLINE_START).is_ok());
        assert_eq!(&text, b"quiet\0");
        let first: u8 = memory.read_obj(GuestAddress(62 * MIB)).unwrap_or(0);
        assert_eq!(first, 0xab);

        assert!(check_files(&boot(&kernel, Some(&initrd), "")).is_ok());
        let no_initrd = LinuxBoot {
            initrd: Some("/nonexistent/initrd".into()),
            ..boot(&kernel, None, "")
        };
        let e = check_files(&no_initrd).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.starts_with("cannot open the initrd /nonexistent/initrd")),
            "{e:?}"
        );
        let big_initrd = TempFile::new("big-initrd", &vec![0; (50 * MIB) as usize]);
        let e = load(
            &memory,
            size(64 * MIB),
            &boot(&kernel, Some(&big_initrd), ""),
            None,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("the initrd") && e.contains("use a larger --memory"),
            "{e}"
        );
    }

    /// A bzImage whose payload is an LZ4-compressed synthetic kernel
    /// ([`payload::fixtures`]): 8 KiB of text at 16 MiB holding a 32-bit pointer (at
    /// +0x10) and a 64-bit one (at +0x30) into itself, 4 KiB of data (and 256 bytes of
    /// bss) 2 MiB above, and the relocation table for both pointers.
    fn decompressible(xloadflags: u16) -> Vec<u8> {
        decompressible_with(xloadflags, 8 * MIB as u32, 0)
    }

    /// [`decompressible`] with the header's `init_size` and extra `loadflags`, and an
    /// inverse 32-bit field (at +0x20) too.
    fn decompressible_with(xloadflags: u16, init_size: u32, loadflags: u8) -> Vec<u8> {
        use payload::fixtures::{LOAD, elf, lz4_payload, table};
        let mut text = vec![0xccu8; 0x2000];
        text[0x10..0x14].copy_from_slice(&0x8100_0040u32.to_le_bytes());
        text[0x20..0x24].copy_from_slice(&0x0000_1000u32.to_le_bytes());
        text[0x30..0x38].copy_from_slice(&0xffff_ffff_8100_0080u64.to_le_bytes());
        let mut data = elf(&text, 0x1000);
        let data_end = data.len();
        data[data_end - 0x1000..].fill(0xdd);
        let va = |paddr: u64| (paddr + payload::START_KERNEL_MAP) as u32;
        data.extend(table(
            &[va(LOAD + 0x10)],
            &[va(LOAD + 0x20)],
            &[va(LOAD + 0x30)],
        ));
        let compressed = lz4_payload(&data, 4096);
        let base = header(init_size);
        let h = setup_header {
            payload_length: compressed.len() as u32,
            xloadflags: XLF_KERNEL_64 | xloadflags,
            loadflags: base.loadflags | loadflags,
            ..base
        };
        let mut bz = image(&h, compressed.len());
        let at = setup_bytes(&h) as usize;
        bz[at..].copy_from_slice(&compressed);
        bz
    }

    fn read_u32(memory: &GuestRam, at: u64) -> u32 {
        memory.read_obj(GuestAddress(at)).unwrap_or_default()
    }

    fn read_u64(memory: &GuestRam, at: u64) -> u64 {
        memory.read_obj(GuestAddress(at)).unwrap_or_default()
    }

    fn zero_page(memory: &GuestRam) -> boot_params {
        memory
            .read_obj(layout::BOOT_PARAMS_START)
            .unwrap_or_default()
    }

    #[test]
    fn too_little_ram_and_nonsense_headers_are_named_as_such() {
        // init_size is 8 MiB from 16 MiB: 16 MiB of RAM is too small, and says so.
        let file = TempFile::new("small-ram", &decompressible(0));
        for mib in [4, 16, 20] {
            let ram = size(mib * MIB);
            let memory = match create_guest_memory(ram) {
                Ok(memory) => memory,
                Err(e) => panic!("{e}"),
            };
            let e = load(&memory, ram, &boot(&file, None, "nokaslr"), None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("use a larger --memory"), "{mib} MiB: {e}");
        }
        // An init_size no kernel can have.
        let mut image = decompressible(0);
        image[0x260..0x264].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        let file = TempFile::new("init-size", &image);
        let e = check_files(&boot(&file, None, ""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("init_size 0xffffffff"), "{e}");
    }

    #[test]
    fn elf_header_fields_are_named() {
        let good = crate::test_support::tiny_elf_kernel(&[0xf4], Some(0x10_0000));
        let file = TempFile::new("elf-good", &good);
        assert!(check_files(&boot(&file, None, "")).is_ok());
        let cases: [(usize, &[u8], &str); 6] = [
            (4, &[1], "EI_CLASS is 1 (32-bit ELF)"),
            (5, &[2], "EI_DATA is 2"),
            (0x12, &[183, 0], "e_machine is 183 (AArch64)"),
            (0x10, &[1, 0], "e_type is 1"),
            (0x36, &[32, 0], "e_phentsize is 32"),
            (
                0x20,
                &[0, 0, 0, 0, 0, 0, 1, 0],
                "runs past the end of the file",
            ),
        ];
        for (at, bytes, expected) in cases {
            let mut image = good.clone();
            image[at..at + bytes.len()].copy_from_slice(bytes);
            let file = TempFile::new("elf-bad", &image);
            let e = check_files(&boot(&file, None, ""))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains(expected) && e.contains("not an x86-64 ELF kernel"),
                "{expected}: {e}"
            );
        }
    }

    #[test]
    fn vmm_decompresses_places_and_relocates_the_kernel() {
        let ram = size(128 * MIB);
        let file = TempFile::new("decompressible", &decompressible(XLF_5LEVEL));
        let fresh = || match create_guest_memory(ram) {
            Ok(memory) => memory,
            Err(e) => panic!("cannot map test memory: {e}"),
        };

        // nokaslr: the kernel where it is linked, untouched, KASLR_FLAG clear.
        let memory = fresh();
        let loaded = load(
            &memory,
            ram,
            &boot(&file, None, "console=ttyS0 nokaslr no5lvl"),
            None,
        );
        let Ok(loaded) = loaded else {
            panic!("{loaded:?}");
        };
        assert_eq!(
            loaded.protocol,
            BootProtocol::Vmlinux64 { five_level: false }
        );
        assert_eq!(loaded.entry, GuestAddress(16 * MIB));
        assert!(matches!(
            loaded.decompressed,
            Decompressed::ByVmm {
                format: "lz4",
                physical: GuestAddress(0x100_0000),
                virtual_offset: None,
                ..
            }
        ));
        assert_eq!(read_u32(&memory, 16 * MIB), 0xcccc_cccc);
        assert_eq!(read_u32(&memory, 16 * MIB + 0x10), 0x8100_0040);
        assert_eq!(read_u64(&memory, 16 * MIB + 0x30), 0xffff_ffff_8100_0080);
        assert_eq!(read_u32(&memory, 18 * MIB), 0xdddd_dddd);
        assert_eq!(read_u32(&memory, 18 * MIB + 0x1000), 0, "bss");
        assert_eq!(zero_page(&memory).hdr.loadflags & KASLR_FLAG, 0);

        // KASLR: a random 2 MiB-aligned physical place and virtual offset, the pointers
        // moved by the offset, KASLR_FLAG set; 5-level since the kernel supports it.
        let mut choices = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let memory = fresh();
            let loaded = load(&memory, ram, &boot(&file, None, "console=ttyS0"), None);
            let Ok(LoadedLinux {
                protocol: BootProtocol::Vmlinux64 { five_level: true },
                entry,
                decompressed:
                    Decompressed::ByVmm {
                        physical,
                        virtual_offset: Some(offset),
                        ..
                    },
                ..
            }) = loaded
            else {
                panic!("{loaded:?}");
            };
            let base = physical.0;
            assert_eq!(entry, physical);
            assert!(base >= 16 * MIB && base % (2 * MIB) == 0, "{base:#x}");
            assert!(base + 2 * MIB + 0x1100 <= 128 * MIB, "{base:#x}");
            assert!(
                offset % (2 * MIB) == 0 && 16 * MIB + offset < 1 << 30,
                "{offset:#x}"
            );
            assert_eq!(read_u32(&memory, base), 0xcccc_cccc);
            assert_eq!(
                read_u32(&memory, base + 0x10),
                0x8100_0040u32.wrapping_add(offset as u32)
            );
            assert_eq!(
                read_u32(&memory, base + 0x20),
                0x1000u32.wrapping_sub(offset as u32)
            );
            assert_eq!(
                read_u64(&memory, base + 0x30),
                0xffff_ffff_8100_0080 + offset
            );
            assert_eq!(read_u32(&memory, base + 2 * MIB), 0xdddd_dddd);
            assert_ne!(zero_page(&memory).hdr.loadflags & KASLR_FLAG, 0);
            choices.insert((base, offset));
        }
        assert!(choices.len() > 1, "eight boots, one place: {choices:?}");

        // The guest decompresses when asked to, and when vmm cannot.
        let memory = fresh();
        let guest = LinuxBoot {
            decompress: Decompress::Guest,
            ..boot(&file, None, "")
        };
        let loaded = load(&memory, ram, &guest, None).map(|l| (l.protocol, l.decompressed));
        assert_eq!(
            loaded.ok(),
            Some((BootProtocol::Linux64, Decompressed::NotByVmm))
        );
        let mut xz = decompressible(0);
        let at = setup_bytes(&header(0)) as usize;
        xz[at..at + 6].copy_from_slice(&[0xfd, b'7', b'z', b'X', b'Z', 0]);
        let xz = TempFile::new("xz", &xz);
        let loaded = load(&fresh(), ram, &boot(&xz, None, ""), None);
        assert!(
            matches!(&loaded, Ok(LoadedLinux { protocol: BootProtocol::Linux64, decompressed: Decompressed::LeftToGuest { reason }, .. }) if reason.contains("xz")),
            "{loaded:?}"
        );

        // A corrupt payload is an error naming the file; so is a payload past the end.
        let mut corrupt = decompressible(0);
        let n = corrupt.len();
        corrupt[n - 64..n - 4].fill(0xff);
        let corrupt = TempFile::new("corrupt", &corrupt);
        let e = load(&fresh(), ram, &boot(&corrupt, None, ""), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(&*corrupt.0.to_string_lossy()) && e.contains("lz4 payload is corrupt"),
            "{e}"
        );
        let mut short = decompressible(0);
        short.truncate(short.len() - 100);
        let short = TempFile::new("short-payload", &short);
        let e = load(&fresh(), ram, &boot(&short, None, ""), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("payload") && e.contains("not inside the file"),
            "{e}"
        );
        let mut tiny = decompressible(0);
        tiny[0x24c..0x250].copy_from_slice(&3u32.to_le_bytes()); // payload_length
        let tiny = TempFile::new("tiny-payload", &tiny);
        let e = load(&fresh(), ram, &boot(&tiny, None, ""), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("(3 bytes") && e.contains("too short"), "{e}");

        // Too little RAM for the initrd above the kernel's init_size.
        let initrd = TempFile::new("initrd-filling-ram", &vec![0u8; 120 * MIB as usize]);
        let e = load(&fresh(), ram, &boot(&file, Some(&initrd), ""), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("the initrd") && e.contains("use a larger --memory"),
            "{e}"
        );
        // An init_size smaller than the image, and an initrd right above it: the image
        // does not fit below the initrd (at 18 MiB).
        let small = TempFile::new("small-init-size", &decompressible_with(0, MIB as u32, 0));
        let initrd = TempFile::new("initrd-at-18m", &vec![0u8; 110 * MIB as usize]);
        let e = load(&fresh(), ram, &boot(&small, Some(&initrd), "nokaslr"), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("takes 0x201100 bytes from 0x1000000")
                && e.contains("only 0x200000 bytes are free there (below the initrd)"),
            "{e}"
        );
    }

    #[test]
    fn vmm_kaslr_stays_below_the_initrd_inside_mem_and_off_when_asked() {
        let ram = size(128 * MIB);
        let fresh = || match create_guest_memory(ram) {
            Ok(memory) => memory,
            Err(e) => panic!("cannot map test memory: {e}"),
        };
        // The image says KASLR_FLAG already: only vmm's own choice may set it.
        let file = TempFile::new(
            "kaslr-flag-preset",
            &decompressible_with(0, 8 * MIB as u32, KASLR_FLAG),
        );
        let initrd = TempFile::new("initrd-40m", &vec![0xabu8; 40 * MIB as usize]);
        for _ in 0..8 {
            let memory = fresh();
            let loaded = load(&memory, ram, &boot(&file, Some(&initrd), ""), None);
            let Ok(LoadedLinux {
                initrd: Some((start, _)),
                decompressed: Decompressed::ByVmm { physical, .. },
                ..
            }) = loaded
            else {
                panic!("{loaded:?}");
            };
            assert!(
                physical.0 + 2 * MIB + 0x1100 <= start.0,
                "{physical:?} {start:?}"
            );
            assert_ne!(zero_page(&memory).hdr.loadflags & KASLR_FLAG, 0);
        }
        let memory = fresh();
        let loaded = load(&memory, ram, &boot(&file, None, "nokaslr"), None);
        assert!(
            matches!(
                loaded,
                Ok(LoadedLinux {
                    decompressed: Decompressed::ByVmm {
                        virtual_offset: None,
                        ..
                    },
                    ..
                })
            ),
            "{loaded:?}"
        );
        assert_eq!(
            zero_page(&memory).hdr.loadflags & KASLR_FLAG,
            0,
            "the image's flag was passed on"
        );
        // mem= (or memmap=): the kernel stays where it is linked; its virtual base moves.
        for cmdline in ["mem=64M", "quiet memmap=16M$32M"] {
            for _ in 0..4 {
                let loaded = load(&fresh(), ram, &boot(&file, None, cmdline), None);
                assert!(
                    matches!(
                        loaded,
                        Ok(LoadedLinux {
                            decompressed: Decompressed::ByVmm {
                                physical: GuestAddress(0x100_0000),
                                virtual_offset: Some(_),
                                ..
                            },
                            ..
                        })
                    ),
                    "{cmdline}: {loaded:?}"
                );
            }
        }
    }

    #[test]
    fn cmdline_options_are_whole_words_before_the_init_arguments() {
        assert!(cmdline_has_prefix("quiet mem=1G", "mem="));
        assert!(!cmdline_has_prefix("quiet nomem=1G -- mem=1G", "mem="));
        assert!(cmdline_has("console=ttyS0 nokaslr", "nokaslr"));
        assert!(!cmdline_has("console=ttyS0 nokaslrx", "nokaslr"));
        assert!(!cmdline_has("console=ttyS0 -- nokaslr", "nokaslr"));
        assert!(cmdline_has("no5lvl\tquiet", "no5lvl"));
    }
}
