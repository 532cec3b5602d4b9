//! The boundary to KVM: the only module with `unsafe` code and raw `kvm-bindings` types.
//!
//! Everything above this module sees the VMM's own types ([`Registers`],
//! [`SpecialRegisters`], [`CpuidEntry`], [`VmExit`], [`KvmTranslation`]); the
//! conversions from and to the raw KVM structures happen here, via `From`.

mod convert;
pub mod kick;

use std::path::Path;

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_fpu, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, KvmError>;

/// Whether the host's `/dev/kvm` is PVM (the paging-based nested KVM module
/// `kvm_pvm`), which lacks 1 GiB guest pages and LA57.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
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
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(cpuid.as_slice().iter().map(CpuidEntry::from).collect())
    }

    /// Creates a VM.
    pub fn create_vm(&self) -> Result<KvmVm> {
        Ok(KvmVm {
            fd: self.kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?,
        })
    }
}

/// A KVM VM file descriptor.
#[derive(Debug)]
pub struct KvmVm {
    fd: VmFd,
}

impl KvmVm {
    /// Registers every region of `memory` as a KVM memory slot (slot = region index).
    ///
    /// The caller must keep `memory` (or a clone of it, which shares the mappings)
    /// alive for as long as this VM exists; [`crate::vm::Vm`] does.
    pub fn register_memory(&self, memory: &GuestMemoryMmap) -> Result<()> {
        for (index, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| KvmError::BadMemoryRegion { index })?;
            let slot = u32::try_from(index).map_err(|_| KvmError::BadMemoryRegion { index })?;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host .. host + len` is a live mapping owned by `memory` (an mmap
            // made by vm-memory for exactly this region), and the VM handle keeps a
            // clone of `memory` alive for as long as the VM fd exists, so the kernel
            // never sees a dangling host range.
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Sets the three-page TSS area that VMX needs for real mode (unused by our
    /// long-mode guests, but KVM on Intel expects it to be set before running).
    pub fn set_tss_address(&self, address: u64) -> Result<()> {
        let address = usize::try_from(address).unwrap_or(usize::MAX);
        self.fd
            .set_tss_address(address)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))
    }

    /// Creates vCPU `index`.
    pub fn create_vcpu(&self, index: u8) -> Result<KvmVcpu> {
        Ok(KvmVcpu {
            fd: self
                .fd
                .create_vcpu(u64::from(index))
                .map_err(ioctl("KVM_CREATE_VCPU"))?,
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
        self.fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))
    }

    /// The general-purpose registers.
    pub fn registers(&self) -> Result<Registers> {
        Ok(self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?.into())
    }

    /// Sets the general-purpose registers.
    pub fn set_registers(&self, registers: &Registers) -> Result<()> {
        self.fd
            .set_regs(&(*registers).into())
            .map_err(ioctl("KVM_SET_REGS"))
    }

    /// The special registers (segments, control registers, EFER).
    pub fn special_registers(&self) -> Result<SpecialRegisters> {
        Ok(self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?.into())
    }

    /// Sets the special registers; fields we do not model (the pending-interrupt
    /// bitmap) keep their current value.
    pub fn set_special_registers(&self, sregs: &SpecialRegisters) -> Result<()> {
        let mut raw = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        convert::fill_sregs(&mut raw, sregs);
        self.fd.set_sregs(&raw).map_err(ioctl("KVM_SET_SREGS"))
    }

    /// Sets the x87/SSE state to its reset values (FCW 0x37f, MXCSR 0x1f80).
    pub fn set_default_fpu(&self) -> Result<()> {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))
    }

    /// Translates a guest-virtual address with the vCPU's current paging state.
    pub fn translate(&self, gva: u64) -> Result<KvmTranslation> {
        let raw = self.fd.translate_gva(gva).map_err(ioctl("KVM_TRANSLATE"))?;
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
