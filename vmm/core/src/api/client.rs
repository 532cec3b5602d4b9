//! A client of the API socket (what `vmm ctl` and the tests use): one HTTP/1.1 request
//! per connection, the answer's body streamed to a writer as it arrives.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;

/// Why a request could not be made or its answer read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No VMM listens there.
    #[error("cannot connect to the API socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The exchange failed (the VMM went away, or broke the answer off).
    #[error("{doing}: {message}")]
    Http {
        /// What was being done.
        doing: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Writing the answer out failed.
    #[error("writing the answer: {0}")]
    Output(#[source] io::Error),
    /// The answer did not come in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// An answer: its status and headers, its trailers if any; a 2xx answer's body went to
/// the writer, another's (an `{"error": ...}`) is [`Answer::error_body`].
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The trailers (a `GET /mappings` stream's [`super::server::WALK_TRAILER`]).
    pub trailers: Option<HeaderMap>,
    /// The body of an answer that is not a 2xx.
    pub error_body: Vec<u8>,
}

impl Answer {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A trailer's value as text.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()?
            .get(name)
            .and_then(|v| v.to_str().ok())
    }
}

/// A client of one socket, for one thread at a time.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
    /// Built on first use; drives the connection during requests.
    runtime: std::sync::OnceLock<tokio::runtime::Runtime>,
}

impl Client {
    /// A client of the socket at `socket`; each request must be answered within
    /// `timeout` (the body included).
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Self {
            socket: socket.to_path_buf(),
            timeout,
            runtime: std::sync::OnceLock::new(),
        }
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, ClientError> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Http {
                doing: "starting the client",
                message: e.to_string(),
            })?;
        Ok(self.runtime.get_or_init(|| runtime))
    }

    /// Sends `method uri` with `body` (JSON, if any) and writes the answer's body to
    /// `out` as it arrives.
    pub fn request(
        &self,
        method: &str,
        uri: &str,
        body: Option<&[u8]>,
        out: &mut dyn Write,
    ) -> Result<Answer, ClientError> {
        let runtime = self.runtime()?;
        let timeout = self.timeout;
        runtime.block_on(async {
            tokio::time::timeout(timeout, self.exchange(method, uri, body, out))
                .await
                .map_err(|_| ClientError::Timeout(timeout))?
        })
    }

    /// [`Client::request`] with the body collected.
    pub fn request_bytes(
        &self,
        method: &str,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<(Answer, Vec<u8>), ClientError> {
        let mut out = Vec::new();
        let answer = self.request(method, uri, body, &mut out)?;
        Ok((answer, out))
    }

    async fn exchange(
        &self,
        method: &str,
        uri: &str,
        body: Option<&[u8]>,
        out: &mut dyn Write,
    ) -> Result<Answer, ClientError> {
        let http = |doing| {
            move |e: hyper::Error| ClientError::Http {
                doing,
                message: e.to_string(),
            }
        };
        // A connection per request: what a client holds between requests is nothing
        // (the VMM's connection limit counts only requests in flight). Kept-alive
        // connections measured slower here (about 1 ms a request more, in hyper's
        // client), and a request costs about 0.1 ms on a new one.
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http("starting the exchange"))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost")
            .header("te", "trailers");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http {
                doing: "building the request",
                message: e.to_string(),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(http("sending the request"))?;
        let (parts, mut incoming) = response.into_parts();
        let success = parts.status.is_success();
        let mut trailers = None;
        let mut error_body = Vec::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(http("reading the answer"))?;
            match frame.into_data() {
                Ok(data) if success => out.write_all(&data).map_err(ClientError::Output)?,
                // Bounded: an error is a sentence.
                Ok(data) if error_body.len() < 64 << 10 => error_body.extend_from_slice(&data),
                Ok(_) => {}
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        }
        out.flush().map_err(ClientError::Output)?;
        // Closing our side ends the connection task cleanly (aborting it instead cost
        // about a millisecond per request: the runtime's timer tick).
        drop(sender);
        let _ = driver.await;
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            trailers,
            error_body,
        })
    }
}
