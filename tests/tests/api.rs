//! The control API (`vmm::api`) against the built-in guest running on KVM: every endpoint
//! answers what the offline tools say of the same state (the walker over a snapshot taken
//! over the API at the same pause, KVM_TRANSLATE, guest memory), pauses taken for a
//! request end with it, concurrent clients pausing and resuming do not disturb the
//! guest's own checks, hostile clients are dropped while the guest runs on, and the
//! socket is gone when the VMM is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guestwalk_tests::{TIMEOUT, kvm_available, ready, test_memory};
use serde_json::Value;
use vmm::api::{ApiServer, Client, Limits, PAUSED_HEADER, ServeEnd, ServeOptions, WALK_TRAILER};
use vmm::{Console, DirtyLogChoice, ExitOutcome, GuestMode, VmConfig};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("guestwalk-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A built-in guest served on a socket by a VMM thread of its own, as `vmm run
/// --api-socket` serves it. Joining it gives how serving ended and, after a shutdown,
/// the guest's own end (FINISH, then its DONE).
struct Served {
    socket: PathBuf,
    console: Console,
    guest_cr3s: Vec<u64>,
    thread: JoinHandle<(ServeEnd, Option<ExitOutcome>)>,
}

fn serve(dir: &Path, limits: Limits, dirty: bool) -> Served {
    let console = Console::capture();
    let config = VmConfig {
        console: console.clone(),
        memory: test_memory(),
        dirty: dirty.then(|| vmm::DirtyConfig::new(DirtyLogChoice::Auto)),
        ..VmConfig::builtin(GuestMode::Normal)
    };
    let socket = dir.join("api.sock");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let served_socket = socket.clone();
    let thread = std::thread::spawn(move || {
        let vm = vmm::build_vm(&config).unwrap();
        let descriptor = ready(&vm, &config.console);
        let guest_cr3s: Vec<u64> = descriptor.cr3[..descriptor.space_count as usize].to_vec();
        let server = ApiServer::start(&served_socket, vm.waker(), limits).unwrap();
        ready_tx.send(guest_cr3s.clone()).unwrap();
        let end = vmm::api::serve(&vm, &server, ServeOptions { guest_cr3s }).unwrap();
        drop(server);
        let outcome = match end {
            ServeEnd::Shutdown => {
                if vm.is_paused() {
                    vm.resume().unwrap();
                }
                vmm::BuiltinProtocol::finish(&vm);
                Some(vm.wait(TIMEOUT).unwrap())
            }
            ServeEnd::Ended(_) => None,
        };
        (end, outcome)
    });
    let guest_cr3s = ready_rx.recv_timeout(TIMEOUT).unwrap();
    Served {
        socket,
        console,
        guest_cr3s,
        thread,
    }
}

impl Served {
    fn client(&self) -> Client {
        Client::new(&self.socket, TIMEOUT)
    }

    /// Asks for shutdown and checks that the guest then finished its checks with DONE 0
    /// and that the socket is gone.
    fn shut_down(self) {
        let (answer, body) = self
            .client()
            .request_bytes("PUT", "/actions", Some(br#"{"action":"shutdown"}"#))
            .unwrap();
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&body));
        let (end, outcome) = self.thread.join().unwrap();
        assert_eq!(end, ServeEnd::Shutdown);
        assert_eq!(
            outcome,
            Some(ExitOutcome::Done { status: 0 }),
            "console:\n{}",
            String::from_utf8_lossy(&self.console.captured())
        );
        assert!(!self.socket.exists(), "the socket outlived the VMM");
    }
}

fn json(client: &Client, method: &str, uri: &str, body: Option<&str>) -> (u16, Value) {
    let (answer, bytes) = client
        .request_bytes(method, uri, body.map(str::as_bytes))
        .unwrap();
    let bytes = if answer.status == 200 {
        bytes
    } else {
        answer.error_body.clone()
    };
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{method} {uri}: not JSON ({e}): {bytes:?}"));
    (answer.status, value)
}

fn text(
    client: &Client,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (vmm::api::Answer, String) {
    let (answer, bytes) = client
        .request_bytes(method, uri, body.map(str::as_bytes))
        .unwrap();
    (answer, String::from_utf8(bytes).unwrap())
}

#[test]
fn every_endpoint_answers_what_the_offline_tools_say() {
    if !kvm_available("every_endpoint_answers_what_the_offline_tools_say") {
        return;
    }
    let dir = temp_dir("endpoints");
    let served = serve(&dir, Limits::default(), true);
    let client = served.client();

    let (status, vm) = json(&client, "GET", "/vm", None);
    assert_eq!(status, 200);
    assert_eq!(vm["state"], "Running");
    assert_eq!(vm["vcpus"], 1);
    assert_eq!(vm["memory_bytes"], 64 << 20);
    assert_eq!(vm["boot"]["source"], "builtin");
    // 4-level on PVM, 5-level where the host offers LA57 (checked against the snapshot
    // below).
    let mode = vm["paging"][0]["mode"].as_str().unwrap().to_owned();
    assert!(vm["dirty_log"].is_string(), "{vm}");

    // A dirty scan while the guest runs: pages since the API started.
    let (status, scan) = json(&client, "POST", "/dirty/scan", None);
    assert_eq!(status, 200, "{scan}");
    assert_eq!(scan["seq"], 1, "{scan}");

    // Paused by a client: requests find it paused and leave it so.
    let (status, vm) = json(&client, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!((status, &vm["state"]), (200, &Value::from("Paused")));
    let (answer, regs) = text(&client, "GET", "/vcpus/0/registers", None);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header(PAUSED_HEADER), Some("vm"));
    let (_, again) = text(&client, "GET", "/vcpus/0/registers", None);
    assert_eq!(regs, again, "the registers changed while the VM was paused");
    let regs: Value = serde_json::from_str(&regs).unwrap();
    let cr3 = u64::from_str_radix(
        regs["sregs"]["cr3"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();

    // A full snapshot at this pause: the offline truth for everything below.
    let snaps = dir.join("chain");
    let body = format!(r#"{{"dir":{:?},"kind":"full"}}"#, snaps.to_str().unwrap());
    let (status, info) = json(&client, "PUT", "/snapshot/create", Some(&body));
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        (&info["generation"], &info["kind"]),
        (&Value::from(0), &Value::from("Full"))
    );
    let snap = vmm::snapshot::load(&snaps, None).unwrap();
    assert_eq!(snap.state.vcpus[0].sregs.cr3, cr3);
    assert_eq!(snap.state.guest_cr3s, served.guest_cr3s);
    assert_eq!(
        mode,
        format!("{:?}", snap.paging_context(0, None).unwrap().mode())
    );

    // /memory: the root page table by GPA equals the snapshot's (before any KVM_TRANSLATE
    // below: KVM's own walk sets Accessed bits in the guest's entries, as the MMU would).
    let (answer, bytes) = client
        .request_bytes(
            "GET",
            &format!("/memory?gpa={:#x}&len=4096", cr3 & !0xfff),
            None,
        )
        .unwrap();
    assert_eq!(answer.status, 200);
    let mut expected = vec![0u8; 4096];
    vm_memory::Bytes::read_slice(
        snap.memory(),
        &mut expected,
        vm_memory::GuestAddress(cr3 & !0xfff),
    )
    .unwrap();
    let first_difference = bytes.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        bytes.len() == 4096 && first_difference.is_none(),
        "differs at {first_difference:?}"
    );

    // /mappings: exactly what the walker prints of the snapshot, for every address space
    // and format, with the trailer saying it is complete.
    let spaces: Vec<u64> = served.guest_cr3s.clone();
    for space in &spaces {
        for (format, pte_level) in [("text", false), ("tlb", true), ("json", false)] {
            let uri = format!("/mappings?cr3={space:#x}&format={format}&pte_level={pte_level}");
            let (answer, live) = text(&client, "GET", &uri, None);
            assert_eq!(answer.status, 200, "{uri}: {live}");
            assert!(
                answer
                    .trailer(WALK_TRAILER)
                    .is_some_and(|t| t.starts_with("complete")),
                "{uri}: {:?}",
                answer.trailers
            );
            let ctx = snap.paging_context(0, Some(*space)).unwrap();
            let mut offline = Vec::new();
            if format == "text" {
                writeln!(
                    offline,
                    "# address space of CR3 {space:#x}: CR3 {space:#x}, {:?} paging",
                    ctx.mode()
                )
                .unwrap();
            }
            vmm::introspect::print_walk(
                snap.memory(),
                &ctx,
                &vmm::introspect::VaRange::default(),
                if pte_level {
                    walker::Granularity::Split4K
                } else {
                    walker::Granularity::AsMapped
                },
                format.parse().unwrap(),
                walker::WalkOptions::default(),
                &mut offline,
            )
            .unwrap();
            assert_eq!(live, String::from_utf8(offline).unwrap(), "{uri}");
        }
    }

    // Nothing above wrote guest memory: all of RAM, read over the API, hashes as the
    // snapshot taken at this pause.
    let mut ram = Vec::with_capacity(64 << 20);
    let chunk = vmm::api::request::MAX_MEMORY_READ;
    for at in (0..64u64 << 20).step_by(chunk as usize) {
        let (answer, bytes) = client
            .request_bytes("GET", &format!("/memory?gpa={at:#x}&len={chunk}"), None)
            .unwrap();
        assert_eq!(answer.status, 200);
        ram.extend_from_slice(&bytes);
    }
    let snap_ram = {
        let mut all = vec![0u8; 64 << 20];
        vm_memory::Bytes::read_slice(snap.memory(), &mut all, vm_memory::GuestAddress(0)).unwrap();
        all
    };
    assert!(
        ram == snap_ram,
        "guest RAM changed while the VM was paused and walked"
    );

    // /translate: every leaf of the vCPU's space (4 KiB steps over small leaves, the
    // first and last page of huge ones) plus holes, in one batch, against the offline
    // walker and KVM_TRANSLATE.
    let ctx = snap.paging_context(0, None).unwrap();
    let mut gvas = Vec::new();
    walker::for_each_mapping(
        snap.memory(),
        &ctx,
        walker::Gva(0)..=walker::Gva(u64::MAX),
        walker::Granularity::AsMapped,
        walker::WalkOptions::default(),
        |m| -> Result<(), ()> {
            if let walker::Mapping::Leaf(leaf) = m {
                gvas.push(leaf.va.0);
                gvas.push(leaf.va.0 + leaf.size.bytes() - 8);
                gvas.push(leaf.va.0 + leaf.size.bytes());
            }
            Ok(())
        },
    )
    .unwrap();
    gvas.extend([0, 0x1000, 0x8000_0000_0000, 0xffff_ffff_ffff_f000]);
    let body = serde_json::json!({
        "vcpu": 0,
        "check_kvm": true,
        "gvas": gvas.iter().map(|g| format!("{g:#x}")).collect::<Vec<_>>(),
    })
    .to_string();
    let (answer, lines) = text(&client, "POST", "/translate", Some(&body));
    assert_eq!(answer.status, 200, "{lines}");
    let lines: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), gvas.len());
    let mut translated = 0;
    for (gva, line) in gvas.iter().zip(&lines) {
        let ours = walker::translate(snap.memory(), &ctx, walker::Gva(*gva));
        let mut expected = vmm::introspect::translation_line(
            walker::Gva(*gva),
            &ours,
            vmm::introspect::Format::Json,
        );
        expected.pop();
        let mut line = line.clone();
        assert_eq!(line["kvm_verdict"], "agrees", "{gva:#x}: {line}");
        let map = line.as_object_mut().unwrap();
        map.remove("kvm_verdict");
        map.remove("kvm_translate");
        let expected: Value = serde_json::from_str(&format!("{expected}}}")).unwrap();
        assert_eq!(line, expected, "{gva:#x}");
        translated += usize::from(ours.is_ok());
    }
    assert!(
        translated > 10,
        "only {translated} of {} addresses translate",
        gvas.len()
    );

    // /memory: a mapped GVA reads the bytes of its translation; a range into an unmapped
    // page names that page.
    let leaf = lines.iter().find(|l| l["kind"] == "translation").unwrap();
    let (va, pa) = (leaf["va"].as_str().unwrap(), leaf["pa"].as_str().unwrap());
    let (_, by_gva) = client
        .request_bytes("GET", &format!("/memory?gva={va}&len=64"), None)
        .unwrap();
    let (_, by_gpa) = client
        .request_bytes("GET", &format!("/memory?gpa={pa}&len=64"), None)
        .unwrap();
    assert!(
        by_gva.len() == 64 && by_gva == by_gpa,
        "{va} and {pa} read differently"
    );
    // A mapped page followed by an unmapped one: reading across names the second.
    let mapped = |g: u64| walker::translate(snap.memory(), &ctx, walker::Gva(g)).is_ok();
    let hole = gvas
        .iter()
        .map(|g| g & !0xfff)
        .find(|g| *g >= 0x1000 && !mapped(*g) && mapped(*g - 0x1000))
        .unwrap();
    let (status, e) = json(
        &client,
        "GET",
        &format!("/memory?gva={:#x}&len=8192", hole - 0x1000),
        None,
    );
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains(&format!("page {hole:#x}")),
        "{e}"
    );
    let (status, e) = json(&client, "GET", "/memory?gpa=0x7fffffffffff&len=16", None);
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("not all guest RAM"),
        "{e}"
    );

    // Out-of-range vCPUs, bad bodies: 4xx with a message.
    let (status, e) = json(&client, "GET", "/vcpus/7/registers", None);
    assert_eq!(status, 400);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("vCPU 7 does not exist"),
        "{e}"
    );
    let (status, e) = json(&client, "POST", "/translate", Some(r#"{"gvas":["0xgg"]}"#));
    assert_eq!(status, 400, "{e}");

    // Resumed: a diff of the chain, then a second scan, both after the guest ran on.
    let (_, vm) = json(&client, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(vm["state"], "Running");
    std::thread::sleep(Duration::from_millis(100));
    let body = format!(r#"{{"dir":{:?},"kind":"diff"}}"#, snaps.to_str().unwrap());
    let (status, info) = json(&client, "PUT", "/snapshot/create", Some(&body));
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        (&info["generation"], &info["kind"]),
        (&Value::from(1), &Value::from("Diff"))
    );
    assert!(info["pages"].as_u64().unwrap() > 0, "{info}");
    let (answer, _) = text(&client, "GET", "/vcpus/0/registers", None);
    assert_eq!(answer.header(PAUSED_HEADER), Some("request"));
    let (_, scan) = json(&client, "POST", "/dirty/scan", None);
    assert_eq!(scan["seq"], 2, "{scan}");
    // A full snapshot into the chain's directory, a diff into a new one: refused.
    let (status, e) = json(
        &client,
        "PUT",
        "/snapshot/create",
        Some(&body.replace("diff", "full")),
    );
    assert_eq!(status, 409, "{e}");
    let other = format!(
        r#"{{"dir":{:?},"kind":"diff"}}"#,
        dir.join("other").to_str().unwrap()
    );
    let (status, e) = json(&client, "PUT", "/snapshot/create", Some(&other));
    assert_eq!(status, 409, "{e}");
    // The diff generation is a valid chain that resumes to DONE.
    let (restored, _) = vmm::restore::restore_vm(&vmm::restore::RestoreConfig {
        dir: snaps.clone(),
        generation: Some(1),
        memory: vmm::snapshot::MemoryLoad::Lazy,
        console: Console::capture(),
        dirty: None,
        paused: false,
    })
    .unwrap();
    vmm::BuiltinProtocol::finish(&restored);
    assert_eq!(
        restored.wait(TIMEOUT).unwrap(),
        ExitOutcome::Done { status: 0 }
    );
    drop(restored);

    served.shut_down();
}

#[test]
fn pause_and_resume_from_four_clients_while_the_guest_checks() {
    if !kvm_available("pause_and_resume_from_four_clients_while_the_guest_checks") {
        return;
    }
    let dir = temp_dir("concurrent");
    let served = serve(&dir, Limits::default(), false);
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let client = served.client();
            std::thread::spawn(move || {
                for n in 0..250 {
                    let state = if (n + i) % 2 == 0 {
                        "Paused"
                    } else {
                        "Resumed"
                    };
                    let body = format!(r#"{{"state":"{state}"}}"#);
                    let (answer, reply) = client
                        .request_bytes("PATCH", "/vm", Some(body.as_bytes()))
                        .unwrap();
                    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&reply));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    eprintln!("1000 PATCH /vm from 4 clients in {:.2?}", started.elapsed());
    // Left running, and the guest's own checks passed all along (DONE 0 at the end).
    let client = served.client();
    let _ = json(&client, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    let (_, vm) = json(&client, "GET", "/vm", None);
    assert_eq!(vm["state"], "Running");
    served.shut_down();
}

#[test]
fn hostile_clients_are_dropped_and_the_guest_runs_on() {
    if !kvm_available("hostile_clients_are_dropped_and_the_guest_runs_on") {
        return;
    }
    let dir = temp_dir("hostile");
    let limits = Limits {
        head_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        stall_timeout: Duration::from_millis(500),
        max_body_bytes: 1 << 20,
        ..Limits::default()
    };
    let served = serve(&dir, limits, false);
    let client = served.client();

    // Mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&served.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // An oversized body: 413 as soon as its length is declared, or when what arrives
    // passes the limit (chunked); either way before the rest is read.
    let mut raw = UnixStream::connect(&served.socket).unwrap();
    let declared = (1 << 20) + 1;
    raw.write_all(
        format!("POST /translate HTTP/1.1\r\nhost: x\r\ncontent-length: {declared}\r\n\r\n{{")
            .as_bytes(),
    )
    .unwrap();
    let mut reply = String::new();
    let _ = raw.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:?}");
    let mut raw = UnixStream::connect(&served.socket).unwrap();
    raw.write_all(b"POST /translate HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b' '; 64 << 10];
    let mut sent = 0;
    while sent <= 1 << 20 {
        let head = format!("{:x}\r\n", chunk.len());
        if raw.write_all(head.as_bytes()).is_err()
            || raw.write_all(&chunk).is_err()
            || raw.write_all(b"\r\n").is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let mut reply = String::new();
    let _ = raw.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:?}");

    // Too many headers, and a head too large: refused by the HTTP layer.
    let mut raw = UnixStream::connect(&served.socket).unwrap();
    let mut head = String::from("GET /vm HTTP/1.1\r\nhost: x\r\n");
    for i in 0..100 {
        head.push_str(&format!("x-{i}: y\r\n"));
    }
    head.push_str("\r\n");
    raw.write_all(head.as_bytes()).unwrap();
    let mut reply = String::new();
    let _ = raw.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");

    // A slow client (half a request head) and a silent one are dropped after the head
    // timeout; a body that never comes is a 408.
    let slow_started = Instant::now();
    let mut slow = UnixStream::connect(&served.socket).unwrap();
    slow.write_all(b"GET /vm HTT").unwrap();
    let mut silent = UnixStream::connect(&served.socket).unwrap();
    let mut sink = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = slow.read_to_end(&mut sink);
    let _ = silent.read_to_end(&mut sink);
    assert!(
        slow_started.elapsed() < Duration::from_secs(4),
        "slow clients were kept"
    );
    let mut stalled = UnixStream::connect(&served.socket).unwrap();
    stalled
        .write_all(b"PATCH /vm HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .unwrap();
    let mut reply = String::new();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stalled.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");

    // A client that goes away in the middle of a large walk, and one that stops reading:
    // the pause taken for them ends, the VM runs.
    for read_some in [true, false] {
        let mut walk = UnixStream::connect(&served.socket).unwrap();
        walk.write_all(b"GET /mappings?pte_level=true&format=json HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        if read_some {
            let mut first = [0u8; 4096];
            walk.read_exact(&mut first).unwrap();
            drop(walk);
        } else {
            std::thread::sleep(Duration::from_secs(2));
            drop(walk);
        }
        let (_, vm) = json(&client, "GET", "/vm", None);
        assert_eq!(vm["state"], "Running", "a walk's pause outlived its client");
        let (answer, _) = text(&client, "GET", "/vcpus/0/registers", None);
        assert_eq!(answer.header(PAUSED_HEADER), Some("request"));
    }

    // 100 connections at once: those over the limit are closed; the API still answers.
    let many: Vec<UnixStream> = (0..100)
        .filter_map(|_| UnixStream::connect(&served.socket).ok())
        .collect();
    assert!(!many.is_empty());
    drop(many);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.request_bytes("GET", "/vm", None) {
            Ok((answer, _)) if answer.status == 200 => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("the API does not answer after 100 connections: {other:?}"),
        }
    }

    // Garbage instead of HTTP.
    let mut junk = UnixStream::connect(&served.socket).unwrap();
    junk.write_all(&[0xff; 300]).unwrap();
    let mut reply = Vec::new();
    let _ = junk.read_to_end(&mut reply);
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 400"),
        "{reply:?}"
    );

    served.shut_down();
}

#[test]
fn the_socket_path_is_guarded() {
    if !kvm_available("the_socket_path_is_guarded") {
        return;
    }
    let dir = temp_dir("guard");
    let served = serve(&dir, Limits::default(), false);
    // A second VMM on the same path is refused; the first still answers.
    let vm = vmm::build_vm(&VmConfig {
        memory: test_memory(),
        console: Console::capture(),
        ..VmConfig::builtin(GuestMode::Normal)
    })
    .unwrap();
    let e = ApiServer::start(&served.socket, vm.waker(), Limits::default()).unwrap_err();
    assert!(e.to_string().contains("listening"), "{e}");
    drop(vm);
    let (status, _) = json(&served.client(), "GET", "/vm", None);
    assert_eq!(status, 200);
    served.shut_down();
}
