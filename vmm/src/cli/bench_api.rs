//! `vmm bench --api`: the control API's costs on the built-in guest, each against a
//! baseline measured in the same run (see the README, "Control API").

use super::*;
use vmm::api::{ApiServer, Client, Limits, ServeOptions};

/// What the client thread measured.
struct Measured {
    /// Each batched translation over the socket.
    batches: Vec<Duration>,
    /// Each pause + registers + walk + resume cycle.
    cycles: Vec<Duration>,
    /// Each of the four requests of the cycles, by position.
    steps: [Vec<Duration>; 4],
    /// Guest iterations per second: (unpolled, polled at 100 Hz) per window pair.
    rates: Vec<(f64, f64)>,
}

pub(super) fn bench_api(args: &BenchArgs, timeout: Duration) -> anyhow::Result<ExitCode> {
    let runs = args.runs as usize;
    let batch = args.api_addresses as usize;
    let vm = boot(&args.boot, Console::capture())?;
    if let Err(code) = ready_or_end(&vm, timeout)? {
        return Ok(code);
    }
    // In process, on the paused VM: the same addresses translated, and the walk alone.
    let states = vm.pause().context("pausing")?;
    let ctx = vm.paging_context(&states[0], None)?;
    let gvas = address_mix(vm.guest_memory(), &ctx, batch);
    let mem = vm.guest_memory();
    let translate_in_process = crate::bench::median(runs.max(3), || {
        let mut line = String::with_capacity(256);
        for gva in &gvas {
            line.clear();
            let t = walker::translate(mem, &ctx, *gva);
            vmm::introspect::push_translation_json(&mut line, *gva, &t);
            std::hint::black_box(&line);
        }
    });
    let walk_in_process = crate::bench::median(runs.max(3), || {
        let mut out = Vec::new();
        let _ = print_walk(
            mem,
            &ctx,
            &VaRange::default(),
            Granularity::AsMapped,
            Format::Text,
            WalkOptions::default(),
            &mut out,
        );
        std::hint::black_box(out);
    });
    vm.resume().context("resuming")?;

    let dir = tempfile::Builder::new()
        .prefix("vmm-bench-api-")
        .tempdir()
        .context("a directory for the bench's socket")?;
    let socket = dir.path().join("api.sock");
    let server = ApiServer::start(&socket, vm.waker(), Limits::default())?;
    let body = serde_json::json!({
        "vcpu": 0,
        "gvas": gvas.iter().map(|g| format!("{:#x}", g.0)).collect::<Vec<_>>(),
    })
    .to_string();
    let client = Client::new(&socket, timeout);
    let cycles = (runs * 5).max(50);
    let measuring = std::thread::spawn(move || measure_client(&client, &body, batch, runs, cycles));
    let end = vmm::api::serve(&vm, &server, ServeOptions::default())?;
    drop(server);
    let measured = measuring
        .join()
        .map_err(|_| anyhow::anyhow!("the measuring client panicked"))??;
    if !matches!(end, vmm::api::ServeEnd::Shutdown) {
        bail!("the guest ended during the measurements: {end:?}");
    }

    let mut batches = measured.batches.clone();
    batches.sort();
    let rate = |t: Duration| batch as f64 / t.as_secs_f64() / 1e6;
    println!(
        "api translate {batch} addresses over the socket: median {:.2?} = {:.2} M addresses/s (runs {}); in process (translate + JSON line) {:.2?} = {:.2} M/s; socket / in-process time {:.2}x",
        batches[batches.len() / 2],
        rate(batches[batches.len() / 2]),
        measured
            .batches
            .iter()
            .map(|t| format!("{:.2}", rate(*t)))
            .collect::<Vec<_>>()
            .join(" "),
        translate_in_process,
        rate(translate_in_process),
        batches[batches.len() / 2].as_secs_f64() / translate_in_process.as_secs_f64()
    );
    let mut c = measured.cycles.clone();
    c.sort();
    let pct = |p: usize| c[(c.len() * p / 100).min(c.len() - 1)];
    let over = |t: Duration| t.saturating_sub(walk_in_process);
    println!(
        "api pause + registers + walk + resume (4 requests): p50 {:.2?}, p90 {:.2?} over {} cycles; the walk alone in process {:.2?}; socket and VMM overhead p50 {:.2?}, p90 {:.2?}",
        pct(50),
        pct(90),
        c.len(),
        walk_in_process,
        over(pct(50)),
        over(pct(90))
    );
    let step_p50 = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "api   of which p50: PATCH Paused {:.2?}, GET registers {:.2?}, GET /mappings {:.2?}, PATCH Resumed {:.2?}",
        step_p50(&measured.steps[0]),
        step_p50(&measured.steps[1]),
        step_p50(&measured.steps[2]),
        step_p50(&measured.steps[3])
    );
    let ratios: Vec<f64> = measured.rates.iter().map(|(q, p)| p / q).collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "api guest loop rate while GET /vm is polled at 100 Hz / unpolled: median {:.4} (pairs of 1 s windows: {}); slowdown {:.2}%",
        sorted[sorted.len() / 2],
        ratios
            .iter()
            .map(|r| format!("{r:.4}"))
            .collect::<Vec<_>>()
            .join(" "),
        (1.0 - sorted[sorted.len() / 2]) * 100.0
    );
    if vm.is_paused() {
        vm.resume().context("resuming")?;
    }
    finish(&vm, timeout)
}

