//! Dirty-page tracking and dirty scans of a live guest.
//!
//! - [`DirtyLog`]: where the set of pages the *guest* dirtied comes from. Two backends over
//!   KVM's per-slot bitmap: [`BitmapDirtyLog`] (`KVM_GET_DIRTY_LOG`, which fetches and
//!   resets in one call) and [`ManualClearDirtyLog`] (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`:
//!   `KVM_GET_DIRTY_LOG` only reads, `KVM_CLEAR_DIRTY_LOG` resets and re-protects); and
//!   [`RingDirtyLog`] over KVM's per-vCPU dirty rings (`KVM_CAP_DIRTY_LOG_RING`, see
//!   [`crate::kvm::dirty_ring`]), whose entries are harvested into the same per-slot
//!   bitmaps ([`DirtyRings`]).
//! - Dirty rings fill up: a vCPU whose ring reaches its soft limit exits with
//!   `KVM_EXIT_DIRTY_RING_FULL`; its thread harvests every ring into the shared
//!   accumulator and resets them (`KVM_RESET_DIRTY_RINGS`) before it runs the guest
//!   again, and the next fetch takes the accumulated pages with the rest. One lock covers
//!   harvest and reset, so no fetch can fall between a harvest and its reset (a page
//!   written in that window pushes no new entry; it must stay in a set not yet taken).
//! - Why [`DirtyLogChoice::Auto`] does not pick rings: each vCPU pins a ring (1 MiB by
//!   default, see [`DEFAULT_DIRTY_RING_BYTES`]) whatever the guest does, the guest stops for a ring-full exit every
//!   soft-limit pages it dirties, and a ring can only describe as many pages between
//!   harvests as it holds. The bitmap's costs (a scan of one bit per page of RAM) only
//!   matter for very large guests with sparse dirtying; `vmm bench` measures the three
//!   fetches on the same guest (see the README).
//! - The VMM's own writes: KVM never sees them (they do not go through the guest's
//!   MMU), so guest RAM is a [`GuestRam`], whose regions carry vm-memory's atomic bitmap;
//!   every write through vm-memory's `Bytes` API marks it. [`DirtyTracker::fetch`] ORs that
//!   bitmap into the KVM set and resets it, as Firecracker does for snapshots. We chose the
//!   bitmap over recording writes by hand because it cannot be forgotten: any VMM code (a
//!   device, a test) that writes guest memory marks it, whatever path it takes through
//!   vm-memory. Raw pointer writes (none in this VMM) would bypass it.
//! - KVM's log is a superset of the pages the guest wrote: KVM logs every page it maps
//!   *writable* while logging is on, and with nested paging (NPT/EPT) it maps a page
//!   writable on a read fault too when the host page already is writable (`hva_to_pfn`
//!   maps read faults writable if possible; `make_spte` then calls
//!   `mark_page_dirty_in_slot`). So the guest's first access to a page since logging
//!   started, even a read, can report it dirty once (the built-in bulk guest's request
//!   page in round 1, traced on a nested-SVM host); later reads hit the existing, by
//!   then write-protected, mapping. PVM's shadow paging maps a read through a clean guest
//!   PTE read-only and does not. Extra pages are harmless for snapshots (a page saved
//!   twice); tests that expect exact sets must allow them explicitly.
//! - Scans: [`GpaScan`] (per slot counts) and [`scan_space`] (a GVA scan of one address
//!   space with [`walker::scan_dirty`], which skips clean huge leaves unsplit), gathered in
//!   a [`ScanReport`] that prints as text or one JSON line.
//!
//! Fetch with the vCPUs paused ([`crate::vm::Vm::pause`]) for a consistent set: a fetch
//! while the guest runs is correct (nothing is lost: a page dirtied during the fetch is in
//! this set or the next), but the scan then races the guest's writes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use walker::{DirtyBitmap, DirtyPages, DirtyScan, Gva, PagingContext, WalkOptions, scan_dirty};

use crate::kvm::{DirtyLogCapabilities, DirtyRing, KvmError, KvmVm, MemorySlot};
use crate::memory::GuestRam;

