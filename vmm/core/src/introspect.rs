//! Printing an address space: the output of `vmm walk`, `vmm inspect` and `vmm translate`.
//!
//! The same code serves a live guest (its RAM, paused) and a memory file: both are a
//! `GuestMemoryBackend` and a set of control registers.
//!
//! Formats:
//! - `text`: merged ranges, like QEMU's `info mem`: `start-end size perms`, where perms is
//!   `u`/`-` (user), `r`, `w`/`-` (writable), `x`/`-` (executable), effective across levels.
//! - `tlb`: one line per leaf, exactly as QEMU's `info tlb` prints it: `VA: PA XGPDACTUW`, each
//!   letter the leaf entry's own bit ([`walker::tlb_flags`]).
//! - `json`: one JSON object per line (see the README for the schema).

use std::io::{self, Write};
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;
use vm_memory::GuestMemoryBackend;
use walker::{
    BadEntry, FaultKind, Granularity, Gva, Leaf, Mapping, PagingContext, RangeMerger,
    TranslateError, Translation, WalkError, WalkOptions, WalkStats, for_each_mapping, tlb_flags,
};

/// Output format of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Merged ranges (QEMU `info mem`).
    #[default]
    Text,
    /// One line per leaf (QEMU `info tlb`).
    Tlb,
    /// One JSON object per line.
    Json,
}

named_choices!(Format {
    Text => "text", "merged ranges (QEMU info mem)";
    Tlb => "tlb", "one line per leaf (QEMU info tlb)";
    Json => "json", "one JSON object per line";
});

/// Why an address range argument is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RangeParseError {
    /// No `-` between start and end.
    #[error("range {0:?} is not START-END (hex addresses; END may be empty for the top)")]
    Shape(String),
    /// A bound is not a hex number.
    #[error("range bound {0:?} is not a hexadecimal address")]
    Number(String),
    /// END is not above START.
    #[error("range {0:?} is empty: END must be above START")]
    Empty(String),
}

/// A virtual-address range from the command line: `START-END`, hex, END exclusive; an empty
/// END means the top of the address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaRange(pub RangeInclusive<Gva>);

impl Default for VaRange {
    fn default() -> Self {
        VaRange(Gva(0)..=Gva(u64::MAX))
    }
}

/// Parses a hex address with or without `0x`, allowing `_` separators.
pub fn parse_hex(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    // `_` separates groups of four hex digits (`ffff_8880_0000_0000`), nothing else:
    // `1_000` looks decimal and is refused rather than read as 0x1000.
    let groups: Vec<&str> = t.split('_').collect();
    let grouped = groups.len() == 1
        || (groups[0].len() <= 4
            && !groups[0].is_empty()
            && groups[1..].iter().all(|g| g.len() == 4));
    let t: String = groups.concat();
    if t.is_empty() || !grouped || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&t, 16).ok()
}

impl FromStr for VaRange {
    type Err = RangeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| RangeParseError::Shape(s.to_owned()))?;
        let start = parse_hex(a).ok_or_else(|| RangeParseError::Number(a.to_owned()))?;
        let last = if b.trim().is_empty() {
            u64::MAX
        } else {
            let end = parse_hex(b).ok_or_else(|| RangeParseError::Number(b.to_owned()))?;
            if end <= start {
                return Err(RangeParseError::Empty(s.to_owned()));
            }
            end - 1
        };
        Ok(VaRange(Gva(start)..=Gva(last)))
    }
}

/// What a printed walk found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Leaves printed (or merged).
    pub leaves: u64,
    /// Malformed entries.
    pub bad: u64,
    /// The walk's own counters.
    pub stats: WalkStats,
}

