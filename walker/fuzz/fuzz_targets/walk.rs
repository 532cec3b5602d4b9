//! Fuzzes the walker with arbitrary page tables and paging contexts.
//!
//! Input layout (missing bytes read as zero):
//!
//! | bytes  | meaning |
//! |--------|---------|
//! | 0      | flags: 0 LA57, 1 EFER.NXE, 2 1 GiB pages, 3 CR4.PKE, 4 fill memory by repeating the data, 5 fold entry addresses into memory, 6 fold CR3 into memory, 7 last table page straddles the end of memory |
//! | 1      | MAXPHYADDR = 36 + b % 17 |
//! | 2      | memory size = 64 KiB << (b % 5) |
//! | 3      | bits 0-4: walk callbacks (PTE..PML5); bit 5: walk every address |
//! | 4      | Skip probability of a callback (b / 256) |
//! | 5      | Err probability of a callback (b / 65536) |
//! | 6..14  | CR3 |
//! | 14..22 | first address of the range |
//! | 22..30 | length of the range - 1 |
//! | 30..38 | seed of the callback answers and sampled addresses |
//! | 38..   | guest memory contents |
//!
//! With flag 5, every 8-byte word of memory whose bit 11 (ignored by the MMU) is clear has
//! its address bits reduced modulo the memory size, so most entries point at tables in
//! memory and walks go deep.
//!
//! Invariants checked (a panic is a bug in the walker):
//! - guest memory is unchanged by walks, mapping walks and translations;
//! - every visit lies inside the walked range and inside its entry's span, visits come in
//!   address order and never revisit a range already finished;
//! - a callback error is returned with the address and level of the callback;
//! - shadow entries of a split keep the huge leaf's frame offsets: consecutive shadow leaves
//!   map consecutive frames with identical flags;
//! - `translate` agrees with the walk: for addresses inside leaves (gpa = pa + offset, same
//!   rights), for holes (not present at that level) and for faults (same level and kind);
//! - `translate` agrees with a one-address mapping walk, for sampled addresses;
//! - the two mapping granularities cover the same bytes when both finish.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use walker::context::{CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PKE, EFER_LMA, EFER_LME, EFER_NXE};
use walker::{
    Action, Callbacks, ControlRegisters, EntryFn, Fault, FaultKind, Granularity, Gva, Level,
    Mapping, PageSize, PagingContext, TranslateError, Visit, Visitor, WalkError, WalkOptions,
    for_each_leaf, for_each_mapping, translate, translate_many, walk_with,
};

const BUDGET: u64 = 1 << 16;
const ADDR_BITS: u64 = 0x000f_ffff_ffff_f000;
const SAMPLES: usize = 8;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*; a zero state would stay zero.
        if self.0 == 0 {
            self.0 = 0x9e37_79b9_7f4a_7c15;
        }
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Input<'a> {
    flags: u8,
    phys_bits: u8,
    mem_size: usize,
    callbacks: Callbacks,
    full_range: bool,
    skip_p: u64,
    err_p: u64,
    cr3: u64,
    start: u64,
    len_minus_one: u64,
    seed: u64,
    data: &'a [u8],
}

fn parse(bytes: &[u8]) -> Input<'_> {
    let mut hdr = [0u8; 38];
    let n = bytes.len().min(hdr.len());
    hdr[..n].copy_from_slice(&bytes[..n]);
    let u64_at = |i: usize| u64::from_le_bytes(hdr[i..i + 8].try_into().unwrap());
    Input {
        flags: hdr[0],
        phys_bits: 36 + hdr[1] % 17,
        mem_size: (64 << 10) << (hdr[2] % 5),
        callbacks: Callbacks::from_bits_truncate(hdr[3] & 0x1f),
        full_range: hdr[3] & 0x20 != 0,
        skip_p: u64::from(hdr[4]) << 8,
        err_p: u64::from(hdr[5]),
        cr3: u64_at(6),
        start: u64_at(14),
        len_minus_one: u64_at(22),
        seed: u64_at(30),
        data: &bytes[n..],
    }
}

