//! What KVM holds of a vCPU and of a VM beyond the registers the VMM models itself: the
//! parts a snapshot needs so that a restored VM continues where it stopped.
//!
//! Structures whose fields the VMM never reads (the XSAVE area, the local APIC's register
//! page, pending events, the interrupt controllers, the PIT) are carried as KVM's own
//! bytes ([`KvmBlob`]), checked for their exact length when read back; the rest (MSRs,
//! XCRs, debug registers, the clock, MP state, TSC frequency) are typed, so a state file
//! says what it holds.
//!
//! # Order
//!
//! Saving, on a paused vCPU ([`KvmVcpu::save_state`]): MP state first (reading it makes
//! KVM accept pending INIT/SIPI events, which changes the LAPIC), then the XSAVE area,
//! XCRs, debug registers, the LAPIC, the TSC frequency, CPUID, MSRs, and the vCPU events
//! last (reading the LAPIC may deliver a pending interrupt, which is an event).
//! Restoring ([`KvmVcpu::restore_state`], after CPUID): MP state, the general and
//! special registers, XSAVE, XCRs, debug registers, LAPIC, MSRs with
//! `IA32_TSC_DEADLINE` after `IA32_TSC` (a deadline is a TSC value: written before the
//! TSC it would be armed against the new vCPU's TSC), then the vCPU events, whose
//! pending interrupt and exception must not be overwritten by anything set later. The
//! VM's parts ([`KvmVm::save_state`], [`KvmVm::restore_state`]) go after every vCPU:
//! the PIT, the clock, then the PICs and the IOAPIC. This is the order of Firecracker's
//! and Cloud Hypervisor's vCPU state code and of QEMU's `kvm_arch_put_registers`.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_MSR_ENTRIES,
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::{KvmError, KvmVcpu, KvmVm, Result, ioctl_error};
use crate::arch::x86_64::cpuid::CpuidEntry;
use crate::arch::x86_64::regs::{Registers, SpecialRegisters};

/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_DEADLINE`.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// MSRs KVM lists but a snapshot leaves out, as Firecracker does: Linux does not export
/// them to its guests' state (`IA32_FEATURE_CONTROL` is the host's lock of VMX/SGX,
/// `IA32_MCG_CTL` the machine-check bank control).
const MSRS_NOT_SAVED: [u32; 2] = [0x3a, 0x17b];

/// The bytes of a KVM structure, carried as they are. In a state file: a string of
/// lowercase hex digits, two per byte.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KvmBlob(Vec<u8>);

impl KvmBlob {
    /// The bytes of `value`.
    fn of<T: IntoBytes + Immutable>(value: &T) -> Self {
        Self(value.as_bytes().to_vec())
    }

    /// The structure these bytes are, when they are exactly its size.
    fn to<T: FromBytes>(&self, what: &'static str) -> Result<T> {
        T::read_from_bytes(&self.0).map_err(|_| KvmError::BadState {
            what,
            reason: format!(
                "{} bytes, KVM's structure has {}",
                self.0.len(),
                std::mem::size_of::<T>()
            ),
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for KvmBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvmBlob({} bytes)", self.0.len())
    }
}

impl Serialize for KvmBlob {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use std::fmt::Write;
        let mut text = String::with_capacity(self.0.len() * 2);
        for byte in &self.0 {
            let _ = write!(text, "{byte:02x}");
        }
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for KvmBlob {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse_hex(&text).map(Self).map_err(serde::de::Error::custom)
    }
}

/// The bytes of a string of hex digit pairs.
fn parse_hex(text: &str) -> std::result::Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err(format!("{} hex digits: not whole bytes", text.len()));
    }
    text.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("byte {i} is not two hex digits"))
        })
        .collect()
}

/// One model-specific register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msr {
    /// Its index (`ECX` of `RDMSR`).
    pub index: u32,
    /// Its value.
    pub value: u64,
}

/// One extended control register (`XCR0` is the only one x86 has so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xcr {
    /// Which XCR.
    pub xcr: u32,
    /// Its value.
    pub value: u64,
}

/// The debug registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRegisters {
    /// DR0-DR3: breakpoint addresses.
    pub db: [u64; 4],
    /// DR6: debug status.
    pub dr6: u64,
    /// DR7: debug control.
    pub dr7: u64,
    /// KVM's flags of `kvm_debugregs`.
    pub flags: u64,
}

/// Everything KVM holds of one vCPU beyond its general and special registers (which the
/// VMM models itself: [`crate::arch::x86_64::regs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuKvmState {
    /// CPUID as the VMM gave it to the vCPU (not `KVM_GET_CPUID2`'s answer, which adds
    /// runtime bits such as OSXSAVE; [`KvmVcpu::save_state`] leaves it empty for the VMM
    /// to fill).
    pub cpuid: Vec<CpuidEntry>,
    /// `KVM_MP_STATE_*` (0 runnable, 1 uninitialized, 2 init received, 3 halted, ...).
    pub mp_state: u32,
    /// `kvm_sregs.interrupt_bitmap`: an external interrupt KVM was injecting.
    pub interrupt_bitmap: [u64; 4],
    /// The XSAVE area (`kvm_xsave`, 4 KiB: x87, SSE, AVX, ... state).
    pub xsave: KvmBlob,
    /// Extended control registers.
    pub xcrs: Vec<Xcr>,
    /// Debug registers.
    pub debug: DebugRegisters,
    /// The local APIC's register page (`kvm_lapic_state`), when the VM has the in-kernel
    /// interrupt controllers.
    pub lapic: Option<KvmBlob>,
    /// Every MSR KVM lists as saveable and let us read, in the order read.
    pub msrs: Vec<Msr>,
    /// Pending exception, interrupt, NMI and SMI state (`kvm_vcpu_events`).
    pub events: KvmBlob,
    /// The vCPU's TSC frequency in kHz, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// The in-kernel interrupt controllers and PIT of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqchipState {
    /// The master 8259 (`kvm_irqchip`, chip 0).
    pub pic_master: KvmBlob,
    /// The slave 8259 (`kvm_irqchip`, chip 1).
    pub pic_slave: KvmBlob,
    /// The IOAPIC (`kvm_irqchip`, chip 2).
    pub ioapic: KvmBlob,
    /// The 8254 PIT (`kvm_pit_state2`).
    pub pit: KvmBlob,
}

