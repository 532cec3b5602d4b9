//! kdump-compressed dumps (makedumpfile's format, as QEMU's `dump-guest-memory -z|-l|-s`
//! and `virsh dump --memory-only --format kdump-*` write it), in both its variants: the
//! seekable file and the *flattened* stream (a `makedumpfile` header, then records of
//! `(offset, size)` big-endian and `size` bytes to put at `offset` of the seekable file).
//!
//! ```text
//! block 0                    disk_dump_header: "KDUMP   ", header_version, utsname,
//!                            block_size (+428), sub_hdr_size (+432), bitmap_blocks (+436),
//!                            max_mapnr (+440, 32-bit), nr_cpus (+460)
//! block 1..                  kdump_sub_header: phys_base, ..., offset/size of VMCOREINFO
//!                            (+32/+40), of the ELF notes (+48/+56), max_mapnr_64 (+96,
//!                            header_version 6 and later)
//! 1 + sub_hdr_size           two bitmaps of bitmap_blocks / 2 blocks each: the 1st marks
//!                            the PFNs that are RAM, the 2nd those whose page is dumped
//! 1 + sub_hdr + bitmap       one page descriptor (offset u64, size u32, flags u32,
//!                            page_flags u64) per bit set in the 2nd bitmap, in PFN order
//! ...                        the pages' data: raw (flags 0, size = block_size) or
//!                            compressed with zlib (1), LZO (2), Snappy (4) or zstd (0x20)
//! ```
//!
//! Guest memory is RAM as the 1st bitmap says (runs of PFNs, so holes stay "outside
//! memory"), backed by anonymous memory that is filled **on demand**: before a walk,
//! [`Kdump::load_tables`] decompresses the pages the walk will read (the root table
//! and every table a present non-leaf entry points to, level by level, each page once),
//! so the cost is per table page, not per page of RAM. Each page is decompressed into a
//! buffer of exactly one page: a page whose data is larger than a block or that does not
//! decompress to exactly one page is an error naming its PFN (no decompression bomb can
//! allocate more). A RAM page the dump left out (makedumpfile excludes zero and free
//! pages) reads as zeros.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::elf::NoteSet;
use super::{DumpError, Segment, le32, le64};

/// The first 8 bytes of a kdump-compressed file.
pub const SIGNATURE: &[u8; 8] = b"KDUMP   ";
/// The first bytes of a flattened stream.
pub const FLAT_SIGNATURE: &[u8; 12] = b"makedumpfile";
/// The flattened stream's header size.
const FLAT_HEADER_LEN: u64 = 4096;
/// The page size this reads (x86-64).
const PAGE: u64 = 4096;
/// Bytes of a page descriptor.
const DESC_LEN: u64 = 24;
/// Page data flags.
const ZLIB: u32 = 0x1;
const LZO: u32 = 0x2;
const SNAPPY: u32 = 0x4;
const ZSTD: u32 = 0x20;
/// The most RAM runs accepted (real dumps have a handful).
const MAX_RUNS: usize = 4096;
/// The most bytes of notes or VMCOREINFO read.
const MAX_NOTES: u64 = 64 << 20;

/// A piece of a flattened stream: `(offset in the seekable file, length, offset in the
/// stream)`.
type Extent = (u64, u64, u64);

/// Where the seekable file's bytes are: the file itself, or extents of a flattened
/// stream.
#[derive(Debug)]
enum Source {
    Seekable,
    /// Sorted by offset, disjoint.
    Flattened(Vec<Extent>),
}

/// An opened kdump-compressed file.
#[derive(Debug)]
pub struct Kdump {
    file: File,
    path: PathBuf,
    source: Source,
    /// Size of the (reassembled) seekable file.
    len: u64,
    max_mapnr: u64,
    /// The 2nd bitmap (dumped pages).
    dumped: Vec<u8>,
    /// Set bits of `dumped` before each 64-bit word, for a page's descriptor index.
    rank: Vec<u64>,
    descriptors: u64,
    flattened: bool,
}

pub use super::LoadStats;

