//! The HTTP plumbing both servers share: the hyper accept loop with graceful
//! shutdown and a header-read timeout, body reading under a size limit and a time
//! limit, the JSON content-type check, and JSON responses.
//!
//! The serve loop also does two things for every server: each answer a handler gives
//! carries the request's `X-Request-Id` back (when it had a sane one and the handler
//! set none), and the bodiless 400/414/431 hyper writes by itself for a request head
//! it refuses is replaced by a JSON error (`malformed_request`, `headers_too_large`),
//! reported to [`ServeOptions::on_refusal`] so the server counts it.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

use crate::{ApiError, ErrorKind};

/// Boxed error type bodies may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `X-Request-Id`: echoed on every answer whose request carried a valid one.
pub use crate::headers::X_REQUEST_ID;

/// hyper's own limit on request header lines (its headers then live on the stack).
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// Connection-level limits of the serve loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client must finish sending its request headers within this time.
    pub header_read_timeout: Duration,
    /// Requests whose head (request line and headers) exceeds this many bytes are
    /// answered 431 with a JSON error.
    pub max_header_bytes: usize,
    /// Requests with more header lines than this are answered 431 with a JSON error.
    /// Above [`DEFAULT_MAX_HEADERS`] hyper allocates the header slots on the heap for
    /// every request head it parses.
    pub max_headers: usize,
    /// After shutdown starts, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// A client that accepts no bytes of an answer for this long is cut off.
    pub send_timeout: Duration,
    /// When the server closes a connection, it first reads and drops what the client
    /// still sends for up to this long (nginx's lingering close), so a client that
    /// sends its whole body before reading still reads an early error answer.
    pub linger: Duration,
    /// Told the kind of every request the serve loop refuses before a handler sees it
    /// (`headers_too_large`, `malformed_request`), so the server counts it.
    pub on_refusal: Option<RefusalHook>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: DEFAULT_MAX_HEADERS,
            shutdown_grace: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(2),
            on_refusal: None,
        }
    }
}

/// What the serve loop calls with the kind of each request it refuses itself.
#[derive(Clone)]
pub struct RefusalHook(Arc<dyn Fn(ErrorKind) + Send + Sync>);

impl RefusalHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(ErrorKind) + Send + Sync + 'static) -> Self {
        RefusalHook(Arc::new(f))
    }

    fn call(&self, kind: ErrorKind) {
        (self.0)(kind)
    }
}

impl std::fmt::Debug for RefusalHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusalHook")
    }
}

/// Whether a client's `X-Request-Id` may be echoed: 1-128 visible ASCII characters
/// (no space, no control character).
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)
}

/// The request's first `X-Request-Id`, when it may be echoed.
pub fn request_id_to_echo(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| valid_request_id(v.as_bytes()))
        .cloned()
}

/// What a connection's first owner (the preface given to [`serve_on_threads_with`])
/// did with it.
pub enum Handoff {
    /// The connection is finished.
    Closed,
    /// hyper serves the rest of the connection; the bytes are what the preface already
    /// read from it and did not consume.
    Hyper(TcpStream, Bytes),
}

/// Becomes `true` when the server stops accepting: a connection between requests
/// should close, one in the middle of a request should finish it first.
pub type Stopping = tokio::sync::watch::Receiver<bool>;

/// A server's routes: answers one request (any `Fn(Request) -> impl Future<Output =
/// Response>` that can be shared across worker threads).
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body.
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
    /// The answer in the making.
    type Future: Future<Output = Response<Self::Body>> + Send + 'static;
    /// Answers `req`.
    fn call(&self, req: http::Request<Incoming>) -> Self::Future;
}

impl<F, Fut, B> Handler for F
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
    type Future = Fut;
    fn call(&self, req: http::Request<Incoming>) -> Fut {
        self(req)
    }
}

