//! KVM's per-vCPU dirty rings (`KVM_CAP_DIRTY_LOG_RING`, Documentation/virt/kvm/api.rst).
//!
//! With the capability enabled on a VM (before any vCPU exists), KVM stops filling the
//! per-slot dirty bitmap and instead pushes one 16-byte entry `{flags, slot, offset}` per
//! newly dirtied page into a ring owned by the vCPU that dirtied it. Userspace maps each
//! ring from the vCPU fd at page `KVM_DIRTY_LOG_PAGE_OFFSET`.
//!
//! The protocol, per entry: KVM writes `slot` and `offset`, then publishes the entry by
//! setting `flags` to DIRTY (release). Userspace reads `flags` (acquire); if DIRTY, reads
//! the entry, then sets `flags` to RESET (release) and moves its own fetch index on.
//! `KVM_RESET_DIRTY_RINGS` (a VM ioctl) then recycles every RESET entry of every ring and
//! write-protects those pages again, so the next write to them is pushed again. Until
//! that reset, a harvested page is still writable and a second write to it pushes
//! nothing: the reset must follow the harvest before the page set is considered final.
//!
//! When a ring holds `soft limit` entries (its size minus KVM's reserve), the vCPU exits
//! with `KVM_EXIT_DIRTY_RING_FULL` and keeps exiting until userspace harvests and resets.
//!
//! [`harvest_ring`] is the harvesting logic over any slice of [`DirtyGfn`]s (a mapped
//! ring, or a fake one in ordinary memory in tests); [`DirtyRing`] owns one mapping.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kvm_bindings::{KVM_DIRTY_LOG_PAGE_OFFSET, kvm_dirty_gfn};

use super::{KvmError, Result};

/// `KVM_DIRTY_GFN_F_DIRTY` (include/uapi/linux/kvm.h): KVM published the entry.
pub const DIRTY_GFN_F_DIRTY: u32 = 1 << 0;
/// `KVM_DIRTY_GFN_F_RESET`: userspace harvested the entry; KVM may recycle it.
pub const DIRTY_GFN_F_RESET: u32 = 1 << 1;

/// Bytes of one ring entry (`struct kvm_dirty_gfn`).
pub const DIRTY_GFN_BYTES: u32 = 16;

/// The smallest ring any KVM accepts: `kvm_vm_ioctl_enable_dirty_log_ring` refuses a
/// ring smaller than a page, or smaller than its reserved entries
/// (`KVM_DIRTY_RING_RSVD_ENTRIES`, 64, plus the hardware dirty log's size: 512 more with
/// Intel PML, so 16 KiB there). A host-specific floor above this one is found by asking
/// KVM (see `vmm run --dirty-ring-size`).
pub const DIRTY_RING_MIN_BYTES: u32 = 4096;

/// One ring entry, laid out as `struct kvm_dirty_gfn`, every field an atomic: KVM
/// writes the mapped ring while we read it, so the VMM only ever touches it through
/// atomic loads and stores (no plain reference to racing memory).
#[repr(C)]
#[derive(Debug, Default)]
pub struct DirtyGfn {
    flags: AtomicU32,
    slot: AtomicU32,
    offset: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<DirtyGfn>() == std::mem::size_of::<kvm_dirty_gfn>());
const _: () = assert!(std::mem::size_of::<DirtyGfn>() == DIRTY_GFN_BYTES as usize);
const _: () = assert!(std::mem::align_of::<DirtyGfn>() == std::mem::align_of::<kvm_dirty_gfn>());

impl DirtyGfn {
    /// Publishes the entry as KVM does: `slot` (address space << 16 | slot id) and the
    /// page `offset` in the slot, then DIRTY with release ordering. For fake rings.
    pub fn publish(&self, slot: u32, offset: u64) {
        self.slot.store(slot, Ordering::Relaxed);
        self.offset.store(offset, Ordering::Relaxed);
        self.flags.store(DIRTY_GFN_F_DIRTY, Ordering::Release);
    }