fn guest_memory(input: &Input<'_>) -> (GuestMemoryMmap, Vec<u8>) {
    let mut image = vec![0u8; input.mem_size];
    if !input.data.is_empty() {
        if input.flags & 0x10 != 0 {
            for (dst, src) in image.iter_mut().zip(input.data.iter().cycle()) {
                *dst = *src;
            }
        } else {
            let n = input.data.len().min(image.len());
            image[..n].copy_from_slice(&input.data[..n]);
        }
    }
    if input.flags & 0x20 != 0 {
        let mask = input.mem_size as u64 - 1;
        for word in image.chunks_exact_mut(8) {
            let w = u64::from_le_bytes(word.try_into().unwrap());
            if w & 0x800 == 0 {
                let folded = (w & !ADDR_BITS) | (w & ADDR_BITS & mask);
                word.copy_from_slice(&folded.to_le_bytes());
            }
        }
    }
    // Optionally end memory in the middle of the last page, so a table can straddle it.
    let size = if input.flags & 0x80 != 0 {
        input.mem_size - 0x800
    } else {
        input.mem_size
    };
    image.truncate(size);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
    mem.write_slice(&image, GuestAddress(0)).unwrap();
    (mem, image)
}

fn context(input: &Input<'_>) -> Option<PagingContext> {
    let f = input.flags;
    let cr3 = if f & 0x40 != 0 {
        (input.cr3 & !ADDR_BITS) | (input.cr3 & ADDR_BITS & (input.mem_size as u64 - 1))
    } else {
        input.cr3
    };
    let regs = ControlRegisters {
        cr0: CR0_PG | CR0_WP | 1,
        cr3,
        cr4: CR4_PAE | if f & 1 != 0 { CR4_LA57 } else { 0 } | if f & 8 != 0 { CR4_PKE } else { 0 },
        efer: EFER_LME | EFER_LMA | if f & 2 != 0 { EFER_NXE } else { 0 },
    };
    Some(
        PagingContext::new(regs)
            .ok()?
            .with_phys_addr_bits(input.phys_bits)
            .ok()?
            .with_gbpages(f & 4 != 0),
    )
}

fn width(ctx: &PagingContext) -> u32 {
    ctx.mode().va_bits()
}

fn span(level: Level) -> u64 {
    level.entry_span()
}

/// What translate must say about an address found in a hole or a fault of a walk.
#[derive(Debug, Clone, Copy)]
enum Expect {
    NotPresent(Level),
    Fault(Level, FaultKind),
}

fn check_expectation(mem: &GuestMemoryMmap, ctx: &PagingContext, va: Gva, expect: Expect) {
    let t = translate(mem, ctx, va);
    match (expect, t) {
        (Expect::NotPresent(l), Err(TranslateError::NotPresent { level, .. })) => {
            assert_eq!(l, level, "hole at {va}")
        }
        (
            Expect::Fault(l, FaultKind::ReservedBits(b)),
            Err(TranslateError::ReservedBits { level, bits, .. }),
        ) => {
            assert_eq!((l, b), (level, bits), "reserved-bit fault at {va}")
        }
        (
            Expect::Fault(l, FaultKind::OutsideMemory(a)),
            Err(TranslateError::OutsideMemory { level, table, .. }),
        ) => {
            assert_eq!((l, a), (level, table), "outside-memory fault at {va}")
        }
        (e, t) => panic!("walk saw {e:?} at {va}, translate says {t:?}"),
    }
}

/// Checks a leaf against translate: `va` inside the leaf maps to `pa + offset`.
fn check_leaf(
    mem: &GuestMemoryMmap,
    ctx: &PagingContext,
    va: Gva,
    gpa: u64,
    effective: walker::Access,
) {
    let t =
        translate(mem, ctx, va).unwrap_or_else(|e| panic!("leaf at {va} does not translate: {e}"));
    assert_eq!(t.gpa.0, gpa, "translate({va})");
    assert_eq!(t.effective, effective, "rights of {va}");
}

struct Fuzzer<'a> {
    mem: &'a GuestMemoryMmap,
    ctx: &'a PagingContext,
    callbacks: Callbacks,
    rng: Rng,
    skip_p: u64,
    err_p: u64,
    first: Gva,
    last: Gva,
    /// Start of the previous visit, and the end of the last range finished.
    prev_start: Option<Gva>,
    done_until: Option<Gva>,
    /// The callback that returned an error, if one did.
    error_at: Option<(Gva, Level)>,
    faults: u64,
    /// Previous shadow PTE: (va, frame, flags).
    prev_shadow: Option<(u64, u64, u64)>,
    checks: usize,
}

