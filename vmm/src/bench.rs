//! `vmm bench`: what the VMM's own operations cost on this host, each compared with a
//! baseline measured in the same run.
//!
//! - boot to READY, and pause (all vCPUs stopped with their registers read);
//! - walks of every address space of the built-in guest, as mapped and split to 4 KiB,
//!   against the time to merely read the same table pages (what any walk must do);
//! - `walker::translate` against `KVM_TRANSLATE` on the same addresses;
//! - the VMM's resident memory beyond the guest RAM it has touched;
//! - full and diff snapshot writes against a plain sequential write of the same bytes;
//! - on the bulk dirty-writer guest ([`vmm::GuestMode::DirtyBulk`]), which writes the
//!   pages the VMM asks for and lists them, per round: the dirty-set fetch, the GPA scan,
//!   the GVA scan that skips clean huge leaves against one that splits every huge leaf,
//!   and diff snapshot writes of exactly those pages. Every round is verified (the sets
//!   must be exactly the guest's pages plus the known extras, and the two GVA scans must
//!   agree): a wrong answer is an error, not a number.

use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use walker::{Granularity, Gva, Mapping, PagingContext, WalkOptions, for_each_mapping};

use vmm::dirty::DirtySet;
use vmm::guest::{BULK_RECORD_GPA, BULK_REQUEST_GPA, BuiltinProtocol, BulkRequest, RoundRecord};
use vmm::snapshot::{SnapshotDir, SnapshotInfo};
use vmm::vcpu::VcpuState;
use vmm::vm::Vm;

/// Times `f` `runs` times and returns the median.
pub fn median<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Leaves of an address space, and how long walking it takes (median of `runs`).
pub fn time_walk<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &PagingContext,
    granularity: Granularity,
    runs: usize,
) -> (u64, u64, Duration) {
    let (mut leaves, mut bytes) = (0u64, 0u64);
    let t = median(runs, || {
        leaves = 0;
        bytes = 0;
        let _ = for_each_mapping(
            mem,
            ctx,
            Gva(0)..=Gva(u64::MAX),
            granularity,
            WalkOptions::default(),
            |m| {
                if let Mapping::Leaf(l) = m {
                    leaves += 1;
                    bytes += l.size.bytes();
                }
                Ok::<(), ()>(())
            },
        );
    });
    (leaves, bytes, t)
}

