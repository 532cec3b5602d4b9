//! The API's requests as the VMM thread sees them: parsed and validated from an HTTP
//! method, path, query and body, with no HTTP type in sight (pure code, unit- and
//! property-tested; the server in [`super::server`] only moves bytes).
//!
//! What needs the VM to check (a vCPU index, a GPA inside RAM) is checked by
//! [`super::control`]; everything else is refused here, with a 400 and a message naming
//! the field.

use std::path::PathBuf;

use serde::Deserialize;
use walker::Gva;

use crate::introspect::{Format, VaRange, parse_hex};

/// The most bytes a request body may have (a translation of 1 Mi addresses as JSON hex
/// strings is about 22 MiB).
pub const MAX_BODY_BYTES: usize = 48 << 20;
/// The most addresses one `POST /translate` may ask for.
pub const MAX_TRANSLATE_ADDRESSES: usize = 4 << 20;
/// The most bytes one `GET /memory` may read.
pub const MAX_MEMORY_READ: u64 = 16 << 20;

/// Every route: method and path template (`{n}` is a vCPU index). The OpenAPI document
/// (`vmm/core/src/api/openapi.json`) must list exactly these (a test checks it).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/vm"),
    ("PATCH", "/vm"),
    ("GET", "/vcpus/{n}/registers"),
    ("POST", "/translate"),
    ("GET", "/mappings"),
    ("GET", "/memory"),
    ("POST", "/dirty/scan"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/actions"),
];

/// A request refused before it reached the VM, or refused by it: an HTTP status and a
/// sentence for `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status (4xx: the request; 5xx: the VMM or the VM).
    pub status: u16,
    /// What is wrong, naming the field or the limit.
    pub message: String,
}

impl ApiError {
    /// 400: the request is malformed or out of range.
    pub fn bad(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        Self {
            status: 404,
            message: format!(
                "no endpoint {path:?}: the endpoints are {}",
                route_list().join(", ")
            ),
        }
    }

    /// 409: the request cannot be done in the VM's current state or configuration.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
        }
    }

    /// 500: the VMM failed doing it.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }

    /// 503: the VM is gone (it ended, or the VMM is shutting down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: 503,
            message: message.into(),
        }
    }

    /// The response body: `{"error": "..."}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "error": self.message }).to_string()
    }
}

fn route_list() -> Vec<String> {
    ROUTES.iter().map(|(m, p)| format!("{m} {p}")).collect()
}

/// `PATCH /vm`'s state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RunState {
    /// Pause every vCPU (until `Resumed`).
    Paused,
    /// Let them run.
    Resumed,
}

/// Whose page tables: a vCPU's current CR3, or a root given by the client (read with
/// the paging mode of `vcpu`'s registers, vCPU 0 unless said).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// vCPU `n`'s CR3.
    Vcpu(usize),
    /// This CR3, with the paging mode of the vCPU.
    Cr3 {
        /// The root (with its PCID bits, as CR3 holds it).
        cr3: u64,
        /// The vCPU whose CR0/CR4/EFER say how to read it.
        vcpu: usize,
    },
}

impl Space {
    /// The vCPU whose registers the walk uses.
    pub fn vcpu(self) -> usize {
        match self {
            Space::Vcpu(n) | Space::Cr3 { vcpu: n, .. } => n,
        }
    }
}

/// What `GET /memory` reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryAt {
    /// A guest-physical address.
    Gpa(u64),
    /// A guest-virtual address in vCPU `vcpu`'s address space.
    Gva {
        /// The address.
        gva: Gva,
        /// The vCPU.
        vcpu: usize,
    },
}

