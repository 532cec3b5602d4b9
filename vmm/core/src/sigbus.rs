//! Mapped files that shrink under us: an error, never a signal death.
//!
//! A memory file (or a snapshot's memory file) is mapped, not read, so that a walk of a
//! 4 GiB dump costs what the walk reads. If another process truncates the file while it
//! is mapped, touching a page past the new end raises SIGBUS, which kills the process
//! with no message. [`watch`] registers a mapping; while it is registered, SIGBUS on an
//! address inside it is handled by mapping one anonymous page of zeros over the faulting
//! page (`MAP_FIXED`, same protection) and recording the fault. The access is then
//! retried and reads zeros, and the owner of the mapping asks [`FaultWatch::faulted`]
//! after its work and reports the file as having changed, naming it. A SIGBUS anywhere
//! else restores the default action, so the process dies of it as it would have.
//!
//! The handler only reads atomics and calls `mmap`, a plain system call.

use std::ffi::c_void;
use std::io;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// Pages are replaced one at a time (x86-64).
const PAGE: usize = 4096;
/// How many mappings can be watched at once.
const SLOTS: usize = 64;

#[derive(Debug)]
struct Slot {
    /// Claimed by a [`FaultWatch`].
    used: AtomicBool,
    start: AtomicUsize,
    /// 0 while the slot is not active.
    len: AtomicUsize,
    prot: AtomicI32,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    used: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    prot: AtomicI32::new(0),
    faulted: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A watched mapping; dropping it stops the watch (drop it before unmapping).
#[derive(Debug)]
pub struct FaultWatch {
    slot: usize,
}

impl FaultWatch {
    /// Whether a page of the mapping faulted (the file shrank) since [`watch`].
    pub fn faulted(&self) -> bool {
        TABLE[self.slot].faulted.load(Ordering::Acquire)
    }
}

impl Drop for FaultWatch {
    fn drop(&mut self) {
        let slot = &TABLE[self.slot];
        slot.len.store(0, Ordering::Release);
        slot.used.store(false, Ordering::Release);
    }
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; for SIGBUS
    // si_addr is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &TABLE {
        let len = slot.len.load(Ordering::Acquire);
        let start = slot.start.load(Ordering::Acquire);
        if len == 0 || addr < start || addr - start >= len {
            continue;
        }
        let page = addr & !(PAGE - 1);
        // SAFETY: `page` lies inside a mapping registered by a live FaultWatch, whose
        // owner keeps it mapped while watched; MAP_FIXED replaces only that one page of it
        // with fresh anonymous memory of the same protection, which changes nothing but
        // what reads of the file's missing part return (zeros instead of a signal).
        let mapped = unsafe {
            libc::mmap(
                page as *mut c_void,
                PAGE,
                slot.prot.load(Ordering::Relaxed),
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            slot.faulted.store(true, Ordering::Release);
            return;
        }
    }
    // Not one of ours (or the page could not be replaced): back to the default action; the
    // access faults again and the process dies of SIGBUS as it would have without us.
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory-safety conditions.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

fn install() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised and the handler only touches atomics and
        // calls mmap/signal; the previous action is not needed (no other SIGBUS handler is
        // installed by this process).
        let rc = unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) };
        if rc == 0 {
            INSTALLED.store(true, Ordering::Release);
        } else {
            result = Err(io::Error::last_os_error());
        }
    });
    if result.is_ok() && !INSTALLED.load(Ordering::Acquire) {
        return Err(io::Error::other(
            "the SIGBUS handler could not be installed",
        ));
    }
    result
}

/// Watches the mapping `[start, start + len)` of protection `prot` (see the module docs).
pub fn watch(start: *const u8, len: usize, prot: libc::c_int) -> io::Result<FaultWatch> {
    install()?;
    for (index, slot) in TABLE.iter().enumerate() {
        if slot
            .used
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            slot.faulted.store(false, Ordering::Release);
            slot.prot.store(prot, Ordering::Release);
            slot.start.store(start as usize, Ordering::Release);
            slot.len.store(len, Ordering::Release);
            return Ok(FaultWatch { slot: index });
        }
    }
    Err(io::Error::other(format!(
        "more than {SLOTS} mapped files at once"
    )))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    /// Maps a 4-page file, truncates it to one page, and reads every page: zeros past the
    /// end, a fault recorded, no signal death.
    #[test]
    fn a_truncated_mapping_reads_zeros_and_is_reported() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0xabu8; 4 * PAGE]).unwrap();
        // SAFETY: a fresh private read-only mapping of a file we own, unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let watch = watch(ptr as *const u8, 4 * PAGE, libc::PROT_READ).unwrap();
        file.set_len(PAGE as u64).unwrap();
        let mut sum = 0u64;
        for i in 0..4 * PAGE {
            // SAFETY: inside the mapping; past the file's end the handler maps zeros.
            sum += u64::from(unsafe { std::ptr::read_volatile((ptr as *const u8).add(i)) });
        }
        assert_eq!(sum, 0xab * PAGE as u64);
        assert!(watch.faulted());
        drop(watch);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(ptr, 4 * PAGE) };
    }
}
