//! Walk throughput, translation latency and the worst case of a hostile guest.
//!
//! Each group builds its page tables once (only the tables live in guest RAM: the mapped
//! frames are addresses, not memory). Throughput is reported per leaf, so criterion's
//! `thrpt` line reads directly as leaves per second; the time per iteration divided by
//! 2^20 is the cost per leaf.
//!
//! - `full_walk_4k`: 4 GiB mapped with 4 KiB pages (2^20 PTEs, 2048 PTE tables), walked
//!   with a PTE callback. In the same group, two baselines that do nothing but read the
//!   same 2054 table pages in a plain loop, summing the entries:
//!   - `baseline_read_tables`: per table one slice lookup, per entry one aligned 8-byte
//!     atomic load: exactly the reads the walk itself must make, and nothing else (the
//!     least a walk must do). The "≤ 2× the baseline" is measured against this one.
//!   - `baseline_copy_tables`: per table one `read_slice` of the 4 KiB page into a buffer
//!     (a `memcpy`), then a sum of its 512 entries: the plain way to read a page with
//!     vm-memory's ordinary API.
//!
//!   Both run at about the same speed, so neither choice flatters the ratio. (An older
//!   baseline read each entry with `Bytes::load`, a region lookup per entry, about ten
//!   times slower: it measured vm-memory's lookup, not the table pages.) Before criterion's
//!   runs, the group prints the fastest of 200 alternating runs of the walk and of each
//!   baseline and their ratios: on a shared machine, where other load only ever adds time,
//!   the minimum of interleaved runs is the steadiest comparison. The other groups print
//!   the same for their benchmarks (`walk_2m` next to `full_walk_4k`, for the per-leaf
//!   ratio).
//! - `split_walk_2m` / `pmd_only_2m`: 4 GiB mapped with 2 MiB pages, walked with a PTE
//!   callback (every PMD split into 512 shadow PTEs) and with a PMD callback only.
//! - `translate_random`: translations of 4096 random addresses inside the 4 KiB mapping.
//! - `hostile_alias_budget`: every level's 512 entries alias one table; a PTE walk runs
//!   until the default entry budget stops it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};
use walker::{
    Action, Callbacks, EntryFn, Granularity, Gva, Level, Mapping, PagingContext, Visit, Visitor,
    WalkError, WalkOptions, for_each_leaf, for_each_mapping, translate, walk,
};

use support::{Builder, TABLE_FLAGS};

/// First virtual address of the benchmark mappings (PML4 slot 1, so the walk starts at a
/// non-zero index).
const VA_BASE: u64 = 0x0000_0080_0000_0000;
/// 4 GiB of mapped virtual space.
const MAPPED: u64 = 4 << 30;
/// 2^20 leaves of 4 KiB.
const LEAVES_4K: u64 = MAPPED >> 12;
/// Where the mapped frames start: far above guest RAM, below any MAXPHYADDR.
const FRAME_BASE: u64 = 0x10_0000_0000;
/// P | RW | A | D: an ordinary data page.
const LEAF_FLAGS: u64 = support::P | support::W | support::A | support::D;

/// A page-table hierarchy under test, with the GPA of every table page it uses.
struct Tables {
    mem: GuestMemoryMmap,
    ctx: PagingContext,
    tables: Vec<u64>,
}

/// Fills the PTE table at `table` with 512 leaves mapping consecutive frames from `frame`.
fn fill_table(b: &Builder, table: u64, frame: u64, step: u64, extra: u64) {
    let mut bytes = Vec::with_capacity(4096);
    for i in 0..512u64 {
        let e = (frame + i * step) | LEAF_FLAGS | extra;
        bytes.extend_from_slice(&e.to_le_bytes());
    }
    b.mem.write_slice(&bytes, GuestAddress(table)).unwrap();
}

