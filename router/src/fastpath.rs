//! The forwarding fast path. The request that makes up nearly all traffic — `POST
//! /predict` over HTTP/1.1 with `X-User-Id` and a `Content-Length` body — is read,
//! assigned and forwarded by a small HTTP/1.1 exchange written for exactly that, over
//! an arm connection checked out of this worker thread's pool ([`crate::pool`]) and
//! driven by the request's own task: a request crosses no task or thread, and costs
//! the proxy little more than its four socket calls.
//!
//! Anything else — other routes and methods, `X-Variant` overrides, chunked or
//! oversized bodies, `Expect`, upgrades, HTTP/1.0, a down arm, the concurrency limit
//! — is handed to hyper with the bytes already read, and [`crate::service`] serves the
//! rest of that connection. A head that is not HTTP/1.1 or is too large is answered
//! here with a JSON error. Both paths count the same series and answer with the same
//! headers.

use abgate_common::http::{Handoff, Stopping};
use abgate_common::{ApiError, ErrorKind};
use bytes::{Buf, BytesMut};
use http::StatusCode;
use std::io::Write as _;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::assignment::position;
use crate::config::ArmConfig;
use crate::error::RouterError;
use crate::metrics::Source;
use crate::pool::{self, Upstream};
use crate::service::{
    arm_error_kind, new_request_id, retry_arm, valid_request_id, Assignment, ARM_ERROR_BODY_LIMIT,
};
use crate::state::{Active, ActiveArm, Router};

/// Request heads with more header lines go to hyper (which allows 100).
const MAX_HEADERS: usize = 64;
/// The largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size while waiting for a head (client request or arm response): heads are
/// small, and an idle connection should not pin a large buffer.
const HEAD_READ: usize = 4 * 1024;
/// How long, and for how many bytes, a refused client is read after the answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;
/// Read size for bodies larger than what is buffered, relayed in pieces.
const READ_CHUNK: usize = 16 * 1024;

/// Response headers the arm's response does not pass on: hop-by-hop ones, the framing
/// (set again here), and the router's own.
const DROPPED_RESPONSE_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
    "content-length",
    "x-variant",
    "x-assigned-variant",
    "x-request-id",
];

/// Serves `client` until it closes, the server stops, or a request needs hyper.
pub async fn serve_connection(
    router: Arc<Router>,
    mut client: TcpStream,
    mut stopping: Stopping,
    max_head_bytes: usize,
) -> Handoff {
    let mut conn = Connection::new();
    // Created once, so waiting for it between requests costs no new registration.
    let mut stopped = std::pin::pin!(async move {
        let _ = stopping.wait_for(|s| *s).await;
    });
    loop {
        let head_deadline = Instant::now() + router.active().config.header_timeout;
        let (plan, active) = loop {
            if !conn.buf.is_empty() {
                // Loaded once the head is here, so a reload while idle applies to it.
                let active = router.active();
                match conn.inspect(&active, max_head_bytes) {
                    Inspection::Partial => {}
                    Inspection::Hyper => return Handoff::Hyper(client, conn.buf.freeze()),
                    Inspection::Fast(plan) => break (plan, active),
                    Inspection::Reject(kind) => {
                        conn.reject(&mut client, &router, kind, max_head_bytes)
                            .await;
                        return Handoff::Closed;
                    }
                }
            }
            conn.buf.reserve(HEAD_READ);
            let idle = conn.buf.is_empty();
            let read = tokio::select! {
                biased;
                read = timeout_at(head_deadline, client.read_buf(&mut conn.buf)) => read,
                () = &mut stopped, if idle => return Handoff::Closed,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, broken or silent past the header timeout: nothing to answer.
                _ => return Handoff::Closed,
            }
        };
        let Some(_slot) = router.admit(active.config.max_concurrent_requests) else {
            return Handoff::Hyper(client, conn.buf.freeze());
        };
        let assigned = Assignment {
            arm: active.split.pick(plan.position),
            source: Source::Sticky,
            position: plan.position,
        };
        if !active.arms[assigned.arm].health.is_up() {
            return Handoff::Hyper(client, conn.buf.freeze());
        }
        let started = std::time::Instant::now();
        match conn
            .read_body(&mut client, &plan, started, &active, &router)
            .await
        {
            BodyRead::Complete => {}
            BodyRead::Answered => {
                let _ = client.shutdown().await;
                return Handoff::Closed;
            }
        }
        match conn
            .forward(&mut client, &plan, &assigned, started, &active)
            .await
        {
            Ok(true) => conn.buf.advance(plan.head_len + plan.body_len),
            Ok(false) => {
                let _ = client.shutdown().await;
                return Handoff::Closed;
            }
            Err(ClientGone) => return Handoff::Closed,
        }
    }
}

