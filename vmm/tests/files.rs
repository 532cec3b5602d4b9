//! What `vmm` does with hostile paths, as a user would meet it: outputs that must never
//! destroy data, inputs that are FIFOs, sockets, directories, devices or links, and files
//! that are damaged. Every case checks the exit status, that the message names the
//! problem, that no temporary is left behind and that every file that existed before
//! hashes the same after. None of these needs /dev/kvm.

use std::collections::BTreeMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm::arch::x86_64::cpuid::PagingFeatures;
use vmm::arch::x86_64::regs::{Registers, SpecialRegisters};
use vmm::snapshot::{SnapshotDir, SnapshotSource, VcpuRecord};
use walker::DirtyBitmap;

/// No command here may take longer: one that blocks (a FIFO opened for reading) is
/// killed and fails the test.
const DEADLINE: Duration = Duration::from_secs(20);

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run vmm {args:?}: {e}"))
}

fn vmm(args: &[&str]) -> Output {
    let child = spawn(args);
    let pid = child.id().to_string();
    // Read its output while waiting: a full pipe must not look like a hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.unwrap_or_else(|e| panic!("vmm {args:?}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("vmm {args:?} did not finish within {DEADLINE:?}: it blocked");
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a refusal: status 101 and a message containing every one of `words`.
fn refused(out: &Output, words: &[&str]) {
    let e = stderr(out);
    assert_eq!(out.status.code(), Some(101), "{e}");
    for w in words {
        assert!(e.contains(w), "{w:?} missing from: {e}");
    }
    assert!(e.len() < 2000, "an error message of {} bytes", e.len());
}

fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The hash of every file under `dir` (links not followed), by path.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, u32> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
        {
            let t = e.file_type().unwrap_or_else(|e| panic!("{e}"));
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_else(|e| panic!("{e}"));
                all.insert(e.path(), crc32fast::hash(&bytes));
            } else {
                all.insert(e.path(), 0);
            }
        }
    }
    all
}

/// Asserts that `dir` holds exactly the files of `before`, unchanged: nothing destroyed,
/// no temporary left.
fn unchanged(dir: &Path, before: &BTreeMap<PathBuf, u32>) {
    assert_eq!(&hashes(dir), before, "files under {}", dir.display());
}

const MIB: u64 = 1 << 20;
/// Where the second region of a test guest of `ram` bytes starts: a hole below it, as
/// above 3 GiB.
fn second_region(ram: u64) -> u64 {
    ram + 8 * MIB
}

