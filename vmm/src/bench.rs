//! `vmm bench`: what the VMM's own operations cost on this host, each compared with a
//! baseline measured in the same run.
//!
//! - boot to READY, and pause (all vCPUs stopped with their registers read);
//! - walks of every address space of the built-in guest, as mapped and split to 4 KiB,
//!   against the time to merely read the same table pages (what any walk must do);
//! - `walker::translate` against `KVM_TRANSLATE` on the same addresses;
//! - the VMM's resident memory beyond the guest RAM it has touched;
//! - full and diff snapshot writes against a plain sequential write of the same bytes.

use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use walker::{Granularity, Gva, Mapping, PagingContext, WalkOptions, for_each_mapping};

use crate::snapshot::{SnapshotDir, SnapshotError};
use crate::vm::Vm;

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

/// Dirty-log costs on a VM built with dirty logging (running, READY seen): the median
/// time to fetch the dirty set after the guest ran `gap`, and the GVA scan of vCPU 0's
/// address space (skipping clean huge leaves) against a full walk split to 4 KiB (what a
/// scan without skipping must at least do). Returns (fetch, scan, full split walk).
pub fn measure_dirty(
    vm: &Vm,
    runs: usize,
    gap: Duration,
) -> Result<(Duration, Duration, Duration), crate::dirty::DirtyError> {
    let mut fetches = Vec::new();
    let mut scans = Vec::new();
    let mut splits = Vec::new();
    for _ in 0..runs.max(1) {
        std::thread::sleep(gap);
        let Ok(states) = vm.pause() else {
            break;
        };
        let t = Instant::now();
        let set = vm.fetch_dirty()?;
        fetches.push(t.elapsed());
        if let Ok(ctx) = vm.paging_context(&states[0], None) {
            let t = Instant::now();
            crate::dirty::scan_space(vm.guest_memory(), &ctx, &set)?;
            scans.push(t.elapsed());
            let (_, _, split) = time_walk(vm.guest_memory(), &ctx, Granularity::Split4K, 1);
            splits.push(split);
        }
        if vm.resume().is_err() {
            break;
        }
    }
    let mid = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    Ok((mid(fetches), mid(scans), mid(splits)))
}

/// Measures a paused VM: walks of each CR3 in `cr3s`, and translations through the walker
/// and through KVM_TRANSLATE on vCPU 0 (whose CR3 must be `cr3s[0]`). Returns a report.
pub fn measure_paused(
    vm: &Vm,
    state: &crate::VcpuState,
    cr3s: &[u64],
    runs: usize,
) -> Result<String, crate::VmError> {
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

/// Snapshot write costs against a plain sequential write of the same bytes.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotCosts {
    /// Bytes of guest RAM (the full snapshot's memory file).
    pub full_bytes: u64,
    /// Time of the full snapshot (fetch, registers, write, fsyncs).
    pub full: Duration,
    /// Time to write the same bytes sequentially to one file, with one fsync.
    pub full_plain: Duration,
    /// Dirty pages in the diff.
    pub diff_pages: u64,
    /// Time of the diff snapshot.
    pub diff: Duration,
    /// Time to write the diff's page bytes sequentially, with one fsync.
    pub diff_plain: Duration,
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

/// On a VM with dirty logging, paused for the whole measurement: a full snapshot of all
/// RAM into `scratch`, then the VMM dirties `percent`% of the pages (spread evenly,
/// through vm-memory) and a diff snapshot is taken; each against a plain sequential
/// write of the same bytes to the same directory. The VM stays paused; `scratch` is left
/// empty.
pub fn measure_snapshots(
    vm: &Vm,
    scratch: &std::path::Path,
    percent: u64,
) -> Result<SnapshotCosts, SnapshotError> {
    let io_error = |source| SnapshotError::Io {
        op: "write a baseline file in",
        path: scratch.to_owned(),
        source,
    };
    let dir = scratch.join(format!("vmm-bench-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut snaps = SnapshotDir::create(&dir)?;
    let mem = vm.guest_memory();
    let states = vm.pause().map_err(Box::new)?;
    let full = vm.snapshot_paused(&mut snaps, &states)?;
    let full_bytes = full.data_bytes;
    let full_plain =
        plain_write(mem, &scratch.join("vmm-bench-plain.raw"), full_bytes).map_err(io_error)?;
    let pages: Vec<u64> = mem
        .iter()
        .flat_map(|r| (0..r.len() / 4096).map(move |i| r.start_addr().0 + i * 4096))
        .collect();
    let stride = (100 / percent.clamp(1, 100)) as usize;
    for (i, gpa) in pages.iter().step_by(stride).enumerate() {
        vm_memory::Bytes::write_obj(
            mem,
            i as u64 | 0xbe00_0000_0000,
            vm_memory::GuestAddress(*gpa),
        )
        .map_err(|source| SnapshotError::Memory { addr: *gpa, source })?;
    }
    let diff = vm.snapshot_paused(&mut snaps, &states)?;
    let diff_plain = plain_write(mem, &scratch.join("vmm-bench-plain.raw"), diff.pages * 4096)
        .map_err(io_error)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SnapshotCosts {
        full_bytes,
        full: full.elapsed,
        full_plain,
        diff_pages: diff.pages,
        diff: diff.elapsed,
        diff_plain,
    })
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
