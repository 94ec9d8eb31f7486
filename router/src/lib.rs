//! The abgate router: one stable front door that gives every user a sticky arm by a
//! weighted hash and forwards `/predict` (and `/feedback`) to that arm.
//!
//! A tour of the crate:
//!
//! * [`assignment`] — the pure assignment function (XXH3 position, weighted
//!   intervals, failover re-split).
//! * [`config`] — `config/router.toml` + `ABGATE_ROUTER_*`, validated with key paths.
//! * [`state`] — the active config (swapped atomically) and what outlives reloads.
//! * [`policy`] — the one forwarding policy every transport calls: assignment,
//!   override, failover, retry, feedback routing, what is recorded, router headers.
//! * [`headers`] — header names, request ids, the one hop-by-hop list.
//! * [`upstream`] — the one HTTP/1.1 client toward arms: strict response framing
//!   ([`upstream::h1`]), body relay ([`upstream::relay`]).
//! * [`pool`] — idle arm connections per worker thread, checked on every checkout.
//! * [`endpoint`] — an arm's endpoints (addresses), power-of-two-choices picking.
//! * [`health`] — arm health state; [`checker`] — the active checks.
//! * [`reload`] — live reload on file change and SIGHUP.
//! * [`fastpath`] — the transport for the common `/predict` (no hyper);
//!   [`service`] — the route table and the hyper transport; [`views`] — JSON views.
//! * [`oip`] — the Open Inference Protocol at the router (infer assigned like
//!   `/predict`, health answered here, metadata forwarded).
//! * [`metrics`] — the router's metric families.
//! * [`experiment`] — experiment analysis: per-phase statistics, SRM, comparisons,
//!   guardrails (`GET /api/experiment`); [`report`] — `abgate report`.
//! * [`shadow`] — shadow arms: a sample of an arm's traffic mirrored to a model no
//!   user sees, the answers compared.
//! * [`check`] — `abgate check`: validate a file and show who would move.
//! * [`error`] — the error enum and its one mapping to HTTP.
//!
//! [`run`] serves on a listener until a shutdown future resolves, so tests start a
//! real router in-process on port 0.

pub mod assignment;
pub mod check;
pub mod checker;
mod clock;
pub mod config;
pub mod control;
pub mod endpoint;
pub mod error;
pub mod experiment;
pub mod fastpath;
pub mod forward;
pub mod headers;
pub mod health;
pub mod hyper_path;
pub mod metrics;
pub mod oip;
pub mod policy;
pub mod pool;
pub mod reload;
pub mod report;
pub mod service;
pub mod shadow;
pub mod state;
pub mod status_page;
pub mod upstream;
pub mod views;

use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

pub use config::RouterConfig;
pub use error::RouterError;
pub use state::Router;

/// Serves `config` on `listener` until `shutdown` resolves: checks the arms once,
/// then serves while health checks, config reloads and the system sampler run in the
/// background. In-flight requests get `shutdown_grace` to finish.
pub async fn run(
    config: RouterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let text = std::fs::read_to_string(&config.path).unwrap_or_default();
    let router = Router::new(config, state::config_hash(&text))?;
    serve(router, listener, shutdown).await;
    Ok(())
}

/// Serves an already-built [`Router`] (tests use this to reach its state).
pub async fn serve(router: Arc<Router>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    checker::check_all(&router).await;
    let tasks = [
        tokio::spawn(checker::run_checks(Arc::clone(&router))),
        tokio::spawn(checker::run_resolver(Arc::clone(&router))),
        tokio::spawn(reload::watch(Arc::clone(&router))),
        tokio::spawn(control::guardrails::run(Arc::clone(&router))),
        router.system.spawn(std::time::Duration::from_secs(5)),
    ];
    let active = router.active();
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        arms = %active.arms.iter().map(|a| format!("{}={}", a.config.name, a.config.weight)).collect::<Vec<_>>().join(" "),
        "router listening"
    );
    let options = abgate_common::http::ServeOptions {
        header_read_timeout: active.config.header_timeout,
        shutdown_grace: active.config.shutdown_grace,
        send_timeout: active.config.send_timeout,
        linger: active.config.linger,
        ..Default::default()
    };
    drop(active);
    let handler_router = Arc::clone(&router);
    let preface_router = Arc::clone(&router);
    let max_head = options.max_header_bytes;
    let workers = router.active().config.workers;
    // Idle arm connections left on this thread by an earlier server (and runtime).
    pool::clear();
    abgate_common::http::serve_on_threads_with(
        listener,
        workers,
        move |req| service::handle(Arc::clone(&handler_router), req),
        move |stream, stopping| {
            fastpath::serve_connection(Arc::clone(&preface_router), stream, stopping, max_head)
        },
        shutdown,
        options,
    )
    .await;
    pool::clear();
    for task in tasks {
        task.abort();
    }
    tracing::info!("router stopped");
}
