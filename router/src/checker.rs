//! Active health checks: every arm's `/api/health` is asked on a fresh connection
//! every `health.interval_ms`, and the answer feeds [`crate::health::ArmHealth`].

use http::StatusCode;
use std::sync::Arc;
use tokio::task::JoinSet;

use crate::state::Router;

/// Checks every arm of the active config once, concurrently.
pub async fn check_all(router: &Arc<Router>) {
    let active = router.active();
    let mut checks = JoinSet::new();
    for arm in &active.arms {
        let (arm_config, settings) = (arm.config.clone(), active.config.upstream.clone());
        let health = Arc::clone(&arm.health);
        let config = active.config.health.clone();
        checks.spawn(async move {
            let status =
                crate::upstream::probe(&arm_config, &settings, "/api/health", config.timeout).await;
            let result = match status {
                Ok(StatusCode::OK) => Ok(()),
                Ok(other) => Err(format!("health check answered {other}")),
                Err(e) => Err(e),
            };
            health.observe(result, &config);
        });
    }
    while checks.join_next().await.is_some() {}
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
