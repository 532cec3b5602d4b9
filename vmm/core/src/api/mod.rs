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
