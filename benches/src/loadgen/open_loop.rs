//! Open loop at a constant rate. A pacer OS thread (precise sleeps, 1 µs timer
//! slack, unlike tokio's 1 ms timer wheel) hands request `k` to connection
//! `k mod connections` at its intended send time `start + k / rate`. A connection
//! still busy with an earlier request queues it; the request's latency is measured
//! from its intended time, so time spent queued behind a slow answer counts
//! (coordinated-omission correction).

use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::error::LoadgenError;
use super::schedule::Schedule;
use super::stats::TaskStats;
use super::worker::Worker;

/// Channels from the pacer to each connection.
pub fn channels(connections: usize) -> (Vec<UnboundedSender<u64>>, Vec<UnboundedReceiver<u64>>) {
    (0..connections).map(|_| unbounded_channel()).unzip()
}

/// Starts the pacer thread: it sends every scheduled request number to its
/// connection at its intended time, then drops the senders (which ends the
/// connection loops once drained).
pub fn spawn_pacer(
    schedule: Schedule,
    senders: Vec<UnboundedSender<u64>>,
) -> Result<std::thread::JoinHandle<()>, LoadgenError> {
    std::thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            {
                // Default slack is 50 µs; best effort.
                let _ = nix::sys::prctl::set_timerslack(1_000);
            }
            let start = schedule.start().into_std();
            for k in 0..schedule.total() {
                let due = start + schedule.offset(k);
                let now = std::time::Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if let Some(tx) = senders.get(schedule.connection_of(k)) {
                    // A closed receiver means its task ended early; nothing to do.
                    let _ = tx.send(k);
                }
            }
        })
        .map_err(LoadgenError::Thread)
}

/// Runs one connection's share of the schedule. Requests still queued after
/// `drain_deadline` (end of the schedule plus the timeout) are counted as unsent.
pub async fn run_connection(
    mut worker: Worker,
    schedule: Schedule,
    mut rx: UnboundedReceiver<u64>,
    drain_deadline: Instant,
) -> Result<TaskStats, LoadgenError> {
    while let Some(k) = rx.recv().await {
        if Instant::now() >= drain_deadline {
            worker.stats_mut().unsent += 1;
            continue;
        }
        worker.request(k, schedule.intended(k)).await?;
    }
    Ok(worker.into_stats())
}

/// How long after the schedule's end queued requests may still be sent.
pub fn drain_deadline(schedule: &Schedule, duration: Duration, timeout: Duration) -> Instant {
    schedule.start() + duration + timeout
}
