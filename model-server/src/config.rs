//! The model server's configuration: `config/<arm>.toml`, overridden by
//! `ABGATE_MODEL_*` environment variables, validated into [`ServerConfig`].

use abgate_common::config::{self, ConfigError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment prefix: `ABGATE_MODEL_LISTEN=0.0.0.0:7001` overrides `listen`.
pub const ENV_PREFIX: &str = "ABGATE_MODEL_";

/// The file as written (unknown keys are errors).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    variant: String,
    listen: String,
    model_dir: PathBuf,
    #[serde(default = "default_model_name")]
    model_name: String,
    #[serde(default = "default_body_limit")]
    body_limit_bytes: usize,
    #[serde(default = "default_max_batch")]
    max_batch_size: usize,
    #[serde(default)]
    workers: usize,
    #[serde(default)]
    inference_threads: usize,
    #[serde(default = "default_queue")]
    inference_queue: usize,
    #[serde(default = "default_true")]
    batch_concurrent_requests: bool,
    #[serde(default = "default_inline_rows")]
    inline_rows: usize,
    #[serde(default = "default_recent")]
    recent_predictions: usize,
    #[serde(default = "default_body_timeout")]
    body_timeout_ms: u64,
    #[serde(default = "default_header_timeout")]
    header_timeout_ms: u64,
    #[serde(default = "default_grace")]
    shutdown_grace_ms: u64,
    #[serde(default = "default_sample")]
    system_sample_interval_ms: u64,
}

fn default_model_name() -> String {
    DEFAULT_MODEL_NAME.to_string()
}
fn default_body_limit() -> usize {
    1024 * 1024
}
fn default_max_batch() -> usize {
    1024
}
fn default_inline_rows() -> usize {
    8
}
fn default_true() -> bool {
    true
}
fn default_queue() -> usize {
    4096
}
fn default_recent() -> usize {
    100_000
}
fn default_body_timeout() -> u64 {
    10_000
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_grace() -> u64 {
    10_000
}
fn default_sample() -> u64 {
    5_000
}

/// The logical model name both shipped arms serve on the Open Inference Protocol.
pub const DEFAULT_MODEL_NAME: &str = "wine-quality";

/// A validated model-server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Arm name: the `variant` label and the prefix of every prediction id.
    pub variant: String,
    /// Address to listen on (used by the binary; tests pass their own listener).
    pub listen: SocketAddr,
    /// Model directory (resolved against the config file's directory).
    pub model_dir: PathBuf,
    /// The experiment's logical model name: `{model}` in the Open Inference Protocol's
    /// `/v2/models/{model}/…` routes. Every arm of one experiment serves the same name.
    pub model_name: String,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Largest accepted `instances` batch.
    pub max_batch_size: usize,
    /// Threads serving HTTP (0 in the file means one per core).
    pub workers: usize,
    /// Threads running forward passes (0 in the file means one per core).
    pub inference_threads: usize,
    /// Forward-pass jobs that may wait before requests are shed with 503.
    pub inference_queue: usize,
    /// Run requests that are already queued together in one forward pass.
    pub batch_concurrent_requests: bool,
    /// Requests of at most this many rows run their forward pass on the HTTP worker
    /// that parsed them (0: every request goes to the inference threads).
    pub inline_rows: usize,
    /// Predictions remembered for their feedback (the user each was made for, what
    /// it already received, the value an `actual` is compared with); feedback on an
    /// older one is refused with 404 `unknown_prediction`. About 96 bytes each.
    pub recent_predictions: usize,
    /// A request body must arrive within this time.
    pub body_timeout: Duration,
    /// Request headers must arrive within this time.
    pub header_timeout: Duration,
    /// In-flight requests get this long to finish at shutdown.
    pub shutdown_grace: Duration,
    /// How often the CPU and memory gauges are sampled.
    pub system_sample_interval: Duration,
}

/// Arm names appear in labels, prediction ids and URLs: the shared rule.
pub fn is_valid_variant(name: &str) -> bool {
    config::is_valid_arm_name(name)
}