impl Fuzzer<'_> {
    fn check_visit(&mut self, v: &Visit<'_>, whole_range: bool) {
        let w = width(self.ctx);
        assert!(v.start.is_canonical(w) && v.last.is_canonical(w), "{v:?}");
        assert!(
            self.first <= v.start && v.start <= v.last && v.last <= self.last,
            "{v:?}"
        );
        if !whole_range {
            assert_eq!(
                v.start.align_down(span(v.level)),
                v.last.align_down(span(v.level)),
                "{v:?}"
            );
        }
        if let Some(p) = self.prev_start {
            assert!(p <= v.start, "visit at {} after {p}", v.start);
        }
        if let Some(d) = self.done_until {
            assert!(
                d < v.start,
                "visit at {} inside a finished range ending {d}",
                v.start
            );
        }
        self.prev_start = Some(v.start);
    }

    fn finish(&mut self, last: Gva) {
        self.done_until = Some(last);
    }

    fn answer(&mut self, v: &Visit<'_>) -> Result<Action, ()> {
        self.check_visit(v, false);
        if v.is_shadow() && v.is_leaf() {
            // A shadow leaf keeps its huge leaf's offset: frame and VA agree below its span
            // of the split leaf (2 MiB for PTEs, 1 GiB for PMDs).
            let parent_span = span(v.level) << 9;
            let frame = v.entry.address(v.level).0;
            let va = v.entry_start().0;
            assert_eq!(
                frame & (parent_span - 1),
                va & (parent_span - 1),
                "shadow {v:?}"
            );
            if v.level == Level::Pte {
                let flags = v.entry.raw() & !ADDR_BITS;
                if let Some((pva, pframe, pflags)) = self.prev_shadow
                    && pva >> 21 == va >> 21
                {
                    assert_eq!(
                        frame.wrapping_sub(pframe),
                        va.wrapping_sub(pva),
                        "shadow frames"
                    );
                    assert_eq!(flags, pflags, "shadow flags");
                }
                self.prev_shadow = Some((va, frame, flags));
            }
        }
        if v.is_leaf() && self.checks < SAMPLES && self.rng.next() % 4 == 0 {
            self.checks += 1;
            let gpa = v.physical(v.start).unwrap().0;
            check_leaf(self.mem, self.ctx, v.start, gpa, v.effective);
        }
        let r = self.rng.next() & 0xffff;
        if r < self.err_p {
            self.error_at = Some((v.start, v.level));
            return Err(());
        }
        if r < self.err_p + self.skip_p || v.level == Level::Pte {
            self.finish(v.last);
            return Ok(Action::Skip);
        }
        Ok(Action::Descend)
    }
}

impl Fuzzer<'_> {
    fn pml5_entry(&mut self, v: &Visit<'_>) -> Result<Action, ()> {
        self.answer(v)
    }
    fn pml4_entry(&mut self, v: &Visit<'_>) -> Result<Action, ()> {
        self.answer(v)
    }
    fn pud_entry(&mut self, v: &Visit<'_>) -> Result<Action, ()> {
        self.answer(v)
    }
    fn pmd_entry(&mut self, v: &Visit<'_>) -> Result<Action, ()> {
        self.answer(v)
    }
    fn pte_entry(&mut self, v: &Visit<'_>) -> Result<Action, ()> {
        self.answer(v)
    }
}

