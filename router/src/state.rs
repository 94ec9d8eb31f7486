//! The router's shared state: the active configuration (swapped atomically on reload,
//! so a request sees one consistent version from start to end) and what outlives a
//! reload: metrics, arm health, reload status.

use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use abgate_common::system::SystemSampler;

use crate::assignment::Split;
pub use crate::clock::unix_now;
pub use crate::config::config_hash;
use crate::config::{ArmConfig, RouterConfig};
use crate::error::RouterError;
use crate::experiment::{Experiment, Phase};
use crate::health::ArmHealth;
use crate::metrics::{ArmSeries, ReloadResult, RouterMetrics, ROUTER};

/// One arm of the active configuration.
pub struct ActiveArm {
    /// Its configuration.
    pub config: ArmConfig,
    /// Its normalized share of users.
    pub share: f64,
    /// Its health (shared across reloads).
    pub health: Arc<ArmHealth>,
    /// Its pre-resolved series.
    pub series: ArmSeries,
    /// Its name as a header value (`X-Variant`), built once.
    pub header: http::HeaderValue,
}

/// A configuration version in force.
pub struct Active {
    /// The validated config.
    pub config: RouterConfig,
    /// Interval split of the arms.
    pub split: Split,
    /// Weights in config order.
    pub weights: Vec<f64>,
    /// Arms in config order.
    pub arms: Vec<ActiveArm>,
    /// 1 for the config loaded at start, +1 per applied reload.
    pub version: u64,
    /// XXH3 of the file text, hex.
    pub hash: String,
    /// Unix time it was applied.
    pub applied_at: f64,
    /// The experiment phase its requests are recorded in (shared by consecutive
    /// versions with the same salt, arms and weights).
    pub phase: Arc<Phase>,
    /// Shadow arms in config order.
    pub shadows: Vec<crate::shadow::ActiveShadow>,
}

impl Active {
    /// Arm by name.
    pub fn arm(&self, name: &str) -> Option<(usize, &ActiveArm)> {
        self.arms
            .iter()
            .enumerate()
            .find(|(_, a)| a.config.name == name)
    }

    /// Health of each arm, in config order.
    pub fn healthy(&self) -> Vec<bool> {
        self.arms.iter().map(|a| a.health.is_up()).collect()
    }
}

/// The outcome of the last reload attempt, for `/api/config`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// `success`, `failure`, or `null` before any reload.
    pub result: Option<ReloadResult>,
    /// Unix time of the attempt.
    pub at: Option<f64>,
    /// Why it failed (file, key, reason).
    pub error: Option<String>,
}

/// State shared by every request and background task.
pub struct Router {
    active: ArcSwap<Active>,
    /// Metric families.
    pub metrics: RouterMetrics,
    /// The shadow families (registered in the same registry).
    pub shadow_metrics: crate::shadow::ShadowMetrics,
    health: Mutex<HashMap<(String, String), Arc<ArmHealth>>>,
    reload_status: Mutex<ReloadStatus>,
    /// CPU and memory gauges (`variant="router"`).
    pub system: Arc<SystemSampler>,
    inflight: AtomicUsize,
    rejected_hash: Mutex<Option<String>>,
    /// Experiment analysis: phase history, guardrail trips, gauges.
    pub experiment: Experiment,
    /// The progressive rollout's state and gauges.
    pub rollout: crate::rollout::Ramp,
    edit: Mutex<()>,
}

/// Held while a request is in flight; releases its slot on drop.
pub struct Admission<'a>(&'a AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Router {
    /// State for `config`, loaded from text whose hash is `hash`.
    pub fn new(config: RouterConfig, hash: String) -> Result<Arc<Router>, RouterError> {
        let metrics = RouterMetrics::new()?;
        let experiment = Experiment::new(&metrics.common.registry)?;
        let shadow_metrics = crate::shadow::ShadowMetrics::new(&metrics.common.registry)?;
        let rollout = crate::rollout::Ramp::new(&metrics.common.registry)?;
        let system = SystemSampler::new(
            metrics.common.cpu_percent.with_label_values(&[ROUTER]),
            metrics.common.memory_percent.with_label_values(&[ROUTER]),
        );
        let router = Router {
            active: ArcSwap::from_pointee(Active {
                split: config.split(),
                weights: Vec::new(),
                arms: Vec::new(),
                config: config.clone(),
                version: 0,
                hash: String::new(),
                applied_at: 0.0,
                phase: Arc::new(Phase::new(0, 0.0, "", Vec::new(), Vec::new(), 1)),
                shadows: Vec::new(),
            }),
            metrics,
            shadow_metrics,
            health: Mutex::new(HashMap::new()),
            reload_status: Mutex::new(ReloadStatus {
                result: None,
                at: None,
                error: None,
            }),
            system,
            inflight: AtomicUsize::new(0),
            rejected_hash: Mutex::new(None),
            experiment,
            rollout,
            edit: Mutex::new(()),
        };
        let statistics = config.analysis.statistics;
        router.apply(config, hash);
        let router = Arc::new(router);
        if statistics {
            // The cluster's export, read at scrape time (nothing on the hot path). A
            // weak reference: the registry lives in the router.
            let weak = Arc::downgrade(&router);
            let export = crate::cluster::Export::new(move || {
                weak.upgrade()
                    .map(|r| r.experiment.export(&r.active().phase))
                    .unwrap_or_default()
            })?;
            router.metrics.common.registry.register(Box::new(export))?;
        }
        Ok(router)
    }

