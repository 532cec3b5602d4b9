//! The VMM's own register types and the long-mode boot state it gives a vCPU.
//!
//! The boot state follows the Linux 64-bit boot protocol as Firecracker sets it up: a
//! flat GDT (null, 64-bit code, data, TSS), CR0.PE|PG, CR4.PAE, EFER.LME|LMA|NXE|SCE
//! and an identity page table built by the VMM ([`crate::builder`]).

use std::fmt;

use super::layout;
use super::pio::PortIo;

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP: monitor coprocessor (with TS, for `wait`/`fwait`).
pub const CR0_MP: u64 = 1 << 1;
/// CR0.ET: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE: native x87 error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension (needed for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PGE: global pages.
pub const CR4_PGE: u64 = 1 << 7;
/// CR4.LA57: 5-level paging (57-bit linear addresses). Only settable with paging off
/// or, as KVM_SET_SREGS allows, in the initial state together with a PML5 root.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.OSFXSR: the OS supports `fxsave`/`fxrstor` (SSE usable).
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT: the OS handles SIMD floating-point exceptions.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER.SCE: `syscall`/`sysret`.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: the NX bit in page tables.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS bit 1, which is always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Offset of the local APIC's LVT LINT0 register in its register page.
pub const APIC_LVT_LINT0: usize = 0x350;
/// Offset of the local APIC's LVT LINT1 register.
pub const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode ExtINT (bits 10:8 = 0b111): the 8259 PIC's interrupts.
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI (bits 10:8 = 0b100).
pub const APIC_MODE_NMI: u32 = 0x4;

/// An LVT register with its delivery mode (bits 10:8) replaced by `mode`.
pub const fn lvt_with_delivery_mode(value: u32, mode: u32) -> u32 {
    (value & !0x700) | ((mode & 0x7) << 8)
}

/// The PC's virtual-wire setup (as Firecracker does): LINT0 takes the 8259's ExtINT,
/// LINT1 is NMI. Linux without an MP table or MADT routes the legacy IRQs this way.
pub fn boot_lint_value(offset: usize, value: u32) -> u32 {
    match offset {
        APIC_LVT_LINT0 => lvt_with_delivery_mode(value, APIC_MODE_EXTINT),
        APIC_LVT_LINT1 => lvt_with_delivery_mode(value, APIC_MODE_NMI),
        _ => value,
    }
}

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MISC_ENABLE bit 0: fast string operations.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// STAR (`syscall` segments).
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR (64-bit `syscall` target).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR (compatibility-mode `syscall` target).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL_MASK (FMASK).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE (`swapgs`).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The MSRs a Linux boot vCPU gets (Firecracker's `create_boot_msr_entries` without the
/// MTRRs): the system-call MSRs and the TSC zeroed, fast strings on.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
}

/// General-purpose registers, RIP and RFLAGS.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register as KVM describes it (the hidden part included).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// Descriptor type field (bits 43:40 of the descriptor).
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size (32-bit when set).
    pub db: bool,
    /// Code/data (set) or system (clear) descriptor.
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Granularity: limit in 4 KiB units.
    pub g: bool,
    pub avl: bool,
    pub unusable: bool,
}

impl Segment {
    /// Decodes a GDT descriptor (as [`gdt_entry`] builds it) loaded with `selector`.
    pub fn from_gdt_entry(entry: u64, selector: u16) -> Self {
        let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
        let g = (entry >> 55) & 1 == 1;
        Self {
            base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
            limit: if g {
                (limit_raw << 12) | 0xfff
            } else {
                limit_raw
            },
            selector,
            type_: ((entry >> 40) & 0xf) as u8,
            present: (entry >> 47) & 1 == 1,
            dpl: ((entry >> 45) & 3) as u8,
            db: (entry >> 54) & 1 == 1,
            s: (entry >> 44) & 1 == 1,
            l: (entry >> 53) & 1 == 1,
            g,
            avl: (entry >> 52) & 1 == 1,
            unusable: (entry >> 47) & 1 == 0,
        }
    }
}

/// A descriptor-table register (GDTR or IDTR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit (size - 1).
    pub limit: u16,
}

/// Segment, control and descriptor-table registers, plus EFER.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialRegisters {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// Builds a GDT descriptor from `flags` (type, S, DPL, P, AVL, L, D/B, G packed as in
/// bits 15:8 and 23:20 of the descriptor's high dword, i.e. `0xa09b` for 64-bit
/// code), `base` and `limit`.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The VMM's boot GDT: null, 64-bit code (selector 0x08), data (0x10), TSS (0x18).
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Selector of the 64-bit code segment in [`BOOT_GDT`].
pub const BOOT_CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment in [`BOOT_GDT`].
pub const BOOT_DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS in [`BOOT_GDT`].
pub const BOOT_TSS_SELECTOR: u16 = 0x18;

