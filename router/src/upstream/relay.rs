//! Relaying an arm's response body by its framing: exactly `Content-Length` bytes,
//! strictly decoded chunks (re-chunked for the client, trailers dropped), or up to
//! the arm's close. Invalid framing stops the relay; the caller never pools that
//! connection.

use bytes::Buf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use super::h1::{chunk_step, ChunkStep, Framing};
use crate::pool::Upstream;

/// Read size for bodies larger than what is buffered.
const READ_CHUNK: usize = 16 * 1024;
/// Pending bytes toward the client are written once they reach this size.
const FLUSH_AT: usize = 16 * 1024;

/// Where a body goes.
pub enum Sink<'a> {
    /// The client's socket. The response head waits in `pending` and goes out with the
    /// first body bytes, so a body that fails before any byte was relayed can still be
    /// answered 502. A write that makes no progress for `send_timeout` cuts the client.
    Client {
        /// The client connection.
        stream: &'a mut TcpStream,
        /// Head and body bytes not yet written.
        pending: &'a mut Vec<u8>,
        /// Limit on one write's progress.
        send_timeout: Duration,
        /// Whether any byte has been written.
        wrote: bool,
        /// A copy of the decoded body kept beside the relay (for a shadow), if wanted.
        copy: Option<&'a mut BodyCopy>,
    },
    /// Collected in memory (bodies hyper relays, error bodies), up to `limit` bytes.
    Buffer {
        /// The body so far.
        body: &'a mut Vec<u8>,
        /// The largest body accepted.
        limit: usize,
    },
}

/// A copy of a relayed body, kept up to `limit` bytes. Past the limit the copy is
/// abandoned (`overflowed`) while the client's answer goes on unchanged.
#[derive(Debug, Default)]
pub struct BodyCopy {
    /// The body so far (empty once it overflowed).
    pub body: Vec<u8>,
    /// The largest copy kept.
    pub limit: usize,
    /// The body outgrew `limit`.
    pub overflowed: bool,
}

