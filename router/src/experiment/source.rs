//! Where the experiment's verdicts come from: this router's own state (`local`, a
//! single node) or, in cluster mode, the cluster's sums for the current phase read
//! from Prometheus (`prometheus`; [`crate::cluster::read`], run by
//! `control::cluster`). The last read is kept here with whether it can be acted on:
//! stale or missing data is kept out (`source_up` 0 and a reason), so nothing — a
//! verdict, a guardrail — ever acts on it.

use abgate_stats::UserArmStats;
use prometheus::{IntGauge, Registry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

use super::phase::ArmCell;
use super::srm::SrmView;
use crate::cluster::ClusterState;

/// `local` or `prometheus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// This router's own state (single node).
    #[default]
    Local,
    /// The cluster's state, read from Prometheus (cluster mode).
    Prometheus,
}

/// The cluster's figures of one phase, fresh when they were read.
#[derive(Debug, Clone)]
pub struct ClusterFigures {
    /// The phase they are about.
    pub phase_id: String,
    /// Each arm's statistics summed over the replicas.
    pub arms: BTreeMap<String, UserArmStats>,
    /// The mean of the replicas' SRM e-values now.
    pub srm_evalue: Option<f64>,
    /// The largest mean e-value read in the phase (the alarm latches).
    pub srm_evalue_max: f64,
    /// Each arm's distinct users on the replica that saw the most (a lower bound).
    pub users: BTreeMap<String, f64>,
}

/// What the source says now (for `/api/experiment` and the gauges).
#[derive(Debug, Clone, Default)]
pub struct SourceState {
    /// Where verdicts come from.
    pub kind: SourceKind,
    /// Whether the data can be acted on (always true for `local`).
    pub up: bool,
    /// Why not, when it cannot.
    pub reason: Option<String>,
    /// Replicas that contributed to the last read.
    pub replicas: usize,
    /// Unix time of the newest sample of the last read.
    pub freshest: Option<f64>,
    /// Unix time of the last read.
    pub read_at: Option<f64>,
    /// The cluster's figures (only while `up`).
    pub figures: Option<ClusterFigures>,
}

/// The source and its gauges.
pub struct Source {
    state: Mutex<SourceState>,
    up: IntGauge,
    replicas: IntGauge,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Source {
    /// A local source (up); the gauges are registered in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let up = IntGauge::new(
            "abgate_experiment_source_up",
            "1 when the experiment's verdicts come from fresh data (always, on a single node; in cluster mode, when Prometheus answered with samples of the current phase newer than 3 intervals), else 0: nothing acts on the data.",
        )?;
        let replicas = IntGauge::new(
            "abgate_experiment_source_replicas",
            "Replicas whose state the experiment's verdicts come from (1 on a single node).",
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(replicas.clone()))?;
        up.set(1);
        replicas.set(1);
        Ok(Source {
            state: Mutex::new(SourceState {
                up: true,
                replicas: 1,
                ..SourceState::default()
            }),
            up,
            replicas,
        })
    }

    /// The state now.
    pub fn state(&self) -> SourceState {
        lock(&self.state).clone()
    }

    /// Single node: verdicts from this router's own state.
    pub fn set_local(&self) {
        let mut s = lock(&self.state);
        if s.kind != SourceKind::Local {
            *s = SourceState {
                up: true,
                replicas: 1,
                ..SourceState::default()
            };
        }
        self.up.set(1);
        self.replicas.set(1);
    }

    /// Cluster mode, and the last read cannot be acted on, for `reason`.
    pub fn set_down(&self, reason: String, read: Option<&ClusterState>, now: f64) {
        let mut s = lock(&self.state);
        // Once per outage (the reason's figures change every tick).
        if s.up || s.kind != SourceKind::Prometheus {
            tracing::warn!(reason = %reason, "cluster source down: no action on its data");
        }
        *s = SourceState {
            kind: SourceKind::Prometheus,
            up: false,
            reason: Some(reason),
            replicas: read.map_or(0, |r| r.replicas),
            freshest: read.and_then(|r| r.freshest),
            read_at: Some(now),
            figures: None,
        };
        self.up.set(0);
        self.replicas
            .set(i64::try_from(s.replicas).unwrap_or(i64::MAX));
    }

    /// Cluster mode, and `read` of phase `phase_id` is fresh.
    pub fn set_fresh(&self, phase_id: &str, read: &ClusterState, now: f64) {
        let mut s = lock(&self.state);
        if !s.up || s.kind != SourceKind::Prometheus {
            tracing::info!(replicas = read.replicas, "cluster source up");
        }
        let previous_max = s
            .figures
            .as_ref()
            .filter(|f| f.phase_id == phase_id)
            .map_or(0.0, |f| f.srm_evalue_max);
        *s = SourceState {
            kind: SourceKind::Prometheus,
            up: true,
            reason: None,
            replicas: read.replicas,
            freshest: read.freshest,
            read_at: Some(now),
            figures: Some(ClusterFigures {
                phase_id: phase_id.to_string(),
                arms: read.arms.clone(),
                srm_evalue: read.srm_evalue,
                srm_evalue_max: previous_max.max(read.srm_evalue.unwrap_or(0.0)),
                users: read.users.clone(),
            }),
        };
        self.up.set(1);
        self.replicas
            .set(i64::try_from(s.replicas).unwrap_or(i64::MAX));
    }
}

