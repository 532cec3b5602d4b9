//! The control API: HTTP/1.1 with JSON bodies on a Unix socket, served while a VM runs
//! (`vmm run --api-socket`, `vmm restore --api-socket`), and its client (`vmm ctl`).
//!
//! - [`request`]: the endpoints and their validation, pure;
//! - [`socket`]: the socket's path, created private, never replacing what is not a
//!   stale socket of ours, removed on exit;
//! - [`server`]: the HTTP thread (hyper on a single-threaded tokio runtime) and its
//!   limits; it hands each request to the VMM thread;
//! - [`control`]: the VMM thread's side: [`control::serve`] runs the VM and answers, with
//!   every vCPU paused for what reads the VM's state;
//! - [`client`]: one request over the socket, the answer streamed to a writer.
//!
//! The endpoints are listed in [`request::ROUTES`] and described in `openapi.json` (next
//! to this file; a test checks that the two agree) and in the README.

pub mod client;
pub mod control;
pub mod request;
pub mod server;
pub mod socket;

pub use client::{Answer, Client, ClientError};
pub use control::{ServeEnd, ServeOptions, serve};
pub use request::{ApiError, ApiRequest, ROUTES};
pub use server::{ApiServer, Limits, PAUSED_HEADER, ServerError, WALK_TRAILER};

/// The OpenAPI document of the API.
pub const OPENAPI: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document lists exactly the routes the parser serves, and each of its
    /// request schemas names exactly the fields the parser takes.
    #[test]
    fn the_openapi_document_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, methods) in doc["paths"].as_object().unwrap() {
            for method in methods.as_object().unwrap().keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
        // Each documented body: a request with every documented field is accepted, and
        // one with a field more is refused.
        let samples = serde_json::json!({
            "state": "Paused", "vcpu": 0, "cr3": "0x1000", "gvas": ["0x1000"],
            "check_kvm": false, "format": "json", "dir": "/tmp/x", "kind": "full",
            "action": "shutdown",
        });
        for (method, path) in &served {
            let op = &doc["paths"][path][method.to_lowercase()];
            let Some(schema) =
                op["requestBody"]["content"]["application/json"]["schema"].as_object()
            else {
                continue;
            };
            let mut body = serde_json::Map::new();
            for field in schema["properties"].as_object().unwrap().keys() {
                let sample = samples
                    .get(field)
                    .unwrap_or_else(|| panic!("no sample for {field}"));
                body.insert(field.clone(), sample.clone());
            }
            // The translate sample: cr3 with check_kvm false is valid.
            let text = serde_json::Value::Object(body.clone()).to_string();
            let parsed = request::parse(method, path, None, text.as_bytes());
            assert!(parsed.is_ok(), "{method} {path} {text}: {:?}", parsed.err());
            body.insert("undocumented".into(), 1.into());
            let text = serde_json::Value::Object(body).to_string();
            let e = request::parse(method, path, None, text.as_bytes()).unwrap_err();
            assert!(e.message.contains("unknown field"), "{method} {path}: {e}");
        }
        // Each documented query parameter is taken; an undocumented one is refused.
        for (method, path) in &served {
            let op = &doc["paths"][path][method.to_lowercase()];
            let Some(params) = op["parameters"].as_array() else {
                continue;
            };
            let names: Vec<&str> = params
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for name in &names {
                let value = match *name {
                    "vcpu" | "len" => "1",
                    "format" => "json",
                    "pte_level" => "true",
                    "range" => "0-1000",
                    _ => "0x1000",
                };
                // Parameters that exclude each other (gpa/gva): alone, plus len.
                let query = if *path == "/memory" {
                    match *name {
                        "vcpu" => format!("gva=0x1000&vcpu={value}&len=1"),
                        "len" => format!("gpa=0x1000&len={value}"),
                        _ => format!("{name}={value}&len=1"),
                    }
                } else {
                    format!("{name}={value}")
                };
                let parsed = request::parse(method, path, Some(&query), b"");
                assert!(
                    parsed.is_ok(),
                    "{method} {path}?{query}: {:?}",
                    parsed.err()
                );
            }
        }
        // Routes with no documented query parameter take none.
        for (method, path) in &served {
            let op = &doc["paths"][path][method.to_lowercase()];
            let concrete = path.replace("{n}", "0");
            let e = request::parse(method, &concrete, Some("undocumented=1"), b"").unwrap_err();
            let documented = op["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["in"] == "query"));
            let words = if documented {
                "unknown query"
            } else {
                "takes no query"
            };
            assert!(e.message.contains(words), "{method} {path}: {e}");
        }
    }
}