/// 4 GiB at `VA_BASE` mapped with 4 KiB pages: 1 PML4, 1 PUD, 4 PMDs, 2048 PTE tables.
fn build_4k() -> Tables {
    // 2054 tables (8.02 MiB) from 4 KiB up, in 9 MiB of RAM.
    let mut b = Builder::new(9 << 20, 0x1000, 9 << 20, false);
    let mut tables = vec![b.root];
    let mut last_pud = 0;
    let mut last_pmd = 0;
    for chunk in 0..(MAPPED >> 21) {
        let va = VA_BASE + (chunk << 21);
        let pt = b.table_for(va, 1, TABLE_FLAGS);
        let pmd = b.table_for(va, 2, TABLE_FLAGS);
        let pud = b.table_for(va, 3, TABLE_FLAGS);
        if pud != last_pud {
            tables.push(pud);
            last_pud = pud;
        }
        if pmd != last_pmd {
            tables.push(pmd);
            last_pmd = pmd;
        }
        tables.push(pt);
        fill_table(&b, pt, FRAME_BASE + (chunk << 21), 4096, 0);
    }
    assert_eq!(tables.len(), 1 + 1 + 4 + 2048);
    let ctx = b.ctx();
    Tables {
        mem: b.mem,
        ctx,
        tables,
    }
}

/// 4 GiB at `VA_BASE` mapped with 2 MiB pages: 1 PML4, 1 PUD, 4 PMD tables of huge leaves.
fn build_2m() -> Tables {
    let mut b = Builder::new(1 << 20, 0x1000, 1 << 20, false);
    let mut tables = vec![b.root];
    for g in 0..(MAPPED >> 30) {
        let va = VA_BASE + (g << 30);
        let pmd = b.table_for(va, 2, TABLE_FLAGS);
        if g == 0 {
            tables.push(b.table_for(va, 3, TABLE_FLAGS));
        }
        tables.push(pmd);
        fill_table(&b, pmd, FRAME_BASE + (g << 30), 2 << 20, support::PS);
    }
    let ctx = b.ctx();
    Tables {
        mem: b.mem,
        ctx,
        tables,
    }
}

/// Every entry of every level points to the next level's single table; the PTE table maps
/// 512 pages. A full walk would read 512^4 entries.
fn build_alias() -> Tables {
    let mut b = Builder::new(1 << 20, 0x1000, 1 << 20, false);
    let pml4 = b.root;
    let pud = b.alloc_table();
    let pmd = b.alloc_table();
    let pt = b.alloc_table();
    for (table, next) in [(pml4, pud), (pud, pmd), (pmd, pt)] {
        let bytes: Vec<u8> = (0..512)
            .flat_map(|_| (next | TABLE_FLAGS).to_le_bytes())
            .collect();
        b.mem.write_slice(&bytes, GuestAddress(table)).unwrap();
    }
    fill_table(&b, pt, FRAME_BASE, 4096, 0);
    let ctx = b.ctx();
    Tables {
        mem: b.mem,
        ctx,
        tables: vec![pml4, pud, pmd, pt],
    }
}

fn mapped_range() -> std::ops::RangeInclusive<Gva> {
    Gva(VA_BASE)..=Gva(VA_BASE + MAPPED - 1)
}

/// Counts the entries of one level and sums their frames, so nothing can be optimized out.
struct LevelCounter {
    callbacks: Callbacks,
    count: u64,
    frames: u64,
}

impl LevelCounter {
    fn new(callbacks: Callbacks) -> Self {
        LevelCounter {
            callbacks,
            count: 0,
            frames: 0,
        }
    }

    fn visit(&mut self, v: &Visit<'_>) -> Result<Action, std::convert::Infallible> {
        self.count += 1;
        self.frames = self.frames.wrapping_add(v.entry.address(v.level).0);
        Ok(Action::Descend)
    }
}

impl LevelCounter {
    fn pmd_entry(&mut self, v: &Visit<'_>) -> Result<Action, std::convert::Infallible> {
        self.visit(v)
    }
    fn pte_entry(&mut self, v: &Visit<'_>) -> Result<Action, std::convert::Infallible> {
        self.visit(v)
    }
}

impl Visitor for LevelCounter {
    type Error = std::convert::Infallible;
    const PMD_ENTRY: Option<EntryFn<Self>> = Some(Self::pmd_entry);
    const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte_entry);

    fn enabled(&self) -> Callbacks {
        self.callbacks
    }
}

#[inline(never)]
fn count_level(t: &Tables, callbacks: Callbacks) -> (u64, u64) {
    let mut c = LevelCounter::new(callbacks);
    walk(&t.mem, &t.ctx, mapped_range(), &mut c).unwrap();
    (c.count, c.frames)
}

