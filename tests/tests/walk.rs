//! The walker on page tables a real vCPU uses: the built-in guest builds them itself,
//! the MMU sets their accessed/dirty bits, KVM_TRANSLATE is the independent oracle.

use guestwalk_tests::{
    beyond_48_bits, boot, check_paging_mode, finish, hash_ram, kvm_available, next_heartbeat,
    ready, space_of,
};
use vm_memory::GuestMemoryBackend;
use vmm::guest::descriptor::DESCRIPTOR_FLAG_MASK;
use vmm::{Descriptor, GuestMode, Vm, memfile};
use walker::{Granularity, Gva, Leaf, Mapping, PagingContext, PagingMode, WalkError, WalkOptions};

const ALL: std::ops::RangeInclusive<Gva> = Gva(0)..=Gva(u64::MAX);

/// Bits compared between a leaf and the descriptor: P, R/W, U/S, PWT, PCD, bit 7
/// (PS or PAT), G, PAT (bit 12 of huge leaves), NX. Accessed and dirty are the CPU's.
const COMPARED_BITS: u64 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x80 | 0x100 | (1 << 63);

/// The walker's context for `cr3`; its paging depth must follow the vCPU's CR4.LA57.
fn context(vm: &Vm, state: &vmm::VcpuState, cr3: u64) -> PagingContext {
    let ctx = match vm.paging_context(state, Some(cr3)) {
        Ok(ctx) => ctx,
        Err(e) => panic!("the vCPU is not in a walkable mode: {e}"),
    };
    let five = state.cr4 & guestwalk_tests::CR4_LA57 != 0;
    assert_eq!(
        ctx.mode(),
        if five {
            PagingMode::FiveLevel
        } else {
            PagingMode::FourLevel
        }
    );
    ctx
}

fn leaves_of<M: GuestMemoryBackend>(mem: &M, ctx: &PagingContext, g: Granularity) -> Vec<Leaf> {
    let all = match walker::mappings(mem, ctx, ALL, g) {
        Ok(all) => all,
        Err(e) => panic!("walk failed: {e}"),
    };
    all.into_iter()
        .map(|m| match m {
            Mapping::Leaf(l) => l,
            Mapping::Bad(b) => panic!("the built-in guest has a malformed entry: {b:?}"),
        })
        .collect()
}

/// Descriptor runs of `space` expanded to one tuple per leaf:
/// (va, pa, size, bits, eff W, eff U, eff NX, read, wrote).
type Expected = (u64, u64, u64, u64, bool, bool, bool, bool, bool);

fn expected(d: &Descriptor, space: u8) -> Vec<Expected> {
    let mut out = Vec::new();
    for run in d.runs_of_space(space) {
        let size = run.level.page_size();
        for i in 0..run.count {
            out.push((
                run.va.0 + i * size,
                run.pa.0 + i * size,
                size,
                run.flags & !DESCRIPTOR_FLAG_MASK & COMPARED_BITS,
                run.effective_writable(),
                run.effective_user(),
                run.effective_nx(),
                run.read(),
                run.wrote(),
            ));
        }
    }
    out.sort();
    out
}

fn check_leaves_equal_descriptor(leaves: &[Leaf], d: &Descriptor, space: u8) {
    let want = expected(d, space);
    assert!(!want.is_empty());
    assert_eq!(leaves.len(), want.len(), "leaf count of space {space}");
    for (leaf, w) in leaves.iter().zip(&want) {
        let got = (
            leaf.va.0,
            leaf.pa.0,
            leaf.size.bytes(),
            leaf.entry.raw() & COMPARED_BITS,
            leaf.effective.writable,
            leaf.effective.user,
            leaf.effective.nx,
        );
        assert_eq!(got, (w.0, w.1, w.2, w.3, w.4, w.5, w.6), "space {space}");
        assert!(!leaf.is_shadow());
        // The MMU set A on everything the guest touched, and D on what it wrote.
        if w.7 || w.8 {
            assert!(
                leaf.accessed,
                "{:#x} was touched but is not accessed",
                leaf.va.0
            );
        }
        if w.8 {
            assert!(leaf.dirty, "{:#x} was written but is not dirty", leaf.va.0);
        }
    }
}