/// Errors of dirty tracking and scans.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// A KVM dirty-log call failed.
    #[error("dirty log: {0}")]
    Kvm(#[from] KvmError),
    /// Manual-clear was asked for but KVM does not offer it.
    #[error(
        "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is not available on this host (flags {0:#x}): use the bitmap backend"
    )]
    ManualClearUnavailable(u32),
    /// Dirty rings were asked for but KVM does not offer them.
    #[error(
        "KVM_CAP_DIRTY_LOG_RING is not available on this host: use the bitmap or manual-clear backend"
    )]
    RingUnavailable,
    /// A dirty ring fell out of step with KVM: pages were lost.
    #[error(
        "the dirty ring of vCPU {vcpu} overflowed: KVM pushed past a full ring without a timely KVM_EXIT_DIRTY_RING_FULL (as PVM does), so dirty pages were lost; use a larger --dirty-ring-size or another backend"
    )]
    RingOverflow {
        /// The vCPU.
        vcpu: usize,
    },
    /// The VM was built without dirty logging.
    #[error("the VM was built without dirty logging (VmConfig::dirty is None)")]
    NotEnabled,
    /// The tracker's lock was poisoned by a panic elsewhere.
    #[error("the dirty tracker is unusable after a panic in another thread")]
    Poisoned,
    /// A GVA scan stopped early (its entry budget ran out).
    #[error("the dirty scan of CR3 {cr3:#x} stopped early: {reason}")]
    Walk {
        /// The address space.
        cr3: u64,
        /// Why.
        reason: String,
    },
    /// The vCPU's registers do not describe paging the walker knows.
    #[error("cannot scan CR3 {cr3:#x}: {reason}")]
    Context {
        /// The address space.
        cr3: u64,
        /// Why.
        reason: String,
    },
}

/// Which KVM mechanism gives the guest's dirty pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyLogBackend {
    /// `KVM_GET_DIRTY_LOG`: fetch and reset in one call.
    Bitmap,
    /// `KVM_GET_DIRTY_LOG` + `KVM_CLEAR_DIRTY_LOG` (manual protect).
    ManualClear,
    /// Per-vCPU dirty rings (`KVM_CAP_DIRTY_LOG_RING`).
    Ring,
}

impl fmt::Display for DirtyLogBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bitmap => "bitmap (KVM_GET_DIRTY_LOG)",
            Self::ManualClear => "manual-clear (KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG)",
            Self::Ring => "ring (KVM_CAP_DIRTY_LOG_RING + KVM_RESET_DIRTY_RINGS)",
        })
    }
}

/// Which dirty log a VM is built with ([`crate::DirtyConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirtyLogChoice {
    /// Manual-clear when KVM offers it, else bitmap (never rings: see the module docs).
    #[default]
    Auto,
    /// Always [`DirtyLogBackend::Bitmap`].
    Bitmap,
    /// Always [`DirtyLogBackend::ManualClear`] (fails when unavailable).
    ManualClear,
    /// Always [`DirtyLogBackend::Ring`] (fails when unavailable).
    Ring,
}

named_choices!(DirtyLogChoice {
    Auto => "auto", "manual-clear when KVM offers it, else bitmap";
    Bitmap => "bitmap", "KVM_GET_DIRTY_LOG";
    ManualClear => "manual-clear", "KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG (fails when unavailable)";
    Ring => "ring", "per-vCPU dirty rings (fails when unavailable)";
});

impl DirtyLogChoice {
    /// The backend for a host with `caps`.
    pub fn resolve(self, caps: DirtyLogCapabilities) -> Result<DirtyLogBackend, DirtyError> {
        match self {
            Self::Auto if caps.manual_protect() => Ok(DirtyLogBackend::ManualClear),
            Self::Auto | Self::Bitmap => Ok(DirtyLogBackend::Bitmap),
            Self::ManualClear if caps.manual_protect() => Ok(DirtyLogBackend::ManualClear),
            Self::ManualClear => Err(DirtyError::ManualClearUnavailable(
                caps.manual_protect_flags,
            )),
            Self::Ring if caps.dirty_ring().is_some() => Ok(DirtyLogBackend::Ring),
            Self::Ring => Err(DirtyError::RingUnavailable),
        }
    }
}

/// A source of the pages the guest dirtied.
pub trait DirtyLog: Send + fmt::Debug {
    /// Which mechanism this is.
    fn backend(&self) -> DirtyLogBackend;

