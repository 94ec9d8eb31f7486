//! `[[guardrails]]`, validated: what a guardrail watches and what its trip does (the
//! trip rule is [`abgate_stats::guardrail`]'s; carrying out a trip is the control layer's).

use abgate_stats::Metric;
use serde::{Deserialize, Serialize};

/// What a tripped guardrail does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailAction {
    /// Set the arm's weight to 0 (in memory and in the file).
    Rollback,
    /// Only log, audit and count.
    Alert,
}

/// One validated `[[guardrails]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailConfig {
    /// Name (the `guardrail` label).
    pub name: String,
    /// The metric watched (closed set).
    pub metric: Metric,
    /// The arm watched (never the control).
    pub arm: String,
    /// Allowed degradation, absolute, in the metric's unit.
    pub max_degradation: f64,
    /// What a trip does.
    pub action: GuardrailAction,
}
