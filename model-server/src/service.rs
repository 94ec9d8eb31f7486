//! The model server's route table: `/predict`, `/feedback`, `/metrics`, `/api/health`
//! and `/api/metrics` are answered here, the Open Inference Protocol under `/v2` is
//! dispatched to [`crate::oip`]. Every rejection is a JSON error counted under its
//! `error_type`. This is the top of the request path: it points down at `oip` and at
//! the shared [`crate::state`], and nothing below points back up at it.

use abgate_common::http::{
    error_response, find_route, json_response, metrics_response, read_body, require_json,
    route_error, Route,
};
use abgate_common::metrics::ArmSummary;
use abgate_common::{ApiError, ErrorKind};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus::Histogram;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

use crate::headers::header_user;
use crate::recent::{variant_of, Claim, Slot};
use crate::state::State;
use crate::validation::{check_actual, parse_feedback};

/// The largest request head served, in bytes (request line and header lines). At
/// least what a router forwards: its own limit (32 KiB) plus the `Host` (≤ ~270
/// bytes), `X-Request-Id` (≤ 146) and `Content-Length` lines it writes in place of the
/// client's; the margin is 4 KiB.
pub const MAX_HEAD_BYTES: usize = 36 * 1024;

/// The most header lines a served request may have. At least what a router forwards:
/// hyper's 100 on its side, plus the three lines it writes.
pub const MAX_HEAD_LINES: usize = 128;

/// hyper reads a head up to this many times [`MAX_HEAD_BYTES`] and
/// [`MAX_HEAD_LINES`]: a head between the limits is refused here, after parsing, with
/// its `X-Request-Id` echoed; one past the read limits is refused unread (by the serve
/// loop, with the same JSON 431).
pub const HEAD_READ_FACTOR: usize = 2;

/// What serves a route.
#[derive(Debug, Clone, Copy)]
enum Target {
    Predict,
    Feedback,
    Metrics,
    Health,
    Summary,
}

const ROUTES: [Route<Target>; 5] = [
    Route {
        path: "/predict",
        method: Method::POST,
        target: Target::Predict,
    },
    Route {
        path: "/feedback",
        method: Method::POST,
        target: Target::Feedback,
    },
    Route {
        path: "/metrics",
        method: Method::GET,
        target: Target::Metrics,
    },
    Route {
        path: "/api/health",
        method: Method::GET,
        target: Target::Health,
    },
    Route {
        path: "/api/metrics",
        method: Method::GET,
        target: Target::Summary,
    },
];

/// Answers one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Err(e) = check_head(&req) {
        state.arm.error(e.kind);
        let mut response = error_response(&e);
        // The body was not read: the connection cannot carry another request.
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let path = req.uri().path();
    if crate::oip::path::is_oip(path) {
        return crate::oip::handle(&state, req).await;
    }
    let route = match find_route(&ROUTES, path, req.method(), "see /api/health") {
        Ok(route) => route,
        Err((err, allow)) => {
            state.arm.error(err.kind);
            return route_error(&err, allow);
        }
    };
    let result = match route.target {
        Target::Predict => return predict(&state, req).await,
        Target::Feedback => feedback(&state, req).await,
        Target::Metrics => return metrics_response(state.metrics.encode()),
        Target::Health => Ok(health(&state)),
        Target::Summary => Ok(json_response(StatusCode::OK, &summary(&state))),
    };
    result.unwrap_or_else(|e| {
        state.arm.error(e.kind);
        error_response(&e)
    })
}

/// Refuses a head over [`MAX_HEAD_BYTES`] or [`MAX_HEAD_LINES`] (as parsed: the
/// request line and each header line, without optional whitespace).
fn check_head<B>(req: &Request<B>) -> Result<(), ApiError> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| {
            a.as_str().len() + uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        });
    let request_line = req.method().as_str().len() + " ".len() + target + " HTTP/1.1\r\n".len();
    let header_lines: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    let bytes = request_line + header_lines + "\r\n".len();
    let lines = req.headers().len();
    if bytes <= MAX_HEAD_BYTES && lines <= MAX_HEAD_LINES {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::HeadersTooLarge,
        format!(
            "the request head has {bytes} bytes in {lines} header lines; the limit is {MAX_HEAD_BYTES} bytes and {MAX_HEAD_LINES} header lines"
        ),
    ))
}

