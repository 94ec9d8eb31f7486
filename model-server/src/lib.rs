//! One arm of an abgate experiment: a candle-backed red-wine quality model served
//! over HTTP, exporting the design contract's metrics under its `variant` label.
//!
//! A tour of the crate:
//!
//! * [`config`] — `config/<arm>.toml` + `ABGATE_MODEL_*` overrides, validated.
//! * [`model`] — a model directory (`model.json` + `model.safetensors`): loading,
//!   checking, and the forward pass.
//! * [`train`] — the `train` command: candle-nn + AdamW on the UCI red-wine data.
//! * [`validation`] — `/predict` and `/feedback` bodies into checked values or
//!   errors that name the field.
//! * [`inference`] — forward passes on dedicated threads with a bounded queue.
//! * [`recent`] — unguessable prediction ids and the bounded memory of recent
//!   predictions (their user and the feedback they received).
//! * [`state`] — what every route shares: configuration, model, metric series,
//!   inference threads and recent predictions.
//! * [`headers`] — the `X-Variant` and `X-User-Id` headers both route families use.
//! * [`service`] — the route table: the arm's own routes, and dispatch of `/v2` to
//!   [`oip`].
//! * [`oip`] — the Open Inference Protocol v2 REST routes under `/v2` (KServe v2 /
//!   Triton, binary tensor extension included).
//!
//! The modules are layered: `service` depends on `oip` and `state`, `oip` on `state`
//! and `headers`, never on `service` (`model-server/tests/layers.rs` keeps every crate
//! of the workspace free of import circles).
//!
//! [`run`] serves a loaded configuration on a listener until a shutdown future
//! resolves, so tests start a real server in-process on port 0.

pub mod config;
pub mod error;
pub mod headers;
pub mod inference;
pub mod model;
pub mod oip;
pub mod recent;
pub mod service;
pub mod state;
pub mod train;
pub mod validation;

use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

pub use config::ServerConfig;
pub use error::ModelServerError;
pub use model::Model;

/// Loads the model named by `config` and serves it on `listener` until `shutdown`
/// resolves; in-flight requests then get `config.shutdown_grace` to finish.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ModelServerError> {
    let model = Arc::new(Model::load(&config.model_dir)?);
    let state = state::State::new(config, model)?;
    let sampler_task = state.system.spawn(state.config.system_sample_interval);
    let addr = listener.local_addr().ok();
    tracing::info!(
        variant = %state.config.variant,
        model_version = %state.model.spec().version,
        addr = ?addr,
        "model server listening"
    );
    let refused = state.arm.clone();
    let options = abgate_common::http::ServeOptions {
        header_read_timeout: state.config.header_timeout,
        shutdown_grace: state.config.shutdown_grace,
        // hyper reads heads past the served limits, so most refusals happen in
        // `service::handle` on a parsed head (see `service::HEAD_READ_FACTOR`).
        max_header_bytes: service::MAX_HEAD_BYTES * service::HEAD_READ_FACTOR,
        max_headers: service::MAX_HEAD_LINES * service::HEAD_READ_FACTOR,
        on_refusal: Some(abgate_common::http::RefusalHook::new(move |kind| {
            refused.error(kind)
        })),
        ..Default::default()
    };
    let handler_state = Arc::clone(&state);
    abgate_common::http::serve_on_threads(
        listener,
        state.config.workers,
        move |req| service::handle(Arc::clone(&handler_state), req),
        shutdown,
        options,
    )
    .await;
    sampler_task.abort();
    tracing::info!(variant = %state.config.variant, "model server stopped");
    Ok(())
}