impl Visitor for Fuzzer<'_> {
    type Error = ();
    const PML5_ENTRY: Option<EntryFn<Self>> = Some(Self::pml5_entry);
    const PML4_ENTRY: Option<EntryFn<Self>> = Some(Self::pml4_entry);
    const PUD_ENTRY: Option<EntryFn<Self>> = Some(Self::pud_entry);
    const PMD_ENTRY: Option<EntryFn<Self>> = Some(Self::pmd_entry);
    const PTE_ENTRY: Option<EntryFn<Self>> = Some(Self::pte_entry);

    fn enabled(&self) -> Callbacks {
        self.callbacks
    }

    fn hole(&mut self, start: Gva, last: Gva, depth: Level) -> Result<(), ()> {
        let w = width(self.ctx);
        assert!(start.is_canonical(w) && last.is_canonical(w));
        assert!(
            self.first <= start && start <= last && last <= self.last,
            "hole {start}..={last}"
        );
        assert_eq!(start.align_down(span(depth)), last.align_down(span(depth)));
        if let Some(d) = self.done_until {
            assert!(
                d < start,
                "hole at {start} inside a finished range ending {d}"
            );
        }
        self.prev_start = Some(start);
        self.finish(last);
        if self.checks < SAMPLES && self.rng.next() % 4 == 0 {
            self.checks += 1;
            check_expectation(self.mem, self.ctx, start, Expect::NotPresent(depth));
        }
        if self.rng.next() & 0xffff < self.err_p {
            self.error_at = Some((start, depth));
            return Err(());
        }
        Ok(())
    }

    fn fault(&mut self, f: &Fault<'_>) -> Result<(), ()> {
        let v = f.visit;
        // A root outside memory is reported once, as a root-level fault covering the whole
        // range (which may span several root entries).
        let root_fault = self.prev_start.is_none()
            && v.level == self.ctx.mode().root_level()
            && f.kind == FaultKind::OutsideMemory(self.ctx.root());
        self.check_visit(&v, root_fault);
        self.finish(v.last);
        self.faults += 1;
        if self.checks < SAMPLES && self.rng.next() % 4 == 0 {
            self.checks += 1;
            check_expectation(self.mem, self.ctx, v.start, Expect::Fault(v.level, f.kind));
        }
        if self.rng.next() & 0xffff < self.err_p {
            self.error_at = Some((v.start, v.level));
            return Err(());
        }
        Ok(())
    }
}

/// Runs a mapping walk and checks its leaves; returns them if the walk finished.
fn check_mappings(
    mem: &GuestMemoryMmap,
    ctx: &PagingContext,
    first: Gva,
    last: Gva,
    granularity: Granularity,
    rng: &mut Rng,
) -> Option<Vec<Mapping>> {
    let mut out = Vec::new();
    let result = for_each_mapping(
        mem,
        ctx,
        first..=last,
        granularity,
        WalkOptions {
            entry_budget: BUDGET,
        },
        |m| {
            out.push(m);
            Ok::<(), ()>(())
        },
    );
    let mut prev_last: Option<Gva> = None;
    let mut prev_shadow: Option<(u64, u64)> = None;
    for m in &out {
        let (va, lst) = match m {
            Mapping::Leaf(l) => (l.va, l.last()),
            Mapping::Bad(b) => (b.va, Gva(b.va.0.wrapping_add(span(b.level) - 1))),
        };
        if let Some(p) = prev_last {
            assert!(
                p < va,
                "{granularity:?}: {m:?} overlaps the previous mapping ending {p}"
            );
        }
        prev_last = Some(lst);
        // Reported whole, but intersecting the range.
        assert!(va <= last && lst >= first, "{m:?} outside {first}..={last}");
        if let Mapping::Leaf(l) = m {
            assert_eq!(l.va.0 & (l.size.bytes() - 1), 0);
            assert_eq!(l.pa.0 & (l.size.bytes() - 1), 0);
            if granularity == Granularity::Split4K {
                assert_eq!(l.size, PageSize::Size4K);
            }
            if l.is_shadow() {
                if let Some((pva, ppa)) = prev_shadow
                    && pva >> 21 == l.va.0 >> 21
                {
                    assert_eq!(l.pa.0.wrapping_sub(ppa), l.va.0.wrapping_sub(pva), "{l:?}");
                }
                prev_shadow = Some((l.va.0, l.pa.0));
            }
        }
    }
    for _ in 0..SAMPLES.min(out.len()) {
        let m = out[(rng.next() % out.len() as u64) as usize];
        match m {
            Mapping::Leaf(l) => {
                let off = rng.next() % l.size.bytes();
                check_leaf(mem, ctx, Gva(l.va.0 + off), l.pa.0 + off, l.effective);
                let t = translate(mem, ctx, l.va).unwrap();
                if l.is_shadow() {
                    assert_ne!(t.size, PageSize::Size4K);
                } else {
                    assert_eq!(t.size, l.size);
                    assert_eq!(t.entry, l.entry);
                }
            }
            Mapping::Bad(b) => {
                check_expectation(mem, ctx, b.va, Expect::Fault(b.level, b.kind));
            }
        }
    }
    match result {
        Ok(stats) => {
            assert!(stats.entries_read <= BUDGET);
            Some(out)
        }
        Err(WalkError::BudgetExhausted { .. }) => None,
        Err(e) => panic!("the sink never fails: {e:?}"),
    }
}

