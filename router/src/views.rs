//! The router's JSON views: `/api/health`, `/api/metrics` and `/api/config`, built
//! from the active config and what outlives reloads.

use abgate_common::http::json_response;
use abgate_common::metrics::ArmSummary;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;

use crate::state::{Active, Router};

#[derive(Serialize)]
struct ArmHealthView<'a> {
    status: &'static str,
    url: &'a str,
    share: f64,
    consecutive_failures: u32,
    last_error: Option<String>,
    endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
struct EndpointView {
    address: String,
    status: &'static str,
    in_flight: usize,
    last_error: Option<String>,
}

#[derive(Serialize)]
struct HealthView {
    status: &'static str,
    arms: serde_json::Map<String, Value>,
    config_version: u64,
}

/// `/api/health`: overall status and each arm's; 503 when no arm is up.
pub fn health(router: &Router, active: &Active) -> Response<Full<Bytes>> {
    router.system.refresh();
    let mut arms = serde_json::Map::new();
    let mut up = 0;
    for arm in &active.arms {
        let is_up = arm.health.is_up();
        up += usize::from(is_up);
        let view = ArmHealthView {
            status: if is_up { "up" } else { "down" },
            url: &arm.config.url,
            share: arm.share,
            consecutive_failures: arm.health.consecutive_failures(),
            last_error: arm.health.last_error(),
            endpoints: arm
                .health
                .endpoints
                .all()
                .iter()
                .map(|e| EndpointView {
                    address: e.key.clone(),
                    status: if e.is_up() { "up" } else { "down" },
                    in_flight: e.inflight(),
                    last_error: e.last_error(),
                })
                .collect(),
        };
        arms.insert(
            arm.config.name.clone(),
            serde_json::to_value(view).unwrap_or(Value::Null),
        );
    }
    let (status, code) = match up {
        0 => ("unhealthy", StatusCode::SERVICE_UNAVAILABLE),
        n if n == active.arms.len() => ("healthy", StatusCode::OK),
        _ => ("degraded", StatusCode::OK),
    };
    json_response(
        code,
        &HealthView {
            status,
            arms,
            config_version: active.version,
        },
    )
}

#[derive(Serialize)]
struct RouterArmSummary {
    #[serde(flatten)]
    summary: ArmSummary,
    share: f64,
    up: bool,
    failovers: u64,
}

/// `/api/metrics`: the per-arm summary.
#[derive(Serialize)]
pub struct RouterSummary {
    arms: Vec<RouterArmSummary>,
    unassigned: ArmSummary,
}

/// The per-arm summary of the active config.
pub fn summary(active: &Active, router: &Router) -> RouterSummary {
    RouterSummary {
        arms: active
            .arms
            .iter()
            .map(|a| RouterArmSummary {
                summary: a.series.common.summary(),
                share: a.share,
                up: a.health.is_up(),
                failovers: a.series.failovers.get(),
            })
            .collect(),
        unassigned: router.metrics.unassigned.summary(),
    }
}

#[derive(Serialize)]
struct ArmView<'a> {
    name: &'a str,
    url: &'a str,
    weight: f64,
    share: f64,
}

/// `/api/config`: the config in force and the last reload.
#[derive(Serialize)]
pub struct ConfigView<'a> {
    file: String,
    version: u64,
    hash: &'a str,
    applied_at: f64,
    experiment: &'a str,
    salt: &'a str,
    arms: Vec<ArmView<'a>>,
    failover: bool,
    override_enabled: bool,
    override_token_required: bool,
    analysis: &'a crate::config::AnalysisConfig,
    guardrails: &'a [crate::config::GuardrailConfig],
    shadows: &'a [crate::config::ShadowConfig],
    rollout: Option<&'a crate::config::RolloutConfig>,
    admin_token_configured: bool,
    last_reload: crate::state::ReloadStatus,
}

/// The view of the config in force.
pub fn config_view<'a>(router: &Router, active: &'a Active) -> ConfigView<'a> {
    ConfigView {
        file: active.config.path.display().to_string(),
        version: active.version,
        hash: &active.hash,
        applied_at: active.applied_at,
        experiment: &active.config.experiment,
        salt: &active.config.salt,
        arms: active
            .arms
            .iter()
            .map(|a| ArmView {
                name: &a.config.name,
                url: &a.config.url,
                weight: a.config.weight,
                share: a.share,
            })
            .collect(),
        failover: active.config.failover,
        override_enabled: active.config.override_.enabled,
        override_token_required: active.config.override_.token.is_some(),
        analysis: &active.config.analysis,
        guardrails: &active.config.guardrails,
        shadows: &active.config.shadows,
        rollout: active.config.rollout.as_ref(),
        admin_token_configured: active.config.admin.token.is_some(),
        last_reload: router.reload_status(),
    }
}