/// The special registers for entering a guest directly in 64-bit mode on the VMM's
/// boot GDT and identity page tables. `current` supplies the fields the boot state
/// does not decide (APIC base, CR8); `nx` says whether the CPU has NX (EFER.NXE is
/// set only then: KVM refuses it otherwise).
pub fn long_mode_sregs(current: &SpecialRegisters, nx: bool) -> SpecialRegisters {
    let code = Segment::from_gdt_entry(BOOT_GDT[1], BOOT_CODE_SELECTOR);
    let data = Segment::from_gdt_entry(BOOT_GDT[2], BOOT_DATA_SELECTOR);
    let tss = Segment::from_gdt_entry(BOOT_GDT[3], BOOT_TSS_SELECTOR);
    SpecialRegisters {
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: tss,
        ldt: Segment {
            unusable: true,
            ..Segment::default()
        },
        gdt: DescriptorTable {
            base: layout::BOOT_GDT_START.0,
            limit: (std::mem::size_of_val(&BOOT_GDT) - 1) as u16,
        },
        idt: DescriptorTable {
            base: layout::BOOT_IDT_START.0,
            limit: 7,
        },
        cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
        cr2: 0,
        cr3: layout::BOOT_PML4_START.0,
        cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
        efer: EFER_LME | EFER_LMA | EFER_SCE | if nx { EFER_NXE } else { 0 },
        cr8: current.cr8,
        apic_base: current.apic_base,
    }
}

/// The state the PVH boot protocol enters an ELF vmlinux in (its `XEN_ELFNOTE_PHYS32_ENTRY`):
/// 32-bit protected mode, paging off, flat 4 GiB code (selector 0x08) and data (0x10)
/// segments, CR4 and EFER clear. The kernel loads its own GDT and page tables at once.
pub fn pvh_entry_sregs(current: &SpecialRegisters) -> SpecialRegisters {
    SpecialRegisters {
        // The 64-bit boot state's segments and tables, with a 32-bit code segment.
        cs: Segment::from_gdt_entry(gdt_entry(0xc09b, 0, 0xfffff), BOOT_CODE_SELECTOR),
        cr0: CR0_PE | CR0_ET,
        cr3: 0,
        cr4: 0,
        efer: 0,
        ..long_mode_sregs(current, false)
    }
}

/// The PVH entry's registers: RIP = the entry, RBX = the `hvm_start_info` address.
pub fn pvh_entry_registers(entry: u64, start_info: u64) -> Registers {
    Registers {
        rip: entry,
        rbx: start_info,
        rflags: RFLAGS_RESERVED,
        ..Registers::default()
    }
}

/// `sregs` switched to 5-level paging: CR4.LA57 set and CR3 on the boot PML5 at `pml5`
/// ([`layout::BOOT_PML5_START`] for the built-in guest, [`layout::LINUX_BOOT_PML5_START`]
/// for Linux), whose entry 0 points to the boot PML4, so the identity map stays the same. Long mode cannot toggle LA57 itself, so a guest
/// that should run with 5-level paging must be entered this way.
pub fn with_five_level_paging(sregs: SpecialRegisters, pml5: u64) -> SpecialRegisters {
    SpecialRegisters {
        cr3: pml5,
        cr4: sregs.cr4 | CR4_LA57,
        ..sregs
    }
}

/// The general-purpose registers at entry: `rip`, the boot stack, and the two
/// arguments the built-in guest reads (RDI, RSI).
pub fn entry_registers(rip: u64, rdi: u64, rsi: u64) -> Registers {
    Registers {
        rip,
        rsp: layout::BOOT_STACK_TOP.0,
        rbp: layout::BOOT_STACK_TOP.0,
        rdi,
        rsi,
        rflags: RFLAGS_RESERVED,
        ..Registers::default()
    }
}

/// The general-purpose registers at Linux's 64-bit entry (boot protocol, "64-bit BOOT
/// PROTOCOL"): RIP at `startup_64`, RSI the zero page, interrupts off.
pub fn linux_entry_registers(entry: u64, boot_params: u64) -> Registers {
    Registers {
        rip: entry,
        rsi: boot_params,
        rsp: layout::LINUX_STACK_TOP.0,
        rbp: layout::LINUX_STACK_TOP.0,
        rflags: RFLAGS_RESERVED,
        ..Registers::default()
    }
}

/// The registers of a stopped vCPU, for error messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegisterDump {
    /// General-purpose registers.
    pub regs: Registers,
    /// Special registers.
    pub sregs: SpecialRegisters,
    /// The vCPU's last port access, if it made one.
    #[serde(default)]
    pub last_io: Option<PortIo>,
}