/// What a request head asks for.
enum Inspection {
    /// More bytes are needed.
    Partial,
    /// The fast path does not serve it: hyper does.
    Hyper,
    /// Not a request anyone can serve: answered with this error, then closed.
    Reject(ErrorKind),
    /// A `/predict` the fast path serves.
    Fast(Plan),
}

/// A `/predict` request the fast path serves.
struct Plan {
    head_len: usize,
    body_len: usize,
    /// The client asked to close after this response.
    close: bool,
    /// The user's position from `X-User-Id`.
    position: f64,
}

/// The client's connection is unusable; nothing more can be sent on it.
struct ClientGone;

enum BodyRead {
    Complete,
    /// The client was answered (or is gone); close the connection.
    Answered,
}

/// How a failed exchange with an arm went wrong.
enum Failure {
    /// A reused connection had been closed by the arm before the request reached it:
    /// retried at once on a fresh connection to the same arm.
    Stale,
    /// No complete response head within the request timeout.
    Timeout,
    /// The connection broke or the answer was not HTTP.
    Broken(String),
}

/// How the arm's response body ends.
#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// An arm's response head, already rewritten for the client into `Connection::out`.
struct ResponseHead {
    status: StatusCode,
    framing: Framing,
    /// The arm's connection can carry another request after this response.
    reusable: bool,
}

/// Per-client-connection state, reused from request to request.
struct Connection {
    /// Bytes read from the client and not yet consumed.
    buf: BytesMut,
    /// The forwarded header lines of the current request, ending with the blank line.
    headers: Vec<u8>,
    request_id: Vec<u8>,
    /// Path and query of the current request.
    path: Vec<u8>,
    /// Bytes being written (to an arm or to the client).
    out: Vec<u8>,
}

