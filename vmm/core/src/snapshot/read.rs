//! Reading generations: verification, loading (base + diffs, copy-on-write), merging.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};
use walker::{ContextError, ControlRegisters, PagingContext};

use super::file::CrcReader;
use super::{
    DIFF_FORMAT_VERSION, DIFF_HEADER_LEN, DIFF_MAGIC, FORMAT_VERSION, OLDEST_FORMAT_VERSION,
    PAGE_SIZE, Result, STATE_MAGIC, SnapshotError, SnapshotKind, SnapshotState, data_file_name,
    state_file_name,
};
use crate::files::{FileError, Output, Replace, excerpt, open_input, read_bounded};
use crate::memory::{MemorySize, create_guest_memory};
use crate::sigbus::{self, FaultWatch};

/// The generations in `dir` (those with a state file), in order.
pub fn generations(dir: &Path) -> Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|source| SnapshotError::Io {
        op: "list",
        path: dir.to_owned(),
        source,
    })?;
    let mut found: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let digits = name.strip_prefix("gen-")?.strip_suffix(".state")?;
            (digits.len() == 6).then(|| digits.parse().ok())?
        })
        .collect();
    found.sort_unstable();
    Ok(found)
}

fn malformed(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The largest state file read: a few KiB per vCPU in practice.
pub const MAX_STATE_BYTES: u64 = 16 << 20;
/// Bytes of bad file content quoted in an error message.
const EXCERPT: usize = 48;

/// Reads and verifies the state file of `generation` (its header, length, CRC32, version
/// and consistency; not its data file).
pub fn read_state(dir: &Path, generation: u64) -> Result<SnapshotState> {
    let path = dir.join(state_file_name(generation));
    let bytes = match read_bounded(&path, "snapshot state file", MAX_STATE_BYTES) {
        Ok(bytes) => bytes,
        Err(FileError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(SnapshotError::Io {
                op: "read",
                path,
                source,
            });
        }
        Err(e) => return Err(e.into()),
    };
    parse_state(&path, generation, &bytes)
}

/// Parses and verifies a state file's bytes (see [`read_state`]).
pub fn parse_state(path: &Path, generation: u64, bytes: &[u8]) -> Result<SnapshotState> {
    let path = path.to_owned();
    let Some(newline) = bytes.iter().position(|b| *b == b'\n') else {
        return Err(malformed(
            &path,
            format!("no header line: it starts {}", excerpt(bytes, EXCERPT)),
        ));
    };
    let header = &bytes[..newline];
    let bad_header = || {
        malformed(
            &path,
            format!("bad header line {}", excerpt(header, EXCERPT)),
        )
    };
    let text = std::str::from_utf8(header).map_err(|_| bad_header())?;
    let fields: Vec<&str> = text.split(' ').collect();
    let [magic, version, len, crc] = fields[..] else {
        return Err(bad_header());
    };
    if magic != STATE_MAGIC {
        return Err(malformed(
            &path,
            format!(
                "it does not start with {STATE_MAGIC}: it starts {}",
                excerpt(header, EXCERPT)
            ),
        ));
    }
    let version: u64 = version.parse().map_err(|_| bad_header())?;
    if !readable_version(version) {
        return Err(SnapshotError::Version {
            path,
            found: version,
        });
    }
    let len: u64 = len.parse().map_err(|_| bad_header())?;
    if crc.len() != 8 {
        return Err(bad_header());
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|_| bad_header())?;
    let body = &bytes[newline + 1..];
    // The JSON, then one newline, then nothing.
    let expected = (newline as u64 + 1)
        .checked_add(len)
        .and_then(|n| n.checked_add(1))
        .ok_or_else(bad_header)?;
    if (bytes.len() as u64) < expected {
        return Err(SnapshotError::Truncated {
            path,
            expected,
            found: bytes.len() as u64,
        });
    }
    let json = &body[..len as usize];
    let trailer = &body[len as usize..];
    if trailer != b"\n" {
        return Err(malformed(
            &path,
            format!(
                "{} bytes after its JSON, where only a newline belongs: {}",
                trailer.len(),
                excerpt(trailer, EXCERPT)
            ),
        ));
    }
    let found = crc32fast::hash(json);
    if found != crc {
        return Err(SnapshotError::Checksum {
            path,
            expected: crc,
            found,
        });
    }
    let state: SnapshotState = serde_json::from_slice(json)
        .map_err(|e| malformed(&path, format!("bad state JSON: {e}")))?;
    check_state(&path, generation, &state)?;
    Ok(state)
}

/// Whether this VMM reads state files of format `version`.
fn readable_version(version: u64) -> bool {
    (u64::from(OLDEST_FORMAT_VERSION)..=u64::from(FORMAT_VERSION)).contains(&version)
}

fn check_state(path: &Path, generation: u64, state: &SnapshotState) -> Result<()> {
    if !readable_version(u64::from(state.version)) {
        return Err(SnapshotError::Version {
            path: path.to_owned(),
            found: u64::from(state.version),
        });
    }
    if state.generation != generation {
        return Err(malformed(
            path,
            format!("it says generation {}", state.generation),
        ));
    }
    let parent_ok = match state.kind {
        SnapshotKind::Full => state.parent.is_none(),
        SnapshotKind::Diff => generation > 0 && state.parent == Some(generation - 1),
    };
    if !parent_ok {
        return Err(malformed(
            path,
            format!(
                "a {:?} generation {generation} with parent {:?}",
                state.kind, state.parent
            ),
        ));
    }
    if state.page_size != PAGE_SIZE {
        return Err(malformed(path, format!("page size {}", state.page_size)));
    }
    if state.data.name != data_file_name(generation, state.kind) {
        return Err(malformed(path, format!("data file {:?}", state.data.name)));
    }
    let mut offset = 0;
    let mut end = 0;
    for r in &state.regions {
        let aligned = r.gpa % PAGE_SIZE == 0 && r.len % PAGE_SIZE == 0 && r.len > 0;
        if !aligned || r.file_offset != offset || r.gpa < end {
            return Err(malformed(path, format!("bad region {r:?}")));
        }
        offset += r.len;
        end = r
            .gpa
            .checked_add(r.len)
            .ok_or_else(|| malformed(path, "region overflow"))?;
    }
    if state.regions.is_empty() || state.vcpus.is_empty() {
        return Err(malformed(path, "no regions or no vCPUs"));
    }
    let with_kvm = state.vcpus.iter().filter(|v| v.kvm.is_some()).count();
    let partial = with_kvm != 0 && with_kvm != state.vcpus.len();
    if partial || (with_kvm == 0) != state.vm.is_none() {
        return Err(malformed(
            path,
            format!(
                "KVM state for {with_kvm} of {} vCPUs and {} the VM: all or nothing",
                state.vcpus.len(),
                if state.vm.is_some() { "for" } else { "not for" }
            ),
        ));
    }
    if state.version < 2 && state.vm.is_some() {
        return Err(malformed(path, "format 1 with KVM state (format 2's)"));
    }
    Ok(())
}

/// A generation loaded into memory: the base memory file mapped private (copy-on-write)
/// with every diff up to it applied. The files are never changed. `B` is the mapping's
/// dirty bitmap: none to read a snapshot, [`crate::memory::GuestRam`]'s to run it ([`load_for_restore`]).
#[derive(Debug)]
pub struct Snapshot<B: Bitmap = ()> {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The state of the generation loaded.
    pub state: SnapshotState,
    /// The generations applied, base first.
    pub chain: Vec<u64>,
    // Dropped before the memory: the watches end before the mapping goes.
    watches: Vec<FaultWatch>,
    memory: GuestMemoryMmap<B>,
}

impl<B: Bitmap> Snapshot<B> {
    /// Guest RAM at that generation.
    pub fn memory(&self) -> &GuestMemoryMmap<B> {
        &self.memory
    }

    /// The memory, and the watches of the memory file that must live as long as it
    /// is mapped (the memory's owner drops them first).
    pub fn into_parts(self) -> (SnapshotState, GuestMemoryMmap<B>, Vec<FaultWatch>) {
        (self.state, self.memory, self.watches)
    }

    /// Fails, naming the memory file, if it shrank while mapped, so that something read
    /// past its new end (and got zeros instead of its bytes). Call it after using the
    /// memory.
    pub fn check_intact(&self) -> Result<()> {
        if self.watches.iter().any(FaultWatch::faulted) {
            let path = self.dir.join(data_file_name(0, SnapshotKind::Full));
            return Err(malformed(
                &path,
                "it shrank while it was mapped: what was read past its new end is not the snapshot's",
            ));
        }
        Ok(())
    }

    /// Every file of the chain (state and data files), base first.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for (i, &g) in self.chain.iter().enumerate() {
            let kind = if i == 0 {
                SnapshotKind::Full
            } else {
                SnapshotKind::Diff
            };
            files.push(self.dir.join(state_file_name(g)));
            files.push(self.dir.join(data_file_name(g, kind)));
        }
        files
    }

    /// How the walker must read the tables of vCPU `vcpu` at that generation, with its
    /// saved CR3 or another root `cr3`: CR0, CR4, EFER, MAXPHYADDR and 1 GiB pages come
    /// from the state.
    pub fn paging_context(&self, vcpu: usize, cr3: Option<u64>) -> Result<PagingContext> {
        let record = self
            .state
            .vcpus
            .get(vcpu)
            .ok_or(SnapshotError::NoSuchVcpu {
                vcpu,
                count: self.state.vcpus.len(),
            })?;
        let s = &record.sregs;
        let regs = ControlRegisters {
            cr0: s.cr0,
            cr3: cr3.unwrap_or(s.cr3),
            cr4: s.cr4,
            efer: s.efer,
        };
        let paging = self.state.paging;
        (|| -> std::result::Result<PagingContext, ContextError> {
            Ok(PagingContext::new(regs)?
                .with_phys_addr_bits(paging.phys_addr_bits)?
                .with_gbpages(paging.gbpages))
        })()
        .map_err(|e| SnapshotError::Context {
            vcpu,
            reason: e.to_string(),
        })
    }
}

