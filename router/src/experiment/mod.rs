//! Experiment analysis in the router: is the candidate better or worse than the
//! control, is the split healthy, and should a guardrail roll the candidate back?
//!
//! * [`phase`] — per-arm statistics *by user* of the current **phase** (it starts at
//!   start-up and whenever the salt, the arms or any weight changes, because
//!   comparisons across different splits are biased; its content id `phase_id` is the
//!   same on every replica), recorded by the arm the hash *assigned* (intention to
//!   treat) from [`crate::policy::record_prediction`] /
//!   [`crate::policy::record_feedback`] at the cost of a few additions in the worker's
//!   own cell; figures, SRM and comparisons are computed on read.
//! * [`users`] — the consistent, bounded sample of distinct users per assigned arm.
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
pub mod source;
pub mod srm;
pub mod users;

use abgate_stats::family::bonferroni_alpha;
use abgate_stats::guardrail::beyond_degradation;
use abgate_stats::{Metric, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::unix_now;
use crate::cluster::PhaseExport;
use crate::config::{GuardrailAction, GuardrailConfig, RouterConfig};
pub use gauges::Gauges;
pub use guardrail::{FileChange, Trip, TripOrigin};
pub use phase::{ArmFigures, ComparisonView, FamilyView, Phase, PhaseSummary, Placement};
pub use source::{Source, SourceKind};
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
    /// The comparison it watches, now, at the guardrail's level (`null` when the arm
    /// is not in the phase).
    pub comparison: Option<ComparisonView>,
    /// Guardrails sharing its action (same `action` and `arm`): α is split over them.
    #[serde(default)]
    pub family_size: usize,
    /// The level of its interval, `0.05 / family_size`.
    #[serde(default)]
    pub alpha: Option<f64>,
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
    /// Current phase's content id (hex of a hash of salt, arm names and weights).
    #[serde(default)]
    pub phase_id: String,
    /// The unit of analysis: `user` (every interval treats a user's observations as
    /// correlated; users are hashed into `buckets` buckets).
    #[serde(default)]
    pub unit: String,
    /// User buckets of the analysis.
    #[serde(default)]
    pub buckets: usize,
    /// Bytes the phase's statistics take per arm (every cell; the user sample aside).
    #[serde(default)]
    pub memory_per_arm_bytes: usize,
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
    /// Each arm after the first against the first, for every metric (by user, by
    /// assigned arm).
    pub comparisons: Vec<ComparisonView>,
    /// The one error budget of "some comparison is `worse`".
    #[serde(default)]
    pub family: FamilyView,
    /// Accepted feedback not counted in this phase.
    #[serde(default)]
    pub feedback_outside_phase: phase::OutsideFigure,
    /// Guardrails and their state.
    pub guardrails: Vec<GuardrailView>,
    /// Summaries of the last phases, newest first.
    pub history: Vec<PhaseSummary>,
    /// Where the comparisons, SRM and guardrails come from: `local` (this router's
    /// own state) or `prometheus` (cluster mode: the cluster's sums for the phase).
    #[serde(default)]
    pub source: SourceKind,
    /// Replicas whose state the verdicts come from (1 on a single node; in cluster
    /// mode, those that exported the phase in the last read).
    #[serde(default)]
    pub replicas: usize,
    /// Whether the source's data is fresh enough to act on; when it is not, the
    /// comparisons and SRM shown are this replica's own and no guardrail acts.
    #[serde(default)]
    pub source_up: bool,
    /// Why the source is not up (`null` when it is).
    #[serde(default)]
    pub reason: Option<String>,
    /// Unix time of the newest sample of the last read (cluster mode).
    #[serde(default)]
    pub source_freshest: Option<f64>,
    /// In cluster mode, while the source is up: each arm's distinct users in the
    /// phase as the replica that saw the most counts them (a lower bound on the
    /// cluster's; `arms[].users` stay this replica's, like SRM's counts). Empty on a
    /// single node.
    #[serde(default)]
    pub cluster_users: BTreeMap<String, f64>,
}

