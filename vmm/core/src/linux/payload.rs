//! Booting a bzImage without its decompressor: the VMM does the decompressor's work on
//! the host, as `arch/x86/boot/compressed/misc.c` does it in the guest.
//!
//! A bzImage carries the kernel proper as a compressed payload (setup header fields
//! `payload_offset` / `payload_length`, protocol 2.08+). Decompressed, the payload is
//! `vmlinux.bin` (the stripped ELF vmlinux) followed, when the kernel is built with
//! `CONFIG_RANDOMIZE_BASE`, by its relocation table (`arch/x86/tools/relocs.c`). The
//! last four bytes of every payload are its decompressed length.
//!
//! [`decompress_into`] undoes the compression a piece at a time into a [`Sink`]; the
//! [`Placer`] sink reads the ELF program headers ([`Vmlinux::parse`]) from the first
//! piece and hands each segment's bytes to a [`Place`] (guest memory) as they stream
//! by, keeping only the relocation table ([`Relocations::parse`]). [`Vmlinux::sites`]
//! and [`Site::relocate`] then move the kernel to a virtual KASLR offset exactly as the
//! guest's decompressor would. The caller enters `startup_64` of the kernel proper
//! with the 64-bit boot protocol (as Firecracker enters an ELF vmlinux).
//!
//! Everything here reads a user-supplied file: every length, offset and address is
//! checked, and a bad image gives a [`PayloadError`] naming what is wrong.

use std::io::Read;

/// `__START_KERNEL_map`: the base of the kernel text mapping on x86_64. Relocation
/// entries are kernel virtual addresses, which minus this are link-time physical ones.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// `KERNEL_IMAGE_SIZE` of a kernel built with `CONFIG_RANDOMIZE_BASE` (the only kind that
/// carries relocations on x86_64): the kernel's virtual image must end below it.
pub const KERNEL_IMAGE_SIZE: u64 = 1 << 30;
/// The largest decompressed payload taken: no x86_64 kernel image is bigger than the
/// kernel mapping it has to fit in (plus its relocation table).
pub const MAX_PAYLOAD_OUTPUT: u64 = KERNEL_IMAGE_SIZE + (64 << 20);

/// The magic of the LZ4 "legacy" format the kernel's `lz4 -l` writes.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// The largest block of the LZ4 legacy format, decompressed.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// ELF constants (`include/uapi/linux/elf.h`).
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;

/// How a bzImage's payload is compressed (the kernel's `CONFIG_KERNEL_*` choice), from
/// the magic bytes that `arch/x86/boot/compressed/Makefile`'s compressors write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `CONFIG_KERNEL_GZIP`.
    Gzip,
    /// `CONFIG_KERNEL_LZ4` (the LZ4 legacy format).
    Lz4,
    /// `CONFIG_KERNEL_ZSTD`.
    Zstd,
    /// A format the VMM does not decompress (xz, lzma, bzip2, lzo, or unknown): the
    /// guest's own decompressor has to run.
    Other(&'static str),
}

impl Compression {
    /// The format of `payload`, by its first bytes.
    pub fn of(payload: &[u8]) -> Self {
        match payload {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x02, 0x21, 0x4c, 0x18, ..] => Self::Lz4,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Self::Other("xz"),
            [b'B', b'Z', b'h', ..] => Self::Other("bzip2"),
            [0x5d, 0, 0, ..] => Self::Other("lzma"),
            [0x89, b'L', b'Z', b'O', ..] => Self::Other("lzo"),
            _ => Self::Other("an unknown format"),
        }
    }

    /// The format's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
            Self::Other(name) => name,
        }
    }
}

/// What is wrong with a bzImage's payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than the smallest payload (a magic and the length trailer).
    #[error("the compressed payload is only {0} bytes long")]
    Truncated(usize),
    /// The decompressed length in the trailer is beyond any kernel.
    #[error("the payload says it decompresses to {declared} bytes; at most {max} are taken")]
    TooLarge {
        /// The trailer's length.
        declared: u64,
        /// The limit.
        max: u64,
    },
    /// A format the VMM does not decompress.
    #[error("the payload is compressed with {0}, which vmm does not decompress")]
    Unsupported(&'static str),
    /// The decompressor failed.
    #[error("the {format} payload is corrupt: {reason}")]
    Corrupt {
        /// The format.
        format: &'static str,
        /// The decoder's error.
        reason: String,
    },
    /// The payload decompressed to another length than its trailer says.
    #[error("the {format} payload decompressed to {got} bytes, but its trailer says {declared}")]
    LengthMismatch {
        /// The format.
        format: &'static str,
        /// The trailer's length.
        declared: u64,
        /// What came out (at most `declared + 1`).
        got: u64,
    },
    /// The decompressed kernel is not a loadable x86_64 ELF file.
    #[error("the decompressed kernel is not an x86_64 ELF vmlinux: {0}")]
    BadElf(String),
    /// The relocation table after the ELF file is malformed.
    #[error("the decompressed kernel's relocation table is malformed: {0}")]
    BadRelocations(String),
    /// The VMM could not place the kernel (its [`Place`] says why).
    #[error("cannot place the kernel: {0}")]
    Place(String),
}