/// Resident bytes of the guest RAM mappings and of the whole process, from
/// `/proc/self/smaps` and `/proc/self/status`.
pub fn resident_memory<M: GuestMemoryBackend>(mem: &M) -> Option<(u64, u64)> {
    let ranges: Vec<(u64, u64)> = mem
        .iter()
        .filter_map(|r| {
            let start = mem.get_host_address(r.start_addr()).ok()? as u64;
            Some((start, start + r.len()))
        })
        .collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut guest = 0u64;
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
        {
            in_guest = ranges.iter().any(|(s, e)| lo < *e && *s < hi);
        } else if first == "Rss:" && in_guest {
            guest += words.next()?.parse::<u64>().ok()? * 1024;
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let total = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?
        * 1024;
    Some((guest, total))
}

/// Measures a paused VM: walks of each CR3 in `cr3s`, and translations through the walker
/// and through KVM_TRANSLATE on vCPU 0 (whose CR3 must be `cr3s[0]`). Returns a report.
pub fn measure_paused(
    vm: &Vm,
    state: &vmm::vcpu::VcpuState,
    cr3s: &[u64],
    runs: usize,
) -> Result<String, vmm::vm::VmError> {
    let mem = vm.guest_memory();
    let mut out = String::new();
    for (i, cr3) in cr3s.iter().enumerate() {
        let Ok(ctx) = vm.paging_context(state, Some(*cr3)) else {
            continue;
        };
        let (leaves, bytes, as_mapped) = time_walk(mem, &ctx, Granularity::AsMapped, runs);
        let (leaves_4k, _, split) = time_walk(mem, &ctx, Granularity::Split4K, runs);
        let _ = writeln!(
            out,
            "address space {i} (CR3 {cr3:#x}): {leaves} leaves mapping {} KiB: walk {as_mapped:.2?}; split to {leaves_4k} 4 KiB leaves: {split:.2?} ({:.1} ns per 4 KiB leaf)",
            bytes / 1024,
            split.as_nanos() as f64 / leaves_4k.max(1) as f64
        );
    }
    // Translate every page of every leaf of the current space (up to 4096 addresses).
    let ctx = vm.paging_context(state, None).ok();
    let mut addrs = Vec::new();
    if let Some(ctx) = &ctx {
        let _ = for_each_mapping(
            mem,
            ctx,
            Gva(0)..=Gva(u64::MAX),
            Granularity::Split4K,
            WalkOptions::default(),
            |m| {
                if let Mapping::Leaf(l) = m
                    && addrs.len() < 4096
                {
                    addrs.push(Gva(l.va.0 + 0x123));
                }
                Ok::<(), ()>(())
            },
        );
    }
    if let (Some(ctx), false) = (&ctx, addrs.is_empty()) {
        let ours = median(runs, || {
            for a in &addrs {
                let _ = std::hint::black_box(walker::translate(mem, ctx, *a));
            }
        });
        let mut kvm_err = None;
        let kvm = median(runs.min(3), || {
            for a in &addrs {
                if let Err(e) = vm.translate(0, *a) {
                    kvm_err = Some(e);
                }
            }
        });
        if let Some(e) = kvm_err {
            return Err(e);
        }
        let n = addrs.len() as f64;
        let (ours_ns, kvm_ns) = (ours.as_nanos() as f64 / n, kvm.as_nanos() as f64 / n);
        let _ = writeln!(
            out,
            "translate ({} addresses): walker {ours_ns:.0} ns each, KVM_TRANSLATE {kvm_ns:.0} ns each (through the vCPU thread): walker / KVM = {:.3}",
            addrs.len(),
            ours_ns / kvm_ns
        );
    }
    if let Some((guest, total)) = resident_memory(mem) {
        let _ = writeln!(
            out,
            "resident memory: {} KiB in all, {} KiB of it guest RAM: {} KiB beyond guest RAM",
            total / 1024,
            guest / 1024,
            total.saturating_sub(guest) / 1024
        );
    }
    Ok(out)
}

/// Writes the first `bytes` bytes of `mem` (at most all of it) to `path` and fsyncs it.
fn plain_write<M: GuestMemoryBackend>(
    mem: &M,
    path: &std::path::Path,
    bytes: u64,
) -> io::Result<Duration> {
    use std::io::Write as _;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut file = std::fs::File::create(path)?;
    let mut done = 0u64;
    for region in mem.iter() {
        let mut off = 0;
        while off < region.len() && done < bytes {
            let n = (region.len() - off).min(buf.len() as u64).min(bytes - done) as usize;
            vm_memory::Bytes::read_slice(
                mem,
                &mut buf[..n],
                vm_memory::GuestAddress(region.start_addr().0 + off),
            )
            .map_err(io::Error::other)?;
            file.write_all(&buf[..n])?;
            off += n as u64;
            done += n as u64;
        }
        if done >= bytes {
            break;
        }
    }
    file.sync_all()?;
    let took = started.elapsed();
    std::fs::remove_file(path)?;
    Ok(took)
}

/// The built-in guest's page-table pool (the CPU sets accessed/dirty bits there).
const TABLE_POOL: std::ops::Range<u64> = 0x20_0000..0x40_0000;

/// Runs one round of the bulk guest: NEXT_ROUND, waits for ROUND_DONE, pauses, and
/// reads the round record. Returns the record and the paused vCPUs' states.
pub fn bulk_round(vm: &Vm, timeout: Duration) -> anyhow::Result<(RoundRecord, Vec<VcpuState>)> {
    use anyhow::Context as _;
    let gpa = vm
        .run_round(timeout)
        .context("waiting for the bulk guest's ROUND_DONE")?;
    if gpa.0 != BULK_RECORD_GPA {
        anyhow::bail!(
            "the guest reported its round record at {:#x}, not {BULK_RECORD_GPA:#x}: is it in --mode dirty-bulk?",
            gpa.0
        );
    }
    let states = vm.pause().context("pausing")?;
    let record = RoundRecord::read_any(vm.guest_memory(), gpa)?;
    Ok((record, states))
}

/// Checks that `pages` (the GPAs some mechanism reported for one round) are exactly the
/// pages the bulk guest wrote (`record`) plus allowed extras: its page-table pool, its
/// round record, its stack page, and in round 1 the request page: the guest first reads
/// it then, and hardware-style KVM maps a read fault writable (and so logs the page
/// dirty) when the host page is writable (see `tests/tests/dirty.rs`). Returns the
/// number of extras.
pub fn verify_bulk_pages(
    what: &str,
    record: &RoundRecord,
    rsp: u64,
    pages: impl Iterator<Item = u64>,
) -> anyhow::Result<u64> {
    let written: std::collections::HashSet<u64> = record.pages.iter().map(|(_, p)| p.0).collect();
    if written.len() != record.pages.len() {
        anyhow::bail!("{what}: the guest's round record lists a page twice");
    }
    let record_end = BULK_RECORD_GPA + RoundRecord::size(record.pages.len());
    let (mut found, mut extras) = (0u64, 0u64);
    for gpa in pages {
        if written.contains(&gpa) {
            found += 1;
        } else if TABLE_POOL.contains(&gpa)
            || (BULK_RECORD_GPA..record_end).contains(&gpa)
            || gpa == rsp.wrapping_sub(8) & !0xfff
            || gpa == rsp.wrapping_sub(256) & !0xfff
            || (record.round == 1 && gpa == BULK_REQUEST_GPA)
        {
            extras += 1;
        } else {
            anyhow::bail!("{what}: GPA {gpa:#x} is dirty, but the guest did not write it");
        }
    }
    if found != written.len() as u64 {
        anyhow::bail!(
            "{what}: {found} of the {} pages the guest wrote were reported: {} missed",
            written.len(),
            written.len() as u64 - found
        );
    }
    Ok(extras)
}

/// A GVA dirty scan that splits every huge leaf: every 4 KiB page of every mapping is
/// visited and looked up in the dirty set (what a scan without skipping must do).
/// Returns the dirty (VA, PA) pages.
pub fn scan_split_everything<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &PagingContext,
    set: &DirtySet,
) -> Vec<(u64, u64)> {
    use walker::DirtyPages as _;
    let mut out = Vec::new();
    let _ = for_each_mapping(
        mem,
        ctx,
        Gva(0)..=Gva(u64::MAX),
        Granularity::Split4K,
        WalkOptions::default(),
        |m| {
            if let Mapping::Leaf(l) = m
                && set.bitmaps.is_dirty(l.pa)
            {
                out.push((l.va.0, l.pa.0));
            }
            Ok::<(), ()>(())
        },
    );
    out
}

