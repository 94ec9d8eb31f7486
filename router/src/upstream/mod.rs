//! Talking to arms: one HTTP/1.1 client for every path (the fast path, the hyper
//! routes, health checks). A request goes out over a pooled connection that holds no
//! unread byte (checked on every checkout, see `crate::pool`) or a fresh one; the
//! response head is parsed strictly ([`h1`]) and its body relayed by its framing
//! ([`relay`]). Only a connection whose response was framed exactly, and left nothing
//! unread, goes back to the pool.

pub mod h1;
pub mod relay;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::config::{ArmConfig, UpstreamConfig};
use crate::error::RouterError;
use crate::pool::{self, Upstream};
use h1::{Echo, Parsed, ResponseHead};

/// The largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size while waiting for a response head.
const HEAD_READ: usize = 4 * 1024;

/// How a failed exchange went wrong.
enum Failure {
    /// A reused connection had been closed by the arm before the request reached it.
    Stale,
    /// The answer carries another request's `X-Request-Id`: bytes some other exchange
    /// left on the connection (or an arm that stopped echoing ids on a connection
    /// where it echoed them before).
    Mismatch,
    /// No complete response head in time.
    Timeout,
    /// The connection broke or the answer was not valid HTTP/1.1.
    Broken(String),
}

/// The pool settings of `settings`.
pub fn pool_limits(settings: &UpstreamConfig) -> pool::Limits {
    pool::Limits {
        max_idle_per_arm: settings.pool_max_idle_per_arm,
        idle_timeout: settings.pool_idle_timeout,
    }
}

/// Where an exchange goes: the arm (for errors), the address to connect to, and the
/// pool key of its connections.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The arm's name.
    pub arm: &'a str,
    /// `host:port` or `ip:port` to connect to.
    pub connect: &'a str,
    /// Counts answers that carried another request's id
    /// (`abgate_upstream_mismatched_answers_total{variant}`), when given.
    pub mismatched: Option<&'a prometheus::IntCounter>,
}

impl<'a> Target<'a> {
    /// The arm's own URL (a shadow, a single-endpoint client).
    pub fn arm(arm: &'a ArmConfig) -> Target<'a> {
        Target {
            arm: &arm.name,
            connect: arm.authority.as_str(),
            mismatched: None,
        }
    }

    /// One endpoint of `arm`.
    pub fn endpoint(arm: &'a ArmConfig, endpoint: &'a crate::endpoint::Endpoint) -> Target<'a> {
        Target {
            arm: &arm.name,
            connect: &endpoint.key,
            mismatched: None,
        }
    }

    /// The same target, counting mismatched answers on `counter`.
    pub fn counting(self, counter: &'a prometheus::IntCounter) -> Target<'a> {
        Target {
            mismatched: Some(counter),
            ..self
        }
    }
}

/// A new connection to `target` within the connect timeout; `None` past `deadline`.
async fn connect(
    target: Target<'_>,
    settings: &UpstreamConfig,
    deadline: Instant,
) -> Result<Upstream, Option<RouterError>> {
    let authority = target.connect;
    let connect_by = deadline.min(Instant::now() + settings.connect_timeout);
    let reason = match timeout_at(connect_by, TcpStream::connect(authority)).await {
        Err(_) if connect_by < deadline => format!(
            "no connection within {} ms",
            settings.connect_timeout.as_millis()
        ),
        Err(_) => return Err(None),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            return Ok(Upstream {
                authority: authority.to_string(),
                stream,
                buf: BytesMut::with_capacity(HEAD_READ),
                idle_since: Instant::now(),
                echoes: false,
            });
        }
    };
    Err(Some(RouterError::Connect {
        arm: target.arm.to_string(),
        reason,
    }))
}

/// Sends `request` (a complete HTTP/1.1 request carrying `X-Request-Id: request_id`)
/// to `arm` and reads the final response head. `keep` receives each response header
/// the client may see. On success the body (or its start) is in the returned
/// connection's buffer.
///
/// A pooled connection that the arm had closed before the request reached it is
/// replaced by a fresh one at once: not an error, not a failover. An answer that
/// carries another request's id (bytes some earlier exchange left behind) is never
/// relayed: the connection is closed, the request is sent once more on a fresh
/// connection, and the mismatch is counted.
pub async fn exchange(
    arm: &ArmConfig,
    settings: &UpstreamConfig,
    request: &[u8],
    request_id: &[u8],
    keep: impl FnMut(&[u8], &[u8]),
) -> Result<(Upstream, ResponseHead), RouterError> {
    exchange_at(Target::arm(arm), settings, request, request_id, keep).await
}