/// Why printing a walk failed.
#[derive(Debug, Error)]
pub enum PrintError {
    /// Writing the output failed.
    #[error("cannot write the walk output: {0}")]
    Io(#[from] io::Error),
    /// The walk exceeded its budget.
    #[error("{0}")]
    Budget(String),
}

impl From<WalkError<io::Error>> for PrintError {
    fn from(e: WalkError<io::Error>) -> Self {
        match e {
            WalkError::Callback { error, .. } => PrintError::Io(error),
            budget @ WalkError::BudgetExhausted { .. } => PrintError::Budget(budget.to_string()),
        }
    }
}

#[derive(Serialize)]
struct JsonLeaf<'a> {
    kind: &'static str,
    cr3: &'a str,
    va: String,
    pa: String,
    size: u64,
    level: &'static str,
    writable: bool,
    user: bool,
    nx: bool,
    global: bool,
    accessed: bool,
    dirty: bool,
    pat: bool,
    pkey: u8,
    shadow: bool,
}

#[derive(Serialize)]
struct JsonBad<'a> {
    kind: &'static str,
    cr3: &'a str,
    va: String,
    level: &'static str,
    reason: &'static str,
    entry: String,
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// The JSON line of a leaf.
pub fn leaf_json(leaf: &Leaf, cr3: &str) -> String {
    let j = JsonLeaf {
        kind: "leaf",
        cr3,
        va: hex(leaf.va.0),
        pa: hex(leaf.pa.0),
        size: leaf.size.bytes(),
        level: leaf.level().name(),
        writable: leaf.effective.writable,
        user: leaf.effective.user,
        nx: leaf.effective.nx,
        global: leaf.global,
        accessed: leaf.accessed,
        dirty: leaf.dirty,
        pat: leaf.memory_type.pat(),
        pkey: leaf.pkey,
        shadow: leaf.is_shadow(),
    };
    serde_json::to_string(&j).unwrap_or_default()
}

/// The JSON line of a malformed entry.
pub fn bad_json(bad: &BadEntry, cr3: &str) -> String {
    let j = JsonBad {
        kind: "bad",
        cr3,
        va: hex(bad.va.0),
        level: bad.level.name(),
        reason: match bad.kind {
            FaultKind::ReservedBits(_) => "reserved-bit",
            FaultKind::OutsideMemory(_) => "outside-memory",
        },
        entry: hex(bad.entry.0),
    };
    serde_json::to_string(&j).unwrap_or_default()
}

fn perms(e: walker::Access) -> String {
    format!(
        "{}r{}{}",
        if e.user { 'u' } else { '-' },
        if e.writable { 'w' } else { '-' },
        if e.nx { '-' } else { 'x' }
    )
}

fn range_line(r: &walker::MappedRange) -> String {
    format!(
        "{:016x}-{:016x} {:016x} {}",
        r.start.0,
        r.last.0.wrapping_add(1),
        r.len(),
        perms(r.effective)
    )
}

fn bad_line(b: &BadEntry) -> String {
    format!(
        "{:016x}: bad {} entry {:#018x}: {}",
        b.va.0, b.level, b.entry.0, b.kind
    )
}

/// The line that heads a walk of `ctx` (the text format prints it first; `vmm walk`
/// prints it on stderr for the other formats): `# address space of LABEL: CR3 ...,
/// MODE paging`.
pub fn address_space_header(label: &str, ctx: &PagingContext) -> String {
    format!(
        "# address space of {label}: CR3 {:#x}, {:?} paging",
        ctx.registers().cr3,
        ctx.mode()
    )
}

