//! Snapshots of the live built-in guest: a full generation then diffs, taken while the
//! guest runs (normal mode, and dirty-writer rounds). Every generation, merged, must be
//! byte-identical to a raw dump of guest RAM taken at the same pause; the walk of a
//! snapshot must print the same leaves as the live walk at that moment; pages the VMM
//! writes between generations must be in the next diff; and a write that fails half-way
//! must leave the earlier generations loadable and lose no dirty page.

use std::path::{Path, PathBuf};

use guestwalk_tests::BuiltinProtocol;
use guestwalk_tests::{TIMEOUT, kvm_available, test_memory};
use vm_memory::{Bytes, GuestAddress};
use vmm::files::Replace;
use vmm::introspect::{Format, VaRange, print_walk};
use vmm::snapshot::{self, SnapshotDir, SnapshotKind};
use vmm::{Console, Descriptor, DirtyLogChoice, GuestMode, RoundRecord, Vm, VmConfig, memfile};
use walker::{Granularity, WalkOptions};

/// Generations per test: one full, then at least five diffs.
const GENERATIONS: u64 = 6;
/// F5: mapped read-only by the guest, never written by it after READY.
const VMM_WRITE_GPA: u64 = 0x40_5000;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("guestwalk-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

fn boot(mode: GuestMode) -> (Vm, Console, Descriptor) {
    let console = Console::capture();
    let config = VmConfig {
        console: console.clone(),
        memory: test_memory(),
        dirty: Some(vmm::DirtyConfig::new(DirtyLogChoice::Auto)),
        ..VmConfig::builtin(mode)
    };
    let vm = vmm::build_vm(&config).unwrap_or_else(|e| panic!("cannot boot ({mode:?}): {e}"));
    let descriptor = guestwalk_tests::ready(&vm, &console);
    (vm, console, descriptor)
}

/// Runs one round of the dirty-writer guest; returns the GPAs it wrote.
fn guest_round(vm: &Vm) -> Vec<u64> {
    let record = vm
        .run_round(TIMEOUT)
        .unwrap_or_else(|e| panic!("no ROUND_DONE: {e}"));
    RoundRecord::read(vm.guest_memory(), record)
        .unwrap_or_else(|e| panic!("{e}"))
        .pages
        .iter()
        .map(|(_, pa)| pa.0)
        .collect()
}

/// The JSON walk (split to 4 KiB) of every given address space.
fn walk_json<M: vm_memory::GuestMemoryBackend>(
    mem: &M,
    contexts: &[walker::PagingContext],
) -> String {
    let mut out = Vec::new();
    for ctx in contexts {
        print_walk(
            mem,
            ctx,
            &VaRange::default(),
            Granularity::Split4K,
            Format::Json,
            WalkOptions::default(),
            &mut out,
        )
        .unwrap_or_else(|e| panic!("walk: {e}"));
    }
    String::from_utf8(out).unwrap_or_default()
}

fn assert_same_file(a: &Path, b: &Path, what: &str) {
    let (x, y) = (
        std::fs::read(a).unwrap_or_else(|e| panic!("{e}")),
        std::fs::read(b).unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(x.len(), y.len(), "{what}: lengths");
    if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "{what}: {} and {} differ first at byte {at:#x}",
            a.display(),
            b.display()
        );
    }
}

