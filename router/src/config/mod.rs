//! The router's configuration: `config/router.toml` (TOML), then `ABGATE_ROUTER_*`
//! environment variables, read into a raw `deny_unknown_fields` struct and validated
//! into [`RouterConfig`]. Errors name the file, the key path and the value.

use abgate_common::config::{self, ConfigError};
use http::uri::{Authority, Scheme};
use http::Uri;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::assignment::Split;

mod client;
mod cluster;
pub use cluster::{ClusterConfig, STALE_INTERVALS};
pub mod edit;
mod reload;
pub use client::ClientConfig;
pub use reload::ReloadConfig;
mod guardrails;
mod rollout;
use abgate_stats::Metric;
pub use guardrails::{GuardrailAction, GuardrailConfig};
pub use rollout::{step_weights, AdminConfig, OnComplete, RolloutConfig};

/// XXH3 of config text, as the hex `hash` shown by `/api/config`.
pub fn config_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Environment prefix: `ABGATE_ROUTER_FAILOVER=false` overrides `failover`,
/// `ABGATE_ROUTER_OVERRIDE__TOKEN=s3cret` overrides `override.token`.
pub const ENV_PREFIX: &str = "ABGATE_ROUTER_";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    #[serde(default = "yes")]
    failover: bool,
    #[serde(default = "default_body_limit")]
    body_limit_bytes: usize,
    #[serde(default = "default_max_concurrent")]
    max_concurrent_requests: usize,
    #[serde(default = "default_grace")]
    shutdown_grace_ms: u64,
    #[serde(default)]
    workers: usize,
    experiment: RawExperiment,
    arms: Vec<RawArm>,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    health: RawHealth,
    #[serde(default, rename = "override")]
    override_: RawOverride,
    #[serde(default)]
    client: RawClient,
    #[serde(default)]
    reload: RawReload,
    #[serde(default)]
    guardrails: Vec<RawGuardrail>,
    #[serde(default)]
    shadows: Vec<RawShadow>,
    #[serde(default)]
    rollout: Option<rollout::RawRollout>,
    #[serde(default)]
    admin: rollout::RawAdmin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    #[serde(default = "default_experiment")]
    name: String,
    salt: String,
    #[serde(default = "default_min_samples")]
    min_samples: u64,
    #[serde(default = "default_user_sample_cap")]
    user_sample_cap: usize,
    #[serde(default)]
    audit_log: String,
    #[serde(default = "yes")]
    statistics: bool,
    #[serde(default)]
    prometheus_url: String,
    #[serde(default = "default_cluster_interval")]
    cluster_interval_ms: u64,
}

