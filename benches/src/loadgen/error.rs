//! The load generator's error type (setup and output failures; request failures
//! are counted in the report, never raised).

use std::path::PathBuf;

/// Anything that stops a load-generator run from starting or its output from being
/// written.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// `--target` is not an `http://host[:port]` URL.
    #[error("invalid --target {url:?}: {reason}")]
    Target {
        /// The value given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The target's host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// `host:port` that was looked up.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// An inconsistent combination of options.
    #[error("{0}")]
    Config(String),
    /// A histogram could not be created.
    #[error("histogram: {0}")]
    Histogram(String),
    /// The open-loop pacer thread could not be started.
    #[error("cannot start the pacer thread: {0}")]
    Thread(std::io::Error),
    /// A load task panicked or was cancelled.
    #[error("a load task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The report could not be serialized.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}
