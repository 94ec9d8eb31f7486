//! The router's error enum, and the one place it is mapped to HTTP
//! ([`RouterError::to_api`]).

use abgate_common::config::ConfigError;
use abgate_common::{ApiError, ErrorKind};
use std::time::Duration;

/// Everything that can go wrong in the router, at start-up or on a request.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The config file is missing, malformed or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The metric registry refused a family (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The request itself was rejected (bad body, unknown arm, ...).
    #[error(transparent)]
    Request(#[from] ApiError),
    /// The arm refused the connection.
    #[error("arm `{arm}` refused the connection: {reason}")]
    Connect {
        /// Arm name.
        arm: String,
        /// Connector error.
        reason: String,
    },
    /// The arm broke the connection or answered something that is not HTTP.
    #[error("arm `{arm}` broke the connection: {reason}")]
    Broken {
        /// Arm name.
        arm: String,
        /// Client error.
        reason: String,
    },
    /// The arm did not answer in time.
    #[error("arm `{arm}` did not answer within {} ms", .timeout.as_millis())]
    Timeout {
        /// Arm name.
        arm: String,
        /// The configured request timeout.
        timeout: Duration,
    },
    /// No arm can take the request.
    #[error("{0}")]
    NoHealthyArm(String),
    /// A file could not be read or written (audit log, config edit).
    #[error("{0}")]
    Io(String),
    /// Too many requests in flight.
    #[error("the router is at its limit of {0} concurrent requests; retry later")]
    Overloaded(usize),
}

impl RouterError {
    /// The client-visible error (kind, hence status, and message).
    pub fn to_api(&self) -> ApiError {
        let kind = match self {
            RouterError::Request(e) => return e.clone(),
            RouterError::Config(_) | RouterError::Metrics(_) | RouterError::Io(_) => {
                ErrorKind::Internal
            }
            RouterError::Connect { .. } | RouterError::Broken { .. } => ErrorKind::UpstreamError,
            RouterError::Timeout { .. } => ErrorKind::UpstreamTimeout,
            RouterError::NoHealthyArm(_) => ErrorKind::NoHealthyArm,
            RouterError::Overloaded(_) => ErrorKind::Overloaded,
        };
        ApiError::new(kind, self.to_string())
    }
}
