//! What a guardrail trip leaves behind: the [`Trip`] record (audited, shown by
//! `/api/experiment`) and how the config file was changed. The trip rule is
//! [`abgate_stats::guardrail::trips`]; carrying a trip out (rollback, audit line) is
//! [`crate::control::guardrails`]'s.

use abgate_stats::Metric;
use serde::{Deserialize, Serialize};

use crate::config::GuardrailAction;

/// How a rollback reached the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChange {
    /// The file was rewritten with the arm's weight at 0.
    Written,
    /// The file was left alone (symlink, write error, or nothing to change); the
    /// change is in memory only.
    InMemoryOnly,
    /// Nothing was changed (an alert, or the weight was already 0).
    None,
}

/// What a trip was decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TripOrigin {
    /// This router's own data (a single node).
    #[default]
    Local,
    /// The cluster's sums, read from Prometheus by this replica (cluster mode).
    Cluster,
    /// Recorded by another replica (or by this one before a restart) and applied
    /// here (cluster mode).
    Replica,
}

/// One trip, as audited and shown by `/api/experiment`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trip {
    /// Unix time of the trip.
    pub time: f64,
    /// Guardrail name.
    pub guardrail: String,
    /// The metric.
    pub metric: Metric,
    /// The arm.
    pub arm: String,
    /// `rollback` or `alert`.
    pub action: GuardrailAction,
    /// The phase it tripped in.
    pub phase: u64,
    /// That phase's content id.
    #[serde(default)]
    pub phase_id: String,
    /// The level of the interval: α over the guardrails that share its action.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Arm − control estimate.
    pub estimate: Option<f64>,
    /// The confidence sequence `[low, high]`.
    pub interval: [Option<f64>; 2],
    /// The allowance it went beyond.
    pub max_degradation: f64,
    /// Observations (the smaller arm's).
    pub n: u64,
    /// Weights before, by arm.
    pub old_weights: Vec<(String, f64)>,
    /// Weights after, by arm.
    pub new_weights: Vec<(String, f64)>,
    /// Config version in force after the trip.
    pub config_version: u64,
    /// How the config file was changed.
    pub file: FileChange,
    /// Why the file was not written, if it was not.
    pub note: Option<String>,
    /// What it was decided on: `local`, `cluster` or `replica`.
    #[serde(default)]
    pub origin: TripOrigin,
}