/// What outlives a phase.
pub struct Experiment {
    history: Mutex<VecDeque<PhaseSummary>>,
    trips: Mutex<HashMap<String, Trip>>,
    /// The Prometheus families.
    pub gauges: Gauges,
    /// Where verdicts come from (local, or the cluster's state in cluster mode).
    pub source: Source,
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
            source: Source::new(registry)?,
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
            // In cluster mode, the ended phase's figures are the cluster's (its last
            // fresh read), so a rollout's evidence carried across steps is the
            // cluster's on every step, not this replica's share.
            let local = old.snapshot();
            let cells = self.cluster_cells(old, &local).unwrap_or(local);
            let summary = old.summary_of(&cells, previous.analysis.min_samples, Some(now));
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
        self.refresh_from(phase, &phase.snapshot(), config)
    }

    fn refresh_from(
        &self,
        phase: &Phase,
        snapshot: &[phase::ArmCell],
        config: &RouterConfig,
    ) -> PhaseSummary {
        let summary = phase.summary_of(snapshot, config.analysis.min_samples, None);
        let names: Vec<&str> = config.guardrails.iter().map(|g| g.name.as_str()).collect();
        match self.cluster_cells(phase, snapshot) {
            // Cluster mode, fresh: every replica exports the cluster's comparisons
            // (the same figures on every pod); users and SRM stay this replica's.
            Some(cells) => {
                let mut shown = phase.summary_of(&cells, config.analysis.min_samples, None);
                shown.srm = summary.srm.clone();
                shown.arms.clone_from(&summary.arms);
                self.gauges.refresh(&shown, &names);
            }
            None => self.gauges.refresh(&summary, &names),
        }
        summary
    }

    /// One tick's rule: refreshes the gauges, then returns the phase number and the
    /// guardrails of `config` that trip now, each with the comparison beyond its
    /// allowance (at the level of its family: α split over the guardrails that share
    /// its action). A guardrail trips once per phase; each trip is counted here.
    pub fn tripped<'c>(
        &self,
        phase: &Phase,
        config: &'c RouterConfig,
    ) -> (u64, Vec<(&'c GuardrailConfig, ComparisonView)>) {
        let snapshot = phase.snapshot();
        let summary = self.refresh_from(phase, &snapshot, config);
        (summary.phase, self.tripped_in(phase, &snapshot, config))
    }

    /// The guardrails of `config` that trip on `cells` (the phase's own snapshot, or
    /// the cluster's: [`Experiment::cluster_cells`]), each with its comparison; each
    /// trip is marked in the phase (once) and counted.
    pub fn tripped_in<'c>(
        &self,
        phase: &Phase,
        cells: &[phase::ArmCell],
        config: &'c RouterConfig,
    ) -> Vec<(&'c GuardrailConfig, ComparisonView)> {
        let mut tripped = Vec::new();
        for g in &config.guardrails {
            let Some(c) = guarded(phase, cells, config, g) else {
                continue;
            };
            if !beyond(&c, g.max_degradation) || !phase.trip_once(&g.name) {
                continue;
            }
            self.gauges.trips.with_label_values(&[&g.name]).inc();
            tripped.push((g, c));
        }
        tripped
    }

    /// The comparison guardrail `g` watches on `cells`, at its family's level.
    pub fn guarded(
        &self,
        phase: &Phase,
        cells: &[phase::ArmCell],
        config: &RouterConfig,
        g: &GuardrailConfig,
    ) -> Option<ComparisonView> {
        guarded(phase, cells, config, g)
    }

    /// The phase's cells with the cluster's statistics, when the source is the
    /// cluster's, up, and its last read is of this phase (`None` otherwise).
    pub fn cluster_cells(
        &self,
        phase: &Phase,
        local: &[phase::ArmCell],
    ) -> Option<Vec<phase::ArmCell>> {
        let state = self.source.state();
        let figures = state
            .figures
            .filter(|f| state.up && f.phase_id == phase.id)?;
        Some(figures.cells(&phase.variants, local))
    }

    /// What this replica exports for the cluster ([`crate::cluster::Export`]): the
    /// current phase's mergeable statistics and SRM e-value, and the guardrails
    /// tripped in it and in earlier phases (each guardrail's last trip), so a replica
    /// still in an earlier phase learns of a trip there.
    pub fn export(&self, phase: &Phase) -> Vec<PhaseExport> {
        let arms = phase
            .variants
            .iter()
            .cloned()
            .zip(phase.snapshot().into_iter().map(|cell| cell.stats))
            .collect();
        let mut current = PhaseExport {
            phase_id: phase.id.clone(),
            arms,
            weights: phase.weights.clone(),
            users: {
                let (counts, fraction) = phase.users();
                counts
                    .iter()
                    .map(|n| *n as f64 / fraction.max(f64::MIN_POSITIVE))
                    .collect()
            },
            srm_evalue: Some(phase.srm().e_value),
            tripped: Vec::new(),
        };
        let mut earlier = Vec::new();
        for trip in lock(&self.trips).values() {
            if trip.phase_id == phase.id {
                current.tripped.push(trip.guardrail.clone());
            } else if !trip.phase_id.is_empty() {
                earlier.push(PhaseExport {
                    phase_id: trip.phase_id.clone(),
                    tripped: vec![trip.guardrail.clone()],
                    ..PhaseExport::default()
                });
            }
        }
        let mut all = vec![current];
        all.append(&mut earlier);
        all
    }

    /// Keeps `trip` as its guardrail's last, for `/api/experiment`.
    pub fn remember(&self, trip: Trip) {
        lock(&self.trips).insert(trip.guardrail.clone(), trip);
    }

    /// Unix time of the latest trip on `arm` this process carried out (its own or a
    /// replica's it applied), if any.
    pub fn last_trip_on(&self, arm: &str) -> Option<f64> {
        lock(&self.trips)
            .values()
            .filter(|t| t.arm == arm)
            .map(|t| t.time)
            .max_by(f64::total_cmp)
    }

    /// `GET /api/experiment` for config version `version` and its phase.
    pub fn view(&self, phase: &Phase, config: &RouterConfig, version: u64) -> ExperimentView {
        let local = phase.snapshot();
        self.refresh_from(phase, &local, config);
        let source = self.source.state();
        // In cluster mode, while the source is up: the cluster's sums and SRM.
        let figures = source
            .figures
            .as_ref()
            .filter(|f| source.up && f.phase_id == phase.id);
        let snapshot = figures.map_or_else(|| local.clone(), |f| f.cells(&phase.variants, &local));
        let mut summary = phase.summary_of(&snapshot, config.analysis.min_samples, None);
        if let Some(f) = figures {
            summary.srm = f.srm(summary.srm);
        }
        let cluster_users = figures.map(|f| f.users.clone()).unwrap_or_default();
        let trips = lock(&self.trips);
        let guardrails = config
            .guardrails
            .iter()
            .map(|g| {
                let comparison = guarded(phase, &snapshot, config, g);
                let family_size = guardrail_family(config, g);
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
                    family_size,
                    alpha: Some(bonferroni_alpha(summary.family.alpha, family_size)),
                    trips_total: self.gauges.trips.with_label_values(&[&g.name]).get(),
                    last_trip: trips.get(&g.name).cloned(),
                }
            })
            .collect();
        drop(trips);
        ExperimentView {
            experiment: config.experiment.clone(),
            phase: summary.phase,
            phase_id: summary.phase_id,
            unit: "user".to_string(),
            buckets: abgate_stats::BUCKETS,
            memory_per_arm_bytes: phase::ARM_CELL_BYTES * phase::CELLS,
            started_at: summary.started_at,
            config_version: version,
            min_samples: config.analysis.min_samples,
            arms: summary.arms,
            srm: summary.srm,
            comparisons: summary.comparisons,
            family: summary.family,
            feedback_outside_phase: summary.feedback_outside_phase,
            guardrails,
            history: lock(&self.history).iter().cloned().collect(),
            source: source.kind,
            replicas: source.replicas,
            source_up: source.up,
            reason: source.reason,
            source_freshest: source.freshest,
            cluster_users,
        }
    }
}

/// The guardrails of `config` that share `g`'s action (the same `action` on the same
/// `arm`): the family α is split over.
pub fn guardrail_family(config: &RouterConfig, g: &GuardrailConfig) -> usize {
    config
        .guardrails
        .iter()
        .filter(|o| o.action == g.action && o.arm == g.arm)
        .count()
        .max(1)
}

/// The comparison guardrail `g` watches, at its family's level.
fn guarded(
    phase: &Phase,
    snapshot: &[phase::ArmCell],
    config: &RouterConfig,
    g: &GuardrailConfig,
) -> Option<ComparisonView> {
    let arm = phase.variants.iter().position(|v| *v == g.arm)?;
    if arm == 0 {
        return None;
    }
    let mut c = phase.compare_in(
        snapshot,
        arm,
        g.metric,
        config.analysis.min_samples,
        guardrail_family(config, g),
    )?;
    // The guardrail's interval decides: its verdict is the family one.
    c.verdict = c.family_verdict;
    Some(c)
}