impl BodyCopy {
    /// An empty copy of at most `limit` bytes.
    pub fn new(limit: usize) -> BodyCopy {
        BodyCopy {
            body: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    fn keep(&mut self, data: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.body.len() + data.len() > self.limit {
            self.overflowed = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(data);
    }
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Relay {
    /// The whole body was relayed; the framing was exact.
    Done,
    /// The arm broke the framing, closed early or stalled. `relayed` says whether the
    /// client already has part of the answer (then its connection must close).
    UpstreamFailed {
        /// Bytes already reached the client.
        relayed: bool,
        /// What went wrong.
        reason: &'static str,
    },
    /// The client stopped reading or went away.
    ClientGone,
    /// A buffered body outgrew its limit.
    TooLarge,
}

impl Sink<'_> {
    /// Body bytes (decoded).
    fn push(&mut self, data: &[u8]) -> Result<(), Relay> {
        match self {
            Sink::Client { pending, copy, .. } => {
                pending.extend_from_slice(data);
                if let Some(copy) = copy {
                    copy.keep(data);
                }
            }
            Sink::Buffer { body, limit } => {
                if body.len() + data.len() > *limit {
                    return Err(Relay::TooLarge);
                }
                body.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// Framing bytes toward the client (chunk lines), never part of a copy.
    fn push_framing(&mut self, data: &[u8]) {
        if let Sink::Client { pending, .. } = self {
            pending.extend_from_slice(data);
        }
    }

    async fn flush(&mut self) -> Result<(), Relay> {
        if let Sink::Client {
            stream,
            pending,
            send_timeout,
            wrote,
            ..
        } = self
        {
            if pending.is_empty() {
                return Ok(());
            }
            *wrote = true;
            match timeout(*send_timeout, stream.write_all(pending)).await {
                Ok(Ok(())) => pending.clear(),
                _ => return Err(Relay::ClientGone),
            }
        }
        Ok(())
    }

    async fn flush_if_large(&mut self) -> Result<(), Relay> {
        match self {
            Sink::Client { pending, .. } if pending.len() >= FLUSH_AT => self.flush().await,
            _ => Ok(()),
        }
    }

    /// Whether any byte has reached the client.
    pub fn relayed(&self) -> bool {
        matches!(self, Sink::Client { wrote: true, .. })
    }

    fn rechunks(&self) -> bool {
        matches!(self, Sink::Client { .. })
    }
}

/// Relays the body of a response framed by `framing` from `upstream` to `sink`.
pub async fn relay(
    upstream: &mut Upstream,
    framing: Framing,
    sink: &mut Sink<'_>,
    deadline: Instant,
) -> Relay {
    let result = match framing {
        Framing::Length(n) => copy(upstream, n, sink, false, deadline).await,
        Framing::UntilClose => until_close(upstream, sink, deadline).await,
        Framing::Chunked => chunked(upstream, sink, deadline).await,
    };
    match result {
        Ok(()) => match sink.flush().await {
            Ok(()) => Relay::Done,
            Err(e) => e,
        },
        Err(e) => e,
    }
}

fn failed(sink: &Sink<'_>, reason: &'static str) -> Relay {
    Relay::UpstreamFailed {
        relayed: sink.relayed(),
        reason,
    }
}

/// Reads more of the body from the arm, first writing out what the client can
/// already have (a client waiting on a slow arm sees the bytes so far).
async fn read_more(
    upstream: &mut Upstream,
    sink: &mut Sink<'_>,
    body_started: bool,
    deadline: Instant,
    eof: &'static str,
) -> Result<(), Relay> {
    if body_started {
        sink.flush().await?;
    }
    upstream.buf.reserve(READ_CHUNK);
    match timeout_at(deadline, upstream.stream.read_buf(&mut upstream.buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(failed(sink, eof)),
        Err(_) => Err(failed(sink, "the arm stalled mid-body")),
    }
}

/// Moves exactly `n` body bytes.
/// `started`: body bytes were already pushed (so waiting flushes them first).
async fn copy(
    upstream: &mut Upstream,
    mut n: usize,
    sink: &mut Sink<'_>,
    mut started: bool,
    deadline: Instant,
) -> Result<(), Relay> {
    loop {
        let take = n.min(upstream.buf.len());
        sink.push(&upstream.buf[..take])?;
        upstream.buf.advance(take);
        started |= take > 0;
        n -= take;
        if n == 0 {
            return Ok(());
        }
        sink.flush_if_large().await?;
        read_more(upstream, sink, started, deadline, "the arm closed mid-body").await?;
    }
}

async fn until_close(
    upstream: &mut Upstream,
    sink: &mut Sink<'_>,
    deadline: Instant,
) -> Result<(), Relay> {
    loop {
        sink.push(&upstream.buf)?;
        upstream.buf.clear();
        sink.flush_if_large().await?;
        sink.flush().await?;
        upstream.buf.reserve(READ_CHUNK);
        match timeout_at(deadline, upstream.stream.read_buf(&mut upstream.buf)).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            _ => return Err(failed(sink, "the arm broke the connection mid-body")),
        }
    }
}

async fn chunked(
    upstream: &mut Upstream,
    sink: &mut Sink<'_>,
    deadline: Instant,
) -> Result<(), Relay> {
    let mut started = false;
    loop {
        let step =
            chunk_step(&upstream.buf).map_err(|_| failed(sink, "invalid chunked framing"))?;
        match step {
            ChunkStep::Partial => {
                read_more(upstream, sink, started, deadline, "the arm closed mid-body").await?
            }
            ChunkStep::Data { line, size } => {
                upstream.buf.advance(line);
                if sink.rechunks() {
                    sink.push_framing(format!("{size:x}\r\n").as_bytes());
                }
                copy(upstream, size, sink, true, deadline).await?;
                while upstream.buf.len() < 2 {
                    read_more(upstream, sink, true, deadline, "the arm closed mid-body").await?;
                }
                if &upstream.buf[..2] != b"\r\n" {
                    return Err(failed(sink, "chunk data not followed by CRLF"));
                }
                upstream.buf.advance(2);
                if sink.rechunks() {
                    sink.push_framing(b"\r\n");
                }
                started = true;
                sink.flush_if_large().await?;
            }
            ChunkStep::End { len } => {
                upstream.buf.advance(len);
                if sink.rechunks() {
                    sink.push_framing(b"0\r\n\r\n");
                }
                return Ok(());
            }
        }
    }
}
