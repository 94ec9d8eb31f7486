//! The router's metrics: the contract's families from the client's point of view
//! (labelled by the arm that served), plus what only the router knows: configured
//! weights, arm health, reloads, failovers and how users were assigned.

use abgate_common::metrics::{ArmMetrics, Metrics};
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// `variant` label of errors that happen before an arm is chosen.
pub const UNASSIGNED: &str = "unassigned";
/// `variant` label of the router's own process gauges.
pub const ROUTER: &str = "router";

/// How a user came to an arm (`abgate_assignments_total{source}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Hash of `X-User-Id` or the body's `user_id`.
    Sticky,
    /// No key: a uniformly random position.
    Anonymous,
    /// Forced by `X-Variant`.
    Override,
}

impl Source {
    /// Every source, in a stable order.
    pub const ALL: [Source; 3] = [Source::Sticky, Source::Anonymous, Source::Override];

    /// Label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Sticky => "sticky",
            Source::Anonymous => "anonymous",
            Source::Override => "override",
        }
    }
}

/// Result of a reload (`abgate_config_reloads_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// The new file was applied.
    Success,
    /// The new file was rejected; the old config stays.
    Failure,
}

impl ReloadResult {
    /// Label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

/// All router families.
#[derive(Clone)]
pub struct RouterMetrics {
    /// The contract's families (and the registry).
    pub common: Metrics,
    weight: GaugeVec,
    up: IntGaugeVec,
    reloads: IntCounterVec,
    last_reload: GaugeVec,
    failovers: IntCounterVec,
    mismatched: IntCounterVec,
    assignments: IntCounterVec,
    endpoints: IntGaugeVec,
    /// Errors before an arm is chosen.
    pub unassigned: ArmMetrics,
}

/// Pre-resolved series of one arm on the router.
#[derive(Clone)]
pub struct ArmSeries {
    /// The contract's families for this arm.
    pub common: ArmMetrics,
    /// `abgate_failovers_total{variant}`: this arm's users served elsewhere.
    pub failovers: IntCounter,
    /// `abgate_arm_up{variant}`.
    pub up: IntGauge,
    /// `abgate_arm_weight{variant}`.
    pub weight: Gauge,
    /// `abgate_upstream_mismatched_answers_total{variant}`: answers that carried
    /// another request's `X-Request-Id` (never relayed; the request is re-sent once on
    /// a fresh connection).
    pub mismatched: IntCounter,
    assignments: [IntCounter; 3],
}

impl ArmSeries {
    /// Counts one assignment to this arm.
    pub fn assigned(&self, source: Source) {
        self.assignments[source as usize].inc();
    }
}

impl RouterMetrics {
    /// Creates and registers every family.
    pub fn new() -> Result<Self, prometheus::Error> {
        let common = Metrics::new()?;
        let weight = GaugeVec::new(
            Opts::new(
                "abgate_arm_weight",
                "Configured share of users per arm (normalized weight, 0-1).",
            ),
            &["variant"],
        )?;
        let up = IntGaugeVec::new(
            Opts::new(
                "abgate_arm_up",
                "Whether the router considers the arm healthy (1) or down (0).",
            ),
            &["variant"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("abgate_config_reloads_total", "Config reloads, by result."),
            &["result"],
        )?;
        let last_reload = GaugeVec::new(
            Opts::new(
                "abgate_config_last_reload_timestamp_seconds",
                "Unix time of the last reload, by result.",
            ),
            &["result"],
        )?;
        let failovers = IntCounterVec::new(
            Opts::new(
                "abgate_failovers_total",
                "Requests of an arm's users served by another arm because it was down.",
            ),
            &["variant"],
        )?;
        let mismatched = IntCounterVec::new(
            Opts::new(
                "abgate_upstream_mismatched_answers_total",
                "Arm answers that carried another request's X-Request-Id: never relayed, the request re-sent once on a fresh connection.",
            ),
            &["variant"],
        )?;
        let endpoints = IntGaugeVec::new(
            Opts::new(
                "abgate_arm_endpoints",
                "Endpoints (resolved addresses) of each arm, by state (up, down).",
            ),
            &["variant", "state"],
        )?;
        let assignments = IntCounterVec::new(
            Opts::new(
                "abgate_assignments_total",
                "Users assigned to an arm, by how (sticky hash, anonymous random, override).",
            ),
            &["variant", "source"],
        )?;
        for c in [&reloads] {
            for r in [ReloadResult::Success, ReloadResult::Failure] {
                c.with_label_values(&[r.as_str()]);
            }
        }
        let registry = &common.registry;
        registry.register(Box::new(weight.clone()))?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload.clone()))?;
        registry.register(Box::new(failovers.clone()))?;
        registry.register(Box::new(mismatched.clone()))?;
        registry.register(Box::new(assignments.clone()))?;
        registry.register(Box::new(endpoints.clone()))?;
        common.set_build_info(ROUTER, "");
        let unassigned = common.arm(UNASSIGNED);
        Ok(RouterMetrics {
            common,
            weight,
            up,
            reloads,
            last_reload,
            failovers,
            mismatched,
            assignments,
            endpoints,
            unassigned,
        })
    }

    /// Resolves one arm's series.
    pub fn arm(&self, variant: &str) -> ArmSeries {
        ArmSeries {
            common: self.common.arm(variant),
            failovers: self.failovers.with_label_values(&[variant]),
            mismatched: self.mismatched.with_label_values(&[variant]),
            up: self.up.with_label_values(&[variant]),
            weight: self.weight.with_label_values(&[variant]),
            assignments: Source::ALL
                .map(|s| self.assignments.with_label_values(&[variant, s.as_str()])),
        }
    }

    /// Drops the gauges of an arm removed from the config (its counters stay, as
    /// Prometheus expects of counters).
    pub fn forget_arm(&self, variant: &str) {
        let _ = self.weight.remove_label_values(&[variant]);
        let _ = self.up.remove_label_values(&[variant]);
    }

    /// Sets `abgate_arm_endpoints{variant, state}`.
    pub fn set_endpoints(&self, variant: &str, up: usize, down: usize) {
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.endpoints
            .with_label_values(&[variant, "up"])
            .set(as_gauge(up));
        self.endpoints
            .with_label_values(&[variant, "down"])
            .set(as_gauge(down));
    }

    /// Counts a reload and stamps its time.
    pub fn reload(&self, result: ReloadResult, unix_time: f64) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
        self.last_reload
            .with_label_values(&[result.as_str()])
            .set(unix_time);
    }

    /// Reloads so far with `result`.
    pub fn reloads(&self, result: ReloadResult) -> u64 {
        self.reloads.with_label_values(&[result.as_str()]).get()
    }
}