/// What sees a connection before hyper does: serves it to the end, or hands it (and
/// the bytes it read) to hyper.
pub trait Preface: Clone + Send + Sync + 'static {
    /// The connection's fate in the making.
    type Future: Future<Output = Handoff> + Send + 'static;
    /// Takes `stream`; `stopping` says when the server stops accepting.
    fn call(&self, stream: TcpStream, stopping: Stopping) -> Self::Future;
}

impl<F, Fut> Preface for F
where
    F: Fn(TcpStream, Stopping) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Handoff> + Send + 'static,
{
    type Future = Fut;
    fn call(&self, stream: TcpStream, stopping: Stopping) -> Fut {
        self(stream, stopping)
    }
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish for up to `shutdown_grace`, and returns.
pub async fn serve<H>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) where
    H: Handler,
{
    let source = Source::Accept {
        listener,
        others: Vec::new(),
        next: 0,
    };
    serve_with(source, handler, hyper_only, shutdown, options).await;
}

/// Where a worker's connections come from.
enum Source {
    /// This worker accepts, keeps every `others.len() + 1`-th connection and hands the
    /// rest round-robin to the other workers, so each gets the same number.
    Accept {
        listener: TcpListener,
        others: Vec<tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>>,
        next: usize,
    },
    /// Connections handed over by the accepting worker.
    Handed(tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>),
}

impl Source {
    /// The next connection this worker serves; `None` once no more can come.
    async fn next(&mut self) -> Option<TcpStream> {
        match self {
            Source::Accept {
                listener,
                others,
                next,
            } => loop {
                let stream = match listener.accept().await {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let target = *next % (others.len() + 1);
                *next = next.wrapping_add(1);
                if target == 0 {
                    return Some(stream);
                }
                match stream.into_std() {
                    Ok(std_stream) => {
                        if let Err(returned) = others[target - 1].send(std_stream) {
                            // That worker is gone: serve it here.
                            return TcpStream::from_std(returned.0).ok();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
                }
            },
            Source::Handed(rx) => loop {
                let std_stream = rx.recv().await?;
                match TcpStream::from_std(std_stream) {
                    Ok(stream) => return Some(stream),
                    Err(e) => tracing::warn!(error = %e, "cannot take a handed-over connection"),
                }
            },
        }
    }
}

/// The preface of servers without one: hyper serves every connection from its start.
async fn hyper_only(stream: TcpStream, _stopping: Stopping) -> Handoff {
    Handoff::Hyper(stream, Bytes::new())
}

/// [`serve`] with a preface: every accepted connection goes first to `preface`, which
/// may serve it to the end or hand it (and what it read) to hyper and `handler`.
async fn serve_with<H, P>(
    mut source: Source,
    handler: H,
    preface: P,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) where
    H: Handler,
    P: Preface,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // `max_buf_size` alone lets a head that completes within one large read slip
        // past the limit; `max_header_size` checks the parsed head itself.
        .max_header_size(options.max_header_bytes)
        .max_buf_size(options.max_header_bytes.max(8192))
        .keep_alive(true);
    if options.max_headers != DEFAULT_MAX_HEADERS {
        builder.max_headers(options.max_headers);
    }
    let graceful = GracefulShutdown::new();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            next = source.next() => match next {
                Some(stream) => stream,
                None => break,
            },
            () = &mut shutdown => break,
        };
        let handler = handler.clone();
        let service = service_fn(move |req: http::Request<Incoming>| {
            // Every answer carries the request's id back, whoever wrote it.
            let echo = request_id_to_echo(req.headers());
            let fut = Handler::call(&handler, req);
            async move {
                let mut response = fut.await;
                if let Some(id) = echo {
                    response.headers_mut().entry(X_REQUEST_ID).or_insert(id);
                }
                Ok::<_, Infallible>(response)
            }
        });
        // Subscribed now, so the drain waits for this connection from its first byte.
        let watcher = graceful.watcher();
        let (builder, preface, stopping) = (builder.clone(), preface.clone(), stopping.clone());
        let options = options.clone();
        tokio::spawn(async move {
            let Handoff::Hyper(stream, read) = Preface::call(&preface, stream, stopping).await
            else {
                return;
            };
            let io = Prefixed::new(read, stream, &options);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(source);
    let _ = stop.send(true);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(grace = ?options.shutdown_grace, "drain limit reached, closing remaining connections");
        }
    }
}

/// The connection hyper serves: first the bytes the preface already read, then the
/// socket. Writes that make no progress for `send_timeout` fail (a client that stops
/// reading is cut off), and closing lingers: after the FIN, the client's bytes are
/// read and dropped until it closes or `linger` passes. hyper's own bodiless answer to
/// a request head it refuses is replaced by a JSON error ([`refusal_answer`]).
struct Prefixed {
    read: Bytes,
    stream: TcpStream,
    send_timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    linger: Duration,
    lingering: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    shut: bool,
    limits: HeadLimits,
    on_refusal: Option<RefusalHook>,
    /// What is left to write of an answer that replaced one of hyper's.
    pending: Bytes,
}

/// The head limits a refusal names.
#[derive(Debug, Clone, Copy)]
struct HeadLimits {
    bytes: usize,
    lines: usize,
}

impl Prefixed {
    fn new(read: Bytes, stream: TcpStream, options: &ServeOptions) -> Prefixed {
        Prefixed {
            read,
            stream,
            send_timeout: options.send_timeout,
            stalled: None,
            linger: options.linger,
            lingering: None,
            shut: false,
            limits: HeadLimits {
                bytes: options.max_header_bytes,
                lines: options.max_headers,
            },
            on_refusal: options.on_refusal.clone(),
            pending: Bytes::new(),
        }
    }