/// `for_each_leaf` gives the leaves of `for_each_mapping`, with the same statistics and
/// the same error, at both granularities.
fn check_leaves(mem: &GuestMemoryMmap, ctx: &PagingContext, first: Gva, last: Gva) {
    for granularity in [Granularity::AsMapped, Granularity::Split4K] {
        let options = WalkOptions {
            entry_budget: BUDGET,
        };
        let mut mapped = Vec::new();
        let want = for_each_mapping(mem, ctx, first..=last, granularity, options, |m| {
            if let Mapping::Leaf(l) = m {
                mapped.push(l);
            }
            Ok::<(), ()>(())
        });
        let mut leaves = Vec::new();
        let got = for_each_leaf(mem, ctx, first..=last, granularity, options, |l| {
            leaves.push(l);
            Ok::<(), ()>(())
        });
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{granularity:?}");
        assert_eq!(leaves, mapped, "{granularity:?}");
    }
}

/// `translate_many` answers what `translate` answers, address by address.
fn check_translate_many(mem: &GuestMemoryMmap, ctx: &PagingContext, gvas: &[Gva]) {
    let many = translate_many(mem, ctx, gvas);
    assert_eq!(many.len(), gvas.len());
    for (gva, got) in gvas.iter().zip(&many) {
        assert_eq!(*got, translate(mem, ctx, *gva), "translate_many at {gva}");
    }
}

/// Bytes of `[first, last]` mapped by leaves, and the bad entries, of a finished mapping walk.
fn coverage(maps: &[Mapping], first: Gva, last: Gva) -> (u64, Vec<(Gva, Level)>) {
    let mut bytes = 0u64;
    let mut bad = Vec::new();
    for m in maps {
        match m {
            Mapping::Leaf(l) => {
                let (a, b) = (l.va.max(first), l.last().min(last));
                bytes = bytes.wrapping_add(b.0 - a.0 + 1);
            }
            Mapping::Bad(b) => bad.push((b.va, b.level)),
        }
    }
    (bytes, bad)
}

/// `translate` agrees with a mapping walk of the one address.
fn check_translate(mem: &GuestMemoryMmap, ctx: &PagingContext, va: Gva) {
    let t = translate(mem, ctx, va);
    assert_eq!(t, translate(mem, ctx, va), "translate is deterministic");
    let w = width(ctx);
    if !va.is_canonical(w) {
        assert_eq!(t, Err(TranslateError::NonCanonical(va)));
        return;
    }
    let mut maps = Vec::new();
    let r = for_each_mapping(
        mem,
        ctx,
        va..=va,
        Granularity::AsMapped,
        WalkOptions::default(),
        |m| {
            maps.push(m);
            Ok::<(), ()>(())
        },
    );
    let stats = r.unwrap();
    // One entry per level at most.
    assert!(stats.entries_read <= 5, "{stats:?}");
    match t {
        Ok(t) => {
            assert_eq!(t.gpa.0 & (t.size.bytes() - 1), va.0 & (t.size.bytes() - 1));
            let [Mapping::Leaf(l)] = maps[..] else {
                panic!("translate({va}) = {t:?} but the walk found {maps:?}");
            };
            assert_eq!(l.pa.0 + (va.0 - l.va.0), t.gpa.0);
            assert_eq!(
                (l.size, l.effective, l.entry),
                (t.size, t.effective, t.entry)
            );
        }
        Err(TranslateError::NotPresent { .. }) => assert!(maps.is_empty(), "{va}: {maps:?}"),
        Err(TranslateError::ReservedBits { level, bits, .. }) => {
            let [Mapping::Bad(b)] = maps[..] else {
                panic!("translate({va}) = {t:?} but the walk found {maps:?}");
            };
            assert_eq!((b.level, b.kind), (level, FaultKind::ReservedBits(bits)));
        }
        Err(TranslateError::OutsideMemory { level, table, .. }) => {
            let [Mapping::Bad(b)] = maps[..] else {
                panic!("translate({va}) = {t:?} but the walk found {maps:?}");
            };
            assert_eq!((b.level, b.kind), (level, FaultKind::OutsideMemory(table)));
        }
        Err(TranslateError::NonCanonical(_)) => panic!("{va} is canonical"),
    }
}