    /// The guest-physical pages the guest wrote since the previous fetch (or since the
    /// slots were registered), one bitmap per memory slot with its base and length;
    /// resets the log.
    fn fetch(&mut self) -> Result<Vec<DirtyBitmap>, DirtyError>;
}

fn to_bitmap(slot: &MemorySlot, words: &[u64]) -> DirtyBitmap {
    DirtyBitmap::from_words(slot.base, slot.len, words)
}

/// `KVM_GET_DIRTY_LOG` per slot: the kernel hands over the bitmap and resets it (and
/// write-protects the dirty pages again) in the same call.
#[derive(Debug)]
pub struct BitmapDirtyLog {
    vm: Arc<KvmVm>,
    slots: Vec<MemorySlot>,
}

impl BitmapDirtyLog {
    /// A backend over `slots`, registered with `KVM_MEM_LOG_DIRTY_PAGES`.
    pub fn new(vm: Arc<KvmVm>, slots: Vec<MemorySlot>) -> Self {
        Self { vm, slots }
    }
}

impl DirtyLog for BitmapDirtyLog {
    fn backend(&self) -> DirtyLogBackend {
        DirtyLogBackend::Bitmap
    }

    fn fetch(&mut self) -> Result<Vec<DirtyBitmap>, DirtyError> {
        self.slots
            .iter()
            .map(|slot| Ok(to_bitmap(slot, &self.vm.get_dirty_log(slot)?)))
            .collect()
    }
}

/// Manual protect: `KVM_GET_DIRTY_LOG` only reads the bitmap; `KVM_CLEAR_DIRTY_LOG`
/// then resets exactly the bits read and re-protects those pages. (The win on large
/// guests is that clearing can be done in chunks, later, instead of all at once under
/// the slot lock; this first step clears whole slots right after reading them.)
#[derive(Debug)]
pub struct ManualClearDirtyLog {
    vm: Arc<KvmVm>,
    slots: Vec<MemorySlot>,
}

impl ManualClearDirtyLog {
    /// A backend over `slots`; manual protect must already be enabled on `vm`.
    pub fn new(vm: Arc<KvmVm>, slots: Vec<MemorySlot>) -> Self {
        Self { vm, slots }
    }
}

impl DirtyLog for ManualClearDirtyLog {
    fn backend(&self) -> DirtyLogBackend {
        DirtyLogBackend::ManualClear
    }

    fn fetch(&mut self) -> Result<Vec<DirtyBitmap>, DirtyError> {
        self.slots
            .iter()
            .map(|slot| {
                let words = self.vm.get_dirty_log(slot)?;
                if words.iter().any(|w| *w != 0) {
                    self.vm.clear_dirty_log(slot, 0, slot.pages(), &words)?;
                }
                Ok(to_bitmap(slot, &words))
            })
            .collect()
    }
}

/// The default size of each vCPU's dirty ring: 1 MiB, 65536 entries (clamped to the
/// host's maximum). Larger than a KVM with a working soft limit needs (64 KiB would do):
/// on PVM the vCPU does not exit at the soft limit and pushes the same page once per
/// write fault, so a ring smaller than what the guest pushes in one `KVM_RUN` overflows
/// and stays full for good; the built-in guest pushes about 37 000 entries before READY.
pub const DEFAULT_DIRTY_RING_BYTES: u32 = 1 << 20;

/// Dirty-ring entries turned into per-slot bitmaps: the pages harvested but not yet
/// fetched. Pure bookkeeping (no KVM), so it is tested over fake rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingAccumulator {
    slots: Vec<MemorySlot>,
    pending: Vec<DirtyBitmap>,
    stray: u64,
}

impl RingAccumulator {
    /// An empty accumulator over `slots`.
    pub fn new(slots: Vec<MemorySlot>) -> Self {
        let pending = Self::clean(&slots);
        Self {
            slots,
            pending,
            stray: 0,
        }
    }

    fn clean(slots: &[MemorySlot]) -> Vec<DirtyBitmap> {
        slots
            .iter()
            .map(|s| DirtyBitmap::new(s.base, s.len))
            .collect()
    }