/// Reads the state of `generation`, which generation `needed_by` needs.
fn needed_state(dir: &Path, generation: u64, needed_by: u64) -> Result<SnapshotState> {
    match read_state(dir, generation) {
        Err(SnapshotError::Io { source, path, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Err(SnapshotError::MissingGeneration {
                path,
                generation,
                needed_by,
            })
        }
        other => other,
    }
}

/// How a load gets the memory file's bytes into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLoad {
    /// Map it private (copy-on-write), checking its length only: a page is read when
    /// first touched (a lazy restore; a damaged page is not detected).
    Lazy,
    /// Map it private, and read every byte first for its CRC32 ([`load`]).
    LazyVerified,
    /// Read it into anonymous guest memory, verifying its CRC32 on the way: nothing of
    /// the snapshot stays mapped (a restore that owns its memory from the start).
    Copy,
}

/// Loads generation `generation` of `dir` (default: the latest), verifying every file of
/// its chain (state checksums, data file lengths and checksums, versions, parents).
pub fn load(dir: &Path, generation: Option<u64>) -> Result<Snapshot> {
    load_with(dir, generation, |dir, base| {
        map_full(dir, base, MemoryLoad::LazyVerified)
    })
}

/// [`load`] into guest RAM a VM can run on (with its dirty bitmap), the memory file
/// loaded as `how` says; everything else is verified as by [`load`].
pub fn load_for_restore(
    dir: &Path,
    generation: Option<u64>,
    how: MemoryLoad,
) -> Result<Snapshot<AtomicBitmap>> {
    match how {
        MemoryLoad::Copy => load_with(dir, generation, |dir, base| {
            Ok((copy_full(dir, base)?, Vec::new()))
        }),
        lazy => load_with(dir, generation, |dir, base| map_full(dir, base, lazy)),
    }
}

