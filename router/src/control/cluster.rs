//! Cluster mode carried out (`experiment.prometheus_url`): every
//! `experiment.cluster_interval_ms`, this replica reads the cluster's state for its
//! current phase from Prometheus ([`crate::cluster::read`]) and
//!
//! 1. applies every trip of the phase that any replica recorded (this one before a
//!    restart included: the trip query looks back 30 days), whatever the freshness of
//!    the statistics — a recorded trip is a fact, not a figure;
//! 2. when the statistics are fresh (newest sample at most 3 intervals old), keeps
//!    them as the experiment's source (`/api/experiment` shows the cluster's
//!    comparisons and SRM) and trips guardrails on the cluster's figures — the same
//!    comparison code as a single node, on the summed user-bucket sums. Its trips are
//!    exported (`abgate_guardrail_tripped`) and so reach every other replica at its
//!    next tick;
//! 3. reads the progressive rollout's records (`abgate_rollout_record`, whatever
//!    the freshness of the statistics: like a trip, a replica's step is a fact) and
//!    adopts the one that supersedes the others ([`super::rollout::adopt`]), so
//!    every replica applies the same step;
//! 4. when Prometheus does not answer, or has no fresh samples of the phase, does
//!    nothing else: `abgate_experiment_source_up` 0, the reason in
//!    `/api/experiment`, serving unchanged.
//!
//! [`start`] runs one tick before the router serves, bounded by one interval, so a
//! restarted replica applies a recorded rollback, and the rollout's step, before it
//! answers its first probe.

use abgate_common::client::HttpClient;
use std::sync::Arc;
use std::time::Duration;

use super::guardrails;
use crate::clock::unix_now;
use crate::cluster::{self, ClusterState};
use crate::experiment::TripOrigin;
use crate::rollout::{Position, Seen};
use crate::state::Router;

/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a single node looks whether cluster mode was turned on by a reload.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickOutcome {
    /// Whether the cluster's figures were fresh (and so acted on).
    pub fresh: bool,
    /// Guardrails applied from other replicas' records.
    pub applied: Vec<String>,
    /// Guardrails tripped here on the cluster's figures.
    pub tripped: Vec<String>,
    /// The rollout's record that supersedes the others, as read.
    pub rollout: Option<Position>,
}

/// Before serving: one tick, bounded by one interval (nothing in single-node mode).
pub async fn start(router: &Router) {
    let Some(cluster) = router.active().config.analysis.cluster.clone() else {
        return;
    };
    let client = HttpClient::new(QUERY_TIMEOUT.min(cluster.interval));
    match tokio::time::timeout(cluster.interval, tick(router, &client)).await {
        Ok(outcome) => tracing::info!(
            fresh = outcome.fresh,
            applied = ?outcome.applied,
            tripped = ?outcome.tripped,
            rollout = ?outcome.rollout.as_ref().map(|p| (p.revision, p.state.as_str(), p.step)),
            "cluster state read before serving"
        ),
        Err(_) => {
            router.experiment.source.set_down(
                format!(
                    "Prometheus at {} did not answer within {} ms at start-up",
                    cluster.prometheus_url,
                    cluster.interval.as_millis()
                ),
                None,
                unix_now(),
            );
        }
    }
}

/// Every interval, forever: [`tick`].
pub async fn run(router: Arc<Router>) {
    let client = HttpClient::new(QUERY_TIMEOUT);
    loop {
        let wait = match router.active().config.analysis.cluster.as_ref() {
            Some(c) => c.interval,
            None => IDLE_POLL,
        };
        tokio::time::sleep(wait).await;
        tick(&router, &client).await;
    }
}