/// What any walk of the 4 KiB hierarchy must at least do: one region lookup per table
/// page and one aligned atomic load per entry.
#[inline(never)]
fn read_tables(mem: &GuestMemoryMmap, tables: &[u64]) -> u64 {
    let mut sum = 0u64;
    for &gpa in tables {
        let slice = mem.get_slice(GuestAddress(gpa), 4096).unwrap();
        for i in 0..512 {
            // The same read the walk uses: one inlined aligned atomic load.
            let entry = slice.get_atomic_ref::<AtomicU64>(i * 8).unwrap();
            sum = sum.wrapping_add(entry.load(Ordering::Relaxed));
        }
    }
    sum
}

/// The same tables read a page at a time: one `read_slice` of each 4 KiB table page into a
/// buffer (one region lookup and one `memcpy`), then a sum of its 512 entries.
#[inline(never)]
fn copy_tables(mem: &GuestMemoryMmap, tables: &[u64]) -> u64 {
    let mut page = [0u8; 4096];
    let mut sum = 0u64;
    for &gpa in tables {
        mem.read_slice(&mut page, GuestAddress(gpa)).unwrap();
        for entry in page.chunks_exact(8) {
            sum = sum.wrapping_add(u64::from_le_bytes(entry.try_into().unwrap()));
        }
    }
    sum
}

/// Runs each of `runs` in turn, `ROUNDS` times over, and returns the fastest run of each.
/// On a shared machine the other load only ever adds time, so the minimum of interleaved
/// runs is the steadiest comparison within one run.
fn fastest_alternating(runs: &[&dyn Fn() -> u64]) -> Vec<Duration> {
    fastest_alternating_n(runs, 200)
}

/// [`fastest_alternating`] with `rounds` rounds (for runs long enough that 200 take
/// minutes).
fn fastest_alternating_n(runs: &[&dyn Fn() -> u64], rounds: usize) -> Vec<Duration> {
    let mut best = vec![Duration::MAX; runs.len()];
    for _ in 0..rounds {
        for (run, best) in runs.iter().zip(&mut best) {
            let start = Instant::now();
            black_box(run());
            *best = (*best).min(start.elapsed());
        }
    }
    best
}

/// Prints one line of [`fastest_alternating`]'s results: `elements` per run.
fn print_fastest(group: &str, name: &str, best: Duration, elements: u64, ratios: &str) {
    print_fastest_n(group, name, best, elements, ratios, 200);
}

/// [`print_fastest`] for [`fastest_alternating_n`] with `rounds` rounds.
fn print_fastest_n(
    group: &str,
    name: &str,
    best: Duration,
    elements: u64,
    ratios: &str,
    rounds: usize,
) {
    eprintln!(
        "{group}, fastest of {rounds} alternating runs: {name:<20} {:>8.1} us {:>7.3} ns/element {ratios}",
        best.as_secs_f64() * 1e6,
        best.as_secs_f64() * 1e9 / elements as f64,
    );
}

/// The 4 KiB walk and both baselines, alternately. Kept out of line, like the walk and the
/// baselines it runs, so `valgrind --tool=callgrind --toggle-collect=walk::alternating_4k`
/// counts the instructions of exactly these runs.
#[inline(never)]
fn alternating_4k(t: &Tables) {
    let best = fastest_alternating(&[
        &|| count_level(t, black_box(Callbacks::PTE)).1,
        &|| read_tables(&t.mem, black_box(&t.tables)),
        &|| copy_tables(&t.mem, black_box(&t.tables)),
    ]);
    let names = [
        "full_walk_4k",
        "baseline_read_tables",
        "baseline_copy_tables",
    ];
    for (name, &time) in names.iter().zip(&best) {
        let ratio = best[0].as_secs_f64() / time.as_secs_f64();
        let ratio = format!("(full_walk_4k / this = {ratio:.2})");
        print_fastest("walk_4k", name, time, LEAVES_4K, &ratio);
    }
}

fn full_walk_4k(c: &mut Criterion) {
    let t = build_4k();
    assert_eq!(count_level(&t, Callbacks::PTE).0, LEAVES_4K);
    alternating_4k(&t);
    let mut g = c.benchmark_group("walk_4k");
    g.sample_size(20);
    g.throughput(Throughput::Elements(LEAVES_4K));
    g.bench_function("full_walk_4k", |bench| {
        bench.iter(|| black_box(count_level(&t, black_box(Callbacks::PTE))))
    });
    g.bench_function("baseline_read_tables", |bench| {
        bench.iter(|| black_box(read_tables(&t.mem, black_box(&t.tables))))
    });
    g.bench_function("baseline_copy_tables", |bench| {
        bench.iter(|| black_box(copy_tables(&t.mem, black_box(&t.tables))))
    });
    g.finish();
}

