//! Shared building blocks of abgate's router and model server.
//!
//! Both processes speak the same error shape, export the same metric families and
//! load their configuration the same way, so that code lives here once:
//!
//! * [`error`] — the closed set of error types ([`ErrorKind`]), which doubles as the
//!   `error_type` label, and the JSON error body.
//! * [`metrics`] — the metric families of the design contract (`predictions_total`,
//!   `prediction_duration_seconds`, ...), their buckets, and the `/api/metrics` summary.
//! * [`system`] — per-process CPU and memory gauges, refreshed by a background sampler.
//! * [`config`] — figment loading (TOML file, then prefixed environment variables) with
//!   errors that name the file, the key path and the reason.
//! * [`http`] — the hyper serve loop with graceful shutdown, body reading under a limit,
//!   content-type checks and JSON responses.
//! * [`feedback`] — the closed set of feedback types.
//! * [`client`] — a small HTTP client for health checks, the supervisor and tests.

pub mod client;
pub mod config;
pub mod error;
pub mod feedback;
pub mod headers;
pub mod http;
pub mod metrics;
pub mod oip;
pub mod system;

pub use error::{ApiError, ErrorKind};
pub use feedback::FeedbackType;

/// Version of the abgate build, exported in `abgate_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