/// Per-round costs of the dirty log on the bulk guest (medians over the rounds).
#[derive(Debug, Clone, Copy, Default)]
pub struct BulkDirtyCosts {
    /// Rounds measured.
    pub rounds: usize,
    /// Pages the guest wrote per round.
    pub written: u64,
    /// Dirty pages reported per round (written + extras), median.
    pub dirty: u64,
    /// Fetching the dirty set (KVM and the VMM's own bitmap).
    pub fetch: Duration,
    /// The GPA scan: the dirty page list and per-slot counts from the fetched bitmaps.
    pub gpa_scan: Duration,
    /// The GVA scan of vCPU 0's space, skipping clean huge leaves.
    pub gva_scan: Duration,
    /// The same scan splitting every huge leaf.
    pub gva_split: Duration,
    /// Huge leaves skipped / split by the skipping scan (last round).
    pub huge_skipped: u64,
    /// Huge leaves split by the skipping scan (last round).
    pub huge_split: u64,
}

fn median_of<T: Ord + Copy + Default>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// On a bulk guest with dirty logging (READY seen, `request` written and the boot-time
/// set dropped by the caller): `rounds` rounds, each fetched, scanned both ways and
/// verified against the guest's record.
pub fn measure_bulk_dirty(
    vm: &Vm,
    request: BulkRequest,
    rounds: usize,
    timeout: Duration,
) -> anyhow::Result<BulkDirtyCosts> {
    use anyhow::Context as _;
    let mut c = BulkDirtyCosts {
        rounds,
        written: request.pages,
        ..BulkDirtyCosts::default()
    };
    let (mut fetches, mut gpas, mut gvas, mut splits, mut dirty) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 0..rounds.max(1) {
        let (record, states) = bulk_round(vm, timeout)?;
        let what = format!("bulk round {}", record.round);
        if record.pages.len() as u64 != request.pages {
            anyhow::bail!(
                "{what}: the guest wrote {} pages, {} were asked for",
                record.pages.len(),
                request.pages
            );
        }
        let t = Instant::now();
        let set = vm.fetch_dirty()?;
        fetches.push(t.elapsed());
        let t = Instant::now();
        let gpa_scan = set.gpa_scan();
        let listed: Vec<u64> = set.iter().map(|g| g.0).collect();
        gpas.push(t.elapsed());
        if gpa_scan.pages != listed.len() as u64 {
            anyhow::bail!(
                "{what}: the GPA scan counts {} pages but lists {}",
                gpa_scan.pages,
                listed.len()
            );
        }
        let extras = verify_bulk_pages(
            &format!("{what}, GPA scan"),
            &record,
            states[0].rsp,
            listed.into_iter(),
        )?;
        if set.vmm_pages != 0 && n > 0 {
            anyhow::bail!(
                "{what}: {} pages written by the VMM during the measurement",
                set.vmm_pages
            );
        }
        dirty.push(request.pages + extras);
        let ctx = vm
            .paging_context(&states[0], None)
            .context("vCPU 0's paging context")?;
        let t = Instant::now();
        let scan = vmm::dirty::scan_space(vm.guest_memory(), &ctx, &set)?;
        gvas.push(t.elapsed());
        let t = Instant::now();
        let split = scan_split_everything(vm.guest_memory(), &ctx, &set);
        splits.push(t.elapsed());
        let skipping: std::collections::BTreeSet<(u64, u64)> =
            scan.scan.pages.iter().map(|p| (p.va.0, p.pa.0)).collect();
        let split: std::collections::BTreeSet<(u64, u64)> = split.into_iter().collect();
        if skipping != split {
            anyhow::bail!(
                "{what}: the skipping GVA scan found {} pages, the split-everything scan {}",
                skipping.len(),
                split.len()
            );
        }
        for (va, pa) in &record.pages {
            if !skipping.contains(&(va.0, pa.0)) {
                anyhow::bail!("{what}: the GVA scan missed {:#x} -> {:#x}", va.0, pa.0);
            }
        }
        c.huge_skipped = scan.scan.huge_skipped;
        c.huge_split = scan.scan.huge_split;
        vm.resume().context("resuming")?;
    }
    dirty.sort_unstable();
    c.dirty = dirty.get(dirty.len() / 2).copied().unwrap_or_default();
    c.fetch = median_of(fetches);
    c.gpa_scan = median_of(gpas);
    c.gva_scan = median_of(gvas);
    c.gva_split = median_of(splits);
    Ok(c)
}