/// Where decompressed bytes go, in order: `offset` is where `bytes` start in the
/// decompressed payload.
pub trait Sink {
    /// Takes the next piece of output.
    fn put(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PayloadError>;
}

impl Sink for Vec<u8> {
    fn put(&mut self, _offset: u64, bytes: &[u8]) -> Result<(), PayloadError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// How much of a streamed format (gzip, zstd) is decompressed at a time.
const CHUNK: usize = 4 << 20;

/// Decompresses a bzImage payload of `len` bytes read from `payload` (its compressed
/// stream, then the four-byte length trailer, which `trailer` already holds) into
/// `sink`, piece by piece: at most `max_output` bytes (and never more than
/// [`MAX_PAYLOAD_OUTPUT`]), and exactly as many as the trailer says. Returns that length.
pub fn decompress_into(
    format: Compression,
    payload: impl Read,
    len: u64,
    trailer: [u8; 4],
    max_output: u64,
    sink: &mut impl Sink,
) -> Result<u64, PayloadError> {
    if len < 8 {
        return Err(PayloadError::Truncated(len as usize));
    }
    let declared = u64::from(u32::from_le_bytes(trailer));
    let max = max_output.min(MAX_PAYLOAD_OUTPUT);
    if declared > max {
        return Err(PayloadError::TooLarge { declared, max });
    }
    let corrupt = |reason: String| PayloadError::Corrupt {
        format: format.name(),
        reason,
    };
    let mut out = Output {
        sink,
        at: 0,
        declared,
        format: format.name(),
    };
    match format {
        Compression::Lz4 => lz4_legacy(payload.take(len - 4), &mut out, &corrupt)?,
        // gzip ends with its own ISIZE, which is the trailer: the decoder reads it.
        Compression::Gzip => {
            out.stream(flate2::read::GzDecoder::new(payload.take(len)), &corrupt)?
        }
        Compression::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(payload.take(len - 4))
                .map_err(|e| corrupt(e.to_string()))?;
            out.stream(decoder, &corrupt)?;
        }
        Compression::Other(name) => return Err(PayloadError::Unsupported(name)),
    }
    if out.at != declared {
        return Err(PayloadError::LengthMismatch {
            format: format.name(),
            declared,
            got: out.at,
        });
    }
    Ok(declared)
}

/// Decompresses a whole in-memory payload (its trailer included) into a vector.
pub fn decompress(payload: &[u8], max_output: u64) -> Result<Vec<u8>, PayloadError> {
    let len = payload.len();
    let Some(trailer) = payload.last_chunk::<4>().filter(|_| len >= 8) else {
        return Err(PayloadError::Truncated(len));
    };
    let mut output = Vec::new();
    decompress_into(
        Compression::of(payload),
        payload,
        len as u64,
        *trailer,
        max_output,
        &mut output,
    )?;
    Ok(output)
}

/// The decompressor's output side: counts what went to the sink, refuses more than
/// the trailer said.
struct Output<'a, S> {
    sink: &'a mut S,
    at: u64,
    declared: u64,
    format: &'static str,
}

impl<S: Sink> Output<'_, S> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), PayloadError> {
        let end = self.at + bytes.len() as u64;
        if end > self.declared {
            return Err(PayloadError::LengthMismatch {
                format: self.format,
                declared: self.declared,
                got: end,
            });
        }
        self.sink.put(self.at, bytes)?;
        self.at = end;
        Ok(())
    }

    /// Reads a streaming decoder to its end, [`CHUNK`] bytes at a time.
    fn stream(
        &mut self,
        mut decoder: impl Read,
        corrupt: &dyn Fn(String) -> PayloadError,
    ) -> Result<(), PayloadError> {
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let filled = fill(&mut decoder, &mut buffer).map_err(|e| corrupt(e.to_string()))?;
            if filled == 0 {
                return Ok(());
            }
            self.put(&buffer[..filled])?;
        }
    }
}

/// Reads from `reader` until `buffer` is full or the reader ends; returns how many bytes
/// were read (fewer than asked only at the end).
fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decompresses an LZ4 legacy stream (after its magic): blocks of a 32-bit
/// little-endian compressed length and the block, each at most 8 MiB once decompressed
/// and independent of the others. A repeated magic starts a concatenated stream, as the
/// kernel allows.
fn lz4_legacy<S: Sink>(
    mut stream: impl Read,
    out: &mut Output<'_, S>,
    corrupt: &dyn Fn(String) -> PayloadError,
) -> Result<(), PayloadError> {
    let mut block = Vec::new();
    let mut output = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut word = [0u8; 4];
    let read_err = |e: std::io::Error| corrupt(format!("the stream ends inside a block: {e}"));
    stream.read_exact(&mut word).map_err(read_err)?;
    let mut size = u32::from_le_bytes(word);
    loop {
        if size != LZ4_LEGACY_MAGIC {
            let room = (out.declared - out.at).min(LZ4_LEGACY_BLOCK as u64) as usize;
            // A block is never larger than what it decompresses to, plus LZ4's worst
            // case growth; anything larger is not a block.
            if size as usize > lz4_flex::block::get_maximum_output_size(LZ4_LEGACY_BLOCK) {
                return Err(corrupt(format!(
                    "a block of {size} bytes, more than any 8 MiB block compresses to"
                )));
            }
            block.resize(size as usize, 0);
            stream.read_exact(&mut block).map_err(read_err)?;
            let written = lz4_flex::block::decompress_into(&block, &mut output[..room])
                .map_err(|e| corrupt(format!("the block at output byte {}: {e}", out.at)))?;
            out.put(&output[..written])?;
        }
        // The next block's size, or the end of the stream.
        match fill(&mut stream, &mut word).map_err(read_err)? {
            0 => return Ok(()),
            4 => size = u32::from_le_bytes(word),
            n => return Err(corrupt(format!("{n} stray bytes after the last block"))),
        }
    }
}

