//! The metric families of the design contract, shared by router and model server.
//!
//! Names, types and labels are a public contract (dashboards and alerts depend on
//! them). Label values come only from configuration (arm names) and closed enums
//! ([`ErrorKind`], [`FeedbackType`]); request input never becomes a label.

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::{ErrorKind, FeedbackType};

/// Latency buckets in seconds: the seed's 5 ms – 10 s buckets plus sub-millisecond
/// resolution below them, because a Rust arm answers in microseconds.
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The `endpoint` label value of `predictions_total` for `/predict`.
pub const ENDPOINT_PREDICT: &str = "predict";
/// The `endpoint` label value of `predictions_total` for the Open Inference
/// Protocol's `/v2/models/{model}/infer`.
pub const ENDPOINT_INFER: &str = "infer";

/// Which prediction route a request came by (`predictions_total{endpoint}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /predict`.
    Predict,
    /// `POST /v2/models/{model}[/versions/{version}]/infer`.
    Infer,
}

impl Endpoint {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::Predict => ENDPOINT_PREDICT,
            Endpoint::Infer => ENDPOINT_INFER,
        }
    }
}

/// The contract's families, registered in one registry with the process collector.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes; crate-specific families register here too.
    pub registry: Registry,
    /// `predictions_total{endpoint, variant}`.
    pub predictions: IntCounterVec,
    /// `prediction_duration_seconds{variant}`.
    pub duration: HistogramVec,
    /// `prediction_errors_total{variant, error_type}`.
    pub errors: IntCounterVec,
    /// `feedback_total{variant, feedback_type}`.
    pub feedback: IntCounterVec,
    /// `system_cpu_percent{variant}`.
    pub cpu_percent: GaugeVec,
    /// `system_memory_percent{variant}`.
    pub memory_percent: GaugeVec,
    /// `abgate_build_info{variant, version, model_version}`, always 1.
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// Creates the families in a fresh registry (one per server, so in-process tests
    /// can run several servers side by side) and registers the process collector.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let predictions = IntCounterVec::new(
            Opts::new("predictions_total", "Prediction requests handled."),
            &["endpoint", "variant"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "prediction_duration_seconds",
                "Time to answer a prediction request, in seconds.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["variant"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "prediction_errors_total",
                "Rejected or failed requests, by error type.",
            ),
            &["variant", "error_type"],
        )?;
        let feedback = IntCounterVec::new(
            Opts::new("feedback_total", "Feedback received, by feedback type."),
            &["variant", "feedback_type"],
        )?;
        let cpu_percent = GaugeVec::new(
            Opts::new(
                "system_cpu_percent",
                "CPU used by this process, in percent of one core (like top).",
            ),
            &["variant"],
        )?;
        let memory_percent = GaugeVec::new(
            Opts::new(
                "system_memory_percent",
                "Resident memory of this process, in percent of the host's memory.",
            ),
            &["variant"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "abgate_build_info",
                "Build and model version of this process; the value is always 1.",
            ),
            &["variant", "version", "model_version"],
        )?;
        registry.register(Box::new(predictions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(feedback.clone()))?;
        registry.register(Box::new(cpu_percent.clone()))?;
        registry.register(Box::new(memory_percent.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            predictions,
            duration,
            errors,
            feedback,
            cpu_percent,
            memory_percent,
            build_info,
        })
    }

    /// Resolves (and creates at zero) every series of one arm, so the hot path holds
    /// handles instead of looking labels up, and dashboards see zeros, not gaps.
    pub fn arm(&self, variant: &str) -> ArmMetrics {
        ArmMetrics {
            variant: variant.to_string(),
            predictions: self
                .predictions
                .with_label_values(&[ENDPOINT_PREDICT, variant]),
            infers: self
                .predictions
                .with_label_values(&[ENDPOINT_INFER, variant]),
            duration: self.duration.with_label_values(&[variant]),
            errors: ErrorKind::ALL.map(|k| self.errors.with_label_values(&[variant, k.as_str()])),
            feedback: FeedbackType::ALL
                .map(|t| self.feedback.with_label_values(&[variant, t.as_str()])),
        }
    }

    /// Sets `abgate_build_info` for this process.
    pub fn set_build_info(&self, variant: &str, model_version: &str) {
        self.build_info
            .with_label_values(&[variant, crate::VERSION, model_version])
            .set(1);
    }

    /// Encodes every family in the Prometheus text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // The text encoder only fails on a writer error, and Vec never fails.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// Pre-resolved series of one arm.
#[derive(Clone)]
pub struct ArmMetrics {
    variant: String,
    /// `predictions_total{endpoint="predict", variant}`.
    pub predictions: IntCounter,
    /// `predictions_total{endpoint="infer", variant}`.
    pub infers: IntCounter,
    /// `prediction_duration_seconds{variant}`.
    pub duration: Histogram,
    errors: [IntCounter; ErrorKind::ALL.len()],
    feedback: [IntCounter; FeedbackType::ALL.len()],
}

impl ArmMetrics {
    /// The arm's name (the `variant` label).
    pub fn variant(&self) -> &str {
        &self.variant
    }

    /// Counts one prediction request that came by `endpoint`.
    pub fn count(&self, endpoint: Endpoint) {
        match endpoint {
            Endpoint::Predict => self.predictions.inc(),
            Endpoint::Infer => self.infers.inc(),
        }
    }

