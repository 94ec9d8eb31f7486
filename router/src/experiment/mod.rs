//! Experiment analysis in the router: is the candidate better or worse than the
//! control, is the split healthy, and should a guardrail roll the candidate back?
//!
//! * [`phase`] — per-arm sufficient statistics of the current **phase** (it starts at
//!   start-up and whenever the salt, the arms or any weight changes, because
//!   comparisons across different splits are biased), recorded by
//!   [`crate::policy::record_prediction`] / [`crate::policy::record_feedback`] at the
//!   cost of a few additions under a per-thread shard lock; figures, SRM and
//!   comparisons are computed on read.
//! * [`users`] — the consistent, bounded sample of distinct users per served arm.
//! * [`srm`] — the sample-ratio-mismatch test of the phase.
//! * [`guardrail`] — the record a guardrail trip leaves (carried out by
//!   `control::guardrails`, which also runs the tick).
//! * [`gauges`] — the Prometheus families.
//!
//! [`Experiment`] holds what outlives a phase: the summaries of the last
//! [`HISTORY`] phases, the last trip of each guardrail and the gauges.
//! [`Experiment::tripped`] is the guardrail rule of one tick (the control layer runs
//! the ticks and carries trips out); [`Experiment::view`] is `GET /api/experiment`.
//! Nothing here takes the router: each call gets the phase and config it is about.

pub mod gauges;
pub mod guardrail;
pub mod phase;
pub mod srm;
pub mod users;

use abgate_stats::guardrail::beyond_degradation;
use abgate_stats::{Metric, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::unix_now;
use crate::config::{GuardrailAction, GuardrailConfig, RouterConfig};
pub use gauges::Gauges;
pub use guardrail::{FileChange, Trip};
pub use phase::{ArmFigures, ComparisonView, Phase, PhaseSummary};
pub use srm::SrmView;

/// Phases kept in `history`.
pub const HISTORY: usize = 10;

/// How often gauges are refreshed and guardrails evaluated.
pub const TICK: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A guardrail's state, for `/api/experiment`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuardrailView {
    /// Name.
    pub name: String,
    /// Metric watched.
    pub metric: Metric,
    /// Arm watched.
    pub arm: String,
    /// Allowance, in the metric's unit.
    pub max_degradation: f64,
    /// `rollback` or `alert`.
    pub action: GuardrailAction,
    /// `ok`, `tripped` (in this phase) or `not_enough_data`.
    pub state: String,
    /// The comparison it watches, now (`null` when the arm is not in the phase).
    pub comparison: Option<ComparisonView>,
    /// Trips since start-up.
    pub trips_total: u64,
    /// The last trip, in any phase.
    pub last_trip: Option<Trip>,
}

/// `GET /api/experiment`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExperimentView {
    /// `experiment.name`.
    pub experiment: String,
    /// Current phase number.
    pub phase: u64,
    /// Unix time the phase started.
    pub started_at: f64,
    /// Config version in force.
    pub config_version: u64,
    /// `experiment.min_samples`.
    pub min_samples: u64,
    /// Per-arm figures, config order (the first arm is the control).
    pub arms: Vec<ArmFigures>,
    /// The SRM test.
    pub srm: SrmView,
    /// Each arm after the first against the first, for every metric.
    pub comparisons: Vec<ComparisonView>,
    /// Guardrails and their state.
    pub guardrails: Vec<GuardrailView>,
    /// Summaries of the last phases, newest first.
    pub history: Vec<PhaseSummary>,
}

/// What outlives a phase.
pub struct Experiment {
    history: Mutex<VecDeque<PhaseSummary>>,
    trips: Mutex<HashMap<String, Trip>>,
    /// The Prometheus families.
    pub gauges: Gauges,
}

/// Whether `c` lies beyond `max_degradation` in the worse direction (and has a
/// verdict): the trip rule of [`abgate_stats::guardrail::trips`].
pub fn beyond(c: &ComparisonView, max_degradation: f64) -> bool {
    c.verdict != Verdict::NotEnoughData
        && matches!((c.ci_low, c.ci_high), (Some(low), Some(high))
            if beyond_degradation(c.metric, low, high, max_degradation))
}