/// Walks `ctx` over `range` and prints every mapping in `format` to `out`.
pub fn print_walk<M: GuestMemoryBackend, W: Write>(
    mem: &M,
    ctx: &PagingContext,
    range: &VaRange,
    granularity: Granularity,
    format: Format,
    options: WalkOptions,
    out: &mut W,
) -> Result<Summary, PrintError> {
    let cr3 = hex(ctx.registers().cr3);
    let mut summary = Summary::default();
    let mut merger = RangeMerger::new();
    let stats = for_each_mapping(
        mem,
        ctx,
        range.0.clone(),
        granularity,
        options,
        |m| -> io::Result<()> {
            match (m, format) {
                (Mapping::Leaf(leaf), Format::Text) => {
                    summary.leaves += 1;
                    if let Some(done) = merger.push(&leaf) {
                        writeln!(out, "{}", range_line(&done))?;
                    }
                }
                (Mapping::Leaf(leaf), Format::Tlb) => {
                    summary.leaves += 1;
                    writeln!(
                        out,
                        "{:016x}: {:016x} {}",
                        leaf.va.0,
                        leaf.pa.0,
                        tlb_flags(&leaf)
                    )?;
                }
                (Mapping::Leaf(leaf), Format::Json) => {
                    summary.leaves += 1;
                    writeln!(out, "{}", leaf_json(&leaf, &cr3))?;
                }
                (Mapping::Bad(bad), Format::Json) => {
                    summary.bad += 1;
                    writeln!(out, "{}", bad_json(&bad, &cr3))?;
                }
                (Mapping::Bad(bad), _) => {
                    summary.bad += 1;
                    writeln!(out, "{}", bad_line(&bad))?;
                }
            }
            Ok(())
        },
    )?;
    if let Some(last) = merger.finish() {
        writeln!(out, "{}", range_line(&last))?;
    }
    summary.stats = stats;
    Ok(summary)
}

/// CR4.SMAP: supervisor accesses to user pages fault.
pub const CR4_SMAP: u64 = 1 << 21;
/// RFLAGS.AC: with SMAP, explicit supervisor accesses to user pages are allowed.
pub const RFLAGS_AC: u64 = 1 << 18;

/// How the walker's translation compares with `KVM_TRANSLATE`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OracleVerdict {
    /// Same answer.
    Agrees,
    /// The walker maps a user page that KVM_TRANSLATE calls invalid, as it must: KVM
    /// translates as a supervisor data read, which SMAP forbids on user pages (CR4.SMAP
    /// set, RFLAGS.AC clear, as in a Linux kernel).
    SmapHidesUserPage,
    /// Different answers.
    Disagrees,
}

/// Compares the walker's translation of one address with `KVM_TRANSLATE`'s (`kvm_valid`,
/// `kvm_gpa`), given the vCPU's CR4 and RFLAGS.
pub fn oracle_verdict(
    ours: &Result<Translation, TranslateError>,
    kvm_valid: bool,
    kvm_gpa: u64,
    cr4: u64,
    rflags: u64,
) -> OracleVerdict {
    match ours {
        Ok(t) if kvm_valid && kvm_gpa == t.gpa.0 => OracleVerdict::Agrees,
        Ok(t)
            if !kvm_valid && t.effective.user && cr4 & CR4_SMAP != 0 && rflags & RFLAGS_AC == 0 =>
        {
            OracleVerdict::SmapHidesUserPage
        }
        Err(_) if !kvm_valid => OracleVerdict::Agrees,
        _ => OracleVerdict::Disagrees,
    }
}

/// One line describing a translation (or why there is none).
pub fn translation_line(
    gva: Gva,
    result: &Result<Translation, TranslateError>,
    format: Format,
) -> String {
    let mut line = String::new();
    match format {
        Format::Json => push_translation_json(&mut line, gva, result),
        _ => push_translation_text(&mut line, gva, result),
    }
    line
}

/// Appends the text line of a translation (no newline): `VA -> PA SIZE PERMS memtype N`
/// or `VA -> fault: REASON`.
pub fn push_translation_text(
    out: &mut String,
    gva: Gva,
    result: &Result<Translation, TranslateError>,
) {
    use std::fmt::Write as _;
    let _ = match result {
        Ok(t) => write!(
            out,
            "{:016x} -> {:016x} {} {} memtype {}",
            gva.0,
            t.gpa.0,
            t.size,
            perms(t.effective),
            t.memory_type.0
        ),
        Err(e) => write!(out, "{:016x} -> fault: {e}", gva.0),
    };
}

