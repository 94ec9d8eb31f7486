//! Arm health: active checks of each arm's `/api/health`, plus passive marking when a
//! request cannot connect. Health survives reloads (it is keyed by arm name and URL),
//! and is exported as `abgate_arm_up{variant}`.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;

use crate::config::HealthConfig;
use crate::state::Router;

/// What the router believes about one arm.
pub struct ArmHealth {
    name: String,
    up: AtomicBool,
    failures: AtomicU32,
    successes: AtomicU32,
    last_error: Mutex<Option<String>>,
    gauge: Mutex<IntGauge>,
}

impl ArmHealth {
    /// A new arm, presumed up until a check or a request says otherwise.
    pub fn new(name: &str, gauge: IntGauge) -> Arc<Self> {
        gauge.set(1);
        Arc::new(ArmHealth {
            name: name.to_string(),
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            last_error: Mutex::new(None),
            gauge: Mutex::new(gauge),
        })
    }

    /// Re-points the gauge (after a reload re-created the arm's series).
    pub fn set_gauge(&self, gauge: IntGauge) {
        gauge.set(i64::from(self.is_up()));
        if let Ok(mut g) = self.gauge.lock() {
            *g = gauge;
        }
    }

    /// Whether the arm takes traffic.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Consecutive failed checks.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The last failure's reason, if the last check failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(arm = %self.name, "arm is up");
            } else {
                tracing::warn!(arm = %self.name, reason = ?self.last_error(), "arm is down");
            }
        }
        if let Ok(g) = self.gauge.lock() {
            g.set(i64::from(up));
        }
    }

    /// Records a check result, flipping the state after the configured thresholds.
    pub fn observe(&self, result: Result<(), String>, config: &HealthConfig) {
        match result {
            Ok(()) => {
                self.failures.store(0, Ordering::Relaxed);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                let ok = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
                if !self.is_up() && ok >= config.healthy_threshold {
                    self.set_up(true);
                }
            }
            Err(reason) => {
                self.successes.store(0, Ordering::Relaxed);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = Some(reason);
                }
                let failed = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if self.is_up() && failed >= config.unhealthy_threshold {
                    self.set_up(false);
                }
            }
        }
    }

    /// A request could not even connect: the arm is down now; active checks will
    /// bring it back.
    pub fn mark_down(&self, reason: String) {
        self.successes.store(0, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(reason);
        }
        self.set_up(false);
    }
}

/// Checks every arm of the active config once, concurrently.
pub async fn check_all(router: &Arc<Router>) {
    let active = router.active();
    let mut checks = JoinSet::new();
    for arm in &active.arms {
        let client = crate::upstream::client_for(&active.config.upstream);
        let url = format!("{}/api/health", arm.config.url);
        let health = Arc::clone(&arm.health);
        let config = active.config.health.clone();
        checks.spawn(async move {
            let request = Request::get(url.as_str())
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string());
            let result = match request {
                Err(e) => Err(e),
                Ok(req) => match tokio::time::timeout(config.timeout, client.request(req)).await {
                    Err(_) => Err(format!(
                        "health check timed out after {} ms",
                        config.timeout.as_millis()
                    )),
                    Ok(Err(e)) => Err(format!("health check failed: {e}")),
                    Ok(Ok(resp)) if resp.status() == StatusCode::OK => Ok(()),
                    Ok(Ok(resp)) => Err(format!("health check answered {}", resp.status())),
                },
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