/// One `PT_LOAD` program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where its bytes are in the file.
    pub offset: u64,
    /// Its link-time physical address.
    pub paddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero).
    pub memsz: u64,
}

/// What the VMM needs of a decompressed kernel's ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmlinux {
    /// `e_entry`: the physical address of `startup_64` at the link-time load address.
    pub entry: u64,
    /// The `PT_LOAD` segments, in file order.
    pub segments: Vec<Segment>,
    /// The first link-time physical address of the image (its lowest segment).
    pub start: u64,
    /// The end of the image in memory, link-time physical (`_end`, bss and brk included).
    pub end: u64,
    /// Where the ELF file ends: its headers, tables and segments all lie before.
    pub file_end: u64,
}

fn field<const N: usize>(data: &[u8], at: u64) -> Option<[u8; N]> {
    let at = usize::try_from(at).ok()?;
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}
fn u16_at(data: &[u8], at: u64) -> Option<u16> {
    field(data, at).map(u16::from_le_bytes)
}
fn u32_at(data: &[u8], at: u64) -> Option<u32> {
    field(data, at).map(u32::from_le_bytes)
}
fn u64_at(data: &[u8], at: u64) -> Option<u64> {
    field(data, at).map(u64::from_le_bytes)
}

impl Vmlinux {
    /// Reads the ELF header and program headers from `head`, the first bytes of an ELF
    /// file of `total` bytes (at least up to the end of its program headers), checking
    /// that every segment lies inside the file, at or above `load_physical_addr` (the
    /// kernel's `LOAD_PHYSICAL_ADDR`, its header's `pref_address`), and that the image
    /// is no larger than [`KERNEL_IMAGE_SIZE`] and holds its entry point.
    pub fn parse(head: &[u8], total: u64, load_physical_addr: u64) -> Result<Self, PayloadError> {
        let data = head;
        let bad = |reason: &str| PayloadError::BadElf(reason.to_string());
        if data.len() < EHDR_SIZE || &data[..4] != ELF_MAGIC {
            return Err(bad("no ELF header"));
        }
        if data[4] != ELFCLASS64 || data[5] != ELFDATA2LSB {
            return Err(bad("not a 64-bit little-endian ELF file"));
        }
        let header = |at, size| match size {
            2 => u16_at(data, at).map(u64::from),
            4 => u32_at(data, at).map(u64::from),
            _ => u64_at(data, at),
        };
        let read = |at, size| header(at, size).ok_or_else(|| bad("truncated ELF header"));
        if read(18, 2)? != u64::from(EM_X86_64) {
            return Err(bad("not an x86_64 ELF file"));
        }
        let entry = read(24, 8)?;
        let phoff = read(32, 8)?;
        let shoff = read(40, 8)?;
        let phentsize = read(54, 2)?;
        let phnum = read(56, 2)?;
        let shentsize = read(58, 2)?;
        let shnum = read(60, 2)?;
        if phnum == 0 || phentsize != PHDR_SIZE as u64 {
            return Err(bad("no program headers of the ELF64 size"));
        }
        let phend = phoff
            .checked_add(phnum * phentsize)
            .filter(|&end| end <= total)
            .ok_or_else(|| bad("program headers beyond the end of the file"))?;
        if phend > data.len() as u64 {
            return Err(PayloadError::BadElf(format!(
                "program headers end at {phend:#x}, beyond the first {:#x} bytes",
                data.len()
            )));
        }
        let mut file_end = phend.max(EHDR_SIZE as u64);
        if shnum > 0 {
            if shentsize != SHDR_SIZE as u64 {
                return Err(bad("section headers not of the ELF64 size"));
            }
            let shend = shoff
                .checked_add(shnum * shentsize)
                .filter(|&end| end <= total)
                .ok_or_else(|| bad("section headers beyond the end of the file"))?;
            file_end = file_end.max(shend);
        }
        let mut segments = Vec::new();
        for index in 0..phnum {
            let at = phoff + index * phentsize;
            if read(at, 4)? != u64::from(PT_LOAD) {
                continue;
            }
            let segment = Segment {
                offset: read(at + 8, 8)?,
                paddr: read(at + 24, 8)?,
                filesz: read(at + 32, 8)?,
                memsz: read(at + 40, 8)?,
            };
            let in_file = segment
                .offset
                .checked_add(segment.filesz)
                .filter(|&end| end <= total);
            let Some(segment_end) = in_file else {
                return Err(PayloadError::BadElf(format!(
                    "segment {index} ({} bytes at offset {:#x}) runs beyond the end of the file",
                    segment.filesz, segment.offset
                )));
            };
            if segment.filesz > segment.memsz {
                return Err(PayloadError::BadElf(format!(
                    "segment {index} has more bytes in the file than in memory"
                )));
            }
            if segment.paddr < load_physical_addr
                || segment.paddr.saturating_add(segment.memsz)
                    > load_physical_addr.saturating_add(KERNEL_IMAGE_SIZE)
            {
                return Err(PayloadError::BadElf(format!(
                    "segment {index} at physical {:#x} ({:#x} bytes) is outside the kernel's \
                     {KERNEL_IMAGE_SIZE:#x} bytes from {load_physical_addr:#x}",
                    segment.paddr, segment.memsz
                )));
            }
            file_end = file_end.max(segment_end);
            segments.push(segment);
        }
        let start = segments.iter().map(|s| s.paddr).min();
        let end = segments
            .iter()
            .map(|s| s.paddr.saturating_add(s.memsz))
            .max();
        let (Some(start), Some(end)) = (start, end) else {
            return Err(bad("no loadable segment"));
        };
        let holds_entry = segments
            .iter()
            .any(|s| (s.paddr..s.paddr.saturating_add(s.filesz)).contains(&entry));
        if !holds_entry {
            return Err(PayloadError::BadElf(format!(
                "the entry point {entry:#x} is in none of its segments"
            )));
        }
        Ok(Self {
            entry,
            segments,
            start,
            end,
            file_end,
        })
    }