    /// Counts one rejected or failed request.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Counts one feedback.
    pub fn feedback(&self, kind: FeedbackType) {
        self.feedback[kind as usize].inc();
    }

    /// The JSON summary `/api/metrics` returns for this arm.
    pub fn summary(&self) -> ArmSummary {
        let errors: BTreeMap<&'static str, u64> = ErrorKind::ALL
            .iter()
            .map(|k| (k.as_str(), self.errors[*k as usize].get()))
            .filter(|(_, n)| *n > 0)
            .collect();
        let feedback: BTreeMap<&'static str, u64> = FeedbackType::ALL
            .iter()
            .map(|t| (t.as_str(), self.feedback[*t as usize].get()))
            .collect();
        let latency = LatencySummary::from_histogram(&self.duration);
        ArmSummary {
            variant: self.variant.clone(),
            predictions: self.predictions.get(),
            errors_total: errors.values().sum(),
            errors,
            latency_seconds: latency,
            feedback_total: feedback.values().sum(),
            feedback,
        }
    }
}

/// One arm's counts, errors, latency and feedback, as `/api/metrics` reports them.
#[derive(Debug, Clone, Serialize)]
pub struct ArmSummary {
    /// Arm name.
    pub variant: String,
    /// `predictions_total` for the arm.
    pub predictions: u64,
    /// Sum of `errors`.
    pub errors_total: u64,
    /// Non-zero error counts by type.
    pub errors: BTreeMap<&'static str, u64>,
    /// Latency statistics over the process lifetime.
    pub latency_seconds: LatencySummary,
    /// Sum of `feedback`.
    pub feedback_total: u64,
    /// Feedback counts by type.
    pub feedback: BTreeMap<&'static str, u64>,
}

/// Average and quantiles of a latency histogram, in seconds (`null` when empty).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Observations.
    pub count: u64,
    /// Mean.
    pub avg: Option<f64>,
    /// Median, interpolated within its bucket.
    pub p50: Option<f64>,
    /// 95th percentile, interpolated within its bucket.
    pub p95: Option<f64>,
    /// 99th percentile, interpolated within its bucket.
    pub p99: Option<f64>,
}

impl LatencySummary {
    /// Reads a histogram's buckets and estimates quantiles the way PromQL's
    /// `histogram_quantile` does (linear interpolation inside the bucket).
    pub fn from_histogram(h: &Histogram) -> Self {
        let families = h.collect();
        let buckets: Vec<(f64, u64)> = families
            .first()
            .and_then(|mf| mf.get_metric().first())
            .map(|m| {
                m.get_histogram()
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect()
            })
            .unwrap_or_default();
        let count = h.get_sample_count();
        let sum = h.get_sample_sum();
        LatencySummary {
            count,
            avg: (count > 0).then(|| sum / count as f64),
            p50: quantile(0.50, &buckets, count),
            p95: quantile(0.95, &buckets, count),
            p99: quantile(0.99, &buckets, count),
        }
    }
}

/// Quantile `q` of a cumulative histogram `buckets` (upper bound, cumulative count)
/// holding `count` observations, as PromQL's `histogram_quantile` estimates it.
pub fn quantile(q: f64, buckets: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 || buckets.is_empty() {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for &(upper, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let in_bucket = (cumulative - below) as f64;
            if in_bucket == 0.0 {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / in_bucket);
        }
        lower = upper;
        below = cumulative;
    }
    // The rank falls in the implicit +Inf bucket: report the highest finite bound.
    buckets.last().map(|b| b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_cover_the_seed_range_with_sub_millisecond_resolution() {
        for seed in [
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        ] {
            assert!(
                LATENCY_BUCKETS.contains(&seed),
                "missing seed bucket {seed}"
            );
        }
        assert!(LATENCY_BUCKETS.iter().filter(|b| **b < 0.001).count() >= 3);
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        let buckets = [(1.0, 0), (2.0, 100), (4.0, 100)];
        assert_eq!(quantile(0.5, &buckets, 100), Some(1.5));
        assert_eq!(quantile(0.5, &[], 0), None);
        // All observations above the last finite bound.
        assert_eq!(quantile(0.99, &[(1.0, 0)], 10), Some(1.0));
    }

    #[test]
    fn arm_series_exist_at_zero_before_any_traffic() {
        let m = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let _arm = m.arm("best_model");
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        assert!(text.contains(
            "prediction_errors_total{error_type=\"invalid_json\",variant=\"best_model\"} 0"
        ));
        assert!(text.contains("feedback_total{feedback_type=\"too_low\",variant=\"best_model\"} 0"));
        assert!(text.contains("process_resident_memory_bytes"));
    }

    #[test]
    fn summary_counts_errors_and_latency() {
        let m = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let arm = m.arm("a");
        arm.predictions.inc();
        arm.duration.observe(0.0003);
        arm.error(ErrorKind::InvalidJson);
        arm.error(ErrorKind::InvalidJson);
        arm.feedback(FeedbackType::TooHigh);
        let s = arm.summary();
        assert_eq!(s.predictions, 1);
        assert_eq!(s.errors.get("invalid_json"), Some(&2));
        assert_eq!(s.errors_total, 2);
        assert_eq!(s.feedback.get("too_high"), Some(&1));
        assert_eq!(s.latency_seconds.count, 1);
        let p50 = s.latency_seconds.p50.unwrap_or_default();
        assert!((0.00025..=0.0005).contains(&p50), "{p50}");
    }
}