    /// Records one ring entry: `slot` is KVM's `address space << 16 | slot id`,
    /// `offset` the page within the slot. An entry naming no page of ours (another
    /// address space, an unknown slot, an offset past the end) is counted as stray.
    pub fn record(&mut self, slot: u32, offset: u64) {
        let (address_space, id) = (slot >> 16, slot & 0xffff);
        let found = self
            .slots
            .iter()
            .position(|s| s.slot == id)
            .filter(|i| address_space == 0 && offset < self.slots[*i].pages());
        match found {
            Some(i) => {
                let gpa = GuestAddress(self.slots[i].base.0 + offset * 4096);
                self.pending[i].set(gpa);
            }
            None => self.stray += 1,
        }
    }

    /// Takes the pages recorded so far, one bitmap per slot, leaving it empty.
    pub fn take(&mut self) -> Vec<DirtyBitmap> {
        std::mem::replace(&mut self.pending, Self::clean(&self.slots))
    }

    /// Entries that named no page of ours, since creation.
    pub fn stray(&self) -> u64 {
        self.stray
    }
}

/// What the dirty rings of a VM have done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingStats {
    /// Bytes of each vCPU's ring.
    pub ring_bytes: u32,
    /// Number of rings (one per vCPU).
    pub rings: usize,
    /// Entries harvested in all.
    pub harvested: u64,
    /// `KVM_EXIT_DIRTY_RING_FULL` exits handled.
    pub full_exits: u64,
    /// Entries that named no page of ours (should stay 0).
    pub stray: u64,
}

#[derive(Debug)]
struct RingsState {
    rings: Vec<DirtyRing>,
    accumulator: RingAccumulator,
    harvested: u64,
}

/// The dirty rings of one VM, shared by the VMM thread (fetches) and the vCPU threads
/// (harvests on ring-full exits).
#[derive(Debug)]
pub struct DirtyRings {
    vm: Arc<KvmVm>,
    ring_bytes: u32,
    state: Mutex<RingsState>,
    full_exits: AtomicU64,
}

impl DirtyRings {
    /// The rings (one per vCPU, each `ring_bytes` long) of `vm`, over its `slots`.
    pub fn new(
        vm: Arc<KvmVm>,
        slots: Vec<MemorySlot>,
        rings: Vec<DirtyRing>,
        ring_bytes: u32,
    ) -> Self {
        Self {
            vm,
            ring_bytes,
            state: Mutex::new(RingsState {
                rings,
                accumulator: RingAccumulator::new(slots),
                harvested: 0,
            }),
            full_exits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, RingsState>, DirtyError> {
        self.state.lock().map_err(|_| DirtyError::Poisoned)
    }

    /// Harvests every ring into the accumulator, then resets the rings; under one lock,
    /// so that no fetch sees the harvest without the reset. Returns the entries taken.
    fn harvest_locked(&self, state: &mut RingsState) -> Result<u64, DirtyError> {
        let RingsState {
            rings,
            accumulator,
            harvested,
        } = state;
        let mut taken = 0u64;
        for ring in rings.iter_mut() {
            taken += u64::from(ring.harvest(|slot, offset| accumulator.record(slot, offset)));
        }
        if taken > 0 {
            self.vm.reset_dirty_rings()?;
        }
        *harvested += taken;
        // After the reset every entry we took is recycled: the one at our index must
        // not be a RESET one left from an earlier lap (see `DirtyRing::in_step`).
        if let Some(vcpu) = rings.iter().position(|r| !r.in_step()) {
            return Err(DirtyError::RingOverflow { vcpu });
        }
        Ok(taken)
    }

    /// For a vCPU that exited with `KVM_EXIT_DIRTY_RING_FULL`: harvests and resets every
    /// ring (the accumulated pages wait for the next fetch). Returns the entries taken.
    pub fn harvest_full(&self) -> Result<u64, DirtyError> {
        self.full_exits.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock()?;
        self.harvest_locked(&mut state)
    }

    /// Harvests and resets, then takes everything accumulated since the last take.
    pub fn take(&self) -> Result<Vec<DirtyBitmap>, DirtyError> {
        let mut state = self.lock()?;
        self.harvest_locked(&mut state)?;
        Ok(state.accumulator.take())
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        let (rings, harvested, stray) = self
            .state
            .lock()
            .map(|s| (s.rings.len(), s.harvested, s.accumulator.stray()))
            .unwrap_or_default();
        RingStats {
            ring_bytes: self.ring_bytes,
            rings,
            harvested,
            full_exits: self.full_exits.load(Ordering::Relaxed),
            stray,
        }
    }
}

/// Per-vCPU dirty rings: a fetch harvests every ring (with the vCPUs paused, as for the
/// other backends; harvesting while they run is allowed by KVM too), resets them, and
/// returns what was harvested since the previous fetch, ring-full harvests included.
#[derive(Debug)]
pub struct RingDirtyLog {
    rings: Arc<DirtyRings>,
}

impl RingDirtyLog {
    /// A backend over `rings` (shared with the vCPU threads).
    pub fn new(rings: Arc<DirtyRings>) -> Self {
        Self { rings }
    }
}

impl DirtyLog for RingDirtyLog {
    fn backend(&self) -> DirtyLogBackend {
        DirtyLogBackend::Ring
    }

    fn fetch(&mut self) -> Result<Vec<DirtyBitmap>, DirtyError> {
        self.rings.take()
    }
}

/// Takes (and resets) the pages the VMM wrote through vm-memory since the last call, one
/// bitmap per region, from the regions' [`vm_memory::bitmap::AtomicBitmap`].
pub fn take_vmm_writes(memory: &GuestRam) -> Vec<DirtyBitmap> {
    memory
        .iter()
        .map(|region| {
            // `GuestRegionMmap` derefs to its `MmapRegion`, which owns the whole-region
            // bitmap (`region.bitmap()` would be a slice view without `get_and_reset`).
            let words = vm_memory::MmapRegion::bitmap(region).get_and_reset();
            DirtyBitmap::from_words(region.start_addr(), region.len(), &words)
        })
        .collect()
}

/// One fetch: the union of the guest's and the VMM's writes since the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtySet {
    /// Fetch number (1 for the first fetch after boot).
    pub seq: u64,
    /// The backend it came from.
    pub backend: DirtyLogBackend,
    /// Dirty pages, one bitmap per memory slot (guest and VMM writes ORed).
    pub bitmaps: Vec<DirtyBitmap>,
    /// Pages the VMM wrote (also in `bitmaps`).
    pub vmm_pages: u64,
}

impl DirtySet {
    /// Number of dirty pages.
    pub fn pages(&self) -> u64 {
        self.bitmaps.iter().map(DirtyBitmap::count).sum()
    }

