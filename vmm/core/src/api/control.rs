//! The VMM thread's side of the API: [`serve`] runs a VM until it ends or a client asks
//! for shutdown, answering each request in turn.
//!
//! One thread owns the VM and answers every request, so requests never interleave: a
//! request that needs the vCPUs paused ([`ApiRequest::needs_pause`]) pauses them, is
//! answered, and resumes them, unless a client paused the VM (`PATCH /vm`), which then
//! stays paused. However a request ends (answered, failed, its client gone mid-stream),
//! the pause it took ends with it.
//!
//! The dirty log has one reader here, the dirty ledger: every fetch is added to what each
//! user has not yet seen (the dirty scans, and each snapshot chain this VMM writes), so
//! a scan never steals pages from a chain's next diff, nor a chain from another.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{Bytes as _, GuestAddress, GuestMemoryBackend as _};
use walker::{DirtyBitmap, Granularity, Gva, PagingContext, WalkOptions};

use super::request::{ApiError, ApiRequest, MemoryAt, RunState, SnapshotRequestKind, Space};
use super::server::{ApiServer, Job, PAUSED_HEADER, Responder, WALK_TRAILER};
use crate::dirty::DirtySet;
use crate::events::VmEvent;
use crate::introspect::{
    Format, OracleVerdict, PrintError, address_space_header, kvm_comparison_text, oracle_verdict,
    print_walk, push_translation_json, push_translation_text,
};
use crate::snapshot::{SnapshotDir, SnapshotInfo};
use crate::vcpu::VcpuState;
use crate::vm::{ExitOutcome, Vm, VmError};

/// What [`serve`] needs beyond the VM.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Address spaces a snapshot records beside the vCPUs' (the built-in guest's, from its
    /// descriptor).
    pub guest_cr3s: Vec<u64>,
}

/// How [`serve`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeEnd {
    /// A client asked for shutdown (`PUT /actions`); the VM still runs (or is paused).
    Shutdown,
    /// The VM ended by itself.
    Ended(ExitOutcome),
}

/// Runs `vm` until it ends or a client of `server` asks for shutdown, answering requests.
/// With dirty logging, the first `POST /dirty/scan` reports what the guest dirtied from
/// here on.
pub fn serve(vm: &Vm, server: &ApiServer, options: ServeOptions) -> Result<ServeEnd, VmError> {
    let mut control = Controller::new(vm, options)?;
    loop {
        let mut answered = false;
        while let Some(job) = server.try_next() {
            control.answer(job);
            answered = true;
        }
        // Clients send requests in bursts (pause, registers, walk, resume): the next
        // one is looked for a little while before this thread sleeps. Waking it costs
        // up to a scheduler tick on a host where a running vCPU holds its core (PVM).
        if answered
            && !control.shutdown
            && let Some(job) = linger_for_next(server)
        {
            control.answer(job);
            continue;
        }
        if control.shutdown {
            return Ok(ServeEnd::Shutdown);
        }
        if let Some(outcome) = vm.outcome() {
            return Ok(ServeEnd::Ended(outcome));
        }
        match vm.wait_event(Duration::from_secs(1)) {
            // A vCPU that parks itself (the built-in guest's park mode, a Linux
            // process's signal) is let go: nobody here waits for it.
            Ok(VmEvent::Parked { vcpu, .. }) if !control.user_paused => {
                vm.resume_vcpu(vcpu)?;
            }
            Ok(_) | Err(VmError::Timeout(_)) => {}
            Err(e) => return Err(e),
        }
    }
}

/// How long [`serve`] looks for a client's next request after answering one.
const NEXT_REQUEST_LINGER: Duration = Duration::from_micros(300);

/// The next job, if one arrives within [`NEXT_REQUEST_LINGER`] (yielding the CPU while
/// looking: the HTTP thread may need it to parse the request).
fn linger_for_next(server: &ApiServer) -> Option<Job> {
    let until = Instant::now() + NEXT_REQUEST_LINGER;
    while Instant::now() < until {
        if let Some(job) = server.try_next() {
            return Some(job);
        }
        std::thread::yield_now();
    }
    None
}

