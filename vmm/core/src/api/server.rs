//! The HTTP side of the API: one thread of its own runs a single-threaded tokio runtime
//! that serves HTTP/1.1 (hyper) on the Unix socket. It reads and bounds each request,
//! parses it ([`super::request::parse`]) and hands it to the VMM thread as a [`Job`],
//! waking that thread ([`crate::events::VmWaker`]); the VMM thread answers through the
//! job's [`Responder`], whole or as a stream.
//!
//! Limits, so that no client can hurt the guest or the VMM (the guest runs on its own
//! vCPU threads and is never waited on by this thread):
//! - at most [`Limits::max_connections`] connections at once; one more is closed at once;
//! - the request head: [`Limits::max_headers`] headers, [`Limits::max_head_bytes`] bytes,
//!   read within [`Limits::head_timeout`] (hyper's limits; a slow or silent client is
//!   dropped);
//! - the body: [`Limits::max_body_bytes`] (413 beyond: at once when its declared
//!   length says so), read within
//!   [`Limits::body_timeout`] (408);
//! - a streamed answer whose client reads nothing for [`Limits::stall_timeout`] is
//!   abandoned, and so is one whose client went away: the VMM thread's work for it stops
//!   and the pause it took ends ([`super::control`]).

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::request::{ApiError, ApiRequest, MAX_BODY_BYTES, parse};
use super::socket::{ApiSocket, SocketError};
use crate::events::VmWaker;

/// The server's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Headers in one request.
    pub max_headers: usize,
    /// Bytes of one request head (request line and headers).
    pub max_head_bytes: usize,
    /// Time to send a request head, counted from the connection (or the previous
    /// answer, for the next request on the connection).
    pub head_timeout: Duration,
    /// Time to send a request body.
    pub body_timeout: Duration,
    /// How long a streamed answer waits for a client that reads nothing.
    pub stall_timeout: Duration,
    /// Bytes of one request body (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_headers: 32,
            max_head_bytes: 16 << 10,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// The header that says whether the VMM paused the VM for the request: `request` (it
/// paused every vCPU, answered, and let them run again) or `vm` (the VM was already
/// paused, by `PATCH /vm`).
pub const PAUSED_HEADER: &str = "guestwalk-paused";
/// The trailer of a `GET /mappings` stream: `complete: ...` or `incomplete: ...` (the
/// entry budget ran out). Sent to clients that ask for trailers (`TE: trailers`); for the
/// others an incomplete walk ends in a broken stream rather than a silent truncation.
pub const WALK_TRAILER: &str = "guestwalk-walk";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket path.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The runtime or its thread.
    #[error("cannot start the API thread: {0}")]
    Thread(#[source] io::Error),
}

/// A request for the VMM thread, and where its answer goes.
#[derive(Debug)]
pub struct Job {
    /// What is asked.
    pub request: ApiRequest,
    /// Whether the client takes trailers (`TE: trailers`).
    pub trailers: bool,
    /// Where the answer goes.
    pub reply: Responder,
}

type ApiBody = UnsyncBoxBody<Bytes, io::Error>;

/// The answer to one [`Job`]: whole ([`Responder::json`], [`Responder::bytes`],
/// [`Responder::error`]) or streamed ([`Responder::stream`]). Dropped unanswered, the
/// client gets a 503.
#[derive(Debug)]
pub struct Responder {
    tx: tokio::sync::oneshot::Sender<Response<ApiBody>>,
    runtime: tokio::runtime::Handle,
    stall_timeout: Duration,
    headers: Vec<(&'static str, String)>,
}

impl Responder {
    /// Adds a header to the answer (before it is sent).
    pub fn header(&mut self, name: &'static str, value: impl Into<String>) {
        self.headers.push((name, value.into()));
    }

    fn send(self, status: u16, content_type: &str, body: ApiBody) {
        let mut response = Response::new(body);
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(content_type) {
            headers.insert(CONTENT_TYPE, v);
        }
        for (name, value) in self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(n, v);
            }
        }
        // A client that went away meanwhile: nobody to tell.
        let _ = self.tx.send(response);
    }

    /// A whole answer of `body` bytes.
    pub fn bytes(self, status: u16, content_type: &str, body: Vec<u8>) {
        self.send(status, content_type, full(Bytes::from(body)));
    }

    /// A whole JSON answer.
    pub fn json(self, status: u16, json: String) {
        self.bytes(status, "application/json", json.into_bytes());
    }

    /// An error answer: its status and `{"error": ...}`.
    pub fn error(self, error: &ApiError) {
        self.json(error.status, error.to_json());
    }

    /// Starts a streamed 200 answer; what is written to the [`StreamWriter`] goes out in
    /// chunks as it comes. `trailer`: the trailer it will end with (declared in the
    /// `Trailer` header, without which HTTP/1.1 sends none).
    pub fn stream(mut self, content_type: &str, trailer: Option<&'static str>) -> StreamWriter {
        if let Some(name) = trailer {
            self.header("trailer", name);
        }
        let (sender, body) = http_body_util::channel::Channel::<Bytes, io::Error>::new(4);
        let runtime = self.runtime.clone();
        let stall_timeout = self.stall_timeout;
        self.send(200, content_type, body.boxed_unsync());
        StreamWriter {
            sender: Some(sender),
            buffer: Vec::with_capacity(STREAM_CHUNK),
            runtime,
            stall_timeout,
        }
    }
}

fn full(bytes: Bytes) -> ApiBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Bytes per chunk of a streamed answer.
const STREAM_CHUNK: usize = 64 << 10;