    /// Whether the page containing `gpa` is dirty.
    pub fn contains(&self, gpa: GuestAddress) -> bool {
        self.bitmaps.is_dirty(gpa)
    }

    /// Every dirty page, in address order.
    pub fn iter(&self) -> impl Iterator<Item = GuestAddress> + '_ {
        self.bitmaps.iter().flat_map(DirtyBitmap::iter)
    }

    /// The GPA scan: pages per slot.
    pub fn gpa_scan(&self) -> GpaScan {
        GpaScan {
            slots: self
                .bitmaps
                .iter()
                .map(|b| SlotCount {
                    base: b.base(),
                    pages: b.count(),
                })
                .collect(),
            pages: self.pages(),
        }
    }
}

/// Dirty pages of one memory slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCount {
    /// First GPA of the slot.
    pub base: GuestAddress,
    /// Dirty 4 KiB pages in it.
    pub pages: u64,
}

/// The guest-physical side of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpaScan {
    /// Per slot.
    pub slots: Vec<SlotCount>,
    /// In all.
    pub pages: u64,
}

/// The dirty log of a VM plus the VMM's own writes, numbered fetch by fetch.
#[derive(Debug)]
pub struct DirtyTracker {
    log: Box<dyn DirtyLog>,
    memory: GuestRam,
    seq: u64,
}

