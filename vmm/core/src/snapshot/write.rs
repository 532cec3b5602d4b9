//! Writing generations: [`SnapshotDir`] and [`Vm::snapshot`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use walker::DirtyBitmap;

use super::file::{AtomicFile, sync_dir};
use super::{
    DIFF_FORMAT_VERSION, DIFF_HEADER_LEN, DIFF_MAGIC, DataFile, FORMAT_VERSION, PAGE_SIZE,
    RegionRecord, Result, STATE_MAGIC, SnapshotError, SnapshotKind, SnapshotState, VcpuRecord,
    data_file_name, state_file_name,
};
use crate::arch::x86_64::cpuid::PagingFeatures;
use crate::dirty::DirtyError;
use crate::files::FileKind;
use crate::kvm::state::{VcpuKvmState, VmKvmState};
use crate::vcpu::VcpuState;
use crate::vm::{Vm, VmError};

/// Whether `name` is something a snapshot writer that died left behind: a temporary
/// (`.gen-NNNNNN.{mem,diff,state}.XXXXXXXX.tmp`) or a data file without a state.
fn is_writer_leftover(name: &str) -> bool {
    fn generation_file(name: &str, extensions: &[&str]) -> bool {
        name.strip_prefix("gen-")
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(digits, ext)| {
                digits.len() == 6
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && extensions.contains(&ext)
            })
    }
    match name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
        Some(temp) => temp
            .rsplit_once('.')
            .is_some_and(|(file, _random)| generation_file(file, &["mem", "diff", "state"])),
        None => generation_file(name, &["mem", "diff"]),
    }
}

/// Bytes copied from guest RAM per write.
const CHUNK: usize = 1 << 20;

/// What one generation is made of, whatever it comes from (a live [`Vm`], or any guest
/// memory in tests and tools).
#[derive(Debug)]
pub struct SnapshotSource<'a, M> {
    /// Guest RAM (read only, while the guest is stopped).
    pub memory: &'a M,
    /// Every vCPU's registers (and KVM state, from a VM).
    pub vcpus: Vec<VcpuRecord>,
    /// What KVM holds of the VM, from a VM (with every vCPU's `kvm`).
    pub vm: Option<VmKvmState>,
    /// The devices' state, from a VM.
    pub devices: Option<crate::devices::DeviceRecord>,
    /// What the VM was booted from, from a VM.
    pub boot: Option<crate::vm::BootRecord>,
    /// The guest's paging features.
    pub paging: PagingFeatures,
    /// The pages written since the previous generation, one bitmap per region (as
    /// [`crate::DirtySet::bitmaps`]); `None` without dirty logging (then only a full
    /// snapshot can be written).
    pub dirty: Option<Vec<DirtyBitmap>>,
}

/// What a written generation holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its number.
    pub generation: u64,
    /// Full or diff.
    pub kind: SnapshotKind,
    /// Pages in its data file.
    pub pages: u64,
    /// Bytes of its data file.
    pub data_bytes: u64,
    /// Its data file.
    pub data_path: PathBuf,
    /// Its state file.
    pub state_path: PathBuf,
    /// Time to write both files (fsyncs included).
    pub elapsed: Duration,
}

/// A snapshot directory being written: generation 0 full, then diffs.
#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
    next: u64,
    guest_cr3s: Vec<u64>,
    write_limit: Option<u64>,
    /// Pages of a diff whose write failed: they go into the next one.
    carry: Option<Vec<DirtyBitmap>>,
}