fn be64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_be_bytes(w)
}

impl Kdump {
    /// Whether the file is a flattened stream.
    pub fn is_flattened(&self) -> bool {
        self.flattened
    }

    fn bad(&self, reason: String) -> DumpError {
        malformed(&self.path, self.flattened, reason)
    }

    /// Reads `buf.len()` bytes at `offset` of the seekable file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DumpError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(self.bad(format!(
                "{} bytes at offset {offset:#x} run past its end ({} bytes)",
                buf.len(),
                self.len
            )));
        }
        let io = |source| DumpError::Read {
            path: self.path.clone(),
            source,
        };
        match &self.source {
            Source::Seekable => self.file.read_exact_at(buf, offset).map_err(io),
            Source::Flattened(extents) => {
                let mut done = 0usize;
                while done < buf.len() {
                    let at = offset + done as u64;
                    let i = extents.partition_point(|e| e.0 + e.1 <= at);
                    let Some(&(start, len, stream)) = extents.get(i).filter(|e| e.0 <= at) else {
                        return Err(self.bad(format!(
                            "offset {at:#x} of the dump is in no record of the flattened stream"
                        )));
                    };
                    let n = ((start + len - at) as usize).min(buf.len() - done);
                    self.file
                        .read_exact_at(&mut buf[done..done + n], stream + (at - start))
                        .map_err(io)?;
                    done += n;
                }
                Ok(())
            }
        }
    }

    fn read_vec(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, DumpError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(self.bad(format!(
                "its {what} ({len} bytes at offset {offset:#x}) would run past its end ({} bytes)",
                self.len
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Whether PFN `pfn`'s page is in the dump.
    fn is_dumped(&self, pfn: u64) -> bool {
        pfn < self.max_mapnr && self.dumped[(pfn / 8) as usize] & (1 << (pfn % 8)) != 0
    }

    /// The page of `pfn`, decompressed into exactly one page; `None` when the dump left it
    /// out.
    pub fn page(&self, pfn: u64) -> Result<Option<Vec<u8>>, DumpError> {
        if !self.is_dumped(pfn) {
            return Ok(None);
        }
        let word = (pfn / 64) as usize;
        let bytes = &self.dumped[word * 8..(word * 8 + 8).min(self.dumped.len())];
        let mut w = [0u8; 8];
        w[..bytes.len()].copy_from_slice(bytes);
        let below = u64::from_le_bytes(w) & ((1u64 << (pfn % 64)) - 1);
        let index = self.rank[word] + u64::from(below.count_ones());
        let mut desc = [0u8; DESC_LEN as usize];
        self.read_at(&mut desc, self.descriptors + index * DESC_LEN)?;
        let (offset, size, flags) = (le64(&desc, 0), le32(&desc, 8), le32(&desc, 12));
        let bad_page = |reason: String| self.bad(format!("the page of PFN {pfn:#x} {reason}"));
        if u64::from(size) > PAGE {
            return Err(bad_page(format!(
                "is stored in {size} bytes, more than a page"
            )));
        }
        let data = self.read_vec(offset, u64::from(size), "page")?;
        let mut page = vec![0u8; PAGE as usize];
        let produced = match flags & (ZLIB | LZO | SNAPPY | ZSTD) {
            0 if size as u64 == PAGE => {
                page.copy_from_slice(&data);
                Ok(PAGE as usize)
            }
            0 => Err(format!("is stored raw in {size} bytes, not a page")),
            ZLIB => inflate(&data, &mut page),
            SNAPPY => snap::raw::Decoder::new()
                .decompress(&data, &mut page)
                .map_err(|e| e.to_string()),
            LZO => super::lzo::decompress(&data, &mut page).map_err(|e| e.to_string()),
            ZSTD => unzstd(&data, &mut page),
            other => Err(format!("has unknown compression flags {other:#x}")),
        }
        .map_err(|e| bad_page(format!("does not decompress: {e}")))?;
        if produced != PAGE as usize {
            return Err(bad_page(format!(
                "decompresses to {produced} bytes, not one page"
            )));
        }
        Ok(Some(page))
    }

    /// Decompresses into `memory` every page a walk from `root` (in `levels`-level
    /// paging) will read (see the module docs).
    pub fn load_tables(
        &self,
        memory: &GuestMemoryMmap,
        root: u64,
        levels: u8,
    ) -> Result<LoadStats, DumpError> {
        super::load_tables(memory, root, levels, |pfn| {
            Ok(match self.page(pfn)? {
                Some(page) => super::Page::Data(page),
                None => super::Page::Absent,
            })
        })
    }
}

fn inflate(data: &[u8], page: &mut [u8]) -> Result<usize, String> {
    let mut z = flate2::Decompress::new(true);
    match z.decompress(data, page, flate2::FlushDecompress::Finish) {
        Ok(flate2::Status::StreamEnd) => Ok(z.total_out() as usize),
        Ok(_) => Err("the zlib stream does not end within one page".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn unzstd(data: &[u8], page: &mut [u8]) -> Result<usize, String> {
    let mut decoder = ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| e.to_string())?;
    let mut n = 0;
    while n < page.len() {
        match decoder.read(&mut page[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut extra = [0u8; 1];
    if matches!(decoder.read(&mut extra), Ok(1)) {
        return Err("the zstd frame holds more than one page".into());
    }
    Ok(n)
}

fn malformed(path: &Path, flattened: bool, reason: String) -> DumpError {
    DumpError::Malformed {
        path: path.to_owned(),
        format: if flattened {
            "kdump-compressed dump (flattened)"
        } else {
            "kdump-compressed dump"
        },
        reason,
    }
}

/// Reads a flattened stream's records: where each piece of the seekable file is.
fn flat_extents(path: &Path, file: &File, file_len: u64) -> Result<(Vec<Extent>, u64), DumpError> {
    let bad = |reason: String| malformed(path, true, reason);
    let io = |source| DumpError::Read {
        path: path.to_owned(),
        source,
    };
    let mut extents = Vec::new();
    let mut at = FLAT_HEADER_LEN;
    let mut total = 0u64;
    loop {
        if file_len.saturating_sub(at) < 16 {
            return Err(bad(format!(
                "its record at {at:#x} is cut off: the stream has no end marker"
            )));
        }
        let mut h = [0u8; 16];
        file.read_exact_at(&mut h, at).map_err(io)?;
        let (offset, size) = (be64(&h[..8]), be64(&h[8..]));
        if offset == u64::MAX && size == u64::MAX {
            break;
        }
        let data = at + 16;
        let fits = offset
            .checked_add(size)
            .zip(data.checked_add(size))
            .is_some_and(|(_, end)| end <= file_len);
        if !fits || offset >> 62 != 0 {
            return Err(bad(format!(
                "its record at {at:#x} ({size} bytes for offset {offset:#x}) runs past the end of the stream ({file_len} bytes)"
            )));
        }
        if size > 0 {
            extents.push((offset, size, data));
            total = total.max(offset + size);
        }
        at = data + size;
    }
    extents.sort_unstable();
    for w in extents.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(bad(format!(
                "two records write offset {:#x}: the stream overlaps itself",
                w[1].0
            )));
        }
    }
    Ok((extents, total))
}

/// Parses a kdump-compressed file (`flattened`: a flattened stream, as its first bytes
/// say): its headers, bitmaps and notes.
/// Returns the reader, the RAM segments, and the notes.
pub(crate) fn open(
    path: &Path,
    file: File,
    file_len: u64,
    flattened: bool,
) -> Result<(Kdump, Vec<Segment>, NoteSet), DumpError> {
    let (source, len) = if flattened {
        let (extents, total) = flat_extents(path, &file, file_len)?;
        (Source::Flattened(extents), total)
    } else {
        (Source::Seekable, file_len)
    };
    let mut k = Kdump {
        file,
        path: path.to_owned(),
        source,
        len,
        max_mapnr: 0,
        dumped: Vec::new(),
        rank: Vec::new(),
        descriptors: 0,
        flattened,
    };
    let header = k.read_vec(0, 464, "header")?;
    if &header[..8] != SIGNATURE {
        return Err(k.bad("its header has no \"KDUMP   \" signature".into()));
    }
    let version = le32(&header, 8);
    let block_size = u64::from(le32(&header, 428));
    let sub_hdr_size = u64::from(le32(&header, 432));
    let bitmap_blocks = u64::from(le32(&header, 436));
    if block_size != PAGE {
        return Err(k.bad(format!(
            "block_size is {block_size}; x86-64 dumps have 4096-byte blocks"
        )));
    }
    if bitmap_blocks == 0 || bitmap_blocks % 2 != 0 {
        return Err(k.bad(format!(
            "bitmap_blocks is {bitmap_blocks}: two bitmaps of equal size are expected"
        )));
    }
    let sub = k.read_vec(block_size, 104, "sub-header")?;
    let max_mapnr = if version >= 6 {
        le64(&sub, 96)
    } else {
        u64::from(le32(&header, 440))
    };
    let bitmap_at = (1 + sub_hdr_size) * block_size;
    let half = bitmap_blocks / 2 * block_size;
    if max_mapnr.div_ceil(8) > half {
        return Err(k.bad(format!(
            "max_mapnr {max_mapnr} needs bitmaps of {} bytes; they have {half}",
            max_mapnr.div_ceil(8)
        )));
    }
    let ram = k.read_vec(bitmap_at, half, "1st bitmap")?;
    let dumped = k.read_vec(bitmap_at + half, half, "2nd bitmap")?;
    // Rank: dumped pages before each 64-bit word.
    let mut rank = Vec::with_capacity(dumped.len() / 8 + 1);
    let mut count = 0u64;
    for chunk in dumped.chunks(8) {
        rank.push(count);
        count += chunk.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
    }
    k.descriptors = bitmap_at + 2 * half;
    // Every dumped page's descriptor must be in the file.
    let descriptors_end = count
        .checked_mul(DESC_LEN)
        .and_then(|n| n.checked_add(k.descriptors));
    if descriptors_end.is_none_or(|end| end > k.len) {
        return Err(k.bad(format!(
            "its 2nd bitmap lists {count} pages, but their descriptors run past its end ({} bytes)",
            k.len
        )));
    }
    k.max_mapnr = max_mapnr;
    k.dumped = dumped;
    k.rank = rank;
    // RAM: runs of set bits in the 1st bitmap.
    let mut segments: Vec<Segment> = Vec::new();
    let mut pfn = 0u64;
    while pfn < max_mapnr {
        if ram[(pfn / 8) as usize] & (1 << (pfn % 8)) == 0 {
            pfn += 1;
            continue;
        }
        let start = pfn;
        while pfn < max_mapnr && ram[(pfn / 8) as usize] & (1 << (pfn % 8)) != 0 {
            pfn += 1;
        }
        if segments.len() == MAX_RUNS {
            return Err(k.bad(format!(
                "its 1st bitmap has more than {MAX_RUNS} runs of RAM"
            )));
        }
        segments.push(Segment {
            gpa: start * PAGE,
            len: (pfn - start) * PAGE,
            file_offset: 0,
        });
    }
    let mut notes = NoteSet::default();
    if version >= 4 {
        let (offset, size) = (le64(&sub, 48), le64(&sub, 56));
        if size > 0 {
            if size > MAX_NOTES {
                return Err(k.bad(format!("its notes are {size} bytes")));
            }
            let bytes = k.read_vec(offset, size, "ELF notes")?;
            notes
                .add(&bytes)
                .map_err(|reason| k.bad(format!("its ELF notes: {reason}")))?;
        }
    }
    if version >= 3 && notes.vmcoreinfo.is_empty() {
        let (offset, size) = (le64(&sub, 32), le64(&sub, 40));
        if size > 0 && size <= MAX_NOTES {
            let text = k.read_vec(offset, size, "VMCOREINFO")?;
            notes.add_vmcoreinfo(&text);
        }
    }
    Ok((k, segments, notes))
}

/// Anonymous guest memory for `segments` (filled later by [`Kdump::load_tables`]).
pub(crate) fn memory(path: &Path, segments: &[Segment]) -> Result<GuestMemoryMmap, DumpError> {
    let map_error = |gpa: u64, reason: String| DumpError::Map {
        path: path.to_owned(),
        offset: gpa,
        reason,
    };
    let mut regions = Vec::new();
    for g in segments {
        let len = usize::try_from(g.len).map_err(|_| map_error(g.gpa, "too large".into()))?;
        let region = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_error(g.gpa, e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(g.gpa))
                .ok_or_else(|| map_error(g.gpa, "overflows".into()))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_error(0, e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;

    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;
    use crate::dump::Dump;

    /// How the test writer stores pages.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Codec {
        Raw,
        Zlib,
        Lzo,
        Snappy,
    }

    fn compress(codec: Codec, page: &[u8]) -> (Vec<u8>, u32) {
        match codec {
            Codec::Raw => (page.to_vec(), 0),
            Codec::Zlib => {
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(page).unwrap();
                (z.finish().unwrap(), ZLIB)
            }
            Codec::Lzo => (lzokay_native::compress(page).unwrap(), LZO),
            Codec::Snappy => (
                snap::raw::Encoder::new().compress_vec(page).unwrap(),
                SNAPPY,
            ),
        }
    }

    /// A kdump-compressed file of `mem` as QEMU writes one (header version 6, notes),
    /// pages of zeros left out of the dump; flattened or not.
    pub(crate) fn write_kdump<M: GuestMemoryBackend>(
        mem: &M,
        notes: &[u8],
        codec: Codec,
        flattened: bool,
    ) -> Vec<u8> {
        let end = mem
            .iter()
            .map(|r| r.start_addr().0 + r.len())
            .max()
            .unwrap();
        let max_mapnr = end / PAGE;
        let half = max_mapnr.div_ceil(8).div_ceil(PAGE) * PAGE;
        let mut ram = vec![0u8; half as usize];
        let mut dumped = vec![0u8; half as usize];
        let mut pages = Vec::new();
        for pfn in 0..max_mapnr {
            let mut page = vec![0u8; PAGE as usize];
            if mem.read_slice(&mut page, GuestAddress(pfn * PAGE)).is_ok() {
                ram[(pfn / 8) as usize] |= 1 << (pfn % 8);
                if page.iter().any(|b| *b != 0) {
                    dumped[(pfn / 8) as usize] |= 1 << (pfn % 8);
                    pages.push(page);
                }
            }
        }
        let mut header = vec![0u8; PAGE as usize];
        header[..8].copy_from_slice(SIGNATURE);
        header[8..12].copy_from_slice(&6u32.to_le_bytes());
        header[428..432].copy_from_slice(&(PAGE as u32).to_le_bytes());
        header[432..436].copy_from_slice(&1u32.to_le_bytes());
        header[436..440].copy_from_slice(&((2 * half / PAGE) as u32).to_le_bytes());
        header[460..464].copy_from_slice(&1u32.to_le_bytes());
        let mut sub = vec![0u8; PAGE as usize];
        let notes_at = 2 * PAGE + 2 * half;
        let descs_at =
            notes_at.next_multiple_of(PAGE) + notes.len().next_multiple_of(PAGE as usize) as u64;
        sub[48..56].copy_from_slice(&notes_at.to_le_bytes());
        sub[56..64].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        sub[96..104].copy_from_slice(&max_mapnr.to_le_bytes());
        // Notes go between the bitmaps and the descriptors in this writer; a reader
        // takes them from the sub-header's offset.
        let mut file = header;
        file.extend_from_slice(&sub);
        file.extend_from_slice(&ram);
        file.extend_from_slice(&dumped);
        // The descriptors start right after the bitmaps.
        let descriptors = file.len() as u64;
        let data_at = descriptors + pages.len() as u64 * DESC_LEN;
        let mut descs = Vec::new();
        let mut data = Vec::new();
        for page in &pages {
            let (bytes, flags) = compress(codec, page);
            descs.extend_from_slice(&(data_at + data.len() as u64).to_le_bytes());
            descs.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            descs.extend_from_slice(&flags.to_le_bytes());
            descs.extend_from_slice(&0u64.to_le_bytes());
            data.extend_from_slice(&bytes);
        }
        file.extend_from_slice(&descs);
        file.extend_from_slice(&data);
        let notes_at = file.len() as u64;
        file.extend_from_slice(notes);
        file[PAGE as usize + 48..PAGE as usize + 56].copy_from_slice(&notes_at.to_le_bytes());
        let _ = descs_at;
        if !flattened {
            return file;
        }
        // The stream: a header block, then records of at most 64 KiB in shuffled order.
        let mut stream = vec![0u8; FLAT_HEADER_LEN as usize];
        stream[..12].copy_from_slice(FLAT_SIGNATURE);
        stream[16..24].copy_from_slice(&1u64.to_be_bytes());
        stream[24..32].copy_from_slice(&1u64.to_be_bytes());
        let chunks: Vec<(usize, &[u8])> = file
            .chunks(64 << 10)
            .enumerate()
            .map(|(i, c)| (i * (64 << 10), c))
            .collect();
        for (offset, chunk) in chunks.iter().rev() {
            stream.extend_from_slice(&(*offset as u64).to_be_bytes());
            stream.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
            stream.extend_from_slice(chunk);
        }
        stream.extend_from_slice(&u64::MAX.to_be_bytes());
        stream.extend_from_slice(&u64::MAX.to_be_bytes());
        stream
    }

    /// The test guest of `crate::dump::tests` and its core's notes.
    fn guest_and_notes() -> (vm_memory::GuestMemoryMmap, Vec<u8>) {
        let mem = crate::dump::tests::guest();
        let dir = tempfile::tempdir().unwrap();
        let (_, core) = crate::dump::tests::core(dir.path());
        // The notes are the PT_NOTE segment: its offset and size in the first phdr.
        let at = u64::from_le_bytes(core[64 + 8..64 + 16].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(core[64 + 32..64 + 40].try_into().unwrap()) as usize;
        (mem, core[at..at + len].to_vec())
    }

    #[test]
    fn every_codec_and_both_variants_give_the_raw_files_leaves() {
        let (mem, notes) = guest_and_notes();
        let expected = crate::dump::tests::leaves(&mem, 0x1000);
        let dir = tempfile::tempdir().unwrap();
        for codec in [Codec::Raw, Codec::Zlib, Codec::Lzo, Codec::Snappy] {
            for flattened in [false, true] {
                let path = dir.path().join(format!("{codec:?}-{flattened}.kdump"));
                std::fs::write(&path, write_kdump(&mem, &notes, codec, flattened)).unwrap();
                let dump = Dump::open(&path, None).unwrap();
                assert_eq!(dump.format, crate::dump::DumpFormat::Kdump { flattened });
                assert_eq!(dump.cpus.len(), 2, "{codec:?}");
                let regs = dump.control_registers(0).unwrap();
                let ctx = crate::dump::tests::long_mode(regs.cr3);
                let loaded = dump.prepare_walk(&ctx).unwrap().unwrap();
                // PML4, PDPT, PD and the PT in the high region: nothing else.
                assert_eq!((loaded.pages, loaded.missing), (4, 0), "{codec:?}");
                assert_eq!(
                    crate::dump::tests::leaves(dump.memory(), 0x1000),
                    expected,
                    "{codec:?} flattened={flattened}"
                );
                // Holes of RAM stay holes.
                assert_eq!(dump.segments.len(), 2);
            }
        }
    }

    fn refused(bytes: &[u8], words: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.kdump");
        std::fs::write(&path, bytes).unwrap();
        let e = Dump::open(&path, None)
            .and_then(|d| {
                let regs = d.control_registers(0)?;
                d.prepare_walk(&crate::dump::tests::long_mode(regs.cr3))
                    .map(|_| ())
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.kdump"), "{e}");
        for w in words {
            assert!(e.contains(w), "{w:?} not in {e}");
        }
    }

    #[test]
    fn bad_kdump_files_are_named_errors() {
        let (mem, notes) = guest_and_notes();
        let good = write_kdump(&mem, &notes, Codec::Zlib, false);
        // Truncated in the header, the bitmaps, the descriptors.
        refused(&good[..100], &["run past its end"]);
        refused(&good[..5000], &["run past its end"]);
        refused(&good[..3 * PAGE as usize], &["past its end"]);
        let descs = {
            let half = u32::from_le_bytes(good[436..440].try_into().unwrap()) as u64 / 2 * PAGE;
            (2 * PAGE + 2 * half) as usize
        };
        // A page stored in more than a page.
        let mut b = good.clone();
        b[descs + 8..descs + 12].copy_from_slice(&5000u32.to_le_bytes());
        refused(&b, &["is stored in 5000 bytes, more than a page"]);
        // A page whose data does not decompress (flags say zlib, data is garbage).
        let mut b = good.clone();
        let data = u64::from_le_bytes(b[descs..descs + 8].try_into().unwrap()) as usize;
        b[data..data + 8].copy_from_slice(&[0xff; 8]);
        refused(&b, &["does not decompress"]);
        // Snappy data that decompresses to less than a page.
        let mut b = good.clone();
        b[descs + 12..descs + 16].copy_from_slice(&SNAPPY.to_le_bytes());
        let small = snap::raw::Encoder::new().compress_vec(&[1u8; 100]).unwrap();
        b[data..data + small.len()].copy_from_slice(&small);
        b[descs + 8..descs + 12].copy_from_slice(&(small.len() as u32).to_le_bytes());
        refused(&b, &["decompresses to 100 bytes, not one page"]);
        // A 2nd bitmap that lists more pages than the file has descriptors for.
        let mut b = good.clone();
        let half = (descs - 2 * PAGE as usize) / 2;
        for byte in &mut b[2 * PAGE as usize + half..descs] {
            *byte = 0xff;
        }
        b.truncate(descs + 4096);
        refused(&b, &["descriptors run past its end"]);
        // Absurd sizes in the header.
        let mut b = good.clone();
        b[428..432].copy_from_slice(&65536u32.to_le_bytes());
        refused(&b, &["block_size is 65536"]);
        let mut b = good.clone();
        b[PAGE as usize + 96..PAGE as usize + 104].copy_from_slice(&u64::MAX.to_le_bytes());
        refused(&b, &["max_mapnr"]);
        // A flattened stream without its end marker, and one whose record runs past it.
        let flat = write_kdump(&mem, &notes, Codec::Zlib, true);
        refused(&flat[..flat.len() - 16], &["flattened", "no end marker"]);
        let mut b = flat.clone();
        b[4096 + 8..4096 + 16].copy_from_slice(&(1u64 << 40).to_be_bytes());
        refused(&b, &["flattened", "runs past the end of the stream"]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Bytes changed anywhere in a kdump file: an error or a walkable dump, never a
        /// panic.
        #[test]
        fn mutated_kdumps_never_panic(
            edits in proptest::collection::vec((0usize..40_000, proptest::prelude::any::<u8>()), 1..6),
            flattened in proptest::prelude::any::<bool>(),
        ) {
            static FILES: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
            let files = FILES.get_or_init(|| {
                let (mem, notes) = guest_and_notes();
                [
                    write_kdump(&mem, &notes, Codec::Lzo, false),
                    write_kdump(&mem, &notes, Codec::Snappy, true),
                ]
            });
            let mut b = files[usize::from(flattened)].clone();
            for (at, v) in &edits {
                let i = at % b.len();
                b[i] = *v;
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.kdump");
            std::fs::write(&path, &b).unwrap();
            if let Ok(d) = Dump::open(&path, None) {
                let _ = d.prepare_walk(&crate::dump::tests::long_mode(0x1000));
            }
        }
    }
}
