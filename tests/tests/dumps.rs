//! `vmm inspect --dump` on dumps QEMU itself made (guest-images/qemu-dumps/make.sh): the
//! Linux test guest under QEMU TCG, stopped while its THP process lingers, dumped as an
//! ELF core and as kdump-compressed files, with `info tlb` taken at the same instant. Each
//! dump, walked with the registers it carries (nothing typed by hand), must print exactly
//! QEMU's `info tlb` lines, in 4-level and 5-level paging; so must the raw memory file
//! (`pmemsave`) walked with the registers `info registers` printed.
//!
//! The dumps are made by test-all.sh (they are as large as the guest's RAM and stay out of
//! the repository): set `GUESTWALK_QEMU_DUMPS=DIR` to run this test; without it, it skips
//! with a reason, unless `GUESTWALK_REQUIRE_QEMU_DUMPS=1`. `GUESTWALK_QEMU_DUMP_LEVELS`
//! names the levels to check (`4`, `5`, or `4 5`, the default): test-all.sh makes and
//! checks one level at a time, to need half the disk.

use std::path::{Path, PathBuf};

use vmm::dump::Dump;
use walker::{ControlRegisters, PagingContext, PagingMode};

fn dumps_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("GUESTWALK_QEMU_DUMPS") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            assert!(
                std::env::var("GUESTWALK_REQUIRE_QEMU_DUMPS").as_deref() != Ok("1"),
                "{test}: GUESTWALK_REQUIRE_QEMU_DUMPS=1 but GUESTWALK_QEMU_DUMPS is not set"
            );
            eprintln!(
                "{test}: skipped: GUESTWALK_QEMU_DUMPS is not set (guest-images/qemu-dumps/make.sh makes the dumps)"
            );
            None
        }
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn tlb<M: vm_memory::GuestMemoryBackend>(mem: &M, regs: ControlRegisters) -> Vec<String> {
    let ctx = PagingContext::new(regs).unwrap_or_else(|e| panic!("{e}"));
    guestwalk_tests::tlb_lines(mem, &ctx)
}

fn assert_same(what: &str, qemu: &[String], ours: &[String]) {
    let differing = qemu
        .iter()
        .zip(ours)
        .filter(|(a, b)| a != b)
        .take(3)
        .collect::<Vec<_>>();
    assert!(
        qemu.len() == ours.len() && differing.is_empty(),
        "{what}: QEMU printed {} lines, vmm {}; first differences {differing:?}",
        qemu.len(),
        ours.len()
    );
}

/// `KEY=hex` lines of registers.txt.
fn register(dir: &Path, name: &str) -> u64 {
    read_lines(&dir.join("registers.txt"))
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or_else(|| panic!("no {name} in {}", dir.join("registers.txt").display()))
}

/// The levels `GUESTWALK_QEMU_DUMP_LEVELS` names; both when it is unset.
fn dump_levels() -> Vec<(u8, PagingMode)> {
    let names = std::env::var("GUESTWALK_QEMU_DUMP_LEVELS").unwrap_or_else(|_| "4 5".into());
    let levels: Vec<_> = names
        .split_whitespace()
        .map(|name| match name {
            "4" => (4, PagingMode::FourLevel),
            "5" => (5, PagingMode::FiveLevel),
            _ => panic!("GUESTWALK_QEMU_DUMP_LEVELS={names:?}: levels are 4 and 5"),
        })
        .collect();
    assert!(
        !levels.is_empty(),
        "GUESTWALK_QEMU_DUMP_LEVELS={names:?} names no level"
    );
    levels
}

#[test]
fn qemu_made_dumps_walk_exactly_as_qemu_info_tlb() {
    let Some(root) = dumps_dir("qemu_made_dumps_walk_exactly_as_qemu_info_tlb") else {
        return;
    };
    for (levels, mode) in dump_levels() {
        let dir = root.join(levels.to_string());
        let qemu = read_lines(&dir.join("qemu.tlb"));
        assert!(
            qemu.len() > 1000,
            "{levels}-level: info tlb has {} lines",
            qemu.len()
        );
        // The THP process's buffer is there: 32 2 MiB leaves (QEMU's P column).
        let serial = std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default();
        let buffer = serial
            .split("GUESTWALK-THP buffer=0x")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("{levels}-level: no THP buffer in serial.log"));
        let huge_in_buffer = qemu
            .iter()
            .filter(|l| {
                let va = u64::from_str_radix(&l[..16], 16).unwrap_or(0);
                (buffer..buffer + (64 << 20)).contains(&va) && l.as_bytes().get(37) == Some(&b'P')
            })
            .count();
        assert_eq!(
            huge_in_buffer, 32,
            "{levels}-level: the THP buffer's 2 MiB leaves"
        );
        let mut walked = 0;
        for name in ["core.elf", "zlib.kdump", "lzo.kdump", "snappy.kdump"] {
            let path = dir.join(name);
            if !path.exists() {
                // Debian's QEMU (7.2, and 10.0 from backports) is built without LZO and
                // Snappy; the readers of those are tested on files written by the unit tests
                // (vmm/core/src/dump/kdump.rs).
                assert!(
                    name != "core.elf" && name != "zlib.kdump",
                    "{} is missing",
                    path.display()
                );
                continue;
            }
            let dump = Dump::open(&path, None).unwrap_or_else(|e| panic!("{e}"));
            let regs = dump.control_registers(0).unwrap_or_else(|e| panic!("{e}"));
            let ctx = PagingContext::new(regs).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                ctx.mode(),
                mode,
                "{name}: the paging mode from the dump's CR4"
            );
            assert_eq!(regs.cr3, register(&dir, "CR3"), "{name}: CR3 from the dump");
            dump.prepare_walk(&ctx).unwrap_or_else(|e| panic!("{e}"));
            assert_same(
                &format!("{levels}-level {name}"),
                &qemu,
                &tlb(dump.memory(), regs),
            );
            dump.check_intact().unwrap_or_else(|e| panic!("{e}"));
            walked += 1;
        }
        assert!(walked >= 2);
        // The raw memory file, with the registers QEMU printed.
        let raw = vmm::memfile::open(&dir.join("mem.raw")).unwrap_or_else(|e| panic!("{e}"));
        let regs = ControlRegisters {
            cr0: ControlRegisters::long_mode(0).cr0,
            cr3: register(&dir, "CR3"),
            cr4: register(&dir, "CR4"),
            efer: register(&dir, "EFER"),
        };
        assert_same(
            &format!("{levels}-level mem.raw"),
            &qemu,
            &tlb(raw.memory(), regs),
        );
    }
}