/// The body of a streamed answer, written by the VMM thread. A write fails (and the
/// writer's user stops) when the client went away or read nothing for the stall timeout.
#[derive(Debug)]
pub struct StreamWriter {
    sender: Option<http_body_util::channel::Sender<Bytes, io::Error>>,
    buffer: Vec<u8>,
    runtime: tokio::runtime::Handle,
    stall_timeout: Duration,
}

impl StreamWriter {
    fn send_chunk(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(STREAM_CHUNK),
        ));
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the stream has ended"))?;
        let stall = self.stall_timeout;
        // The API thread's runtime drives the timer and the connection; this thread only
        // waits for room in the channel.
        match self
            .runtime
            .block_on(async { tokio::time::timeout(stall, sender.send_data(chunk)).await })
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {stall:?}"),
            )),
        }
    }

    /// Sends what is left and ends the stream, with `trailers` if any.
    pub fn finish(mut self, trailers: Option<(&'static str, String)>) -> io::Result<()> {
        self.send_chunk()?;
        if let (Some((name, value)), Some(sender)) = (&trailers, self.sender.as_mut()) {
            let mut map = HeaderMap::new();
            // A header value is visible ASCII: anything else becomes `?`.
            let value: String = value
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&value) {
                map.insert(HeaderName::from_static(name), v);
            }
            let stall = self.stall_timeout;
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(stall, sender.send_trailers(map)).await });
        }
        Ok(())
    }

    /// Ends the stream as broken: the client sees an incomplete answer, not a short one.
    pub fn abort(mut self, why: &str) {
        let _ = self.send_chunk();
        if let Some(sender) = self.sender.take() {
            sender.abort(io::Error::other(why.to_string()));
        }
    }
}

impl io::Write for StreamWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= STREAM_CHUNK {
            self.send_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_chunk()
    }
}

/// What the connection tasks share.
struct Shared {
    jobs: mpsc::Sender<Job>,
    waker: VmWaker,
    limits: Limits,
    runtime: tokio::runtime::Handle,
}

/// The running server: its thread, its socket (removed when this is dropped) and the
/// queue of jobs for the VMM thread.
#[derive(Debug)]
pub struct ApiServer {
    jobs: mpsc::Receiver<Job>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    socket: ApiSocket,
}

impl ApiServer {
    /// Binds `path` ([`ApiSocket::bind`]: mode 0600, an existing path refused unless it
    /// is a stale socket of this user) and starts serving. `waker` wakes the VMM thread
    /// for each job.
    pub fn start(
        path: &std::path::Path,
        waker: VmWaker,
        limits: Limits,
    ) -> Result<Self, ServerError> {
        let socket = ApiSocket::bind(path)?;
        let listener = socket.listener().map_err(ServerError::Thread)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Thread)?;
        let (jobs_tx, jobs) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared = Arc::new(Shared {
            jobs: jobs_tx,
            waker,
            limits,
            runtime: runtime.handle().clone(),
        });
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::UnixListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, shared, stopped).await,
                        Err(e) => eprintln!("vmm: the API socket cannot be served: {e}"),
                    }
                });
            })
            .map_err(ServerError::Thread)?;
        Ok(Self {
            jobs,
            stop: Some(stop),
            thread: Some(thread),
            socket,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &std::path::Path {
        self.socket.path()
    }

    /// The next waiting job, if any.
    pub fn try_next(&self) -> Option<Job> {
        self.jobs.try_recv().ok()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Jobs still queued are dropped: their clients get a 503.
        while self.jobs.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(shared.limits.max_connections));
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => {
                // Answers already given (the shutdown's own) are still being written:
                // let the connections end, for a second at most.
                let all = u32::try_from(shared.limits.max_connections).unwrap_or(u32::MAX);
                let _ = tokio::time::timeout(Duration::from_secs(1), permits.acquire_many(all)).await;
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, say: wait a little rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // One connection too many is closed at once.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let limits = shared.limits;
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(request, &shared).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.head_timeout)
                .max_headers(limits.max_headers)
                .max_buf_size(limits.max_head_bytes.max(8192));
            // Errors are the client's (it went away, sent garbage, timed out): hyper
            // has answered what could be answered; the connection just ends.
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(request: Request<Incoming>, shared: &Shared) -> Response<ApiBody> {
    let (parts, body) = request.into_parts();
    let trailers = parts.headers.get_all(hyper::header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("trailers"))
    });
    // A declared length over the limit is refused before any of it is read.
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max_body = shared.limits.max_body_bytes;
    if declared.is_some_and(|n| n > max_body as u64) {
        return error_response(&too_large(max_body));
    }
    let body = match tokio::time::timeout(
        shared.limits.body_timeout,
        Limited::new(body, max_body).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error_response(&too_large(max_body));
        }
        Ok(Err(e)) => return error_response(&ApiError::bad(format!("reading the body: {e}"))),
        Err(_) => {
            return error_response(&ApiError {
                status: 408,
                message: format!(
                    "the request body did not arrive within {:?}",
                    shared.limits.body_timeout
                ),
            });
        }
    };
    let request = match parse(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        &body,
    ) {
        Ok(request) => request,
        Err(e) => return error_response(&e),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        request,
        trailers,
        reply: Responder {
            tx,
            runtime: shared.runtime.clone(),
            stall_timeout: shared.limits.stall_timeout,
            headers: Vec::new(),
        },
    };
    let gone = || error_response(&ApiError::unavailable("the VM has stopped"));
    if shared.jobs.send(job).is_err() || !shared.waker.wake() {
        return gone();
    }
    match rx.await {
        Ok(response) => response,
        Err(_) => gone(),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError {
        status: 413,
        message: format!("the request body is over {limit} bytes"),
    }
}

fn error_response(error: &ApiError) -> Response<ApiBody> {
    let mut response = Response::new(full(Bytes::from(error.to_json())));
    *response.status_mut() =
        StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
