//! `vmm ctl`: a client of a running VMM's control API (`vmm run --api-socket`), printing
//! what the offline commands print: `walk` as `vmm walk`, `translate` as `vmm
//! translate`, `dirty-scan` as one `vmm run --dirty-scan-every` round, `snapshot` as a
//! `--snapshot-dir` generation line, `registers` as the VMM's register dumps.
//!
//! Exit status: 0 when the VMM did it; 1 when it refused (its message is printed);
//! [`EXIT_WALK_INCOMPLETE`] when a walk stopped at its entry budget; [`EXIT_VMM_ERROR`]
//! when the socket cannot be reached or the exchange broke.

use super::*;
use vmm::api::{Answer, Client, WALK_TRAILER};

/// Arguments of `vmm ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The VMM's API socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Seconds to wait for each answer (its body included).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// What to ask.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Whose page tables (`--vcpu N`, or `--cr3 X` read with vCPU N's paging mode).
#[derive(Debug, clap::Args)]
pub struct CtlSpace {
    /// The vCPU (its CR3, or its paging mode for --cr3).
    #[arg(long)]
    pub vcpu: Option<usize>,
    /// Another address space's root (hex).
    #[arg(long, value_parser = parse_hex_arg)]
    pub cr3: Option<u64>,
}

/// `vmm ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// The VM's state (JSON): running or paused, vCPUs and their paging modes, memory,
    /// boot source, dirty log.
    Vm,
    /// Pause every vCPU until `resume`.
    Pause,
    /// Let the vCPUs run again.
    Resume,
    /// A vCPU's registers (as the VMM prints them; --json for the API's object).
    Registers {
        /// The vCPU.
        #[arg(long, default_value_t = 0)]
        vcpu: usize,
        /// Print the API's JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Translate virtual addresses (as `vmm translate`).
    Translate {
        /// Whose tables.
        #[command(flatten)]
        space: CtlSpace,
        /// Output format (text or json).
        #[arg(long, value_parser = choice::<Format>(), default_value = "text")]
        format: Format,
        /// Also ask KVM_TRANSLATE and compare (as `vmm translate`; --vcpu only).
        #[arg(long)]
        check_kvm: bool,
        /// Read more addresses from this file, one per line (hex).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Virtual addresses (hex).
        #[arg(value_name = "GVA", value_parser = parse_hex_arg)]
        addresses: Vec<u64>,
    },
    /// Walk an address space (as `vmm walk`).
    Walk {
        /// Whose tables.
        #[command(flatten)]
        space: CtlSpace,
        /// Virtual range START-END (hex, END exclusive; an empty END means the top).
        #[arg(long, value_name = "START-END")]
        range: Option<String>,
        /// Split 2 MiB and 1 GiB leaves into 4 KiB shadow leaves.
        #[arg(long)]
        pte_level: bool,
        /// Output format.
        #[arg(long, value_parser = choice::<Format>(), default_value = "text")]
        format: Format,
    },
    /// Read guest memory: raw bytes to stdout or to a new file.
    Memory {
        /// A guest-physical address (hex).
        #[arg(long, value_parser = parse_hex_arg, conflicts_with = "gva", required_unless_present = "gva")]
        gpa: Option<u64>,
        /// A guest-virtual address (hex) in --vcpu's address space.
        #[arg(long, value_parser = parse_hex_arg)]
        gva: Option<u64>,
        /// The vCPU, with --gva.
        #[arg(long, requires = "gva")]
        vcpu: Option<usize>,
        /// Bytes to read.
        #[arg(long)]
        len: u64,
        /// Write them to this new file (written under a temporary name, then renamed).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace FILE if it is an existing regular file.
        #[arg(long, requires = "output")]
        overwrite: bool,
    },
    /// One dirty scan (as one `vmm run --dirty-scan-every` round; the VMM needs
    /// --dirty-log).
    DirtyScan {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ScanFormat::Text)]
        format: ScanFormat,
    },
    /// Write the next snapshot generation: `full` starts a chain in a new or empty
    /// directory, `diff` continues one this VMM writes.
    Snapshot {
        /// The snapshot directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// full or diff.
        #[arg(long, value_enum)]
        kind: CtlSnapshotKind,
    },
    /// Ask the VMM to shut down (the built-in guest gets FINISH; a Linux guest is stopped).
    Shutdown,
}