/// What KVM holds of a VM as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmKvmState {
    /// The kvmclock's time in nanoseconds (`KVM_GET_CLOCK`).
    pub clock_ns: u64,
    /// The interrupt controllers and the PIT, when the VM has them.
    pub irqchip: Option<IrqchipState>,
}

impl VcpuKvmState {
    /// Whether every structure carried as bytes has KVM's size and the lists fit KVM's,
    /// so that a restore fails before any VM exists rather than half-way.
    pub fn check(&self) -> Result<()> {
        self.xsave.to::<kvm_xsave>("the XSAVE area")?;
        self.events.to::<kvm_vcpu_events>("the vCPU events")?;
        if let Some(lapic) = &self.lapic {
            lapic.to::<kvm_lapic_state>("the LAPIC")?;
        }
        let max_xcrs = kvm_xcrs::default().xcrs.len();
        if self.xcrs.len() > max_xcrs {
            return Err(KvmError::BadState {
                what: "the XCRs",
                reason: format!("{} of them, KVM takes at most {max_xcrs}", self.xcrs.len()),
            });
        }
        Ok(())
    }
}

impl VmKvmState {
    /// [`VcpuKvmState::check`] for the VM's part: the PIT's size, each irqchip's size and
    /// chip number.
    pub fn check(&self) -> Result<()> {
        let Some(chips) = &self.irqchip else {
            return Ok(());
        };
        chips.pit.to::<kvm_pit_state2>("the PIT")?;
        for (blob, id, what) in chips.chips() {
            let raw: kvm_irqchip = blob.to(what)?;
            if raw.chip_id != id {
                return Err(KvmError::BadState {
                    what,
                    reason: format!("it is chip {}, not chip {id}", raw.chip_id),
                });
            }
        }
        Ok(())
    }
}