fn eq(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// `HeaderValue::to_str`'s rule: visible ASCII, space and tab.
fn visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl Connection {
    fn new() -> Connection {
        Connection {
            buf: BytesMut::with_capacity(HEAD_READ),
            headers: Vec::with_capacity(1024),
            request_id: Vec::with_capacity(32),
            path: Vec::with_capacity(32),
            out: Vec::with_capacity(HEAD_READ),
        }
    }

    /// The request for the arm at `authority`, into `out`: the client's path and
    /// forwarded headers, the arm as `Host`, and the body.
    fn write_request(&mut self, plan: &Plan, authority: &str) {
        let body = &self.buf[plan.head_len..plan.head_len + plan.body_len];
        self.out.clear();
        self.out.extend_from_slice(b"POST ");
        self.out.extend_from_slice(&self.path);
        self.out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.out.extend_from_slice(authority.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&self.headers);
        self.out.extend_from_slice(body);
    }

    /// Parses the buffered head and decides who serves it; for the fast path, copies
    /// what forwarding needs (path, forwarded header lines, request id).
    fn inspect(&mut self, active: &Active, max_head_bytes: usize) -> Inspection {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let head_len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) if n <= max_head_bytes => n,
            Ok(httparse::Status::Partial) if self.buf.len() < max_head_bytes => {
                return Inspection::Partial
            }
            Ok(_) => return Inspection::Reject(ErrorKind::HeadersTooLarge),
            // More header lines than the fast path keeps room for: hyper allows 100.
            Err(httparse::Error::TooManyHeaders) => return Inspection::Hyper,
            Err(_) => return Inspection::Reject(ErrorKind::MalformedRequest),
        };
        let path = req.path.unwrap_or("");
        let on_predict = path == "/predict" || path.starts_with("/predict?");
        if req.method != Some("POST") || req.version != Some(1) || !on_predict {
            return Inspection::Hyper;
        }
        self.path.clear();
        self.path.extend_from_slice(path.as_bytes());
        self.headers.clear();
        self.request_id.clear();
        let (mut body_len, mut user, mut close, mut id_seen) = (None, None, false, false);
        for header in req.headers.iter() {
            let (name, value) = (header.name, header.value);
            if eq(name, "content-length") {
                match (body_len, parse_length(value)) {
                    (None, Some(n)) if n <= active.config.body_limit_bytes => body_len = Some(n),
                    // Two lengths that disagree, or one that is not a number: the body
                    // cannot be framed, so no one can serve it.
                    (Some(a), Some(b)) if a != b => {
                        return Inspection::Reject(ErrorKind::MalformedRequest)
                    }
                    (_, None) if !value.iter().all(u8::is_ascii_digit) || value.is_empty() => {
                        return Inspection::Reject(ErrorKind::MalformedRequest)
                    }
                    // Over the limit (413), or a repeated equal length: hyper's path.
                    _ => return Inspection::Hyper,
                }
            } else if eq(name, "x-user-id") {
                if user.is_some() || value.is_empty() || !visible_ascii(value) {
                    return Inspection::Hyper;
                }
                user = std::str::from_utf8(value).ok();
                push_header(&mut self.headers, name, value);
            } else if eq(name, "connection") {
                for token in value.split(|&b| b == b',') {
                    match token.trim_ascii() {
                        t if t.eq_ignore_ascii_case(b"close") => close = true,
                        t if t.eq_ignore_ascii_case(b"keep-alive") || t.is_empty() => {}
                        // Names further hop-by-hop headers: hyper's path strips them.
                        _ => return Inspection::Hyper,
                    }
                }
            } else if eq(name, "x-request-id") {
                // Like the hyper path: the first one counts, kept only if valid.
                if !id_seen && valid_request_id(value) {
                    self.request_id.extend_from_slice(value);
                }
                id_seen = true;
            } else if ["transfer-encoding", "expect", "upgrade", "x-variant"]
                .iter()
                .any(|n| eq(name, n))
            {
                return Inspection::Hyper;
            } else if ![
                "host",
                "keep-alive",
                "proxy-connection",
                "te",
                "trailer",
                "proxy-authorization",
                "proxy-authenticate",
                "x-override-token",
            ]
            .iter()
            .any(|n| eq(name, n))
            {
                push_header(&mut self.headers, name, value);
            }
        }
        let (Some(body_len), Some(user)) = (body_len, user) else {
            return Inspection::Hyper;
        };
        if self.request_id.is_empty() {
            self.request_id
                .extend_from_slice(new_request_id().as_bytes());
        }
        self.headers.extend_from_slice(b"x-request-id: ");
        self.headers.extend_from_slice(&self.request_id);
        let _ = write!(self.headers, "\r\ncontent-length: {body_len}\r\n\r\n");
        Inspection::Fast(Plan {
            head_len,
            body_len,
            close,
            position: position(&active.config.salt, user),
        })
    }

    /// Answers a head no route can serve with a JSON error, counted as unassigned (hyper
    /// would answer a bare 400 or 431, uncounted), and closes the connection.
    async fn reject(
        &mut self,
        client: &mut TcpStream,
        router: &Router,
        kind: ErrorKind,
        max_head_bytes: usize,
    ) {
        let message = match kind {
            ErrorKind::HeadersTooLarge => {
                format!("request headers exceed the limit of {max_head_bytes} bytes")
            }
            _ => "the request is not valid HTTP/1.1".to_string(),
        };
        let err = ApiError::new(kind, message);
        router.metrics.unassigned.error(kind);
        self.out.clear();
        let id = new_request_id();
        write_error_head(&mut self.out, &err, id.as_bytes(), None, None, true);
        if client.write_all(&self.out).await.is_ok() && client.shutdown().await.is_ok() {
            // Lingering close: read (and drop) what the client is still sending for a
            // moment, so closing with unread bytes does not reset the connection
            // before the client has read the answer.
            let mut scratch = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                let mut drained = 0;
                while drained < LINGER_BYTES {
                    match client.read(&mut scratch).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
            })
            .await;
        }
    }

    /// Reads the rest of the body within the body timeout; a slow client is answered
    /// 408 as hyper's path answers it.
    async fn read_body(
        &mut self,
        client: &mut TcpStream,
        plan: &Plan,
        started: std::time::Instant,
        active: &Active,
        router: &Router,
    ) -> BodyRead {
        let deadline = Instant::from_std(started) + active.config.body_timeout;
        let total = plan.head_len + plan.body_len;
        while self.buf.len() < total {
            self.buf.reserve(READ_CHUNK.max(total - self.buf.len()));
            match timeout_at(deadline, client.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return BodyRead::Answered,
                Err(_) => {
                    let err = ApiError::new(
                        ErrorKind::RequestTimeout,
                        format!(
                            "request body not received within {} ms",
                            active.config.body_timeout.as_millis()
                        ),
                    );
                    router.metrics.unassigned.error(err.kind);
                    self.out.clear();
                    write_error_head(&mut self.out, &err, &self.request_id, None, None, true);
                    let _ = client.write_all(&self.out).await;
                    return BodyRead::Answered;
                }
            }
        }
        BodyRead::Complete
    }

    /// Forwards the buffered request, with the hyper path's retry and failover, and
    /// answers the client. `Ok(true)` when the connection can carry another request.
    async fn forward(
        &mut self,
        client: &mut TcpStream,
        plan: &Plan,
        assigned: &Assignment,
        started: std::time::Instant,
        active: &Active,
    ) -> Result<bool, ClientGone> {
        active.arms[assigned.arm].series.assigned(assigned.source);
        let mut serving = assigned.arm;
        let mut retried = false;
        let outcome = loop {
            let assigned_header =
                (serving != assigned.arm).then(|| active.arms[assigned.arm].header.as_bytes());
            let result = self
                .attempt(plan, &active.arms[serving], assigned_header, active)
                .await;
            match result {
                Err(e) if !retried => match retry_arm(active, serving, assigned, &e) {
                    Some(next) => {
                        retried = true;
                        serving = next;
                    }
                    None => break Err(e),
                },
                other => break other,
            }
        };
        let served = &active.arms[serving];
        let series = &served.series.common;
        series.predictions.inc();
        let assigned_header =
            (serving != assigned.arm).then(|| active.arms[assigned.arm].header.as_bytes());
        let (mut upstream, head) = match outcome {
            Err(e) => {
                let err = e.to_api();
                series.error(err.kind);
                tracing::debug!(error = %e, "predict failed");
                series.duration.observe(started.elapsed().as_secs_f64());
                self.out.clear();
                write_error_head(
                    &mut self.out,
                    &err,
                    &self.request_id,
                    Some(served.header.as_bytes()),
                    assigned_header,
                    plan.close,
                );
                client.write_all(&self.out).await.map_err(|_| ClientGone)?;
                return Ok(!plan.close);
            }
            Ok(answer) => answer,
        };
        if serving != assigned.arm {
            active.arms[assigned.arm].series.failovers.inc();
        }
        let deadline = Instant::now() + active.config.upstream.request_timeout;
        if !head.status.is_success() {
            let kind = match head.framing {
                Framing::Length(n) if n <= ARM_ERROR_BODY_LIMIT => {
                    match fill(&mut upstream, n, deadline).await {
                        Ok(()) => arm_error_kind(head.status, &upstream.buf[..n]),
                        Err(_) => arm_error_kind(head.status, b""),
                    }
                }
                _ => arm_error_kind(head.status, b""),
            };
            series.error(kind);
        }
        series.duration.observe(started.elapsed().as_secs_f64());
        let relayed =
            relay_body(&mut upstream, client, &mut self.out, head.framing, deadline).await;
        match relayed {
            Relay::Done => {
                if head.reusable && upstream.buf.is_empty() {
                    pool::checkin(upstream, pool_limits(active));
                }
                Ok(!plan.close && !matches!(head.framing, Framing::UntilClose))
            }
            Relay::UpstreamFailed => Ok(false),
            Relay::ClientGone => Err(ClientGone),
        }
    }

    /// One exchange with `arm`: on success the client-ready head is in `out` and the
    /// body (or its start) in the returned upstream's buffer.
    async fn attempt(
        &mut self,
        plan: &Plan,
        served: &ActiveArm,
        assigned: Option<&[u8]>,
        active: &Active,
    ) -> Result<(Upstream, ResponseHead), RouterError> {
        let arm = &served.config;
        let deadline = Instant::now() + active.config.upstream.request_timeout;
        let timeout = || RouterError::Timeout {
            arm: arm.name.clone(),
            timeout: active.config.upstream.request_timeout,
        };
        let broken = |reason: String| RouterError::Broken {
            arm: arm.name.clone(),
            reason,
        };
        let authority = arm.authority.as_str();
        let mut pooled = pool::checkout(authority, pool_limits(active));
        loop {
            let reused = pooled.is_some();
            let mut upstream = match pooled.take() {
                Some(u) => u,
                None => match connect(arm, active, deadline).await {
                    Some(Ok(u)) => u,
                    Some(Err(e)) => return Err(e),
                    None => return Err(timeout()),
                },
            };
            self.write_request(plan, authority);
            let tags = Tags {
                variant: served.header.as_bytes(),
                assigned,
                request_id: &self.request_id,
                close: plan.close,
            };
            match exchange(&mut upstream, reused, &mut self.out, &tags, deadline).await {
                Ok(head) => return Ok((upstream, head)),
                // The arm had closed it while idle (a keep-alive timeout, a restart):
                // its other idle connections likely went the same way. Once more, on
                // a fresh connection.
                Err(Failure::Stale) => pool::purge(authority),
                Err(Failure::Timeout) => return Err(timeout()),
                Err(Failure::Broken(reason)) => return Err(broken(reason)),
            }
        }
    }
}

