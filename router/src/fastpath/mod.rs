//! The forwarding fast path: connection control for the request that makes up nearly
//! all traffic — `POST /predict` over HTTP/1.1 with `X-User-Id` and a
//! `Content-Length` body. The head is read ([`request`]) and the request handed, as a
//! borrowed view of this connection's buffer, to the one pipeline (`crate::forward`),
//! which answers on this socket, driven by the request's own task: a request crosses
//! no task or thread.
//!
//! Anything else — other routes and methods, overrides, chunked or oversized bodies,
//! `Expect`, upgrades, HTTP/1.0, the concurrency limit — is handed to hyper with the
//! bytes already read, and the route table (`crate::service`) serves the rest of that connection. A
//! head that is not HTTP/1.1 or is too large is answered here with a JSON error and a
//! lingering close.

pub mod request;

use abgate_common::http::{Handoff, Stopping};
use abgate_common::{ApiError, ErrorKind};
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use crate::forward::{self, Buffers, Headers, Outcome, Prediction, User};
use crate::headers::new_request_id;
use crate::policy;
use crate::state::{Active, Router};
use crate::upstream::h1::{self, Tags};
use crate::upstream::relay::{BodyCopy, Sink};
use request::{inspect, Inspection, Plan};

/// Read size while waiting for a head: heads are small, and an idle connection should
/// not pin a large buffer.
const HEAD_READ: usize = 4 * 1024;
/// Read size for bodies larger than what is buffered.
const READ_CHUNK: usize = 16 * 1024;
/// Buffers larger than this are given back after a request.
const KEEP_IDLE: usize = 64 * 1024;

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
        let head_deadline = Instant::now() + router.active().config.client.header_timeout;
        let (plan, active) = loop {
            if !conn.buf.is_empty() {
                // Loaded once the head is here, so a reload while idle applies to it.
                let active = router.active();
                match inspect(&conn.buf, max_head_bytes, active.config.body_limit_bytes) {
                    Inspection::Partial => {}
                    Inspection::Hyper => return Handoff::Hyper(client, conn.buf.freeze()),
                    Inspection::Fast(plan) => break (plan, active),
                    Inspection::Reject(kind) => {
                        conn.reject(&mut client, &router, &active, kind, max_head_bytes)
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
        let started = std::time::Instant::now();
        conn.request_id.clear();
        match &plan.request_id {
            Some(r) => conn.request_id.extend_from_slice(&conn.buf[r.clone()]),
            None => conn
                .request_id
                .extend_from_slice(new_request_id().as_bytes()),
        }
        if !conn
            .read_body(&mut client, &plan, started, &active, &router)
            .await
        {
            let _ = client.shutdown().await;
            return Handoff::Closed;
        }
        // The arm's latency starts once the request is complete: a client's slow
        // upload is not the arm's time.
        let buf = &conn.buf;
        let request = Prediction {
            path: &buf[plan.path.clone()],
            headers: Headers::Ranges {
                buf,
                ranges: &plan.headers,
            },
            body: &buf[plan.head_len..plan.head_len + plan.body_len],
            request_id: &conn.request_id,
            user: User::Key(Some(&buf[plan.user.clone()])),
            endpoint: plan.endpoint,
            close: plan.close,
            started: std::time::Instant::now(),
        };
        let mut socket = Socket {
            stream: &mut client,
            send_timeout: active.config.client.send_timeout,
        };
        match forward::predict(&router, &active, &request, &mut conn.bufs, &mut socket).await {
            Outcome::KeepAlive => {
                conn.buf.advance(plan.head_len + plan.body_len);
                conn.shrink(plan.head_len + plan.body_len);
            }
            Outcome::Close => {
                let _ = client.shutdown().await;
                return Handoff::Closed;
            }
            Outcome::ClientGone => return Handoff::Closed,
        }
    }
}

/// The fast path's side of the pipeline: answers are streamed to the client's socket.
struct Socket<'c> {
    stream: &'c mut TcpStream,
    send_timeout: Duration,
}

impl forward::Client for Socket<'_> {
    const STREAMS: bool = true;

    fn sink<'s>(&'s mut self, head: &'s mut Vec<u8>, copy: Option<&'s mut BodyCopy>) -> Sink<'s> {
        Sink::Client {
            stream: self.stream,
            pending: head,
            send_timeout: self.send_timeout,
            wrote: false,
            copy,
        }
    }

    async fn send(&mut self, answer: &[u8]) -> bool {
        matches!(
            timeout(self.send_timeout, self.stream.write_all(answer)).await,
            Ok(Ok(()))
        )
    }

    fn body(&self) -> Option<&[u8]> {
        None
    }
}

/// Per-client-connection state, reused from request to request.
struct Connection {
    /// Bytes read from the client and not yet consumed.
    buf: BytesMut,
    /// The current request's id.
    request_id: Vec<u8>,
    /// The pipeline's buffers (the arm's request, kept headers, the client's head).
    bufs: Buffers,
}