    /// Turns a write that stays pending past `send_timeout` into an error.
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future as _;
        use std::task::Poll;
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.send_timeout;
                let stall = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client accepted no bytes within the send timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// Writes what is left of a replacing answer.
    fn poll_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use bytes::Buf as _;
        use std::task::Poll;
        use tokio::io::AsyncWrite as _;
        while !self.pending.is_empty() {
            let poll = std::pin::Pin::new(&mut self.stream).poll_write(cx, &self.pending);
            match std::task::ready!(self.guard(cx, poll)) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => self.pending.advance(n.min(self.pending.len())),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// When `written` is hyper's own answer to a refused head, takes it (all of it, as
    /// far as hyper knows) and starts writing the JSON answer in its place.
    fn replace(
        &mut self,
        cx: &mut std::task::Context<'_>,
        written: &[u8],
    ) -> Option<std::task::Poll<std::io::Result<usize>>> {
        let (kind, answer) = refusal_answer(written, self.limits)?;
        if let Some(hook) = &self.on_refusal {
            hook.call(kind);
        }
        self.pending = answer;
        Some(match self.poll_pending(cx) {
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            // The rest goes out on the next write, flush or shutdown.
            _ => std::task::Poll::Ready(Ok(written.len())),
        })
    }
}

/// hyper answers a request head it refuses by itself: a bodiless `400` (not
/// HTTP/1.1), `414` (request target too long) or `431` (over the limits), then closes.
/// This is the JSON error answer (`malformed_request`, or `headers_too_large` with
/// status 431) that replaces such a write, keeping hyper's other headers (`Date`);
/// `None` for any other write. Handlers always give their errors a content type, so a
/// bodiless answer without one is hyper's.
fn refusal_answer(written: &[u8], limits: HeadLimits) -> Option<(ErrorKind, Bytes)> {
    let kind = match written.get(..13)? {
        b"HTTP/1.1 431 " | b"HTTP/1.1 414 " => ErrorKind::HeadersTooLarge,
        b"HTTP/1.1 400 " => ErrorKind::MalformedRequest,
        _ => return None,
    };
    let head_len = written.windows(4).position(|w| w == b"\r\n\r\n")?;
    if head_len + 4 != written.len() {
        return None;
    }
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut bodiless = false;
    for line in written[..head_len].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            bodiless = value == b"0";
        } else if name.eq_ignore_ascii_case(b"content-type")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            return None;
        } else if !name.eq_ignore_ascii_case(b"connection") {
            kept.push(line);
        }
    }
    if !bodiless {
        return None;
    }
    let message = match kind {
        ErrorKind::HeadersTooLarge => format!(
            "the request head is longer than {} bytes or {} header lines, more than this server reads",
            limits.bytes, limits.lines
        ),
        _ => "the request head is not valid HTTP/1.1".to_string(),
    };
    let body = ApiError::new(kind, message).to_json();
    let status = kind.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    for line in kept {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Some((kind, Bytes::from(out)))
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.read.is_empty() {
            return std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(done) = self.replace(cx, buf) {
            return done;
        }
        let poll = std::pin::Pin::new(&mut self.stream).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(done) = self.replace(cx, first) {
                return done;
            }
        }
        let poll = std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future as _;
        use std::task::Poll;
        use tokio::io::AsyncRead as _;
        std::task::ready!(self.poll_pending(cx))?;
        if !self.shut {
            if let Err(e) =
                std::task::ready!(std::pin::Pin::new(&mut self.stream).poll_shutdown(cx))
            {
                return Poll::Ready(Err(e));
            }
            self.shut = true;
        }
        let linger = self.linger;
        let this = &mut *self;
        let deadline = this
            .lingering
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(linger)));
        let mut scratch = [0u8; 4096];
        for _ in 0..64 {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        // A client still sending fast: let other tasks run, then drain on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Like [`serve`], but on `workers` threads: this task's runtime plus `workers - 1`
/// threads each running its own single-threaded runtime (thread per core, like nginx
/// workers: a connection stays on one thread, so no request pays for cross-thread
/// wake-ups). This task accepts and deals connections round-robin, so every worker
/// gets the same number whatever the timing of the connects (workers racing for a
/// shared listening socket split a burst of connects unevenly). Returns when every
/// worker has drained.
pub async fn serve_on_threads<H>(
    listener: TcpListener,
    workers: usize,
    handler: H,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) where
    H: Handler,
{
    serve_on_threads_with(listener, workers, handler, hyper_only, shutdown, options).await;
}

/// [`serve_on_threads`] with a preface that sees each connection before hyper does
/// (the router's forwarding fast path).
pub async fn serve_on_threads_with<H, P>(
    listener: TcpListener,
    workers: usize,
    handler: H,
    preface: P,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) where
    H: Handler,
    P: Preface,
{
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut done = Vec::new();
    let mut others = Vec::new();
    for i in 1..workers.max(1) {
        let (handed, incoming) = tokio::sync::mpsc::unbounded_channel();
        let (handler, preface, options, mut stopping) = (
            handler.clone(),
            preface.clone(),
            options.clone(),
            stopping.clone(),
        );
        let (finished, finished_rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("http-worker-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(serve_with(
                        Source::Handed(incoming),
                        handler,
                        preface,
                        async move {
                            let _ = stopping.wait_for(|s| *s).await;
                        },
                        options,
                    )),
                    Err(e) => tracing::error!(error = %e, "worker cannot start a runtime"),
                }
                let _ = finished.send(());
            });
        match spawned {
            Ok(_) => {
                others.push(handed);
                done.push(finished_rx);
            }
            Err(e) => tracing::warn!(error = %e, "cannot start worker thread"),
        }
    }
    let mut stopping_here = stopping.clone();
    let relay = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let source = Source::Accept {
        listener,
        others,
        next: 0,
    };
    tokio::join!(
        relay,
        serve_with(
            source,
            handler,
            preface,
            async move {
                let _ = stopping_here.wait_for(|s| *s).await;
            },
            options
        )
    );
    for finished in done {
        let _ = finished.await;
    }
}