    /// The segment whose file bytes hold the `len` bytes at link-time physical address
    /// `paddr`, if one does.
    fn holder(&self, paddr: u64, len: u64) -> Option<usize> {
        self.segments.iter().position(|s| {
            paddr
                .checked_sub(s.paddr)
                .and_then(|into| into.checked_add(len))
                .is_some_and(|end| end <= s.filesz)
        })
    }

    /// The fields `relocations` name, in the table's order, each checked to lie wholly
    /// in one segment's file bytes (so it is written with the kernel) and given by its
    /// place there: for a kernel whose virtual base moves by `delta`, [`Site::relocate`]
    /// gives each its new value, exactly as the guest decompressor's
    /// `handle_relocations` would. A field outside is an error, in its turn.
    pub fn sites<'a>(
        &'a self,
        relocations: &'a Relocations,
    ) -> impl Iterator<Item = Result<Site, PayloadError>> + 'a {
        let lists = [
            (&relocations.abs32, Field::Abs32),
            (&relocations.inverse32, Field::Inverse32),
            (&relocations.abs64, Field::Abs64),
        ];
        lists.into_iter().flat_map(move |(list, field)| {
            list.iter().map(move |&entry| {
                // A 32-bit entry, sign-extended, is the field's kernel virtual address.
                let virt = i64::from(entry as i32) as u64;
                let paddr = virt.wrapping_sub(START_KERNEL_MAP);
                let Some(segment) = self.holder(paddr, field.size()) else {
                    return Err(PayloadError::BadRelocations(format!(
                        "a {} relocation at {virt:#x} is outside the kernel's loaded bytes",
                        field.name()
                    )));
                };
                Ok(Site {
                    segment,
                    offset: paddr - self.segments[segment].paddr,
                    field,
                })
            })
        })
    }
}

/// What kind of field a relocation changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// 32 bits that gain the offset.
    Abs32,
    /// 32 bits that lose it.
    Inverse32,
    /// 64 bits that gain it.
    Abs64,
}

impl Field {
    /// Its size in bytes.
    pub fn size(self) -> u64 {
        match self {
            Self::Abs32 | Self::Inverse32 => 4,
            Self::Abs64 => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Abs32 => "32-bit",
            Self::Inverse32 => "inverse 32-bit",
            Self::Abs64 => "64-bit",
        }
    }
}

/// One field to relocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// The segment (index in [`Vmlinux::segments`]) whose file bytes hold it.
    pub segment: usize,
    /// Where it is in that segment: `offset + field.size() <= filesz`.
    pub offset: u64,
    /// Its kind.
    pub field: Field,
}

impl Site {
    /// The field's new value (in its low [`Field::size`] bytes) when its old one is
    /// `value` and the kernel's virtual base moves by `delta`.
    pub fn relocate(self, value: u64, delta: u64) -> u64 {
        match self.field {
            Field::Abs32 => u64::from((value as u32).wrapping_add(delta as u32)),
            Field::Inverse32 => u64::from((value as u32).wrapping_sub(delta as u32)),
            Field::Abs64 => value.wrapping_add(delta),
        }
    }
}

/// Where a [`Placer`] puts the kernel.
pub trait Place {
    /// Called once, with the ELF file's description, before any bytes.
    fn start(&mut self, vmlinux: &Vmlinux) -> Result<(), PayloadError>;
    /// Takes the segment bytes `bytes`, which belong `offset` bytes after the link-time
    /// load address.
    fn bytes(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PayloadError>;
}

/// A [`Sink`] that places a decompressed kernel: it reads the ELF headers from the
/// first bytes, then hands each segment's bytes to a [`Place`] as they stream by, and
/// keeps what follows the ELF file (the relocation table). Nothing else is kept: the
/// kernel is never whole in host memory.
#[derive(Debug)]
pub struct Placer<P> {
    base: u64,
    total: u64,
    head: Vec<u8>,
    vmlinux: Option<Vmlinux>,
    tail: Vec<u8>,
    place: P,
}

/// The most bytes read before the ELF program headers must have been seen.
const MAX_HEAD: usize = 1 << 20;

impl<P: Place> Placer<P> {
    /// A placer for a decompressed kernel of `total` bytes linked at `base`
    /// (`LOAD_PHYSICAL_ADDR`).
    pub fn new(base: u64, total: u64, place: P) -> Self {
        Self {
            base,
            total,
            head: Vec::new(),
            vmlinux: None,
            tail: Vec::new(),
            place,
        }
    }

    /// The ELF file's description, what followed it and the [`Place`], once
    /// everything was put.
    pub fn finish(mut self) -> Result<(Vmlinux, Vec<u8>, P), PayloadError> {
        if self.vmlinux.is_none() {
            let head = std::mem::take(&mut self.head);
            self.parse_head(&head, true)?;
        }
        match self.vmlinux {
            Some(vmlinux) => Ok((vmlinux, self.tail, self.place)),
            None => Err(PayloadError::BadElf("no ELF header".into())),
        }
    }

    /// The [`Place`] (to look at after an error).
    pub fn into_place(self) -> P {
        self.place
    }