impl Connection {
    fn new() -> Connection {
        Connection {
            buf: BytesMut::with_capacity(HEAD_READ),
            request_id: Vec::with_capacity(32),
            bufs: Buffers {
                out: Vec::with_capacity(HEAD_READ),
                kept: Vec::with_capacity(512),
                head: Vec::with_capacity(HEAD_READ),
            },
        }
    }

    /// Gives back buffers a large request grew: an idle keep-alive connection holds
    /// a few KiB whatever it carried before, so memory follows the requests in
    /// flight, not the connections open.
    ///
    /// `consumed`: the bytes just advanced past, which still belong to the buffer's
    /// allocation (a `BytesMut`'s capacity counts only what lies ahead).
    fn shrink(&mut self, consumed: usize) {
        if consumed + self.buf.capacity() > KEEP_IDLE {
            let mut fresh = BytesMut::with_capacity(HEAD_READ.max(self.buf.len()));
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
        for v in [&mut self.bufs.out, &mut self.bufs.head] {
            if v.capacity() > KEEP_IDLE {
                *v = Vec::with_capacity(HEAD_READ);
            }
        }
        if self.bufs.kept.capacity() > KEEP_IDLE {
            self.bufs.kept = Vec::with_capacity(512);
        }
    }

    /// Answers a head no route can serve with a JSON error, counted as unassigned, and
    /// closes the connection lingeringly.
    async fn reject(
        &mut self,
        client: &mut TcpStream,
        router: &Router,
        active: &Active,
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
        policy::record_unassigned(router, kind);
        let id = new_request_id();
        self.answer_and_linger(
            client,
            active,
            &err,
            id.as_bytes(),
            policy::Endpoint::Predict,
        )
        .await;
    }

    /// Writes a complete error answer with `Connection: close`, then reads and drops
    /// what the client still sends for up to `client.linger_ms` before closing, so a
    /// client that sends its whole body before reading still reads the answer.
    async fn answer_and_linger(
        &mut self,
        client: &mut TcpStream,
        active: &Active,
        err: &ApiError,
        request_id: &[u8],
        endpoint: policy::Endpoint,
    ) {
        let head = &mut self.bufs.head;
        head.clear();
        let tags = Tags {
            variant: None,
            assigned: None,
            request_id,
            close: true,
        };
        h1::write_error(head, err, &policy::error_body(err, endpoint), &tags);
        let sent = timeout(active.config.client.send_timeout, client.write_all(head)).await;
        if matches!(sent, Ok(Ok(()))) && client.shutdown().await.is_ok() {
            linger(client, active.config.client.linger).await;
        }
    }

    /// Reads the rest of the body within the body timeout; a slow client is answered
    /// 408. `false` when the connection must close.
    async fn read_body(
        &mut self,
        client: &mut TcpStream,
        plan: &Plan,
        started: std::time::Instant,
        active: &Active,
        router: &Router,
    ) -> bool {
        let deadline = Instant::from_std(started) + active.config.client.body_timeout;
        let total = plan.head_len + plan.body_len;
        while self.buf.len() < total {
            self.buf.reserve(READ_CHUNK.max(total - self.buf.len()));
            match timeout_at(deadline, client.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return false,
                Err(_) => {
                    let err = ApiError::new(
                        ErrorKind::RequestTimeout,
                        format!(
                            "request body not received within {} ms",
                            active.config.client.body_timeout.as_millis()
                        ),
                    );
                    policy::record_unassigned(router, err.kind);
                    let id = std::mem::take(&mut self.request_id);
                    self.answer_and_linger(client, active, &err, &id, plan.endpoint)
                        .await;
                    return false;
                }
            }
        }
        true
    }
}

/// Reads and drops the client's bytes until it closes or `within` passes.
async fn linger(client: &mut TcpStream, within: Duration) {
    let mut scratch = [0u8; 4096];
    let _ = timeout(within, async {
        loop {
            match client.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
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
    let Inspection::Fast(plan) = inspect(request, 32 * 1024, active.config.body_limit_bytes) else {
        return None;
    };
    if request.len() < plan.head_len + plan.body_len {
        return None;
    }
    let key = Some(&request[plan.user.clone()]);
    let assigned = policy::assign_key(active, key);
    let id = new_request_id();
    let mut out = Vec::with_capacity(HEAD_READ);
    forward::arm_request(
        &mut out,
        active.arms[assigned.arm].config.authority.as_str(),
        "POST",
        &request[plan.path.clone()],
        plan.headers
            .iter()
            .map(|(n, v)| (&request[n.clone()], &request[v.clone()])),
        id.as_bytes(),
        &request[plan.head_len..plan.head_len + plan.body_len],
    );
    let mut kept = Vec::with_capacity(512);
    let h1::Parsed::Final(_, head) = h1::parse_response(response, id.as_bytes(), |n, v| {
        h1::push_header(&mut kept, n, v)
    })
    .ok()?
    else {
        return None;
    };
    let tags = policy::tags(
        active,
        Some(assigned.arm),
        assigned.arm,
        id.as_bytes(),
        false,
    );
    let mut client = Vec::with_capacity(HEAD_READ);
    forward::client_head(&mut client, head.status, &kept, head.framing, &tags);
    Some((assigned.arm, out.len(), client.len()))
}
