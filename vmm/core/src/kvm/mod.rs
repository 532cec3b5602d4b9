//! The boundary to KVM: the only module with `unsafe` code and raw `kvm-bindings` types.
//!
//! Everything above this module sees the VMM's own types ([`Registers`],
//! [`SpecialRegisters`], [`CpuidEntry`], [`VmExit`], [`KvmTranslation`]); the
//! conversions from and to the raw KVM structures happen here, via `From`.

mod convert;
pub mod dirty_ring;
pub mod kick;
pub mod state;

use std::path::Path;

use kvm_bindings::{
    KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_EXIT_DIRTY_RING_FULL, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, KVMIO, kvm_clear_dirty_log, kvm_enable_cap, kvm_fpu,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};

use crate::memory::GuestRam;
pub use dirty_ring::DirtyRing;

use crate::arch::x86_64::cpuid::CpuidEntry;
use crate::arch::x86_64::regs::{Registers, SpecialRegisters};

/// Errors from KVM ioctls.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// Opening `/dev/kvm` failed.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// An ioctl failed.
    #[error("KVM ioctl {what} failed: {source}")]
    Ioctl {
        /// Which operation failed.
        what: &'static str,
        /// The error from the kernel.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The CPUID list did not fit the KVM structure.
    #[error("the CPUID list has too many entries ({0})")]
    CpuidTooLarge(usize),
    /// A guest memory region's host address or size cannot be expressed to KVM.
    #[error("guest memory region {index} cannot be registered with KVM")]
    BadMemoryRegion {
        /// Index of the region.
        index: usize,
    },
    /// A `KVM_CLEAR_DIRTY_LOG` range that the kernel would refuse.
    #[error(
        "cannot clear the dirty log of slot {slot} from page {first_page} for {pages} pages: \
         the start must be a multiple of 64 pages and the length too, unless it reaches the \
         end of the slot ({slot_pages} pages), and the bitmap must cover it"
    )]
    BadClearRange {
        /// The slot.
        slot: u32,
        /// First page of the range.
        first_page: u64,
        /// Pages in the range.
        pages: u64,
        /// Pages in the slot.
        slot_pages: u64,
    },
    /// A dirty-ring size KVM would refuse.
    #[error(
        "a dirty ring of {bytes} bytes is not possible here: it must be a power of two \
         from {} bytes to the host's maximum of {max} bytes (0: no dirty rings)",
        dirty_ring::DIRTY_RING_MIN_BYTES
    )]
    BadDirtyRingSize {
        /// What was asked for.
        bytes: u32,
        /// `KVM_CHECK_EXTENSION(KVM_CAP_DIRTY_LOG_RING)`.
        max: u32,
    },
    /// KVM did not take every boot MSR.
    #[error(
        "KVM_SET_MSRS took only {set} of the {total} MSRs; the first refused is {first_refused:#x}"
    )]
    MsrsRefused {
        /// How many KVM set.
        set: usize,
        /// How many were asked for.
        total: usize,
        /// The index of the first MSR KVM did not set.
        first_refused: u32,
    },
    /// Saved KVM state that does not fit KVM's structure.
    #[error("cannot restore {what}: {reason}")]
    BadState {
        /// Which part of the state.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Mapping a vCPU's dirty ring failed.
    #[error("cannot map the vCPU's dirty ring of {bytes} bytes: {source}")]
    DirtyRingMap {
        /// Ring size.
        bytes: u32,
        /// The error from mmap.
        #[source]
        source: std::io::Error,
    },
}

fn ioctl_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, KvmError>;

/// Whether the host's `/dev/kvm` is PVM (the paging-based nested KVM module
/// `kvm_pvm`), which lacks 1 GiB guest pages and LA57.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Ioctl numbers kvm-ioctls does not define.
mod ioctl_numbers {
    use super::{KVMIO, kvm_clear_dirty_log};
    use vmm_sys_util::{ioctl_io_nr, ioctl_iowr_nr};

    // include/uapi/linux/kvm.h: `_IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)`.
    ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
    // include/uapi/linux/kvm.h: `_IO(KVMIO, 0xc7)`.
    ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);
}
use ioctl_numbers::{KVM_CLEAR_DIRTY_LOG, KVM_RESET_DIRTY_RINGS};

