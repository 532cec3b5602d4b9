//! Helpers shared by the workspace's tests: the rule for tests that need `/dev/kvm` (they
//! fail, not skip, when `GUESTWALK_REQUIRE_KVM=1`), and a tiny ELF kernel.

/// Whether KVM is required: when `GUESTWALK_REQUIRE_KVM=1`, a test that cannot open
/// `/dev/kvm` fails instead of skipping.
pub fn kvm_required() -> bool {
    std::env::var("GUESTWALK_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

/// Returns `true` when `/dev/kvm` can be opened. Without it, a test skips with a printed
/// reason, or panics when [`kvm_required`] says KVM must be there.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            assert!(
                !kvm_required(),
                "{test}: GUESTWALK_REQUIRE_KVM=1 but /dev/kvm cannot be opened: {e}"
            );
            eprintln!("{test}: skipped: /dev/kvm cannot be opened ({e})");
            false
        }
    }
}

/// A minimal ELF64 executable for tests of ELF (PVH) kernels: one `PT_LOAD` of 16 bytes at
/// 1 MiB holding `code` (at most 16 bytes, padded with `hlt`), entered there, and with
/// `pvh_entry` a `PT_NOTE` holding Xen's PHYS32_ENTRY note with that address.
pub fn tiny_elf_kernel(code: &[u8], pvh_entry: Option<u32>) -> Vec<u8> {
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    let data_at = 64 + 56 * u64::from(phnum);
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01");
    f.resize(16, 0);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&0x10_0000u64.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, phnum, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |f: &mut Vec<u8>, kind: u32, offset: u64, addr: u64, size: u64, align: u64| {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&5u32.to_le_bytes());
        for v in [offset, addr, addr, size, size, align] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut f, 1, data_at, 0x10_0000, 16, 0x1000);
    if pvh_entry.is_some() {
        phdr(&mut f, 4, data_at + 16, 0, 20, 4);
    }
    let mut text = code.iter().copied().take(16).collect::<Vec<u8>>();
    text.resize(16, 0xf4); // hlt
    f.extend_from_slice(&text);
    if let Some(entry) = pvh_entry {
        for v in [4u32, 4, 18] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(b"Xen\0");
        f.extend_from_slice(&entry.to_le_bytes());
    }
    f
}
