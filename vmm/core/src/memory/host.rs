//! Host mappings for guest RAM: steering them to 2 MiB-aligned addresses and asking for
//! transparent huge pages.
//!
//! KVM maps guest memory with huge pages in its second-level tables (EPT/NPT) only where a
//! guest-physical 2 MiB frame is backed by a host huge page, which needs the host virtual
//! address to be 2 MiB-aligned where the guest-physical one is. An anonymous `mmap` is
//! only page-aligned, so without help no guest 2 MiB frame lines up and every guest page
//! costs its own second-level fault and TLB entry. QEMU aligns its RAM blocks the same way.
//! Measured on the emulated hardware-KVM host (Linux guest, boot to its `/init` marker,
//! 5 alternating runs): median 7.57 s unaligned, 6.06 s aligned with `MADV_HUGEPAGE`.
//!
//! vm-memory makes and owns the mapping (`mmap(NULL, ...)`, no hint possible), so the
//! alignment is obtained by steering the kernel's top-down allocator: reserve `len` + 2 MiB
//! of address space, free its aligned lower part, keep the rest reserved while vm-memory
//! maps, then free the rest ([`AlignedGap`]). Another thread's `mmap` in between, or a
//! higher free gap, only costs the alignment: the mapping is vm-memory's either way.

use std::ptr::null_mut;

/// The alignment asked for: one x86-64 huge page.
pub const HUGE_PAGE: usize = 2 << 20;

/// Address space reserved (`PROT_NONE`) above a free, 2 MiB-aligned gap of `len` bytes, so
/// that the next top-down anonymous `mmap` of `len` bytes lands in that gap. Dropping it
/// frees the reservation.
#[derive(Debug)]
pub struct AlignedGap {
    /// `(start, len)` of the reserved part still mapped.
    reserved: Option<(usize, usize)>,
}

impl AlignedGap {
    /// Prepares a gap for a mapping of `len` bytes. Never fails: without a reservation
    /// the next mapping is simply not steered.
    pub fn prepare(len: usize) -> AlignedGap {
        let Some(total) = len.checked_add(HUGE_PAGE) else {
            return AlignedGap { reserved: None };
        };
        // SAFETY: a new private PROT_NONE mapping at an address of the kernel's choosing:
        // it overlaps nothing of ours and nothing can access it.
        let raw = unsafe {
            libc::mmap(
                null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return AlignedGap { reserved: None };
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let gap_end = aligned + len;
        // Free [start, aligned + len): the gap the next mapping of `len` bytes should take,
        // its top at `aligned + len`; keep [aligned + len, start + total) reserved.
        // SAFETY: [start, gap_end) lies inside the reservation made above (gap_end <=
        // start + total because aligned - start < HUGE_PAGE), which nothing else uses.
        let freed = unsafe { libc::munmap(raw, gap_end - start) };
        if freed != 0 {
            // Still wholly reserved: give it all back.
            // SAFETY: the whole reservation made above, used by nothing else.
            unsafe { libc::munmap(raw, total) };
            return AlignedGap { reserved: None };
        }
        let rest = start + total - gap_end;
        AlignedGap {
            reserved: (rest > 0).then_some((gap_end, rest)),
        }
    }
}

impl Drop for AlignedGap {
    fn drop(&mut self) {
        if let Some((start, len)) = self.reserved.take() {
            // SAFETY: the tail of our own PROT_NONE reservation, still mapped and used by
            // nothing else (mappings made meanwhile went to free gaps, never over it).
            unsafe { libc::munmap(start as *mut libc::c_void, len) };
        }
    }
}

/// Asks for transparent huge pages on `[addr, addr + len)`, a mapping of guest RAM.
/// Advisory: returns whether the kernel accepted it (it refuses when THP is compiled out).
pub fn advise_huge_pages(addr: *mut u8, len: usize) -> bool {
    // SAFETY: madvise(MADV_HUGEPAGE) changes no contents and no protection; on a range
    // that is not a mapping it fails with ENOMEM, which is reported, not undefined.
    unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_regions_are_usually_aligned() {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        // Steering is best effort (a higher free gap, another test thread's mmap), so
        // count, do not demand. 5 GiB: two regions (below and above the 32-bit hole), each
        // with a dirty bitmap big enough for malloc to mmap it.
        let size = crate::memory::MemorySize::from_bytes(5 << 30).unwrap_or_default();
        let (mut aligned, mut total) = (0, 0);
        for _ in 0..4 {
            let Ok(memory) = crate::memory::create_guest_memory(size) else {
                panic!("cannot map {size}");
            };
            for region in memory.iter() {
                total += 1;
                let host = region.as_ptr() as usize;
                if host % HUGE_PAGE == 0 {
                    aligned += 1;
                }
                // Accepted wherever the kernel has THP (sysfs shows it when mounted).
                if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
                    assert!(advise_huge_pages(region.as_ptr(), region.len() as usize));
                }
            }
        }
        assert_eq!(total, 8);
        assert!(
            aligned >= 6,
            "only {aligned} of {total} regions were 2 MiB-aligned"
        );
    }
}