#[test]
fn walk_equals_the_guests_descriptor_in_both_address_spaces() {
    if !kvm_available("walk_equals_the_guests_descriptor_in_both_address_spaces") {
        return;
    }
    let (vm, console) = boot(GuestMode::Normal, 1);
    let d = ready(&vm, &console);
    assert_eq!(d.space_count, 2);
    let states = vm.pause().unwrap_or_else(|e| panic!("pause: {e}"));
    let la57 = check_paging_mode(&vm, &d, &states[0]);
    let before = hash_ram(&vm);
    for space in 0..2u8 {
        let ctx = context(&vm, &states[0], d.cr3[space as usize]);
        let leaves = leaves_of(vm.guest_memory(), &ctx, Granularity::AsMapped);
        check_leaves_equal_descriptor(&leaves, &d, space);
        // With 5-level paging the walk reaches leaves beyond 48 bits, in both halves,
        // and the CPU set accessed/dirty on them (checked against the descriptor above).
        let high: Vec<u64> = leaves
            .iter()
            .map(|l| l.va.0)
            .filter(|va| beyond_48_bits(*va))
            .collect();
        assert_eq!(
            (
                high.iter().any(|va| va >> 63 == 0),
                high.iter().any(|va| va >> 63 == 1)
            ),
            (la57, la57),
            "space {space}: leaves beyond 48 bits {high:#x?}"
        );
        // Split: every huge leaf becomes 512 consecutive shadow 4 KiB leaves.
        let split = leaves_of(vm.guest_memory(), &ctx, Granularity::Split4K);
        let expected_4k: u64 = leaves.iter().map(|l| l.size.bytes() / 4096).sum();
        assert_eq!(split.len() as u64, expected_4k);
        for l in &split {
            let t = walker::translate(vm.guest_memory(), &ctx, l.va);
            assert_eq!(t.map(|t| t.gpa), Ok(l.pa));
        }
        assert!(split.iter().any(|l| l.is_shadow()));
    }
    assert_eq!(hash_ram(&vm), before, "a walk wrote guest memory");
    vm.resume().unwrap_or_else(|e| panic!("resume: {e}"));
    finish(&vm, &console);
}

/// A tiny deterministic generator for "random" pages.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn translations_agree_with_kvm_translate() {
    if !kvm_available("translations_agree_with_kvm_translate") {
        return;
    }
    let (vm, console) = boot(GuestMode::Normal, 1);
    let d = ready(&vm, &console);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut spaces_seen = [false; 2];
    let mut checked = 0;
    let mut checked_beyond_48_bits = 0;
    let mut la57 = None;
    // The guest switches CR3 every iteration: pause at irregular moments until both spaces
    // were current. (Pausing right after a heartbeat would always land in the same space:
    // heartbeats come every 256 iterations.)
    for _ in 0..200 {
        if spaces_seen.iter().all(|s| *s) {
            break;
        }
        let states = vm.pause().unwrap_or_else(|e| panic!("pause: {e}"));
        let space = space_of(&d, states[0].cr3);
        spaces_seen[space as usize] = true;
        let five = *la57.get_or_insert_with(|| check_paging_mode(&vm, &d, &states[0]));
        let ctx = context(&vm, &states[0], states[0].cr3);
        for leaf in leaves_of(vm.guest_memory(), &ctx, Granularity::AsMapped) {
            let pages = leaf.size.bytes() / 4096;
            let random = rng.next() % pages;
            for page in [0, pages - 1, random] {
                let va = Gva(leaf.va.0 + page * 4096 + (rng.next() & 0xfff));
                let ours = walker::translate(vm.guest_memory(), &ctx, va)
                    .unwrap_or_else(|e| panic!("{va}: {e}"));
                let kvm = vm
                    .translate(0, va)
                    .unwrap_or_else(|e| panic!("KVM_TRANSLATE {va}: {e}"));
                assert!(kvm.valid, "KVM says {va} is not mapped; we say {ours:?}");
                assert_eq!(kvm.gpa, ours.gpa, "{va}");
                checked += 1;
                if beyond_48_bits(va.0) {
                    checked_beyond_48_bits += 1;
                }
            }
        }
        // Unmapped addresses: both agree they are not mapped. With 5-level paging also
        // non-present PML5 entries: slot 1 (2^48) and the kernel half's slot 256.
        let holes_5level: &[u64] = if five {
            &[1 << 48, 0xff00_0000_0000_0000]
        } else {
            &[]
        };
        for &va in [
            0x4000_4000u64,
            0x4020_0000,
            0x8000_0000,
            0x80_0000_0000,
            0x1234_5678_9000,
        ]
        .iter()
        .chain(holes_5level)
        {
            assert!(walker::translate(vm.guest_memory(), &ctx, Gva(va)).is_err());
            let kvm = vm.translate(0, Gva(va)).unwrap_or_else(|e| panic!("{e}"));
            assert!(!kvm.valid, "{va:#x}");
        }
        vm.resume().unwrap_or_else(|e| panic!("resume: {e}"));
        std::thread::sleep(std::time::Duration::from_micros(200 + rng.next() % 5000));
    }
    assert!(
        spaces_seen.iter().all(|s| *s),
        "never paused in both spaces"
    );
    assert!(checked > 100);
    assert_eq!(
        checked_beyond_48_bits > 0,
        la57 == Some(true),
        "{checked_beyond_48_bits} translations beyond 48 bits checked"
    );
    finish(&vm, &console);
}

