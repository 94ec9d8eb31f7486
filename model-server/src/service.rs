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
use crate::recent::{variant_of, IdLookup, RecentPredictions};
use crate::validation::{parse_feedback, FeatureSchema};

/// Buckets of `prediction_absolute_error` (quality points).
pub const ABS_ERROR_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];

/// `X-Variant`: the arm that answered (set on OIP responses).
pub const X_VARIANT: HeaderName = HeaderName::from_static("x-variant");

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
    let body = json_body(state, req).await?;
    let rows = state
        .schema
        .parse_predict(&body, state.config.max_batch_size)?;
    let (count, batch) = (rows.count, rows.batch);
    let out = state.inference.predict(rows.values, count).await?;
    state.rows.inc_by(count as u64);
    let ids = state.recent.record(&out);
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
        json_response(
            StatusCode::OK,
            &SinglePrediction {
                prediction: out.first().copied().unwrap_or(f32::NAN),
                variant,
                model_version,
                prediction_id: ids.into_iter().next().unwrap_or_default(),
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
    /// Whether the prediction was still remembered (needed for `absolute_error`).
    matched: bool,
    absolute_error: Option<f64>,
}

async fn feedback(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = json_body(state, req).await?;
    let fb = parse_feedback(&body)?;
    let variant = state.config.variant.as_str();
    let lookup = state.recent.lookup(&fb.prediction_id);
    if lookup == IdLookup::Foreign {
        let owner = variant_of(&fb.prediction_id).unwrap_or("");
        return Err(ApiError::new(
            ErrorKind::InvalidInput,
            if !owner.is_empty() && owner != variant && crate::config::is_valid_variant(owner) {
                format!("`prediction_id` was issued by arm `{owner}`, not `{variant}`; send the feedback there")
            } else {
                format!("`prediction_id` is not an id issued by arm `{variant}`")
            },
        ));
    }
    state.arm.feedback(fb.feedback_type);
    if let Some(r) = fb.rating {
        state.rating.observe(f64::from(r));
    }
    let absolute_error = match (lookup, fb.actual) {
        (IdLookup::Known(p), Some(actual)) => {
            let e = (f64::from(p) - actual).abs();
            state.abs_error.observe(e);
            Some(e)
        }
        _ => None,
    };
    Ok(json_response(
        StatusCode::OK,
        &FeedbackAck {
            status: "recorded",
            variant,
            feedback_type: fb.feedback_type.as_str(),
            matched: matches!(lookup, IdLookup::Known(_)),
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