/// A KVM memory slot: which guest-physical range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySlot {
    /// KVM slot number.
    pub slot: u32,
    /// First guest-physical address.
    pub base: GuestAddress,
    /// Length in bytes (a multiple of 4 KiB).
    pub len: u64,
}

impl MemorySlot {
    /// 4 KiB pages in the slot (one dirty bit each).
    pub fn pages(&self) -> u64 {
        self.len.div_ceil(4096)
    }
}

/// What the host's KVM offers for dirty-page tracking, from `KVM_CHECK_EXTENSION` on a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirtyLogCapabilities {
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`: the flags KVM accepts (bit 0
    /// `MANUAL_PROTECT_ENABLE`, bit 1 `INITIALLY_SET`); 0 when unsupported.
    pub manual_protect_flags: u32,
    /// `KVM_CAP_DIRTY_LOG_RING`: the largest ring in bytes; 0 when unsupported.
    pub dirty_ring_max_bytes: u32,
    /// `KVM_CAP_DIRTY_LOG_RING_ACQ_REL` (the same rings, for weakly ordered hosts; x86
    /// may offer both): the largest ring in bytes; 0 when unsupported.
    pub dirty_ring_acq_rel_max_bytes: u32,
}

impl DirtyLogCapabilities {
    /// Whether `KVM_CLEAR_DIRTY_LOG` (manual protect) can be enabled.
    pub fn manual_protect(&self) -> bool {
        self.manual_protect_flags & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE != 0
    }

    /// Which dirty-ring capability to enable and its largest ring: the plain one when
    /// offered (the usual one on x86, whose memory order is strong), else `ACQ_REL`. Our
    /// harvesting uses acquire/release either way. `None` without dirty rings.
    pub fn dirty_ring(&self) -> Option<(DirtyRingCap, u32)> {
        if self.dirty_ring_max_bytes > 0 {
            Some((DirtyRingCap::Plain, self.dirty_ring_max_bytes))
        } else if self.dirty_ring_acq_rel_max_bytes > 0 {
            Some((DirtyRingCap::AcqRel, self.dirty_ring_acq_rel_max_bytes))
        } else {
            None
        }
    }
}

/// Which of the two dirty-ring capabilities a VM uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyRingCap {
    /// `KVM_CAP_DIRTY_LOG_RING`.
    Plain,
    /// `KVM_CAP_DIRTY_LOG_RING_ACQ_REL`.
    AcqRel,
}

/// Checks a `KVM_CLEAR_DIRTY_LOG` range and builds its argument. The kernel wants
/// `first_page` a multiple of 64 and `pages` a multiple of 64 unless the range ends at
/// the end of the slot; `bitmap` holds one bit per page of the range (bit 0 of word 0 is
/// `first_page`). The returned struct points into `bitmap`.
fn clear_dirty_log_arg(
    slot: &MemorySlot,
    first_page: u64,
    pages: u64,
    bitmap: &mut [u64],
) -> Result<kvm_clear_dirty_log> {
    let slot_pages = slot.pages();
    let bad = || KvmError::BadClearRange {
        slot: slot.slot,
        first_page,
        pages,
        slot_pages,
    };
    let end = first_page.checked_add(pages).ok_or_else(bad)?;
    let aligned = first_page % 64 == 0 && (pages % 64 == 0 || end == slot_pages);
    if pages == 0 || end > slot_pages || !aligned || (bitmap.len() as u64) < pages.div_ceil(64) {
        return Err(bad());
    }
    let mut arg = kvm_clear_dirty_log {
        slot: slot.slot,
        num_pages: u32::try_from(pages).map_err(|_| bad())?,
        first_page,
        ..Default::default()
    };
    arg.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
    Ok(arg)
}

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Opens `/dev/kvm`.
    pub fn open() -> Result<Self> {
        Ok(Self {
            kvm: Kvm::new().map_err(KvmError::Open)?,
        })
    }

    /// The CPUID entries KVM supports on this host.
    pub fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_error("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(cpuid.as_slice().iter().map(CpuidEntry::from).collect())
    }

    /// The MSRs KVM can save and restore for a vCPU (`KVM_GET_MSR_INDEX_LIST`).
    pub fn msr_index_list(&self) -> Result<Vec<u32>> {
        Ok(self
            .kvm
            .get_msr_index_list()
            .map_err(ioctl_error("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec())
    }

    /// Whether the in-kernel LAPIC emulates the TSC-deadline timer
    /// (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub fn has_tsc_deadline_timer(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// Creates a VM.
    pub fn create_vm(&self) -> Result<KvmVm> {
        Ok(KvmVm {
            fd: self.kvm.create_vm().map_err(ioctl_error("KVM_CREATE_VM"))?,
            registered: Default::default(),
        })
    }
}

/// A KVM VM file descriptor, and the guest memory registered with it.
#[derive(Debug)]
pub struct KvmVm {
    // Declared first, so dropped first: the VM fd (and with it every memory slot) goes
    // before the memory the slots point into.
    fd: VmFd,
    /// Clones of every memory registered with [`KvmVm::register_memory`] (they share the
    /// mappings): whoever holds this VM holds its RAM, so no slot can outlive its memory,
    /// however the owners of the VM are dropped.
    registered: std::sync::Mutex<Vec<GuestRam>>,
}

impl KvmVm {
    /// What KVM offers for dirty logging on this VM.
    pub fn dirty_log_capabilities(&self) -> DirtyLogCapabilities {
        let value = |cap: u32| {
            u32::try_from(self.fd.check_extension_raw(libc::c_ulong::from(cap))).unwrap_or(0)
        };
        DirtyLogCapabilities {
            manual_protect_flags: value(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2),
            dirty_ring_max_bytes: value(KVM_CAP_DIRTY_LOG_RING),
            dirty_ring_acq_rel_max_bytes: value(KVM_CAP_DIRTY_LOG_RING_ACQ_REL),
        }
    }

    /// Enables per-vCPU dirty rings of `bytes` bytes each (see [`dirty_ring`]). Must be
    /// called before the first vCPU is created; the memory slots still need
    /// `KVM_MEM_LOG_DIRTY_PAGES`, and `KVM_GET_DIRTY_LOG` no longer works. Returns the
    /// capability used.
    pub fn enable_dirty_ring(&self, bytes: u32) -> Result<DirtyRingCap> {
        let caps = self.dirty_log_capabilities();
        let (which, max) = caps.dirty_ring().unwrap_or((DirtyRingCap::Plain, 0));
        if !dirty_ring::valid_ring_bytes(bytes, max) {
            return Err(KvmError::BadDirtyRingSize { bytes, max });
        }
        let mut cap = kvm_enable_cap {
            cap: match which {
                DirtyRingCap::Plain => KVM_CAP_DIRTY_LOG_RING,
                DirtyRingCap::AcqRel => KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
            },
            ..Default::default()
        };
        cap.args[0] = u64::from(bytes);
        self.fd
            .enable_cap(&cap)
            .map_err(ioctl_error("KVM_ENABLE_CAP(DIRTY_LOG_RING)"))?;
        Ok(which)
    }

    /// `KVM_RESET_DIRTY_RINGS`: recycles every harvested (RESET) entry of every vCPU's
    /// ring and write-protects those pages again. Returns how many entries it recycled.
    pub fn reset_dirty_rings(&self) -> Result<u32> {
        // SAFETY: `KVM_RESET_DIRTY_RINGS` takes no argument and touches no userspace
        // memory other than the rings, which KVM owns and we only access atomically.
        // `self.fd` is a VM fd.
        let ret = unsafe { ioctl(&self.fd, KVM_RESET_DIRTY_RINGS()) };
        u32::try_from(ret).map_err(|_| KvmError::Ioctl {
            what: "KVM_RESET_DIRTY_RINGS",
            source: kvm_ioctls::Error::last(),
        })
    }

    /// Enables (or, with `false`, disables) `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`:
    /// `KVM_GET_DIRTY_LOG` then only reads the log, and [`KvmVm::clear_dirty_log`]
    /// resets it and write-protects the pages again. Not `INITIALLY_SET`: the log starts
    /// clean, as without manual protect.
    pub fn set_manual_dirty_log_protect(&self, enable: bool) -> Result<()> {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            ..Default::default()
        };
        cap.args[0] = if enable {
            u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        } else {
            0
        };
        self.fd
            .enable_cap(&cap)
            .map_err(ioctl_error("KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)"))
    }

    /// Registers every region of `memory` as a KVM memory slot (slot = region index),
    /// with `KVM_MEM_LOG_DIRTY_PAGES` when `log_dirty`. Returns the slots. The VM keeps a
    /// clone of `memory` (sharing its mappings) for as long as it exists.
    pub fn register_memory(&self, memory: &GuestRam, log_dirty: bool) -> Result<Vec<MemorySlot>> {
        // Kept before any slot points into it.
        self.registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(memory.clone());
        let mut slots = Vec::new();
        for (index, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| KvmError::BadMemoryRegion { index })?;
            let slot = u32::try_from(index).map_err(|_| KvmError::BadMemoryRegion { index })?;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags: if log_dirty {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host .. host + len` is a live mapping owned by `memory` (an mmap
            // made by vm-memory for exactly this region), and `self.registered` holds a
            // clone of `memory` (sharing that mapping) until after `self.fd` is closed
            // (field order), so the kernel never sees a dangling host range.
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(ioctl_error("KVM_SET_USER_MEMORY_REGION"))?;
            slots.push(MemorySlot {
                slot,
                base: region.start_addr(),
                len: region.len(),
            });
        }
        Ok(slots)
    }

    /// `KVM_GET_DIRTY_LOG` of one slot: one bit per 4 KiB page, bit `i % 64` of word
    /// `i / 64` for page `i`. Without manual protect, this also resets the log.
    pub fn get_dirty_log(&self, slot: &MemorySlot) -> Result<Vec<u64>> {
        let len = usize::try_from(slot.len).map_err(|_| KvmError::BadMemoryRegion {
            index: slot.slot as usize,
        })?;
        self.fd
            .get_dirty_log(slot.slot, len)
            .map_err(ioctl_error("KVM_GET_DIRTY_LOG"))
    }

    /// `KVM_CLEAR_DIRTY_LOG`: resets the dirty bits of `slot` set in `bitmap` (bit 0 of
    /// word 0 = `first_page`) over `pages` pages, and write-protects those pages again.
    /// Needs manual protect ([`KvmVm::set_manual_dirty_log_protect`]).
    pub fn clear_dirty_log(
        &self,
        slot: &MemorySlot,
        first_page: u64,
        pages: u64,
        bitmap: &[u64],
    ) -> Result<()> {
        // The kernel only reads the bitmap; a private copy keeps `bitmap` shared.
        let mut words = bitmap.to_vec();
        let arg = clear_dirty_log_arg(slot, first_page, pages, &mut words)?;
        // SAFETY: `arg` is a fully initialised `kvm_clear_dirty_log` whose bitmap pointer
        // points into `words`, which lives until after the call and holds at least
        // `pages` bits (checked by `clear_dirty_log_arg`); the kernel reads the struct and
        // the bitmap and writes neither. `self.fd` is a VM fd.
        let ret = unsafe { ioctl_with_ref(&self.fd, KVM_CLEAR_DIRTY_LOG(), &arg) };
        if ret < 0 {
            return Err(KvmError::Ioctl {
                what: "KVM_CLEAR_DIRTY_LOG",
                source: kvm_ioctls::Error::last(),
            });
        }
        Ok(())
    }

    /// Sets the three-page TSS area that VMX needs for real mode (unused by our
    /// long-mode guests, but KVM on Intel expects it to be set before running).
    pub fn set_tss_address(&self, address: u64) -> Result<()> {
        let address = usize::try_from(address).unwrap_or(usize::MAX);
        self.fd
            .set_tss_address(address)
            .map_err(ioctl_error("KVM_SET_TSS_ADDR"))
    }

    /// Creates the in-kernel interrupt controllers (two 8259 PICs, an IOAPIC and a
    /// LAPIC per vCPU) and the 8254 PIT (with a dummy speaker port 0x61). Before any
    /// vCPU exists. With them, KVM handles HLT itself: no more `Hlt` exits.
    pub fn create_irqchip_and_pit(&self) -> Result<()> {
        self.fd
            .create_irq_chip()
            .map_err(ioctl_error("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(ioctl_error("KVM_CREATE_PIT2"))
    }

    /// Makes every write to `event` raise interrupt line `gsi` (an edge, `KVM_IRQFD`).
    pub fn register_irqfd(&self, event: &vmm_sys_util::eventfd::EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(ioctl_error("KVM_IRQFD"))
    }

    /// Creates vCPU `index`.
    pub fn create_vcpu(&self, index: u8) -> Result<KvmVcpu> {
        Ok(KvmVcpu {
            fd: self
                .fd
                .create_vcpu(u64::from(index))
                .map_err(ioctl_error("KVM_CREATE_VCPU"))?,
        })
    }
}

/// The result of `KVM_TRANSLATE` for one guest-virtual address, with the current
/// paging state of the vCPU.
///
/// On x86, KVM fills only `valid` and the address: it always reports `writeable` =
/// true and `usermode` = false (arch/x86/kvm/x86.c,
/// `kvm_arch_vcpu_ioctl_translate`), so do not use those two as an oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmTranslation {
    /// The address is mapped.
    pub valid: bool,
    /// The guest-physical address it maps to (meaningful only when `valid`).
    pub gpa: GuestAddress,
    /// The mapping is writable.
    pub writeable: bool,
    /// The mapping is accessible from user mode.
    pub usermode: bool,
}

