//! Arm health: what the router believes about each arm, fed by the active checks
//! ([`crate::checker`]) and by requests that cannot connect (passive). Health survives reloads (it is keyed by arm name and URL),
//! and is exported as `abgate_arm_up{variant}`.

use prometheus::IntGauge;

use crate::endpoint::EndpointSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::HealthConfig;

/// What the router believes about one arm.
pub struct ArmHealth {
    /// The arm's endpoints, each with its own health; the arm is up while any is.
    pub endpoints: EndpointSet,
    name: String,
    up: AtomicBool,
    failures: AtomicU32,
    successes: AtomicU32,
    last_error: Mutex<Option<String>>,
    gauge: Mutex<IntGauge>,
}

impl ArmHealth {
    /// A new arm with `endpoints`, presumed up until a check or a request says
    /// otherwise.
    pub fn new(name: &str, gauge: IntGauge, endpoints: EndpointSet) -> Arc<Self> {
        gauge.set(1);
        Arc::new(ArmHealth {
            endpoints,
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

    /// A request could not even connect to one endpoint: that endpoint is down now,
    /// and the arm too when no endpoint is left up; active checks bring them back.
    pub fn mark_endpoint_down(&self, endpoint: &crate::endpoint::Endpoint, reason: String) {
        endpoint.observe(Err(reason.clone()));
        if !self.endpoints.any_up() {
            self.mark_down(reason);
        }
    }

    /// The arm is down now; active checks will bring it back.
    pub fn mark_down(&self, reason: String) {
        self.successes.store(0, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(reason);
        }
        self.set_up(false);
    }
}