fn walk_2m(c: &mut Criterion) {
    let t = build_2m();
    assert_eq!(count_level(&t, Callbacks::PTE).0, LEAVES_4K);
    assert_eq!(count_level(&t, Callbacks::PMD).0, MAPPED >> 21);
    {
        // Split and PMD-only walks, alternating with the 4 KiB walk they are compared with.
        let t4k = build_4k();
        let best = fastest_alternating(&[
            &|| count_level(&t, black_box(Callbacks::PTE)).1,
            &|| count_level(&t, black_box(Callbacks::PMD)).1,
            &|| count_level(&t4k, black_box(Callbacks::PTE)).1,
        ]);
        let [split, pmd, full] = [best[0], best[1], best[2]].map(|d| d.as_secs_f64());
        let per_leaf = format!(
            "(split / full_walk_4k per 4 KiB leaf = {:.2})",
            split / full
        );
        print_fastest("walk_2m", "split_walk_2m", best[0], LEAVES_4K, &per_leaf);
        let faster = format!("(split_walk_2m / this = {:.0})", split / pmd);
        print_fastest("walk_2m", "pmd_only_2m", best[1], MAPPED >> 21, &faster);
        print_fastest("walk_2m", "full_walk_4k", best[2], LEAVES_4K, "");
    }
    let mut g = c.benchmark_group("walk_2m");
    g.sample_size(20);
    g.throughput(Throughput::Elements(LEAVES_4K));
    g.bench_function("split_walk_2m", |bench| {
        bench.iter(|| black_box(count_level(&t, black_box(Callbacks::PTE))))
    });
    // Per 2 MiB leaf here: 2048 of them.
    g.throughput(Throughput::Elements(MAPPED >> 21));
    g.bench_function("pmd_only_2m", |bench| {
        bench.iter(|| black_box(count_level(&t, black_box(Callbacks::PMD))))
    });
    g.finish();
}

/// A hand-written visitor whose state is reached through a reference: what a closure that
/// captures its totals by `&mut` amounts to.
struct ByRefCounter<'a> {
    count: &'a mut u64,
    frames: &'a mut u64,
}

impl ByRefCounter<'_> {
    fn pte_entry(&mut self, v: &Visit<'_>) -> Result<Action, std::convert::Infallible> {
        *self.count += 1;
        *self.frames = self.frames.wrapping_add(v.entry.address(v.level).0);
        Ok(Action::Descend)
    }
}

impl Visitor for ByRefCounter<'_> {
    type Error = std::convert::Infallible;
    const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte_entry);
}

#[inline(never)]
fn count_by_ref_visitor(t: &Tables) -> (u64, u64) {
    let (mut count, mut frames) = (0, 0);
    let mut v = ByRefCounter {
        count: &mut count,
        frames: &mut frames,
    };
    walk(&t.mem, &t.ctx, mapped_range(), &mut v).unwrap();
    (count, frames)
}

/// The leaf API, with a closure capturing one reference to a struct of totals (or one
/// variable: the same).
#[inline(never)]
fn count_for_each_leaf(t: &Tables, granularity: Granularity) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    let sum = &mut totals;
    for_each_leaf(
        &t.mem,
        &t.ctx,
        mapped_range(),
        granularity,
        WalkOptions::default(),
        move |leaf| {
            sum.0 += 1;
            sum.1 = sum.1.wrapping_add(leaf.pa.0);
            Ok::<(), std::convert::Infallible>(())
        },
    )
    .unwrap();
    totals
}

/// The leaf API, with a closure capturing two variables by reference: two `&mut` the
/// compiler cannot tell apart, so both totals go through memory on every leaf.
#[inline(never)]
fn count_for_each_leaf_two_refs(t: &Tables) -> (u64, u64) {
    let (mut count, mut frames) = (0u64, 0u64);
    for_each_leaf(
        &t.mem,
        &t.ctx,
        mapped_range(),
        Granularity::AsMapped,
        WalkOptions::default(),
        |leaf| {
            count += 1;
            frames = frames.wrapping_add(leaf.pa.0);
            Ok::<(), std::convert::Infallible>(())
        },
    )
    .unwrap();
    (count, frames)
}