/// [`load`] with the base generation's memory from `base`.
fn load_with<B: Bitmap>(
    dir: &Path,
    generation: Option<u64>,
    load_base: impl FnOnce(&Path, &SnapshotState) -> Result<(GuestMemoryMmap<B>, Vec<FaultWatch>)>,
) -> Result<Snapshot<B>> {
    let target = match generation {
        Some(g) => g,
        None => *generations(dir)?
            .last()
            .ok_or_else(|| SnapshotError::Empty(dir.to_owned()))?,
    };
    let mut states = Vec::new();
    let mut current = target;
    loop {
        let state = needed_state(dir, current, target)?;
        let parent = state.parent;
        states.push(state);
        match parent {
            Some(p) => current = p,
            None => break,
        }
    }
    states.reverse();
    let base = &states[0];
    for s in &states[1..] {
        if s.regions != base.regions {
            return Err(malformed(
                &dir.join(state_file_name(s.generation)),
                "its regions differ from the base generation's",
            ));
        }
    }
    let (memory, watches) = load_base(dir, base)?;
    for s in &states[1..] {
        apply_diff(dir, s, &memory)?;
    }
    let chain = states.iter().map(|s| s.generation).collect();
    let state = states
        .pop()
        .ok_or_else(|| SnapshotError::Empty(dir.to_owned()))?;
    Ok(Snapshot {
        dir: dir.to_owned(),
        state,
        chain,
        watches,
        memory,
    })
    .and_then(|snapshot| {
        // A memory file truncated while it was verified and diffs applied.
        snapshot.check_intact()?;
        Ok(snapshot)
    })
}

