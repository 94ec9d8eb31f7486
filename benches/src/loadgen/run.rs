//! Orchestrates a run: resolve the target, open every connection, start the clock,
//! run the closed or open loop on one task per connection, merge the statistics
//! and build the report.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::{Config, Mode};
use super::conn::{Connection, Target};
use super::error::LoadgenError;
use super::progress::{spawn_printer, Progress};
use super::report::Report;
use super::schedule::Schedule;
use super::stats::TaskStats;
use super::worker::{Shared, Worker};
use super::workload::Workload;
use super::{closed_loop, open_loop};

/// What a run produced: the report and the merged statistics (whose histograms
/// feed the SVG chart).
pub struct RunOutput {
    /// The report.
    pub report: Report,
    /// Merged statistics of all connections.
    pub stats: TaskStats,
}

/// Runs the load described by `cfg` on the current tokio runtime.
pub async fn run(cfg: &Config) -> Result<RunOutput, LoadgenError> {
    cfg.validate().map_err(LoadgenError::Config)?;
    let target = Target::resolve(&cfg.target).await?;
    let progress = Arc::new(Progress::default());
    let shared = Arc::new(Shared {
        target,
        workload: Workload::new(cfg.users, cfg.feedback_ratio)?,
        timeout: cfg.timeout,
        progress: Arc::clone(&progress),
        open_loop: cfg.mode == Mode::Open,
    });

    // Open every connection before the clock starts, so handshakes are not
    // counted as latency (a connection that fails here is retried on first use).
    let mut warmups = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        let addr = shared.target.addr;
        let timeout = cfg.timeout;
        warmups.push(tokio::spawn(async move {
            let mut c = Connection::new(addr);
            let _ = tokio::time::timeout(timeout, c.ready()).await;
            c
        }));
    }
    let mut workers = Vec::with_capacity(cfg.connections);
    for w in warmups {
        workers.push(Worker::new(Arc::clone(&shared), w.await?)?);
    }

    let start = Instant::now();
    let printer = (!cfg.no_progress).then(|| spawn_printer(Arc::clone(&progress), start));
    let mut pacer = None;
    let tasks: Vec<JoinHandle<Result<TaskStats, LoadgenError>>> = match cfg.mode {
        Mode::Closed => {
            let counter = Arc::new(AtomicU64::new(0));
            let end = start + cfg.duration;
            workers
                .into_iter()
                .map(|w| tokio::spawn(closed_loop::run_connection(w, Arc::clone(&counter), end)))
                .collect()
        }
        Mode::Open => {
            let rate = cfg.rate.unwrap_or(1.0);
            let schedule = Schedule::new(start, rate, cfg.connections, cfg.duration);
            let drain = open_loop::drain_deadline(&schedule, cfg.duration, cfg.timeout);
            let (senders, receivers) = open_loop::channels(cfg.connections);
            let tasks = workers
                .into_iter()
                .zip(receivers)
                .map(|(w, rx)| tokio::spawn(open_loop::run_connection(w, schedule, rx, drain)))
                .collect();
            pacer = Some(open_loop::spawn_pacer(schedule, senders)?);
            tasks
        }
    };

    let mut total = TaskStats::new()?;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(stats)) => total.merge(stats)?,
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(LoadgenError::Join(e))),
        }
    }
    let elapsed = start.elapsed();
    if let Some(p) = printer {
        p.abort();
    }
    if let Some(p) = pacer {
        // Already finished: every connection loop ended because the pacer dropped
        // its senders.
        let _ = p.join();
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(RunOutput {
        report: Report::build(cfg, &total, elapsed),
        stats: total,
    })
}