/// `for_each_mapping`, with a closure capturing one reference to its totals.
#[inline(never)]
fn count_for_each_mapping(t: &Tables, granularity: Granularity) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    let sum = &mut totals;
    for_each_mapping(
        &t.mem,
        &t.ctx,
        mapped_range(),
        granularity,
        WalkOptions::default(),
        move |m| {
            if let Mapping::Leaf(leaf) = m {
                sum.0 += 1;
                sum.1 = sum.1.wrapping_add(leaf.pa.0);
            }
            Ok::<(), std::convert::Infallible>(())
        },
    )
    .unwrap();
    totals
}

/// `for_each_leaf` with a closure that reads every field of the record (as the CLI's
/// output does), folded into one checksum.
#[inline(never)]
fn fold_every_field(t: &Tables) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    let sum = &mut totals;
    for_each_leaf(
        &t.mem,
        &t.ctx,
        mapped_range(),
        Granularity::AsMapped,
        WalkOptions::default(),
        move |l| {
            let flags = u64::from(l.effective.writable)
                | u64::from(l.effective.user) << 1
                | u64::from(l.effective.nx) << 2
                | u64::from(l.accessed) << 3
                | u64::from(l.dirty) << 4
                | u64::from(l.global) << 5
                | u64::from(l.memory_type.0) << 6
                | u64::from(l.pkey) << 9
                | u64::from(l.is_shadow()) << 13;
            sum.0 += 1;
            sum.1 = sum
                .1
                .wrapping_add(l.va.0 ^ l.pa.0)
                .wrapping_add(l.size.bytes() ^ flags);
            Ok::<(), std::convert::Infallible>(())
        },
    )
    .unwrap();
    totals
}

/// A hand-written visitor computing [`fold_every_field`]'s checksum from each PTE's
/// `Visit::decode`, owning its totals: what reading the whole record costs without the
/// leaf API.
struct EveryField(u64, u64);

impl EveryField {
    fn pte_entry(&mut self, v: &Visit<'_>) -> Result<Action, std::convert::Infallible> {
        let d = v.decode();
        let flags = u64::from(v.effective.writable)
            | u64::from(v.effective.user) << 1
            | u64::from(v.effective.nx) << 2
            | u64::from(d.accessed) << 3
            | u64::from(d.dirty) << 4
            | u64::from(d.global) << 5
            | u64::from(d.memory_type.0) << 6
            | u64::from(d.pkey) << 9
            | u64::from(v.is_shadow()) << 13;
        self.0 += 1;
        self.1 = self
            .1
            .wrapping_add(v.entry_start().0 ^ d.frame.0)
            .wrapping_add(4096 ^ flags);
        Ok(Action::Descend)
    }
}

impl Visitor for EveryField {
    type Error = std::convert::Infallible;
    const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte_entry);
}

#[inline(never)]
fn visitor_every_field(t: &Tables) -> (u64, u64) {
    let mut v = EveryField(0, 0);
    walk(&t.mem, &t.ctx, mapped_range(), &mut v).unwrap();
    (v.0, v.1)
}

