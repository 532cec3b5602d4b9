//! The dump readers (`vmm inspect --dump`) on arbitrary files: ELF cores, LiME captures,
//! kdump-compressed dumps (both variants), and headerless files with a region table.
//!
//! The first byte picks how the file is opened (detected, or a --regions layout); the
//! rest is the file. When it opens, the tables reachable from each CPU's CR3 (or 0x1000)
//! are decompressed and walked with a small entry budget. Nothing may panic, hang or
//! allocate beyond the file's size.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use vmm::dump::{Dump, Layout};
use vmm::introspect::{Format, VaRange, print_walk};
use walker::{ControlRegisters, Granularity, PagingContext, WalkOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    // One file per fuzzing process, rewritten for every input (tmpfs: cheap).
    let path = std::env::temp_dir().join(format!("vmm-fuzz-dump-{}", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else {
        return;
    };
    if f.write_all(file).is_err() {
        return;
    }
    drop(f);
    let layout = match mode % 4 {
        0 | 1 => None,
        2 => Some(Layout::Regions(vec![(0, 0x1000), (0x10_0000, 0x2000)])),
        _ => Some(Layout::CloudHypervisor),
    };
    let Ok(dump) = Dump::open(&path, layout) else {
        return;
    };
    let _ = dump.info();
    let cpus = dump.cpus.len().clamp(1, 4);
    for cpu in 0..cpus {
        let regs = dump
            .control_registers(cpu)
            .unwrap_or(ControlRegisters::long_mode(0x1000));
        let Ok(ctx) = PagingContext::new(regs) else {
            continue;
        };
        if dump.prepare_walk(&ctx).is_err() {
            continue;
        }
        let _ = print_walk(
            dump.memory(),
            &ctx,
            &VaRange::default(),
            Granularity::AsMapped,
            Format::Tlb,
            WalkOptions { entry_budget: 1 << 16 },
            &mut std::io::sink(),
        );
    }
    let _ = dump.check_intact();
});