impl ClusterFigures {
    /// The phase's cells with the cluster's statistics in place of this replica's
    /// (`variants` in config order; what the cluster does not export — latency
    /// histogram, feedback counts by type, crossover, excluded — stays this
    /// replica's).
    pub fn cells(&self, variants: &[String], local: &[ArmCell]) -> Vec<ArmCell> {
        variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut cell = local.get(i).cloned().unwrap_or_default();
                cell.stats = self.arms.get(v).cloned().unwrap_or_default();
                cell
            })
            .collect()
    }

    /// `srm` with the cluster's test in place of this replica's: the e-value is the
    /// mean of the replicas' (an e-value under any dependence between them), its
    /// anytime p-value `1 / max e` over the phase, and the alarm when it reaches
    /// `1 / threshold`. The counts (`observed`, `expected`, `chi2_p_value`) stay this
    /// replica's sample: distinct users cannot be summed over replicas.
    pub fn srm(&self, mut srm: SrmView) -> SrmView {
        let e = self.srm_evalue.unwrap_or(1.0);
        srm.e_value = e;
        srm.p_value = (1.0 / self.srm_evalue_max.max(e).max(1.0)).min(1.0);
        srm.alarm = srm.p_value <= srm.threshold;
        srm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abgate_stats::Metric;

    fn stats(requests: u64, errors: u64) -> UserArmStats {
        let mut s = UserArmStats::new();
        for i in 0..requests {
            let status = if i < errors { 500 } else { 200 };
            s.record_response((i % 128) as usize, status, 0.01);
        }
        s
    }

    #[test]
    fn the_clusters_cells_replace_only_the_statistics() {
        let figures = ClusterFigures {
            phase_id: "ab".into(),
            arms: [
                ("a".to_string(), stats(300, 3)),
                ("b".to_string(), stats(200, 20)),
            ]
            .into_iter()
            .collect(),
            srm_evalue: Some(2.0),
            srm_evalue_max: 2.0,
            users: BTreeMap::new(),
        };
        let local = vec![
            ArmCell {
                crossed: 7,
                ..ArmCell::default()
            },
            ArmCell::default(),
        ];
        let variants = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let cells = figures.cells(&variants, &local);
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[0].requests(), 300);
        assert_eq!(cells[0].crossed, 7, "this replica's crossover stays");
        assert_eq!(cells[1].stats.sums(Metric::ErrorRate).count(), 200);
        // An arm the cluster has no series of is empty.
        assert_eq!(cells[2].requests(), 0);
    }

    #[test]
    fn the_clusters_srm_latches_on_the_largest_mean_e_value() {
        let base = SrmView {
            p_value: 1.0,
            chi2_p_value: 0.5,
            alarm: false,
            e_value: 1.0,
            threshold: 0.001,
            variants: vec!["a".into(), "b".into()],
            expected: vec![10.0, 10.0],
            observed: vec![11, 9],
        };
        let mut f = ClusterFigures {
            phase_id: "ab".into(),
            arms: BTreeMap::new(),
            srm_evalue: Some(50.0),
            srm_evalue_max: 50.0,
            users: BTreeMap::new(),
        };
        let v = f.srm(base.clone());
        assert!(!v.alarm && (v.p_value - 0.02).abs() < 1e-12 && v.e_value == 50.0);
        assert_eq!(v.observed, vec![11, 9], "counts stay this replica's");
        f.srm_evalue = Some(3.0);
        f.srm_evalue_max = 1000.0;
        let v = f.srm(base.clone());
        assert!(v.alarm && v.e_value == 3.0, "{v:?}");
        f.srm_evalue = None;
        f.srm_evalue_max = 0.0;
        assert_eq!(f.srm(base).p_value, 1.0);
    }

    #[test]
    fn the_source_goes_down_and_up_with_its_gauges() {
        let registry = Registry::new();
        let source = Source::new(&registry).unwrap_or_else(|e| panic!("{e}"));
        assert!(source.state().up && source.state().kind == SourceKind::Local);
        let read = ClusterState {
            replicas: 3,
            freshest: Some(10.0),
            srm_evalue: Some(4.0),
            ..ClusterState::default()
        };
        source.set_fresh("ab", &read, 11.0);
        let s = source.state();
        assert!(s.up && s.kind == SourceKind::Prometheus && s.replicas == 3);
        assert_eq!(s.figures.map(|f| f.srm_evalue_max), Some(4.0));
        assert_eq!((source.up.get(), source.replicas.get()), (1, 3));
        source.set_down("gone".into(), None, 12.0);
        let s = source.state();
        assert!(!s.up && s.figures.is_none() && s.reason.as_deref() == Some("gone"));
        assert_eq!(source.up.get(), 0);
        source.set_local();
        assert!(source.state().up && source.up.get() == 1);
    }
}