fn default_cluster_interval() -> u64 {
    cluster::DEFAULT_CLUSTER_INTERVAL_MS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuardrail {
    name: String,
    metric: String,
    arm: String,
    max_degradation: f64,
    action: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArm {
    name: String,
    #[serde(default)]
    url: String,
    /// Several endpoints of one arm (instead of `url`).
    #[serde(default)]
    urls: Vec<String>,
    weight: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    name: String,
    url: String,
    of: String,
    sample: f64,
    #[serde(default = "default_shadow_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_tolerance")]
    tolerance: f64,
    /// 0: the upstream request timeout.
    #[serde(default)]
    timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    connect_timeout_ms: u64,
    request_timeout_ms: u64,
    pool_idle_timeout_ms: u64,
    pool_max_idle_per_arm: usize,
    resolve_interval_ms: u64,
    max_endpoints_per_arm: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout_ms: 250,
            request_timeout_ms: 5_000,
            pool_idle_timeout_ms: 30_000,
            pool_max_idle_per_arm: 1024,
            resolve_interval_ms: 5_000,
            max_endpoints_per_arm: 64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealth {
    interval_ms: u64,
    timeout_ms: u64,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            interval_ms: 1_000,
            timeout_ms: 500,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOverride {
    enabled: bool,
    token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawClient {
    header_timeout_ms: u64,
    body_timeout_ms: u64,
    send_timeout_ms: u64,
    linger_ms: u64,
}

impl Default for RawClient {
    fn default() -> Self {
        RawClient {
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            send_timeout_ms: 10_000,
            linger_ms: 2_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReload {
    poll_interval_ms: u64,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload {
            poll_interval_ms: 250,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_body_limit() -> usize {
    1024 * 1024
}
fn default_max_concurrent() -> usize {
    4096
}
fn default_grace() -> u64 {
    10_000
}
fn default_experiment() -> String {
    "default".into()
}
fn default_min_samples() -> u64 {
    abgate_stats::DEFAULT_MIN_SAMPLES
}
fn default_user_sample_cap() -> usize {
    200_000
}
fn default_shadow_in_flight() -> usize {
    64
}
fn default_tolerance() -> f64 {
    0.1
}

/// A validated router configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// The file it came from (reloads re-read it).
    pub path: PathBuf,
    /// Address to listen on (a reload cannot change it).
    pub listen: SocketAddr,
    /// Serve an unhealthy arm's users from a healthy arm.
    pub failover: bool,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Requests in flight beyond this are shed with 503 `overloaded`.
    pub max_concurrent_requests: usize,
    /// In-flight requests get this long to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Threads accepting and serving connections (0 in the file: one per core).
    pub workers: usize,
    /// Experiment name (informational).
    pub experiment: String,
    /// Salt of the assignment hash; changing it reshuffles every user.
    pub salt: String,
    /// Arms in config order (the order of their intervals).
    pub arms: Vec<ArmConfig>,
    /// Upstream connection settings.
    pub upstream: UpstreamConfig,
    /// Active health checking.
    pub health: HealthConfig,
    /// `X-Variant` override.
    pub override_: OverrideConfig,
    /// `[client]`: client-side limits.
    pub client: ClientConfig,
    /// `[reload]`: live reload.
    pub reload: ReloadConfig,
    /// Experiment analysis settings (`experiment.min_samples`, ...).
    pub analysis: AnalysisConfig,
    /// `[[guardrails]]`, in file order.
    pub guardrails: Vec<GuardrailConfig>,
    /// Shadow arms: models that answer a sample of an arm's traffic unseen.
    pub shadows: Vec<ShadowConfig>,
    /// `[rollout]`: a candidate ramped step by step on evidence.
    pub rollout: Option<RolloutConfig>,
    /// `[admin]`: the control routes' token.
    pub admin: AdminConfig,
}

/// One shadow arm (`[[shadows]]`): a model server that gets a copy of a sample of
/// one arm's `/predict` traffic; its answers are compared, never returned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowConfig {
    /// Shadow name (the `shadow` label).
    pub name: String,
    /// Base URL of its model server.
    pub url: String,
    /// The arm whose served users are mirrored.
    pub of: String,
    /// Share of that arm's users mirrored (0-1), by `XXH3_64(seed 2, key)`.
    pub sample: f64,
    /// Copies in flight beyond this are dropped (and counted).
    pub max_in_flight: usize,
    /// Two predictions agree when they differ by at most this much.
    pub tolerance: f64,
    /// Time the shadow has to answer a copy completely, in milliseconds.
    #[serde(rename = "timeout_ms", serialize_with = "as_millis")]
    pub timeout: Duration,
    /// The shadow as an upstream (name, URL, authority) for the arm client.
    #[serde(skip)]
    pub upstream: ArmConfig,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Experiment analysis settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisConfig {
    /// Whether requests and feedback are recorded for the experiment analysis
    /// (`experiment.statistics`, default true; off only to measure its cost).
    pub statistics: bool,
    /// Observations per arm before a comparison gets a verdict (default 100).
    pub min_samples: u64,
    /// Sampled users (all arms) above which the sampling fraction halves
    /// (default 200000).
    pub user_sample_cap: usize,
    /// Where guardrail trips are appended as JSON lines (relative paths are resolved
    /// against the config file's directory; default `abgate-audit.jsonl` next to it).
    pub audit_log: PathBuf,
    /// Cluster mode (`experiment.prometheus_url`, `experiment.cluster_interval_ms`):
    /// `None` is a single node.
    pub cluster: Option<ClusterConfig>,
}

/// One arm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmConfig {
    /// Arm name (the `variant` label).
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:6001`.
    pub url: String,
    /// Relative weight (>= 0).
    pub weight: f64,
    /// Scheme of `url` (http).
    #[serde(skip)]
    pub scheme: Scheme,
    /// Host and port of `url`.
    #[serde(skip)]
    pub authority: Authority,
    /// Every endpoint URL of the arm (`urls`, or just `url`).
    pub urls: Vec<String>,
    /// Host and port of each of `urls`: each may resolve to several addresses (a
    /// headless Service), re-resolved every `upstream.resolve_interval_ms`.
    #[serde(skip)]
    pub authorities: Vec<Authority>,
}

/// Upstream connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time for an arm to answer (headers).
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per arm.
    pub pool_max_idle_per_arm: usize,
    /// How often arm host names are resolved again.
    pub resolve_interval: Duration,
    /// At most this many endpoints per arm.
    pub max_endpoints_per_arm: usize,
}

/// Active health checking.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Time between checks of each arm.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive failures that mark an arm down.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark it up again.
    pub healthy_threshold: u32,
}

/// `X-Variant` override settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OverrideConfig {
    /// Whether `X-Variant` may force an arm.
    pub enabled: bool,
    /// If set, `X-Override-Token` must equal it.
    pub token: Option<String>,
}

impl RouterConfig {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<RouterConfig, ConfigError> {
        let raw: RawConfig = config::load(path, ENV_PREFIX)?;
        Self::from_raw(path, raw)
    }

    /// Parses and validates config text (`path` names it in messages).
    pub fn parse(path: &Path, text: &str) -> Result<RouterConfig, ConfigError> {
        let raw: RawConfig = config::parse(path, text, ENV_PREFIX)?;
        Self::from_raw(path, raw)
    }

    /// Arm weights in config order.
    pub fn weights(&self) -> Vec<f64> {
        self.arms.iter().map(|a| a.weight).collect()
    }

    /// The interval split of the arms (always exists for a validated config).
    pub fn split(&self) -> Split {
        Split::new(&self.weights())
            .unwrap_or_else(|| Split::new(&[1.0]).unwrap_or_else(|| unreachable!()))
    }

    /// Index of the arm called `name`.
    pub fn arm_index(&self, name: &str) -> Option<usize> {
        self.arms.iter().position(|a| a.name == name)
    }

    fn from_raw(path: &Path, raw: RawConfig) -> Result<RouterConfig, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::invalid(path, key, reason);
        let listen: SocketAddr = raw.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!("{:?} is not an address like 0.0.0.0:8080 ({e})", raw.listen),
            )
        })?;
        if raw.experiment.salt.is_empty() {
            return Err(invalid("experiment.salt", "must not be empty".into()));
        }
        if raw.arms.is_empty() {
            return Err(invalid("arms", "at least one arm is required".into()));
        }
        let mut arms: Vec<ArmConfig> = Vec::with_capacity(raw.arms.len());
        for (i, arm) in raw.arms.into_iter().enumerate() {
            if !is_valid_name(&arm.name) {
                return Err(invalid(
                    &format!("arms[{i}].name"),
                    format!(
                        "{:?} must be 1-64 characters of letters, digits and `_`",
                        arm.name
                    ),
                ));
            }
            if arms.iter().any(|a| a.name == arm.name) {
                return Err(invalid(
                    &format!("arms[{i}].name"),
                    format!("duplicate arm name {:?}", arm.name),
                ));
            }
            if !(arm.weight.is_finite() && arm.weight >= 0.0) {
                return Err(invalid(
                    &format!("arms[{i}].weight"),
                    format!("must be a number >= 0, got {}", arm.weight),
                ));
            }
            let urls: Vec<String> = match (arm.url.is_empty(), arm.urls.is_empty()) {
                (false, true) => vec![arm.url.clone()],
                (true, false) => arm.urls.clone(),
                (false, false) => {
                    return Err(invalid(
                        &format!("arms[{i}]"),
                        "give `url` or `urls`, not both".into(),
                    ))
                }
                (true, true) => {
                    return Err(invalid(
                        &format!("arms[{i}].url"),
                        "missing: give `url` (or `urls` for several endpoints)".into(),
                    ))
                }
            };
            let mut authorities = Vec::with_capacity(urls.len());
            let mut scheme = Scheme::HTTP;
            for (j, url) in urls.iter().enumerate() {
                let key = if arm.urls.is_empty() {
                    format!("arms[{i}].url")
                } else {
                    format!("arms[{i}].urls[{j}]")
                };
                let (s, a) = parse_base_url(url)
                    .map_err(|reason| invalid(&key, format!("{url:?} {reason}")))?;
                if authorities.contains(&a) {
                    return Err(invalid(&key, format!("{url:?} is listed twice")));
                }
                scheme = s;
                authorities.push(a);
            }
            let urls: Vec<String> = urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect();
            arms.push(ArmConfig {
                url: urls[0].clone(),
                name: arm.name,
                weight: arm.weight,
                scheme,
                authority: authorities[0].clone(),
                urls,
                authorities,
            });
        }
        let total: f64 = arms.iter().map(|a| a.weight).sum();
        if !total.is_finite() {
            return Err(invalid(
                "arms",
                format!("weights add up to {total}; they are relative, use smaller numbers"),
            ));
        }
        if Split::new(&arms.iter().map(|a| a.weight).collect::<Vec<_>>()).is_none() {
            return Err(invalid(
                "arms",
                "every weight is 0; at least one arm must have a positive weight".into(),
            ));
        }
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(invalid(key, "must be at least 1".into()))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let upstream = UpstreamConfig {
            connect_timeout: positive(
                "upstream.connect_timeout_ms",
                raw.upstream.connect_timeout_ms,
            )?,
            request_timeout: positive(
                "upstream.request_timeout_ms",
                raw.upstream.request_timeout_ms,
            )?,
            pool_idle_timeout: positive(
                "upstream.pool_idle_timeout_ms",
                raw.upstream.pool_idle_timeout_ms,
            )?,
            pool_max_idle_per_arm: raw.upstream.pool_max_idle_per_arm,
            resolve_interval: positive(
                "upstream.resolve_interval_ms",
                raw.upstream.resolve_interval_ms,
            )?,
            max_endpoints_per_arm: match raw.upstream.max_endpoints_per_arm {
                0 => {
                    return Err(invalid(
                        "upstream.max_endpoints_per_arm",
                        "must be at least 1".into(),
                    ))
                }
                n => n,
            },
        };
        let health = HealthConfig {
            interval: positive("health.interval_ms", raw.health.interval_ms)?,
            timeout: positive("health.timeout_ms", raw.health.timeout_ms)?,
            unhealthy_threshold: positive(
                "health.unhealthy_threshold",
                u64::from(raw.health.unhealthy_threshold),
            )
            .map(|_| raw.health.unhealthy_threshold)?,
            healthy_threshold: positive(
                "health.healthy_threshold",
                u64::from(raw.health.healthy_threshold),
            )
            .map(|_| raw.health.healthy_threshold)?,
        };
        let shadows = validate_shadows(raw.shadows, &arms, upstream.request_timeout)
            .map_err(|(key, reason)| invalid(&key, reason))?;
        let analysis = AnalysisConfig {
            statistics: raw.experiment.statistics,
            min_samples: raw.experiment.min_samples,
            user_sample_cap: raw.experiment.user_sample_cap,
            audit_log: audit_log_path(path, &raw.experiment.audit_log),
            cluster: cluster::validate_cluster(
                &raw.experiment.prometheus_url,
                raw.experiment.cluster_interval_ms,
                raw.experiment.statistics,
            )
            .map_err(|(key, reason)| invalid(&key, reason))?,
        };
        if analysis.min_samples == 0 {
            return Err(invalid(
                "experiment.min_samples",
                "must be at least 1".into(),
            ));
        }
        if analysis.user_sample_cap == 0 {
            return Err(invalid(
                "experiment.user_sample_cap",
                "must be at least 1".into(),
            ));
        }
        let guardrails = validate_guardrails(path, raw.guardrails, &arms)?;
        let rollout = raw
            .rollout
            .map(|r| rollout::validate_rollout(r, &arms, &guardrails, analysis.min_samples))
            .transpose()
            .map_err(|(key, reason)| invalid(&key, reason))?;
        let admin =
            rollout::validate_admin(raw.admin).map_err(|(key, reason)| invalid(&key, reason))?;
        if raw.body_limit_bytes == 0 {
            return Err(invalid("body_limit_bytes", "must be at least 1".into()));
        }
        if raw.max_concurrent_requests == 0 {
            return Err(invalid(
                "max_concurrent_requests",
                "must be at least 1".into(),
            ));
        }
        Ok(RouterConfig {
            path: path.to_path_buf(),
            listen,
            failover: raw.failover,
            body_limit_bytes: raw.body_limit_bytes,
            max_concurrent_requests: raw.max_concurrent_requests,
            shutdown_grace: Duration::from_millis(raw.shutdown_grace_ms),
            workers: if raw.workers == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                raw.workers
            },
            experiment: raw.experiment.name,
            salt: raw.experiment.salt,
            arms,
            upstream,
            health,
            override_: OverrideConfig {
                enabled: raw.override_.enabled,
                token: (!raw.override_.token.is_empty()).then_some(raw.override_.token),
            },
            client: ClientConfig {
                header_timeout: positive("client.header_timeout_ms", raw.client.header_timeout_ms)?,
                body_timeout: positive("client.body_timeout_ms", raw.client.body_timeout_ms)?,
                send_timeout: positive("client.send_timeout_ms", raw.client.send_timeout_ms)?,
                // 0 turns lingering off.
                linger: Duration::from_millis(raw.client.linger_ms),
            },
            reload: ReloadConfig {
                poll_interval: positive("reload.poll_interval_ms", raw.reload.poll_interval_ms)?,
            },
            analysis,
            guardrails,
            shadows,
            rollout,
            admin,
        })
    }
}

/// Validates `[[shadows]]` against the arms; errors are (key path, reason).
fn validate_shadows(
    raw: Vec<RawShadow>,
    arms: &[ArmConfig],
    request_timeout: Duration,
) -> Result<Vec<ShadowConfig>, (String, String)> {
    let mut shadows: Vec<ShadowConfig> = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("shadows[{i}].{field}");
        if !is_valid_name(&s.name) {
            return Err((
                key("name"),
                format!(
                    "{:?} must be 1-64 characters of letters, digits and `_`",
                    s.name
                ),
            ));
        }
        if shadows.iter().any(|o| o.name == s.name) || arms.iter().any(|a| a.name == s.name) {
            return Err((
                key("name"),
                format!("{:?} is already the name of an arm or shadow", s.name),
            ));
        }
        if !arms.iter().any(|a| a.name == s.of) {
            let known: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
            return Err((
                key("of"),
                format!("{:?} is not an arm; arms are {}", s.of, known.join(", ")),
            ));
        }
        if !(s.sample.is_finite() && (0.0..=1.0).contains(&s.sample)) {
            return Err((
                key("sample"),
                format!("must be a share between 0 and 1, got {}", s.sample),
            ));
        }
        if s.max_in_flight == 0 {
            return Err((key("max_in_flight"), "must be at least 1".into()));
        }
        if !(s.tolerance.is_finite() && s.tolerance >= 0.0) {
            return Err((
                key("tolerance"),
                format!("must be a number >= 0, got {}", s.tolerance),
            ));
        }
        let (scheme, authority) = parse_base_url(&s.url)
            .map_err(|reason| (key("url"), format!("{:?} {reason}", s.url)))?;
        let url = s.url.trim_end_matches('/').to_string();
        shadows.push(ShadowConfig {
            upstream: ArmConfig {
                name: s.name.clone(),
                url: url.clone(),
                weight: 0.0,
                scheme,
                authorities: vec![authority.clone()],
                urls: vec![url.clone()],
                authority,
            },
            name: s.name,
            url,
            of: s.of,
            sample: s.sample,
            max_in_flight: s.max_in_flight,
            tolerance: s.tolerance,
            timeout: if s.timeout_ms == 0 {
                request_timeout
            } else {
                Duration::from_millis(s.timeout_ms)
            },
        });
    }
    Ok(shadows)
}

/// `experiment.audit_log` resolved against the config file's directory.
fn audit_log_path(config: &Path, value: &str) -> PathBuf {
    let value = if value.is_empty() {
        "abgate-audit.jsonl"
    } else {
        value
    };
    let given = Path::new(value);
    if given.is_absolute() {
        return given.to_path_buf();
    }
    config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| given.to_path_buf(), |d| d.join(given))
}

/// Validates `[[guardrails]]` against the arms.
fn validate_guardrails(
    path: &Path,
    raw: Vec<RawGuardrail>,
    arms: &[ArmConfig],
) -> Result<Vec<GuardrailConfig>, ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::invalid(path, &key, reason);
    let mut out: Vec<GuardrailConfig> = Vec::with_capacity(raw.len());
    for (i, g) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("guardrails[{i}].{field}");
        if !is_valid_name(&g.name) {
            return Err(invalid(
                key("name"),
                format!(
                    "{:?} must be 1-64 characters of letters, digits and `_`",
                    g.name
                ),
            ));
        }
        if out.iter().any(|o| o.name == g.name) {
            return Err(invalid(
                key("name"),
                format!("duplicate guardrail name {:?}", g.name),
            ));
        }
        let metric: Metric = g
            .metric
            .parse()
            .map_err(|e: abgate_stats::UnknownMetric| invalid(key("metric"), e.to_string()))?;
        match arms.iter().position(|a| a.name == g.arm) {
            None => {
                let known: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
                return Err(invalid(
                    key("arm"),
                    format!("{:?} is not an arm; arms are {}", g.arm, known.join(", ")),
                ));
            }
            Some(0) => {
                return Err(invalid(
                    key("arm"),
                    format!(
                        "{:?} is the control (the first arm); a guardrail watches another arm against it",
                        g.arm
                    ),
                ))
            }
            Some(_) => {}
        }
        if !(g.max_degradation.is_finite() && g.max_degradation >= 0.0) {
            return Err(invalid(
                key("max_degradation"),
                format!(
                    "must be a number >= 0 (in the metric's unit), got {}",
                    g.max_degradation
                ),
            ));
        }
        let action = match g.action.as_str() {
            "rollback" => GuardrailAction::Rollback,
            "alert" => GuardrailAction::Alert,
            other => {
                return Err(invalid(
                    key("action"),
                    format!("{other:?} must be \"rollback\" or \"alert\""),
                ))
            }
        };
        out.push(GuardrailConfig {
            name: g.name,
            metric,
            arm: g.arm,
            max_degradation: g.max_degradation,
            action,
        });
    }
    Ok(out)
}

/// Arm names appear in labels, headers and prediction ids: keep them simple.
pub fn is_valid_name(name: &str) -> bool {
    abgate_common::config::is_valid_arm_name(name)
}

fn parse_base_url(url: &str) -> Result<(Scheme, Authority), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("is not a URL like http://127.0.0.1:6001 ({e})"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or("has no scheme; use http://host:port")?;
    if scheme != Scheme::HTTP {
        return Err("must use http:// (arms are reached over plain HTTP/1.1)".into());
    }
    let authority = uri.authority().cloned().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must be a base URL without a path or query".into());
    }
    Ok((scheme, authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const VALID: &str = r#"
listen = "127.0.0.1:8080"
failover = true

[experiment]
name = "wine"
salt = "wine-2026-11"

[[arms]]
name = "best_model"
url = "http://127.0.0.1:6001"
weight = 90

[[arms]]
name = "candidate_model"
url = "http://127.0.0.1:6002/"
weight = 10

[override]
enabled = true
token = "s3cret"
"#;

    fn parse(text: &str) -> Result<RouterConfig, String> {
        RouterConfig::parse(Path::new("router.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_valid_fixture_loads_with_defaults() {
        let c = parse(VALID).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.arms.len(), 2);
        assert_eq!(c.arms[1].url, "http://127.0.0.1:6002");
        assert_eq!(c.arms[1].authority.as_str(), "127.0.0.1:6002");
        assert!((c.split().shares()[1] - 0.1).abs() < 1e-12);
        assert_eq!(c.health.interval, Duration::from_secs(1));
        assert_eq!(c.override_.token.as_deref(), Some("s3cret"));
        assert_eq!(c.body_limit_bytes, 1024 * 1024);
    }

    fn replace(from: &str, to: &str) -> String {
        assert!(VALID.contains(from), "fixture lacks {from}");
        VALID.replacen(from, to, 1)
    }

    #[test]
    fn an_unknown_key_is_rejected_with_its_path() {
        let err = parse(&replace("failover = true", "failovr = true")).unwrap_err();
        assert!(err.contains("unknown field: found `failovr`"), "{err}");
        let err = parse(&replace("token = \"s3cret\"", "tokn = \"x\"")).unwrap_err();
        assert!(err.contains("key `override.tokn`"), "{err}");
    }

    #[test]
    fn a_duplicate_arm_name_is_rejected() {
        let err = parse(&replace(
            "name = \"candidate_model\"",
            "name = \"best_model\"",
        ))
        .unwrap_err();
        assert_eq!(
            err,
            "router.toml: key `arms[1].name`: duplicate arm name \"best_model\""
        );
    }

    #[test]
    fn a_negative_weight_is_rejected() {
        let err = parse(&replace("weight = 10", "weight = -5")).unwrap_err();
        assert_eq!(
            err,
            "router.toml: key `arms[1].weight`: must be a number >= 0, got -5"
        );
    }

    #[test]
    fn all_zero_weights_are_rejected() {
        let err =
            parse(&replace("weight = 10", "weight = 0").replacen("weight = 90", "weight = 0", 1))
                .unwrap_err();
        assert!(
            err.starts_with("router.toml: key `arms`: every weight is 0"),
            "{err}"
        );
    }

    #[test]
    fn weights_that_overflow_are_rejected() {
        let err = parse(&replace("weight = 10", "weight = 1e308").replacen(
            "weight = 90",
            "weight = 1e308",
            1,
        ))
        .unwrap_err();
        assert!(
            err.starts_with("router.toml: key `arms`: weights add up to inf"),
            "{err}"
        );
    }

    #[test]
    fn bad_urls_are_rejected_with_the_value() {
        for (url, needle) in [
            ("ftp://127.0.0.1:6002", "must use http://"),
            ("127.0.0.1:6002", "has no scheme"),
            ("http://127.0.0.1:6002/predict", "without a path"),
            ("http://user:pw@127.0.0.1:6002", "credentials"),
            ("http://exa mple", "is not a URL"),
        ] {
            let err = parse(&replace("http://127.0.0.1:6002/", url)).unwrap_err();
            assert!(
                err.starts_with("router.toml: key `arms[1].url`"),
                "{url}: {err}"
            );
            assert!(err.contains(needle), "{url}: {err}");
            assert!(err.contains(url), "{url}: {err}");
        }
    }

    #[test]
    fn a_bad_arm_name_is_rejected() {
        let err = parse(&replace(
            "name = \"candidate_model\"",
            "name = \"candidate-model\"",
        ))
        .unwrap_err();
        assert!(err.starts_with("router.toml: key `arms[1].name`"), "{err}");
    }

    #[test]
    fn an_empty_salt_is_rejected() {
        let err = parse(&replace("salt = \"wine-2026-11\"", "salt = \"\"")).unwrap_err();
        assert_eq!(err, "router.toml: key `experiment.salt`: must not be empty");
    }

    #[test]
    fn a_bad_listen_address_is_rejected() {
        let err = parse(&replace("127.0.0.1:8080", "localhost")).unwrap_err();
        assert!(err.starts_with("router.toml: key `listen`"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_rejected() {
        let err = parse(&format!("{VALID}\n[health]\ninterval_ms = 0\n")).unwrap_err();
        assert_eq!(
            err,
            "router.toml: key `health.interval_ms`: must be at least 1"
        );
    }

    #[test]
    fn a_wrong_type_is_rejected_with_its_path() {
        let err = parse(&replace("weight = 10", "weight = \"ten\"")).unwrap_err();
        assert!(err.contains("key `arms.1.weight`"), "{err}");
    }

    const SHADOW: &str = "\n[[shadows]]\nname = \"shadow_model\"\nurl = \"http://127.0.0.1:6003/\"\nof = \"best_model\"\nsample = 0.25\n";

    #[test]
    fn a_shadow_loads_with_its_defaults() {
        let c = parse(&format!("{VALID}{SHADOW}")).unwrap_or_else(|e| panic!("{e}"));
        let s = &c.shadows[0];
        assert_eq!(
            (s.name.as_str(), s.of.as_str()),
            ("shadow_model", "best_model")
        );
        assert_eq!(s.url, "http://127.0.0.1:6003");
        assert_eq!(s.upstream.authority.as_str(), "127.0.0.1:6003");
        assert_eq!(s.max_in_flight, 64);
        assert_eq!(s.timeout, c.upstream.request_timeout);
        assert!((s.sample - 0.25).abs() < 1e-12);
    }

    #[test]
    fn bad_shadows_are_rejected_with_their_key_paths() {
        for (from, to, key) in [
            ("of = \"best_model\"", "of = \"nobody\"", "shadows[0].of"),
            ("sample = 0.25", "sample = 1.5", "shadows[0].sample"),
            (
                "sample = 0.25",
                "sample = 0.25\nmax_in_flight = 0",
                "shadows[0].max_in_flight",
            ),
            (
                "sample = 0.25",
                "sample = 0.25\ntolerance = -1",
                "shadows[0].tolerance",
            ),
            (
                "name = \"shadow_model\"",
                "name = \"best_model\"",
                "shadows[0].name",
            ),
            ("http://127.0.0.1:6003/", "ftp://x", "shadows[0].url"),
        ] {
            let err = parse(&format!("{VALID}{}", SHADOW.replacen(from, to, 1))).unwrap_err();
            assert!(
                err.starts_with(&format!("router.toml: key `{key}`")),
                "{to}: {err}"
            );
        }
        let err = parse(&format!("{VALID}{SHADOW}sampel = 1\n")).unwrap_err();
        assert!(err.contains("sampel"), "{err}");
    }

    const GUARDRAIL: &str = "\n[[guardrails]]\nname = \"candidate_errors\"\nmetric = \"error_rate\"\narm = \"candidate_model\"\nmax_degradation = 0.02\naction = \"rollback\"\n";

    #[test]
    fn experiment_analysis_keys_have_defaults() {
        let c = parse(VALID).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.analysis.min_samples, 100);
        assert_eq!(c.analysis.user_sample_cap, 200_000);
        assert_eq!(c.analysis.audit_log, PathBuf::from("abgate-audit.jsonl"));
        assert!(c.guardrails.is_empty());
        let c = RouterConfig::parse(Path::new("/etc/abgate/router.toml"), VALID)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.analysis.audit_log,
            PathBuf::from("/etc/abgate/abgate-audit.jsonl")
        );
    }

    #[test]
    fn a_guardrail_loads() {
        let text = replace(
            "salt = \"wine-2026-11\"",
            "salt = \"wine-2026-11\"\nmin_samples = 50\nuser_sample_cap = 1000\naudit_log = \"/var/log/audit.jsonl\"",
        );
        let c = parse(&format!("{text}{GUARDRAIL}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.analysis.min_samples, 50);
        assert_eq!(c.analysis.user_sample_cap, 1000);
        assert_eq!(c.analysis.audit_log, PathBuf::from("/var/log/audit.jsonl"));
        let g = &c.guardrails[0];
        assert_eq!(g.name, "candidate_errors");
        assert_eq!(g.metric, Metric::ErrorRate);
        assert_eq!(g.arm, "candidate_model");
        assert_eq!(g.action, GuardrailAction::Rollback);
        assert!((g.max_degradation - 0.02).abs() < 1e-15);
    }

    #[test]
    fn bad_guardrails_are_rejected_with_their_key_paths() {
        for (from, to, key, needle) in [
            (
                "\"error_rate\"",
                "\"p95\"",
                "guardrails[0].metric",
                "unknown metric",
            ),
            (
                "arm = \"candidate_model\"",
                "arm = \"nobody\"",
                "guardrails[0].arm",
                "not an arm",
            ),
            (
                "arm = \"candidate_model\"",
                "arm = \"best_model\"",
                "guardrails[0].arm",
                "control",
            ),
            ("0.02", "-1", "guardrails[0].max_degradation", ">= 0"),
            (
                "\"rollback\"",
                "\"page\"",
                "guardrails[0].action",
                "rollback",
            ),
            (
                "\"candidate_errors\"",
                "\"bad-name\"",
                "guardrails[0].name",
                "letters",
            ),
        ] {
            let err = parse(&format!("{VALID}{}", GUARDRAIL.replacen(from, to, 1))).unwrap_err();
            assert!(
                err.starts_with(&format!("router.toml: key `{key}`")),
                "{to}: {err}"
            );
            assert!(err.contains(needle), "{to}: {err}");
        }
        let err = parse(&format!("{VALID}{GUARDRAIL}{GUARDRAIL}")).unwrap_err();
        assert!(
            err.starts_with("router.toml: key `guardrails[1].name`"),
            "{err}"
        );
        let err = parse(&format!("{VALID}{GUARDRAIL}treshold = 1\n")).unwrap_err();
        assert!(err.contains("treshold"), "{err}");
        let err = parse(&replace(
            "salt = \"wine-2026-11\"",
            "salt = \"s\"\nmin_samples = 0",
        ))
        .unwrap_err();
        assert!(
            err.starts_with("router.toml: key `experiment.min_samples`"),
            "{err}"
        );
    }

    #[test]
    fn no_arms_is_rejected() {
        let text = "listen = \"127.0.0.1:8080\"\narms = []\n[experiment]\nsalt = \"s\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err, "router.toml: key `arms`: at least one arm is required");
    }
}