impl IrqchipState {
    /// The three chips with their KVM numbers and names.
    fn chips(&self) -> [(&KvmBlob, u32, &'static str); 3] {
        [
            (&self.pic_master, KVM_IRQCHIP_PIC_MASTER, "the master PIC"),
            (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE, "the slave PIC"),
            (&self.ioapic, KVM_IRQCHIP_IOAPIC, "the IOAPIC"),
        ]
    }
}

impl KvmVcpu {
    /// Reads everything [`VcpuKvmState`] holds (see the module docs for the order). The
    /// vCPU must be paused, and every other vCPU of its VM too (an IPI would change its
    /// pending events meanwhile). `msr_indices` are the MSRs to try
    /// ([`super::Hypervisor::msr_index_list`]); those KVM will not read are left out.
    /// `irqchip`: whether the VM has the in-kernel LAPIC.
    pub fn save_state(&self, msr_indices: &[u32], irqchip: bool) -> Result<VcpuKvmState> {
        let mp_state = self
            .fd
            .get_mp_state()
            .map_err(ioctl_error("KVM_GET_MP_STATE"))?
            .mp_state;
        let interrupt_bitmap = self
            .fd
            .get_sregs()
            .map_err(ioctl_error("KVM_GET_SREGS"))?
            .interrupt_bitmap;
        let xsave = KvmBlob::of(&self.fd.get_xsave().map_err(ioctl_error("KVM_GET_XSAVE"))?);
        let raw_xcrs = self.fd.get_xcrs().map_err(ioctl_error("KVM_GET_XCRS"))?;
        let count = usize::try_from(raw_xcrs.nr_xcrs)
            .unwrap_or(usize::MAX)
            .min(raw_xcrs.xcrs.len());
        let xcrs = raw_xcrs.xcrs[..count]
            .iter()
            .map(|x| Xcr {
                xcr: x.xcr,
                value: x.value,
            })
            .collect();
        let raw_debug = self
            .fd
            .get_debug_regs()
            .map_err(ioctl_error("KVM_GET_DEBUGREGS"))?;
        let debug = DebugRegisters {
            db: raw_debug.db,
            dr6: raw_debug.dr6,
            dr7: raw_debug.dr7,
            flags: raw_debug.flags,
        };
        let lapic = if irqchip {
            Some(KvmBlob::of(
                &self.fd.get_lapic().map_err(ioctl_error("KVM_GET_LAPIC"))?,
            ))
        } else {
            None
        };
        let tsc_khz = self.fd.get_tsc_khz().ok().filter(|&khz| khz != 0);
        let msrs = self.readable_msrs(msr_indices)?;
        let events = KvmBlob::of(
            &self
                .fd
                .get_vcpu_events()
                .map_err(ioctl_error("KVM_GET_VCPU_EVENTS"))?,
        );
        Ok(VcpuKvmState {
            // The VMM fills it in: KVM_GET_CPUID2 answers with KVM's runtime bits
            // (OSXSAVE, the APIC bit) and, on some hosts, more than was set.
            cpuid: Vec::new(),
            mp_state,
            interrupt_bitmap,
            xsave,
            xcrs,
            debug,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }

    /// The values of `indices` (less [`MSRS_NOT_SAVED`]) that KVM reads, in order. KVM
    /// reads a list up to the first MSR it refuses and says how many it read; that one
    /// is left out and the rest read again (as Cloud Hypervisor does), so each round
    /// takes at least one index off the list.
    fn readable_msrs(&self, indices: &[u32]) -> Result<Vec<Msr>> {
        let wanted: Vec<u32> = indices
            .iter()
            .copied()
            .filter(|index| !MSRS_NOT_SAVED.contains(index))
            .collect();
        let mut read = Vec::with_capacity(wanted.len());
        let mut start = 0;
        while start < wanted.len() {
            let chunk = &wanted[start..wanted.len().min(start + KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut raw =
                kvm_bindings::Msrs::from_entries(&entries).map_err(|_| KvmError::BadState {
                    what: "the MSR list",
                    reason: format!("{} entries do not fit KVM's structure", entries.len()),
                })?;
            let count = self
                .fd
                .get_msrs(&mut raw)
                .map_err(ioctl_error("KVM_GET_MSRS"))?
                .min(chunk.len());
            read.extend(raw.as_slice()[..count].iter().map(|e| Msr {
                index: e.index,
                value: e.data,
            }));
            // Past the ones read and, if KVM stopped early, the one it refused.
            start += count + usize::from(count < chunk.len());
        }
        Ok(read)
    }

    /// Sets the registers and everything [`VcpuKvmState`] holds except CPUID (set first,
    /// when the vCPU is created), in the order of the module docs: MP state, general
    /// and special registers (with the pending-interrupt bitmap), XSAVE, XCRs, debug
    /// registers, LAPIC, MSRs, events.
    pub fn restore_state(
        &self,
        regs: &Registers,
        sregs: &SpecialRegisters,
        state: &VcpuKvmState,
    ) -> Result<()> {
        self.fd
            .set_mp_state(kvm_mp_state {
                mp_state: state.mp_state,
            })
            .map_err(ioctl_error("KVM_SET_MP_STATE"))?;
        self.set_registers(regs)?;
        let mut raw = self.fd.get_sregs().map_err(ioctl_error("KVM_GET_SREGS"))?;
        super::convert::fill_sregs(&mut raw, sregs);
        raw.interrupt_bitmap = state.interrupt_bitmap;
        self.fd
            .set_sregs(&raw)
            .map_err(ioctl_error("KVM_SET_SREGS"))?;
        let xsave: kvm_xsave = state.xsave.to("the XSAVE area")?;
        // SAFETY: `xsave` is a whole `kvm_xsave` (4 KiB). KVM reads more than that only
        // for a VM whose guests were granted dynamically enabled XSAVE features (AMX, with
        // arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM)), which this VMM never asks for, so the
        // kernel reads no byte past `xsave`.
        unsafe { self.fd.set_xsave(&xsave) }.map_err(ioctl_error("KVM_SET_XSAVE"))?;
        let mut xcrs = kvm_xcrs::default();
        if state.xcrs.len() > xcrs.xcrs.len() {
            return Err(KvmError::BadState {
                what: "the XCRs",
                reason: format!(
                    "{} of them, KVM takes at most {}",
                    state.xcrs.len(),
                    xcrs.xcrs.len()
                ),
            });
        }
        for (slot, xcr) in xcrs.xcrs.iter_mut().zip(&state.xcrs) {
            *slot = kvm_xcr {
                xcr: xcr.xcr,
                value: xcr.value,
                ..Default::default()
            };
        }
        xcrs.nr_xcrs = u32::try_from(state.xcrs.len()).unwrap_or(0);
        self.fd
            .set_xcrs(&xcrs)
            .map_err(ioctl_error("KVM_SET_XCRS"))?;
        let debug = kvm_debugregs {
            db: state.debug.db,
            dr6: state.debug.dr6,
            dr7: state.debug.dr7,
            flags: state.debug.flags,
            ..Default::default()
        };
        self.fd
            .set_debug_regs(&debug)
            .map_err(ioctl_error("KVM_SET_DEBUGREGS"))?;
        if let Some(lapic) = &state.lapic {
            let lapic: kvm_lapic_state = lapic.to("the LAPIC")?;
            self.fd
                .set_lapic(&lapic)
                .map_err(ioctl_error("KVM_SET_LAPIC"))?;
        }
        let (deadline, others): (Vec<Msr>, Vec<Msr>) = state
            .msrs
            .iter()
            .partition(|msr| msr.index == MSR_IA32_TSC_DEADLINE);
        for group in [others, deadline] {
            self.restore_msrs(&group)?;
        }
        let events: kvm_vcpu_events = state.events.to("the vCPU events")?;
        self.fd
            .set_vcpu_events(&events)
            .map_err(ioctl_error("KVM_SET_VCPU_EVENTS"))
    }

    /// Sets `msrs` in order. KVM lists some MSRs whose writes it then refuses unless the
    /// guest's CPUID enables them (KVM's paravirtual MSRs, say): one it refuses is
    /// skipped when this vCPU already holds the saved value (nothing is lost), and is an
    /// error naming it otherwise.
    fn restore_msrs(&self, msrs: &[Msr]) -> Result<()> {
        let mut start = 0;
        while start < msrs.len() {
            let chunk = &msrs[start..msrs.len().min(start + KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|m| kvm_msr_entry {
                    index: m.index,
                    data: m.value,
                    ..Default::default()
                })
                .collect();
            let raw =
                kvm_bindings::Msrs::from_entries(&entries).map_err(|_| KvmError::BadState {
                    what: "the MSRs",
                    reason: format!("{} entries do not fit KVM's structure", entries.len()),
                })?;
            let set = self
                .fd
                .set_msrs(&raw)
                .map_err(ioctl_error("KVM_SET_MSRS"))?
                .min(chunk.len());
            start += set;
            if set < chunk.len() {
                let refused = chunk[set];
                let current = self.readable_msrs(&[refused.index])?;
                if current.first().map(|m| m.value) != Some(refused.value) {
                    return Err(KvmError::MsrsRefused {
                        set: start,
                        total: msrs.len(),
                        first_refused: refused.index,
                    });
                }
                start += 1;
            }
        }
        Ok(())
    }

    /// The vCPU's TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    pub fn tsc_khz(&self) -> Result<u32> {
        self.fd
            .get_tsc_khz()
            .map_err(ioctl_error("KVM_GET_TSC_KHZ"))
    }

    /// Sets the vCPU's TSC frequency (`KVM_SET_TSC_KHZ`; needs TSC scaling unless it
    /// is the host's).
    pub fn set_tsc_khz(&self, khz: u32) -> Result<()> {
        self.fd
            .set_tsc_khz(khz)
            .map_err(ioctl_error("KVM_SET_TSC_KHZ"))
    }
}

impl KvmVm {
    /// Reads the VM's clock and, with `irqchip`, its interrupt controllers and PIT.
    /// Every vCPU must be paused.
    pub fn save_state(&self, irqchip: bool) -> Result<VmKvmState> {
        let irqchip = if irqchip {
            let chip = |id| -> Result<KvmBlob> {
                let mut raw = kvm_irqchip {
                    chip_id: id,
                    ..Default::default()
                };
                self.fd
                    .get_irqchip(&mut raw)
                    .map_err(ioctl_error("KVM_GET_IRQCHIP"))?;
                Ok(KvmBlob::of(&raw))
            };
            Some(IrqchipState {
                pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
                pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
                ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
                pit: KvmBlob::of(&self.fd.get_pit2().map_err(ioctl_error("KVM_GET_PIT2"))?),
            })
        } else {
            None
        };
        let clock = self.fd.get_clock().map_err(ioctl_error("KVM_GET_CLOCK"))?;
        Ok(VmKvmState {
            clock_ns: clock.clock,
            irqchip,
        })
    }

    /// Sets what [`KvmVm::save_state`] read, after every vCPU's state: the PIT, the
    /// clock, then the PICs and the IOAPIC. The VM must have the in-kernel irqchip
    /// exactly when `state` has one.
    pub fn restore_state(&self, state: &VmKvmState) -> Result<()> {
        state.check()?;
        if let Some(chips) = &state.irqchip {
            let pit: kvm_pit_state2 = chips.pit.to("the PIT")?;
            self.fd
                .set_pit2(&pit)
                .map_err(ioctl_error("KVM_SET_PIT2"))?;
        }
        // Only the time: KVM refuses flags it sets itself (KVM_CLOCK_TSC_STABLE, ...).
        let clock = kvm_clock_data {
            clock: state.clock_ns,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(ioctl_error("KVM_SET_CLOCK"))?;
        if let Some(chips) = &state.irqchip {
            // Sizes and chip numbers checked above (`state.check()`).
            for (blob, _, what) in chips.chips() {
                let raw: kvm_irqchip = blob.to(what)?;
                self.fd
                    .set_irqchip(&raw)
                    .map_err(ioctl_error("KVM_SET_IRQCHIP"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_hex_and_their_length_is_checked() {
        let blob = KvmBlob(vec![0x00, 0xab, 0x7f]);
        let text = serde_json::to_string(&blob).unwrap_or_default();
        assert_eq!(text, "\"00ab7f\"");
        let back: KvmBlob = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, blob);
        for bad in ["\"0\"", "\"zz\"", "\"0g\"", "\"é0\"", "12"] {
            assert!(serde_json::from_str::<KvmBlob>(bad).is_err(), "{bad}");
        }
        let pit = KvmBlob::of(&kvm_pit_state2::default());
        assert!(pit.to::<kvm_pit_state2>("the PIT").is_ok());
        let Err(KvmError::BadState { what, reason }) = blob.to::<kvm_pit_state2>("the PIT") else {
            panic!("3 bytes read as a PIT");
        };
        assert_eq!(what, "the PIT");
        assert!(
            reason.starts_with("3 bytes, KVM's structure has "),
            "{reason}"
        );
    }
}