#[test]
fn a_hundred_pause_walk_resume_cycles() {
    if !kvm_available("a_hundred_pause_walk_resume_cycles") {
        return;
    }
    let (vm, console) = boot(GuestMode::Normal, 2);
    let d = ready(&vm, &console);
    let first = next_heartbeat(&vm);
    for cycle in 0..100 {
        let states = vm
            .pause()
            .unwrap_or_else(|e| panic!("cycle {cycle}: pause: {e}"));
        let space = space_of(&d, states[0].cr3);
        let ctx = context(&vm, &states[0], states[0].cr3);
        // Hashing all RAM costs more than the walk: prove it unchanged every 10th cycle.
        let before = (cycle % 10 == 0).then(|| hash_ram(&vm));
        let leaves = leaves_of(vm.guest_memory(), &ctx, Granularity::AsMapped);
        assert_eq!(leaves.len(), expected(&d, space).len(), "cycle {cycle}");
        if let Some(before) = before {
            assert_eq!(
                hash_ram(&vm),
                before,
                "cycle {cycle}: a walk wrote guest memory"
            );
        }
        vm.resume()
            .unwrap_or_else(|e| panic!("cycle {cycle}: resume: {e}"));
    }
    // The guest kept running its own checks in between, and still does.
    let later = next_heartbeat(&vm);
    assert!(later > first, "no progress: {first} -> {later}");
    finish(&vm, &console);
}