impl SnapshotDir {
    /// Opens `dir` (created if missing) for a new series of generations. `dir` must be
    /// new or empty: a directory that holds generations is refused (continuing another
    /// run's chain would mix two guests), and so is one holding anything that is not a
    /// snapshot file of ours; vmm never deletes files it did not create. Leftovers of a
    /// crashed writer (temporaries `.gen-*.tmp`, data files `gen-NNNNNN.mem|diff` whose
    /// state was never written) are ours, and are removed or replaced.
    pub fn create(dir: &Path) -> Result<Self> {
        if let Some(kind) = std::fs::metadata(dir)
            .ok()
            .map(|m| FileKind::of(&m))
            .filter(|k| *k != FileKind::Directory)
        {
            return Err(SnapshotError::NotADirectory {
                path: dir.to_owned(),
                kind,
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Io {
            op: "create the directory",
            path: dir.to_owned(),
            source,
        })?;
        if !super::generations(dir)?.is_empty() {
            return Err(SnapshotError::NotEmpty(dir.to_owned()));
        }
        let entries = std::fs::read_dir(dir).map_err(|source| SnapshotError::Io {
            op: "list",
            path: dir.to_owned(),
            source,
        })?;
        let mut leftovers = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let regular = entry.file_type().is_ok_and(|t| t.is_file());
            if regular && is_writer_leftover(&name) {
                leftovers.push(entry.path());
            } else {
                return Err(SnapshotError::ForeignFile {
                    dir: dir.to_owned(),
                    name,
                });
            }
        }
        for path in leftovers {
            let _ = std::fs::remove_file(path);
        }
        Ok(Self {
            dir: dir.to_owned(),
            next: 0,
            guest_cr3s: Vec::new(),
            write_limit: None,
            carry: None,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The generation the next write creates.
    pub fn next_generation(&self) -> u64 {
        self.next
    }

    /// Records the built-in guest's address spaces (its descriptor's CR3s) in the next
    /// generations' state.
    pub fn set_guest_cr3s(&mut self, cr3s: Vec<u64>) {
        self.guest_cr3s = cr3s;
    }

    /// Simulates a disk that fills up after `bytes` bytes of each generation (`None`:
    /// no limit). For testing crash safety.
    pub fn fail_writes_after(&mut self, bytes: Option<u64>) {
        self.write_limit = bytes;
    }

    /// Writes the next generation: full for generation 0, else a diff of `source.dirty`.
    /// On failure nothing of the generation stays on disk, the previous generations are
    /// untouched, and the dirty pages are kept for the next diff.
    pub fn write<M: GuestMemoryBackend>(
        &mut self,
        source: SnapshotSource<'_, M>,
    ) -> Result<SnapshotInfo> {
        let started = Instant::now();
        let generation = self.next;
        let kind = if generation == 0 {
            SnapshotKind::Full
        } else {
            SnapshotKind::Diff
        };
        let mut dirty = match (kind, source.dirty) {
            (SnapshotKind::Full, _) => None,
            (SnapshotKind::Diff, Some(d)) => Some(d),
            (SnapshotKind::Diff, None) => return Err(SnapshotError::NoDirtyLog),
        };
        if let (Some(d), Some(carry)) = (dirty.as_mut(), self.carry.take()) {
            for (now, old) in d.iter_mut().zip(&carry) {
                now.merge(old);
            }
        }
        let regions = region_records(source.memory);
        let data_name = data_file_name(generation, kind);
        let data = match &dirty {
            None => write_full(&self.dir, &data_name, source.memory, self.write_limit),
            Some(d) => write_diff(
                &self.dir,
                &data_name,
                generation,
                source.memory,
                d,
                self.write_limit,
            ),
        };
        let (data, pages) = match data {
            Ok(done) => done,
            Err(e) => {
                self.carry = dirty;
                return Err(e);
            }
        };
        let data_bytes = data.len;
        let state = SnapshotState {
            version: FORMAT_VERSION,
            generation,
            parent: generation.checked_sub(1),
            kind,
            page_size: PAGE_SIZE,
            regions,
            data,
            pages,
            vcpus: source.vcpus,
            paging: source.paging,
            guest_cr3s: self.guest_cr3s.clone(),
            vm: source.vm,
            devices: source.devices,
            boot: source.boot,
        };
        let limit = self.write_limit.map(|l| l.saturating_sub(data_bytes));
        let state_path = match write_state(&self.dir, &state, limit) {
            Ok(path) => path,
            Err(e) => {
                // Without its state the data file is not a generation: remove it too.
                let _ = std::fs::remove_file(self.dir.join(&state.data.name));
                let _ = sync_dir(&self.dir);
                self.carry = dirty;
                return Err(e);
            }
        };
        self.next += 1;
        Ok(SnapshotInfo {
            generation,
            kind,
            pages,
            data_bytes,
            data_path: self.dir.join(&state.data.name),
            state_path,
            elapsed: started.elapsed(),
        })
    }
}

/// The regions of `memory`, packed one after the other in the memory file.
fn region_records<M: GuestMemoryBackend>(memory: &M) -> Vec<RegionRecord> {
    let mut offset = 0;
    memory
        .iter()
        .map(|r| {
            let record = RegionRecord {
                gpa: r.start_addr().0,
                len: r.len(),
                file_offset: offset,
            };
            offset += r.len();
            record
        })
        .collect()
}

fn read_memory<M: GuestMemoryBackend>(memory: &M, buf: &mut [u8], addr: u64) -> Result<()> {
    memory
        .read_slice(buf, GuestAddress(addr))
        .map_err(|source| SnapshotError::Memory { addr, source })
}

fn data_file(file: AtomicFile) -> Result<DataFile> {
    let name = file
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (len, crc32) = file.commit()?;
    Ok(DataFile { name, len, crc32 })
}

fn write_full<M: GuestMemoryBackend>(
    dir: &Path,
    name: &str,
    memory: &M,
    limit: Option<u64>,
) -> Result<(DataFile, u64)> {
    let total: u64 = memory.iter().map(|r| r.len()).sum();
    let mut file = AtomicFile::create(dir, name, total, limit)?;
    let mut buf = vec![0u8; CHUNK];
    for region in memory.iter() {
        let mut off = 0;
        while off < region.len() {
            let n = (region.len() - off).min(CHUNK as u64) as usize;
            read_memory(memory, &mut buf[..n], region.start_addr().0 + off)?;
            file.write(&buf[..n])?;
            off += n as u64;
        }
    }
    Ok((data_file(file)?, total / PAGE_SIZE))
}

fn write_diff<M: GuestMemoryBackend>(
    dir: &Path,
    name: &str,
    generation: u64,
    memory: &M,
    dirty: &[DirtyBitmap],
    limit: Option<u64>,
) -> Result<(DataFile, u64)> {
    let mut pages: Vec<u64> = dirty
        .iter()
        .flat_map(DirtyBitmap::iter)
        .map(|g| g.0)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    let count = pages.len() as u64;
    let total = DIFF_HEADER_LEN + count * (8 + PAGE_SIZE);
    let mut file = AtomicFile::create(dir, name, total, limit)?;
    let mut header = Vec::with_capacity(DIFF_HEADER_LEN as usize);
    header.extend_from_slice(&DIFF_MAGIC);
    header.extend_from_slice(&DIFF_FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    header.extend_from_slice(&generation.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    file.write(&header)?;
    for chunk in pages.chunks(CHUNK / 8) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|p| p.to_le_bytes()).collect();
        file.write(&bytes)?;
    }
    let mut buf = vec![0u8; CHUNK];
    let per_chunk = CHUNK / PAGE_SIZE as usize;
    for chunk in pages.chunks(per_chunk) {
        let mut i = 0;
        // Contiguous runs of pages are read with one copy.
        while i < chunk.len() {
            let mut j = i + 1;
            while j < chunk.len() && chunk[j] == chunk[j - 1] + PAGE_SIZE {
                j += 1;
            }
            let at = i * PAGE_SIZE as usize;
            let end = j * PAGE_SIZE as usize;
            read_memory(memory, &mut buf[at..end], chunk[i])?;
            i = j;
        }
        file.write(&buf[..chunk.len() * PAGE_SIZE as usize])?;
    }
    Ok((data_file(file)?, count))
}

/// The bytes of a state file: the header line, then the JSON.
/// The bytes of the state file of `state`, exactly as [`SnapshotDir`] writes them (its
/// header line with version, length and CRC32, then the JSON): for tools and tests
/// that edit a state.
pub fn state_bytes(state: &SnapshotState) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(state).map_err(|e| SnapshotError::Malformed {
        path: PathBuf::from(state_file_name(state.generation)),
        reason: format!("cannot encode the state: {e}"),
    })?;
    let mut bytes = format!(
        "{STATE_MAGIC} {} {} {:08x}\n",
        state.version,
        json.len(),
        crc32fast::hash(&json)
    )
    .into_bytes();
    bytes.extend_from_slice(&json);
    bytes.push(b'\n');
    Ok(bytes)
}

fn write_state(dir: &Path, state: &SnapshotState, limit: Option<u64>) -> Result<PathBuf> {
    let bytes = state_bytes(state)?;
    let name = state_file_name(state.generation);
    let mut file = AtomicFile::create(dir, &name, bytes.len() as u64, limit)?;
    file.write(&bytes)?;
    let path = file.path().to_owned();
    file.commit()?;
    Ok(path)
}

impl VcpuRecord {
    /// The registers of a paused vCPU, with the rest of its KVM state (and its
    /// debug-port latch) when read.
    pub fn from_state(state: &VcpuState, kvm: Option<VcpuKvmState>) -> Self {
        Self {
            index: state.index,
            regs: state.regs,
            sregs: state.sregs,
            debug_argument: kvm.is_some().then_some(state.debug_argument),
            kvm,
        }
    }
}

impl Vm {
    /// Takes the next generation of `dir`: pauses every vCPU (unless already paused),
    /// fetches the dirty set, reads the registers, writes the files and resumes (only if
    /// it paused). The first generation is full; the next ones are diffs and need dirty
    /// logging.
    pub fn snapshot(&self, dir: &mut SnapshotDir) -> Result<SnapshotInfo> {
        let was_paused = self.is_paused();
        let states = self.pause().map_err(Box::new)?;
        let result = self.snapshot_paused(dir, &states);
        if !was_paused {
            self.resume().map_err(Box::new)?;
        }
        result
    }

    /// [`Vm::snapshot`] while the caller keeps the vCPUs paused (`states` from
    /// [`Vm::pause`]), e.g. to also dump or walk memory at the same instant.
    pub fn snapshot_paused(
        &self,
        dir: &mut SnapshotDir,
        states: &[VcpuState],
    ) -> Result<SnapshotInfo> {
        self.write_snapshot(dir, states, || match self.fetch_dirty() {
            Ok(set) => Ok(Some(set.bitmaps)),
            Err(DirtyError::NotEnabled) => Ok(None),
            Err(e) => Err(e.into()),
        })
    }

    /// [`Vm::snapshot_paused`] with the pages dirtied since the chain's previous
    /// generation given by the caller, who reads the dirty log itself (the control API
    /// shares one log between dirty scans and several chains). `None`: no dirty log
    /// (only a full generation can be written).
    pub fn snapshot_paused_with(
        &self,
        dir: &mut SnapshotDir,
        states: &[VcpuState],
        dirty: Option<Vec<DirtyBitmap>>,
    ) -> Result<SnapshotInfo> {
        self.write_snapshot(dir, states, || Ok(dirty))
    }

    fn write_snapshot(
        &self,
        dir: &mut SnapshotDir,
        states: &[VcpuState],
        dirty: impl FnOnce() -> Result<Option<Vec<DirtyBitmap>>>,
    ) -> Result<SnapshotInfo> {
        if !self.is_paused() {
            return Err(Box::new(VmError::NotPaused).into());
        }
        // A vCPU still inside an instruction cannot be resumed from its registers
        // (crate::vcpu: a hostile string I/O that did not complete within the limit).
        if let Some(state) = states.iter().find(|s| s.io_pending) {
            return Err(SnapshotError::InstructionPending { vcpu: state.index });
        }
        let (kvm, vm) = self.save_kvm_state().map_err(Box::new)?;
        let devices = self.device_record().map_err(Box::new)?;
        // Last: a refusal above leaves the dirty log as it was.
        let dirty = dirty()?;
        dir.write(SnapshotSource {
            memory: self.guest_memory(),
            vcpus: states
                .iter()
                .zip(kvm)
                .map(|(state, kvm)| VcpuRecord::from_state(state, Some(kvm)))
                .collect(),
            vm: Some(vm),
            devices: Some(devices),
            boot: Some(self.boot_record().clone()),
            paging: self.paging_features(),
            dirty,
        })
    }
}
