//! The abgate router: one stable front door that gives every user a sticky arm by a
//! weighted hash and forwards `/predict` (and `/feedback`) to that arm.
//!
//! A tour of the crate, by layer (each layer uses only the ones below it; a test,
//! `model-server/tests/layers.rs`, keeps the files free of import circles):
//!
//! 1. **Routes** — `service` (the route table over hyper), `oip` (the Open Inference
//!    Protocol: `infer` is a prediction, health answered here, metadata forwarded),
//!    `views` (the JSON views), `status_page`.
//! 2. **Transports** — they only move bytes: [`fastpath`] (the common `POST /predict`
//!    over HTTP/1.1, zero-copy, on the connection's own task) and `hyper_path` (every
//!    other request, read whole).
//! 3. **The pipeline** — `forward`: `predict` sequences a prediction for every
//!    transport, and `attempt` is the one way a request reaches an arm.
//! 4. **Policy and control** — `policy`: pure decisions (assignment source, override,
//!    failover, the retry's arm, feedback's arm, what is recorded, the router's
//!    headers); `control`: the only code that changes the live router after start-up
//!    (guardrail rollbacks; cluster mode's reads and the trips they apply,
//!    `control::cluster`; the progressive rollout's decisions, `control::rollout`,
//!    which in cluster mode also adopts the step the cluster's records say),
//!    beside `reload` (file changes, SIGHUP) and `checker` (active health checks).
//! 5. **State** — [`state`]: the version in force (swapped atomically) and what
//!    outlives reloads.
//! 6. **Features**, each taking its own parts, never the router: `shadow` (mirrored
//!    copies, compared), [`upstream`] (the one HTTP/1.1 client: strict framing in
//!    [`upstream::h1`], relay, the per-thread `pool`), `experiment` (per-phase
//!    statistics, SRM, comparisons; the record of a trip; where verdicts come from,
//!    local or the cluster's), `cluster` (the export of the mergeable state as
//!    Prometheus counters, and the reader of the cluster's sums and rollout records),
//!    `rollout` (the progressive rollout's state, its state file and gauges, and the
//!    pure order by which replicas agree on one record), `endpoint` and `health`
//!    (an arm's addresses and their health).
//! 7. **Config and metrics** — [`config`] (raw file → validated, with key paths; the
//!    one file writer in `config::edit`), `metrics` (the router's families).
//! 8. **Pure leaves** — [`assignment`] (XXH3 position, weighted intervals, failover
//!    re-split), `headers` (names, request ids, the hop-by-hop rules), `error` (the
//!    error enum and its one mapping to HTTP), `clock`.
//!
//! Beside them, the command-line tools: [`check`] (`abgate check`) and [`report`]
//! (`abgate report`).
//!
//! ## One `/predict`, top to bottom
//! A client's `POST /predict` with `X-User-Id` reaches `fastpath::serve_connection`,
//! which reads the head (`fastpath::request::inspect` decides it is the fast path's),
//! takes a concurrency slot, reads the body, and hands `forward::predict` a borrowed
//! `Prediction` and its socket. There, in order: the user is assigned
//! (`policy::assign_key`: the weighted hash of the key under the salt);
//! `policy::forward_with_retry` picks the serving arm (failover when it is down) and
//! runs `forward::attempt` — an endpoint picked, the request written by the one codec,
//! sent over a pooled connection that holds no stray byte, the answer's head parsed
//! and its `X-Request-Id` echo checked — retrying once where the policy says; the
//! answer is classified (an error body of ours says its kind); `forward::client_head`
//! writes the status line, the arm's visible headers and the router's (`X-Variant`,
//! `X-Assigned-Variant`, `X-Request-Id`); the body is relayed to the client as it
//! arrives; the connection goes back to the pool; `policy::record_prediction` counts
//! it (metrics and the experiment); and a sampled user's request is mirrored to its
//! shadows. Any other request takes the same path from `hyper_path::predict`.
//!
//! [`run`] serves on a listener until a shutdown future resolves, so tests start a
//! real router in-process on port 0.

pub mod assignment;
pub mod check;
mod checker;
mod clock;
mod cluster;
pub mod config;
mod control;
mod endpoint;
mod error;
mod experiment;
pub mod fastpath;
mod forward;
mod headers;
mod health;
mod hyper_path;
mod metrics;
mod oip;
mod policy;
mod pool;
mod reload;
pub mod report;
mod rollout;
mod service;
mod shadow;
pub mod state;
mod status_page;
pub mod upstream;
mod views;

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
    // Cluster mode: any recorded rollback applied before the first answer.
    control::cluster::start(&router).await;
    let tasks = [
        tokio::spawn(checker::run_checks(Arc::clone(&router))),
        tokio::spawn(checker::run_resolver(Arc::clone(&router))),
        tokio::spawn(reload::watch(Arc::clone(&router))),
        tokio::spawn(control::run(Arc::clone(&router))),
        tokio::spawn(control::cluster::run(Arc::clone(&router))),
        router.system.spawn(std::time::Duration::from_secs(5)),
    ];
    let active = router.active();
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        arms = %active.arms.iter().map(|a| format!("{}={}", a.config.name, a.config.weight)).collect::<Vec<_>>().join(" "),
        "router listening"
    );
    let options = abgate_common::http::ServeOptions {
        header_read_timeout: active.config.client.header_timeout,
        shutdown_grace: active.config.shutdown_grace,
        send_timeout: active.config.client.send_timeout,
        linger: active.config.client.linger,
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