fn leaf_api(c: &mut Criterion) {
    let t = build_4k();
    let t2m = build_2m();
    let want = count_level(&t, Callbacks::PTE);
    assert_eq!(want.0, LEAVES_4K);
    assert_eq!(count_by_ref_visitor(&t), want);
    assert_eq!(count_for_each_leaf_two_refs(&t), want);
    for g in [Granularity::AsMapped, Granularity::Split4K] {
        assert_eq!(count_for_each_leaf(&t, g), want);
        assert_eq!(count_for_each_mapping(&t, g), want);
    }
    assert_eq!(
        count_for_each_leaf(&t2m, Granularity::Split4K),
        count_level(&t2m, Callbacks::PTE)
    );
    assert_eq!(fold_every_field(&t), visitor_every_field(&t));
    let best = fastest_alternating(&[
        &|| count_level(&t, black_box(Callbacks::PTE)).1,
        &|| count_by_ref_visitor(black_box(&t)).1,
        &|| count_for_each_leaf(black_box(&t), Granularity::AsMapped).1,
        &|| count_for_each_leaf_two_refs(black_box(&t)).1,
        &|| count_for_each_mapping(black_box(&t), Granularity::AsMapped).1,
        &|| fold_every_field(black_box(&t)).1,
        &|| visitor_every_field(black_box(&t)).1,
        &|| count_level(&t2m, black_box(Callbacks::PTE)).1,
        &|| count_for_each_leaf(black_box(&t2m), Granularity::Split4K).1,
    ]);
    let names = [
        "visitor",
        "visitor_by_ref",
        "for_each_leaf",
        "for_each_leaf_2refs",
        "for_each_mapping",
        "leaf_every_field",
        "visitor_every_field",
        "visitor_2m_split",
        "for_each_leaf_2m_split",
    ];
    for (i, (name, &time)) in names.iter().zip(&best).enumerate() {
        // The split walks against the split visitor, the rest against the visitor.
        let (base, base_name) = match i {
            7.. => (best[7], "visitor_2m_split"),
            5 => (best[6], "visitor_every_field"),
            _ => (best[0], "visitor"),
        };
        let ratio = time.as_secs_f64() / base.as_secs_f64();
        let ratio = format!("(this / {base_name} = {ratio:.2})");
        print_fastest("leaves", name, time, LEAVES_4K, &ratio);
    }
    let mut g = c.benchmark_group("leaves");
    g.sample_size(20);
    g.throughput(Throughput::Elements(LEAVES_4K));
    g.bench_function("visitor", |bench| {
        bench.iter(|| black_box(count_level(&t, black_box(Callbacks::PTE))))
    });
    g.bench_function("for_each_leaf", |bench| {
        bench.iter(|| black_box(count_for_each_leaf(black_box(&t), Granularity::AsMapped)))
    });
    g.bench_function("for_each_mapping", |bench| {
        bench.iter(|| black_box(count_for_each_mapping(black_box(&t), Granularity::AsMapped)))
    });
    g.finish();
}

/// A small xorshift generator: reproducible addresses without a `rand` dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn translate_random(c: &mut Criterion) {
    const COUNT: u64 = 4096;
    let t = build_4k();
    let mut state = 0x9e37_79b9_7f4a_7c15;
    let addrs: Vec<Gva> = (0..COUNT)
        .map(|_| Gva(VA_BASE + xorshift(&mut state) % MAPPED))
        .collect();
    for &va in &addrs {
        let gpa = translate(&t.mem, &t.ctx, va).unwrap().gpa;
        assert_eq!(gpa.0, FRAME_BASE + (va.0 - VA_BASE));
    }
    let translate_all = || {
        let mut sum = 0u64;
        for &va in &addrs {
            sum = sum.wrapping_add(translate(&t.mem, &t.ctx, black_box(va)).unwrap().gpa.0);
        }
        sum
    };
    // The floor: the same four dependent loads, with no checks, callbacks or error paths.
    let read_all = || {
        let mut sum = 0u64;
        for &va in &addrs {
            sum = sum.wrapping_add(read_path(&t.mem, t.ctx.root().0, black_box(va.0)));
        }
        sum
    };
    let best = fastest_alternating(&[&translate_all, &read_all]);
    let ratio = format!(
        "(translate_random / this = {:.2})",
        best[0].as_secs_f64() / best[1].as_secs_f64()
    );
    print_fastest("translate", "translate_random", best[0], COUNT, "");
    print_fastest("translate", "baseline_translate", best[1], COUNT, &ratio);
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(COUNT));
    g.bench_function("translate_random", |bench| {
        bench.iter(|| black_box(translate_all()))
    });
    g.bench_function("baseline_translate", |bench| {
        bench.iter(|| black_box(read_all()))
    });
    g.finish();
}

