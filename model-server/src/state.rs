//! The state every route shares — configuration, model, metric series, inference
//! threads and recent predictions — and its constructor. It lives apart from the route
//! table ([`crate::service`]) so that both route families, the arm's own routes and the
//! Open Inference Protocol ([`crate::oip`]), can depend on it without depending on each
//! other.

use abgate_common::metrics::{ArmMetrics, Metrics, ENDPOINT_INFER};
use abgate_common::system::SystemSampler;
use http::HeaderValue;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use std::sync::Arc;
use std::time::Instant;

use crate::config::ServerConfig;
use crate::error::ModelServerError;
use crate::inference::Inference;
use crate::model::Model;
use crate::recent::RecentPredictions;
use crate::validation::FeatureSchema;

/// Buckets of `prediction_absolute_error` (quality points).
pub const ABS_ERROR_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];

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
    /// The model's features, for `/predict` bodies.
    pub(crate) schema: FeatureSchema,
    pub(crate) recent: RecentPredictions,
    /// `prediction_absolute_error{variant}`.
    pub(crate) abs_error: Histogram,
    /// `feedback_rating{variant}`.
    pub(crate) rating: Histogram,
    pub(crate) rows: IntCounter,
    /// `predictions_total{endpoint="infer", variant}`.
    pub(crate) infer_requests: IntCounter,
    /// The arm's name as an `X-Variant` value.
    pub(crate) variant_header: HeaderValue,
    /// When the state was built (`/api/health`'s `uptime_seconds`).
    pub(crate) started: Instant,
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
                .with_label_values(&[ENDPOINT_INFER, variant]),
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
