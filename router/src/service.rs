//! The router's routes. `/predict` is assigned, forwarded and answered with the arm's
//! response plus `X-Variant`, `X-Assigned-Variant` and `X-Request-Id`; `/feedback`
//! goes to the arm that served the prediction; the rest report health, metrics and
//! the active config.

use abgate_common::http::{error_response, json_response, metrics_response, read_body};
use abgate_common::metrics::{ArmMetrics, ArmSummary};
use abgate_common::{ApiError, ErrorKind, FeedbackType};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

use crate::assignment::{pick_among, position, unit_interval};
use crate::error::RouterError;
use crate::metrics::Source;
use crate::state::{Active, ActiveArm, Router};
use crate::upstream::{build_request, client_for, send};

/// Body of every router response: its own JSON, or the arm's streamed body.
pub type RouterBody = Either<Full<Bytes>, Incoming>;

/// Sticky key header.
pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");
/// Override request header, and the served arm on responses.
pub const VARIANT: HeaderName = HeaderName::from_static("x-variant");
/// The arm the user was assigned when another arm served.
pub const ASSIGNED_VARIANT: HeaderName = HeaderName::from_static("x-assigned-variant");
/// Request id, propagated or generated.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Secret that must accompany `X-Variant` when configured.
pub const OVERRIDE_TOKEN: HeaderName = HeaderName::from_static("x-override-token");