/// 2^20 random addresses over the 4 GiB mapping (8 MiB of page tables: the tables do not
/// stay in cache between addresses): `translate_each` (summing the GPAs) and
/// `translate_many` (collecting the results) against `translate` per address and the bare
/// lookup loop, on the same addresses.
fn translate_batch(c: &mut Criterion) {
    const COUNT: u64 = 1 << 20;
    let t = build_4k();
    let mut state = 0x2545_f491_4f6c_dd1d;
    let addrs: Vec<Gva> = (0..COUNT)
        .map(|_| Gva(VA_BASE + xorshift(&mut state) % MAPPED))
        .collect();
    let each = || {
        let mut sum = 0u64;
        walker::translate_each(&t.mem, &t.ctx, black_box(&addrs), |_, r| {
            if let Ok(tr) = r {
                sum = sum.wrapping_add(tr.gpa.0);
            }
        });
        sum
    };
    let many = || {
        let all = walker::translate_many(&t.mem, &t.ctx, black_box(&addrs));
        all.len() as u64
    };
    let one_by_one = || {
        let mut sum = 0u64;
        for &va in black_box(&addrs) {
            if let Ok(tr) = translate(&t.mem, &t.ctx, va) {
                sum = sum.wrapping_add(tr.gpa.0);
            }
        }
        sum
    };
    let bare = || {
        let mut sum = 0u64;
        for &va in black_box(&addrs) {
            sum = sum.wrapping_add(read_path(&t.mem, t.ctx.root().0, va.0));
        }
        sum
    };
    assert_eq!(each(), one_by_one());
    assert_eq!(each(), bare());
    let best = fastest_alternating_n(&[&each, &many, &one_by_one, &bare], 20);
    let names = [
        "translate_each",
        "translate_many",
        "translate_loop",
        "baseline_lookup",
    ];
    for (name, &time) in names.iter().zip(&best) {
        let ratio = time.as_secs_f64() / best[3].as_secs_f64();
        let ratio = format!("(this / baseline_lookup = {ratio:.2})");
        print_fastest_n("translate_1m", name, time, COUNT, &ratio, 20);
    }
    let mut g = c.benchmark_group("translate_1m");
    g.sample_size(10);
    g.throughput(Throughput::Elements(COUNT));
    g.bench_function("translate_each", |bench| bench.iter(|| black_box(each())));
    g.bench_function("translate_loop", |bench| {
        bench.iter(|| black_box(one_by_one()))
    });
    g.bench_function("baseline_lookup", |bench| bench.iter(|| black_box(bare())));
    g.finish();
}

/// A bare 4-level lookup: one region lookup and one atomic load per level.
fn read_path(mem: &GuestMemoryMmap, root: u64, va: u64) -> u64 {
    let mut table = root;
    for shift in [39, 30, 21, 12] {
        let slice = mem.get_slice(GuestAddress(table), 4096).unwrap();
        let index = ((va >> shift) & 0x1ff) as usize;
        let entry = slice
            .get_atomic_ref::<AtomicU64>(index * 8)
            .unwrap()
            .load(Ordering::Relaxed);
        table = entry & 0x000f_ffff_ffff_f000;
    }
    table | (va & 0xfff)
}

fn hostile_alias_budget(c: &mut Criterion) {
    let t = build_alias();
    let run = || {
        let mut v = LevelCounter::new(Callbacks::PTE);
        let r = walk(&t.mem, &t.ctx, Gva(0)..=Gva(u64::MAX), &mut v);
        match r {
            Err(WalkError::BudgetExhausted { level, .. }) => (v.count, level),
            other => panic!("expected the budget to run out, got {other:?}"),
        }
    };
    let (leaves, level) = run();
    eprintln!(
        "hostile_alias_budget: {leaves} PTEs visited before the budget ran out (at {level}, {} aliased tables)",
        t.tables.len()
    );
    assert_eq!(level, Level::Pte);
    // The same attack on a guest of 1 TiB (reserved, not touched) and of 8 TiB, whose
    // default budgets are scaled: both get the ceiling of 2^30 entries.
    for tib in [1usize, 8] {
        let big = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), tib << 40)]).unwrap();
        for &gpa in &t.tables {
            let mut page = [0u8; 4096];
            t.mem.read_slice(&mut page, GuestAddress(gpa)).unwrap();
            big.write_slice(&page, GuestAddress(gpa)).unwrap();
        }
        let start = Instant::now();
        let mut v = LevelCounter::new(Callbacks::PTE);
        let r = walk(&big, &t.ctx, Gva(0)..=Gva(u64::MAX), &mut v);
        let elapsed = start.elapsed();
        let Err(WalkError::BudgetExhausted { limit, .. }) = r else {
            panic!("expected the budget to run out, got {r:?}");
        };
        eprintln!(
            "hostile_alias_budget, {tib} TiB guest: stopped after {limit} entries ({} PTEs) in {:.3} s",
            v.count,
            elapsed.as_secs_f64()
        );
    }
    let mut g = c.benchmark_group("hostile");
    g.sample_size(10);
    g.bench_function("hostile_alias_budget", |bench| {
        bench.iter_batched(|| (), |()| black_box(run()), BatchSize::PerIteration)
    });
    g.finish();
}

criterion_group!(
    benches,
    full_walk_4k,
    walk_2m,
    leaf_api,
    translate_random,
    translate_batch,
    hostile_alias_budget
);
criterion_main!(benches);