/// A JSON request's body, read under the configured size and time limits.
async fn json_body(state: &State, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    require_json(req.headers())?;
    let (parts, body) = req.into_parts();
    read_body(
        &parts.headers,
        body,
        state.config.body_limit_bytes,
        state.config.body_timeout,
    )
    .await
}

#[derive(Serialize)]
struct SinglePrediction<'a> {
    prediction: f32,
    variant: &'a str,
    model_version: &'a str,
    prediction_id: String,
}

#[derive(Serialize)]
struct BatchPrediction<'a> {
    predictions: Vec<f32>,
    prediction_ids: Vec<String>,
    variant: &'a str,
    model_version: &'a str,
}

async fn predict(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    state.arm.predictions.inc();
    let response = match predict_inner(state, req).await {
        Ok(r) => r,
        Err(e) => {
            state.arm.error(e.kind);
            error_response(&e)
        }
    };
    state.arm.duration.observe(started.elapsed().as_secs_f64());
    response
}

async fn predict_inner(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let header_user = header_user(req.headers());
    // The router passes a client's `X-Variant` on: the arm was forced, not assigned.
    let overridden = req.headers().contains_key(crate::headers::X_VARIANT);
    let body = json_body(state, req).await?;
    let rows = state
        .schema
        .parse_predict(&body, state.config.max_batch_size)?;
    let (count, batch) = (rows.count, rows.batch);
    // The router's sticky key: `X-User-Id`, else the body's `user_id`.
    let user = header_user.or(rows.user_id);
    let out = state.inference.predict(rows.values, count).await?;
    state.rows.inc_by(count as u64);
    let ids = state
        .recent
        .record_request(&out, user.as_deref(), overridden);
    let variant = state.config.variant.as_str();
    let model_version = state.model.spec().version.as_str();
    Ok(if batch {
        json_response(
            StatusCode::OK,
            &BatchPrediction {
                predictions: out,
                prediction_ids: ids,
                variant,
                model_version,
            },
        )
    } else {
        let (Some(&prediction), Some(prediction_id)) = (out.first(), ids.into_iter().next()) else {
            return Err(ApiError::new(
                ErrorKind::Internal,
                "the forward pass returned no prediction",
            ));
        };
        json_response(
            StatusCode::OK,
            &SinglePrediction {
                prediction,
                variant,
                model_version,
                prediction_id,
            },
        )
    })
}

#[derive(Serialize)]
struct FeedbackAck<'a> {
    status: &'static str,
    variant: &'a str,
    prediction_id: String,
    feedback_type: &'static str,
    /// Always `true`: feedback is only taken for a remembered prediction (kept for
    /// clients that read it).
    matched: bool,
    absolute_error: Option<f64>,
    /// Unix time the prediction was made (the router counts the feedback only in the
    /// experiment phase of its prediction).
    predicted_at: f64,
    /// The prediction's user key, when it was made for one (the feedback came from
    /// that user) and the key is UTF-8: the router's intention-to-treat arm.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    /// Whether the prediction's request named its arm with `X-Variant` (an override,
    /// outside the experiment's comparisons).
    overridden: bool,
}

