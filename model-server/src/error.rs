//! The model server's error enum: everything that can stop it from starting or
//! training. Request errors are [`abgate_common::ApiError`]s, mapped to HTTP by
//! [`abgate_common::ErrorKind::status`].

use abgate_common::config::ConfigError;
use std::path::PathBuf;

/// Why the model server (or training) could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum ModelServerError {
    /// The config file is missing, malformed or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The model directory or one of its files is missing or unreadable.
    #[error("{path}: {reason}")]
    ModelFile {
        /// File or directory concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// `model.json` parsed but describes an impossible model.
    #[error("{path}: key `{key}`: {reason}")]
    ModelSpec {
        /// The model.json file.
        path: PathBuf,
        /// Offending key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor in `model.safetensors` is missing, extra or of the wrong shape.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Weights {
        /// The safetensors file.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The training data cannot be used.
    #[error("{path}: {reason}")]
    Dataset {
        /// The CSV file.
        path: PathBuf,
        /// What is wrong (with the line number when there is one).
        reason: String,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The metric registry refused a family (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Binding the listen address or another I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}