/// Diff snapshot costs of guest-dirtied pages in one directory (medians over rounds).
#[derive(Debug, Clone, Copy, Default)]
pub struct BulkSnapshotCosts {
    /// Bytes of the full snapshot (generation 0).
    pub full_bytes: u64,
    /// Time of the full snapshot.
    pub full: Duration,
    /// A plain sequential write + fsync of the same bytes.
    pub full_plain: Duration,
    /// Pages per diff (median).
    pub diff_pages: u64,
    /// Time of a diff snapshot (fetch, registers, both files, fsyncs).
    pub diff: Duration,
    /// A plain sequential write + fsync of the diff's page bytes, right after it.
    pub diff_plain: Duration,
}

/// On a bulk guest with dirty logging (READY seen, `request` written): a full snapshot
/// into a new directory under `scratch`, then `rounds` bulk rounds each followed by a
/// diff snapshot (verified: its page list is the guest's pages plus the known extras)
/// and a plain write of the same number of bytes. `scratch` is left as it was.
pub fn measure_bulk_snapshots(
    vm: &Vm,
    scratch: &std::path::Path,
    rounds: usize,
    timeout: Duration,
) -> anyhow::Result<BulkSnapshotCosts> {
    use anyhow::Context as _;
    let dir = scratch.join(format!("vmm-bench-snapshot-{}", std::process::id()));
    let plain = scratch.join(format!("vmm-bench-plain-{}.raw", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| {
        let mut snaps = SnapshotDir::create(&dir)?;
        let mem = vm.guest_memory();
        let states = vm.pause().context("pausing")?;
        let full = vm.snapshot_paused(&mut snaps, &states)?;
        vm.resume().context("resuming")?;
        let full_plain = plain_write(mem, &plain, full.data_bytes)
            .with_context(|| format!("plain write of {}", plain.display()))?;
        let (mut diffs, mut plains, mut pages) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds.max(1) {
            let (record, states) = bulk_round(vm, timeout)?;
            let info: SnapshotInfo = vm.snapshot_paused(&mut snaps, &states)?;
            let what = format!(
                "diff generation {} (bulk round {})",
                info.generation, record.round
            );
            let listed: Vec<u64> = vmm::snapshot::diff_pages(snaps.path(), info.generation)?
                .into_iter()
                .map(|g| g.0)
                .collect();
            if listed.len() as u64 != info.pages {
                anyhow::bail!(
                    "{what}: {} pages listed, {} written",
                    listed.len(),
                    info.pages
                );
            }
            verify_bulk_pages(&what, &record, states[0].rsp, listed.into_iter())?;
            diffs.push(info.elapsed);
            pages.push(info.pages);
            plains.push(
                plain_write(mem, &plain, info.pages * 4096)
                    .with_context(|| format!("plain write of {}", plain.display()))?,
            );
            vm.resume().context("resuming")?;
        }
        pages.sort_unstable();
        Ok(BulkSnapshotCosts {
            full_bytes: full.data_bytes,
            full: full.elapsed,
            full_plain,
            diff_pages: pages.get(pages.len() / 2).copied().unwrap_or_default(),
            diff: median_of(diffs),
            diff_plain: median_of(plains),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&plain);
    result
}

/// What a dirty scan and a diff snapshot cost on a running guest ([`measure_live`]):
/// medians over the runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveCosts {
    /// Pause, fetch of the dirty log, GPA scan and GVA scan of one vCPU's CR3, resume.
    pub scan: Duration,
    /// Dirty pages per scan.
    pub scan_pages: u64,
    /// Huge leaves the GVA scan skipped / split (last run).
    pub huge_skipped: u64,
    /// Huge leaves split (last run).
    pub huge_split: u64,
    /// One diff snapshot generation (pause, fetch, write, resume).
    pub diff: Duration,
    /// Pages per diff.
    pub diff_pages: u64,
}

/// Dirty scans and diff snapshots of a guest that runs on by itself (the built-in guest
/// in its checking loop, a Linux guest): `runs` times, `settle` apart, a pause + dirty
/// fetch + scan of vCPU `vcpu`'s CR3 + resume; then a full snapshot into a new directory
/// under `scratch` (not measured) and `runs` diff generations. The directory is removed.
pub fn measure_live(
    vm: &Vm,
    vcpu: usize,
    runs: usize,
    settle: Duration,
    scratch: &std::path::Path,
) -> anyhow::Result<LiveCosts> {
    use anyhow::Context as _;
    vm.pause().context("pausing")?;
    vm.fetch_dirty().context("dropping the dirty set so far")?;
    vm.resume().context("resuming")?;
    let (mut scans, mut pages) = (Vec::new(), Vec::new());
    let mut costs = LiveCosts::default();
    for _ in 0..runs {
        std::thread::sleep(settle);
        let t = Instant::now();
        let states = vm.pause().context("pausing")?;
        let state = states
            .get(vcpu)
            .with_context(|| format!("no vCPU {vcpu}"))?;
        let (set, report) = vm
            .dirty_scan(std::slice::from_ref(state), &[])
            .context("dirty scan")?;
        vm.resume().context("resuming")?;
        scans.push(t.elapsed());
        pages.push(set.pages());
        if let Some(space) = report.spaces.first() {
            costs.huge_skipped = space.scan.huge_skipped;
            costs.huge_split = space.scan.huge_split;
        }
    }
    let dir = scratch.join(format!("guestwalk-bench-live-{}", std::process::id()));
    let mut snaps =
        SnapshotDir::create(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| -> anyhow::Result<(Vec<Duration>, Vec<u64>)> {
        vm.snapshot(&mut snaps).context("the full snapshot")?;
        let (mut diffs, mut diff_pages) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            std::thread::sleep(settle);
            let t = Instant::now();
            let info = vm.snapshot(&mut snaps).context("a diff snapshot")?;
            diffs.push(t.elapsed());
            diff_pages.push(info.pages);
        }
        Ok((diffs, diff_pages))
    })();
    drop(snaps);
    let _ = std::fs::remove_dir_all(&dir);
    let (diffs, diff_pages) = result?;
    costs.scan = median_of(scans);
    costs.scan_pages = median_of(pages);
    costs.diff = median_of(diffs);
    costs.diff_pages = median_of(diff_pages);
    Ok(costs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_run() {
        let mut n = 0u64;
        let d = median(5, || {
            n += 1;
            std::thread::sleep(Duration::from_micros(n * 100));
        });
        assert!(d >= Duration::from_micros(300), "{d:?}");
        assert_eq!(n, 5);
    }

    #[test]
    fn resident_memory_finds_the_guest_mapping() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 8 << 20)])
                .unwrap();
        // Touch 1 MiB of it.
        vm_memory::Bytes::write_slice(&mem, &vec![1u8; 1 << 20], vm_memory::GuestAddress(0))
            .unwrap();
        let (guest, total) = resident_memory(&mem).unwrap();
        assert!((1 << 20..=8 << 20).contains(&guest), "{guest}");
        assert!(total > guest);
    }
}