impl DirtyTracker {
    /// A tracker over `log`; `memory` must be the VM's RAM (a clone shares the bitmaps).
    pub fn new(log: Box<dyn DirtyLog>, memory: GuestRam) -> Self {
        Self {
            log,
            memory,
            seq: 0,
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> DirtyLogBackend {
        self.log.backend()
    }

    /// Fetches and resets the guest's dirty log and the VMM's write bitmap, ORed.
    pub fn fetch(&mut self) -> Result<DirtySet, DirtyError> {
        let mut bitmaps = self.log.fetch()?;
        let vmm = take_vmm_writes(&self.memory);
        let vmm_pages = vmm.iter().map(DirtyBitmap::count).sum();
        for (kvm, own) in bitmaps.iter_mut().zip(&vmm) {
            kvm.merge(own);
        }
        self.seq += 1;
        Ok(DirtySet {
            seq: self.seq,
            backend: self.log.backend(),
            bitmaps,
            vmm_pages,
        })
    }
}

/// The GVA scan of one address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceScan {
    /// The CR3 scanned (with PCID bits, as the vCPU had it).
    pub cr3: u64,
    /// What the walk found.
    pub scan: DirtyScan,
}

/// Scans the address space of `ctx` for virtual pages backed by a dirty page of `set`.
pub fn scan_space<M: GuestMemoryBackend>(
    memory: &M,
    ctx: &PagingContext,
    set: &DirtySet,
) -> Result<SpaceScan, DirtyError> {
    let cr3 = ctx.registers().cr3;
    let scan = scan_dirty(
        memory,
        ctx,
        Gva(0)..=Gva(u64::MAX),
        set.bitmaps.as_slice(),
        WalkOptions::default(),
    )
    .map_err(|e| DirtyError::Walk {
        cr3,
        reason: e.to_string(),
    })?;
    Ok(SpaceScan { cr3, scan })
}

/// One scan: the GPA set and the GVA scans of some address spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Fetch number.
    pub seq: u64,
    /// The GPA scan.
    pub gpa: GpaScan,
    /// Pages written by the VMM (included in `gpa`).
    pub vmm_pages: u64,
    /// The GVA scans.
    pub spaces: Vec<SpaceScan>,
}

#[derive(Serialize)]
struct JsonRange {
    va: String,
    pa: String,
    pages: u64,
}

#[derive(Serialize)]
struct JsonSpace {
    cr3: String,
    ranges: Vec<JsonRange>,
    huge_skipped: u64,
    huge_split: u64,
}

#[derive(Serialize)]
struct JsonSlot {
    base: String,
    pages: u64,
}

#[derive(Serialize)]
struct JsonScan {
    kind: &'static str,
    seq: u64,
    gpa_pages: u64,
    vmm_pages: u64,
    slots: Vec<JsonSlot>,
    spaces: Vec<JsonSpace>,
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

impl ScanReport {
    /// One JSON line: `{"kind":"dirty-scan","seq","gpa_pages","vmm_pages","slots":[{"base",
    /// "pages"}],"spaces":[{"cr3","ranges":[{"va","pa","pages"}],"huge_skipped",
    /// "huge_split"}]}` (addresses as hex strings).
    pub fn to_json(&self) -> String {
        let j = JsonScan {
            kind: "dirty-scan",
            seq: self.seq,
            gpa_pages: self.gpa.pages,
            vmm_pages: self.vmm_pages,
            slots: self
                .gpa
                .slots
                .iter()
                .map(|s| JsonSlot {
                    base: hex(s.base.0),
                    pages: s.pages,
                })
                .collect(),
            spaces: self
                .spaces
                .iter()
                .map(|s| JsonSpace {
                    cr3: hex(s.cr3),
                    ranges: s
                        .scan
                        .runs()
                        .into_iter()
                        .map(|(va, pa, pages)| JsonRange {
                            va: hex(va.0),
                            pa: hex(pa.0),
                            pages,
                        })
                        .collect(),
                    huge_skipped: s.scan.huge_skipped,
                    huge_split: s.scan.huge_split,
                })
                .collect(),
        };
        serde_json::to_string(&j).unwrap_or_default()
    }