/// The pool settings of the config in force.
fn pool_limits(active: &Active) -> pool::Limits {
    pool::Limits {
        max_idle_per_arm: active.config.upstream.pool_max_idle_per_arm,
        idle_timeout: active.config.upstream.pool_idle_timeout,
    }
}

/// A new connection to `arm` within the connect timeout; `None` past `deadline`.
async fn connect(
    arm: &ArmConfig,
    active: &Active,
    deadline: Instant,
) -> Option<Result<Upstream, RouterError>> {
    let authority = arm.authority.as_str();
    let connect_by = deadline.min(Instant::now() + active.config.upstream.connect_timeout);
    let stream = match timeout_at(connect_by, TcpStream::connect(authority)).await {
        Err(_) if connect_by < deadline => Err(format!(
            "no connection within {} ms",
            active.config.upstream.connect_timeout.as_millis()
        )),
        Err(_) => return None,
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(s)) => Ok(s),
    };
    Some(match stream {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            Ok(Upstream {
                authority: authority.to_string(),
                stream,
                buf: BytesMut::with_capacity(HEAD_READ),
                idle_since: Instant::now(),
            })
        }
        Err(reason) => Err(RouterError::Connect {
            arm: arm.name.clone(),
            reason,
        }),
    })
}

/// The socket-free work of one fast-path request, for benchmarks: inspects `request`,
/// assigns its user, writes the request for the arm, then parses the arm's `response`
/// head and writes the client's. Returns the arm and the two output sizes, or `None`
/// when hyper would serve the request, its body is incomplete, or `response` is not a
/// complete final head.
pub fn rewrite_without_sockets(
    active: &Active,
    request: &[u8],
    response: &[u8],
) -> Option<(usize, usize, usize)> {
    let mut conn = Connection::new();
    conn.buf.extend_from_slice(request);
    let Inspection::Fast(plan) = conn.inspect(active, 32 * 1024) else {
        return None;
    };
    if conn.buf.len() < plan.head_len + plan.body_len {
        return None;
    }
    let arm = &active.arms[active.split.pick(plan.position)];
    conn.write_request(&plan, arm.config.authority.as_str());
    let sent = conn.out.len();
    let tags = Tags {
        variant: arm.header.as_bytes(),
        assigned: None,
        request_id: &conn.request_id,
        close: plan.close,
    };
    let mut client = Vec::with_capacity(HEAD_READ);
    match parse_response(response, &mut client, &tags) {
        Ok(Parsed::Final(..)) => Some((active.split.pick(plan.position), sent, client.len())),
        _ => None,
    }
}