/// One exit of `KVM_RUN`, in the VMM's own terms.
#[derive(Debug, PartialEq, Eq)]
pub enum VmExit<'a> {
    /// `IN` from a port: fill `data`.
    IoIn {
        /// Port number.
        port: u16,
        /// Bytes to fill (1, 2 or 4).
        data: &'a mut [u8],
    },
    /// `OUT` to a port.
    IoOut {
        /// Port number.
        port: u16,
        /// Bytes written.
        data: &'a [u8],
    },
    /// A read from guest-physical memory that is not RAM.
    MmioRead {
        /// Guest-physical address.
        address: u64,
        /// Bytes to fill.
        data: &'a mut [u8],
    },
    /// A write to guest-physical memory that is not RAM.
    MmioWrite {
        /// Guest-physical address.
        address: u64,
        /// Bytes written.
        data: &'a [u8],
    },
    /// The vCPU executed `HLT` (no in-kernel irqchip, so it comes to us).
    Hlt,
    /// The vCPU shut down: a triple fault.
    Shutdown,
    /// KVM could not handle something (e.g. an instruction it cannot emulate).
    InternalError {
        /// `kvm_run.internal.suberror` (1 = emulation failure, ...).
        suberror: u32,
    },
    /// Entering the guest failed.
    FailEntry {
        /// Hardware-specific reason.
        reason: u64,
        /// The host CPU.
        cpu: u32,
    },
    /// `KVM_RUN` returned because of a signal or `immediate_exit` (EINTR/EAGAIN).
    Interrupted,
    /// `KVM_EXIT_DIRTY_RING_FULL`: the vCPU's dirty ring reached its soft limit; it
    /// exits again at once unless the ring is harvested and reset.
    DirtyRingFull,
    /// Any other exit, named.
    Other(String),
}