impl Experiment {
    /// Empty history; the families are registered in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Ok(Experiment {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            trips: Mutex::new(HashMap::new()),
            gauges: Gauges::new(registry)?,
        })
    }

    /// The phase for `config` applied after phase `old` under `previous` (`None`
    /// before the first config, when `old` is a placeholder): the same one if the
    /// salt, the arms and the weights are unchanged, else a new one (and `old`'s
    /// summary goes into the history).
    pub fn phase_for(
        &self,
        old: &Arc<Phase>,
        previous: Option<&RouterConfig>,
        config: &RouterConfig,
    ) -> Arc<Phase> {
        let names: Vec<&str> = config.arms.iter().map(|a| a.name.as_str()).collect();
        let weights = config.weights();
        if previous.is_some() && old.continues(&config.salt, &names, &weights) {
            return Arc::clone(old);
        }
        let now = unix_now();
        if let Some(previous) = previous {
            let summary = old.summary(previous.analysis.min_samples, Some(now));
            let mut history = lock(&self.history);
            history.push_front(summary);
            history.truncate(HISTORY);
        }
        let number = old.number + 1;
        tracing::info!(phase = number, "experiment phase started");
        Arc::new(Phase::new(
            number,
            now,
            &config.salt,
            names.iter().map(|n| n.to_string()).collect(),
            weights,
            config.analysis.user_sample_cap,
        ))
    }

    /// Refreshes the gauges from the current phase and returns its summary.
    pub fn refresh(&self, phase: &Phase, config: &RouterConfig) -> PhaseSummary {
        let summary = phase.summary(config.analysis.min_samples, None);
        let names: Vec<&str> = config.guardrails.iter().map(|g| g.name.as_str()).collect();
        self.gauges.refresh(&summary, &names);
        summary
    }

    /// One tick's rule: refreshes the gauges, then returns the phase number and the
    /// guardrails of `config` that trip now, each with the comparison beyond its
    /// allowance. A guardrail trips once per phase; each trip is counted here.
    pub fn tripped<'c>(
        &self,
        phase: &Phase,
        config: &'c RouterConfig,
    ) -> (u64, Vec<(&'c GuardrailConfig, ComparisonView)>) {
        let summary = self.refresh(phase, config);
        let mut tripped = Vec::new();
        for g in &config.guardrails {
            let Some(c) = find(&summary, g) else { continue };
            if !beyond(c, g.max_degradation) || !phase.trip_once(&g.name) {
                continue;
            }
            self.gauges.trips.with_label_values(&[&g.name]).inc();
            tripped.push((g, c.clone()));
        }
        (summary.phase, tripped)
    }

    /// Keeps `trip` as its guardrail's last, for `/api/experiment`.
    pub fn remember(&self, trip: Trip) {
        lock(&self.trips).insert(trip.guardrail.clone(), trip);
    }

    /// `GET /api/experiment` for config version `version` and its phase.
    pub fn view(&self, phase: &Phase, config: &RouterConfig, version: u64) -> ExperimentView {
        let summary = self.refresh(phase, config);
        let trips = lock(&self.trips);
        let guardrails = config
            .guardrails
            .iter()
            .map(|g| {
                let comparison = find(&summary, g).cloned();
                let state = if phase.has_tripped(&g.name) {
                    "tripped"
                } else if comparison
                    .as_ref()
                    .is_none_or(|c| c.verdict == Verdict::NotEnoughData)
                {
                    "not_enough_data"
                } else {
                    "ok"
                };
                GuardrailView {
                    name: g.name.clone(),
                    metric: g.metric,
                    arm: g.arm.clone(),
                    max_degradation: g.max_degradation,
                    action: g.action,
                    state: state.to_string(),
                    comparison,
                    trips_total: self.gauges.trips.with_label_values(&[&g.name]).get(),
                    last_trip: trips.get(&g.name).cloned(),
                }
            })
            .collect();
        drop(trips);
        ExperimentView {
            experiment: config.experiment.clone(),
            phase: summary.phase,
            started_at: summary.started_at,
            config_version: version,
            min_samples: config.analysis.min_samples,
            arms: summary.arms,
            srm: summary.srm,
            comparisons: summary.comparisons,
            guardrails,
            history: lock(&self.history).iter().cloned().collect(),
        }
    }
}

fn find<'a>(summary: &'a PhaseSummary, g: &GuardrailConfig) -> Option<&'a ComparisonView> {
    summary
        .comparisons
        .iter()
        .find(|c| c.metric == g.metric && c.variant == g.arm)
}