/// The router's headers on a response.
struct Tags<'a> {
    variant: &'a [u8],
    assigned: Option<&'a [u8]>,
    request_id: &'a [u8],
    close: bool,
}

/// Sends `out` (the request) and reads the response head, leaving the client's
/// version of it in `out`.
async fn exchange(
    upstream: &mut Upstream,
    reused: bool,
    out: &mut Vec<u8>,
    tags: &Tags<'_>,
    deadline: Instant,
) -> Result<ResponseHead, Failure> {
    let lost = |e: std::io::Error| {
        if reused {
            Failure::Stale
        } else {
            Failure::Broken(e.to_string())
        }
    };
    match timeout_at(deadline, upstream.stream.write_all(out)).await {
        Err(_) => return Err(Failure::Timeout),
        Ok(Err(e)) => return Err(lost(e)),
        Ok(Ok(())) => {}
    }
    upstream.buf.clear();
    loop {
        if !upstream.buf.is_empty() {
            match parse_response(&upstream.buf, out, tags) {
                Ok(Parsed::Final(len, head)) => {
                    upstream.buf.advance(len);
                    return Ok(head);
                }
                Ok(Parsed::Interim(len)) => {
                    upstream.buf.advance(len);
                    continue;
                }
                Ok(Parsed::Partial) if upstream.buf.len() < MAX_RESPONSE_HEAD => {}
                Ok(Parsed::Partial) => {
                    return Err(Failure::Broken("response head too large".into()))
                }
                Err(reason) => return Err(Failure::Broken(reason)),
            }
        }
        let first = upstream.buf.is_empty();
        upstream.buf.reserve(HEAD_READ);
        match timeout_at(deadline, upstream.stream.read_buf(&mut upstream.buf)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(0)) if first && reused => return Err(Failure::Stale),
            Ok(Ok(0)) => {
                return Err(Failure::Broken(
                    "connection closed before the response".into(),
                ))
            }
            Ok(Err(e)) if first => return Err(lost(e)),
            Ok(Err(e)) => return Err(Failure::Broken(e.to_string())),
            Ok(Ok(_)) => {}
        }
    }
}

/// What the start of an arm's response turned out to be.
enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// An interim 1xx head of this many bytes, to skip.
    Interim(usize),
    /// The final head, of this many bytes, rewritten for the client into `out`.
    Final(usize, ResponseHead),
}