/// The client's side: batched translations, request cycles, loop rates; then shutdown.
fn measure_client(
    client: &Client,
    body: &str,
    batch: usize,
    runs: usize,
    cycles: usize,
) -> anyhow::Result<Measured> {
    let result = (|| {
        let mut batches = Vec::new();
        for _ in 0..runs.max(3) {
            let t = Instant::now();
            let mut lines = LineCounter(0);
            let answer = client.request("POST", "/translate", Some(body.as_bytes()), &mut lines)?;
            batches.push(t.elapsed());
            if answer.status != 200 || lines.0 != batch {
                bail!(
                    "translate answered {} with {} lines",
                    answer.status,
                    lines.0
                );
            }
        }
        let mut times = Vec::new();
        let mut steps: [Vec<Duration>; 4] = Default::default();
        for _ in 0..cycles {
            let t = Instant::now();
            for (step, (method, uri, body)) in [
                ("PATCH", "/vm", Some(&br#"{"state":"Paused"}"#[..])),
                ("GET", "/vcpus/0/registers", None),
                ("GET", "/mappings", None),
                ("PATCH", "/vm", Some(&br#"{"state":"Resumed"}"#[..])),
            ]
            .into_iter()
            .enumerate()
            {
                let s = Instant::now();
                let (answer, _) = client.request_bytes(method, uri, body)?;
                steps[step].push(s.elapsed());
                if answer.status != 200 {
                    bail!("{method} {uri} answered {}", answer.status);
                }
            }
            times.push(t.elapsed());
        }
        let mut rates = Vec::new();
        for _ in 0..runs.clamp(2, 20) {
            let quiet = loop_rate(client, Duration::from_secs(1), false)?;
            let polled = loop_rate(client, Duration::from_secs(1), true)?;
            rates.push((quiet, polled));
        }
        Ok(Measured {
            batches,
            cycles: times,
            steps,
            rates,
        })
    })();
    // However it went, the VMM is told to stop.
    let _ = client.request_bytes("PUT", "/actions", Some(br#"{"action":"shutdown"}"#));
    result
}

/// The built-in guest's iterations per second over `window` (its loop counter is R12),
/// with or without a client polling GET /vm at 100 Hz meanwhile.
fn loop_rate(client: &Client, window: Duration, poll: bool) -> anyhow::Result<f64> {
    let r12 = || -> anyhow::Result<(u64, Instant)> {
        let (_, body) = client.request_bytes("GET", "/vcpus/0/registers", None)?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let text = v["regs"]["r12"].as_str().unwrap_or("");
        let value = parse_hex(text).with_context(|| format!("R12 {text:?}"))?;
        Ok((value, Instant::now()))
    };
    let (start, t0) = r12()?;
    let end = t0 + window;
    let mut next = t0;
    while Instant::now() < end {
        if poll {
            next += Duration::from_millis(10);
            let (answer, _) = client.request_bytes("GET", "/vm", None)?;
            if answer.status != 200 {
                bail!("GET /vm answered {}", answer.status);
            }
        } else {
            next = end;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let (stop, t1) = r12()?;
    Ok(stop.wrapping_sub(start) as f64 / (t1 - t0).as_secs_f64())
}

/// Counts the lines of an answer without keeping it.
struct LineCounter(usize);

impl Write for LineCounter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0 += data.iter().filter(|b| **b == b'\n').count();
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `count` addresses: every page of every leaf of `ctx` in turn (the last byte of a
/// huge leaf's pages too), and the page after each leaf, which is often a hole, over and
/// over.
fn address_mix<M: GuestMemoryBackend>(mem: &M, ctx: &PagingContext, count: usize) -> Vec<Gva> {
    let mut base = Vec::new();
    let _ = walker::for_each_mapping(
        mem,
        ctx,
        Gva(0)..=Gva(u64::MAX),
        Granularity::AsMapped,
        WalkOptions::default(),
        |m| {
            if let walker::Mapping::Leaf(leaf) = m {
                let pages = (leaf.size.bytes() / 4096).min(64);
                for p in 0..pages {
                    base.push(Gva(leaf.va.0 + p * 4096 + 8));
                }
                base.push(Gva(leaf.va.0.wrapping_add(leaf.size.bytes())));
            }
            Ok::<(), ()>(())
        },
    );
    if base.is_empty() {
        base.push(Gva(0));
    }
    base.iter().copied().cycle().take(count).collect()
}