/// `vmm ctl snapshot --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CtlSnapshotKind {
    /// A new chain's generation 0.
    Full,
    /// The chain's next generation.
    Diff,
}

/// Exit status when the VMM refused the request.
const EXIT_REFUSED: u8 = 1;

pub(super) fn ctl_command(args: &CtlArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.socket, Duration::from_secs(args.timeout));
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let (method, uri, body): (&str, String, Option<String>) = match &args.command {
        CtlCommand::Vm => ("GET", "/vm".into(), None),
        CtlCommand::Pause => ("PATCH", "/vm".into(), Some(r#"{"state":"Paused"}"#.into())),
        CtlCommand::Resume => ("PATCH", "/vm".into(), Some(r#"{"state":"Resumed"}"#.into())),
        CtlCommand::Registers { vcpu, json } => {
            let (answer, body) =
                client.request_bytes("GET", &format!("/vcpus/{vcpu}/registers"), None)?;
            if let Some(code) = refused(&answer) {
                return Ok(code);
            }
            if *json {
                out.write_all(&body)?;
                writeln!(out)?;
            } else {
                let value: serde_json::Value =
                    serde_json::from_slice(&body).context("the registers answer is not JSON")?;
                let dump: vmm::arch::x86_64::regs::RegisterDump =
                    serde_json::from_value(vmm::api::control::unhex_numbers(value))
                        .context("the registers answer is not a register dump")?;
                writeln!(out, "vCPU {vcpu}:")?;
                write!(out, "{dump}")?;
            }
            out.flush()?;
            return Ok(ExitCode::SUCCESS);
        }
        CtlCommand::Translate {
            space,
            format,
            check_kvm,
            from_file,
            addresses,
        } => {
            let mut gvas: Vec<String> = addresses.iter().map(|a| format!("{a:#x}")).collect();
            if let Some(path) = from_file {
                let text = vmm::files::read_bounded(
                    path,
                    "address list",
                    vmm::api::request::MAX_BODY_BYTES as u64,
                )?;
                let text = String::from_utf8(text)
                    .with_context(|| format!("{}: not text", path.display()))?;
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let gva = parse_hex(line).with_context(|| {
                        format!(
                            "{}:{}: {line:?} is not a hex address",
                            path.display(),
                            i + 1
                        )
                    })?;
                    gvas.push(format!("{gva:#x}"));
                }
            }
            if gvas.is_empty() {
                bail!("no address to translate: give GVA arguments or --from-file");
            }
            let mut body = serde_json::json!({
                "gvas": gvas,
                "check_kvm": check_kvm,
                "format": if *format == Format::Json { "json" } else { "text" },
            });
            add_space(&mut body, space);
            ("POST", "/translate".into(), Some(body.to_string()))
        }
        CtlCommand::Walk {
            space,
            range,
            pte_level,
            format,
        } => {
            let mut query = form_query(space);
            if let Some(range) = range {
                query.push(("range", range.clone()));
            }
            if *pte_level {
                query.push(("pte_level", "true".into()));
            }
            query.push(("format", format.name().into()));
            let uri = format!("/mappings?{}", encode(&query));
            let answer = match client.request("GET", &uri, None, &mut out) {
                Ok(answer) => answer,
                Err(e) => {
                    out.flush()?;
                    return Err(e).context("the walk broke off");
                }
            };
            out.flush()?;
            if let Some(code) = refused(&answer) {
                return Ok(code);
            }
            return Ok(match answer.trailer(WALK_TRAILER) {
                Some(t) if t.starts_with("complete") => {
                    eprintln!("vmm: {t}");
                    ExitCode::SUCCESS
                }
                Some(t) => {
                    eprintln!("vmm: walk {t}");
                    ExitCode::from(EXIT_WALK_INCOMPLETE)
                }
                None => {
                    eprintln!("vmm: the VMM did not say whether the walk was complete");
                    ExitCode::from(EXIT_VMM_ERROR)
                }
            });
        }
        CtlCommand::Memory {
            gpa,
            gva,
            vcpu,
            len,
            output,
            overwrite,
        } => {
            let mut query = vec![("len", len.to_string())];
            match (gpa, gva) {
                (Some(gpa), _) => query.push(("gpa", format!("{gpa:#x}"))),
                (None, Some(gva)) => {
                    query.push(("gva", format!("{gva:#x}")));
                    if let Some(vcpu) = vcpu {
                        query.push(("vcpu", vcpu.to_string()));
                    }
                }
                (None, None) => bail!("give --gpa or --gva"),
            }
            let (answer, body) =
                client.request_bytes("GET", &format!("/memory?{}", encode(&query)), None)?;
            if let Some(code) = refused(&answer) {
                return Ok(code);
            }
            match output {
                Some(path) => {
                    let mut file =
                        vmm::files::Output::create(path, "memory read", replace(*overwrite), &[])?;
                    file.file()?.write_all(&body).map_err(|e| file.error(e))?;
                    file.commit()?;
                }
                None => {
                    out.write_all(&body)?;
                    out.flush()?;
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        CtlCommand::DirtyScan { format } => {
            let format = match format {
                ScanFormat::Json => "json",
                ScanFormat::Text => "text",
            };
            ("POST", format!("/dirty/scan?format={format}"), None)
        }
        CtlCommand::Snapshot { dir, kind } => {
            // The VMM's working directory is not ours.
            let dir = std::path::absolute(dir)
                .with_context(|| format!("{}: cannot make the path absolute", dir.display()))?;
            let kind = match kind {
                CtlSnapshotKind::Full => "full",
                CtlSnapshotKind::Diff => "diff",
            };
            let body = serde_json::json!({ "dir": dir, "kind": kind });
            let (answer, reply) = client.request_bytes(
                "PUT",
                "/snapshot/create",
                Some(body.to_string().as_bytes()),
            )?;
            if let Some(code) = refused(&answer) {
                return Ok(code);
            }
            let v: serde_json::Value =
                serde_json::from_slice(&reply).context("the snapshot answer is not JSON")?;
            let info = vmm::api::control::snapshot_from_json(&v)
                .with_context(|| format!("the snapshot answer is not a generation: {v}"))?;
            drop(out);
            print_generation(&info);
            return Ok(ExitCode::SUCCESS);
        }
        CtlCommand::Shutdown => (
            "PUT",
            "/actions".into(),
            Some(r#"{"action":"shutdown"}"#.into()),
        ),
    };
    let (answer, reply) = client.request_bytes(method, &uri, body.as_deref().map(str::as_bytes))?;
    if let Some(code) = refused(&answer) {
        return Ok(code);
    }
    out.write_all(&reply)?;
    if !reply.ends_with(b"\n") && !reply.is_empty() {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `--vcpu`/`--cr3` into a JSON body.
fn add_space(body: &mut serde_json::Value, space: &CtlSpace) {
    if let Some(vcpu) = space.vcpu {
        body["vcpu"] = vcpu.into();
    }
    if let Some(cr3) = space.cr3 {
        body["cr3"] = format!("{cr3:#x}").into();
    }
}

/// `--vcpu`/`--cr3` as query parameters.
fn form_query(space: &CtlSpace) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(vcpu) = space.vcpu {
        query.push(("vcpu", vcpu.to_string()));
    }
    if let Some(cr3) = space.cr3 {
        query.push(("cr3", format!("{cr3:#x}")));
    }
    query
}

fn encode(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Escapes what a query value may not hold as is.
fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The exit status of an answer that is not a 2xx, after printing the VMM's message.
fn refused(answer: &Answer) -> Option<ExitCode> {
    if (200..300).contains(&answer.status) {
        return None;
    }
    let body = &answer.error_body;
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    eprintln!("vmm: the VMM refused (HTTP {}): {message}", answer.status);
    Some(ExitCode::from(EXIT_REFUSED))
}