#[test]
fn hostile_tables_give_bounded_walks_and_typed_faults() {
    if !kvm_available("hostile_tables_give_bounded_walks_and_typed_faults") {
        return;
    }
    let (vm, console) = boot(GuestMode::Hostile, 1);
    let d = ready(&vm, &console);
    let states = vm.pause().unwrap_or_else(|e| panic!("pause: {e}"));
    // With 5-level paging the hostile PML4 structures sit in the PML4 under PML5[0]: the
    // same slots and faults, one level deeper; the PML5 has its own in slots 100..=103.
    let la57 = check_paging_mode(&vm, &d, &states[0]);
    let before = hash_ram(&vm);
    let ctx = context(&vm, &states[0], d.cr3[0]);
    // The fan-out (PML4 slots 16..=47) exhausts the budget instead of 32 x 512^3 visits.
    let small = WalkOptions {
        entry_budget: 1 << 20,
    };
    let r = walker::for_each_mapping(
        vm.guest_memory(),
        &ctx,
        ALL,
        Granularity::AsMapped,
        small,
        |_| Ok::<(), ()>(()),
    );
    assert!(matches!(r, Err(WalkError::BudgetExhausted { limit, .. }) if limit == 1 << 20));
    // Slots 100..=103: self-reference, pointers outside RAM, reserved bits.
    let slot = |i: u64| Gva(i << 39);
    let bad_range = slot(100)..=Gva((104 << 39) - 1);
    let found = walker::mappings(vm.guest_memory(), &ctx, bad_range, Granularity::Split4K)
        .unwrap_or_else(|e| panic!("{e}"));
    let bad: Vec<_> = found
        .iter()
        .filter_map(|m| match m {
            Mapping::Bad(b) => Some((b.level, b.kind)),
            Mapping::Leaf(_) => None,
        })
        .collect();
    use walker::{FaultKind, Level};
    let outside = |level| {
        bad.iter()
            .filter(|b| b.0 == level && matches!(b.1, FaultKind::OutsideMemory(_)))
            .count()
    };
    let reserved = |level| {
        bad.iter()
            .filter(|b| b.0 == level && matches!(b.1, FaultKind::ReservedBits(_)))
            .count()
    };
    assert_eq!(outside(Level::Pml4), 1, "{bad:?}");
    assert!(outside(Level::Pud) >= 1, "{bad:?}");
    assert!(outside(Level::Pmd) >= 1, "{bad:?}");
    assert!(reserved(Level::Pud) >= 1, "{bad:?}");
    assert!(reserved(Level::Pmd) >= 1, "{bad:?}");
    assert_eq!(reserved(Level::Pml4), 1, "{bad:?}");
    // Outside the hostile slots, the tables are exactly what the guest described.
    let mut leaves = Vec::new();
    let pml5_slot = |i: u64| Gva(i << 48);
    let ranges = if la57 {
        vec![
            Gva(0)..=Gva((16 << 39) - 1),
            slot(48)..=Gva((100 << 39) - 1),
            slot(104)..=Gva((100 << 48) - 1),
            pml5_slot(104)..=Gva(u64::MAX),
        ]
    } else {
        vec![
            Gva(0)..=Gva((16 << 39) - 1),
            slot(48)..=Gva((100 << 39) - 1),
            slot(104)..=Gva(u64::MAX),
        ]
    };
    for range in ranges {
        let found = walker::mappings(vm.guest_memory(), &ctx, range, Granularity::AsMapped)
            .unwrap_or_else(|e| panic!("{e}"));
        leaves.extend(found.into_iter().filter_map(|m| match m {
            Mapping::Leaf(l) => Some(l),
            Mapping::Bad(_) => None,
        }));
    }
    check_leaves_equal_descriptor(&leaves, &d, 0);
    // KVM's answers for the PML5 slots, asked only after the walker proved it wrote
    // nothing: KVM_TRANSLATE may set Accessed bits in the guest's tables as it walks
    // (measured on the emulated host: with these calls before the hash, RAM changed; the
    // guest never uses the self-reference, so its entries start without Accessed).
    let mut kvm_checks: Vec<(Gva, Option<vm_memory::GuestAddress>)> = Vec::new();
    if la57 {
        // PML5 slot 101 points outside RAM, slot 103 has PS (reserved in a PML5E): one
        // typed fault each, at the PML5 level.
        for (i, outside) in [(101u64, true), (103, false)] {
            let found = walker::mappings(
                vm.guest_memory(),
                &ctx,
                pml5_slot(i)..=Gva(((i + 1) << 48) - 1),
                Granularity::AsMapped,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(found.len(), 1, "PML5 slot {i}: {found:?}");
            let Mapping::Bad(b) = found[0] else {
                panic!("PML5 slot {i}: {found:?}");
            };
            assert_eq!(b.level, Level::Pml5, "{b:?}");
            assert_eq!(
                matches!(b.kind, FaultKind::OutsideMemory(_)),
                outside,
                "{b:?}"
            );
            assert_eq!(
                matches!(b.kind, FaultKind::ReservedBits(_)),
                !outside,
                "{b:?}"
            );
            let err = walker::translate(vm.guest_memory(), &ctx, pml5_slot(i));
            assert!(
                matches!(
                    err,
                    Err(walker::TranslateError::OutsideMemory {
                        level: Level::Pml5,
                        ..
                    })
                ) == outside,
                "{err:?}"
            );
            kvm_checks.push((pml5_slot(i), None));
        }
        // The self-reference (slot 100): walker and KVM agree where it leads.
        let va = Gva((100 << 48) | 0x123);
        let ours =
            walker::translate(vm.guest_memory(), &ctx, va).unwrap_or_else(|e| panic!("{va}: {e}"));
        kvm_checks.push((va, Some(ours.gpa)));
    }
    assert_eq!(hash_ram(&vm), before);
    for (va, ours) in kvm_checks {
        let kvm = vm.translate(0, va).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kvm.valid.then_some(kvm.gpa), ours, "{va}");
    }
    vm.resume().unwrap_or_else(|e| panic!("resume: {e}"));
    finish(&vm, &console);
}

#[test]
fn inspecting_a_memory_dump_equals_the_live_walk() {
    if !kvm_available("inspecting_a_memory_dump_equals_the_live_walk") {
        return;
    }
    let (vm, console) = boot(GuestMode::Normal, 1);
    let d = ready(&vm, &console);
    let states = vm.pause().unwrap_or_else(|e| panic!("pause: {e}"));
    let dir = std::env::temp_dir().join(format!("guestwalk-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("ram.raw");
    memfile::dump(vm.guest_memory(), &path, vmm::files::Replace::Yes)
        .unwrap_or_else(|e| panic!("{e}"));
    let mapped = memfile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let file = mapped.memory();
    for space in 0..2usize {
        let ctx = context(&vm, &states[0], d.cr3[space]);
        for g in [Granularity::AsMapped, Granularity::Split4K] {
            let live = leaves_of(vm.guest_memory(), &ctx, g);
            let offline = leaves_of(file, &ctx, g);
            assert_eq!(live, offline, "space {space}, {g:?}");
        }
    }
    mapped.check_intact().unwrap_or_else(|e| panic!("{e}"));
    drop(mapped);
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    vm.resume().unwrap_or_else(|e| panic!("resume: {e}"));
    finish(&vm, &console);
}