    /// The version in force (a cheap reference-counted snapshot).
    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// Held while the config file is read and applied (reload) or edited and applied
    /// (guardrail rollback), so the two never interleave.
    pub fn edit_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.edit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a request slot, or `None` at the concurrency limit.
    pub fn admit(&self, limit: usize) -> Option<Admission<'_>> {
        let previous = self.inflight.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(&self.inflight);
        (previous < limit).then_some(admission)
    }

    /// Swaps in `config` (already validated). Arms keep their health if their name
    /// and URL are unchanged.
    pub fn apply(&self, config: RouterConfig, hash: String) {
        let previous = self.active.load_full();
        let phase = self.experiment.phase_for(
            &previous.phase,
            (previous.version > 0).then_some(&previous.config),
            &config,
        );
        let split = config.split();
        let shares = split.shares();
        let mut table = match self.health.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        let arms: Vec<ActiveArm> = config
            .arms
            .iter()
            .zip(&shares)
            .map(|(arm, share)| {
                let series = self.metrics.arm(&arm.name);
                series.weight.set(*share);
                let max = config.upstream.max_endpoints_per_arm;
                let health = table
                    .entry((arm.name.clone(), arm.urls.join(" ")))
                    .or_insert_with(|| {
                        let addrs = crate::endpoint::resolve_now(&arm.authorities);
                        let endpoints = crate::endpoint::EndpointSet::new(&addrs, max);
                        ArmHealth::new(&arm.name, series.up.clone(), endpoints)
                    })
                    .clone();
                health.set_gauge(series.up.clone());
                ActiveArm {
                    // Validated names are letters, digits and `_`: always a valid value.
                    header: http::HeaderValue::from_str(&arm.name)
                        .unwrap_or_else(|_| http::HeaderValue::from_static("invalid")),
                    config: arm.clone(),
                    share: *share,
                    health,
                    series,
                }
            })
            .collect();
        table.retain(|(name, urls), _| {
            config
                .arms
                .iter()
                .any(|a| &a.name == name && &a.urls.join(" ") == urls)
        });
        drop(table);
        for old in &previous.arms {
            if config.arm_index(&old.config.name).is_none() {
                self.metrics.forget_arm(&old.config.name);
            }
        }
        let shadows = crate::shadow::build(&self.shadow_metrics, &previous.shadows, &config);
        self.active.store(Arc::new(Active {
            shadows,
            weights: config.weights(),
            split,
            arms,
            version: previous.version + 1,
            hash,
            applied_at: unix_now(),
            phase,
            config,
        }));
    }

    /// Records a reload outcome in metrics and `/api/config`.
    pub fn record_reload(&self, result: ReloadResult, error: Option<String>) {
        let now = unix_now();
        self.metrics.reload(result, now);
        if let Ok(mut status) = self.reload_status.lock() {
            *status = ReloadStatus {
                result: Some(result),
                at: Some(now),
                error,
            };
        }
    }

    /// Remembers the hash of a rejected file so polling reports it once.
    pub fn remember_rejected(&self, hash: String) {
        if let Ok(mut h) = self.rejected_hash.lock() {
            *h = Some(hash);
        }
    }

    /// Whether `hash` is the last rejected file's.
    pub fn was_rejected(&self, hash: &str) -> bool {
        self.rejected_hash
            .lock()
            .map(|h| h.as_deref() == Some(hash))
            .unwrap_or(false)
    }

    /// The last reload outcome.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload_status
            .lock()
            .map(|s| s.clone())
            .unwrap_or(ReloadStatus {
                result: None,
                at: None,
                error: None,
            })
    }
}