/// Parses a response head from `buf`; a final head is rewritten into `out`.
fn parse_response(buf: &[u8], out: &mut Vec<u8>, tags: &Tags<'_>) -> Result<Parsed, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status {code}"))?;
    if status.is_informational() {
        return Ok(Parsed::Interim(len));
    }
    let mut reusable = res.version == Some(1);
    let (mut length, mut chunked) = (None, false);
    let mut named: [&[u8]; 8] = [b""; 8];
    let mut named_count = 0;
    for header in res.headers.iter() {
        if eq(header.name, "connection") {
            for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    reusable |= res.version == Some(0);
                } else if named_count < named.len() {
                    named[named_count] = token;
                    named_count += 1;
                }
            }
        } else if eq(header.name, "content-length") {
            match (length, parse_length(header.value)) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Err("invalid Content-Length".into()),
            }
        } else if eq(header.name, "transfer-encoding") {
            if chunked || !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported Transfer-Encoding".into());
            }
            chunked = true;
        }
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for header in res.headers.iter() {
        let hop = named[..named_count]
            .iter()
            .any(|n| header.name.as_bytes().eq_ignore_ascii_case(n));
        if !hop && !DROPPED_RESPONSE_HEADERS.iter().any(|d| eq(header.name, d)) {
            push_header(out, header.name, header.value);
        }
    }
    match framing {
        Framing::Length(_) if bodiless => {}
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::UntilClose => {}
    }
    write_tags(out, Some(tags.variant), tags.assigned, tags.request_id);
    if tags.close || matches!(framing, Framing::UntilClose) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Parsed::Final(
        len,
        ResponseHead {
            status,
            framing,
            reusable,
        },
    ))
}

fn write_tags(out: &mut Vec<u8>, variant: Option<&[u8]>, assigned: Option<&[u8]>, id: &[u8]) {
    if let Some(variant) = variant {
        push_header(out, "x-variant", variant);
    }
    if let Some(assigned) = assigned {
        push_header(out, "x-assigned-variant", assigned);
    }
    push_header(out, "x-request-id", id);
}

/// The router's own JSON error response, complete, into `out`.
fn write_error_head(
    out: &mut Vec<u8>,
    err: &ApiError,
    request_id: &[u8],
    variant: Option<&[u8]>,
    assigned: Option<&[u8]>,
    close: bool,
) {
    let status = err.kind.status();
    let body = err.to_json();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    write_tags(out, variant, assigned, request_id);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
}

/// Reads until the upstream buffer holds `n` bytes.
async fn fill(upstream: &mut Upstream, n: usize, deadline: Instant) -> Result<(), ()> {
    while upstream.buf.len() < n {
        upstream.buf.reserve(n - upstream.buf.len());
        match timeout_at(deadline, upstream.stream.read_buf(&mut upstream.buf)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => return Err(()),
        }
    }
    Ok(())
}

/// How relaying a body ended.
enum Relay {
    Done,
    /// The arm failed mid-body: the client's response is cut short.
    UpstreamFailed,
    ClientGone,
}

/// Sends the head in `out` and the body from `upstream` to the client. A body that
/// is already buffered goes out with the head in one write.
async fn relay_body(
    upstream: &mut Upstream,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    framing: Framing,
    deadline: Instant,
) -> Relay {
    match framing {
        Framing::Length(n) => {
            let buffered = n.min(upstream.buf.len());
            out.extend_from_slice(&upstream.buf[..buffered]);
            upstream.buf.advance(buffered);
            if client.write_all(out).await.is_err() {
                return Relay::ClientGone;
            }
            copy(upstream, client, n - buffered, deadline).await
        }
        Framing::UntilClose => {
            out.extend_from_slice(&upstream.buf);
            upstream.buf.clear();
            if client.write_all(out).await.is_err() {
                return Relay::ClientGone;
            }
            loop {
                upstream.buf.reserve(READ_CHUNK);
                match timeout_at(deadline, upstream.stream.read_buf(&mut upstream.buf)).await {
                    Ok(Ok(0)) => return Relay::Done,
                    Ok(Ok(_)) => {
                        if client.write_all(&upstream.buf).await.is_err() {
                            return Relay::ClientGone;
                        }
                        upstream.buf.clear();
                    }
                    _ => return Relay::UpstreamFailed,
                }
            }
        }
        Framing::Chunked => relay_chunked(upstream, client, out, deadline).await,
    }
}

/// Copies exactly `n` more body bytes from the arm to the client.
async fn copy(
    upstream: &mut Upstream,
    client: &mut TcpStream,
    mut n: usize,
    deadline: Instant,
) -> Relay {
    while n > 0 {
        if upstream.buf.is_empty() {
            upstream.buf.reserve(READ_CHUNK);
            match timeout_at(deadline, upstream.stream.read_buf(&mut upstream.buf)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => return Relay::UpstreamFailed,
            }
        }
        let take = n.min(upstream.buf.len());
        if client.write_all(&upstream.buf[..take]).await.is_err() {
            return Relay::ClientGone;
        }
        upstream.buf.advance(take);
        n -= take;
    }
    Relay::Done
}

