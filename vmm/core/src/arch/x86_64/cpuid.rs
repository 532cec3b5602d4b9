//! The CPUID the guest sees: KVM's supported list, made truthful for this host.

/// One CPUID leaf/subleaf, as the VMM sees it.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// KVM_CPUID_FLAG_* bits.
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// CPUID 0x8000_0001 EDX bit 26: 1 GiB pages.
pub const EXT_EDX_PDPE1GB: u32 = 1 << 26;
/// CPUID 7.0 ECX bit 16: 5-level paging.
pub const LEAF7_ECX_LA57: u32 = 1 << 16;

/// CPUID 0x8000_0001 EDX bit 20: NX (execute-disable).
pub const EXT_EDX_NX: u32 = 1 << 20;

/// CPUID 1 ECX bit 31: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;

/// CPUID 1 ECX bit 24: the local APIC's TSC-deadline timer mode.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// The CPUID of a Linux guest's vCPU `index`: [`guest_cpuid`] (APIC ID, PVM's missing
/// features hidden only on PVM) plus
/// - the hypervisor bit, so that Linux looks for KVM's paravirtual leaves (kvm-clock)
///   instead of calibrating against the PIT;
/// - the TSC-deadline timer when `tsc_deadline` (the host has
///   `KVM_CAP_TSC_DEADLINE_TIMER`; the in-kernel LAPIC emulates it). KVM leaves it out of
///   `KVM_GET_SUPPORTED_CPUID` because it depends on that LAPIC, so a VMM must add it, as
///   QEMU and Firecracker do. Without it Linux arms its timer through the APIC's
///   initial-count register and first calibrates that timer's rate.
pub fn linux_cpuid(
    supported: &[CpuidEntry],
    index: u8,
    pvm: bool,
    tsc_deadline: bool,
) -> Vec<CpuidEntry> {
    let mut entries = guest_cpuid(supported, index, pvm);
    for entry in &mut entries {
        if entry.function == 0x1 {
            entry.ecx |= LEAF1_ECX_HYPERVISOR;
            if tsc_deadline {
                entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
            }
        }
    }
    entries
}

/// What a guest's CPUID says about paging: it decides how the walker must read the
/// guest's tables (which bits are reserved, whether PS in a PUD is a 1 GiB leaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PagingFeatures {
    /// MAXPHYADDR (CPUID 0x8000_0008 EAX\[7:0\]); 36 when the leaf is missing, as the SDM
    /// says for CPUs without it.
    pub phys_addr_bits: u8,
    /// 1 GiB pages (CPUID 0x8000_0001 EDX bit 26).
    pub gbpages: bool,
    /// 5-level paging (CPUID 7.0 ECX bit 16).
    pub la57: bool,
    /// Execute-disable (CPUID 0x8000_0001 EDX bit 20).
    pub nx: bool,
}

/// Reads [`PagingFeatures`] from the CPUID a guest is given.
pub fn paging_features(entries: &[CpuidEntry]) -> PagingFeatures {
    let leaf = |function: u32| {
        entries
            .iter()
            .find(|e| e.function == function && e.index == 0)
    };
    let phys_addr_bits = leaf(0x8000_0008)
        .map(|e| (e.eax & 0xff) as u8)
        .filter(|bits| (36..=52).contains(bits))
        .unwrap_or(36);
    PagingFeatures {
        phys_addr_bits,
        gbpages: leaf(0x8000_0001).is_some_and(|e| e.edx & EXT_EDX_PDPE1GB != 0),
        la57: leaf(0x7).is_some_and(|e| e.ecx & LEAF7_ECX_LA57 != 0),
        nx: has_nx(entries),
    }
}

/// Whether `entries` say the CPU has NX.
pub fn has_nx(entries: &[CpuidEntry]) -> bool {
    entries
        .iter()
        .any(|e| e.function == 0x8000_0001 && e.edx & EXT_EDX_NX != 0)
}

/// Adjusts KVM's supported CPUID for vCPU `index`:
/// - the initial APIC ID (leaf 1 `EBX[31:24]`, leaf 0xB/0x1F EDX) is the vCPU index;
/// - on PVM, which cannot give guests 1 GiB pages or LA57 (measured: a 1 GiB PDPTE
///   triple-faults, KVM_SET_SREGS rejects CR4.LA57), pdpe1gb and LA57 are cleared so
///   the guest's own feature detection tells the truth.
pub fn guest_cpuid(supported: &[CpuidEntry], index: u8, pvm: bool) -> Vec<CpuidEntry> {
    let mut entries = supported.to_vec();
    for entry in &mut entries {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | (u32::from(index) << 24);
            }
            0xb | 0x1f => entry.edx = u32::from(index),
            0x7 if entry.index == 0 && pvm => entry.ecx &= !LEAF7_ECX_LA57,
            0x8000_0001 if pvm => entry.edx &= !EXT_EDX_PDPE1GB,
            _ => {}
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<CpuidEntry> {
        vec![
            CpuidEntry {
                function: 1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            CpuidEntry {
                function: 7,
                ecx: LEAF7_ECX_LA57 | 1,
                ..Default::default()
            },
            CpuidEntry {
                function: 0x8000_0001,
                edx: EXT_EDX_PDPE1GB | (1 << 20),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn paging_features_follow_cpuid() {
        let mut entries = sample();
        entries.push(CpuidEntry {
            function: 0x8000_0008,
            eax: 0x3028,
            ..Default::default()
        });
        let f = paging_features(&entries);
        assert_eq!(
            f,
            PagingFeatures {
                phys_addr_bits: 40,
                gbpages: true,
                la57: true,
                nx: true
            }
        );
        let f = paging_features(&guest_cpuid(&sample(), 0, true));
        assert_eq!((f.phys_addr_bits, f.gbpages, f.la57), (36, false, false));
    }

    #[test]
    fn pvm_hides_1g_pages_and_la57() {
        let out = guest_cpuid(&sample(), 3, true);
        assert_eq!(out[0].ebx, 0x0300_0800);
        assert_eq!(out[1].ecx, 1);
        assert_eq!(out[2].edx, 1 << 20);
    }

    #[test]
    fn detects_nx() {
        assert!(has_nx(&sample()));
        assert!(!has_nx(&sample()[..2]));
    }

    #[test]
    fn linux_cpuid_adds_the_hypervisor_bit_and_keeps_the_apic_id() {
        let out = linux_cpuid(&sample(), 2, false, false);
        assert_eq!(out[0].ecx & LEAF1_ECX_HYPERVISOR, LEAF1_ECX_HYPERVISOR);
        assert_eq!(out[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(out[0].ebx >> 24, 2);
        assert_eq!(out[2].edx, EXT_EDX_PDPE1GB | (1 << 20));
        assert_eq!(linux_cpuid(&sample(), 0, true, false)[2].edx, 1 << 20);
        let out = linux_cpuid(&sample(), 0, false, true);
        assert_eq!(
            out[0].ecx & (LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE),
            LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE
        );
    }

    #[test]
    fn hardware_kvm_keeps_them() {
        let out = guest_cpuid(&sample(), 0, false);
        assert_eq!(out[1].ecx, LEAF7_ECX_LA57 | 1);
        assert_eq!(out[2].edx, EXT_EDX_PDPE1GB | (1 << 20));
    }
}
