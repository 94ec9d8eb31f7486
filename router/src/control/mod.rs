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
/// then the rollout's decision (and a scheduled step at its moment).
pub async fn run(router: Arc<Router>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        guardrails::tick(&router);
        rollout::tick(&router);
        // A step scheduled before the next tick (cluster mode) takes effect at its
        // moment, so every replica changes its weights together.
        if let Some(wait) = rollout::next_change_in(&router).filter(|w| *w < TICK) {
            tokio::time::sleep(wait + std::time::Duration::from_millis(5)).await;
            rollout::tick(&router);
        }
    }
}
