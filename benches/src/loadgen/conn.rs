//! One HTTP/1.1 keep-alive connection (`hyper::client::conn::http1` over a
//! `TcpStream` with `TCP_NODELAY`), reconnected after a failure, and the parsed
//! `--target`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::error::LoadgenError;

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// `Host` header value (`host:port`).
    pub host: HeaderValue,
}

impl Target {
    /// Parses an `http://host[:port]` URL (no path) and resolves it.
    pub async fn resolve(url: &str) -> Result<Self, LoadgenError> {
        let bad = |reason: &str| LoadgenError::Target {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// is supported")),
            None => return Err(bad("missing http://")),
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("give the base URL without a path"));
        }
        let host = uri.host().ok_or_else(|| bad("missing host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let authority = format!("{host}:{port}");
        let addr = tokio::net::lookup_host(&authority)
            .await
            .map_err(|source| LoadgenError::Resolve {
                host: authority.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| bad("host resolves to no address"))?;
        let host = HeaderValue::from_str(&authority).map_err(|_| bad("bad host"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            host,
        })
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug)]
pub enum SendError {
    /// Connect refused or failed, or the connection broke.
    Connection,
    /// No full answer within the timeout.
    Timeout,
}

/// A keep-alive connection, opened lazily and again after any failure.
pub struct Connection {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `addr`, not yet opened.
    pub fn new(addr: SocketAddr) -> Self {
        Connection { addr, sender: None }
    }

    async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| SendError::Connection)?;
        stream
            .set_nodelay(true)
            .map_err(|_| SendError::Connection)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| SendError::Connection)?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes; errors surface on
            // the next request.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Waits until the connection can take a request, opening it if needed.
    /// Returns `Err` if it could not be opened.
    pub async fn ready(&mut self) -> Result<(), SendError> {
        if let Some(s) = self.sender.as_mut() {
            if s.ready().await.is_ok() {
                return Ok(());
            }
        }
        self.sender = None;
        let mut s = Self::connect(self.addr).await?;
        s.ready().await.map_err(|_| SendError::Connection)?;
        self.sender = Some(s);
        Ok(())
    }

    /// Sends `req` on the (ready) connection and reads the whole answer. On any
    /// failure the connection is dropped, to be reopened by the next `ready`.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, SendError> {
        let Some(sender) = self.sender.as_mut() else {
            return Err(SendError::Connection);
        };
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|_| SendError::Connection)?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|_| SendError::Connection)?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// Drops the connection (after a timeout, the answer may still be in flight).
    pub fn reset(&mut self) {
        self.sender = None;
    }
}

/// Runs `f` with a deadline, mapping expiry to [`SendError::Timeout`].
pub async fn with_timeout<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or(Err(SendError::Timeout))
}