impl RegisterDump {
    /// Whether these are the registers of x86's reset/INIT state (CS.base 0xffff0000,
    /// RIP 0xfff0, paging off). On AMD hosts KVM re-initialises a vCPU on a shutdown
    /// intercept (the VMCB is undefined after it), so a triple fault's dump is this
    /// state, not the one at the fault.
    pub fn is_reset_state(&self) -> bool {
        self.regs.rip == 0xfff0 && self.sregs.cs.base == 0xffff_0000 && self.sregs.cr0 & CR0_PG == 0
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.regs;
        let s = &self.sregs;
        writeln!(
            f,
            "  RIP={:#018x} RSP={:#018x} RFLAGS={:#010x}",
            r.rip, r.rsp, r.rflags
        )?;
        writeln!(
            f,
            "  RAX={:#018x} RBX={:#018x} RCX={:#018x} RDX={:#018x}",
            r.rax, r.rbx, r.rcx, r.rdx
        )?;
        writeln!(
            f,
            "  RSI={:#018x} RDI={:#018x} RBP={:#018x} R8 ={:#018x}",
            r.rsi, r.rdi, r.rbp, r.r8
        )?;
        writeln!(
            f,
            "  R9 ={:#018x} R10={:#018x} R11={:#018x} R12={:#018x}",
            r.r9, r.r10, r.r11, r.r12
        )?;
        writeln!(
            f,
            "  R13={:#018x} R14={:#018x} R15={:#018x}",
            r.r13, r.r14, r.r15
        )?;
        writeln!(
            f,
            "  CR0={:#018x} CR2={:#018x} CR3={:#018x} CR4={:#018x}",
            s.cr0, s.cr2, s.cr3, s.cr4
        )?;
        writeln!(
            f,
            "  EFER={:#x} CS={:#06x} SS={:#06x} GDT={:#x}/{:#x} IDT={:#x}/{:#x}",
            s.efer, s.cs.selector, s.ss.selector, s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
        )?;
        match &self.last_io {
            Some(io) => writeln!(f, "  last port I/O: {io}")?,
            None => writeln!(f, "  last port I/O: none")?,
        }
        if self.is_reset_state() {
            writeln!(
                f,
                "  (the reset/INIT state: after a triple fault an AMD host's KVM re-initialises \
                 the vCPU, so these are not the registers at the fault)"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_show_the_last_port_access_and_name_the_reset_state() {
        let mut dump = RegisterDump::default();
        dump.regs.rip = 0xffff_ffff_8100_0000;
        let text = dump.to_string();
        assert!(text.contains("RIP=0xffffffff81000000"), "{text}");
        assert!(text.contains("last port I/O: none"), "{text}");
        assert!(!dump.is_reset_state());
        dump.last_io = Some(PortIo {
            port: 0x3fd,
            write: false,
            size: 1,
            value: 0x60,
            count: 7,
        });
        let text = dump.to_string();
        assert!(
            text.contains("last port I/O: IN 0x03fd -> 0x60 (1 byte; port access 7 of this vCPU)"),
            "{text}"
        );
        // What KVM on AMD leaves after a shutdown intercept: the INIT state.
        dump.regs.rip = 0xfff0;
        dump.sregs.cs.base = 0xffff_0000;
        dump.sregs.cr0 = 0x6000_0010;
        assert!(dump.is_reset_state());
        assert!(dump.to_string().contains("reset/INIT state"));
    }

    #[test]
    fn gdt_entries_match_the_usual_encodings() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn code_segment_decodes_as_64_bit() {
        let cs = Segment::from_gdt_entry(BOOT_GDT[1], BOOT_CODE_SELECTOR);
        assert!(cs.l && cs.present && cs.s && cs.g && !cs.db);
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        let tss = Segment::from_gdt_entry(BOOT_GDT[3], BOOT_TSS_SELECTOR);
        assert!(!tss.s && tss.present);
        assert_eq!(tss.type_, 0xb);
    }

    #[test]
    fn lints_become_extint_and_nmi() {
        // Reset value of an LVT: masked (bit 16), fixed delivery.
        assert_eq!(boot_lint_value(APIC_LVT_LINT0, 0x1_0000), 0x1_0700);
        assert_eq!(boot_lint_value(APIC_LVT_LINT1, 0x1_0000), 0x1_0400);
        assert_eq!(boot_lint_value(APIC_LVT_LINT1, 0x700), 0x400);
        assert_eq!(boot_lint_value(0x320, 0x1234), 0x1234);
    }

    #[test]
    fn linux_entry_and_msrs() {
        let r = linux_entry_registers(0x10_0200, layout::BOOT_PARAMS_START.0);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x10_0200, 0x7000, 2));
        let msrs = boot_msrs();
        assert!(msrs.contains(&(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING)));
        assert_eq!(msrs.len(), 10);
    }

    #[test]
    fn long_mode_state_enables_paging_and_long_mode() {
        let s = long_mode_sregs(&SpecialRegisters::default(), true);
        assert_ne!(s.efer & EFER_NXE, 0);
        assert_eq!(long_mode_sregs(&s, false).efer & EFER_NXE, 0);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, layout::BOOT_PML4_START.0);
        assert_eq!(s.cr4 & CR4_LA57, 0);
        let five = with_five_level_paging(s, layout::BOOT_PML5_START.0);
        assert_eq!(five.cr4, s.cr4 | CR4_LA57);
        assert_eq!(five.cr3, layout::BOOT_PML5_START.0);
        assert_eq!((five.cr0, five.efer, five.cs), (s.cr0, s.efer, s.cs));
    }
}
