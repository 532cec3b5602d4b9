//! `From` conversions between raw `kvm-bindings` structures and the VMM's own types.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_regs, kvm_segment, kvm_sregs, kvm_translation,
};

use super::KvmTranslation;
use crate::arch::x86_64::cpuid::CpuidEntry;
use crate::arch::x86_64::regs::{DescriptorTable, Registers, Segment, SpecialRegisters};

impl From<kvm_regs> for Registers {
    fn from(r: kvm_regs) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<Registers> for kvm_regs {
    fn from(r: Registers) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<kvm_segment> for Segment {
    fn from(s: kvm_segment) -> Self {
        Self {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present != 0,
            dpl: s.dpl,
            db: s.db != 0,
            s: s.s != 0,
            l: s.l != 0,
            g: s.g != 0,
            avl: s.avl != 0,
            unusable: s.unusable != 0,
        }
    }
}

impl From<Segment> for kvm_segment {
    fn from(s: Segment) -> Self {
        Self {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: u8::from(s.present),
            dpl: s.dpl,
            db: u8::from(s.db),
            s: u8::from(s.s),
            l: u8::from(s.l),
            g: u8::from(s.g),
            avl: u8::from(s.avl),
            unusable: u8::from(s.unusable),
            padding: 0,
        }
    }
}

impl From<kvm_dtable> for DescriptorTable {
    fn from(d: kvm_dtable) -> Self {
        Self {
            base: d.base,
            limit: d.limit,
        }
    }
}

impl From<DescriptorTable> for kvm_dtable {
    fn from(d: DescriptorTable) -> Self {
        Self {
            base: d.base,
            limit: d.limit,
            padding: [0; 3],
        }
    }
}

impl From<kvm_sregs> for SpecialRegisters {
    fn from(s: kvm_sregs) -> Self {
        Self {
            cs: s.cs.into(),
            ds: s.ds.into(),
            es: s.es.into(),
            fs: s.fs.into(),
            gs: s.gs.into(),
            ss: s.ss.into(),
            tr: s.tr.into(),
            ldt: s.ldt.into(),
            gdt: s.gdt.into(),
            idt: s.idt.into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
        }
    }
}

/// Writes every field we model into `raw`, leaving the interrupt bitmap alone.
pub(super) fn fill_sregs(raw: &mut kvm_sregs, s: &SpecialRegisters) {
    raw.cs = s.cs.into();
    raw.ds = s.ds.into();
    raw.es = s.es.into();
    raw.fs = s.fs.into();
    raw.gs = s.gs.into();
    raw.ss = s.ss.into();
    raw.tr = s.tr.into();
    raw.ldt = s.ldt.into();
    raw.gdt = s.gdt.into();
    raw.idt = s.idt.into();
    raw.cr0 = s.cr0;
    raw.cr2 = s.cr2;
    raw.cr3 = s.cr3;
    raw.cr4 = s.cr4;
    raw.cr8 = s.cr8;
    raw.efer = s.efer;
    raw.apic_base = s.apic_base;
}

impl From<&kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        Self {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: CpuidEntry) -> Self {
        Self {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}

impl From<kvm_translation> for KvmTranslation {
    fn from(t: kvm_translation) -> Self {
        Self {
            valid: t.valid != 0,
            gpa: vm_memory::GuestAddress(t.physical_address),
            writeable: t.writeable != 0,
            usermode: t.usermode != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip() {
        let regs = Registers {
            rip: 0x1234,
            rsp: 0x8000,
            r15: 7,
            ..Registers::default()
        };
        let raw: kvm_regs = regs.into();
        assert_eq!(Registers::from(raw), regs);
    }

    #[test]
    fn segment_round_trip() {
        let seg = Segment {
            base: 0x1000,
            limit: 0xffff_ffff,
            selector: 0x10,
            type_: 3,
            present: true,
            dpl: 0,
            db: true,
            s: true,
            l: false,
            g: true,
            avl: false,
            unusable: false,
        };
        let raw: kvm_segment = seg.into();
        assert_eq!(Segment::from(raw), seg);
    }
}