    /// Parses the ELF headers in `head` when it holds them all (or `last`), then places
    /// `head` itself.
    fn parse_head(&mut self, head: &[u8], last: bool) -> Result<(), PayloadError> {
        match Vmlinux::parse(head, self.total, self.base) {
            Ok(vmlinux) => {
                self.place.start(&vmlinux)?;
                self.vmlinux = Some(vmlinux);
                self.place_bytes(0, head)
            }
            Err(e) if last || head.len() >= MAX_HEAD => Err(e),
            // Not all headers yet: wait for more.
            Err(_) => {
                self.head = head.to_vec();
                Ok(())
            }
        }
    }

    fn place_bytes(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PayloadError> {
        let Some(vmlinux) = &self.vmlinux else {
            return Ok(());
        };
        let end = offset + bytes.len() as u64;
        for segment in &vmlinux.segments {
            let lo = offset.max(segment.offset);
            let hi = end.min(segment.offset + segment.filesz);
            if lo < hi {
                let piece = &bytes[(lo - offset) as usize..(hi - offset) as usize];
                let at = segment.paddr - self.base + (lo - segment.offset);
                self.place.bytes(at, piece)?;
            }
        }
        if end > vmlinux.file_end {
            let from = vmlinux.file_end.max(offset);
            // A relocation table has at most one entry per four bytes of the image (each
            // names a distinct field), plus its three terminators.
            let limit = (vmlinux.end - vmlinux.start) + 12;
            if end - from + self.tail.len() as u64 > limit {
                return Err(PayloadError::BadRelocations(format!(
                    "more than {limit} bytes follow the ELF file, more than a relocation table \
                     of a {:#x}-byte image can be",
                    vmlinux.end - vmlinux.start
                )));
            }
            self.tail
                .extend_from_slice(&bytes[(from - offset) as usize..]);
        }
        Ok(())
    }
}

impl<P: Place> Sink for Placer<P> {
    fn put(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PayloadError> {
        if self.vmlinux.is_some() {
            return self.place_bytes(offset, bytes);
        }
        if self.head.is_empty() {
            return self.parse_head(bytes, false);
        }
        let mut head = std::mem::take(&mut self.head);
        head.extend_from_slice(bytes);
        self.parse_head(&head, false)
    }
}

/// The relocation table `arch/x86/tools/relocs.c` appends after `vmlinux.bin`. Read from
/// the end: 32-bit relocations, a zero, inverse 32-bit ones, a zero, 64-bit ones, a
/// zero. Each entry is the low 32 bits of the kernel virtual address of a field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relocations {
    /// Fields that gain the offset (32 bits).
    pub abs32: Vec<u32>,
    /// Fields that lose it (32 bits, PC-relative references into per-CPU data).
    pub inverse32: Vec<u32>,
    /// Fields that gain it (64 bits).
    pub abs64: Vec<u32>,
}

impl Relocations {
    /// The table at the end of `tail`, the bytes after the ELF file, read backwards
    /// from its end as the guest decompressor reads it (bytes before it are not looked
    /// at): `None` when `tail` is empty (a kernel built without `CONFIG_RANDOMIZE_BASE`),
    /// an error when the three zero-terminated lists are not all there.
    pub fn parse(tail: &[u8]) -> Result<Option<Self>, PayloadError> {
        if tail.is_empty() {
            return Ok(None);
        }
        let mut entries = tail
            .rchunks_exact(4)
            .map(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]));
        let mut list = |name: &str| -> Result<Vec<u32>, PayloadError> {
            let mut out = Vec::new();
            loop {
                match entries.next() {
                    Some(0) => return Ok(out),
                    Some(entry) => out.push(entry),
                    None => {
                        return Err(PayloadError::BadRelocations(format!(
                            "the list of {name} relocations has no terminating zero"
                        )));
                    }
                }
            }
        };
        Ok(Some(Self {
            abs32: list("32-bit")?,
            inverse32: list("inverse 32-bit")?,
            abs64: list("64-bit")?,
        }))
    }
}