    /// Text: a header per scan and per space, then one `VA -> PA pages` line per run.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let slots: Vec<String> = self
            .gpa
            .slots
            .iter()
            .map(|s| format!("{:#x}: {}", s.base.0, s.pages))
            .collect();
        let _ = writeln!(
            out,
            "# dirty scan {}: {} dirty guest-physical pages ({} written by the VMM); per slot {}",
            self.seq,
            self.gpa.pages,
            self.vmm_pages,
            slots.join(", ")
        );
        for s in &self.spaces {
            let runs = s.scan.runs();
            let _ = writeln!(
                out,
                "# CR3 {:#x}: {} dirty virtual pages in {} runs; huge leaves skipped {}, split {}",
                s.cr3,
                s.scan.pages.len(),
                runs.len(),
                s.scan.huge_skipped,
                s.scan.huge_split
            );
            for (va, pa, pages) in runs {
                let _ = writeln!(out, "{:016x} -> {:016x} {pages} pages", va.0, pa.0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[derive(Debug)]
    struct FakeLog(Vec<DirtyBitmap>);

    impl DirtyLog for FakeLog {
        fn backend(&self) -> DirtyLogBackend {
            DirtyLogBackend::Bitmap
        }
        fn fetch(&mut self) -> Result<Vec<DirtyBitmap>, DirtyError> {
            let out = self.0.clone();
            for b in &mut self.0 {
                *b = DirtyBitmap::new(b.base(), b.pages() * 4096);
            }
            Ok(out)
        }
    }

    fn ram() -> GuestRam {
        match GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(1 << 32), 1 << 20)])
        {
            Ok(m) => m,
            Err(e) => panic!("cannot map test memory: {e}"),
        }
    }

    #[test]
    fn choice_follows_capabilities() {
        let none = DirtyLogCapabilities::default();
        let manual = DirtyLogCapabilities {
            manual_protect_flags: 3,
            dirty_ring_max_bytes: 65536,
            dirty_ring_acq_rel_max_bytes: 0,
        };
        assert_eq!(
            DirtyLogChoice::Auto.resolve(none).ok(),
            Some(DirtyLogBackend::Bitmap)
        );
        assert_eq!(
            DirtyLogChoice::Auto.resolve(manual).ok(),
            Some(DirtyLogBackend::ManualClear)
        );
        assert_eq!(
            DirtyLogChoice::Bitmap.resolve(manual).ok(),
            Some(DirtyLogBackend::Bitmap)
        );
        assert!(matches!(
            DirtyLogChoice::ManualClear.resolve(none),
            Err(DirtyError::ManualClearUnavailable(0))
        ));
        assert_eq!(
            DirtyLogChoice::Ring.resolve(manual).ok(),
            Some(DirtyLogBackend::Ring)
        );
        assert!(matches!(
            DirtyLogChoice::Ring.resolve(none),
            Err(DirtyError::RingUnavailable)
        ));
    }

    const SLOTS: [MemorySlot; 2] = [
        MemorySlot {
            slot: 0,
            base: GuestAddress(0),
            len: 1 << 20,
        },
        MemorySlot {
            slot: 1,
            base: GuestAddress(1 << 32),
            len: 1 << 20,
        },
    ];

    fn pages(bitmaps: &[DirtyBitmap]) -> Vec<u64> {
        bitmaps
            .iter()
            .flat_map(DirtyBitmap::iter)
            .map(|g| g.0)
            .collect()
    }

    #[test]
    fn ring_entries_become_per_slot_pages() {
        use crate::kvm::dirty_ring::{DirtyGfn, harvest_ring};
        let ring: Vec<DirtyGfn> = (0..8).map(|_| DirtyGfn::default()).collect();
        ring[0].publish(0, 3);
        ring[1].publish(1, 2);
        ring[2].publish(0, 3); // the same page twice: one bit
        ring[3].publish(1 << 16, 4); // address space 1 (SMM): not ours
        ring[4].publish(7, 0); // unknown slot
        ring[5].publish(1, 256); // one past the end of slot 1
        let mut acc = RingAccumulator::new(SLOTS.to_vec());
        let mut index = 0;
        let taken = harvest_ring(&ring, &mut index, |s, o| acc.record(s, o));
        assert_eq!((taken, index), (6, 6));
        assert_eq!(acc.stray(), 3);
        let got = acc.take();
        assert_eq!(got.len(), 2, "one bitmap per slot");
        assert_eq!(pages(&got), vec![0x3000, (1 << 32) + 0x2000]);
        assert_eq!(pages(&acc.take()), Vec::<u64>::new(), "taken means reset");
    }