/// Resolves on SIGINT or SIGTERM (the first to arrive).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// The request's `Transfer-Encoding` when it is anything but a single `chunked`.
///
/// hyper frames a request as chunked whenever `chunked` is the last coding of the last
/// `Transfer-Encoding` line and hands the body on without undoing any coding before it
/// (`gzip, chunked`) or a second `chunked`: such a body is not what the client meant,
/// and a proxy that forwarded it would pass the ambiguity on.
fn unsupported_transfer_coding(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-ascii>"))
        .collect();
    let mut codings = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(c), None) if c.eq_ignore_ascii_case("chunked") => None,
        _ => Some(values.join(", ").chars().take(64).collect()),
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`. A declared
/// `Content-Length` over the limit is refused before any byte is read, and so is a
/// transfer coding other than a single `chunked`.
pub async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(coding) = unsupported_transfer_coding(headers) {
        return Err(ApiError::new(
            ErrorKind::InvalidInput,
            format!(
                "Transfer-Encoding {coding:?} is not supported; send the body with Content-Length or `Transfer-Encoding: chunked` alone"
            ),
        ));
    }
    if let Some(len) = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::new(
            ErrorKind::RequestTimeout,
            format!(
                "request body not received within {} ms",
                timeout.as_millis()
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorKind::InvalidInput,
            format!("could not read request body: {e}"),
        )),
    }
}

/// Accepts `application/json` and `application/*+json` (parameters allowed) and a
/// missing content type; anything else is a 415.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!(
                "content type {:?} is not supported; send application/json",
                value.to_str().unwrap_or("<non-ascii>")
            ),
        ))
    }
}

/// One entry of a server's route table: a path, the method it accepts, and what
/// serves it (a closed enum the server matches exhaustively, so a route added to the
/// table cannot silently be served by another).
#[derive(Debug, Clone)]
pub struct Route<T> {
    /// The exact path.
    pub path: &'static str,
    /// The method it accepts (`HEAD` is accepted wherever `GET` is).
    pub method: http::Method,
    /// What serves it.
    pub target: T,
}

/// Finds the route for `path` and `method`: 404 `not_found` naming `hint` for an
/// unknown path, 405 `method_not_allowed` (with the `Allow` value) for a known path
/// with another method.
pub fn find_route<'a, T>(
    routes: &'a [Route<T>],
    path: &str,
    method: &http::Method,
    hint: &str,
) -> Result<&'a Route<T>, (ApiError, Option<HeaderValue>)> {
    let Some(route) = routes.iter().find(|r| r.path == path) else {
        let shown: String = path.chars().take(128).collect();
        return Err((
            ApiError::new(ErrorKind::NotFound, format!("no route {shown}; {hint}")),
            None,
        ));
    };
    let head_of_get = *method == http::Method::HEAD && route.method == http::Method::GET;
    if *method != route.method && !head_of_get {
        let err = ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("{} accepts {} only", route.path, route.method),
        );
        return Err((err, HeaderValue::from_str(route.method.as_str()).ok()));
    }
    Ok(route)
}

/// The JSON error answer for a failed [`find_route`], with `Allow` on a 405.
pub fn route_error(error: &ApiError, allow: Option<HeaderValue>) -> Response<Full<Bytes>> {
    let mut response = error_response(error);
    if let Some(allow) = allow {
        response.headers_mut().insert(http::header::ALLOW, allow);
    }
    response
}

/// A response with a JSON body.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(e) => error_response(&ApiError::new(
            ErrorKind::Internal,
            format!("could not encode response: {e}"),
        )),
    }
}

/// A response whose body is already-encoded JSON.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The JSON error response for `error`, with its kind's status.
pub fn error_response(error: &ApiError) -> Response<Full<Bytes>> {
    json_bytes(error.kind.status(), error.to_json())
}

/// The Prometheus text-format response for `/metrics`.
pub fn metrics_response(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: Option<&'static str>, len: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if let Some(len) = len {
            h.insert(CONTENT_LENGTH, HeaderValue::from_static(len));
        }
        h
    }

    #[tokio::test]
    async fn connections_are_dealt_evenly_to_the_workers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_on_threads(
            listener,
            3,
            |_req| async {
                let name = std::thread::current().name().unwrap_or("?").to_string();
                Response::new(Full::new(Bytes::from(name)))
            },
            async {
                let _ = stopped.await;
            },
            ServeOptions::default(),
        ));
        let mut served = std::collections::HashMap::<String, usize>::new();
        let mut open = Vec::new();
        for _ in 0..12 {
            let mut c = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut buf = vec![0u8; 1024];
            let n = c.read(&mut buf).await.unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            *served.entry(body).or_default() += 1;
            open.push(c);
        }
        assert_eq!(served.len(), 3, "{served:?}");
        assert!(served.values().all(|&n| n == 4), "{served:?}");
        let _ = stop.send(());
        drop(open);
        let _ = server.await;
    }

    const LIMITS: HeadLimits = HeadLimits {
        bytes: 1000,
        lines: 10,
    };

    #[test]
    fn hypers_own_refusals_become_json_errors_keeping_its_date() {
        let cases: [(&[u8], ErrorKind, &str); 3] = [
            (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 20:00:00 GMT\r\n\r\n",
                ErrorKind::HeadersTooLarge,
                "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            ),
            (
                b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 20:00:00 GMT\r\n\r\n",
                ErrorKind::HeadersTooLarge,
                "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            ),
            (
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 20:00:00 GMT\r\n\r\n",
                ErrorKind::MalformedRequest,
                "HTTP/1.1 400 Bad Request\r\n",
            ),
        ];
        for (written, kind, status_line) in cases {
            let Some((got, answer)) = refusal_answer(written, LIMITS) else {
                panic!("{:?} was not replaced", String::from_utf8_lossy(written));
            };
            assert_eq!(got, kind);
            let text = String::from_utf8_lossy(&answer).into_owned();
            assert!(text.starts_with(status_line), "{text}");
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
            assert!(
                head.contains("\r\ncontent-type: application/json\r\n"),
                "{text}"
            );
            assert!(
                head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
                "{text}"
            );
            assert_eq!(head.matches("connection: close").count(), 1, "{text}");
            assert!(
                head.contains("\r\ndate: Thu, 03 Dec 2026 20:00:00 GMT"),
                "{text}"
            );
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            assert_eq!(v["error"]["type"], kind.as_str(), "{text}");
        }
        let json = refusal_answer(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
            LIMITS,
        )
        .map(|(_, a)| a)
        .unwrap_or_default();
        assert!(String::from_utf8_lossy(&json).contains("1000 bytes or 10 header lines"));
    }

    #[test]
    fn any_other_write_is_left_alone() {
        for written in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            // A handler's own error: it has a content type and a body.
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            // Not a whole head alone.
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\nHTTP/1.1",
            b"{\"prediction\": 5.5}",
            b"HTTP/1.1 4",
            b"",
        ] {
            assert!(
                refusal_answer(written, LIMITS).is_none(),
                "{:?}",
                String::from_utf8_lossy(written)
            );
        }
    }

    #[test]
    fn only_sane_request_ids_are_echoed() {
        for ok in ["a", "req-1_2.3:4/5", &"x".repeat(128)] {
            assert!(valid_request_id(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "has space", "tab\there", &"x".repeat(129)] {
            assert!(!valid_request_id(bad.as_bytes()), "{bad}");
        }
        assert!(!valid_request_id(b"caf\xc3\xa9"));
        let mut h = HeaderMap::new();
        h.append(X_REQUEST_ID, HeaderValue::from_static("first"));
        h.append(X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(
            request_id_to_echo(&h),
            Some(HeaderValue::from_static("first"))
        );
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_eq!(request_id_to_echo(&h), None);
    }

    #[tokio::test]
    async fn every_answer_echoes_the_request_id_and_refused_heads_get_json() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&refused);
        let options = ServeOptions {
            max_header_bytes: 4096,
            max_headers: 20,
            linger: Duration::from_millis(100),
            on_refusal: Some(RefusalHook::new(move |kind| {
                if let Ok(mut v) = seen.lock() {
                    v.push(kind);
                }
            })),
            ..Default::default()
        };
        let server = tokio::spawn(serve(
            listener,
            |req: http::Request<Incoming>| async move {
                let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                if req.uri().path() == "/own" {
                    r.headers_mut()
                        .insert(X_REQUEST_ID, HeaderValue::from_static("handler's"));
                }
                r
            },
            async {
                let _ = stopped.await;
            },
            options,
        ));
        let exchange = |request: Vec<u8>| async move {
            let mut c = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = c.write_all(&request).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let echoed = exchange(
            b"GET / HTTP/1.1\r\nhost: x\r\nx-request-id: r-1\r\nconnection: close\r\n\r\n".to_vec(),
        )
        .await;
        assert!(echoed.contains("\r\nx-request-id: r-1\r\n"), "{echoed}");
        let own = exchange(
            b"GET /own HTTP/1.1\r\nhost: x\r\nx-request-id: r-1\r\nconnection: close\r\n\r\n"
                .to_vec(),
        )
        .await;
        assert!(own.contains("\r\nx-request-id: handler's\r\n"), "{own}");
        assert!(!own.contains("r-1"), "{own}");
        let big = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
            "p".repeat(5000)
        );
        let lines: String = (0..30).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nhost: x\r\n{lines}\r\n");
        for request in [big, many] {
            let answer = exchange(request.into_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
            assert!(answer.contains("\"headers_too_large\""), "{answer}");
        }
        let garbage = exchange(b"NOT HTTP\r\n\r\n".to_vec()).await;
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
        assert!(garbage.contains("\"malformed_request\""), "{garbage}");
        let kinds = refused.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(
            kinds,
            [
                ErrorKind::HeadersTooLarge,
                ErrorKind::HeadersTooLarge,
                ErrorKind::MalformedRequest
            ]
        );
        let _ = stop.send(());
        let _ = server.await;
    }

    #[test]
    fn json_content_types_are_accepted_and_others_refused() {
        for ok in [
            None,
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("Application/JSON"),
            Some("application/vnd.api+json"),
        ] {
            assert!(require_json(&headers(ok, None)).is_ok(), "{ok:?}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let err = require_json(&headers(Some(bad), None)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::UnsupportedMediaType, "{bad}");
        }
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused_before_reading() {
        let body = Full::new(Bytes::from_static(b"{}"));
        let err = read_body(
            &headers(None, Some("5000")),
            body,
            100,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PayloadTooLarge);
    }

    #[test]
    fn only_a_single_chunked_transfer_coding_is_accepted() {
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            unsupported_transfer_coding(&h)
        };
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["chunked"]), None);
        assert_eq!(with(&["Chunked"]), None);
        assert_eq!(with(&[" chunked ,"]), None);
        assert_eq!(with(&["gzip, chunked"]).as_deref(), Some("gzip, chunked"));
        assert_eq!(
            with(&["chunked", "chunked"]).as_deref(),
            Some("chunked, chunked")
        );
        assert_eq!(with(&["identity"]).as_deref(), Some("identity"));
    }

    #[tokio::test]
    async fn undeclared_body_over_the_limit_is_refused() {
        let body = Full::new(Bytes::from(vec![b'x'; 101]));
        let err = read_body(&HeaderMap::new(), body, 100, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PayloadTooLarge);
        let ok = read_body(
            &HeaderMap::new(),
            Full::new(Bytes::from_static(b"{}")),
            100,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(ok.ok(), Some(Bytes::from_static(b"{}")));
    }
}
