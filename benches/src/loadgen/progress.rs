//! Shared progress counters and the once-per-second progress line on stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Counters every connection task bumps (relaxed atomics: read only for display).
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests finished (answered, failed or timed out).
    pub done: AtomicU64,
    /// Of those, failed (non-2xx, connection error, timeout).
    pub errors: AtomicU64,
}

impl Progress {
    /// Counts one finished request.
    pub fn finish(&self, failed: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Prints `[elapsed] requests N  rate R/s  errors E` to stderr every second from
/// `start` until aborted.
pub fn spawn_printer(progress: Arc<Progress>, start: Instant) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(start + period, period);
        let (mut last_n, mut last_t) = (0u64, start);
        loop {
            let now = tick.tick().await;
            let n = progress.done.load(Ordering::Relaxed);
            let errors = progress.errors.load(Ordering::Relaxed);
            let dt = (now - last_t).as_secs_f64().max(1e-9);
            eprintln!(
                "[{:>6.1}s] requests {:>10}  rate {:>9.0}/s  errors {}",
                (now - start).as_secs_f64(),
                n,
                (n - last_n) as f64 / dt,
                errors
            );
            (last_n, last_t) = (n, now);
        }
    })
}