    #[test]
    fn ring_full_harvests_are_kept_for_the_next_fetch() {
        use crate::kvm::dirty_ring::{DirtyGfn, harvest_ring};
        // A 4-entry ring overflowed twice before one fetch: what the ring-full exits
        // harvested stays in the accumulator and comes out with the final harvest.
        let ring: Vec<DirtyGfn> = (0..4).map(|_| DirtyGfn::default()).collect();
        let mut acc = RingAccumulator::new(SLOTS.to_vec());
        let mut index = 0;
        let mut written = Vec::new();
        for page in 0..10u64 {
            let kvm_index = page as usize % 4;
            if page >= 4 {
                // KVM_RESET_DIRTY_RINGS after the ring-full harvest recycled it.
                assert!(ring[kvm_index].recycle(), "page {page}");
            }
            ring[kvm_index].publish(0, page);
            written.push(page * 4096);
            if kvm_index == 3 {
                // ring full: the vCPU thread harvests.
                assert_eq!(harvest_ring(&ring, &mut index, |s, o| acc.record(s, o)), 4);
            }
        }
        // The fetch: harvest the rest, then take.
        assert_eq!(harvest_ring(&ring, &mut index, |s, o| acc.record(s, o)), 2);
        assert_eq!(pages(&acc.take()), written);
        assert_eq!(acc.stray(), 0);
    }

    #[test]
    fn vmm_writes_are_merged_then_reset() {
        let mem = ram();
        // Creating the memory marks nothing.
        assert!(take_vmm_writes(&mem).iter().all(|b| b.count() == 0));
        let mut guest = DirtyBitmap::new(GuestAddress(0), 1 << 20);
        guest.set(GuestAddress(0x3000));
        let log = FakeLog(vec![
            guest,
            DirtyBitmap::new(GuestAddress(1 << 32), 1 << 20),
        ]);
        let mut tracker = DirtyTracker::new(Box::new(log), mem.clone());
        assert!(mem.write_obj(7u64, GuestAddress(0x5008)).is_ok());
        assert!(
            mem.write_slice(&[1; 8], GuestAddress((1 << 32) + 0x1ffc))
                .is_ok()
        );
        let Ok(set) = tracker.fetch() else {
            panic!("fetch failed")
        };
        assert_eq!(set.seq, 1);
        let pages: Vec<u64> = set.iter().map(|g| g.0).collect();
        assert_eq!(
            pages,
            vec![0x3000, 0x5000, (1 << 32) + 0x1000, (1 << 32) + 0x2000]
        );
        assert_eq!(set.vmm_pages, 3);
        assert_eq!(
            set.gpa_scan()
                .slots
                .iter()
                .map(|s| s.pages)
                .collect::<Vec<_>>(),
            vec![2, 2]
        );
        let Ok(again) = tracker.fetch() else {
            panic!("fetch failed")
        };
        assert_eq!((again.seq, again.pages()), (2, 0), "both sources reset");
    }

    #[test]
    fn reports_print_as_text_and_json() {
        let mut b = DirtyBitmap::new(GuestAddress(0), 1 << 20);
        b.set(GuestAddress(0x4000));
        let set = DirtySet {
            seq: 4,
            backend: DirtyLogBackend::Bitmap,
            bitmaps: vec![b],
            vmm_pages: 0,
        };
        let scan = DirtyScan {
            pages: vec![
                walker::DirtyPage {
                    va: Gva(0x4000_0000),
                    pa: GuestAddress(0x4000),
                    shadow: false,
                },
                walker::DirtyPage {
                    va: Gva(0x4000_1000),
                    pa: GuestAddress(0x5000),
                    shadow: false,
                },
            ],
            huge_skipped: 3,
            huge_split: 1,
            ..DirtyScan::default()
        };
        let report = ScanReport {
            seq: set.seq,
            gpa: set.gpa_scan(),
            vmm_pages: 0,
            spaces: vec![SpaceScan {
                cr3: 0x20_0001,
                scan,
            }],
        };
        assert_eq!(
            report.to_json(),
            r#"{"kind":"dirty-scan","seq":4,"gpa_pages":1,"vmm_pages":0,"slots":[{"base":"0x0","pages":1}],"spaces":[{"cr3":"0x200001","ranges":[{"va":"0x40000000","pa":"0x4000","pages":2}],"huge_skipped":3,"huge_split":1}]}"#
        );
        let text = report.to_text();
        assert!(
            text.contains("# dirty scan 4: 1 dirty guest-physical pages"),
            "{text}"
        );
        assert!(
            text.contains("0000000040000000 -> 0000000000004000 2 pages"),
            "{text}"
        );
    }
}