/// What `PUT /snapshot/create` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotRequestKind {
    /// Generation 0 of a new chain, in a new or empty directory.
    Full,
    /// The next generation of a chain this VMM writes.
    Diff,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    /// `GET /vm`.
    GetVm,
    /// `PATCH /vm`.
    SetState(RunState),
    /// `GET /vcpus/{n}/registers`.
    Registers {
        /// The vCPU.
        vcpu: usize,
    },
    /// `POST /translate`.
    Translate {
        /// Whose tables.
        space: Space,
        /// The addresses, in order.
        gvas: Vec<Gva>,
        /// Also ask KVM (`KVM_TRANSLATE`, one vCPU round trip per address) and say
        /// whether it agrees; only for a vCPU's own CR3.
        check_kvm: bool,
        /// `json` (one object per line, as `vmm translate --format json`) or `text` (the
        /// lines `vmm translate` prints).
        format: Format,
    },
    /// `GET /mappings`.
    Mappings {
        /// Whose tables.
        space: Space,
        /// The virtual range.
        range: VaRange,
        /// Split huge leaves into 4 KiB shadow leaves.
        pte_level: bool,
        /// Output format, as `vmm walk --format`.
        format: Format,
    },
    /// `GET /memory`.
    Memory {
        /// Where.
        at: MemoryAt,
        /// How many bytes (1..=[`MAX_MEMORY_READ`]).
        len: u64,
    },
    /// `POST /dirty/scan`.
    DirtyScan {
        /// `?format=text`: the text `vmm run --dirty-scan-every` prints by default;
        /// otherwise its JSON object (`--scan-format json`).
        text: bool,
    },
    /// `PUT /snapshot/create`.
    Snapshot {
        /// The snapshot directory.
        dir: PathBuf,
        /// Full (a new chain) or diff (the next generation).
        kind: SnapshotRequestKind,
    },
    /// `PUT /actions` `{"action": "shutdown"}`.
    Shutdown,
}

