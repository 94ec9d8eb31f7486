//! Active health checks and re-resolution: every endpoint of every arm has its
//! `/api/health` asked on a fresh connection every `health.interval_ms` (the endpoint
//! is up when it answers 200); the arm's health ([`crate::health::ArmHealth`]) follows
//! from whether any endpoint answered. Arm host names are resolved again every
//! `upstream.resolve_interval_ms`.

use http::StatusCode;
use std::sync::Arc;
use tokio::task::JoinSet;

use crate::state::Router;
use crate::upstream::{probe, Target};

/// Checks every endpoint of every arm of the active config once, concurrently.
pub async fn check_all(router: &Arc<Router>) {
    let active = router.active();
    let mut arms = JoinSet::new();
    for arm in &active.arms {
        let (arm_config, settings) = (arm.config.clone(), active.config.upstream.clone());
        let health = Arc::clone(&arm.health);
        let config = active.config.health.clone();
        arms.spawn(async move {
            let endpoints = health.endpoints.all();
            let mut checks = JoinSet::new();
            for endpoint in endpoints.iter() {
                let (endpoint, arm_config, settings) =
                    (Arc::clone(endpoint), arm_config.clone(), settings.clone());
                let timeout = config.timeout;
                checks.spawn(async move {
                    let target = Target::endpoint(&arm_config, &endpoint);
                    let host = arm_config.authority.as_str();
                    let result = match probe(target, host, &settings, "/api/health", timeout).await
                    {
                        Ok(StatusCode::OK) => Ok(()),
                        Ok(other) => Err(format!("health check answered {other}")),
                        Err(e) => Err(e),
                    };
                    endpoint.observe(result.clone());
                    result
                });
            }
            let mut outcome = Err("no endpoint resolved".to_string());
            while let Some(done) = checks.join_next().await {
                match done {
                    Ok(Ok(())) => outcome = Ok(()),
                    Ok(Err(e)) if outcome.is_err() => outcome = Err(e),
                    _ => {}
                }
            }
            health.observe(outcome, &config);
        });
    }
    while arms.join_next().await.is_some() {}
    publish_endpoints(router);
}

/// Sets the endpoint gauges of every arm.
fn publish_endpoints(router: &Router) {
    for arm in &router.active().arms {
        let (up, down) = arm.health.endpoints.counts();
        router.metrics.set_endpoints(&arm.config.name, up, down);
    }
}

/// Checks all arms every `health.interval` (re-read from the active config each
/// round, so a reload can change it).
pub async fn run_checks(router: Arc<Router>) {
    loop {
        let interval = router.active().config.health.interval;
        tokio::time::sleep(interval).await;
        check_all(&router).await;
    }
}

/// Resolves every arm's host names again every `upstream.resolve_interval`, keeping
/// the endpoints of addresses that stay.
pub async fn run_resolver(router: Arc<Router>) {
    loop {
        let interval = router.active().config.upstream.resolve_interval;
        tokio::time::sleep(interval).await;
        let active = router.active();
        for arm in &active.arms {
            let addrs = crate::endpoint::resolve(&arm.config.authorities).await;
            arm.health
                .endpoints
                .update(&addrs, active.config.upstream.max_endpoints_per_arm);
        }
        publish_endpoints(&router);
    }
}