/// Error bodies from arms are read up to this size to learn their `error_type`.
pub(crate) const ARM_ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Answers one request.
pub async fn handle(router: Arc<Router>, req: Request<Incoming>) -> Response<RouterBody> {
    let active = router.active();
    let request_id = request_id(req.headers());
    let mut response = match router.admit(active.config.max_concurrent_requests) {
        None => {
            let err = RouterError::Overloaded(active.config.max_concurrent_requests).to_api();
            reject_unassigned(&router, &err)
        }
        Some(_slot) => route(&router, &active, req, &request_id).await,
    };
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

fn own(response: Response<Full<Bytes>>) -> Response<RouterBody> {
    response.map(Either::Left)
}

/// Answers and counts an error that happened before any arm was chosen.
fn reject_unassigned(router: &Router, err: &ApiError) -> Response<RouterBody> {
    router.metrics.unassigned.error(err.kind);
    own(error_response(err))
}

/// Sends `body` with `headers` to `arm`, at the client's path and query.
async fn forward(
    active: &Active,
    arm: &ActiveArm,
    uri: &http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Incoming>, RouterError> {
    let request = build_request(
        &arm.config,
        Method::POST,
        uri.path_and_query(),
        headers,
        body,
    )?;
    send(
        &client_for(&active.config.upstream),
        &arm.config,
        request,
        active.config.upstream.request_timeout,
    )
    .await
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID)
        .filter(|v| valid_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// Whether a client's `X-Request-Id` is kept (else a fresh one replaces it).
pub(crate) fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)
}

/// A fresh request id: 32 hex digits from a random per-thread prefix and a counter,
/// so ids are unique without drawing randomness for every request.
pub(crate) fn new_request_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static NEXT: Cell<(u64, u64)> = Cell::new((rand::random(), 0));
    }
    let (prefix, n) = NEXT.with(|c| {
        let (p, n) = c.get();
        c.set((p, n.wrapping_add(1)));
        (p, n)
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, byte) in prefix
        .to_be_bytes()
        .iter()
        .chain(n.to_be_bytes().iter())
        .enumerate()
    {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

const ROUTES: [(&str, Method); 6] = [
    ("/predict", Method::POST),
    ("/feedback", Method::POST),
    ("/metrics", Method::GET),
    ("/api/health", Method::GET),
    ("/api/metrics", Method::GET),
    ("/api/config", Method::GET),
];

async fn route(
    router: &Arc<Router>,
    active: &Arc<Active>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RouterBody> {
    let path = req.uri().path();
    let Some((route, allowed)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        let err = ApiError::new(
            ErrorKind::NotFound,
            format!("no route {path}; try POST /predict"),
        );
        return reject_unassigned(router, &err);
    };
    let method = req.method();
    if method != allowed && !(method == Method::HEAD && allowed == Method::GET) {
        let err = ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("{path} accepts {allowed} only"),
        );
        let mut response = reject_unassigned(router, &err);
        if let Ok(v) = HeaderValue::from_str(allowed.as_str()) {
            response.headers_mut().insert(ALLOW, v);
        }
        return response;
    }
    match *route {
        "/predict" => predict(router, active, req, request_id).await,
        "/feedback" => feedback(router, active, req, request_id).await,
        "/metrics" => own(metrics_response(router.metrics.common.encode())),
        "/api/health" => own(health(router, active)),
        "/api/metrics" => own(json_response(StatusCode::OK, &summary(active, router))),
        _ => own(json_response(StatusCode::OK, &config_view(router, active))),
    }
}

/// The sticky key: `X-User-Id`, else the body's `user_id` (string or number).
fn user_key(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(v) = headers.get(USER_ID) {
        if let Ok(s) = v.to_str() {
            if !s.is_empty() {
                return Some(s.to_string());
            }
        }
    }
    body_user_id(&serde_json::from_slice::<Value>(body).ok()?)
}

fn body_user_id(body: &Value) -> Option<String> {
    match body.get("user_id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An assignment: the arm and how it was chosen.
pub(crate) struct Assignment {
    /// The assigned arm's index.
    pub arm: usize,
    /// How it was chosen.
    pub source: Source,
    /// The user's position in [0, 1), which failover reuses.
    pub position: f64,
}

fn override_arm(active: &Active, headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
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

fn assign(active: &Active, headers: &HeaderMap, body: &[u8]) -> Result<Assignment, ApiError> {
    if let Some(arm) = override_arm(active, headers)? {
        return Ok(Assignment {
            arm,
            source: Source::Override,
            position: 0.0,
        });
    }
    let (position, source) = match user_key(headers, body) {
        Some(key) => (position(&active.config.salt, &key), Source::Sticky),
        None => (unit_interval(rand::random::<u64>()), Source::Anonymous),
    };
    Ok(Assignment {
        arm: active.split.pick(position),
        source,
        position,
    })
}

/// The arm that will serve: the assigned one if up, else (with failover) a healthy
/// arm chosen by the same position, so failover is sticky too.
fn serving_arm(active: &Active, assigned: &Assignment) -> Result<usize, RouterError> {
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

/// Where a failed `/predict` attempt on `serving` is tried again, if anywhere.
/// /predict is idempotent: a refused or broken connection gets one retry, on another
/// healthy arm when failover allows, else (broken only) on the same arm over a fresh
/// connection. A refused connection also marks the arm down at once.
pub(crate) fn retry_arm(
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
    if refused {
        active.arms[serving].health.mark_down(error.to_string());
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

fn with_variant_headers(
    mut response: Response<RouterBody>,
    active: &Active,
    served: Option<usize>,
    assigned: usize,
) -> Response<RouterBody> {
    let headers = response.headers_mut();
    if let Some(served) = served {
        headers.insert(VARIANT, active.arms[served].header.clone());
    }
    if served != Some(assigned) {
        headers.insert(ASSIGNED_VARIANT, active.arms[assigned].header.clone());
    }
    response
}

async fn predict(
    router: &Arc<Router>,
    active: &Arc<Active>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RouterBody> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match read_body(
        &parts.headers,
        body,
        active.config.body_limit_bytes,
        active.config.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return reject_unassigned(router, &e),
    };
    let assigned = match assign(active, &parts.headers, &body) {
        Ok(a) => a,
        Err(e) => {
            return reject_unassigned(router, &e);
        }
    };
    active.arms[assigned.arm].series.assigned(assigned.source);
    let mut serving = match serving_arm(active, &assigned) {
        Ok(s) => s,
        Err(e) => {
            let series = &active.arms[assigned.arm].series.common;
            return finish(series, started, Err(e), active, None, assigned.arm).await;
        }
    };
    let mut headers = parts.headers;
    headers.insert(REQUEST_ID, request_id.clone());
    let mut retried = false;
    let outcome = loop {
        let arm = &active.arms[serving];
        let result = forward(active, arm, &parts.uri, headers.clone(), body.clone()).await;
        match result {
            Err(e) if !retried => match retry_arm(active, serving, &assigned, &e) {
                Some(next) => {
                    retried = true;
                    serving = next;
                }
                None => break Err(e),
            },
            other => break other,
        }
    };
    if serving != assigned.arm && outcome.is_ok() {
        active.arms[assigned.arm].series.failovers.inc();
    }
    let series = &active.arms[serving].series.common;
    finish(
        series,
        started,
        outcome,
        active,
        Some(serving),
        assigned.arm,
    )
    .await
}

/// Counts and shapes the client's response for an upstream outcome.
async fn finish(
    series: &ArmMetrics,
    started: Instant,
    outcome: Result<Response<Incoming>, RouterError>,
    active: &Active,
    served: Option<usize>,
    assigned: usize,
) -> Response<RouterBody> {
    series.predictions.inc();
    let response = match outcome {
        Err(e) => {
            let err = e.to_api();
            series.error(err.kind);
            tracing::debug!(error = %e, "predict failed");
            let served = served.filter(|_| !matches!(e, RouterError::NoHealthyArm(_)));
            let response = own(error_response(&err));
            series.duration.observe(started.elapsed().as_secs_f64());
            return with_variant_headers(response, active, served, assigned);
        }
        Ok(upstream) => relay(series, upstream).await,
    };
    series.duration.observe(started.elapsed().as_secs_f64());
    with_variant_headers(response, active, served, assigned)
}

/// Passes the arm's response through; an error response is read (bounded) so its
/// `error.type` can be counted under the same closed label set.
async fn relay(series: &ArmMetrics, upstream: Response<Incoming>) -> Response<RouterBody> {
    let (mut parts, body) = upstream.into_parts();
    crate::upstream::strip_hop_by_hop(&mut parts.headers);
    if parts.status.is_success() {
        return Response::from_parts(parts, Either::Right(body));
    }
    let bytes = match Limited::new(body, ARM_ERROR_BODY_LIMIT).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    series.error(arm_error_kind(parts.status, &bytes));
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Either::Left(Full::new(bytes)))
}

/// The closed-set kind of an arm's error response: its body's `error.type` when it is
/// one of ours, else a kind by status class.
pub(crate) fn arm_error_kind(status: StatusCode, body: &[u8]) -> ErrorKind {
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

async fn feedback(
    router: &Arc<Router>,
    active: &Arc<Active>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RouterBody> {
    let (parts, body) = req.into_parts();
    let body = match read_body(
        &parts.headers,
        body,
        active.config.body_limit_bytes,
        active.config.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return reject_unassigned(router, &e),
    };
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let target = match feedback_target(active, &parts.headers, parsed.as_ref()) {
        Ok(t) => t,
        Err(e) => {
            return reject_unassigned(router, &e);
        }
    };
    let arm = &active.arms[target];
    let series = &arm.series.common;
    let mut headers = parts.headers;
    headers.insert(REQUEST_ID, request_id.clone());
    let result = forward(active, arm, &parts.uri, headers, body).await;
    let response = match result {
        Err(e) => {
            let err = e.to_api();
            series.error(err.kind);
            own(error_response(&err))
        }
        Ok(upstream) => {
            if upstream.status().is_success() {
                if let Some(kind) = parsed
                    .as_ref()
                    .and_then(|v| v.get("feedback_type"))
                    .and_then(Value::as_str)
                    .and_then(FeedbackType::parse)
                {
                    series.feedback(kind);
                }
            }
            relay(series, upstream).await
        }
    };
    with_variant_headers(response, active, Some(target), target)
}

/// Feedback goes to the arm that served the prediction: an explicit `variant` field or
/// `X-Variant` header, else the arm encoded in `prediction_id`, else the sticky
/// assignment.
fn feedback_target(
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
        .and_then(|id| id.split_once('-'))
        .and_then(|(owner, _)| active.arm(owner))
    {
        return Ok(owner.0);
    }
    let key = headers
        .get(USER_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| body.and_then(body_user_id));
    let position = match key {
        Some(key) => position(&active.config.salt, &key),
        None => unit_interval(rand::random::<u64>()),
    };
    Ok(active.split.pick(position))
}

#[derive(Serialize)]
struct ArmHealthView<'a> {
    status: &'static str,
    url: &'a str,
    share: f64,
    consecutive_failures: u32,
    last_error: Option<String>,
}

#[derive(Serialize)]
struct HealthView {
    status: &'static str,
    arms: serde_json::Map<String, Value>,
    config_version: u64,
}

fn health(router: &Router, active: &Active) -> Response<Full<Bytes>> {
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

#[derive(Serialize)]
struct RouterSummary {
    arms: Vec<RouterArmSummary>,
    unassigned: ArmSummary,
}

fn summary(active: &Active, router: &Router) -> RouterSummary {
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

#[derive(Serialize)]
struct ConfigView<'a> {
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
    last_reload: crate::state::ReloadStatus,
}

fn config_view<'a>(router: &Router, active: &'a Active) -> ConfigView<'a> {
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
        last_reload: router.reload_status(),
    }
}