/// `/feedback`: checks the body and `actual` against the label range (400), that the
/// id is this arm's (400) and remembered (404 `unknown_prediction`), then, in one step,
/// that it comes from the prediction's user (403 `feedback_forbidden`) and repeats
/// nothing the prediction already received (409 `duplicate_feedback`). Only then is it
/// counted in `feedback_total` and, with an `actual`, in `prediction_absolute_error`.
async fn feedback(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let header_user = header_user(req.headers());
    let body = json_body(state, req).await?;
    let fb = parse_feedback(&body)?;
    if let Some(actual) = fb.actual {
        check_actual(actual, state.model.spec().label_range)?;
    }
    let variant = state.config.variant.as_str();
    let user = header_user.or(fb.user_id);
    let mut slots = vec![Slot::of(fb.feedback_type)];
    if fb.actual.is_some() {
        slots.push(Slot::Actual);
    }
    let (claim, made) = state
        .recent
        .claim_made(&fb.prediction_id, user.as_deref(), &slots);
    let predicted = match claim {
        Claim::Accepted(p) => p,
        Claim::Foreign => {
            let owner = variant_of(&fb.prediction_id).unwrap_or("");
            return Err(ApiError::new(
                ErrorKind::InvalidInput,
                if !owner.is_empty() && owner != variant && crate::config::is_valid_variant(owner)
                {
                    format!("`prediction_id` was issued by arm `{owner}`, not `{variant}`; send the feedback there")
                } else {
                    format!("`prediction_id` is not an id issued by arm `{variant}` (`{variant}-` and 32 hex digits)")
                },
            ));
        }
        Claim::Unknown => {
            return Err(ApiError::new(
                ErrorKind::UnknownPrediction,
                format!(
                    "`prediction_id` is not among the last {} predictions of arm `{variant}`: never issued, or forgotten",
                    state.config.recent_predictions
                ),
            ))
        }
        Claim::Forbidden => {
            return Err(ApiError::new(
                ErrorKind::FeedbackForbidden,
                "this prediction was made for a user: only feedback with the same `X-User-Id` (or body `user_id`) is taken",
            ))
        }
        Claim::Duplicate(slot) => {
            return Err(ApiError::new(
                ErrorKind::DuplicateFeedback,
                format!(
                    "this prediction already received {}; feedback on a prediction is taken once of each kind",
                    slot.describe()
                ),
            ))
        }
    };
    state.arm.feedback(fb.feedback_type);
    if let Some(r) = fb.rating {
        state.rating.observe(f64::from(r));
    }
    let absolute_error = fb.actual.map(|actual| {
        let e = (f64::from(predicted) - actual).abs();
        state.abs_error.observe(e);
        e
    });
    Ok(json_response(
        StatusCode::OK,
        &FeedbackAck {
            status: "recorded",
            variant,
            feedback_type: fb.feedback_type.as_str(),
            matched: true,
            prediction_id: fb.prediction_id,
            absolute_error,
            predicted_at: made.map_or(0.0, |m| m.predicted_at),
            user_id: made
                .filter(|m| m.for_user)
                .and(user)
                .and_then(|u| String::from_utf8(u).ok()),
            overridden: made.is_some_and(|m| m.overridden),
        },
    ))
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    variant: &'a str,
    model: ModelInfo<'a>,
    uptime_seconds: f64,
    system: SystemInfo,
}

#[derive(Serialize)]
struct ModelInfo<'a> {
    name: &'a str,
    version: &'a str,
    validation_rmse: f64,
}

#[derive(Serialize)]
struct SystemInfo {
    cpu_percent: f64,
    memory_percent: f64,
}

fn health(state: &State) -> Response<Full<Bytes>> {
    state.system.refresh();
    let variant = state.config.variant.as_str();
    let spec = state.model.spec();
    json_response(
        StatusCode::OK,
        &Health {
            status: "healthy",
            variant,
            model: ModelInfo {
                name: &spec.name,
                version: &spec.version,
                validation_rmse: spec.validation.rmse,
            },
            uptime_seconds: state.started.elapsed().as_secs_f64(),
            system: SystemInfo {
                cpu_percent: state
                    .metrics
                    .cpu_percent
                    .with_label_values(&[variant])
                    .get(),
                memory_percent: state
                    .metrics
                    .memory_percent
                    .with_label_values(&[variant])
                    .get(),
            },
        },
    )
}

/// `/api/metrics`: the shared per-arm summary plus what only a model server knows.
#[derive(Serialize)]
pub struct ModelServerSummary {
    /// One entry: this arm.
    pub arms: Vec<ArmDetail>,
}

/// One arm's summary on a model server.
#[derive(Serialize)]
pub struct ArmDetail {
    /// Counts, errors, latency and feedback.
    #[serde(flatten)]
    pub summary: ArmSummary,
    /// Model version served.
    pub model_version: String,
    /// Open Inference Protocol infer requests (`predictions_total{endpoint="infer"}`;
    /// `predictions` counts `/predict`).
    pub infer_requests: u64,
    /// Rows predicted (batches count each row).
    pub rows_predicted: u64,
    /// Mean of the ratings received, if any.
    pub mean_rating: Option<f64>,
    /// Mean |prediction - actual| over feedback with ground truth, if any.
    pub mean_absolute_error: Option<f64>,
}

fn mean(h: &Histogram) -> Option<f64> {
    let n = h.get_sample_count();
    (n > 0).then(|| h.get_sample_sum() / n as f64)
}

fn summary(state: &State) -> ModelServerSummary {
    ModelServerSummary {
        arms: vec![ArmDetail {
            summary: state.arm.summary(),
            model_version: state.model.spec().version.clone(),
            infer_requests: state.infer_requests.get(),
            rows_predicted: state.rows.get(),
            mean_rating: mean(&state.rating),
            mean_absolute_error: mean(&state.abs_error),
        }],
    }
}