fn run(bytes: &[u8]) {
    let input = parse(bytes);
    let Some(ctx) = context(&input) else {
        return;
    };
    let (mem, image) = guest_memory(&input);
    let (first, last) = if input.full_range {
        (Gva(0), Gva(u64::MAX))
    } else {
        // Lengths of every magnitude: the top 6 bits shift the rest.
        let raw = input.len_minus_one;
        let len_minus_one = (raw & ((1 << 58) - 1)) >> (raw >> 58);
        (
            Gva(input.start),
            Gva(input.start.saturating_add(len_minus_one)),
        )
    };
    let mut rng = Rng(input.seed);

    let mut f = Fuzzer {
        mem: &mem,
        ctx: &ctx,
        callbacks: input.callbacks,
        rng: Rng(rng.next()),
        skip_p: input.skip_p,
        err_p: input.err_p,
        first,
        last,
        prev_start: None,
        done_until: None,
        error_at: None,
        faults: 0,
        prev_shadow: None,
        checks: 0,
    };
    let result = walk_with(
        &mem,
        &ctx,
        first..=last,
        &mut f,
        WalkOptions {
            entry_budget: BUDGET,
        },
    );
    match result {
        Ok(stats) => {
            assert_eq!(f.error_at, None);
            assert!(stats.entries_read <= BUDGET);
            assert_eq!(stats.faults, f.faults);
        }
        Err(WalkError::Callback { va, level, .. }) => {
            assert_eq!(f.error_at, Some((va, level)), "the error's position");
        }
        Err(WalkError::BudgetExhausted { limit, level, .. }) => {
            assert_eq!(f.error_at, None);
            assert_eq!(limit, BUDGET);
            let _ = level;
        }
    }

    check_leaves(&mem, &ctx, first, last);
    let as_mapped = check_mappings(&mem, &ctx, first, last, Granularity::AsMapped, &mut rng);
    let split = check_mappings(&mem, &ctx, first, last, Granularity::Split4K, &mut rng);
    if let (Some(a), Some(s)) = (as_mapped, split) {
        assert_eq!(
            coverage(&a, first, last),
            coverage(&s, first, last),
            "both granularities cover the same bytes"
        );
    }

    for _ in 0..4 {
        let r = rng.next();
        let va = match r % 4 {
            0 => r,
            1 => first.0.wrapping_add(r >> 20),
            _ => first.0 & !0xfff | (r & 0xfff),
        };
        check_translate(&mem, &ctx, Gva(va));
    }
    check_translate(&mem, &ctx, first);
    check_translate(&mem, &ctx, last);

    // A batch: the range's ends and neighbours, random addresses, repeats.
    let mut batch = vec![
        first,
        last,
        Gva(first.0.wrapping_add(0x1000)),
        Gva(last.0.wrapping_sub(0x20_0000)),
    ];
    for _ in 0..24 {
        let r = rng.next();
        batch.push(match r % 4 {
            0 => Gva(r),
            1 => Gva(first.0.wrapping_add(r >> 24)),
            2 => batch[(r >> 8) as usize % batch.len()],
            _ => Gva(first.0 & !0x1f_ffff | (r & 0x1f_ffff)),
        });
    }
    check_translate_many(&mem, &ctx, &batch);

    let mut after = vec![0u8; image.len()];
    mem.read_slice(&mut after, GuestAddress(0)).unwrap();
    assert!(after == image, "guest memory changed");
}

fuzz_target!(|data: &[u8]| run(data));
