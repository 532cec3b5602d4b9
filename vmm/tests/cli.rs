//! The `vmm` binary end to end: what a user types, what they see, and the exit status.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use vmm::test_support::kvm_available;

fn vmm(args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_vmm")).args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run vmm {args:?}: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("guestwalk-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

#[test]
fn walk_prints_the_builtin_guests_mappings() {
    if !kvm_available("walk_prints_the_builtin_guests_mappings") {
        return;
    }
    let out = vmm(&["walk", "--memory", "64M"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    // The guest's direct map (8 x 2 MiB, RW, NX, supervisor) merged into one range, and
    // its read-only 2 MiB page.
    assert!(
        stdout.contains("ffff888000000000-ffff888001000000 0000000001000000 -rw-"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0000000040600000-0000000040800000 0000000000200000 -r--"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("status 0"));
}

#[test]
fn json_walk_of_a_dump_equals_the_live_walk() {
    if !kvm_available("json_walk_of_a_dump_equals_the_live_walk") {
        return;
    }
    let dir = temp_dir("dump");
    let dump = dir.join("ram.raw");
    let dump_arg = dump.to_string_lossy().into_owned();
    let live = vmm(&[
        "walk",
        "--memory",
        "64M",
        "--format",
        "json",
        "--pte-level",
        "--all-address-spaces",
        "--dump-memory",
        &dump_arg,
    ]);
    assert!(live.status.success(), "{}", text(&live.stderr));
    // Where the host has 1 GiB pages (the emulated host), the split walk is over half a
    // million records per address space: the output is kept as text and each line parsed
    // when it is looked at, never all at once (held as `Value`s, the live and offline walks
    // took gigabytes, and the host's OOM killer ended this test process once).
    let live_text = String::from_utf8(live.stdout).unwrap_or_else(|e| panic!("{e}"));
    let parse = |l: &str| -> Value {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"))
    };
    let mut cr3s: Vec<String> = Vec::new();
    let mut space_of_line: Vec<usize> = Vec::new();
    let mut shadow = 0usize;
    let mut la57 = false;
    for l in live_text.lines() {
        let v = parse(l);
        let cr3 = v["cr3"].as_str().unwrap_or_default().to_owned();
        let space = match cr3s.iter().position(|c| *c == cr3) {
            Some(space) => space,
            None => {
                cr3s.push(cr3);
                cr3s.len() - 1
            }
        };
        space_of_line.push(space);
        // Every record is a 4 KiB leaf; 2 MiB (and 1 GiB) leaves come as shadow records.
        assert!(v["kind"] == "leaf" && v["size"] == 4096, "{l}");
        if v["shadow"] == true {
            shadow += 1;
        }
        // Where the host offers LA57 the guest runs 5-level paging and maps addresses
        // only canonical with 57 bits: then the offline walk needs CR4.LA57 too.
        let va = v["va"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("0x");
        la57 |= u64::from_str_radix(va, 16)
            .is_ok_and(|va| (1 << 47..0xffff_8000_0000_0000).contains(&va));
    }
    assert_eq!(cr3s.len(), 2, "both address spaces: {cr3s:?}");
    // 2 MiB leaves split into 512 shadow 4 KiB records each.
    assert!(shadow >= 512 && shadow % 512 == 0, "{shadow}");
    let cr4 = if la57 { "0x10a0" } else { "0xa0" };
    for (space, cr3) in cr3s.iter().enumerate() {
        let offline = vmm(&[
            "inspect",
            "--memory",
            &dump_arg,
            "--cr3",
            cr3,
            "--cr4",
            cr4,
            "--format",
            "json",
            "--pte-level",
        ]);
        assert!(offline.status.success(), "{}", text(&offline.stderr));
        let got_text = String::from_utf8(offline.stdout).unwrap_or_else(|e| panic!("{e}"));
        let mut got = got_text.lines();
        let want = live_text
            .lines()
            .zip(&space_of_line)
            .filter(|(_, s)| **s == space)
            .map(|(l, _)| l);
        for (n, w) in want.enumerate() {
            let g = got
                .next()
                .unwrap_or_else(|| panic!("cr3 {cr3}: the offline walk ends at record {n}"));
            // The same printer writes both: equal text, or at least equal JSON.
            if g != w {
                assert_eq!(parse(g), parse(w), "cr3 {cr3}, record {n}");
            }
        }
        assert_eq!(
            got.next(),
            None,
            "cr3 {cr3}: the offline walk has more records"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn translate_agrees_with_kvm() {
    if !kvm_available("translate_agrees_with_kvm") {
        return;
    }
    let out = vmm(&[
        "translate",
        "--memory",
        "64M",
        "0x40000123",
        "0x40004000",
        "0xffff888000abc000",
        // Non-canonical with 4-level paging; with 5-level (where the host offers LA57) it
        // is PML5 slot 0, PML4 slot 256, unmapped: KVM must agree either way.
        "0x800000000000",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines.iter().all(|l| l.ends_with("agrees)")), "{stdout}");
    assert!(lines[0].contains("-> 0000000000400123 4K"), "{stdout}");
    assert!(lines[1].contains("not present"), "{stdout}");
    assert!(lines[2].contains("-> 0000000000abc000 2M"), "{stdout}");
    assert!(
        lines[3].contains("not canonical") || lines[3].contains("pml4 entry is not present"),
        "{stdout}"
    );
}

#[test]
fn at_signal_walks_the_builtin_guest_where_it_parks() {
    if !kvm_available("at_signal_walks_the_builtin_guest_where_it_parks") {
        return;
    }
    let out = vmm(&["walk", "--memory", "64M", "--mode", "park", "--at-signal"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("vCPU 0 parked with argument"), "{stderr}");
    assert!(
        text(&out.stdout).contains("ffff888000000000-ffff888001000000"),
        "{stderr}"
    );
    // Without park mode the built-in guest never parks: refused before booting.
    let out = vmm(&["walk", "--memory", "64M", "--at-signal"]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        text(&out.stderr).contains("--mode park"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn hostile_guest_walk_is_bounded_and_says_so() {
    if !kvm_available("hostile_guest_walk_is_bounded_and_says_so") {
        return;
    }
    let out = vmm(&[
        "walk", "--memory", "64M", "--mode", "hostile", "--budget", "1000000",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("walk incomplete") && stderr.contains("alias"),
        "{stderr}"
    );
    // The guest itself was unharmed and finished.
    assert!(stderr.contains("status 0"), "{stderr}");
}

#[test]
fn triple_fault_is_a_clear_failure() {
    if !kvm_available("triple_fault_is_a_clear_failure") {
        return;
    }
    let out = vmm(&["run", "--memory", "64M", "--mode", "triple-fault"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(100), "{stderr}");
    assert!(stderr.contains("triple fault"), "{stderr}");
    assert!(stderr.contains("RIP"), "a register dump: {stderr}");
}

/// A minimal ELF vmlinux for the PVH entry: `code` loaded at 1 MiB (at most 16 bytes,
/// padded with HLT), entered there in 32-bit protected mode.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    vmm::test_support::tiny_elf_kernel(code, Some(0x10_0000))
}

#[test]
fn a_hung_or_dead_kernel_gets_every_vcpus_registers() {
    if !kvm_available("a_hung_or_dead_kernel_gets_every_vcpus_registers") {
        return;
    }
    let dir = temp_dir("hung-kernel");
    // mov dx, 0x3f8; mov al, 'x'; out dx, al; then `jmp $` (hangs at 0x100007) or
    // `ud2` (no IDT: a triple fault).
    let out_x = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'x', 0xee];
    let kernel = |name: &str, tail: &[u8]| {
        let path = dir.join(name);
        let code = [&out_x[..], tail].concat();
        std::fs::write(&path, pvh_elf(&code)).unwrap_or_else(|e| panic!("{e}"));
        path.to_string_lossy().into_owned()
    };
    let spin = kernel("spin", &[0xeb, 0xfe]);
    let dead = kernel("dead", &[0x0f, 0x0b]);
    let boot = |kernel: &str| {
        vmm(&[
            "run",
            "--kernel",
            kernel,
            "--force",
            "--memory",
            "64M",
            "--vcpus",
            "2",
            "--timeout",
            "2",
        ])
    };

    let out = boot(&spin);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert_eq!(text(&out.stdout), "x");
    let Some((_, dumps)) = stderr.split_once("every vCPU now:\n") else {
        panic!("no register dump on the timeout: {stderr}");
    };
    let Some((bsp, ap)) = dumps.split_once("registers of vCPU 1") else {
        panic!("vCPU 1 is missing: {stderr}");
    };
    assert!(bsp.starts_with("registers of vCPU 0:\n"), "{stderr}");
    assert!(bsp.contains("RIP=0x0000000000100007"), "{stderr}");
    assert!(
        bsp.contains("last port I/O: OUT 0x03f8 <- 0x78 (1 byte; port access 1 of this vCPU)"),
        "{stderr}"
    );
    assert!(ap.contains("last port I/O: none"), "{stderr}");
    assert!(stderr.contains("--timeout 2s"), "{stderr}");

    let out = boot(&dead);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(100), "{stderr}");
    assert!(stderr.contains("triple fault"), "{stderr}");
    // The dead vCPU's own dump keeps its last port access (on AMD, KVM re-initialises
    // its registers after the shutdown; the access is the VMM's own record).
    assert!(
        stderr.contains("last port I/O: OUT 0x03f8 <- 0x78"),
        "{stderr}"
    );
    let Some((_, others)) = stderr.split_once("the other vCPUs now:\n") else {
        panic!("no dump of the other vCPU: {stderr}");
    };
    assert!(others.starts_with("registers of vCPU 1:\n"), "{stderr}");
    assert!(!others.contains("registers of vCPU 0"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = vmm(&["run", "--memory", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("12Q"));
    // The control API's options: refused before anything boots.
    let out = vmm(&["run", "--dirty-log", "auto"]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        text(&out.stderr).contains("--dirty-log goes with --dirty-scan-every or --api-socket"),
        "{}",
        text(&out.stderr)
    );
    for args in [
        &["run", "--api-socket", "/tmp/x", "--dirty-scan-every", "1s"][..],
        &[
            "restore",
            "/tmp/x",
            "--api-socket",
            "/tmp/y",
            "--dirty-scan-every",
            "1s",
        ][..],
        &["bench", "--api", "--api-addresses", "0"][..],
        &["ctl", "--socket", "/tmp/x", "memory", "--len", "8"][..],
    ] {
        let out = vmm(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = vmm(&[
        "inspect",
        "--memory",
        "/nonexistent/ram.raw",
        "--cr3",
        "0x1000",
    ]);
    assert_eq!(out.status.code(), Some(101));
    assert!(text(&out.stderr).contains("/nonexistent/ram.raw"));
    let dir = temp_dir("bad");
    let file = dir.join("tiny.raw");
    std::fs::write(&file, [0u8; 100]).unwrap_or_else(|e| panic!("{e}"));
    let file_arg = file.to_string_lossy().into_owned();
    // Not whole pages: refused by size.
    let out = vmm(&["inspect", "--memory", &file_arg, "--cr3", "0"]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        text(&out.stderr).contains("100 bytes, not a multiple of 4096"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&file, [0u8; 4096]).unwrap_or_else(|e| panic!("{e}"));
    // CR4 without PAE: not a mode the walker reads.
    let out = vmm(&["inspect", "--memory", &file_arg, "--cr3", "0", "--cr4", "0"]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        text(&out.stderr).contains("long mode"),
        "{}",
        text(&out.stderr)
    );
    // A root table beyond the file: a mistake in --cr3, named with the file's size.
    let out = vmm(&["inspect", "--memory", &file_arg, "--cr3", "0x5000"]);
    assert_eq!(out.status.code(), Some(101));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--cr3 0x5000")
            && stderr.contains("outside the memory file")
            && stderr.contains("4096 bytes"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    for args in [
        &["walk", "--help"][..],
        &["inspect", "--help"],
        &["translate", "--help"],
    ] {
        let out = vmm(args);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("Usage"));
    }
}

#[test]
fn bench_reports_every_measurement() {
    if !kvm_available("bench_reports_every_measurement") {
        return;
    }
    let out = vmm(&["bench", "--memory", "64M", "--runs", "2"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for expected in [
        "boot to READY: median",
        "pause 1 vCPU(s)",
        "address space 0",
        "address space 1",
        "walker / KVM =",
        "beyond guest RAM",
        "snapshot full of 64 MiB",
        "diff / plain =",
        "restore of 64 MiB (1 vCPU(s)), 10 restores each: lazy p50",
        "restore / boot to READY",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
}

#[test]
fn bench_api_reports_its_three_measurements() {
    if !kvm_available("bench_api_reports_its_three_measurements") {
        return;
    }
    // A smaller batch and a longer timeout: the emulated host translates far slower.
    let out = vmm(&[
        "bench",
        "--api",
        "--memory",
        "64M",
        "--runs",
        "1",
        "--api-addresses",
        "65536",
        "--timeout",
        "300",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for expected in [
        "api translate 65536 addresses over the socket: median",
        "socket / in-process time",
        "api pause + registers + walk + resume (4 requests): p50",
        "socket and VMM overhead p50",
        "api guest loop rate while GET /vm is polled at 100 Hz / unpolled: median",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    assert!(
        text(&out.stderr).contains("status 0"),
        "{}",
        text(&out.stderr)
    );
}

/// The JSON state of a snapshot generation (after its header line).
fn snapshot_state(dir: &std::path::Path, generation: u64) -> Value {
    let text = std::fs::read_to_string(dir.join(format!("gen-{generation:06}.state")))
        .unwrap_or_else(|e| panic!("{e}"));
    let json = text.split_once('\n').map(|(_, j)| j).unwrap_or_default();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn snapshots_from_run_inspect_and_merge() {
    if !kvm_available("snapshots_from_run_inspect_and_merge") {
        return;
    }
    let dir = temp_dir("snapshots");
    let snaps = dir.join("snaps");
    let snaps_arg = snaps.to_string_lossy().into_owned();
    let out = vmm(&[
        "run",
        "--memory",
        "64M",
        "--snapshot-dir",
        &snaps_arg,
        "--snapshot-every",
        "30ms",
        "--snapshots",
        "4",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("generation 0 Full"), "{stdout}");
    assert!(stdout.contains("generation 3 Diff"), "{stdout}");
    // A second run into the same directory is refused.
    let again = vmm(&[
        "run",
        "--memory",
        "64M",
        "--snapshot-dir",
        &snaps_arg,
        "--snapshot-every",
        "30ms",
    ]);
    assert_eq!(again.status.code(), Some(101));
    assert!(text(&again.stderr).contains("already holds"));

    // inspect --snapshot walks generation 2 with the saved registers; the same walk of
    // the merged memory file with those registers given by hand prints the same.
    let merged = dir.join("gen2.raw");
    let merged_arg = merged.to_string_lossy().into_owned();
    let merge = vmm(&[
        "snapshot",
        "merge",
        &snaps_arg,
        "--generation",
        "2",
        "-o",
        &merged_arg,
    ]);
    assert!(merge.status.success(), "{}", text(&merge.stderr));
    let offline = vmm(&[
        "inspect",
        "--snapshot",
        &snaps_arg,
        "--generation",
        "2",
        "--format",
        "json",
        "--pte-level",
    ]);
    assert!(offline.status.success(), "{}", text(&offline.stderr));
    let state = snapshot_state(&snaps, 2);
    let sregs = &state["vcpus"][0]["sregs"];
    let hex = |v: &Value| format!("{:#x}", v.as_u64().unwrap_or_default());
    let maxphyaddr = state["paging"]["phys_addr_bits"].to_string();
    let mut args = vec![
        "inspect".to_owned(),
        "--memory".to_owned(),
        merged_arg.clone(),
        "--cr3".to_owned(),
        hex(&sregs["cr3"]),
        "--cr0".to_owned(),
        hex(&sregs["cr0"]),
        "--cr4".to_owned(),
        hex(&sregs["cr4"]),
        "--efer".to_owned(),
        hex(&sregs["efer"]),
        "--maxphyaddr".to_owned(),
        maxphyaddr,
        "--format".to_owned(),
        "json".to_owned(),
        "--pte-level".to_owned(),
    ];
    if state["paging"]["gbpages"] == false {
        args.push("--no-gbpages".to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let by_hand = vmm(&args);
    assert!(by_hand.status.success(), "{}", text(&by_hand.stderr));
    let lines = json_lines(&offline);
    assert!(lines.len() > 512, "{}", text(&offline.stdout));
    assert_eq!(lines, json_lines(&by_hand));

    // A corrupted memory file is refused, naming the file, for every generation.
    let mem = snaps.join("gen-000000.mem");
    let mut bytes = std::fs::read(&mem).unwrap_or_else(|e| panic!("{e}"));
    bytes[0x1234] ^= 1;
    std::fs::write(&mem, bytes).unwrap_or_else(|e| panic!("{e}"));
    let bad = vmm(&["inspect", "--snapshot", &snaps_arg, "--generation", "3"]);
    let stderr = text(&bad.stderr);
    assert_eq!(bad.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("gen-000000.mem") && stderr.contains("corrupted"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_kernel_files_are_named_before_anything_boots() {
    let out = vmm(&["run", "--kernel", "/nonexistent/bzImage"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("cannot open the kernel /nonexistent/bzImage"),
        "{stderr}"
    );
    // An ELF executable (this very binary) is no bzImage, and no vmlinux with a PVH entry.
    let binary = env!("CARGO_BIN_EXE_vmm");
    let out = vmm(&["run", "--kernel", binary]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains(&format!("{binary} is an ELF file without a PVH entry")),
        "{stderr}"
    );
    // A file that is neither ELF nor bzImage (made here: the emulated KVM host runs this
    // test without the source tree).
    let junk = std::env::temp_dir().join(format!("vmm-cli-junk-kernel-{}", std::process::id()));
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap_or_else(|e| panic!("{e}"));
    let junk_arg = junk.to_string_lossy().into_owned();
    let out = vmm(&["run", "--kernel", &junk_arg]);
    let _ = std::fs::remove_file(&junk);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{junk_arg} is not a Linux bzImage")),
        "{stderr}"
    );
    // Several vCPUs are fine with a kernel (the MADT lists them): the file is the error.
    let out = vmm(&["run", "--kernel", binary, "--vcpus", "2"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("without a PVH entry"), "{stderr}");
    let out = vmm(&["walk", "--kernel", "/nonexistent/bzImage"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--at-signal, --at-serial MARKER or --after DURATION"),
        "{stderr}"
    );
}

#[test]
fn restore_resumes_a_run_and_its_restores_take_new_chains() {
    if !kvm_available("restore_resumes_a_run_and_its_restores_take_new_chains") {
        return;
    }
    let dir = temp_dir("restore");
    let snaps = dir.join("snaps");
    let snaps_arg = snaps.to_string_lossy().into_owned();
    let out = vmm(&[
        "run",
        "--memory",
        "64M",
        "--snapshot-dir",
        &snaps_arg,
        "--snapshot-every",
        "30ms",
        "--snapshots",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The latest generation, and the first: heartbeats, then DONE with status 0.
    for (generation, copy) in [(None, false), (Some("0"), false), (Some("2"), true)] {
        let mut args = vec!["restore", &snaps_arg, "--heartbeats", "2"];
        if let Some(g) = generation {
            args.extend(["--generation", g]);
        }
        if copy {
            args.extend(["--memory-restore", "copy"]);
        }
        let out = vmm(&args);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{generation:?}: {stderr}");
        assert!(stderr.contains("restored in"), "{stderr}");
        assert!(stderr.contains("vmm: heartbeat: iteration"), "{stderr}");
        assert!(text(&out.stdout).contains("DONE"), "{}", text(&out.stdout));
    }
    // Dirty scans from the restored moment, as `vmm run --dirty-scan-every` prints them:
    // the guest's loop keeps writing its pages.
    let out = vmm(&[
        "restore",
        &snaps_arg,
        "--dirty-scan-every",
        "30ms",
        "--rounds",
        "2",
        "--scan-format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let scans = json_lines(&out);
    assert_eq!(scans.len(), 2, "{}", text(&out.stdout));
    for scan in &scans {
        assert!(scan["gpa_pages"].as_u64().unwrap() > 0, "{scan}");
        assert!(!scan["spaces"].as_array().unwrap().is_empty(), "{scan}");
    }
    assert!(
        text(&out.stderr).contains("status 0"),
        "{}",
        text(&out.stderr)
    );
    // A new chain from a restored VM, itself restored.
    let chain = dir.join("chain");
    let chain_arg = chain.to_string_lossy().into_owned();
    let out = vmm(&[
        "restore",
        &snaps_arg,
        "--generation",
        "1",
        "--snapshot-dir",
        &chain_arg,
        "--snapshot-every",
        "30ms",
        "--snapshots",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("generation 1 Diff"),
        "{}",
        text(&out.stdout)
    );
    let out = vmm(&["restore", &chain_arg, "--heartbeats", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A diff generation merged into a full snapshot restores too.
    let merged = dir.join("merged").to_string_lossy().into_owned();
    let out = vmm(&[
        "snapshot",
        "merge",
        &snaps_arg,
        "--generation",
        "2",
        "--format",
        "snapshot",
        "-o",
        &merged,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = vmm(&["restore", &merged, "--heartbeats", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = vmm(&[
        "snapshot",
        "merge",
        &snaps_arg,
        "--format",
        "snapshot",
        "--overwrite",
        "-o",
        &merged,
    ]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        text(&out.stderr).contains("never overwritten"),
        "{}",
        text(&out.stderr)
    );
    // A damaged memory file: --verify-memory reads it all and names it.
    let mem = snaps.join("gen-000000.mem");
    let mut bytes = std::fs::read(&mem).unwrap_or_else(|e| panic!("{e}"));
    bytes[0x1234] ^= 1;
    std::fs::write(&mem, bytes).unwrap_or_else(|e| panic!("{e}"));
    let out = vmm(&["restore", &snaps_arg, "--verify-memory"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("gen-000000.mem") && stderr.contains("corrupted"),
        "{stderr}"
    );
    // Nothing to restore.
    let missing = dir.join("none").to_string_lossy().into_owned();
    let out = vmm(&["restore", &missing]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        text(&out.stderr).contains(&missing),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
}

/// A `vmm run --api-socket` in the background, killed if the test fails before its
/// shutdown.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vmm ARGS` in the background, its stderr into `log`, and waits until its API
/// socket `socket` exists.
fn serving(args: &[&str], socket: &std::path::Path, log: &std::path::Path) -> Background {
    let log = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start vmm {args:?}: {e}"));
    let process = Background(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "vmm {args:?}: no API socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    process
}

#[test]
fn ctl_drives_a_running_vmm_as_the_offline_commands_print() {
    if !kvm_available("ctl_drives_a_running_vmm_as_the_offline_commands_print") {
        return;
    }
    let dir = temp_dir("ctl");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let socket_arg = socket.to_str().unwrap().to_owned();
    let mut vmm_process = serving(
        &[
            "run",
            "--memory",
            "64M",
            "--dirty-log",
            "auto",
            "--api-socket",
            &socket_arg,
        ],
        &socket,
        &dir.join("vmm.err"),
    );
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--socket", &socket_arg];
        all.extend_from_slice(args);
        vmm(&all)
    };
    let ok = |args: &[&str]| {
        let out = ctl(args);
        assert!(out.status.success(), "ctl {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };

    let vm: Value = serde_json::from_str(&ok(&["vm"])).unwrap();
    assert_eq!(vm["state"], "Running");
    let vm: Value = serde_json::from_str(&ok(&["pause"])).unwrap();
    assert_eq!(vm["state"], "Paused");
    let cr3 = vm["paging"][0]["cr3"].as_str().unwrap().to_owned();
    let regs = ok(&["registers"]);
    assert!(
        regs.contains("RIP=")
            && regs.contains(&format!(
                "CR3={:#018x}",
                u64::from_str_radix(&cr3[2..], 16).unwrap()
            )),
        "{regs}"
    );

    // A snapshot at this pause, and the walk over the socket equals `vmm inspect` of it.
    let snaps = dir.join("snaps");
    let snaps_arg = snaps.to_str().unwrap().to_owned();
    let line = ok(&["snapshot", "--dir", &snaps_arg, "--kind", "full"]);
    assert!(line.starts_with("generation 0 Full: "), "{line}");
    for format in ["tlb", "json"] {
        let live = ok(&["walk", "--cr3", &cr3, "--format", format, "--pte-level"]);
        let offline = vmm(&[
            "inspect",
            "--snapshot",
            &snaps_arg,
            "--format",
            format,
            "--pte-level",
        ]);
        assert!(offline.status.success(), "{}", text(&offline.stderr));
        assert!(live.lines().count() > 100, "{live}");
        assert_eq!(live, text(&offline.stdout), "--format {format}");
    }
    // The snapshot over the API is one `--snapshot-dir` would have written: the same
    // state (the built-in guest's address spaces are built alike every boot, so each
    // inspects to the same ranges) and the same listing.
    let from_run = dir.join("from-run");
    let from_run_arg = from_run.to_str().unwrap().to_owned();
    let out = vmm(&[
        "run",
        "--memory",
        "64M",
        "--snapshot-dir",
        &from_run_arg,
        "--snapshot-every",
        "10ms",
        "--snapshots",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let state = |d: &std::path::Path| snapshot_state(d, 0);
    let (api_state, run_state) = (state(&snaps), state(&from_run));
    assert_eq!(api_state["version"], run_state["version"]);
    assert_eq!(api_state["guest_cr3s"], run_state["guest_cr3s"]);
    assert_eq!(api_state["boot"], run_state["boot"]);
    for cr3 in api_state["guest_cr3s"].as_array().unwrap() {
        let cr3 = format!("{:#x}", cr3.as_u64().unwrap());
        let inspect = |d: &str| {
            let out = vmm(&["inspect", "--snapshot", d, "--cr3", &cr3]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let api = inspect(&snaps_arg);
        assert!(api.len() > 3, "{api:?}");
        assert_eq!(api, inspect(&from_run_arg), "CR3 {cr3}");
    }
    let walk = ctl(&["walk", "--format", "text"]);
    assert!(
        text(&walk.stderr).contains("complete:"),
        "{}",
        text(&walk.stderr)
    );

    // Translations checked against KVM_TRANSLATE, as `vmm translate` prints them.
    let out = ok(&[
        "translate",
        "--check-kvm",
        "100000",
        "ffff888000000000",
        "dead0000000",
    ]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains("KVM_TRANSLATE") && l.contains("agrees")),
        "{out}"
    );
    let json = ok(&["translate", "--format", "json", "100000"]);
    let v: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (&v["kind"], &v["pa"]),
        (&Value::from("translation"), &Value::from("0x100000"))
    );

    // Memory into a new file; an existing one is not replaced without --overwrite.
    let file = dir.join("page.bin");
    let file_arg = file.to_str().unwrap().to_owned();
    ok(&[
        "memory", "--gpa", "100000", "--len", "4096", "-o", &file_arg,
    ]);
    let page = std::fs::read(&file).unwrap();
    assert_eq!(page.len(), 4096);
    std::fs::write(&file, b"keep").unwrap();
    let refused = ctl(&[
        "memory", "--gpa", "100000", "--len", "4096", "-o", &file_arg,
    ]);
    assert!(!refused.status.success());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    let by_gva = ctl(&["memory", "--gva", "100000", "--len", "4096"]);
    assert_eq!(by_gva.stdout, page, "GVA 0x100000 is identity-mapped");

    // Refusals: exit 1 and the VMM's message.
    let out = ctl(&["registers", "--vcpu", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("vCPU 9 does not exist"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl(&["snapshot", "--dir", &snaps_arg, "--kind", "full"]);
    assert_eq!(out.status.code(), Some(1));

    // Running again: a dirty scan and a diff generation.
    let vm: Value = serde_json::from_str(&ok(&["resume"])).unwrap();
    assert_eq!(vm["state"], "Running");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let scan = ok(&["dirty-scan"]);
    assert!(scan.starts_with("# dirty scan 1: "), "{scan}");
    let scan: Value = serde_json::from_str(&ok(&["dirty-scan", "--format", "json"])).unwrap();
    assert_eq!(scan["seq"], 2);
    let line = ok(&["snapshot", "--dir", &snaps_arg, "--kind", "diff"]);
    assert!(line.starts_with("generation 1 Diff: "), "{line}");
    let list = vmm(&["snapshot", "list", &snaps_arg]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert_eq!(
        text(&list.stdout)
            .lines()
            .filter(|l| l.contains("generation"))
            .count(),
        2,
        "{}",
        text(&list.stdout)
    );

    // Shutdown: the guest gets FINISH, passes its checks, the VMM exits 0, the socket goes.
    ok(&["shutdown"]);
    let status = vmm_process.0.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("vmm.err")).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("status 0"), "{log}");
    assert!(!socket.exists());
    let out = ctl(&["vm"]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );

    // The chain ctl wrote restores under the API too: its diff generation runs on and
    // finishes its checks when a client asks for shutdown.
    let mut restored = serving(
        &["restore", &snaps_arg, "--api-socket", &socket_arg],
        &socket,
        &dir.join("restore.err"),
    );
    let vm: Value = serde_json::from_str(&ok(&["vm"])).unwrap();
    assert_eq!(
        (&vm["state"], &vm["boot"]["source"]),
        (&Value::from("Running"), &Value::from("builtin"))
    );
    assert!(ok(&["registers"]).contains("RIP="));
    ok(&["shutdown"]);
    let status = restored.0.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("restore.err")).unwrap();
    assert!(status.success() && log.contains("status 0"), "{log}");
    assert!(!socket.exists());

    // A path that is not a stale socket is never replaced.
    std::fs::write(&socket, b"not a socket").unwrap();
    let out = vmm(&["run", "--memory", "64M", "--api-socket", &socket_arg]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        text(&out.stderr).contains("exists and is not a socket"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_vmm_killed_by_sigterm_removes_its_api_socket() {
    if !kvm_available("a_vmm_killed_by_sigterm_removes_its_api_socket") {
        return;
    }
    let dir = temp_dir("sigterm");
    let socket = dir.join("api.sock");
    let _ = std::fs::remove_file(&socket);
    let vmm_process = serving(
        &[
            "run",
            "--memory",
            "64M",
            "--api-socket",
            socket.to_str().unwrap(),
        ],
        &socket,
        &dir.join("vmm.err"),
    );
    let killed = Command::new("kill")
        .args(["-TERM", &vmm_process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut vmm_process = vmm_process;
    let status = vmm_process.0.wait().unwrap();
    assert!(!status.success());
    assert!(!socket.exists(), "the socket outlived the VMM");
    let _ = std::fs::remove_dir_all(&dir);
}