/// A snapshot directory of a 2-region guest with `diffs` diffs, made by the library.
fn snapshot_dir(dir: &Path, ram: u64, diffs: u64) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), (ram / 2) as usize),
        (GuestAddress(second_region(ram)), (ram / 2) as usize),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    // 4-level tables at CR3 0x1000: VA 0x40_0000 and 0x40_1000 (4 KiB), 0x60_0000 (2 MiB).
    for (at, entry) in [
        (0x1000u64, 0x2003u64),
        (0x2000, 0x3003),
        (0x3000 + 2 * 8, 0x4003),
        (0x3000 + 3 * 8, 0x20_00e3),
        (0x4000, 0x5063),
        (0x4008, 0x8000_0000_0000_6005),
    ] {
        mem.write_obj(entry, GuestAddress(at))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut snaps = SnapshotDir::create(dir).unwrap_or_else(|e| panic!("{e}"));
    let vcpu = VcpuRecord {
        index: 0,
        regs: Registers::default(),
        sregs: SpecialRegisters {
            cr0: 0x8000_0011,
            cr3: 0x1000,
            cr4: 0x20,
            efer: 0xd00,
            ..SpecialRegisters::default()
        },
        kvm: None,
        debug_argument: None,
    };
    let paging = PagingFeatures {
        phys_addr_bits: 46,
        gbpages: false,
        la57: false,
        nx: true,
    };
    for g in 0..=diffs {
        let page = 0x1000 * (g + 16);
        mem.write_obj(g + 1, GuestAddress(page))
            .unwrap_or_else(|e| panic!("{e}"));
        let dirty = mem
            .iter()
            .map(|r| {
                let mut b = DirtyBitmap::new(r.start_addr(), r.len());
                if r.start_addr().0 == 0 {
                    b.set(GuestAddress(page));
                }
                b
            })
            .collect();
        snaps
            .write(SnapshotSource {
                memory: &mem,
                vcpus: vec![vcpu.clone()],
                vm: None,
                devices: None,
                boot: None,
                paging,
                dirty: Some(dirty),
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("guestwalk-files-{name}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn merge_never_writes_over_its_own_snapshot() {
    let root = scratch("merge-self");
    let snap = root.path().join("S");
    snapshot_dir(&snap, 2 * MIB, 3);
    let outside = root.path().join("hardlink.mem");
    std::fs::hard_link(snap.join("gen-000000.mem"), &outside).unwrap_or_else(|e| panic!("{e}"));
    let before = hashes(root.path());
    for name in [
        "gen-000000.mem",
        "gen-000001.diff",
        "gen-000003.diff",
        "gen-000003.state",
        "gen-000004.state",
        "merged.raw",
    ] {
        for overwrite in [false, true] {
            let out = snap.join(name);
            let mut args = vec!["snapshot", "merge", "S-placeholder", "-o"];
            let (s, o) = (arg(&snap), arg(&out));
            args[2] = &s;
            args.push(&o);
            if overwrite {
                args.push("--overwrite");
            }
            let out = vmm(&args);
            refused(&out, &[name, "snapshot"]);
            unchanged(root.path(), &before);
        }
    }
    // The same file as gen-000000.mem under another name, with --overwrite.
    let out = vmm(&[
        "snapshot",
        "merge",
        &arg(&snap),
        "-o",
        &arg(&outside),
        "--overwrite",
    ]);
    refused(
        &out,
        &["hardlink.mem", "gen-000000.mem", "refusing to overwrite"],
    );
    unchanged(root.path(), &before);
    // `snapshot list` still loads every generation.
    let out = vmm(&["snapshot", "list", &arg(&snap)]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn merge_output_rules() {
    let root = scratch("merge-out");
    let snap = root.path().join("S");
    snapshot_dir(&snap, 2 * MIB, 1);
    let out_dir = root.path().join("out");
    std::fs::create_dir(&out_dir).unwrap_or_else(|e| panic!("{e}"));
    // Planted neighbours of guessable temporary names: a file and a symlink to a victim.
    let victim = root.path().join("victim");
    std::fs::write(&victim, b"victim").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(out_dir.join("notes.partial"), b"notes").unwrap_or_else(|e| panic!("{e}"));
    for name in ["notes.txt.partial", ".notes.txt.tmp", "notes.tmp"] {
        std::os::unix::fs::symlink(&victim, out_dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
    }
    let target = out_dir.join("notes.txt");
    let before = hashes(root.path());
    let merge = |to: &Path, extra: &[&str]| {
        let mut args = vec![
            "snapshot".to_owned(),
            "merge".to_owned(),
            arg(&snap),
            "-o".to_owned(),
            arg(to),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        vmm(&refs)
    };
    let out = merge(&target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut expected = before.clone();
    let written = hashes(root.path());
    let merged_hash = written[&target];
    expected.insert(target.clone(), merged_hash);
    assert_eq!(written, expected, "only the output was added");
    assert_eq!(
        std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0),
        second_region(2 * MIB) + MIB,
        "byte N = GPA N: the file ends where the second region does"
    );
    // An existing output: refused, kept; replaced only with --overwrite.
    std::fs::write(&target, b"mine").unwrap_or_else(|e| panic!("{e}"));
    let before = hashes(root.path());
    refused(
        &merge(&target, &[]),
        &["notes.txt", "already exists", "--overwrite"],
    );
    unchanged(root.path(), &before);
    let out = merge(&target, &["--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hashes(root.path())[&target], merged_hash);
    // Things that are not regular files are never written through or replaced.
    let before = hashes(root.path());
    let link = out_dir.join("link.raw");
    std::os::unix::fs::symlink(&victim, &link).unwrap_or_else(|e| panic!("{e}"));
    let fifo = out_dir.join("fifo.raw");
    mkfifo(&fifo);
    let sub = out_dir.join("sub");
    std::fs::create_dir(&sub).unwrap_or_else(|e| panic!("{e}"));
    let before_links = hashes(root.path());
    for (path, kind) in [
        (link.as_path(), "symbolic link"),
        (fifo.as_path(), "FIFO"),
        (sub.as_path(), "directory"),
        (Path::new("/dev/null"), "character device"),
    ] {
        refused(&merge(path, &["--overwrite"]), &[&arg(path), kind]);
        unchanged(root.path(), &before_links);
    }
    assert_eq!(std::fs::read(&victim).unwrap_or_default(), b"victim");
    drop(before);
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn inputs_that_are_not_files_are_refused_at_once() {
    let root = scratch("inputs");
    let fifo = root.path().join("fifo");
    mkfifo(&fifo);
    let sock = root.path().join("sock");
    let _listener = UnixListener::bind(&sock).unwrap_or_else(|e| panic!("{e}"));
    let dangling = root.path().join("dangling");
    std::os::unix::fs::symlink(root.path().join("nothing"), &dangling)
        .unwrap_or_else(|e| panic!("{e}"));
    let looping = root.path().join("loop");
    std::os::unix::fs::symlink(&looping, &looping).unwrap_or_else(|e| panic!("{e}"));
    let cases: [(PathBuf, &[&str]); 8] = [
        (fifo.clone(), &["FIFO"]),
        (sock.clone(), &["socket"]),
        (root.path().to_owned(), &["directory"]),
        (PathBuf::from("/dev/zero"), &["character device"]),
        (PathBuf::from("/proc/self/status"), &["empty", "/proc"]),
        (dangling.clone(), &["No such file"]),
        (looping.clone(), &["symbolic links"]),
        (root.path().join("missing"), &["No such file"]),
    ];
    let before = hashes(root.path());
    for (path, words) in &cases {
        let p = arg(path);
        let mut with_path = words.to_vec();
        with_path.push(&p);
        // As a memory file.
        let out = vmm(&["inspect", "--memory", &p, "--cr3", "0x1000"]);
        refused(&out, &with_path);
        assert!(stderr(&out).contains("memory file"), "{}", stderr(&out));
        // As a kernel and as an initrd (named before anything boots or is refused
        // for PVM).
        let out = vmm(&["run", "--kernel", &p, "--force", "--timeout", "5"]);
        refused(&out, &with_path);
        assert!(stderr(&out).contains("kernel"), "{}", stderr(&out));
        unchanged(root.path(), &before);
    }
    let kernel = root.path().join("not-a-kernel");
    std::fs::write(&kernel, [0u8; 8192]).unwrap_or_else(|e| panic!("{e}"));
    let out = vmm(&[
        "run",
        "--kernel",
        &arg(&kernel),
        "--initrd",
        &arg(&fifo),
        "--force",
    ]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(101), "{e}");
    assert!(
        e.contains("not-a-kernel") || (e.contains("initrd") && e.contains("FIFO")),
        "{e}"
    );
}

#[test]
fn snapshot_files_that_are_not_files_are_refused_at_once() {
    let root = scratch("snap-inputs");
    let good = root.path().join("good");
    snapshot_dir(&good, MIB, 2);
    for (file, replace_with) in [
        ("gen-000002.state", "fifo"),
        ("gen-000000.mem", "fifo"),
        ("gen-000001.diff", "fifo"),
        ("gen-000002.state", "dir"),
        ("gen-000000.mem", "dangling"),
    ] {
        let dir = root.path().join(format!("{file}-{replace_with}"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        for e in std::fs::read_dir(&good)
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
        {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap_or_else(|e| panic!("{e}"));
        }
        let target = dir.join(file);
        std::fs::remove_file(&target).unwrap_or_else(|e| panic!("{e}"));
        let word = match replace_with {
            "fifo" => {
                mkfifo(&target);
                "FIFO"
            }
            "dir" => {
                std::fs::create_dir(&target).unwrap_or_else(|e| panic!("{e}"));
                "directory"
            }
            _ => {
                std::os::unix::fs::symlink(root.path().join("nothing"), &target)
                    .unwrap_or_else(|e| panic!("{e}"));
                "No such file"
            }
        };
        let before = hashes(&dir);
        for args in [
            vec!["snapshot", "list"],
            vec!["inspect", "--snapshot"],
            vec!["snapshot", "merge", "-o", "/nonexistent-dir/out.raw"],
        ] {
            let d = arg(&dir);
            let mut argv: Vec<&str> = args.clone();
            argv.insert(2, &d);
            let out = vmm(&argv);
            refused(&out, &[file, word]);
            unchanged(&dir, &before);
        }
    }
}

#[test]
fn damaged_state_files_get_short_exact_messages() {
    let root = scratch("state");
    let dir = root.path().join("S");
    snapshot_dir(&dir, MIB, 1);
    let state = dir.join("gen-000001.state");
    let good = std::fs::read(&state).unwrap_or_else(|e| panic!("{e}"));
    let header_end = good.iter().position(|b| *b == b'\n').unwrap_or(0);
    let header = String::from_utf8_lossy(&good[..header_end]).into_owned();
    let json = &good[header_end + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let with_header = |h: String| {
        let mut v = h.into_bytes();
        v.push(b'\n');
        v.extend_from_slice(json);
        v
    };
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        // A binary blob: quoted short and escaped.
        (
            vec![0xffu8; 100_000],
            &["no header line", "\\xff", "100000 bytes"],
        ),
        // A length that would wrap: refused as a bad header, not a panic.
        (
            with_header(format!(
                "{} {} {} {}",
                fields[0],
                fields[1],
                u64::MAX,
                fields[3]
            )),
            &["bad header line"],
        ),
        // A length larger than the file: truncated.
        (
            with_header(format!(
                "{} {} {} {}",
                fields[0],
                fields[1],
                1u64 << 40,
                fields[3]
            )),
            &["truncated"],
        ),
        // Trailing bytes after the JSON.
        (
            {
                let mut v = good.clone();
                v.extend_from_slice(b"garbage");
                v
            },
            &["8 bytes after its JSON", "garbage"],
        ),
    ];
    for (bytes, words) in cases {
        std::fs::write(&state, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let out = vmm(&["snapshot", "list", &arg(&dir)]);
        let mut w = words.to_vec();
        w.push("gen-000001.state");
        refused(&out, &w);
    }
    // A state file too large to be one is refused by its size, not read.
    let f = std::fs::File::create(&state).unwrap_or_else(|e| panic!("{e}"));
    f.set_len(1 << 30).unwrap_or_else(|e| panic!("{e}"));
    let out = vmm(&["inspect", "--snapshot", &arg(&dir)]);
    refused(&out, &["gen-000001.state", "1073741824 bytes, more than"]);
}

#[test]
fn snapshot_dir_must_be_new_or_empty() {
    let root = scratch("snapdir");
    let dir = root.path().join("mine");
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("notes.txt"), b"keep").unwrap_or_else(|e| panic!("{e}"));
    let e = SnapshotDir::create(&dir)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("notes.txt") && e.contains("not a snapshot file"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(dir.join("notes.txt")).unwrap_or_default(),
        b"keep"
    );
    let file = root.path().join("file");
    std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
    let e = SnapshotDir::create(&file)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("is a regular file, not a directory"), "{e}");
    // A crashed writer's leftovers are ours: cleaned, and the directory is usable.
    let crashed = root.path().join("crashed");
    std::fs::create_dir(&crashed).unwrap_or_else(|e| panic!("{e}"));
    for name in [".gen-000000.mem.ab12cd34.tmp", "gen-000000.mem"] {
        std::fs::write(crashed.join(name), b"x").unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(SnapshotDir::create(&crashed).is_ok());
    assert_eq!(
        std::fs::read_dir(&crashed).map(|d| d.count()).unwrap_or(99),
        0
    );
}

#[test]
fn sigterm_during_a_merge_leaves_no_temporary() {
    let root = scratch("sigterm");
    let snap = root.path().join("S");
    // Large enough that the merge is still writing when the signal comes.
    snapshot_dir(&snap, 256 * MIB, 1);
    let out_dir = root.path().join("out");
    std::fs::create_dir(&out_dir).unwrap_or_else(|e| panic!("{e}"));
    let before = hashes(root.path());
    let target = out_dir.join("merged.raw");
    let mut child = spawn(&["snapshot", "merge", &arg(&snap), "-o", &arg(&target)]);
    // Wait for its temporary to appear, then SIGTERM it.
    let started = Instant::now();
    loop {
        let n = std::fs::read_dir(&out_dir).map(|d| d.count()).unwrap_or(0);
        if n > 0 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the merge never started writing"
        );
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the merge ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(killed);
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "died of SIGTERM: {status:?}");
    unchanged(root.path(), &before);
}

#[test]
fn silently_accepted_inputs_now_have_an_answer() {
    let root = scratch("accepted");
    let mem = root.path().join("mem.raw");
    std::fs::write(&mem, vec![0u8; 0x4000]).unwrap_or_else(|e| panic!("{e}"));
    let m = arg(&mem);
    // `_` only between groups of four hex digits.
    let out = vmm(&["inspect", "--memory", &m, "--cr3", "1_000"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("groups of four"), "{}", stderr(&out));
    let out = vmm(&["inspect", "--memory", &m, "--cr3", "0000_1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Registers no CPU can hold.
    let out = vmm(&["inspect", "--memory", &m, "--cr3", "0", "--efer", "0x400"]);
    refused(&out, &["EFER.LMA is set without EFER.LME"]);
    let out = vmm(&[
        "inspect",
        "--memory",
        &m,
        "--cr3",
        "0",
        "--cr0",
        "0x80000000",
    ]);
    refused(&out, &["CR0.PG is set without CR0.PE"]);
    // Snapshot-only flags with a memory file.
    for flags in [&["--generation", "1"][..], &["--vcpu", "1"]] {
        let mut argv = vec!["inspect", "--memory", &m, "--cr3", "0"];
        argv.extend_from_slice(flags);
        let out = vmm(&argv);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot be used with"),
            "{}",
            stderr(&out)
        );
    }
    // No dirty-scan rounds at all.
    let out = vmm(&["run", "--dirty-scan-every", "10ms", "--rounds", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A dirty ring smaller than a page.
    let out = vmm(&[
        "run",
        "--dirty-scan-every",
        "10ms",
        "--dirty-log",
        "ring",
        "--dirty-ring-size",
        "1K",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("one page"), "{}", stderr(&out));
}

/// Paths of every kind, made once for the CLI fuzz below.
struct Fixture {
    _root: tempfile::TempDir,
    _listener: UnixListener,
    root: PathBuf,
    out: PathBuf,
    paths: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root_dir = scratch("fuzz");
        let root = root_dir.path().to_owned();
        snapshot_dir(&root.join("S"), MIB, 2);
        snapshot_dir(&root.join("Sbad"), MIB, 2);
        let diff = root.join("Sbad/gen-000001.diff");
        let mut bytes = std::fs::read(&diff).unwrap_or_default();
        if let Some(b) = bytes.get_mut(40) {
            *b ^= 1;
        }
        std::fs::write(&diff, bytes).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("mem.raw"), vec![0u8; 0x4000]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("odd.raw"), vec![1u8; 5000]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("zeros.bin"), vec![0u8; 8192]).unwrap_or_else(|e| panic!("{e}"));
        let mut elf = vmm::test_support::tiny_elf_kernel(&[0xf4], None);
        elf[0x12] = 183;
        std::fs::write(root.join("arm.elf"), elf).unwrap_or_else(|e| panic!("{e}"));
        mkfifo(&root.join("fifo"));
        let listener = UnixListener::bind(root.join("sock")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(root.join("dir")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(root.join("mem.raw"), root.join("link"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(root.join("nothing"), root.join("dangling"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(root.join("loop"), root.join("loop"))
            .unwrap_or_else(|e| panic!("{e}"));
        let out = root.join("out");
        std::fs::create_dir(&out).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(out.join("exists.raw"), b"keep").unwrap_or_else(|e| panic!("{e}"));
        let mut paths: Vec<String> = [
            "S",
            "Sbad",
            "S/gen-000000.mem",
            "S/gen-000001.diff",
            "S/gen-000002.state",
            "S/new.raw",
            "mem.raw",
            "odd.raw",
            "zeros.bin",
            "arm.elf",
            "fifo",
            "sock",
            "dir",
            "link",
            "dangling",
            "loop",
            "missing",
            "out/exists.raw",
            "out/new.raw",
            "out",
        ]
        .iter()
        .map(|p| arg(&root.join(p)))
        .collect();
        paths.extend(["/dev/null", "/dev/zero", "/proc/self/status", ""].map(String::from));
        Fixture {
            _root: root_dir,
            _listener: listener,
            root,
            out,
            paths,
        }
    })
}

/// The regular files directly in the fixture's root, as made.
fn originals() -> &'static BTreeMap<PathBuf, Vec<u8>> {
    static ORIGINALS: std::sync::OnceLock<BTreeMap<PathBuf, Vec<u8>>> = std::sync::OnceLock::new();
    ORIGINALS.get_or_init(|| {
        let root = &fixture().root;
        std::fs::read_dir(root)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| Some((e.path(), std::fs::read(e.path()).ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// One random command line over the fixture's paths.
fn command_line() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
    use proptest::prelude::*;
    let path = (0..fixture().paths.len()).prop_map(|i| fixture().paths[i].clone());
    let value = prop_oneof![
        Just("0".to_owned()),
        Just("0x1000".to_owned()),
        Just("1_000".to_owned()),
        Just("ffff_8880_0000_0000".to_owned()),
        Just("ffffffffffffffffff".to_owned()),
        Just("-1".to_owned()),
        Just("".to_owned()),
        Just("0x20".to_owned()),
        Just("0x1020".to_owned()),
        Just("0xd00".to_owned()),
        Just("0x400".to_owned()),
        Just("0x80000000".to_owned()),
        Just("0-".to_owned()),
        Just("1000-0".to_owned()),
        Just("7".to_owned()),
        Just("99".to_owned()),
        "[ -~]{0,12}",
    ];
    let flag = prop_oneof![
        (Just("--memory"), path.clone()).prop_map(|(f, v)| vec![f.to_owned(), v]),
        (Just("--snapshot"), path.clone()).prop_map(|(f, v)| vec![f.to_owned(), v]),
        (Just("--kernel"), path.clone()).prop_map(|(f, v)| vec![f.to_owned(), v]),
        (Just("--initrd"), path.clone()).prop_map(|(f, v)| vec![f.to_owned(), v]),
        (Just("-o"), path.clone()).prop_map(|(f, v)| vec![f.to_owned(), v]),
        (
            prop_oneof![
                Just("--cr3"),
                Just("--cr4"),
                Just("--cr0"),
                Just("--efer"),
                Just("--generation"),
                Just("--vcpu"),
                Just("--range"),
                Just("--budget"),
                Just("--maxphyaddr"),
                Just("--format"),
            ],
            value
        )
            .prop_map(|(f, v)| vec![f.to_owned(), v]),
        prop_oneof![
            Just("--pte-level"),
            Just("--overwrite"),
            Just("--no-gbpages"),
            Just("--force"),
        ]
        .prop_map(|f| vec![f.to_owned()]),
        path.prop_map(|p| vec![p]),
    ];
    let command = prop_oneof![
        Just(vec!["inspect"]),
        Just(vec!["snapshot", "merge"]),
        Just(vec!["snapshot", "list"]),
        Just(vec!["run", "--timeout", "2", "--kernel"]),
    ];
    (command, proptest::collection::vec(flag, 0..6)).prop_map(|(c, flags)| {
        let mut argv: Vec<String> = c.iter().map(|s| (*s).to_owned()).collect();
        argv.extend(flags.into_iter().flatten());
        argv
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: std::env::var("GUESTWALK_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Random command lines over hostile paths: every run ends by itself with a
    /// documented status and a short message, destroys nothing, leaves no temporary.
    #[test]
    fn cli_fuzz_destroys_nothing(argv in command_line()) {
        let f = fixture();
        static BEFORE: std::sync::OnceLock<BTreeMap<PathBuf, u32>> = std::sync::OnceLock::new();
        let before = BEFORE.get_or_init(|| {
            originals();
            hashes(&f.root)
        });
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = vmm(&refs);
        let code = out.status.code();
        proptest::prop_assert!(
            matches!(code, Some(0 | 2 | 3 | 100 | 101)),
            "{argv:?}: status {:?}: {}", out.status, stderr(&out)
        );
        if code != Some(2) {
            proptest::prop_assert!(stderr(&out).len() < 4096, "{argv:?}: {}", stderr(&out));
        }
        // A successful merge may add out/new.raw (or replace out/exists.raw with
        // --overwrite): put the fixture back, then everything must be as before.
        let _ = std::fs::remove_file(f.out.join("new.raw"));
        std::fs::write(f.out.join("exists.raw"), b"keep").unwrap_or_else(|e| panic!("{e}"));
        // With --overwrite a user may replace any regular file they name with -o: put
        // it back too (the snapshot's own files are never replaced: checked below).
        let target = argv.iter().rposition(|a| a == "-o").and_then(|i| argv.get(i + 1));
        if let (Some(target), true) = (target, code == Some(0) && argv.iter().any(|a| a == "--overwrite")) {
            let target = PathBuf::from(target);
            if let Some(bytes) = originals().get(&target) {
                std::fs::write(&target, bytes).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let now = hashes(&f.root);
        proptest::prop_assert_eq!(&now, before, "{:?}: {}", argv, stderr(&out));
    }
}

#[test]
fn a_memory_file_truncated_during_a_walk_is_an_error_naming_it() {
    let root = scratch("truncated");
    let mem = root.path().join("mem.raw");
    // Four tables at the end of a 64 MiB file: every PML4, PDPT and PD entry points to
    // the next table, the PTEs are empty. The walk reads 512^3 PTE tables (holes, nothing
    // printed) until its budget stops it, seconds from now, unless the tables vanish.
    let size = 64 * MIB;
    let tables = size - 4 * 0x1000;
    let file = std::fs::File::create(&mem).unwrap_or_else(|e| panic!("{e}"));
    file.set_len(size).unwrap_or_else(|e| panic!("{e}"));
    for level in 0..3u64 {
        let this = tables + level * 0x1000;
        let entry = (this + 0x1000) | 0x3;
        let page: Vec<u8> = (0..512).flat_map(|_| entry.to_le_bytes()).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &page, this)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    drop(file);
    let cr3 = format!("{tables:#x}");
    let mut child = spawn(&[
        "inspect",
        "--memory",
        &arg(&mem),
        "--cr3",
        &cr3,
        "--budget",
        "34359738368",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().ok().flatten().is_none(),
        "the walk ended before the file was truncated"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .and_then(|f| f.set_len(0x1000))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        assert!(started.elapsed() < DEADLINE, "the walk went on");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    refused(&out, &["mem.raw", "shrank", "from 67108864 to 4096 bytes"]);
}

#[test]
fn snapshots_export_as_elf_cores_that_inspect_reads_back() {
    let root = scratch("elf");
    let snap = root.path().join("S");
    snapshot_dir(&snap, 4 * MIB, 2);
    let core = root.path().join("guest.core");
    let out = vmm(&[
        "snapshot",
        "merge",
        &arg(&snap),
        "--format",
        "elf",
        "-o",
        &arg(&core),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // binutils sees the notes: one NT_PRSTATUS and one QEMU note per vCPU. (binutils is
    // on every machine CI runs on, .ci/run checks; the emulated host has only busybox.)
    match Command::new("readelf").args(["-n", &arg(&core)]).output() {
        Ok(notes) => {
            let notes = String::from_utf8_lossy(&notes.stdout);
            assert!(
                notes.contains("CORE") && notes.contains("NT_PRSTATUS"),
                "{notes}"
            );
            assert!(
                notes.contains("QEMU") && notes.contains("0x000001b8"),
                "{notes}"
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("readelf is not installed here: the notes are checked where it is");
        }
        Err(e) => panic!("readelf: {e}"),
    }
    let info = vmm(&["inspect", "--dump", &arg(&core), "--info"]);
    let text = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.status.success(), "{}", stderr(&info));
    assert!(
        text.contains("format: ELF core")
            && text.contains("cpu 0: CR0 0x80000011 CR3 0x1000 CR4 0x20: 4-level paging")
            && text.contains("GPA 0x000000c00000-0x000000e00000 at file offset 0x201000"),
        "{text}"
    );
    for format in ["tlb", "json", "text"] {
        for split in [false, true] {
            let mut common = vec!["--format", format];
            if split {
                common.push("--pte-level");
            }
            let mut from_dump = vec!["inspect", "--dump"];
            let c = arg(&core);
            from_dump.push(&c);
            from_dump.extend(&common);
            let mut from_snapshot = vec!["inspect", "--snapshot"];
            let s = arg(&snap);
            from_snapshot.push(&s);
            from_snapshot.extend(&common);
            let (a, b) = (vmm(&from_dump), vmm(&from_snapshot));
            assert!(
                a.status.success() && b.status.success(),
                "{}{}",
                stderr(&a),
                stderr(&b)
            );
            assert!(!a.stdout.is_empty());
            // Everything but the text format's `#` header, which names the source.
            let leaves = |o: &Output| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            assert_eq!(leaves(&a), leaves(&b), "{format} split={split}");
        }
    }
}