/// One user of the dirty log: the pages dirtied since it last took them.
#[derive(Debug, Default)]
struct Unseen {
    bitmaps: Vec<DirtyBitmap>,
    vmm_pages: u64,
}

impl Unseen {
    fn add(&mut self, set: &DirtySet) {
        for b in &set.bitmaps {
            match self.bitmaps.iter_mut().find(|mine| mine.base() == b.base()) {
                Some(mine) => mine.merge(b),
                None => self.bitmaps.push(b.clone()),
            }
        }
        self.vmm_pages += set.vmm_pages;
    }
}

/// A snapshot chain this VMM writes.
#[derive(Debug)]
struct Chain {
    dir: SnapshotDir,
    /// The directory as resolved when the chain began (how requests name it).
    canonical: PathBuf,
    unseen: Unseen,
}

/// The dirty log's users (see the module docs).
#[derive(Debug, Default)]
struct DirtyLedger {
    scans: Unseen,
    scan_seq: u64,
    chains: Vec<Chain>,
}

impl DirtyLedger {
    /// Fetches the log (pause first) and gives the pages to every user.
    fn fetch(&mut self, vm: &Vm) -> Result<(), crate::dirty::DirtyError> {
        let set = vm.fetch_dirty()?;
        self.scans.add(&set);
        for chain in &mut self.chains {
            chain.unseen.add(&set);
        }
        Ok(())
    }
}

struct Controller<'a> {
    vm: &'a Vm,
    options: ServeOptions,
    user_paused: bool,
    shutdown: bool,
    dirty: DirtyLedger,
    /// The vCPUs' states at the last pause, and when (what `GET /vm` reports).
    last_states: Option<(std::time::Instant, Vec<VcpuState>)>,
}

/// How old the vCPU states `GET /vm` reports may be before it pauses to read them
/// again: polling it costs the guest at most one pause a second.
const VM_STATES_MAX_AGE: Duration = Duration::from_secs(1);

/// How a request paused the VM: `request` or `vm` ([`PAUSED_HEADER`]).
struct Pause {
    states: Vec<VcpuState>,
    took: bool,
}

impl<'a> Controller<'a> {
    fn new(vm: &'a Vm, options: ServeOptions) -> Result<Self, VmError> {
        let user_paused = vm.is_paused();
        let mut control = Self {
            vm,
            options,
            user_paused,
            shutdown: false,
            dirty: DirtyLedger::default(),
            last_states: None,
        };
        // What was dirtied before serving (boot, a restore) is nobody's news.
        if vm.dirty_log_backend().is_some() {
            let pause = control.pause()?;
            let _ = vm.fetch_dirty();
            control.release(pause)?;
        }
        Ok(control)
    }

    fn pause(&mut self) -> Result<Pause, VmError> {
        let took = !self.vm.is_paused();
        let states = self.vm.pause()?;
        self.last_states = Some((std::time::Instant::now(), states.clone()));
        Ok(Pause { states, took })
    }

    fn release(&self, pause: Pause) -> Result<(), VmError> {
        if pause.took {
            self.vm.resume()?;
        }
        Ok(())
    }

    /// Answers one job; the pause it took (if any) ends however it ends.
    fn answer(&mut self, job: Job) {
        let Job {
            request,
            trailers,
            mut reply,
        } = job;
        if !request.needs_pause() {
            // The vCPUs are let run only once the answer is out: on a busy host a
            // running vCPU can delay this thread by a scheduler tick.
            let mut release = None;
            match self.answer_unpaused(request, &mut release) {
                Ok((status, json)) => reply.json(status, json),
                Err(e) => reply.error(&e),
            }
            if let Some(pause) = release {
                self.release_or_stop(pause);
            }
            return;
        }
        let pause = match self.pause() {
            Ok(p) => p,
            Err(e) => {
                return reply.error(&ApiError::internal(format!("pausing the vCPUs: {e}")));
            }
        };
        reply.header(PAUSED_HEADER, if pause.took { "request" } else { "vm" });
        self.answer_paused(request, &pause.states, trailers, reply);
        self.release_or_stop(pause);
    }

