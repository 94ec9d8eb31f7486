//! The forwarding policy, written once for every transport: which arm a request is
//! assigned (key, override, anonymous), which arm serves it (failover), where a failed
//! attempt is retried, which arm gets feedback, what is recorded for every answer,
//! and which router headers it carries. The fast path ([`crate::fastpath`]) and the
//! hyper routes ([`crate::service`]) only move bytes and call these.

use crate::endpoint::{Endpoint as ArmEndpoint, InFlight};
pub use abgate_common::metrics::Endpoint;
use abgate_common::{ApiError, ErrorKind, FeedbackType};
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

use crate::assignment::{pick_among, position, unit_interval};
use crate::error::RouterError;
use crate::headers::{OVERRIDE_TOKEN, USER_ID, VARIANT};
use crate::metrics::Source;
use crate::state::{Active, Router};
use crate::upstream::h1::Tags;

/// Error bodies from arms are read up to this size to learn their `error_type`.
pub const ARM_ERROR_BODY_LIMIT: usize = 64 * 1024;

/// An assignment: the arm and how it was chosen.
#[derive(Debug, Clone, Copy)]
pub struct Assignment {
    /// The assigned arm's index.
    pub arm: usize,
    /// How it was chosen.
    pub source: Source,
    /// The user's position in [0, 1), which failover reuses.
    pub position: f64,
    /// For a sticky user, `XXH3_64(seed 1, key)`: the user's identity in the
    /// experiment's user sample ([`crate::experiment::users`]).
    pub user: Option<u64>,
    /// The route the prediction came by (`predictions_total{endpoint}`); the
    /// transport sets it, assignment does not depend on it.
    pub endpoint: Endpoint,
}

/// The sticky assignment of `key`, or a uniformly random one for an anonymous user.
pub fn assign_key(active: &Active, key: Option<&[u8]>) -> Assignment {
    let (position, source, user) = match key {
        Some(key) => (
            position(&active.config.salt, key),
            Source::Sticky,
            Some(crate::experiment::users::user_hash(key)),
        ),
        None => (
            unit_interval(rand::random::<u64>()),
            Source::Anonymous,
            None,
        ),
    };
    Assignment {
        arm: active.split.pick(position),
        source,
        position,
        user,
        endpoint: Endpoint::Predict,
    }
}

/// The sticky key: `X-User-Id` (its raw bytes, UTF-8 or not), else the body's
/// `user_id` (string, or a number as its decimal text).
pub fn user_key(headers: &HeaderMap, body: &[u8]) -> Option<Vec<u8>> {
    if let Some(v) = headers.get(USER_ID) {
        if !v.as_bytes().is_empty() {
            return Some(v.as_bytes().to_vec());
        }
    }
    body_user_id(&serde_json::from_slice::<Value>(body).ok()?)
}