/// Model names appear in URL paths: 1-64 letters, digits, `_`, `-` or `.`, not
/// starting with `.` (so never `.` or `..`), and never needing percent-encoding.
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl ServerConfig {
    /// Loads and validates `path` (TOML, then `ABGATE_MODEL_*` variables).
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let raw: RawConfig = config::load(path, ENV_PREFIX)?;
        Self::from_raw(path, raw)
    }

    /// Parses and validates config text (`path` is used for messages and relative
    /// paths).
    pub fn parse(path: &Path, text: &str) -> Result<ServerConfig, ConfigError> {
        let raw: RawConfig = config::parse(path, text, ENV_PREFIX)?;
        Self::from_raw(path, raw)
    }

    fn from_raw(path: &Path, raw: RawConfig) -> Result<ServerConfig, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::invalid(path, key, reason);
        if !is_valid_variant(&raw.variant) {
            return Err(invalid(
                "variant",
                format!(
                    "{:?} must be 1-64 characters of letters, digits and `_`",
                    raw.variant
                ),
            ));
        }
        if !is_valid_model_name(&raw.model_name) {
            return Err(invalid(
                "model_name",
                format!(
                    "{:?} must be 1-64 characters of letters, digits, `_`, `-` and `.`, not starting with `.`",
                    raw.model_name
                ),
            ));
        }
        let listen: SocketAddr = raw.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!("{:?} is not an address like 0.0.0.0:6001 ({e})", raw.listen),
            )
        })?;
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(invalid(key, "must be at least 1".into()))
            } else {
                Ok(v)
            }
        };
        positive("body_limit_bytes", raw.body_limit_bytes)?;
        positive("max_batch_size", raw.max_batch_size)?;
        positive("inference_queue", raw.inference_queue)?;
        positive("recent_predictions", raw.recent_predictions)?;
        for (key, v) in [
            ("body_timeout_ms", raw.body_timeout_ms),
            ("header_timeout_ms", raw.header_timeout_ms),
            ("system_sample_interval_ms", raw.system_sample_interval_ms),
        ] {
            positive(key, v as usize)?;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let or_cores = |n: usize| if n == 0 { cores } else { n };
        Ok(ServerConfig {
            variant: raw.variant,
            listen,
            model_dir: config::resolve_relative(path, &raw.model_dir),
            model_name: raw.model_name,
            body_limit_bytes: raw.body_limit_bytes,
            max_batch_size: raw.max_batch_size,
            workers: or_cores(raw.workers),
            inference_threads: or_cores(raw.inference_threads),
            inference_queue: raw.inference_queue,
            batch_concurrent_requests: raw.batch_concurrent_requests,
            inline_rows: raw.inline_rows,
            recent_predictions: raw.recent_predictions,
            body_timeout: Duration::from_millis(raw.body_timeout_ms),
            header_timeout: Duration::from_millis(raw.header_timeout_ms),
            shutdown_grace: Duration::from_millis(raw.shutdown_grace_ms),
            system_sample_interval: Duration::from_millis(raw.system_sample_interval_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "variant = \"best_model\"\nlisten = \"127.0.0.1:6001\"\nmodel_dir = \"../models/best_model\"\n";

    #[test]
    fn a_minimal_file_gets_defaults_and_a_resolved_model_dir() {
        let c = ServerConfig::parse(Path::new("config/best_model.toml"), GOOD)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.variant, "best_model");
        assert_eq!(c.model_name, "wine-quality");
        assert_eq!(c.body_limit_bytes, 1024 * 1024);
        assert_eq!(c.model_dir, PathBuf::from("config/../models/best_model"));
        assert!(c.inference_threads >= 1);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("variant = \"best-model\"", "key `variant`"),
            ("listen = \"localhost\"", "key `listen`"),
            ("model_name = \"\"", "key `model_name`"),
            ("model_name = \"wine/quality\"", "key `model_name`"),
            ("model_name = \"..\"", "key `model_name`"),
            ("max_batch_size = 0", "key `max_batch_size`"),
            ("body_limit_bytes = -1", "key `body_limit_bytes`"),
            ("colour = \"red\"", "unknown field: found `colour`"),
        ];
        for (line, expected) in cases {
            let key = line.split(' ').next().unwrap_or_default();
            let text: String = GOOD
                .lines()
                .filter(|l| !l.starts_with(key))
                .chain(std::iter::once(line))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = ServerConfig::parse(Path::new("c.toml"), &text)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{line}: {err}");
            assert!(err.starts_with("c.toml"), "{err}");
        }
    }
}
