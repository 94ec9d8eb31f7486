//! Closed loop: each connection sends its next request as soon as the previous
//! answer arrives, until the end time. Latency is measured from the actual send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::error::LoadgenError;
use super::stats::TaskStats;
use super::worker::Worker;

/// Runs one connection's closed loop until `end`. Request numbers (which pick the
/// user and body) come from the shared `counter`, so the user pool is cycled
/// uniformly across connections.
pub async fn run_connection(
    mut worker: Worker,
    counter: Arc<AtomicU64>,
    end: Instant,
) -> Result<TaskStats, LoadgenError> {
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let k = counter.fetch_add(1, Ordering::Relaxed);
        worker.request(k, now).await?;
    }
    Ok(worker.into_stats())
}