    /// The flags (acquire: a DIRTY entry's slot and offset are visible after this).
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }

    /// Recycles a harvested entry as `KVM_RESET_DIRTY_RINGS` does (flags 0). Returns
    /// whether it was harvested. For fake rings.
    pub fn recycle(&self) -> bool {
        self.flags
            .compare_exchange(DIRTY_GFN_F_RESET, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Harvests the published entries of `ring` starting at `*fetch_index` (a free-running
/// counter; the entry is `fetch_index % ring.len()`): for each entry whose flags have
/// DIRTY, calls `record(slot, offset)`, marks it RESET and advances the index. Stops at
/// the first unpublished entry, and after one lap at most. Returns how many it took.
///
/// `ring.len()` must be a power of two (KVM's rings are); otherwise nothing is taken.
pub fn harvest_ring(
    ring: &[DirtyGfn],
    fetch_index: &mut u32,
    mut record: impl FnMut(u32, u64),
) -> u32 {
    if !ring.len().is_power_of_two() {
        return 0;
    }
    let mask = ring.len() - 1;
    let mut taken = 0u32;
    for _ in 0..ring.len() {
        let entry = &ring[*fetch_index as usize & mask];
        if entry.flags() & DIRTY_GFN_F_DIRTY == 0 {
            break;
        }
        record(
            entry.slot.load(Ordering::Relaxed),
            entry.offset.load(Ordering::Relaxed),
        );
        entry.flags.store(DIRTY_GFN_F_RESET, Ordering::Release);
        *fetch_index = fetch_index.wrapping_add(1);
        taken += 1;
    }
    taken
}

/// [`DirtyRing::in_step`] over any ring: the entry at `fetch_index` is not one
/// harvested (RESET) and never recycled.
pub fn ring_in_step(ring: &[DirtyGfn], fetch_index: u32) -> bool {
    if !ring.len().is_power_of_two() {
        return false;
    }
    ring[fetch_index as usize & (ring.len() - 1)].flags() & DIRTY_GFN_F_RESET == 0
}

/// Whether `bytes` is a ring size KVM may accept on a host offering rings of at most
/// `max_bytes`: a power of two, at least [`DIRTY_RING_MIN_BYTES`], at most the maximum.
pub fn valid_ring_bytes(bytes: u32, max_bytes: u32) -> bool {
    bytes.is_power_of_two() && (DIRTY_RING_MIN_BYTES..=max_bytes).contains(&bytes)
}

/// One vCPU's dirty ring, mapped from its fd; unmapped on drop. The mapping keeps the
/// vCPU file open, so it stays valid even if the vCPU fd is closed first.
#[derive(Debug)]
pub struct DirtyRing {
    entries: NonNull<DirtyGfn>,
    len: usize,
    fetch_index: u32,
    overran: bool,
}

// SAFETY: the ring is a shared mapping only accessed through atomics (`DirtyGfn`), and
// `fetch_index` is plain owned data; moving the owner to another thread is sound.
unsafe impl Send for DirtyRing {}

impl DirtyRing {
    /// Maps the ring of `bytes` bytes of the vCPU behind `vcpu_fd`.
    pub(super) fn map(vcpu_fd: &impl AsRawFd, bytes: u32) -> Result<Self> {
        let failed = || KvmError::DirtyRingMap {
            bytes,
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).map_err(|_| failed())?;
        let offset = libc::off_t::try_from(u64::from(KVM_DIRTY_LOG_PAGE_OFFSET) * page)
            .map_err(|_| failed())?;
        let len = bytes as usize;
        // SAFETY: a fresh shared mapping chosen by the kernel (null hint), of `len` bytes
        // of the vCPU fd at the dirty-ring offset; no existing memory is affected. The
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu_fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(failed());
        }
        let entries = NonNull::new(ptr.cast::<DirtyGfn>()).ok_or_else(failed)?;
        Ok(Self {
            entries,
            len: len / DIRTY_GFN_BYTES as usize,
            fetch_index: 0,
            overran: false,
        })
    }

    /// The entries (live: KVM writes them while vCPUs run).
    pub fn entries(&self) -> &[DirtyGfn] {
        // SAFETY: `entries` is a page-aligned mapping of `len` entries that lives until
        // `drop`; `DirtyGfn` is 16 bytes of atomics with no invalid bit patterns, so the
        // concurrent writes of KVM are only ever observed through atomic loads.
        unsafe { std::slice::from_raw_parts(self.entries.as_ptr(), self.len) }
    }

    /// Whether the ring is still in step with KVM. KVM never lets a ring fill up (the
    /// vCPU exits at the soft limit, `KVM_DIRTY_RING_RSVD_ENTRIES` short of full), so a
    /// harvest that found every entry published means KVM pushed past a full ring (PVM
    /// does not exit at the soft limit) and overwrote entries: from then on KVM's index
    /// and ours disagree and harvests find nothing, so pages would be lost silently
    /// (seen on PVM: a 64 MiB bulk guest filled the 1 MiB ring before READY; KVM then
    /// pushed at entry 453 while we waited at entry 0). Likewise an entry at our index
    /// that we marked RESET a lap ago and KVM never recycled.
    pub fn in_step(&self) -> bool {
        !self.overran && ring_in_step(self.entries(), self.fetch_index)
    }

    /// Harvests the published entries (see [`harvest_ring`]).
    pub fn harvest(&mut self, record: impl FnMut(u32, u64)) -> u32 {
        let mut index = self.fetch_index;
        let taken = harvest_ring(self.entries(), &mut index, record);
        self.fetch_index = index;
        self.overran |= taken as usize >= self.len;
        taken
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `map` with exactly this address and length,
        // and no reference into it outlives `self` (`entries` borrows `self`).
        unsafe {
            libc::munmap(
                self.entries.as_ptr().cast(),
                self.len * DIRTY_GFN_BYTES as usize,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: usize) -> Vec<DirtyGfn> {
        (0..n).map(|_| DirtyGfn::default()).collect()
    }

    fn take(ring: &[DirtyGfn], index: &mut u32) -> Vec<(u32, u64)> {
        let mut got = Vec::new();
        harvest_ring(ring, index, |s, o| got.push((s, o)));
        got
    }

    #[test]
    fn harvests_published_entries_in_order_and_marks_them_reset() {
        let r = ring(8);
        r[0].publish(0, 5);
        r[1].publish(1, 7);
        r[3].publish(0, 9); // after a gap: not reached yet
        let mut index = 0;
        assert_eq!(take(&r, &mut index), vec![(0, 5), (1, 7)]);
        assert_eq!(index, 2);
        assert_eq!(r[0].flags(), DIRTY_GFN_F_RESET);
        assert_eq!(r[1].flags(), DIRTY_GFN_F_RESET);
        assert_eq!(r[3].flags(), DIRTY_GFN_F_DIRTY, "untouched");
        // Nothing new: nothing taken, index unchanged (harvested entries are not retaken).
        assert_eq!(take(&r, &mut index), vec![]);
        assert_eq!(index, 2);
    }

    #[test]
    fn wraps_around_and_stops_after_one_lap() {
        let r = ring(4);
        let mut index = 0u32;
        // KVM fills the whole ring, userspace takes all of it.
        for (i, e) in r.iter().enumerate() {
            e.publish(0, i as u64);
        }
        assert_eq!(take(&r, &mut index).len(), 4, "at most one lap");
        assert!(r.iter().all(DirtyGfn::recycle), "KVM_RESET_DIRTY_RINGS");
        // KVM goes on from its own index 4 = slot 0 again.
        r[0].publish(2, 40);
        r[1].publish(2, 41);
        assert_eq!(take(&r, &mut index), vec![(2, 40), (2, 41)]);
        assert_eq!(index, 6);
        // The free-running index wraps at u32::MAX consistently with the mask.
        let mut index = u32::MAX;
        assert!(r[0].recycle() && r[1].recycle());
        r[3].publish(0, 1);
        r[0].publish(0, 2);
        assert_eq!(take(&r, &mut index), vec![(0, 1), (0, 2)]);
        assert_eq!(index, 1);
    }

    #[test]
    fn reset_entries_are_not_dirty_and_odd_sizes_are_refused() {
        let r = ring(2);
        r[0].publish(0, 1);
        let mut index = 0;
        assert_eq!(take(&r, &mut index).len(), 1);
        // Harvested but not yet recycled by KVM: not taken again after a lap.
        let mut again = 0;
        assert_eq!(take(&r, &mut again), vec![]);
        let odd = ring(3);
        odd[0].publish(0, 1);
        assert_eq!(take(&odd, &mut 0), vec![]);
    }

    #[test]
    fn a_ring_kvm_overran_is_out_of_step() {
        let r = ring(4);
        let mut index = 0;
        r[0].publish(0, 1);
        assert_eq!(take(&r, &mut index).len(), 1);
        assert!(r[0].recycle(), "KVM_RESET_DIRTY_RINGS");
        assert!(ring_in_step(&r, index), "a normal harvest and reset");
        // KVM pushes past a full ring: it overwrites entries we harvested (RESET) but
        // it has not recycled; its reset then stops at the overwritten one.
        for (i, e) in r.iter().enumerate() {
            e.publish(0, 10 + i as u64);
        }
        assert_eq!(take(&r, &mut index).len(), 4);
        // KVM's reset stopped early (at an entry it overwrote): the entry at our
        // index is still RESET from this lap.
        assert!(
            !ring_in_step(&r, index),
            "entry 1 is RESET and never recycled"
        );
        assert!(!ring_in_step(&ring(3), 0), "odd sizes are refused");
    }

    #[test]
    fn ring_sizes() {
        assert!(valid_ring_bytes(4096, 1 << 20));
        assert!(!valid_ring_bytes(1024, 1 << 20), "below a page");
        assert!(valid_ring_bytes(64 << 10, 1 << 20));
        assert!(valid_ring_bytes(1 << 20, 1 << 20));
        assert!(!valid_ring_bytes(512, 1 << 20), "below KVM's reserve");
        assert!(!valid_ring_bytes(3 << 10, 1 << 20), "not a power of two");
        assert!(!valid_ring_bytes(2 << 20, 1 << 20), "above the cap");
        assert!(!valid_ring_bytes(4096, 0), "no rings at all");
    }
}