/// Appends the JSON object of a translation (no newline): `kind` `translation` (`va`,
/// `pa`, `size`, `level`, `writable`, `user`, `nx`, `memory_type`) or `fault` (`va`,
/// `reason`, and `level` when an entry stopped it). Written directly, not through a
/// JSON value: a batch of a million addresses spends its time here.
pub fn push_translation_json(
    out: &mut String,
    gva: Gva,
    result: &Result<Translation, TranslateError>,
) {
    use std::fmt::Write as _;
    let _ = match result {
        Ok(t) => write!(
            out,
            r#"{{"kind":"translation","va":"{:#x}","pa":"{:#x}","size":{},"level":"{}","writable":{},"user":{},"nx":{},"memory_type":{}}}"#,
            gva.0,
            t.gpa.0,
            t.size.bytes(),
            t.size.level().name(),
            t.effective.writable,
            t.effective.user,
            t.effective.nx,
            t.memory_type.0
        ),
        Err(e) => {
            let _ = write!(out, r#"{{"kind":"fault","va":"{:#x}","reason":"#, gva.0);
            // The reason is a sentence: serde_json escapes it.
            let _ = write!(out, "{}", serde_json::Value::String(e.to_string()));
            match e.level() {
                Some(level) => write!(out, r#","level":"{}"}}"#, level.name()),
                None => write!(out, "}}"),
            }
        }
    };
}

/// What `vmm translate` appends to a text line: KVM's answer and how it compares, e.g.
/// ` (KVM_TRANSLATE: 0x1000, agrees)`.
pub fn kvm_comparison_text(verdict: OracleVerdict, kvm_valid: bool, kvm_gpa: u64) -> String {
    let kvm = if kvm_valid {
        format!("{kvm_gpa:#x}")
    } else {
        "invalid".to_owned()
    };
    format!(" (KVM_TRANSLATE: {kvm}, {})", verdict.words())
}

impl OracleVerdict {
    /// How `vmm translate` says it.
    pub fn words(self) -> &'static str {
        match self {
            OracleVerdict::Agrees => "agrees",
            OracleVerdict::SmapHidesUserPage => {
                "agrees: a user page, which CR4.SMAP hides from its supervisor read"
            }
            OracleVerdict::Disagrees => "DISAGREES",
        }
    }

    /// Its JSON name: `agrees`, `smap_hides_user_page`, `disagrees`.
    pub fn json_name(self) -> &'static str {
        match self {
            OracleVerdict::Agrees => "agrees",
            OracleVerdict::SmapHidesUserPage => "smap_hides_user_page",
            OracleVerdict::Disagrees => "disagrees",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use walker::ControlRegisters;

    #[test]
    fn smap_explains_invalid_kvm_translations_of_user_pages() {
        let page = |user| {
            Ok(Translation {
                gva: Gva(0x40_0000),
                gpa: GuestAddress(0x1fc0_0000),
                size: walker::PageSize::Size4K,
                effective: walker::Access {
                    writable: false,
                    user,
                    nx: false,
                },
                memory_type: walker::MemoryType(0),
                entry: walker::Entry(0x1fc0_0005),
            })
        };
        let smap = CR4_SMAP;
        let v = |ours, valid, gpa, cr4, rflags| oracle_verdict(&ours, valid, gpa, cr4, rflags);
        assert_eq!(
            v(page(true), true, 0x1fc0_0000, 0, 2),
            OracleVerdict::Agrees
        );
        assert_eq!(v(page(true), true, 0x1000, 0, 2), OracleVerdict::Disagrees);
        assert_eq!(
            v(page(true), false, 0, smap, 2),
            OracleVerdict::SmapHidesUserPage
        );
        // Without SMAP, with RFLAGS.AC, or on a supervisor page: a real disagreement.
        assert_eq!(v(page(true), false, 0, 0, 2), OracleVerdict::Disagrees);
        assert_eq!(
            v(page(true), false, 0, smap, 2 | RFLAGS_AC),
            OracleVerdict::Disagrees
        );
        assert_eq!(v(page(false), false, 0, smap, 2), OracleVerdict::Disagrees);
        let hole = Err(TranslateError::NonCanonical(Gva(1 << 63)));
        assert_eq!(v(hole, false, 0, smap, 2), OracleVerdict::Agrees);
        let hole = Err(TranslateError::NonCanonical(Gva(1 << 63)));
        assert_eq!(v(hole, true, 0, smap, 2), OracleVerdict::Disagrees);
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(
            "0x1000-0x2000".parse::<VaRange>().unwrap(),
            VaRange(Gva(0x1000)..=Gva(0x1fff))
        );
        assert_eq!(
            "ffff800000000000-".parse::<VaRange>().unwrap(),
            VaRange(Gva(0xffff_8000_0000_0000)..=Gva(u64::MAX))
        );
        assert!(matches!(
            "0x10".parse::<VaRange>(),
            Err(RangeParseError::Shape(_))
        ));
        assert!(matches!(
            "zz-0x10".parse::<VaRange>(),
            Err(RangeParseError::Number(_))
        ));
        assert!(matches!(
            "0x10-0x10".parse::<VaRange>(),
            Err(RangeParseError::Empty(_))
        ));
    }

    fn guest() -> (GuestMemoryMmap, PagingContext) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (pml4, pud, pmd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        mem.write_obj(pud | 7, GuestAddress(pml4)).unwrap();
        mem.write_obj(pmd | 7, GuestAddress(pud)).unwrap();
        mem.write_obj(pt | 7, GuestAddress(pmd)).unwrap();
        mem.write_obj(0x20_0000u64 | 0x83 | (1 << 63), GuestAddress(pmd + 8))
            .unwrap();
        mem.write_obj(0x9000u64 | 0x67, GuestAddress(pt + 16))
            .unwrap();
        mem.write_obj(0xa000u64 | 0x05, GuestAddress(pt + 24))
            .unwrap();
        // Reserved bit 51 in a PTE.
        mem.write_obj((1u64 << 51) | 0xb000 | 1, GuestAddress(pt + 32))
            .unwrap();
        let ctx = PagingContext::new(ControlRegisters::long_mode(pml4))
            .unwrap()
            .with_phys_addr_bits(46)
            .unwrap();
        (mem, ctx)
    }

    #[test]
    fn text_tlb_and_json() {
        let (mem, ctx) = guest();
        let all = VaRange::default();
        let mut out = Vec::new();
        let s = print_walk(
            &mem,
            &ctx,
            &all,
            Granularity::AsMapped,
            Format::Text,
            WalkOptions::default(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!((s.leaves, s.bad), (3, 1));
        assert!(
            text.contains("0000000000002000-0000000000003000 0000000000001000 urwx"),
            "{text}"
        );
        assert!(
            text.contains("0000000000003000-0000000000004000 0000000000001000 ur-x"),
            "{text}"
        );
        assert!(
            text.contains("0000000000200000-0000000000400000 0000000000200000 -rw-"),
            "{text}"
        );
        assert!(text.contains("bad pte entry"), "{text}");

        let mut out = Vec::new();
        print_walk(
            &mem,
            &ctx,
            &all,
            Granularity::AsMapped,
            Format::Tlb,
            WalkOptions::default(),
            &mut out,
        )
        .unwrap();
        let tlb = String::from_utf8(out).unwrap();
        assert!(
            tlb.contains("0000000000002000: 0000000000009000 ---DA--UW"),
            "{tlb}"
        );

        let mut out = Vec::new();
        print_walk(
            &mem,
            &ctx,
            &all,
            Granularity::Split4K,
            Format::Json,
            WalkOptions::default(),
            &mut out,
        )
        .unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2 + 1 + 512);
        let shadow: Vec<_> = lines.iter().filter(|v| v["shadow"] == true).collect();
        assert_eq!(shadow.len(), 512);
        assert_eq!(shadow[1]["pa"], "0x201000");
        assert_eq!(shadow[1]["size"], 4096);
        assert_eq!(shadow[1]["level"], "pte");
        assert_eq!(shadow[1]["nx"], true);
        let bad: Vec<_> = lines.iter().filter(|v| v["kind"] == "bad").collect();
        assert_eq!(bad[0]["reason"], "reserved-bit");
        assert_eq!(bad[0]["va"], "0x4000");
    }
}
