//! The control layer: the only code that changes the live router after start-up
//! (guardrail rollbacks, cluster mode's trips and the progressive rollout here;
//! reloads and health checks beside it). Features below it decide; this layer acts
//! on their decisions.

pub mod cluster;
pub mod guardrails;
pub mod rollout;
#[cfg(test)]
mod rollout_cluster_sim;
#[cfg(test)]
mod rollout_sim;

use std::sync::Arc;

use crate::experiment::TICK;
use crate::state::Router;

/// Every [`TICK`], forever: the guardrails (gauges refreshed, trips carried out),
/// then the rollout's decision.
pub async fn run(router: Arc<Router>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        guardrails::tick(&router);
        rollout::tick(&router);
    }
}