    /// Ends a pause; a VM that cannot run on ends serving, as a VM that ended.
    fn release_or_stop(&mut self, pause: Pause) {
        if let Err(e) = self.release(pause) {
            eprintln!("vmm: resuming the vCPUs after an API request failed: {e}");
            self.shutdown = true;
        }
    }

    /// Requests answered without a pause of their own; `release` gets the pause to end
    /// once the answer is sent.
    fn answer_unpaused(
        &mut self,
        request: ApiRequest,
        release: &mut Option<Pause>,
    ) -> Result<(u16, String), ApiError> {
        match request {
            ApiRequest::GetVm => {
                let fresh = self
                    .last_states
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() < VM_STATES_MAX_AGE);
                if !fresh {
                    let pause = self.pause().map_err(internal("pausing the vCPUs"))?;
                    *release = Some(pause);
                }
                let states = self
                    .last_states
                    .as_ref()
                    .map(|(_, states)| states.clone())
                    .unwrap_or_default();
                Ok((200, self.vm_json(&states)))
            }
            ApiRequest::SetState(state) => {
                // The answer describes the vCPUs as this pause found them (a resume:
                // as they are now, paused): no second pause.
                let states = self.pause().map_err(internal("pausing the vCPUs"))?.states;
                self.user_paused = state == RunState::Paused;
                let json = self.vm_json(&states);
                if !self.user_paused {
                    *release = Some(Pause { states, took: true });
                }
                Ok((200, json))
            }
            ApiRequest::Shutdown => {
                self.shutdown = true;
                Ok((200, serde_json::json!({ "shutdown": true }).to_string()))
            }
            other => Err(ApiError::internal(format!(
                "{other:?} was answered without a pause"
            ))),
        }
    }

    /// `GET /vm`'s answer; the paging mode and CR3 of each vCPU come from its registers
    /// in `states`, read at the last pause (`paging_age_us` says how long ago: `GET
    /// /vm` pauses for them only when they are older than [`VM_STATES_MAX_AGE`]).
    fn vm_json(&self, states: &[VcpuState]) -> String {
        let paging: Vec<serde_json::Value> = states
            .iter()
            .map(|s| {
                let mode = match self.vm.paging_context(s, None) {
                    Ok(ctx) => format!("{:?}", ctx.mode()),
                    Err(walker::ContextError::PagingDisabled { .. }) => "off".into(),
                    Err(e) => format!("unusable: {e}"),
                };
                serde_json::json!({
                    "vcpu": s.index,
                    "mode": mode,
                    "cr3": hex(s.cr3),
                    "finished": s.finished,
                })
            })
            .collect();
        let boot = self.vm.boot_record();
        serde_json::json!({
            "state": if self.user_paused { "Paused" } else { "Running" },
            "vcpus": self.vm.vcpu_count(),
            "memory_bytes": boot.memory_bytes,
            "boot": boot,
            "paging": paging,
            "paging_age_us": self
                .last_states
                .as_ref()
                .map_or(0, |(at, _)| at.elapsed().as_micros() as u64),
            "dirty_log": self.vm.dirty_log_backend().map(|b| b.to_string()),
        })
        .to_string()
    }

    fn answer_paused(
        &mut self,
        request: ApiRequest,
        states: &[VcpuState],
        trailers: bool,
        reply: Responder,
    ) {
        let result = match request {
            ApiRequest::Registers { vcpu } => self.registers(states, vcpu).map(|j| (200, j)),
            ApiRequest::Translate {
                space,
                gvas,
                check_kvm,
                format,
            } => return self.translate(states, space, &gvas, check_kvm, format, reply),
            ApiRequest::Mappings {
                space,
                range,
                pte_level,
                format,
            } => {
                return self.mappings(states, space, &range, pte_level, format, trailers, reply);
            }
            ApiRequest::Memory { at, len } => match self.memory(states, at, len) {
                Ok(bytes) => return reply.bytes(200, "application/octet-stream", bytes),
                Err(e) => Err(e),
            },
            ApiRequest::DirtyScan { text } => match self.dirty_scan(states) {
                Ok(report) if text => {
                    return reply.bytes(200, "text/plain; charset=utf-8", report.to_text().into());
                }
                Ok(report) => Ok((200, report.to_json())),
                Err(e) => Err(e),
            },
            ApiRequest::Snapshot { dir, kind } => {
                self.snapshot(states, &dir, kind).map(|j| (200, j))
            }
            other => Err(ApiError::internal(format!(
                "{other:?} was answered with a pause"
            ))),
        };
        match result {
            Ok((status, json)) => reply.json(status, json),
            Err(e) => reply.error(&e),
        }
    }

    fn state<'s>(&self, states: &'s [VcpuState], vcpu: usize) -> Result<&'s VcpuState, ApiError> {
        states.get(vcpu).ok_or_else(|| {
            ApiError::bad(format!(
                "vCPU {vcpu} does not exist: the VM has {} vCPU(s)",
                states.len()
            ))
        })
    }

    fn context(&self, states: &[VcpuState], space: Space) -> Result<PagingContext, ApiError> {
        let state = self.state(states, space.vcpu())?;
        let cr3 = match space {
            Space::Vcpu(_) => None,
            Space::Cr3 { cr3, .. } => Some(cr3),
        };
        self.vm.paging_context(state, cr3).map_err(|e| {
            ApiError::conflict(format!(
                "the tables of vCPU {} cannot be read now: {e}",
                space.vcpu()
            ))
        })
    }

    fn registers(&self, states: &[VcpuState], vcpu: usize) -> Result<String, ApiError> {
        let state = self.state(states, vcpu)?;
        let value =
            serde_json::to_value(state.dump()).map_err(internal("encoding the registers"))?;
        let mut value = hex_numbers(value);
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("vcpu".into(), vcpu.into());
            map.insert("finished".into(), state.finished.into());
        }
        Ok(value.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    fn translate(
        &self,
        states: &[VcpuState],
        space: Space,
        gvas: &[Gva],
        check_kvm: bool,
        format: Format,
        reply: Responder,
    ) {
        let ctx = match self.context(states, space) {
            Ok(ctx) => ctx,
            Err(e) => return reply.error(&e),
        };
        let state = &states[space.vcpu()];
        let mut out = reply.stream(lines_type(format), None);
        let mut line = String::with_capacity(256);
        for gva in gvas {
            line.clear();
            let ours = walker::translate(self.vm.guest_memory(), &ctx, *gva);
            let kvm = if check_kvm {
                match self.vm.translate(space.vcpu(), *gva) {
                    Ok(kvm) => Some((
                        oracle_verdict(
                            &ours,
                            kvm.valid,
                            kvm.gpa.0,
                            state.sregs.cr4,
                            state.regs.rflags,
                        ),
                        kvm,
                    )),
                    Err(e) => return out.abort(&format!("KVM_TRANSLATE of {gva}: {e}")),
                }
            } else {
                None
            };
            match format {
                Format::Json => {
                    push_translation_json(&mut line, *gva, &ours);
                    if let Some((verdict, kvm)) = kvm {
                        line.pop();
                        line.push_str(&kvm_json_fields(verdict, kvm.valid, kvm.gpa.0));
                    }
                }
                _ => {
                    push_translation_text(&mut line, *gva, &ours);
                    if let Some((verdict, kvm)) = kvm {
                        line.push_str(&kvm_comparison_text(verdict, kvm.valid, kvm.gpa.0));
                    }
                }
            }
            line.push('\n');
            if out.write_all(line.as_bytes()).is_err() {
                // The client went away: stop here, the pause ends.
                return;
            }
        }
        let _ = out.finish(None);
    }

    #[allow(clippy::too_many_arguments)]
    fn mappings(
        &self,
        states: &[VcpuState],
        space: Space,
        range: &crate::introspect::VaRange,
        pte_level: bool,
        format: Format,
        trailers: bool,
        reply: Responder,
    ) {
        let ctx = match self.context(states, space) {
            Ok(ctx) => ctx,
            Err(e) => return reply.error(&e),
        };
        let label = match space {
            Space::Vcpu(n) => format!("vcpu {n}"),
            Space::Cr3 { cr3, .. } => format!("CR3 {cr3:#x}"),
        };
        let mut out = reply.stream(lines_type(format), trailers.then_some(WALK_TRAILER));
        // As `vmm walk` prints it: the text format starts with the address space's line.
        if format == Format::Text
            && writeln!(out, "{}", address_space_header(&label, &ctx)).is_err()
        {
            return;
        }
        let granularity = if pte_level {
            Granularity::Split4K
        } else {
            Granularity::AsMapped
        };
        let started = Instant::now();
        let result = print_walk(
            self.vm.guest_memory(),
            &ctx,
            range,
            granularity,
            format,
            WalkOptions {
                entry_budget: walker::DEFAULT_ENTRY_BUDGET,
            },
            &mut out,
        );
        match result {
            Ok(s) => {
                let summary = format!(
                    "complete: {} leaves, {} bad entries, {} entries read in {:.3} ms",
                    s.leaves,
                    s.bad,
                    s.stats.entries_read,
                    started.elapsed().as_secs_f64() * 1e3
                );
                let _ = out.finish(trailers.then_some((WALK_TRAILER, summary)));
            }
            Err(PrintError::Budget(why)) if trailers => {
                let _ = out.finish(Some((WALK_TRAILER, format!("incomplete: {why}"))));
            }
            Err(PrintError::Budget(why)) => out.abort(&format!("walk incomplete: {why}")),
            // The client went away or stalled: nothing to tell it.
            Err(PrintError::Io(_)) => {}
        }
    }

    fn memory(&self, states: &[VcpuState], at: MemoryAt, len: u64) -> Result<Vec<u8>, ApiError> {
        let mem = self.vm.guest_memory();
        let mut bytes = vec![0u8; len as usize];
        match at {
            MemoryAt::Gpa(gpa) => {
                let end = gpa.checked_add(len - 1).ok_or_else(|| {
                    ApiError::bad(format!("gpa {gpa:#x} + len {len} wraps around"))
                })?;
                mem.read_slice(&mut bytes, GuestAddress(gpa)).map_err(|_| {
                    ApiError::bad(format!(
                        "GPA range {gpa:#x}-{end:#x} is not all guest RAM ({} bytes of RAM, with a hole below 4 GiB)",
                        mem.last_addr().0 + 1
                    ))
                })?;
            }
            MemoryAt::Gva { gva, vcpu } => {
                let ctx = self.context(states, Space::Vcpu(vcpu))?;
                let mut done = 0u64;
                while done < len {
                    let va = Gva(gva.0.wrapping_add(done));
                    let page_left = 4096 - (va.0 & 0xfff);
                    let n = page_left.min(len - done);
                    let t = walker::translate(mem, &ctx, va).map_err(|e| {
                        ApiError::bad(format!(
                            "GVA {:#x} (page {:#x}) is not readable: {e}",
                            va.0,
                            va.0 & !0xfff
                        ))
                    })?;
                    let slice = &mut bytes[done as usize..(done + n) as usize];
                    mem.read_slice(slice, t.gpa).map_err(|_| {
                        ApiError::bad(format!(
                            "GVA {:#x} maps GPA {:#x}, which is not guest RAM",
                            va.0, t.gpa.0
                        ))
                    })?;
                    done += n;
                }
            }
        }
        Ok(bytes)
    }

    fn dirty_scan(&mut self, states: &[VcpuState]) -> Result<crate::dirty::ScanReport, ApiError> {
        let backend = self.vm.dirty_log_backend().ok_or_else(|| {
            ApiError::conflict("dirty logging is off: start the VM with --dirty-log")
        })?;
        self.dirty
            .fetch(self.vm)
            .map_err(internal("fetching the dirty log"))?;
        self.dirty.scan_seq += 1;
        let unseen = std::mem::take(&mut self.dirty.scans);
        let set = DirtySet {
            seq: self.dirty.scan_seq,
            backend,
            bitmaps: unseen.bitmaps,
            vmm_pages: unseen.vmm_pages,
        };
        self.vm
            .scan_set(&set, states, &[])
            .map_err(internal("scanning the dirty pages"))
    }

    fn snapshot(
        &mut self,
        states: &[VcpuState],
        dir: &Path,
        kind: SnapshotRequestKind,
    ) -> Result<String, ApiError> {
        let canonical = std::fs::canonicalize(dir).ok();
        let existing = self
            .dirty
            .chains
            .iter()
            .position(|c| Some(&c.canonical) == canonical.as_ref());
        let info = match (kind, existing) {
            (SnapshotRequestKind::Full, Some(_)) => {
                return Err(ApiError::conflict(format!(
                    "{} holds a chain this VMM writes: its next generation is a diff (kind \"diff\"); a new full snapshot needs a new directory",
                    dir.display()
                )));
            }
            (SnapshotRequestKind::Diff, None) => {
                return Err(ApiError::conflict(format!(
                    "{} holds no chain this VMM writes: start one with kind \"full\"",
                    dir.display()
                )));
            }
            (SnapshotRequestKind::Full, None) => {
                let mut snaps =
                    SnapshotDir::create(dir).map_err(|e| ApiError::bad(e.to_string()))?;
                snaps.set_guest_cr3s(self.options.guest_cr3s.clone());
                // Everything up to now goes to the other users; this chain starts clean.
                if self.vm.dirty_log_backend().is_some() {
                    self.dirty
                        .fetch(self.vm)
                        .map_err(internal("fetching the dirty log"))?;
                }
                let info = write_generation(self.vm, &mut snaps, states, None)?;
                let canonical = std::fs::canonicalize(snaps.path())
                    .unwrap_or_else(|_| snaps.path().to_path_buf());
                self.dirty.chains.push(Chain {
                    dir: snaps,
                    canonical,
                    unseen: Unseen::default(),
                });
                info
            }
            (SnapshotRequestKind::Diff, Some(i)) => {
                self.dirty
                    .fetch(self.vm)
                    .map_err(internal("fetching the dirty log"))?;
                let Controller { vm, dirty, .. } = self;
                let chain = &mut dirty.chains[i];
                let pages = chain.unseen.bitmaps.clone();
                let info = write_generation(vm, &mut chain.dir, states, Some(pages))?;
                // Only now: a failed write keeps the pages for the next attempt.
                chain.unseen = Unseen::default();
                info
            }
        };
        Ok(snapshot_json(&info))
    }
}