/// Relays a chunked body as it is, following the chunk sizes to find its end (so
/// the arm's connection can be reused).
async fn relay_chunked(
    upstream: &mut Upstream,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    deadline: Instant,
) -> Relay {
    loop {
        let step = match httparse::parse_chunk_size(&upstream.buf) {
            Ok(httparse::Status::Complete((line, 0))) => {
                // Last chunk: optional trailers, then an empty line.
                let rest = &upstream.buf[line..];
                let end = if rest.starts_with(b"\r\n") {
                    Some(line + 2)
                } else {
                    rest.windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| line + p + 4)
                };
                match end {
                    Some(end) => {
                        out.extend_from_slice(&upstream.buf[..end]);
                        upstream.buf.advance(end);
                        return match client.write_all(out).await {
                            Ok(()) => Relay::Done,
                            Err(_) => Relay::ClientGone,
                        };
                    }
                    None if upstream.buf.len() > MAX_RESPONSE_HEAD => return Relay::UpstreamFailed,
                    None => None,
                }
            }
            Ok(httparse::Status::Complete((line, size))) => {
                let Some(total) = usize::try_from(size)
                    .ok()
                    .and_then(|s| s.checked_add(line + 2))
                else {
                    return Relay::UpstreamFailed;
                };
                Some(total)
            }
            Ok(httparse::Status::Partial) if upstream.buf.len() < 1024 => None,
            _ => return Relay::UpstreamFailed,
        };
        match step {
            Some(total) if upstream.buf.len() >= total => {
                out.extend_from_slice(&upstream.buf[..total]);
                upstream.buf.advance(total);
                if out.len() >= READ_CHUNK {
                    if client.write_all(out).await.is_err() {
                        return Relay::ClientGone;
                    }
                    out.clear();
                }
            }
            Some(total) => {
                // A chunk larger than what is buffered: stream it.
                let buffered = upstream.buf.len();
                out.extend_from_slice(&upstream.buf);
                upstream.buf.clear();
                if client.write_all(out).await.is_err() {
                    return Relay::ClientGone;
                }
                out.clear();
                match copy(upstream, client, total - buffered, deadline).await {
                    Relay::Done => {}
                    other => return other,
                }
            }
            None => {
                upstream.buf.reserve(READ_CHUNK);
                match timeout_at(deadline, upstream.stream.read_buf(&mut upstream.buf)).await {
                    Ok(Ok(read)) if read > 0 => {}
                    _ => return Relay::UpstreamFailed,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouterConfig;
    use std::path::Path;

    const CONFIG: &str = r#"
listen = "127.0.0.1:0"
body_limit_bytes = 1000
[experiment]
name = "t"
salt = "s"
[[arms]]
name = "best_model"
url = "http://127.0.0.1:6001"
weight = 1
"#;

    fn active() -> Arc<Active> {
        let config =
            RouterConfig::parse(Path::new("router.toml"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
        Router::new(config, String::new())
            .unwrap_or_else(|e| panic!("{e}"))
            .active()
    }

    fn connection(bytes: &str) -> Connection {
        let mut conn = Connection::new();
        conn.buf.extend_from_slice(bytes.as_bytes());
        conn
    }

    fn decide(head: &str) -> &'static str {
        match connection(head).inspect(&active(), 32 * 1024) {
            Inspection::Partial => "partial",
            Inspection::Hyper => "hyper",
            Inspection::Fast(_) => "fast",
            Inspection::Reject(ErrorKind::MalformedRequest) => "malformed",
            Inspection::Reject(_) => "too large",
        }
    }

    #[test]
    fn only_the_plain_sticky_predict_takes_the_fast_path() {
        let ok = "POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}";
        let cases = [
            (ok, "fast"),
            ("POST /predict?explain=1 HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "fast"),
            ("POST /predict HTTP/1.1\r\nX-User-Id: u1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "fast"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-", "partial"),
            ("POST /predict HTTP/1.0\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("GET /predict HTTP/1.1\r\nx-user-id: u1\r\n\r\n", "hyper"),
            ("POST /feedback HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predictx HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            // The user id is in the body: hyper's path parses it.
            ("POST /predict HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: \r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: a\r\nx-user-id: b\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}", "malformed"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: +2\r\n\r\n{}", "malformed"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 99999999999999999999\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 1001\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\nx-variant: best_model\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\nconnection: x-secret\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\nupgrade: websocket\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nbad header\r\n\r\n", "malformed"),
            ("GET / HTTP/1.1\r\nx-a : b\r\n\r\n", "malformed"),
            ("\x16\x03\x01\x02\x00\x01\x00", "malformed"),
        ];
        for (head, expected) in cases {
            assert_eq!(decide(head), expected, "{head:?}");
        }
    }

    #[test]
    fn a_head_over_the_limit_is_refused_431() {
        let big = format!(
            "POST /predict HTTP/1.1\r\nx-user-id: u1\r\nx-pad: {}\r\n",
            "a".repeat(40_000)
        );
        assert_eq!(decide(&big), "too large");
        let many: String = (0..80).map(|i| format!("x-h{i}: v\r\n")).collect();
        let head = format!("POST /predict HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            decide(&head),
            "hyper",
            "hyper allows up to 100 header lines"
        );
    }

    #[test]
    fn the_forwarded_head_keeps_end_to_end_headers_and_sets_id_and_length() {
        let mut conn = connection(
            "POST /predict HTTP/1.1\r\nHost: front\r\nX-User-Id: u1\r\nX-Trace: t\r\nX-Override-Token: s\r\nKeep-Alive: 5\r\nX-Request-Id: bad id\r\ncontent-length: 2\r\n\r\n{}",
        );
        let Inspection::Fast(plan) = conn.inspect(&active(), 32 * 1024) else {
            panic!("not fast");
        };
        assert_eq!(plan.body_len, 2);
        let headers = String::from_utf8_lossy(&conn.headers).into_owned();
        let id = String::from_utf8_lossy(&conn.request_id).into_owned();
        assert_eq!(id.len(), 32, "an invalid id is replaced: {id}");
        assert_eq!(
            headers,
            format!(
                "X-User-Id: u1\r\nX-Trace: t\r\nx-request-id: {id}\r\ncontent-length: 2\r\n\r\n"
            )
        );
        assert_eq!(conn.path, b"/predict");
        assert_eq!(plan.position, position("s", "u1"));
    }

    #[test]
    fn the_socket_free_rewrite_needs_the_whole_body_and_a_final_response_head() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let short = b"POST /predict HTTP/1.1\r\nx-user-id: u\r\ncontent-length: 10\r\n\r\n{}";
        let whole = b"POST /predict HTTP/1.1\r\nx-user-id: u\r\ncontent-length: 2\r\n\r\n{}";
        let active = active();
        assert_eq!(rewrite_without_sockets(&active, short, ok), None);
        assert_eq!(
            rewrite_without_sockets(&active, whole, b"HTTP/1.1 100 Continue\r\n\r\n"),
            None
        );
        let (arm, sent, answered) =
            rewrite_without_sockets(&active, whole, ok).unwrap_or_else(|| panic!("not fast"));
        assert_eq!(arm, 0);
        assert!(
            sent > whole.len() - 20 && answered > ok.len(),
            "{sent} {answered}"
        );
    }

    fn respond(head: &str) -> Result<Parsed, String> {
        let mut out = Vec::new();
        let tags = Tags {
            variant: b"best_model",
            assigned: None,
            request_id: b"id",
            close: false,
        };
        parse_response(head.as_bytes(), &mut out, &tags)
    }

    #[test]
    fn arm_response_framing_is_read_as_http_1_1_defines_it() {
        let framing = |head: &str| match respond(head) {
            Ok(Parsed::Final(_, h)) => match h.framing {
                Framing::Length(n) => format!("length {n} reusable {}", h.reusable),
                Framing::Chunked => format!("chunked reusable {}", h.reusable),
                Framing::UntilClose => format!("until-close reusable {}", h.reusable),
            },
            Ok(Parsed::Interim(_)) => "interim".into(),
            Ok(Parsed::Partial) => "partial".into(),
            Err(_) => "broken".into(),
        };
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                "length 5 reusable true",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                "chunked reusable true",
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", "until-close reusable false"),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                "length 1 reusable false",
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                "length 1 reusable false",
            ),
            (
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                "length 1 reusable true",
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", "length 0 reusable true"),
            ("HTTP/1.1 100 Continue\r\n\r\n", "interim"),
            ("HTTP/1.1 200 OK\r\ncontent-le", "partial"),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "broken",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                "broken",
            ),
            ("SSH-2.0-OpenSSH\r\n\r\n", "broken"),
        ];
        for (head, expected) in cases {
            assert_eq!(framing(head), expected, "{head:?}");
        }
    }

    #[test]
    fn the_clients_response_head_drops_hop_by_hop_headers_and_carries_the_variant() {
        let mut out = Vec::new();
        let tags = Tags {
            variant: b"candidate_model",
            assigned: Some(b"best_model"),
            request_id: b"rid",
            close: true,
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nx-variant: spoofed\r\ncontent-length: 2\r\n\r\n{}";
        let parsed = parse_response(head.as_bytes(), &mut out, &tags);
        assert!(matches!(parsed, Ok(Parsed::Final(n, _)) if n == head.len() - 2));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-variant: candidate_model\r\nx-assigned-variant: best_model\r\nx-request-id: rid\r\nconnection: close\r\n\r\n"
        );
    }
}
