//! The model server's routes: `/predict`, `/feedback`, `/metrics`, `/api/health`,
//! `/api/metrics`, and the Open Inference Protocol under `/v2` ([`crate::oip`]). Every
//! rejection is a JSON error counted under its `error_type`.

use abgate_common::http::{
    error_response, find_route, json_response, metrics_response, read_body, require_json,
    route_error, Route,
};
use abgate_common::metrics::{ArmMetrics, ArmSummary, Metrics};
use abgate_common::system::SystemSampler;
use abgate_common::{ApiError, ErrorKind};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

use crate::config::ServerConfig;
use crate::error::ModelServerError;
use crate::inference::Inference;
use crate::model::Model;
use crate::recent::{variant_of, Claim, RecentPredictions, Slot};
use crate::validation::{check_actual, parse_feedback, FeatureSchema};

/// Buckets of `prediction_absolute_error` (quality points).
pub const ABS_ERROR_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];

/// `X-Variant`: the arm that answered (set on OIP responses).
pub const X_VARIANT: HeaderName = HeaderName::from_static("x-variant");

/// `X-User-Id`: the user a prediction is made for, forwarded unchanged by the router.
pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

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

/// Everything a request handler needs.
pub struct State {
    /// The validated configuration.
    pub config: ServerConfig,
    /// The loaded model.
    pub model: Arc<Model>,
    /// Shared metric families.
    pub metrics: Metrics,
    /// This arm's pre-resolved series.
    pub arm: ArmMetrics,
    /// CPU and memory gauges.
    pub system: Arc<SystemSampler>,
    pub(crate) inference: Inference,
    schema: FeatureSchema,
    pub(crate) recent: RecentPredictions,
    abs_error: Histogram,
    rating: Histogram,
    pub(crate) rows: IntCounter,
    /// `predictions_total{endpoint="infer", variant}`.
    pub(crate) infer_requests: IntCounter,
    /// The arm's name as an `X-Variant` value.
    pub(crate) variant_header: HeaderValue,
    started: Instant,
}

impl State {
    /// Builds the state, registers the model server's own families and starts the
    /// inference threads.
    pub fn new(config: ServerConfig, model: Arc<Model>) -> Result<Arc<State>, ModelServerError> {
        let metrics = Metrics::new()?;
        let variant = config.variant.as_str();
        let arm = metrics.arm(variant);
        metrics.set_build_info(variant, &model.spec().version);
        let abs_error = HistogramVec::new(
            HistogramOpts::new(
                "prediction_absolute_error",
                "|prediction - actual| from feedback that carries the true quality.",
            )
            .buckets(ABS_ERROR_BUCKETS.to_vec()),
            &["variant"],
        )?;
        let rating = HistogramVec::new(
            HistogramOpts::new("feedback_rating", "Ratings (1-5) received as feedback.")
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0]),
            &["variant"],
        )?;
        let rows = IntCounterVec::new(
            Opts::new(
                "prediction_rows_total",
                "Rows predicted (a batch of N rows counts N).",
            ),
            &["variant"],
        )?;
        metrics.registry.register(Box::new(abs_error.clone()))?;
        metrics.registry.register(Box::new(rating.clone()))?;
        metrics.registry.register(Box::new(rows.clone()))?;
        let system = SystemSampler::new(
            metrics.cpu_percent.with_label_values(&[variant]),
            metrics.memory_percent.with_label_values(&[variant]),
        );
        let inference = Inference::start(
            Arc::clone(&model),
            config.inference_threads,
            config.inference_queue,
            config.inline_rows,
            if config.batch_concurrent_requests {
                config.max_batch_size
            } else {
                0
            },
        )
        .map_err(|e| ModelServerError::Io {
            context: "starting inference threads".into(),
            source: e,
        })?;
        Ok(Arc::new(State {
            schema: FeatureSchema::new(&model.spec().features),
            recent: RecentPredictions::new(variant, config.recent_predictions),
            abs_error: abs_error.with_label_values(&[variant]),
            rating: rating.with_label_values(&[variant]),
            rows: rows.with_label_values(&[variant]),
            infer_requests: metrics
                .predictions
                .with_label_values(&[crate::oip::ENDPOINT_INFER, variant]),
            variant_header: HeaderValue::from_str(variant)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            inference,
            system,
            arm,
            metrics,
            model,
            config,
            started: Instant::now(),
        }))
    }
}

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

/// The request's user key: its first `X-User-Id`, raw bytes (UTF-8 or not), when
/// not empty. The router forwards this header unchanged.
pub(crate) fn header_user(headers: &http::HeaderMap) -> Option<Vec<u8>> {
    headers
        .get(X_USER_ID)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty())
        .map(<[u8]>::to_vec)
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
    let body = json_body(state, req).await?;
    let rows = state
        .schema
        .parse_predict(&body, state.config.max_batch_size)?;
    let (count, batch) = (rows.count, rows.batch);
    // The router's sticky key: `X-User-Id`, else the body's `user_id`.
    let user = header_user.or(rows.user_id);
    let out = state.inference.predict(rows.values, count).await?;
    state.rows.inc_by(count as u64);
    let ids = state.recent.record(&out, user.as_deref());
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
    let predicted = match state.recent.claim(&fb.prediction_id, user.as_deref(), &slots) {
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