/// The content type of an answer of lines in `format`: JSON lines, or text.
fn lines_type(format: Format) -> &'static str {
    match format {
        Format::Json => "application/x-ndjson",
        _ => "text/plain; charset=utf-8",
    }
}

fn write_generation(
    vm: &Vm,
    dir: &mut SnapshotDir,
    states: &[VcpuState],
    dirty: Option<Vec<DirtyBitmap>>,
) -> Result<SnapshotInfo, ApiError> {
    vm.snapshot_paused_with(dir, states, dirty)
        .map_err(|e| ApiError::internal(format!("writing the snapshot: {e}")))
}

/// The JSON answer of `PUT /snapshot/create`.
pub fn snapshot_json(info: &SnapshotInfo) -> String {
    serde_json::json!({
        "generation": info.generation,
        "kind": format!("{:?}", info.kind),
        "pages": info.pages,
        "data_bytes": info.data_bytes,
        "data_path": info.data_path,
        "state_path": info.state_path,
        "elapsed_us": info.elapsed.as_micros() as u64,
    })
    .to_string()
}

/// A `PUT /snapshot/create` answer read back ([`snapshot_json`]'s inverse, to the
/// microsecond), or `None` if it is not one.
pub fn snapshot_from_json(v: &serde_json::Value) -> Option<SnapshotInfo> {
    Some(SnapshotInfo {
        generation: v["generation"].as_u64()?,
        kind: match v["kind"].as_str()? {
            "Full" => crate::snapshot::SnapshotKind::Full,
            "Diff" => crate::snapshot::SnapshotKind::Diff,
            _ => return None,
        },
        pages: v["pages"].as_u64()?,
        data_bytes: v["data_bytes"].as_u64()?,
        data_path: v["data_path"].as_str()?.into(),
        state_path: v["state_path"].as_str()?.into(),
        elapsed: Duration::from_micros(v["elapsed_us"].as_u64()?),
    })
}