/// How many `align`-sized slots from `minimum` hold an image of `size` bytes below
/// `limit`: the choices KASLR has (the guest decompressor's `find_random_virt_addr`).
pub fn slots(minimum: u64, size: u64, limit: u64, align: u64) -> u64 {
    match limit
        .checked_sub(minimum)
        .and_then(|room| room.checked_sub(size))
    {
        Some(spare) if align > 0 => spare / align + 1,
        _ => 0,
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Synthetic kernels for tests: ELF files, relocation tables, LZ4 payloads.
    use super::*;

    pub(crate) const LOAD: u64 = 0x100_0000;

    /// An ELF file with one text segment (entry at its start) of `text` bytes at
    /// LOAD, then one data segment of `data_len` bytes (plus 0x100 bss) 2 MiB above.
    pub(crate) fn elf(text: &[u8], data_len: usize) -> Vec<u8> {
        let text_off = 0x1000u64;
        let data_off = text_off + text.len() as u64;
        let mut file = vec![0u8; data_off as usize + data_len];
        file[..4].copy_from_slice(ELF_MAGIC);
        file[4] = ELFCLASS64;
        file[5] = ELFDATA2LSB;
        file[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        file[24..32].copy_from_slice(&LOAD.to_le_bytes());
        file[32..40].copy_from_slice(&64u64.to_le_bytes());
        file[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        file[56..58].copy_from_slice(&2u16.to_le_bytes());
        let phdr =
            |file: &mut Vec<u8>, at: usize, off: u64, paddr: u64, filesz: u64, memsz: u64| {
                file[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
                file[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
                file[at + 16..at + 24].copy_from_slice(&(paddr + START_KERNEL_MAP).to_le_bytes());
                file[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
                file[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
                file[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
            };
        phdr(
            &mut file,
            64,
            text_off,
            LOAD,
            text.len() as u64,
            text.len() as u64,
        );
        let data_len = data_len as u64;
        phdr(
            &mut file,
            120,
            data_off,
            LOAD + (2 << 20),
            data_len,
            data_len + 0x100,
        );
        file[text_off as usize..data_off as usize].copy_from_slice(text);
        file
    }

    pub(crate) fn with_trailer(mut stream: Vec<u8>, len: usize) -> Vec<u8> {
        stream.extend_from_slice(&(len as u32).to_le_bytes());
        stream
    }

    pub(crate) fn lz4_payload(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(block) {
            let compressed = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            out.extend_from_slice(&compressed);
        }
        with_trailer(out, data.len())
    }

    /// A table as relocs.c lays it out after the ELF file.
    pub(crate) fn table(abs32: &[u32], inverse32: &[u32], abs64: &[u32]) -> Vec<u8> {
        let mut forward: Vec<u32> = vec![0];
        forward.extend(abs64.iter().rev());
        forward.push(0);
        forward.extend(inverse32.iter().rev());
        forward.push(0);
        forward.extend(abs32.iter().rev());
        forward.iter().flat_map(|e| e.to_le_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn every_supported_format_decompresses_to_its_trailer_length() {
        use std::io::Write;
        let data = sample(3 * LZ4_LEGACY_BLOCK / 2);
        let lz4 = lz4_payload(&data, LZ4_LEGACY_BLOCK);
        assert_eq!(Compression::of(&lz4), Compression::Lz4);
        assert_eq!(decompress(&lz4, u64::MAX), Ok(data.clone()));

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        assert!(gz.write_all(&data).is_ok());
        let gz = gz.finish().unwrap_or_default();
        assert_eq!(Compression::of(&gz), Compression::Gzip);
        assert_eq!(decompress(&gz, u64::MAX), Ok(data.clone()));

        let small = sample(100_000);
        let zstd = ruzstd::encoding::compress_to_vec(
            small.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let zstd = with_trailer(zstd, small.len());
        assert_eq!(Compression::of(&zstd), Compression::Zstd);
        assert_eq!(decompress(&zstd, u64::MAX), Ok(small));
    }

    #[test]
    fn bad_payloads_are_named_errors() {
        let data = sample(10_000);
        let lz4 = lz4_payload(&data, 4096);
        // The trailer lies: longer and shorter.
        let mut longer = lz4.clone();
        let n = longer.len();
        longer[n - 4..].copy_from_slice(&10_001u32.to_le_bytes());
        assert_eq!(
            decompress(&longer, u64::MAX),
            Err(PayloadError::LengthMismatch {
                format: "lz4",
                declared: 10_001,
                got: 10_000
            })
        );
        let mut shorter = lz4.clone();
        shorter[n - 4..].copy_from_slice(&9_999u32.to_le_bytes());
        assert!(decompress(&shorter, u64::MAX).is_err());
        // Larger than allowed.
        assert_eq!(
            decompress(&lz4, 9_999),
            Err(PayloadError::TooLarge {
                declared: 10_000,
                max: 9_999
            })
        );
        // A block size running past the end, and a cut stream.
        let mut cut = lz4[..n - 40].to_vec();
        cut.extend_from_slice(&10_000u32.to_le_bytes());
        assert!(decompress(&cut, u64::MAX).is_err());
        let mut huge_block = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        huge_block.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decompress(&with_trailer(huge_block, 10), u64::MAX).is_err());
        // Garbage, too short, and formats left to the guest.
        assert_eq!(
            decompress(&[0x02, 0x21], 100),
            Err(PayloadError::Truncated(2))
        );
        let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3];
        gz = with_trailer(gz, 5);
        assert!(matches!(
            decompress(&gz, 100),
            Err(PayloadError::Corrupt { format: "gzip", .. })
        ));
        let xz = with_trailer(vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2], 5);
        assert_eq!(decompress(&xz, 100), Err(PayloadError::Unsupported("xz")));
        let zstd = with_trailer(vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff], 5);
        assert!(decompress(&zstd, 100).is_err());
    }

    #[test]
    fn elf_segments_and_extent_are_read_and_checked() {
        let file = elf(&[0x90; 0x2000], 0x3000);
        let vmlinux = Vmlinux::parse(&file, file.len() as u64, LOAD);
        let Ok(vmlinux) = vmlinux else {
            panic!("{vmlinux:?}");
        };
        assert_eq!(vmlinux.entry, LOAD);
        assert_eq!(vmlinux.start, LOAD);
        assert_eq!(vmlinux.end, LOAD + (2 << 20) + 0x3100);
        assert_eq!(vmlinux.file_end, file.len() as u64);
        assert_eq!(vmlinux.segments.len(), 2);

        // Below LOAD_PHYSICAL_ADDR, beyond the file, filesz > memsz, a bad entry.
        assert!(Vmlinux::parse(&file, file.len() as u64, LOAD + 1).is_err());
        let mut past_end = file.clone();
        past_end[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Vmlinux::parse(&past_end, past_end.len() as u64, LOAD).is_err());
        let mut bigger = file.clone();
        bigger[120 + 32..120 + 40].copy_from_slice(&0x4000u64.to_le_bytes());
        assert!(Vmlinux::parse(&bigger, bigger.len() as u64, LOAD).is_err());
        let mut entry = file.clone();
        entry[24..32].copy_from_slice(&(LOAD + 0x10_0000).to_le_bytes());
        assert!(Vmlinux::parse(&entry, entry.len() as u64, LOAD).is_err());
        let mut phnum = file.clone();
        phnum[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(Vmlinux::parse(&phnum, phnum.len() as u64, LOAD).is_err());
        assert!(Vmlinux::parse(&file[..40], 40, LOAD).is_err());
        assert!(
            Vmlinux::parse(
                b"not an elf file at all, but long enough to have a header......",
                64,
                LOAD
            )
            .is_err()
        );
    }

    /// Records where a [`Placer`] put what, in a flat image from the load address.
    #[derive(Default)]
    struct Image {
        started: Option<Vmlinux>,
        bytes: Vec<u8>,
    }

    impl Place for Image {
        fn start(&mut self, vmlinux: &Vmlinux) -> Result<(), PayloadError> {
            assert!(self.started.is_none(), "started twice");
            self.started = Some(vmlinux.clone());
            self.bytes = vec![0; (vmlinux.end - vmlinux.start) as usize];
            Ok(())
        }

        fn bytes(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PayloadError> {
            let at = offset as usize;
            self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
            Ok(())
        }
    }

    /// A kernel with a 32-bit, an inverse 32-bit and a 64-bit field in its text and a
    /// 64-bit one in its data, and its relocation table.
    fn relocatable() -> (Vec<u8>, usize, [u64; 4]) {
        let mut text = vec![0u8; 0x2000];
        text[0x10..0x14].copy_from_slice(&0x8100_0040u32.to_le_bytes());
        text[0x20..0x24].copy_from_slice(&0x0000_1000u32.to_le_bytes());
        text[0x30..0x38].copy_from_slice(&0xffff_ffff_8100_0080u64.to_le_bytes());
        let mut file = elf(&text, 0x1000);
        let data_field = file.len() - 0x1000 + 8;
        file[data_field..data_field + 8].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        let elf_len = file.len();
        let va = |paddr: u64| (paddr + START_KERNEL_MAP) as u32;
        let fields = [LOAD + 0x10, LOAD + 0x20, LOAD + 0x30, LOAD + (2 << 20) + 8];
        file.extend(table(
            &[va(fields[0])],
            &[va(fields[1])],
            &[va(fields[2]), va(fields[3])],
        ));
        (file, elf_len, fields)
    }

    #[test]
    fn the_placer_streams_segments_to_their_places_and_keeps_the_table() {
        let (file, elf_len, _) = relocatable();
        // Through the LZ4 decoder, in blocks smaller than the headers' first read.
        for block in [100, 4096, 1 << 20] {
            let payload = lz4_payload(&file, block);
            let n = payload.len();
            let mut placer = Placer::new(LOAD, file.len() as u64, Image::default());
            let trailer = *payload.last_chunk::<4>().unwrap_or(&[0; 4]);
            let got = decompress_into(
                Compression::Lz4,
                &payload[..],
                n as u64,
                trailer,
                u64::MAX,
                &mut placer,
            );
            assert_eq!(got, Ok(file.len() as u64));
            let Ok((vmlinux, tail, image)) = placer.finish() else {
                panic!("finish");
            };
            assert_eq!(vmlinux.file_end, elf_len as u64);
            assert_eq!(tail, file[elf_len..]);
            assert_eq!(image.started.as_ref(), Some(&vmlinux));
            // Text at 0, data 2 MiB above, each from its file offset; bss left zero.
            assert_eq!(image.bytes[..0x2000], file[0x1000..0x3000]);
            assert_eq!(
                image.bytes[2 << 20..(2 << 20) + 0x1000],
                file[0x3000..0x4000]
            );
            assert!(image.bytes[0x2000..2 << 20].iter().all(|b| *b == 0));
        }
        // More bytes after the ELF file than a table of this image can have: refused.
        let mut bloated = file[..elf_len].to_vec();
        bloated.resize(elf_len + (2 << 20) + 0x1100 + 16, 0);
        let mut placer = Placer::new(LOAD, bloated.len() as u64, Image::default());
        let put = placer.put(0, &bloated);
        assert!(
            matches!(&put, Err(PayloadError::BadRelocations(m)) if m.contains("more than")),
            "{put:?}"
        );
        // Not an ELF file: refused once the headers are in.
        let mut placer = Placer::new(LOAD, 100, Image::default());
        assert!(placer.put(0, &[1u8; 100]).is_ok());
        assert!(placer.finish().is_err());
    }

    #[test]
    fn relocations_move_the_kernel_as_the_guest_decompressor_would() {
        let (data, elf_len, fields) = relocatable();
        let Ok(vmlinux) = Vmlinux::parse(&data, data.len() as u64, LOAD) else {
            panic!("parse");
        };
        assert_eq!(vmlinux.file_end, elf_len as u64);
        let Ok(Some(relocs)) = Relocations::parse(&data[elf_len..]) else {
            panic!("relocations");
        };
        let Ok(sites) = vmlinux.sites(&relocs).collect::<Result<Vec<_>, _>>() else {
            panic!("sites");
        };
        let kinds: Vec<_> = sites
            .iter()
            .map(|s| (vmlinux.segments[s.segment].paddr + s.offset, s.field))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (fields[0], Field::Abs32),
                (fields[1], Field::Inverse32),
                (fields[2], Field::Abs64),
                (fields[3], Field::Abs64),
            ]
        );
        assert_eq!(
            sites.iter().map(|s| s.segment).collect::<Vec<_>>(),
            [0, 0, 0, 1]
        );
        let delta = 0x1e00_0000;
        assert_eq!(sites[0].relocate(0x8100_0040, delta), 0x9f00_0040);
        assert_eq!(
            sites[1].relocate(0x1000, delta),
            u64::from(0x1000u32.wrapping_sub(0x1e00_0000))
        );
        assert_eq!(
            sites[2].relocate(0xffff_ffff_8100_0080, delta),
            0xffff_ffff_9f00_0080
        );
        // 32-bit fields wrap in 32 bits, as the C code's do.
        assert_eq!(sites[0].relocate(0xffff_fff0, 0x20), 0x10);

        // Nothing after the file: no table. A field outside the loaded bytes (the bss
        // of the data segment): refused.
        assert_eq!(Relocations::parse(&[]), Ok(None));
        let va = |paddr: u64| (paddr + START_KERNEL_MAP) as u32;
        let bss = table(&[], &[], &[va(LOAD + (2 << 20) + 0x1000)]);
        let Ok(Some(outside)) = Relocations::parse(&bss) else {
            panic!("relocations");
        };
        assert!(vmlinux.sites(&outside).any(|site| site.is_err()));
        let straddling = table(&[va(LOAD + 0x1ffe)], &[], &[]);
        let Ok(Some(straddling)) = Relocations::parse(&straddling) else {
            panic!("relocations");
        };
        assert!(vmlinux.sites(&straddling).any(|site| site.is_err()));
        // Malformed tables: missing terminators. Bytes before a whole table are not
        // looked at, as the guest decompressor reads the table from its end.
        assert!(Relocations::parse(&[1, 0, 0, 0]).is_err());
        assert!(Relocations::parse(&[0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut stray = vec![9, 0, 0, 0, 7];
        stray.extend(table(&[5], &[], &[6]));
        assert_eq!(
            Relocations::parse(&stray),
            Ok(Some(Relocations {
                abs32: vec![5],
                inverse32: vec![],
                abs64: vec![6]
            }))
        );
    }

    #[test]
    fn kaslr_slots_match_the_decompressors_count() {
        // The Debian 6.1 cloud kernel: 46 MiB image from 16 MiB in the 1 GiB mapping.
        let size = 0x2e0_0000;
        assert_eq!(
            slots(LOAD, size, KERNEL_IMAGE_SIZE, 2 << 20),
            1 + (KERNEL_IMAGE_SIZE - LOAD - size) / (2 << 20)
        );
        assert_eq!(
            slots(LOAD, KERNEL_IMAGE_SIZE, KERNEL_IMAGE_SIZE, 2 << 20),
            0
        );
        assert_eq!(
            slots(LOAD, KERNEL_IMAGE_SIZE - LOAD, KERNEL_IMAGE_SIZE, 2 << 20),
            1
        );
        assert_eq!(slots(LOAD, 1, KERNEL_IMAGE_SIZE, 0), 0);
    }

    /// A [`Place`] that checks the contract the guest's relies on: every piece lies in
    /// `[0, end - base)` of the image `start` announced, and `start` comes first.
    struct Bounded {
        size: Option<u64>,
    }

    impl Place for Bounded {
        fn start(&mut self, vmlinux: &Vmlinux) -> Result<(), PayloadError> {
            assert!(self.size.is_none());
            assert!(vmlinux.start >= LOAD && vmlinux.end >= vmlinux.start);
            self.size = Some(vmlinux.end - LOAD);
            Ok(())
        }

        fn bytes(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PayloadError> {
            let size = self.size.unwrap_or(0);
            assert!(
                offset + bytes.len() as u64 <= size,
                "{offset:#x}+{:#x} > {size:#x}",
                bytes.len()
            );
            Ok(())
        }
    }

    proptest::proptest! {
        /// A kernel image is user input: a corrupted payload (any bytes changed, in any
        /// format, trailer included) never panics, never writes outside the image it
        /// announced, and every relocation site it yields lies inside its segment.
        #[test]
        fn corrupted_payloads_are_refused_or_stay_in_bounds(
            format in 0..3u8,
            edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..8),
        ) {
            use std::io::Write;
            let (file, _, _) = relocatable();
            let mut payload = match format {
                0 => lz4_payload(&file, 1024),
                1 => {
                    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    proptest::prop_assert!(gz.write_all(&file).is_ok());
                    gz.finish().unwrap_or_default()
                }
                _ => with_trailer(
                    ruzstd::encoding::compress_to_vec(&file[..], ruzstd::encoding::CompressionLevel::Fastest),
                    file.len(),
                ),
            };
            for (at, byte) in edits {
                let i = at.index(payload.len());
                payload[i] = byte;
            }
            let n = payload.len();
            let trailer = *payload.last_chunk::<4>().unwrap_or(&[0; 4]);
            let mut placer = Placer::new(LOAD, u64::from(u32::from_le_bytes(trailer)), Bounded { size: None });
            let format = Compression::of(&payload);
            if decompress_into(format, &payload[..], n as u64, trailer, 1 << 24, &mut placer).is_ok()
                && let Ok((vmlinux, tail, _)) = placer.finish()
                && let Ok(Some(table)) = Relocations::parse(&tail)
            {
                proptest::prop_assert!(tail.len() as u64 <= vmlinux.end - vmlinux.start + 12);
                for site in vmlinux.sites(&table).flatten() {
                    let segment = vmlinux.segments[site.segment];
                    proptest::prop_assert!(site.offset + site.field.size() <= segment.filesz);
                }
            }
        }
    }
}