impl ApiRequest {
    /// Whether the VMM thread answers it with every vCPU paused (pausing and resuming
    /// around it when the VM runs).
    pub fn needs_pause(&self) -> bool {
        matches!(
            self,
            ApiRequest::Registers { .. }
                | ApiRequest::Translate { .. }
                | ApiRequest::Mappings { .. }
                | ApiRequest::Memory { .. }
                | ApiRequest::DirtyScan { .. }
                | ApiRequest::Snapshot { .. }
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: RunState,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TranslateBody {
    vcpu: Option<usize>,
    cr3: Option<String>,
    gvas: Vec<String>,
    #[serde(default)]
    check_kvm: bool,
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    dir: PathBuf,
    kind: SnapshotRequestKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action: Action,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Shutdown,
}

/// Parses a request. `query` is the part after `?`, if any; `body` the whole body.
pub fn parse(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<ApiRequest, ApiError> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let route = match segments.as_slice() {
        ["vm"] => "/vm",
        ["vcpus", _, "registers"] => "/vcpus/{n}/registers",
        ["translate"] => "/translate",
        ["mappings"] => "/mappings",
        ["memory"] => "/memory",
        ["dirty", "scan"] => "/dirty/scan",
        ["snapshot", "create"] => "/snapshot/create",
        ["actions"] => "/actions",
        _ => return Err(ApiError::not_found(path)),
    };
    if !ROUTES.iter().any(|(m, p)| *m == method && *p == route) {
        let allowed: Vec<&str> = ROUTES
            .iter()
            .filter(|(_, p)| *p == route)
            .map(|(m, _)| *m)
            .collect();
        return Err(ApiError {
            status: 405,
            message: format!(
                "{method} is not allowed on {route}: use {}",
                allowed.join(" or ")
            ),
        });
    }
    let params = Query::parse(query, route)?;
    let takes_body = matches!(method, "PATCH" | "POST" | "PUT");
    if !takes_body && !body.is_empty() {
        return Err(ApiError::bad(format!(
            "{method} {route} takes no body ({} bytes given)",
            body.len()
        )));
    }
    match (method, segments.as_slice()) {
        ("GET", ["vm"]) => {
            params.only(&[])?;
            Ok(ApiRequest::GetVm)
        }
        ("PATCH", ["vm"]) => {
            params.only(&[])?;
            let b: StateBody = json(body, "PATCH /vm")?;
            Ok(ApiRequest::SetState(b.state))
        }
        ("GET", ["vcpus", n, "registers"]) => {
            params.only(&[])?;
            let vcpu = n.parse::<usize>().map_err(|_| {
                ApiError::bad(format!("vCPU {n:?} in the path is not a decimal index"))
            })?;
            Ok(ApiRequest::Registers { vcpu })
        }
        ("POST", ["translate"]) => {
            params.only(&[])?;
            let b: TranslateBody = json(body, "POST /translate")?;
            let space = space(b.vcpu, b.cr3.as_deref())?;
            if b.check_kvm && matches!(space, Space::Cr3 { .. }) {
                return Err(ApiError::bad(
                    "check_kvm needs a vCPU's own CR3 (\"vcpu\"): KVM_TRANSLATE walks the vCPU's tables",
                ));
            }
            if b.gvas.len() > MAX_TRANSLATE_ADDRESSES {
                return Err(ApiError::bad(format!(
                    "{} addresses: at most {MAX_TRANSLATE_ADDRESSES} per request",
                    b.gvas.len()
                )));
            }
            let gvas = b
                .gvas
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    parse_hex(text).map(Gva).ok_or_else(|| {
                        ApiError::bad(format!("gvas[{i}] = {text:?} is not a hex address"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let format = match b.format.as_deref() {
                None | Some("json") => Format::Json,
                Some("text") => Format::Text,
                Some(other) => {
                    return Err(ApiError::bad(format!(
                        "format {other:?} is not json or text"
                    )));
                }
            };
            Ok(ApiRequest::Translate {
                space,
                gvas,
                check_kvm: b.check_kvm,
                format,
            })
        }
        ("GET", ["mappings"]) => {
            params.only(&["vcpu", "cr3", "range", "pte_level", "format"])?;
            let space = space(params.vcpu()?, params.get("cr3"))?;
            let range = match params.get("range") {
                Some(text) => text
                    .parse::<VaRange>()
                    .map_err(|e| ApiError::bad(format!("range: {e}")))?,
                None => VaRange::default(),
            };
            let format = match params.get("format") {
                Some(text) => text
                    .parse::<Format>()
                    .map_err(|e| ApiError::bad(format!("format: {e}")))?,
                None => Format::Text,
            };
            Ok(ApiRequest::Mappings {
                space,
                range,
                pte_level: params.flag("pte_level")?,
                format,
            })
        }
        ("GET", ["memory"]) => {
            params.only(&["gpa", "gva", "vcpu", "len"])?;
            let len_text = params
                .get("len")
                .ok_or_else(|| ApiError::bad("len is missing: how many bytes to read"))?;
            let len = len_text
                .parse::<u64>()
                .ok()
                .filter(|l| (1..=MAX_MEMORY_READ).contains(l))
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "len {len_text:?} is not a byte count from 1 to {MAX_MEMORY_READ}"
                    ))
                })?;
            let at = match (params.get("gpa"), params.get("gva")) {
                (Some(gpa), None) => {
                    if params.get("vcpu").is_some() {
                        return Err(ApiError::bad(
                            "vcpu goes with gva (a virtual address), not gpa",
                        ));
                    }
                    MemoryAt::Gpa(hex_param("gpa", gpa)?)
                }
                (None, Some(gva)) => MemoryAt::Gva {
                    gva: Gva(hex_param("gva", gva)?),
                    vcpu: params.vcpu()?.unwrap_or(0),
                },
                _ => return Err(ApiError::bad("give exactly one of gpa and gva")),
            };
            Ok(ApiRequest::Memory { at, len })
        }
        ("POST", ["dirty", "scan"]) => {
            params.only(&["format"])?;
            let text = match params.get("format") {
                None | Some("json") => false,
                Some("text") => true,
                Some(other) => {
                    return Err(ApiError::bad(format!(
                        "format {other:?} is not json or text"
                    )));
                }
            };
            // An empty body or an empty JSON object: nothing to say.
            if !body.iter().all(u8::is_ascii_whitespace) {
                let v: serde_json::Map<String, serde_json::Value> = json(body, "POST /dirty/scan")?;
                if let Some(k) = v.keys().next() {
                    return Err(ApiError::bad(format!(
                        "POST /dirty/scan: unknown field {k:?} (it takes none)"
                    )));
                }
            }
            Ok(ApiRequest::DirtyScan { text })
        }
        ("PUT", ["snapshot", "create"]) => {
            params.only(&[])?;
            let b: SnapshotBody = json(body, "PUT /snapshot/create")?;
            if b.dir.as_os_str().is_empty() {
                return Err(ApiError::bad("dir is empty"));
            }
            if !b.dir.is_absolute() {
                return Err(ApiError::bad(format!(
                    "dir {:?} is relative: give an absolute path (the VMM's working directory is not the client's)",
                    b.dir
                )));
            }
            Ok(ApiRequest::Snapshot {
                dir: b.dir,
                kind: b.kind,
            })
        }
        ("PUT", ["actions"]) => {
            params.only(&[])?;
            let b: ActionBody = json(body, "PUT /actions")?;
            match b.action {
                Action::Shutdown => Ok(ApiRequest::Shutdown),
            }
        }
        _ => Err(ApiError::not_found(path)),
    }
}

/// `{"vcpu": n}` or `{"cr3": "0x..."}` (with an optional vCPU for its paging mode).
fn space(vcpu: Option<usize>, cr3: Option<&str>) -> Result<Space, ApiError> {
    match cr3 {
        Some(text) => Ok(Space::Cr3 {
            cr3: hex_param("cr3", text)?,
            vcpu: vcpu.unwrap_or(0),
        }),
        None => Ok(Space::Vcpu(vcpu.unwrap_or(0))),
    }
}

fn hex_param(name: &str, text: &str) -> Result<u64, ApiError> {
    parse_hex(text).ok_or_else(|| ApiError::bad(format!("{name} {text:?} is not a hex address")))
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad(format!("{what} needs a JSON body")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("{what}: {e}")))
}

/// A query string's parameters, each at most once.
struct Query {
    route: &'static str,
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: Option<&str>, route: &'static str) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::bad(format!(
                    "query parameter {k:?} is given twice"
                )));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Self { route, pairs })
    }

    /// Refuses parameters other than `known`.
    fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self
            .pairs
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            Some((k, _)) if known.is_empty() => Err(ApiError::bad(format!(
                "{} takes no query parameters ({k:?} given)",
                self.route
            ))),
            Some((k, _)) => Err(ApiError::bad(format!(
                "unknown query parameter {k:?} of {}: it takes {}",
                self.route,
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn vcpu(&self) -> Result<Option<usize>, ApiError> {
        self.get("vcpu")
            .map(|text| {
                text.parse::<usize>().map_err(|_| {
                    ApiError::bad(format!("vcpu {text:?} is not a decimal vCPU index"))
                })
            })
            .transpose()
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(other) => Err(ApiError::bad(format!(
                "{name} {other:?} is not true or false"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(method: &str, path: &str, query: Option<&str>, body: &str) -> ApiRequest {
        parse(method, path, query, body.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refused(method: &str, path: &str, query: Option<&str>, body: &str) -> ApiError {
        match parse(method, path, query, body.as_bytes()) {
            Ok(r) => panic!("{method} {path} {query:?} {body:?} was accepted as {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_route_parses() {
        assert_eq!(ok("GET", "/vm", None, ""), ApiRequest::GetVm);
        assert_eq!(
            ok("PATCH", "/vm", None, r#"{"state":"Paused"}"#),
            ApiRequest::SetState(RunState::Paused)
        );
        assert_eq!(
            ok("GET", "/vcpus/1/registers", None, ""),
            ApiRequest::Registers { vcpu: 1 }
        );
        assert_eq!(
            ok(
                "POST",
                "/translate",
                None,
                r#"{"cr3":"0x1000","gvas":["0x400000","ffff_8000_0000_0000"]}"#
            ),
            ApiRequest::Translate {
                space: Space::Cr3 {
                    cr3: 0x1000,
                    vcpu: 0
                },
                gvas: vec![Gva(0x40_0000), Gva(0xffff_8000_0000_0000)],
                check_kvm: false,
                format: Format::Json,
            }
        );
        assert_eq!(
            ok(
                "GET",
                "/mappings",
                Some("vcpu=1&range=1000-2000&pte_level=true&format=tlb"),
                ""
            ),
            ApiRequest::Mappings {
                space: Space::Vcpu(1),
                range: VaRange(Gva(0x1000)..=Gva(0x1fff)),
                pte_level: true,
                format: Format::Tlb,
            }
        );
        assert_eq!(
            ok("GET", "/memory", Some("gva=0x1000&vcpu=0&len=16"), ""),
            ApiRequest::Memory {
                at: MemoryAt::Gva {
                    gva: Gva(0x1000),
                    vcpu: 0
                },
                len: 16
            }
        );
        assert_eq!(
            ok("POST", "/dirty/scan", None, ""),
            ApiRequest::DirtyScan { text: false }
        );
        assert_eq!(
            ok("POST", "/dirty/scan", Some("format=text"), "{}"),
            ApiRequest::DirtyScan { text: true }
        );
        assert_eq!(
            ok(
                "PUT",
                "/snapshot/create",
                None,
                r#"{"dir":"/tmp/s","kind":"full"}"#
            ),
            ApiRequest::Snapshot {
                dir: PathBuf::from("/tmp/s"),
                kind: SnapshotRequestKind::Full
            }
        );
        assert_eq!(
            ok("PUT", "/actions", None, r#"{"action":"shutdown"}"#),
            ApiRequest::Shutdown
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        /// Method, path, query, body, the status and words of the refusal.
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);
        let cases: &[Case] = &[
            ("GET", "/nope", None, "", 404, "no endpoint"),
            ("DELETE", "/vm", None, "", 405, "use GET or PATCH"),
            ("PATCH", "/vm", None, "", 400, "needs a JSON body"),
            ("PATCH", "/vm", None, "{", 400, "EOF"),
            (
                "PATCH",
                "/vm",
                None,
                r#"{"state":"Gone"}"#,
                400,
                "unknown variant",
            ),
            (
                "PATCH",
                "/vm",
                None,
                r#"{"state":"Paused","x":1}"#,
                400,
                "unknown field",
            ),
            ("GET", "/vm", Some("x=1"), "", 400, "takes no query"),
            ("GET", "/vm", None, "body", 400, "takes no body"),
            ("GET", "/vcpus/x/registers", None, "", 400, "not a decimal"),
            (
                "POST",
                "/translate",
                None,
                r#"{"gvas":["0xzz"]}"#,
                400,
                "gvas[0]",
            ),
            (
                "POST",
                "/translate",
                None,
                r#"{"cr3":"1000","gvas":[],"check_kvm":true}"#,
                400,
                "check_kvm",
            ),
            (
                "POST",
                "/translate",
                None,
                r#"{"gvas":[],"format":"tlb"}"#,
                400,
                "not json or text",
            ),
            ("GET", "/mappings", Some("range=5-1"), "", 400, "range"),
            ("GET", "/mappings", Some("format=xml"), "", 400, "format"),
            (
                "GET",
                "/mappings",
                Some("pte_level=2"),
                "",
                400,
                "pte_level",
            ),
            ("GET", "/mappings", Some("vcpu=1&vcpu=2"), "", 400, "twice"),
            (
                "GET",
                "/mappings",
                Some("colour=red"),
                "",
                400,
                "unknown query",
            ),
            ("GET", "/memory", Some("gpa=0"), "", 400, "len is missing"),
            ("GET", "/memory", Some("gpa=0&len=0"), "", 400, "byte count"),
            (
                "GET",
                "/memory",
                Some("gpa=0&len=99999999999"),
                "",
                400,
                "byte count",
            ),
            ("GET", "/memory", Some("len=4"), "", 400, "exactly one"),
            (
                "GET",
                "/memory",
                Some("gpa=0&gva=0&len=4"),
                "",
                400,
                "exactly one",
            ),
            (
                "GET",
                "/memory",
                Some("gpa=0&vcpu=0&len=4"),
                "",
                400,
                "vcpu goes with gva",
            ),
            (
                "POST",
                "/dirty/scan",
                None,
                r#"{"a":1}"#,
                400,
                "unknown field",
            ),
            (
                "PUT",
                "/snapshot/create",
                None,
                r#"{"dir":"rel","kind":"full"}"#,
                400,
                "relative",
            ),
            (
                "PUT",
                "/snapshot/create",
                None,
                r#"{"dir":"/a","kind":"half"}"#,
                400,
                "unknown variant",
            ),
            (
                "PUT",
                "/actions",
                None,
                r#"{"action":"dance"}"#,
                400,
                "unknown variant",
            ),
        ];
        for (method, path, query, body, status, words) in cases {
            let e = refused(method, path, *query, body);
            assert_eq!(e.status, *status, "{method} {path} {query:?}: {e}");
            assert!(
                e.message.contains(words),
                "{method} {path} {query:?} {body:?}: {:?} does not say {words:?}",
                e.message
            );
            let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
            assert_eq!(v["error"], e.message.as_str());
        }
    }

    #[test]
    fn too_many_addresses_are_refused_by_count() {
        let body = serde_json::json!({
            "gvas": vec!["0"; MAX_TRANSLATE_ADDRESSES + 1]
        })
        .to_string();
        let e = refused("POST", "/translate", None, &body);
        assert!(e.message.contains("at most"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever arrives, parsing answers (a request or a 4xx error) and never panics.
        #[test]
        fn any_input_is_answered(
            method in prop::sample::select(vec!["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD"]),
            path in "(/[a-z0-9{}%.]{0,12}){0,4}",
            query in proptest::option::of("[a-z_=&0-9x%-]{0,40}"),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Err(e) = parse(method, &path, query.as_deref(), &body) {
                prop_assert!((400..500).contains(&e.status));
                prop_assert!(!e.message.is_empty());
            }
        }

        /// JSON bodies near the valid ones: still an answer, and a valid request only
        /// when every field is one the route knows.
        #[test]
        fn json_bodies_are_validated(
            key in prop::sample::select(vec!["state", "gvas", "vcpu", "cr3", "dir", "kind", "action", "other"]),
            value in prop::sample::select(vec![
                serde_json::json!("Paused"), serde_json::json!(["0x1000"]), serde_json::json!(3),
                serde_json::json!("0x1000"), serde_json::json!("/tmp/x"), serde_json::json!("diff"),
                serde_json::json!("shutdown"), serde_json::json!(null), serde_json::json!(-1),
            ]),
            route in prop::sample::select(vec![("PATCH", "/vm"), ("POST", "/translate"), ("PUT", "/snapshot/create"), ("PUT", "/actions")]),
        ) {
            let body = serde_json::json!({ key: value }).to_string();
            match parse(route.0, route.1, None, body.as_bytes()) {
                Ok(_) => prop_assert!(key != "other"),
                Err(e) => prop_assert_eq!(e.status, 400),
            }
        }
    }
}