/// A KVM vCPU.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
}

impl KvmVcpu {
    /// Sets the CPUID the guest sees.
    pub fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        let raw: Vec<kvm_bindings::kvm_cpuid_entry2> =
            entries.iter().copied().map(Into::into).collect();
        let cpuid = kvm_bindings::CpuId::from_entries(&raw)
            .map_err(|_| KvmError::CpuidTooLarge(entries.len()))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(ioctl_error("KVM_SET_CPUID2"))
    }

    /// The general-purpose registers.
    pub fn registers(&self) -> Result<Registers> {
        Ok(self
            .fd
            .get_regs()
            .map_err(ioctl_error("KVM_GET_REGS"))?
            .into())
    }

    /// Sets the general-purpose registers.
    pub fn set_registers(&self, registers: &Registers) -> Result<()> {
        self.fd
            .set_regs(&(*registers).into())
            .map_err(ioctl_error("KVM_SET_REGS"))
    }

    /// The special registers (segments, control registers, EFER).
    pub fn special_registers(&self) -> Result<SpecialRegisters> {
        Ok(self
            .fd
            .get_sregs()
            .map_err(ioctl_error("KVM_GET_SREGS"))?
            .into())
    }

    /// Sets the special registers; fields we do not model (the pending-interrupt
    /// bitmap) keep their current value.
    pub fn set_special_registers(&self, sregs: &SpecialRegisters) -> Result<()> {
        let mut raw = self.fd.get_sregs().map_err(ioctl_error("KVM_GET_SREGS"))?;
        convert::fill_sregs(&mut raw, sregs);
        self.fd
            .set_sregs(&raw)
            .map_err(ioctl_error("KVM_SET_SREGS"))
    }

    /// Sets the x87/SSE state to its reset values (FCW 0x37f, MXCSR 0x1f80).
    pub fn set_default_fpu(&self) -> Result<()> {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(ioctl_error("KVM_SET_FPU"))
    }

    /// Sets model-specific registers, `(index, value)` each; fails naming the first
    /// one KVM refuses.
    pub fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<()> {
        let entries: Vec<kvm_bindings::kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let raw = kvm_bindings::Msrs::from_entries(&entries)
            .map_err(|_| KvmError::CpuidTooLarge(entries.len()))?;
        let set = self
            .fd
            .set_msrs(&raw)
            .map_err(ioctl_error("KVM_SET_MSRS"))?;
        if set < msrs.len() {
            return Err(KvmError::MsrsRefused {
                set,
                total: msrs.len(),
                first_refused: msrs[set].0,
            });
        }
        Ok(())
    }

    /// Rewrites the local APIC's LVT LINT0 and LINT1 registers with `f(offset, value)`
    /// (`KVM_GET_LAPIC`, then `KVM_SET_LAPIC`). Needs the in-kernel irqchip.
    pub fn update_lapic_lints(&self, f: impl Fn(usize, u32) -> u32) -> Result<()> {
        use crate::arch::x86_64::regs::{APIC_LVT_LINT0, APIC_LVT_LINT1};
        let mut lapic = self.fd.get_lapic().map_err(ioctl_error("KVM_GET_LAPIC"))?;
        for offset in [APIC_LVT_LINT0, APIC_LVT_LINT1] {
            // The register page is an array of C chars; each register is a
            // little-endian u32 at its offset.
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
            let value = f(offset, u32::from_le_bytes(bytes));
            for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
                lapic.regs[offset + i] = byte as libc::c_char;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(ioctl_error("KVM_SET_LAPIC"))
    }

    /// Maps this vCPU's dirty ring of `bytes` bytes (enabled on the VM with
    /// [`KvmVm::enable_dirty_ring`] before the vCPU was created).
    pub fn map_dirty_ring(&self, bytes: u32) -> Result<DirtyRing> {
        DirtyRing::map(&self.fd, bytes)
    }

    /// Translates a guest-virtual address with the vCPU's current paging state.
    pub fn translate(&self, gva: u64) -> Result<KvmTranslation> {
        let raw = self
            .fd
            .translate_gva(gva)
            .map_err(ioctl_error("KVM_TRANSLATE"))?;
        Ok(raw.into())
    }

    /// Sets or clears `kvm_run.immediate_exit`.
    pub fn set_immediate_exit(&mut self, value: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(value));
    }

    /// Runs the vCPU until the next exit.
    pub fn run(&mut self) -> Result<VmExit<'_>> {
        // The internal-error details live in `kvm_run` outside the returned enum; keep a
        // pointer to read them without re-borrowing `self.fd` while the exit borrows it.
        let kvm_run: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => Ok(VmExit::IoIn { port, data }),
            Ok(VcpuExit::IoOut(port, data)) => Ok(VmExit::IoOut { port, data }),
            Ok(VcpuExit::MmioRead(address, data)) => Ok(VmExit::MmioRead { address, data }),
            Ok(VcpuExit::MmioWrite(address, data)) => Ok(VmExit::MmioWrite { address, data }),
            Ok(VcpuExit::Hlt) => Ok(VmExit::Hlt),
            Ok(VcpuExit::Shutdown) => Ok(VmExit::Shutdown),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Ok(VmExit::FailEntry { reason, cpu }),
            Ok(VcpuExit::Intr) => Ok(VmExit::Interrupted),
            Ok(VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL)) => Ok(VmExit::DirtyRingFull),
            Ok(VcpuExit::InternalError) => {
                // SAFETY: `kvm_run` points into the vCPU's kvm_run mmap, which lives as
                // long as `self.fd`. KVM_RUN just returned KVM_EXIT_INTERNAL_ERROR, for
                // which the kernel fills the `internal` member of the exit union; any bit
                // pattern is a valid u32 and the vCPU is not running, so nothing races.
                let suberror = unsafe { (*kvm_run).__bindgen_anon_1.internal.suberror };
                Ok(VmExit::InternalError { suberror })
            }
            Ok(other) => Ok(VmExit::Other(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VmExit::Interrupted)
            }
            Err(source) => Err(KvmError::Ioctl {
                what: "KVM_RUN",
                source,
            }),
        }
    }

    /// A pointer to `kvm_run.immediate_exit`, for the kick signal handler
    /// ([`kick`]). Valid for as long as this vCPU exists.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &raw mut self.fd.get_kvm_run().immediate_exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: MemorySlot = MemorySlot {
        slot: 1,
        base: GuestAddress(0x1_0000_0000),
        len: 100 * 4096,
    };

    #[test]
    fn clear_dirty_log_ioctl_number_matches_the_kernel() {
        // _IOWR(0xAE, 0xC0, 24 bytes), from include/uapi/linux/kvm.h.
        assert_eq!(std::mem::size_of::<kvm_clear_dirty_log>(), 24);
        assert_eq!(KVM_CLEAR_DIRTY_LOG(), 0xc018_aec0);
        // _IO(0xAE, 0xC7).
        assert_eq!(KVM_RESET_DIRTY_RINGS(), 0xaec7);
    }

    #[test]
    fn clear_ranges_follow_the_kernel_rules() {
        let mut words = vec![0x5u64; 2];
        let Ok(arg) = clear_dirty_log_arg(&SLOT, 0, 100, &mut words) else {
            panic!("the whole slot must be accepted");
        };
        assert_eq!((arg.slot, arg.num_pages, arg.first_page), (1, 100, 0));
        // SAFETY: the union member was just written by `clear_dirty_log_arg`.
        let ptr = unsafe { arg.__bindgen_anon_1.dirty_bitmap };
        assert_eq!(ptr.cast::<u64>(), words.as_mut_ptr());
        assert!(clear_dirty_log_arg(&SLOT, 0, 64, &mut words).is_ok());
        assert!(
            clear_dirty_log_arg(&SLOT, 64, 36, &mut words).is_ok(),
            "to the end"
        );
        let rejected = [(1, 63), (0, 10), (64, 37), (64, 0), (u64::MAX, 2)];
        for (first, pages) in rejected {
            assert!(
                matches!(
                    clear_dirty_log_arg(&SLOT, first, pages, &mut words),
                    Err(KvmError::BadClearRange { .. })
                ),
                "{first} + {pages}"
            );
        }
        let mut short = vec![0u64; 1];
        assert!(clear_dirty_log_arg(&SLOT, 0, 100, &mut short).is_err());
    }

    #[test]
    fn capabilities_decode() {
        let caps = DirtyLogCapabilities {
            manual_protect_flags: 3,
            dirty_ring_max_bytes: 0,
            dirty_ring_acq_rel_max_bytes: 0,
        };
        assert!(caps.manual_protect());
        assert!(!DirtyLogCapabilities::default().manual_protect());
        assert_eq!(caps.dirty_ring(), None);
        let both = DirtyLogCapabilities {
            dirty_ring_max_bytes: 1 << 20,
            dirty_ring_acq_rel_max_bytes: 1 << 20,
            ..caps
        };
        assert_eq!(both.dirty_ring(), Some((DirtyRingCap::Plain, 1 << 20)));
        let acq_rel = DirtyLogCapabilities {
            dirty_ring_acq_rel_max_bytes: 1 << 16,
            ..caps
        };
        assert_eq!(acq_rel.dirty_ring(), Some((DirtyRingCap::AcqRel, 1 << 16)));
    }
}