fn kvm_json_fields(verdict: OracleVerdict, valid: bool, gpa: u64) -> String {
    let kvm = if valid {
        format!("\"{gpa:#x}\"")
    } else {
        "null".into()
    };
    format!(
        r#","kvm_translate":{kvm},"kvm_verdict":"{}"}}"#,
        verdict.json_name()
    )
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// Every unsigned number of `value` as a `"0x..."` string (registers, selectors, limits).
pub fn hex_numbers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(v) => Value::String(hex(v)),
            None => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(hex_numbers).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, hex_numbers(v))).collect())
        }
        other => other,
    }
}

/// The inverse of [`hex_numbers`]: `"0x..."` strings back to numbers (for the client,
/// which turns a registers answer back into a [`crate::arch::x86_64::regs::RegisterDump`]).
pub fn unhex_numbers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => match s
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            Some(v) => Value::Number(v.into()),
            None => Value::String(s),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(unhex_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, unhex_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

fn internal<E: std::fmt::Display>(doing: &'static str) -> impl Fn(E) -> ApiError {
    move |e| ApiError::internal(format!("{doing}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::regs::RegisterDump;

    #[test]
    fn register_dumps_survive_hex_and_back() {
        let mut dump = RegisterDump::default();
        dump.regs.rip = 0xffff_ffff_8100_0000;
        dump.regs.r12 = 7;
        dump.sregs.cr3 = 0x1234_5000;
        dump.sregs.cs.selector = 0x10;
        dump.sregs.cs.l = true;
        let hexed = hex_numbers(serde_json::to_value(dump).unwrap());
        assert_eq!(hexed["regs"]["rip"], "0xffffffff81000000");
        assert_eq!(hexed["sregs"]["cs"]["l"], true);
        let back: RegisterDump = serde_json::from_value(unhex_numbers(hexed)).unwrap();
        assert_eq!(back, dump);
    }

    #[test]
    fn snapshot_answers_read_back() {
        let info = SnapshotInfo {
            generation: 3,
            kind: crate::snapshot::SnapshotKind::Diff,
            pages: 17,
            data_bytes: 70_000,
            data_path: "/s/gen-000003.diff".into(),
            state_path: "/s/gen-000003.state".into(),
            elapsed: Duration::from_micros(1234),
        };
        let json: serde_json::Value = serde_json::from_str(&snapshot_json(&info)).unwrap();
        assert_eq!(json["kind"], "Diff");
        assert_eq!(snapshot_from_json(&json), Some(info));
        assert_eq!(
            snapshot_from_json(&serde_json::json!({"kind": "Full"})),
            None
        );
    }

    #[test]
    fn unseen_pages_accumulate_per_user() {
        let set = |pages: &[u64]| {
            let mut b = DirtyBitmap::new(GuestAddress(0), 1 << 20);
            for p in pages {
                b.set(GuestAddress(p << 12));
            }
            DirtySet {
                seq: 1,
                backend: crate::dirty::DirtyLogBackend::Bitmap,
                bitmaps: vec![b],
                vmm_pages: 1,
            }
        };
        let mut a = Unseen::default();
        a.add(&set(&[1, 2]));
        a.add(&set(&[2, 9]));
        let pages: Vec<u64> = a.bitmaps[0].iter().map(|g| g.0 >> 12).collect();
        assert_eq!(pages, [1, 2, 9]);
        assert_eq!(a.vmm_pages, 2);
    }
}