fn body_user_id(body: &Value) -> Option<Vec<u8>> {
    match body.get("user_id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone().into_bytes()),
        Value::Number(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// The arm an `X-Variant` override asks for, when overrides are on and its token (if
/// one is configured) is right.
pub fn override_arm(active: &Active, headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let settings = &active.config.override_;
    let Some(requested) = headers.get(VARIANT) else {
        return Ok(None);
    };
    if !settings.enabled {
        return Ok(None);
    }
    if let Some(token) = &settings.token {
        let given = headers
            .get(OVERRIDE_TOKEN)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !constant_time_eq(given, token.as_bytes()) {
            return Err(ApiError::new(
                ErrorKind::OverrideForbidden,
                "X-Variant override requires a valid X-Override-Token",
            ));
        }
    }
    let name = requested.to_str().unwrap_or("");
    active
        .arm(name)
        .map(|(i, _)| Some(i))
        .ok_or_else(|| unknown_arm(active, name))
}

fn unknown_arm(active: &Active, name: &str) -> ApiError {
    let known: Vec<&str> = active.arms.iter().map(|a| a.config.name.as_str()).collect();
    let shown: String = name.chars().take(64).collect();
    ApiError::new(
        ErrorKind::UnknownVariant,
        format!("unknown arm {shown:?}; arms are {}", known.join(", ")),
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The arm that will serve: the assigned one if up, else (with failover) a healthy
/// arm chosen by the same position, so failover is sticky too.
pub fn serving_arm(active: &Active, assigned: &Assignment) -> Result<usize, RouterError> {
    let arm = &active.arms[assigned.arm];
    if arm.health.is_up() || assigned.source == Source::Override {
        return Ok(assigned.arm);
    }
    if !active.config.failover {
        return Err(RouterError::NoHealthyArm(format!(
            "arm `{}` is down and failover is off",
            arm.config.name
        )));
    }
    pick_among(&active.weights, &active.healthy(), assigned.position)
        .ok_or_else(|| RouterError::NoHealthyArm("no arm is healthy".into()))
}

/// The arm that answers a metadata request: the user's own arm when it is up, else
/// the first healthy arm in config order.
pub fn metadata_arm(active: &Active, key: Option<&[u8]>) -> Option<usize> {
    let own = key.map(|k| assign_key(active, Some(k)).arm);
    own.filter(|&a| active.arms[a].health.is_up())
        .or_else(|| active.arms.iter().position(|a| a.health.is_up()))
}

/// Where a failed `/predict` attempt on `serving` is tried again, if anywhere.
/// /predict is idempotent: a refused or broken connection gets one retry, on another
/// healthy arm when failover allows, else (broken only) on the same arm over a fresh
/// connection. A refused connection also marks the arm down at once.
fn retry_arm(
    active: &Active,
    serving: usize,
    assigned: &Assignment,
    error: &RouterError,
) -> Option<usize> {
    let refused = match error {
        RouterError::Connect { .. } => true,
        RouterError::Broken { .. } => false,
        _ => return None,
    };
    // The refused endpoint is already marked down (`endpoint_outcome`); another
    // endpoint of the same arm takes the retry while one is up.
    if refused && active.arms[serving].health.endpoints.any_up() {
        return Some(serving);
    }
    match fallback_arm(active, serving, assigned.position) {
        Some(other) if assigned.source != Source::Override => Some(other),
        _ if !refused => Some(serving),
        _ => None,
    }
}

fn fallback_arm(active: &Active, failed: usize, position: f64) -> Option<usize> {
    if !active.config.failover {
        return None;
    }
    let mut eligible = active.healthy();
    eligible[failed] = false;
    pick_among(&active.weights, &eligible, position)
}

/// The endpoint of `arm` an attempt goes to (power of two choices on in-flight
/// requests among healthy endpoints), counted in flight while the guard lives.
///
/// `avoid` is the endpoint the previous attempt failed on: a retry goes elsewhere
/// while another endpoint of the arm is up.
pub fn pick_endpoint(
    active: &Active,
    arm: usize,
    avoid: Option<std::net::SocketAddr>,
) -> Result<(Arc<ArmEndpoint>, InFlight), RouterError> {
    let arm = &active.arms[arm];
    match arm.health.endpoints.pick_avoiding(avoid) {
        Some(endpoint) => {
            let guard = endpoint.start();
            Ok((endpoint, guard))
        }
        None => Err(RouterError::Connect {
            arm: arm.config.name.clone(),
            reason: "no endpoint resolved".into(),
        }),
    }
}

/// Passive health: an endpoint that refused the connection is down at once (and the
/// arm with it when no endpoint is left up).
pub fn endpoint_outcome<T>(
    active: &Active,
    arm: usize,
    endpoint: &ArmEndpoint,
    result: &Result<T, RouterError>,
) {
    if let Err(e @ RouterError::Connect { .. }) = result {
        active.arms[arm]
            .health
            .mark_endpoint_down(endpoint, e.to_string());
    }
}

/// What forwarding a prediction came to.
pub struct Forwarded<T> {
    /// The arm that served (or failed last); `None` when no arm could be tried.
    pub serving: Option<usize>,
    /// The transport's answer, or why there is none.
    pub result: Result<T, RouterError>,
}

/// One transport's way of sending a prediction to an arm.
pub trait Attempt {
    /// What a successful attempt yields.
    type Output;
    /// Sends the request to the arm at index `arm`.
    fn attempt(
        &mut self,
        arm: usize,
    ) -> impl std::future::Future<Output = Result<Self::Output, RouterError>> + Send;
}

/// Forwards a prediction by the policy: counts the assignment, picks the serving arm
/// (failover), runs the transport's attempt on it, and retries once where
/// [`retry_arm`] says. A success served by another arm than the assigned one counts a
/// failover.
pub async fn forward_with_retry<A: Attempt>(
    active: &Active,
    assigned: &Assignment,
    transport: &mut A,
) -> Forwarded<A::Output> {
    active.arms[assigned.arm].series.assigned(assigned.source);
    let mut serving = match serving_arm(active, assigned) {
        Ok(s) => s,
        Err(e) => {
            return Forwarded {
                serving: None,
                result: Err(e),
            }
        }
    };
    let mut retried = false;
    let result = loop {
        match transport.attempt(serving).await {
            Err(e) if !retried => match retry_arm(active, serving, assigned, &e) {
                Some(next) => {
                    retried = true;
                    serving = next;
                }
                None => break Err(e),
            },
            other => break other,
        }
    };
    if serving != assigned.arm && result.is_ok() {
        active.arms[assigned.arm].series.failovers.inc();
    }
    Forwarded {
        serving: Some(serving),
        result,
    }
}

/// The router's headers for an answer: the serving arm, the assigned one when they
/// differ, the request id.
pub fn tags<'a>(
    active: &'a Active,
    serving: Option<usize>,
    assigned: usize,
    request_id: &'a [u8],
    close: bool,
) -> Tags<'a> {
    Tags {
        variant: serving.map(|s| active.arms[s].header.as_bytes()),
        assigned: (serving != Some(assigned)).then(|| active.arms[assigned].header.as_bytes()),
        request_id,
        close,
    }
}

/// How a prediction was answered, for [`record_prediction`].
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// The arm answered with this status; `error` is its closed-set kind if not 2xx.
    Arm {
        /// The arm's status.
        status: StatusCode,
        /// The kind of an error answer.
        error: Option<ErrorKind>,
    },
    /// The router answered with an error of its own (no arm, timeout, broken).
    Router(ErrorKind),
}

/// Records one prediction as the client sees it: in the Prometheus families on the arm
/// that served (or the assigned arm when none could) the count, the error kind and the
/// latency; in the experiment's phase, for a sticky user only, the status (5xx is an
/// error) and the latency under the arm the hash *assigned* (intention to treat), and
/// whether another arm served it (crossover). Overrides and anonymous requests are
/// outside the comparisons and SRM (the phase counts them as `excluded`).
pub fn record_prediction(
    _router: &Router,
    active: &Active,
    assigned: &Assignment,
    serving: Option<usize>,
    answer: Answer,
    started: Instant,
) {
    let arm = serving.unwrap_or(assigned.arm);
    let series = &active.arms[arm].series.common;
    series.count(assigned.endpoint);
    let status = match answer {
        Answer::Arm {
            error: Some(kind),
            status,
        } => {
            series.error(kind);
            status
        }
        Answer::Router(kind) => {
            series.error(kind);
            kind.status()
        }
        Answer::Arm {
            error: None,
            status,
        } => status,
    };
    let elapsed = started.elapsed().as_secs_f64();
    series.duration.observe(elapsed);
    if active.config.analysis.statistics {
        let user = assigned.user.filter(|_| assigned.source == Source::Sticky);
        active
            .phase
            .record_response(assigned.arm, serving, user, status.as_u16(), elapsed);
    }
}

/// The body of the router's own error answer to a request that came by `endpoint`:
/// the API's `{"error": {"type", "message"}}`, or the protocol's `{"error": "..."}`.
pub fn error_body(err: &ApiError, endpoint: Endpoint) -> Vec<u8> {
    match endpoint {
        Endpoint::Predict => err.to_json(),
        Endpoint::Infer => serde_json::json!({ "error": err.message })
            .to_string()
            .into_bytes(),
    }
}

/// Records an error that happened before any arm was chosen (bad request, overload).
pub fn record_unassigned(router: &Router, kind: ErrorKind) {
    router.metrics.unassigned.error(kind);
}

/// Records one feedback request forwarded to `target`, as the arm answered it
/// (`body` is the client's feedback, `reply` the arm's answer): the count, and, when
/// the arm accepted it (2xx), in the experiment's phase the type, the rating and the
/// arm's `absolute_error` (present when the feedback had `actual`).
///
/// The phase counts it only when its prediction was made in this phase (the arm's
/// `predicted_at`; older feedback counts as `late`, feedback without it as `undated`,
/// in `abgate_experiment_feedback_outside_phase_total`), for a sticky user (the arm's
/// `user_id`: the prediction's user, whom the arm checked the feedback came from) and
/// not for an `X-Variant` override (the arm's `overridden`); then under the arm the
/// hash assigned that user (intention to treat), whichever arm served the prediction.
pub fn record_feedback(
    router: &Router,
    active: &Active,
    target: usize,
    answer: Answer,
    body: Option<&Value>,
    reply: Option<&Value>,
) {
    let series = &active.arms[target].series.common;
    match answer {
        Answer::Arm { error: None, .. } => {
            let Some(kind) = body
                .and_then(|v| v.get("feedback_type"))
                .and_then(Value::as_str)
                .and_then(FeedbackType::parse)
            else {
                return;
            };
            series.feedback(kind);
            if !active.config.analysis.statistics {
                return;
            }
            let field = |name: &str| reply.and_then(|v| v.get(name));
            let phase = &active.phase;
            match phase.place_feedback(field("predicted_at").and_then(Value::as_f64)) {
                crate::experiment::Placement::Counted => {}
                crate::experiment::Placement::Late => {
                    router.experiment.gauges.feedback_late.inc();
                    return;
                }
                crate::experiment::Placement::Undated => {
                    router.experiment.gauges.feedback_undated.inc();
                    return;
                }
            }
            let overridden = field("overridden").and_then(Value::as_bool) == Some(true);
            let Some(key) = field("user_id")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty() && !overridden)
            else {
                return;
            };
            let assignment = assign_key(active, Some(key.as_bytes()));
            let Some(user) = assignment.user else {
                return;
            };
            let rating = body.and_then(|v| v.get("rating")).and_then(Value::as_f64);
            let absolute_error = field("absolute_error").and_then(Value::as_f64);
            phase.record_feedback(assignment.arm, user, kind, rating, absolute_error);
        }
        Answer::Arm {
            error: Some(kind), ..
        }
        | Answer::Router(kind) => series.error(kind),
    }
}

/// The closed-set kind of an arm's error response: its body's `error.type` when it is
/// one of ours and at most [`ARM_ERROR_BODY_LIMIT`] long (the fast path reads no more
/// to classify), else a kind by status class.
pub fn arm_error_kind(status: StatusCode, body: &[u8]) -> ErrorKind {
    let body = if body.len() <= ARM_ERROR_BODY_LIMIT {
        body
    } else {
        &[]
    };
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/type")
                .and_then(Value::as_str)
                .and_then(ErrorKind::parse)
        })
        .unwrap_or(if status.is_client_error() {
            ErrorKind::InvalidInput
        } else {
            ErrorKind::UpstreamError
        })
}

/// Feedback goes to the arm that served the prediction: an explicit `variant` field or
/// `X-Variant` header, else the arm encoded in `prediction_id`, else the sticky
/// assignment.
pub fn feedback_target(
    active: &Active,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Result<usize, ApiError> {
    let explicit = body
        .and_then(|b| b.get("variant"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(VARIANT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    if let Some(name) = explicit {
        return active
            .arm(&name)
            .map(|(i, _)| i)
            .ok_or_else(|| unknown_arm(active, &name));
    }
    if let Some(owner) = body
        .and_then(|b| b.get("prediction_id"))
        .and_then(Value::as_str)
        .and_then(abgate_common::feedback::prediction_owner)
        .and_then(|owner| active.arm(owner))
    {
        return Ok(owner.0);
    }
    let key = headers
        .get(USER_ID)
        .map(|v| v.as_bytes())
        .filter(|k| !k.is_empty())
        .map(<[u8]>::to_vec)
        .or_else(|| body.and_then(body_user_id));
    Ok(assign_key(active, key.as_deref()).arm)
}