/// Every generation of `dir` merged equals the dump taken at its pause.
fn check_merges(dir: &Path, dumps: &Path, generations: u64) {
    for g in 0..generations {
        let merged = dumps.join(format!("merged-{g}.raw"));
        let state =
            snapshot::merge(dir, Some(g), &merged, Replace::Yes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state.generation, g);
        assert_same_file(
            &merged,
            &dumps.join(format!("dump-{g}.raw")),
            &format!("generation {g}"),
        );
        std::fs::remove_file(&merged).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn normal_guest_full_and_diffs_merge_to_the_memory_at_each_pause() {
    if !kvm_available("normal_guest_full_and_diffs_merge_to_the_memory_at_each_pause") {
        return;
    }
    let dir = temp_dir("normal");
    let dumps = temp_dir("normal-dumps");
    let (vm, console, descriptor) = boot(GuestMode::Normal);
    let mut snaps = SnapshotDir::create(&dir).unwrap_or_else(|e| panic!("{e}"));
    let spaces = &descriptor.cr3[..descriptor.space_count as usize];
    snaps.set_guest_cr3s(spaces.to_vec());
    let mut live_walk = String::new();
    for g in 0..GENERATIONS {
        // Let the guest run a while (it writes its pages and switches CR3).
        guestwalk_tests::next_heartbeat(&vm);
        let states = vm.pause().unwrap_or_else(|e| panic!("{e}"));
        let info = vm
            .snapshot_paused(&mut snaps, &states)
            .unwrap_or_else(|e| panic!("generation {g}: {e}"));
        assert_eq!(info.generation, g);
        let kind = if g == 0 {
            SnapshotKind::Full
        } else {
            SnapshotKind::Diff
        };
        assert_eq!(info.kind, kind);
        if g > 0 {
            assert!(info.pages > 0 && info.pages < 1024, "{info:?}");
        }
        memfile::dump(
            vm.guest_memory(),
            &dumps.join(format!("dump-{g}.raw")),
            Replace::Yes,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        if g == 2 {
            // A VMM-side write between generations 2 and 3.
            vm.guest_memory()
                .write_obj(0x5eed_u64, GuestAddress(VMM_WRITE_GPA))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        if g == GENERATIONS - 1 {
            let contexts: Vec<_> = std::iter::once(states[0].cr3)
                .chain(spaces.iter().copied())
                .map(|cr3| {
                    vm.paging_context(&states[0], Some(cr3))
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect();
            live_walk = walk_json(vm.guest_memory(), &contexts);
        }
        vm.resume().unwrap_or_else(|e| panic!("{e}"));
    }
    guestwalk_tests::finish(&vm, &console);
    drop(vm);

    let with_vmm_write = snapshot::diff_pages(&dir, 3).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        with_vmm_write.contains(&GuestAddress(VMM_WRITE_GPA)),
        "the VMM's write is not in generation 3: {with_vmm_write:x?}"
    );
    for g in [2, 4] {
        let pages = snapshot::diff_pages(&dir, g).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !pages.contains(&GuestAddress(VMM_WRITE_GPA)),
            "generation {g}"
        );
    }
    check_merges(&dir, &dumps, GENERATIONS);

    // The offline walk of the last generation equals the live walk at that pause.
    let snap = snapshot::load(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.state.generation, GENERATIONS - 1);
    assert_eq!(snap.state.guest_cr3s, spaces);
    let contexts: Vec<_> = std::iter::once(None)
        .chain(spaces.iter().map(|c| Some(*c)))
        .map(|cr3| {
            snap.paging_context(0, cr3)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let offline = walk_json(snap.memory(), &contexts);
    assert!(offline.lines().count() > 512, "{offline}");
    assert_eq!(offline, live_walk);
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(&dumps).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn dirty_guest_rounds_land_in_their_diffs_and_a_failed_write_loses_nothing() {
    if !kvm_available("dirty_guest_rounds_land_in_their_diffs_and_a_failed_write_loses_nothing") {
        return;
    }
    let dir = temp_dir("dirty");
    let dumps = temp_dir("dirty-dumps");
    let (vm, console, _) = boot(GuestMode::Dirty);
    let mut snaps = SnapshotDir::create(&dir).unwrap_or_else(|e| panic!("{e}"));
    // Generation 0 right after READY.
    let states = vm.pause().unwrap_or_else(|e| panic!("{e}"));
    vm.snapshot_paused(&mut snaps, &states)
        .unwrap_or_else(|e| panic!("{e}"));
    memfile::dump(vm.guest_memory(), &dumps.join("dump-0.raw"), Replace::Yes)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.resume().unwrap_or_else(|e| panic!("{e}"));
    let mut pending: Vec<u64> = Vec::new();
    let mut round = 0;
    while snaps.next_generation() < GENERATIONS {
        round += 1;
        pending.extend(guest_round(&vm));
        let g = snaps.next_generation();
        let states = vm.pause().unwrap_or_else(|e| panic!("{e}"));
        // Round 3's snapshot fails half-way through (a full disk).
        let fail = round == 3;
        snaps.fail_writes_after(fail.then_some(5000));
        let result = vm.snapshot_paused(&mut snaps, &states);
        if fail {
            let e = result.expect_err("the write must fail");
            assert!(e.to_string().contains("no space left"), "{e}");
            let left: Vec<String> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{e}"))
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&format!("{g:06}")))
                .collect();
            assert!(left.is_empty(), "a failed generation left {left:?}");
            let latest = snapshot::load(&dir, None).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(latest.state.generation, g - 1);
        } else {
            let info = result.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(info.generation, g);
            let pages = snapshot::diff_pages(&dir, g).unwrap_or_else(|e| panic!("{e}"));
            for pa in &pending {
                assert!(
                    pages.contains(&GuestAddress(*pa & !0xfff)),
                    "round {round}: generation {g} misses {pa:#x} (has {pages:x?})"
                );
            }
            pending.clear();
            memfile::dump(
                vm.guest_memory(),
                &dumps.join(format!("dump-{g}.raw")),
                Replace::Yes,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        vm.resume().unwrap_or_else(|e| panic!("{e}"));
    }
    guestwalk_tests::finish(&vm, &console);
    drop(vm);
    check_merges(&dir, &dumps, GENERATIONS);
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(&dumps).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn snapshot_pauses_and_resumes_on_its_own() {
    if !kvm_available("snapshot_pauses_and_resumes_on_its_own") {
        return;
    }
    let dir = temp_dir("own");
    let (vm, console, _) = boot(GuestMode::Normal);
    let mut snaps = SnapshotDir::create(&dir).unwrap_or_else(|e| panic!("{e}"));
    for g in 0..3 {
        let info = vm.snapshot(&mut snaps).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(info.generation, g);
        // The guest runs on between snapshots.
        guestwalk_tests::next_heartbeat(&vm);
    }
    guestwalk_tests::finish(&vm, &console);
    let snap = snapshot::load(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.chain, vec![0, 1, 2]);
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
}
