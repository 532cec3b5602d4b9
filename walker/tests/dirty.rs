//! GVA dirty scans: clean huge leaves are skipped unsplit; dirty ones are split and report
//! exactly their dirty pages.

mod support;

use support::*;
use vm_memory::GuestAddress;
use walker::{DirtyBitmap, Granularity, Gva, Mapping, WalkOptions, mappings, scan_dirty};

const ALL: std::ops::RangeInclusive<Gva> = Gva(0)..=Gva(u64::MAX);
const GIB: u64 = 1 << 30;

fn guest() -> Builder {
    let mut b = Builder::small();
    b.map(0x4000_0000, 0x20_0000, 2, W); // 2 MiB
    b.map(0x4020_0000, 0x40_0000, 2, W); // 2 MiB
    b.map(0x80_0000_0000, GIB, 3, W); // 1 GiB
    for i in 0..8 {
        b.map(0x7000_0000 + i * 4096, 0x60_0000 + i * 4096, 1, W);
    }
    // An alias: the same frame as 0x7000_0000.
    b.map(0xffff_8880_0000_0000, 0x60_0000, 1, 0);
    b
}

fn bitmap(pages: &[u64]) -> DirtyBitmap {
    let mut d = DirtyBitmap::new(GuestAddress(0), 2 * GIB);
    for p in pages {
        d.set(GuestAddress(*p));
    }
    d
}

#[test]
fn clean_huge_leaves_are_skipped_unsplit() {
    let b = guest();
    let before = b.hash();
    let scan = scan_dirty(&b.mem, &b.ctx(), ALL, &bitmap(&[]), WalkOptions::default()).unwrap();
    assert!(scan.pages.is_empty());
    assert_eq!((scan.huge_skipped, scan.huge_split), (3, 0));
    assert_eq!((scan.stats.split_2m, scan.stats.split_1g), (0, 0));
    assert_eq!(b.hash(), before);
}

#[test]
fn one_dirty_page_splits_only_its_leaf() {
    let b = guest();
    let d = bitmap(&[0x40_0000 + 0x3000, GIB + 5 * (2 << 20) + 0x7000, 0x60_0000]);
    let scan = scan_dirty(&b.mem, &b.ctx(), ALL, &d, WalkOptions::default()).unwrap();
    let got: Vec<(u64, u64, bool)> = scan
        .pages
        .iter()
        .map(|p| (p.va.0, p.pa.0, p.shadow))
        .collect();
    assert_eq!(
        got,
        vec![
            (0x4020_3000, 0x40_3000, true),
            (0x7000_0000, 0x60_0000, false),
            (0x80_00a0_7000, GIB + 0xa0_7000, true),
            (0xffff_8880_0000_0000, 0x60_0000, false),
        ]
    );
    // 2 MiB: one skipped, one split. 1 GiB: split into 512 shadow PMDs, of which one is
    // split again and 511 skipped.
    assert_eq!(scan.stats.split_1g, 1);
    assert_eq!(scan.stats.split_2m, 2);
    assert_eq!(scan.huge_split, 1 + 1 + 1);
    assert_eq!(scan.huge_skipped, 1 + 511);
    assert_eq!(scan.runs().len(), 4);
}

#[test]
fn scan_equals_brute_force_over_split_leaves() {
    let b = guest();
    let dirty: Vec<u64> = (0..64).map(|i| (i * 0x9_7000) % (2 * GIB)).collect();
    let d = bitmap(&dirty);
    let scan = scan_dirty(&b.mem, &b.ctx(), ALL, &d, WalkOptions::default()).unwrap();
    let brute: Vec<(u64, u64)> = mappings(&b.mem, &b.ctx(), ALL, Granularity::Split4K)
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            Mapping::Leaf(l) if d.words().is_empty() || walker::DirtyPages::is_dirty(&d, l.pa) => {
                Some((l.va.0, l.pa.0))
            }
            _ => None,
        })
        .collect();
    let got: Vec<(u64, u64)> = scan.pages.iter().map(|p| (p.va.0, p.pa.0)).collect();
    assert!(!got.is_empty());
    assert_eq!(got, brute);
}