/// [`exchange`] with `target`: one endpoint of an arm.
pub async fn exchange_at(
    target: Target<'_>,
    settings: &UpstreamConfig,
    request: &[u8],
    request_id: &[u8],
    mut keep: impl FnMut(&[u8], &[u8]),
) -> Result<(Upstream, ResponseHead), RouterError> {
    let deadline = Instant::now() + settings.request_timeout;
    let timed_out = || RouterError::Timeout {
        arm: target.arm.to_string(),
        timeout: settings.request_timeout,
    };
    let authority = target.connect;
    let mut pooled = pool::checkout(authority, pool_limits(settings));
    let mut mismatched = false;
    loop {
        let reused = pooled.is_some();
        let mut upstream = match pooled.take() {
            Some(u) => u,
            None => match connect(target, settings, deadline).await {
                Ok(u) => u,
                Err(Some(e)) => return Err(e),
                Err(None) => return Err(timed_out()),
            },
        };
        match send(
            &mut upstream,
            reused,
            request,
            request_id,
            &mut keep,
            deadline,
        )
        .await
        {
            Ok(head) => return Ok((upstream, head)),
            // Closed while idle (a keep-alive timeout, a restart): its other idle
            // connections likely went the same way.
            Err(Failure::Stale) => pool::purge(authority),
            // Another exchange's answer: this connection is dropped (closed) here,
            // and the request goes once more over a fresh connection.
            Err(Failure::Mismatch) => {
                if let Some(counter) = target.mismatched {
                    counter.inc();
                }
                tracing::warn!(
                    arm = target.arm,
                    endpoint = authority,
                    "an arm answered with another request's X-Request-Id; connection closed"
                );
                if mismatched {
                    return Err(RouterError::Broken {
                        arm: target.arm.to_string(),
                        reason: "the answer carried another request's X-Request-Id".into(),
                    });
                }
                mismatched = true;
            }
            Err(Failure::Timeout) => return Err(timed_out()),
            Err(Failure::Broken(reason)) => {
                return Err(RouterError::Broken {
                    arm: target.arm.to_string(),
                    reason,
                })
            }
        }
    }
}

/// Writes the request and reads up to the end of the final response head.
async fn send(
    upstream: &mut Upstream,
    reused: bool,
    request: &[u8],
    request_id: &[u8],
    keep: &mut impl FnMut(&[u8], &[u8]),
    deadline: Instant,
) -> Result<ResponseHead, Failure> {
    let lost = |e: std::io::Error| {
        if reused {
            Failure::Stale
        } else {
            Failure::Broken(e.to_string())
        }
    };
    match timeout_at(deadline, upstream.stream.write_all(request)).await {
        Err(_) => return Err(Failure::Timeout),
        Ok(Err(e)) => return Err(lost(e)),
        Ok(Ok(())) => {}
    }
    upstream.buf.clear();
    loop {
        if !upstream.buf.is_empty() {
            match h1::parse_response(&upstream.buf, request_id, &mut *keep) {
                Ok(Parsed::Final(len, head)) => {
                    match head.echo {
                        Echo::Differs => return Err(Failure::Mismatch),
                        // An arm that echoed ids on this connection and now does not:
                        // this answer is not the one to our request.
                        Echo::Absent if upstream.echoes && !request_id.is_empty() => {
                            return Err(Failure::Mismatch)
                        }
                        Echo::Matches => upstream.echoes = true,
                        Echo::Absent => {}
                    }
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

/// Returns a connection to the pool if its last response was framed exactly and
/// left no byte unread in the buffer; otherwise it is closed. Whatever is already
/// waiting in the socket, or arrives while it is idle, is caught by the kernel peek
/// at checkout (`pool::checkout`); the immediate ACK sent here makes an arm's
/// held-back bytes arrive before then.
pub fn release(mut upstream: Upstream, head: &ResponseHead, settings: &UpstreamConfig) {
    pool::acknowledge(&upstream.stream);
    if head.reusable && upstream.buf.is_empty() {
        // An idle connection keeps a head-sized buffer, whatever its last body was.
        if upstream.buf.capacity() > 4 * HEAD_READ {
            upstream.buf = BytesMut::with_capacity(HEAD_READ);
        }
        pool::checkin(upstream, pool_limits(settings));
    }
}

/// A health check: `GET path` on a fresh connection to `arm` within `within`; the
/// status of the answer.
pub async fn probe(
    target: Target<'_>,
    host: &str,
    settings: &UpstreamConfig,
    path: &str,
    within: Duration,
) -> Result<StatusCode, String> {
    let deadline = Instant::now() + within;
    let mut upstream = match connect(target, settings, deadline).await {
        Ok(u) => u,
        Err(Some(e)) => return Err(e.to_string()),
        Err(None) => return Err(format!("no connection within {} ms", within.as_millis())),
    };
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    match send(
        &mut upstream,
        false,
        request.as_bytes(),
        b"",
        &mut |_, _| {},
        deadline,
    )
    .await
    {
        Ok(head) => Ok(head.status),
        Err(Failure::Timeout) => Err(format!(
            "health check timed out after {} ms",
            within.as_millis()
        )),
        Err(Failure::Stale) => Err("connection closed before the response".into()),
        Err(Failure::Mismatch) => Err("the answer carried another request's id".into()),
        Err(Failure::Broken(reason)) => Err(format!("health check failed: {reason}")),
    }
}

/// Reads until `upstream`'s buffer holds `n` bytes (an error body to classify).
pub async fn fill(upstream: &mut Upstream, n: usize, deadline: Instant) -> Result<(), ()> {
    while upstream.buf.len() < n {
        upstream.buf.reserve(n - upstream.buf.len());
        match timeout_at(deadline, upstream.stream.read_buf(&mut upstream.buf)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => return Err(()),
        }
    }
    Ok(())
}