/// Why `read` (made at `now`) cannot be acted on, if it cannot.
fn staleness(
    read: &ClusterState,
    phase_id: &str,
    now: f64,
    stale_after: Duration,
) -> Option<String> {
    let Some(freshest) = read.freshest else {
        return Some(format!(
            "Prometheus has no samples of phase {phase_id}: no replica in this phase has been scraped yet, or Prometheus does not scrape the routers"
        ));
    };
    let age = now - freshest;
    (age > stale_after.as_secs_f64()).then(|| {
        format!(
            "the newest sample of phase {phase_id} in Prometheus is {age:.1} s old (stale after {:.1} s): are the routers still scraped?",
            stale_after.as_secs_f64()
        )
    })
}

/// One read of the cluster's state and what follows from it (see the module).
pub async fn tick(router: &Router, client: &HttpClient) -> TickOutcome {
    let mut outcome = TickOutcome::default();
    let active = router.active();
    let Some(cluster) = active.config.analysis.cluster.clone() else {
        router.experiment.source.set_local();
        return outcome;
    };
    let phase = Arc::clone(&active.phase);
    drop(active);
    let read = cluster::read(client, &cluster.prometheus_url, &phase.id).await;
    let now = unix_now();
    let read = match read {
        Ok(read) => read,
        Err(e) => {
            router
                .experiment
                .source
                .set_down(format!("{e}; no action is taken"), None, now);
            return outcome;
        }
    };
    let stale = staleness(&read, &phase.id, now, cluster.stale_after());
    match &stale {
        Some(reason) => router.experiment.source.set_down(
            format!("{reason}; no action is taken"),
            Some(&read),
            now,
        ),
        None => router.experiment.source.set_fresh(&phase.id, &read, now),
    }
    outcome.fresh = stale.is_none();
    // 1. Trips of the phase recorded by any replica.
    for name in &read.tripped {
        let active = router.active();
        if active.phase.id != phase.id {
            break; // an applied rollback started a new phase
        }
        let Some(g) = active.config.guardrails.iter().find(|g| &g.name == name) else {
            continue;
        };
        if !phase.trip_once(name) {
            continue;
        }
        let local = phase.snapshot();
        let comparison = router
            .experiment
            .cluster_cells(&phase, &local)
            .and_then(|cells| router.experiment.guarded(&phase, &cells, &active.config, g));
        router
            .experiment
            .gauges
            .trips
            .with_label_values(&[name])
            .inc();
        let record = guardrails::trip(
            router,
            g,
            comparison.as_ref(),
            phase.number,
            TripOrigin::Replica,
        );
        router.experiment.remember(record);
        outcome.applied.push(name.clone());
    }
    // The rollout's step, as the cluster has it.
    if let Some(id) = super::rollout::id_of(&router.active().config) {
        match cluster::read_rollout(client, &cluster.prometheus_url, &id).await {
            Ok(positions) => {
                outcome.rollout = positions.first().cloned();
                super::rollout::adopt(
                    router,
                    Seen {
                        rollout: id,
                        read_at: now,
                        positions,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rollout's records from Prometheus")
            }
        }
    }
    // 2. Trips on the cluster's figures (fresh ones only).
    let active = router.active();
    if stale.is_some() || active.phase.id != phase.id {
        return outcome;
    }
    let local = phase.snapshot();
    let Some(cells) = router.experiment.cluster_cells(&phase, &local) else {
        return outcome;
    };
    for (g, c) in router.experiment.tripped_in(&phase, &cells, &active.config) {
        let record = guardrails::trip(router, g, Some(&c), phase.number, TripOrigin::Cluster);
        router.experiment.remember(record);
        outcome.tripped.push(g.name.clone());
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_old_samples_are_stale() {
        let read = |freshest| ClusterState {
            freshest,
            ..ClusterState::default()
        };
        let after = Duration::from_secs(15);
        assert!(
            staleness(&read(None), "ab", 100.0, after).is_some_and(|r| r.contains("no samples"))
        );
        assert!(staleness(&read(Some(80.0)), "ab", 100.0, after)
            .is_some_and(|r| r.contains("20.0 s old")));
        assert_eq!(staleness(&read(Some(90.0)), "ab", 100.0, after), None);
    }
}
