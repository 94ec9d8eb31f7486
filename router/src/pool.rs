//! Idle keep-alive connections to arms for the fast path, pooled per worker thread.
//!
//! A request checks a connection out, drives it from its own task (no hand-off
//! between tasks or threads), and checks it back in when the response is relayed.
//! The pool is last-in, first-out, so at low load a few warm connections carry all
//! the traffic, and the number of connections to an arm follows concurrency rather
//! than the number of clients, as with nginx's `keepalive` or HAProxy's
//! `http-reuse`. Every worker thread runs its own single-threaded runtime, so a
//! thread-local pool only ever holds sockets of the runtime that polls them.

use bytes::BytesMut;
use std::cell::RefCell;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How often idle connections of every arm are checked against the idle timeout.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A keep-alive connection to one arm.
pub struct Upstream {
    /// The arm's `host:port`.
    pub authority: String,
    /// The connection.
    pub stream: TcpStream,
    /// Bytes read from the arm and not yet relayed.
    pub buf: BytesMut,
    /// When it was last checked in.
    pub idle_since: Instant,
    /// The arm has echoed `X-Request-Id` on this connection: every later answer on it
    /// must carry the id of its own request.
    pub echoes: bool,
}

struct ArmPool {
    authority: String,
    /// Oldest first; checkout takes the newest.
    idle: Vec<Upstream>,
}

#[derive(Default)]
struct Pool {
    arms: Vec<ArmPool>,
    swept: Option<Instant>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Pool limits, from the `[upstream]` settings in force.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Idle connections kept per arm on each worker thread.
    pub max_idle_per_arm: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// The most recently used idle connection to `authority` that is still fit for a
/// request, if any. Every checkout, whatever the idle time, verifies that the arm sent
/// nothing (no byte, no close) while the connection was idle: a byte that arrived
/// unasked is some other exchange's, and a connection carrying one is closed, so one
/// user can never read another user's answer.
pub fn checkout(authority: &str, limits: Limits) -> Option<Upstream> {
    POOL.with_borrow_mut(|pool| {
        let arm = pool.arms.iter_mut().find(|a| a.authority == authority)?;
        while let Some(upstream) = arm.idle.pop() {
            let idle = upstream.idle_since.elapsed();
            if idle >= limits.idle_timeout {
                // The newest is expired, so is everything older.
                arm.idle.clear();
                return None;
            }
            if quiet(&upstream.stream) {
                return Some(upstream);
            }
        }
        None
    })
}

/// Whether a connection holds nothing from the arm: no byte waiting, no close, no
/// error. Asks the kernel (a non-blocking `MSG_PEEK` of one byte) rather than the
/// reactor's readiness, which lags while the worker is busy: a byte that arrived a
/// microsecond ago, before the reactor was polled, is seen too. The byte is not
/// consumed; a connection that shows one is dropped, never read.
pub fn quiet(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(stream).peek(&mut probe),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// Acknowledges at once whatever the arm sent so far (`TCP_QUICKACK`, which also
/// flushes an ACK the kernel was delaying).
///
/// Why it matters: an arm that sent bytes nobody asked for, then the answer to the
/// request in flight, may hold that answer back (Nagle's algorithm) until its earlier
/// segment is acknowledged, and Linux delays that ACK by up to 40 ms, or until the
/// router's next request carries it. Then the held answer arrives just *after* the
/// next request is written, where no check can see it, and every later user reads
/// the previous user's answer. Acknowledging when an exchange ends makes such bytes
/// arrive while the connection is idle, where the checkout's peek sees them.
pub fn acknowledge(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

/// Returns a connection whose last exchange ended cleanly.
pub fn checkin(mut upstream: Upstream, limits: Limits) {
    let now = Instant::now();
    upstream.idle_since = now;
    POOL.with_borrow_mut(|pool| {
        if pool
            .swept
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            pool.swept = Some(now);
            for arm in &mut pool.arms {
                arm.idle
                    .retain(|u| now.duration_since(u.idle_since) < limits.idle_timeout);
            }
            pool.arms.retain(|a| !a.idle.is_empty());
        }
        if limits.max_idle_per_arm == 0 {
            return;
        }
        let index = match pool
            .arms
            .iter()
            .position(|a| a.authority == upstream.authority)
        {
            Some(i) => i,
            None => {
                pool.arms.push(ArmPool {
                    authority: upstream.authority.clone(),
                    idle: Vec::new(),
                });
                pool.arms.len() - 1
            }
        };
        let idle = &mut pool.arms[index].idle;
        if idle.len() >= limits.max_idle_per_arm {
            idle.remove(0);
        }
        idle.push(upstream);
    });
}

/// Closes this thread's idle connections to `authority` (after one of them turned out
/// to be closed by the arm: the others likely are too).
pub fn purge(authority: &str) {
    POOL.with_borrow_mut(|pool| pool.arms.retain(|a| a.authority != authority));
}

/// Closes every idle connection of this thread (a server on this thread is stopping).
pub fn clear() {
    POOL.with_borrow_mut(|pool| pool.arms.clear());
}

/// Idle connections held by this thread to `authority`.
#[cfg(test)]
pub fn idle_count(authority: &str) -> usize {
    POOL.with_borrow(|pool| {
        pool.arms
            .iter()
            .find(|a| a.authority == authority)
            .map_or(0, |a| a.idle.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn connection(listener: &TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Upstream {
            authority: addr.to_string(),
            stream,
            buf: BytesMut::new(),
            idle_since: Instant::now(),
            echoes: false,
        }
    }

    const LIMITS: Limits = Limits {
        max_idle_per_arm: 2,
        idle_timeout: Duration::from_secs(30),
    };

    #[tokio::test]
    async fn the_newest_idle_connection_is_reused_first_and_the_pool_is_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut ports = Vec::new();
        for _ in 0..3 {
            let up = connection(&listener).await;
            ports.push(up.stream.local_addr().map(|a| a.port()).unwrap_or(0));
            checkin(up, LIMITS);
        }
        let authority = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        assert_eq!(idle_count(&authority), 2, "bounded by max_idle_per_arm");
        let port =
            |u: Option<Upstream>| u.and_then(|u| u.stream.local_addr().ok()).map(|a| a.port());
        assert_eq!(port(checkout(&authority, LIMITS)), Some(ports[2]));
        assert_eq!(port(checkout(&authority, LIMITS)), Some(ports[1]));
        assert!(
            checkout(&authority, LIMITS).is_none(),
            "the oldest was dropped"
        );
        assert!(checkout("127.0.0.1:1", LIMITS).is_none());
    }

    #[tokio::test]
    async fn expired_connections_are_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let authority = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        checkin(connection(&listener).await, LIMITS);
        let short = Limits {
            idle_timeout: Duration::from_millis(20),
            ..LIMITS
        };
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(checkout(&authority, short).is_none());
        assert_eq!(idle_count(&authority), 0);
        checkin(connection(&listener).await, LIMITS);
        purge(&authority);
        assert_eq!(idle_count(&authority), 0);
    }
}