/// Opens a data file and checks its length against the state.
fn open_data(dir: &Path, state: &SnapshotState) -> Result<(PathBuf, File)> {
    let path = dir.join(&state.data.name);
    let input = match open_input(&path, "snapshot data file") {
        Ok(input) => input,
        Err(FileError::Empty { .. }) => {
            return Err(SnapshotError::Truncated {
                path,
                expected: state.data.len,
                found: 0,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let len = input.len();
    if len < state.data.len {
        return Err(SnapshotError::Truncated {
            path,
            expected: state.data.len,
            found: len,
        });
    }
    if len > state.data.len {
        return Err(malformed(
            &path,
            format!(
                "{len} bytes, longer than the {} its state says",
                state.data.len
            ),
        ));
    }
    Ok((path, input.into_file()))
}

fn checksum(path: &Path, expected: u32, found: u32) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(SnapshotError::Checksum {
            path: path.to_owned(),
            expected,
            found,
        })
    }
}

/// Maps the memory file of a full generation private and writable (copy-on-write) and
/// verifies its checksum.
fn map_full<B: NewBitmap>(
    dir: &Path,
    state: &SnapshotState,
    how: MemoryLoad,
) -> Result<(GuestMemoryMmap<B>, Vec<FaultWatch>)> {
    let (path, file) = open_data(dir, state)?;
    let total: u64 = state.regions.iter().map(|r| r.len).sum();
    if total != state.data.len {
        return Err(malformed(
            &path,
            format!("{} bytes for regions of {total}", state.data.len),
        ));
    }
    let map_error = |reason: String| SnapshotError::Map {
        path: path.clone(),
        reason,
    };
    let mut regions = Vec::new();
    let mut watches = Vec::new();
    for r in &state.regions {
        let len = usize::try_from(r.len).map_err(|_| map_error(format!("{r:?} is too large")))?;
        let fd = file.try_clone().map_err(|e| map_error(e.to_string()))?;
        let region = MmapRegionBuilder::<B>::new(len)
            .with_file_offset(FileOffset::new(fd, r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_error(e.to_string()))?;
        watches.push(
            sigbus::watch(region.as_ptr(), len, libc::PROT_READ | libc::PROT_WRITE)
                .map_err(|e| map_error(e.to_string()))?,
        );
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(r.gpa))
                .ok_or_else(|| map_error(format!("{r:?} overflows")))?,
        );
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| map_error(e.to_string()))?;
    if how == MemoryLoad::Lazy {
        return Ok((memory, watches));
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for r in &state.regions {
        let mut off = 0;
        while off < r.len {
            let n = (r.len - off).min(buf.len() as u64) as usize;
            let addr = r.gpa + off;
            memory
                .read_slice(&mut buf[..n], GuestAddress(addr))
                .map_err(|source| SnapshotError::Memory { addr, source })?;
            hasher.update(&buf[..n]);
            off += n as u64;
        }
    }
    checksum(&path, state.data.crc32, hasher.finalize())?;
    Ok((memory, watches))
}

/// Reads the memory file of a full generation into anonymous guest RAM (as a booted VM
/// has it: [`create_guest_memory`]), verifying its CRC32 on the way.
fn copy_full(dir: &Path, state: &SnapshotState) -> Result<crate::memory::GuestRam> {
    let (path, file) = open_data(dir, state)?;
    let total: u64 = state.regions.iter().map(|r| r.len).sum();
    let map_error = |reason: String| SnapshotError::Map {
        path: path.clone(),
        reason,
    };
    let size = MemorySize::from_bytes(total).map_err(|e| map_error(e.to_string()))?;
    let memory = create_guest_memory(size).map_err(|e| map_error(e.to_string()))?;
    let layout: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
    let recorded: Vec<(u64, u64)> = state.regions.iter().map(|r| (r.gpa, r.len)).collect();
    if layout != recorded {
        return Err(malformed(
            &dir.join(state_file_name(state.generation)),
            format!(
                "its regions {recorded:x?} are not those of a VM with {size} of RAM {layout:x?}"
            ),
        ));
    }
    let mut reader = CrcReader::new(BufReader::with_capacity(1 << 20, file));
    let mut buf = vec![0u8; 1 << 20];
    for r in &state.regions {
        let mut off = 0;
        while off < r.len {
            let n = (r.len - off).min(buf.len() as u64) as usize;
            reader
                .read_exact(&mut buf[..n])
                .map_err(|source| SnapshotError::Io {
                    op: "read",
                    path: path.clone(),
                    source,
                })?;
            let addr = r.gpa + off;
            memory
                .write_slice(&buf[..n], GuestAddress(addr))
                .map_err(|source| SnapshotError::Memory { addr, source })?;
            off += n as u64;
        }
    }
    let (_, crc) = reader.finish();
    checksum(&path, state.data.crc32, crc)?;
    Ok(memory)
}

/// Reads a diff's header and page list, checked.
pub(super) fn read_diff_header<R: Read>(
    path: &Path,
    state: &SnapshotState,
    reader: &mut R,
) -> Result<Vec<u64>> {
    let io_error = |source| SnapshotError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    };
    let mut header = [0u8; DIFF_HEADER_LEN as usize];
    reader.read_exact(&mut header).map_err(io_error)?;
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if header[..8] != DIFF_MAGIC {
        return Err(malformed(path, "no GWSNAPDF magic"));
    }
    let version = word(8) & 0xffff_ffff;
    if version != u64::from(DIFF_FORMAT_VERSION) {
        return Err(SnapshotError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    if word(8) >> 32 != PAGE_SIZE {
        return Err(malformed(path, format!("page size {}", word(8) >> 32)));
    }
    if word(16) != state.generation {
        return Err(malformed(path, format!("it says generation {}", word(16))));
    }
    let count = word(24);
    let expected = count
        .checked_mul(8 + PAGE_SIZE)
        .and_then(|b| b.checked_add(DIFF_HEADER_LEN));
    if count != state.pages || expected != Some(state.data.len) {
        return Err(malformed(
            path,
            format!(
                "{count} pages, but its state says {} pages in {} bytes",
                state.pages, state.data.len
            ),
        ));
    }
    let mut list = vec![0u8; (count * 8) as usize];
    reader.read_exact(&mut list).map_err(io_error)?;
    let pages: Vec<u64> = list
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    let mut previous: Option<u64> = None;
    for &gpa in &pages {
        let inside = state
            .regions
            .iter()
            .any(|r| gpa >= r.gpa && gpa - r.gpa < r.len);
        if gpa % PAGE_SIZE != 0 || !inside || previous.is_some_and(|p| p >= gpa) {
            return Err(malformed(
                path,
                format!("page {gpa:#x} is unaligned, out of order or outside guest RAM"),
            ));
        }
        previous = Some(gpa);
    }
    Ok(pages)
}

/// Applies a diff to `memory`, verifying it.
fn apply_diff<B: Bitmap>(
    dir: &Path,
    state: &SnapshotState,
    memory: &GuestMemoryMmap<B>,
) -> Result<()> {
    let (path, file) = open_data(dir, state)?;
    let mut reader = CrcReader::new(BufReader::with_capacity(1 << 20, file));
    let pages = read_diff_header(&path, state, &mut reader)?;
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for gpa in pages {
        reader
            .read_exact(&mut page)
            .map_err(|source| SnapshotError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
        memory
            .write_slice(&page, GuestAddress(gpa))
            .map_err(|source| SnapshotError::Memory { addr: gpa, source })?;
    }
    let (_, crc) = reader.finish();
    checksum(&path, state.data.crc32, crc)
}

/// The pages a generation's data file holds (every page of RAM for a full one).
pub fn diff_pages(dir: &Path, generation: u64) -> Result<Vec<GuestAddress>> {
    let state = read_state(dir, generation)?;
    if state.kind == SnapshotKind::Full {
        return Ok(state
            .regions
            .iter()
            .flat_map(|r| (0..r.len / PAGE_SIZE).map(move |i| GuestAddress(r.gpa + i * PAGE_SIZE)))
            .collect());
    }
    let (path, file) = open_data(dir, &state)?;
    let pages = read_diff_header(&path, &state, &mut BufReader::new(file))?;
    Ok(pages.into_iter().map(GuestAddress).collect())
}

/// Rebuilds guest RAM of `generation` (default: the latest) as a raw memory file `out`
/// (byte N = GPA N, as [`crate::memfile::dump`] writes it, so `vmm inspect --memory`
/// reads it). `out` is a new file unless `replace`; it is never one of the snapshot's
/// own files, nor inside the snapshot directory ([`crate::files::Output`]). Returns the
/// state of the generation merged.
pub fn merge(
    dir: &Path,
    generation: Option<u64>,
    out: &Path,
    replace: Replace,
) -> Result<SnapshotState> {
    merge_as(
        dir,
        generation,
        out,
        replace,
        "merged memory file",
        |snapshot, output| Ok(crate::memfile::dump_to(snapshot.memory(), output)?),
    )
}

/// Like [`merge`], but writes a QEMU-style ELF core ([`crate::dump::elf::write_core`]):
/// every RAM region as a `PT_LOAD` at its GPA, every vCPU's registers as `NT_PRSTATUS`
/// and `QEMU` notes, so `vmm inspect --dump OUT` walks it with the saved registers.
pub fn merge_elf(
    dir: &Path,
    generation: Option<u64>,
    out: &Path,
    replace: Replace,
) -> Result<SnapshotState> {
    merge_as(
        dir,
        generation,
        out,
        replace,
        "ELF core",
        |snapshot, output| {
            let vcpus: Vec<crate::dump::elf::CoreVcpu> = snapshot
                .state
                .vcpus
                .iter()
                .map(|v| (v.index, v.regs, v.sregs))
                .collect();
            Ok(crate::dump::elf::write_core(
                snapshot.memory(),
                &vcpus,
                output,
            )?)
        },
    )
}

/// Loads `generation` and writes it to `out` (a `what`) with `write`, never over one of
/// the snapshot's own files.
/// Like [`merge`], but writes a new snapshot directory `out` (new or empty, never the
/// snapshot's own directory or inside it) holding generation `generation` as one full
/// generation 0 with the same state (registers, KVM and device state, paging features,
/// address spaces): what `vmm restore` resumes exactly as it resumes the chain.
pub fn merge_snapshot(dir: &Path, generation: Option<u64>, out: &Path) -> Result<SnapshotState> {
    let absolute = |path: &Path| -> Option<PathBuf> {
        match path.canonicalize() {
            Ok(path) => Some(path),
            Err(_) => {
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.canonicalize().ok()?,
                    _ => std::env::current_dir().ok()?,
                };
                Some(parent.join(path.file_name()?))
            }
        }
    };
    if let (Some(dir_abs), Some(out_abs)) = (absolute(dir), absolute(out))
        && out_abs.starts_with(&dir_abs)
    {
        return Err(SnapshotError::OutputInsideSnapshot {
            out: out.to_owned(),
            dir: dir.to_owned(),
        });
    }
    let snapshot = load(dir, generation)?;
    let mut merged = super::SnapshotDir::create(out)?;
    merged.set_guest_cr3s(snapshot.state.guest_cr3s.clone());
    let state = &snapshot.state;
    merged.write(super::SnapshotSource {
        memory: snapshot.memory(),
        vcpus: state.vcpus.clone(),
        vm: state.vm.clone(),
        devices: state.devices.clone(),
        boot: state.boot.clone(),
        paging: state.paging,
        dirty: None,
    })?;
    snapshot.check_intact()?;
    Ok(snapshot.state)
}

fn merge_as(
    dir: &Path,
    generation: Option<u64>,
    out: &Path,
    replace: Replace,
    what: &'static str,
    write: impl FnOnce(&Snapshot, Output) -> Result<()>,
) -> Result<SnapshotState> {
    let snapshot = load(dir, generation)?;
    let files = snapshot.files();
    let inputs: Vec<(&'static str, &Path)> = files
        .iter()
        .map(|f| ("snapshot file", f.as_path()))
        .collect();
    let output = Output::create(out, what, replace, &inputs)?;
    write(&snapshot, output)?;
    snapshot.check_intact()?;
    Ok(snapshot.state)
}
