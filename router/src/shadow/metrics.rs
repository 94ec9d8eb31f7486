//! The shadow families (`abgate_shadow_*`), beside the module that records them:
//! labelled by shadow name, which comes from the config, and a closed result set.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// What became of one mirrored request (`abgate_shadow_requests_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowResult {
    /// Both answers parsed; their predictions were compared.
    Compared,
    /// The shadow refused, failed, timed out or answered non-2xx.
    ShadowError,
    /// Not sent: `max_in_flight` copies were already in flight.
    Dropped,
    /// An answer had no usable `prediction`/`predictions`, or their lengths differ.
    Unparseable,
}

impl ShadowResult {
    /// Every result, in a stable order.
    pub const ALL: [ShadowResult; 4] = [
        ShadowResult::Compared,
        ShadowResult::ShadowError,
        ShadowResult::Dropped,
        ShadowResult::Unparseable,
    ];

    /// Label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ShadowResult::Compared => "compared",
            ShadowResult::ShadowError => "shadow_error",
            ShadowResult::Dropped => "dropped",
            ShadowResult::Unparseable => "unparseable",
        }
    }
}

/// Buckets of `abgate_shadow_absolute_difference`, in prediction units.
pub const DIFFERENCE_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
];

/// The shadow families (labelled by shadow name, which comes from the config).
#[derive(Clone)]
pub struct ShadowMetrics {
    requests: IntCounterVec,
    difference: HistogramVec,
    agreements: IntCounterVec,
    duration: HistogramVec,
}

/// Pre-resolved series of one shadow.
#[derive(Clone)]
pub struct ShadowSeries {
    requests: [IntCounter; 4],
    /// `abgate_shadow_absolute_difference{shadow}`: |shadow - primary| per prediction.
    pub difference: Histogram,
    /// `abgate_shadow_agreements_total{shadow,agree="true"}`.
    pub agree: IntCounter,
    /// `abgate_shadow_agreements_total{shadow,agree="false"}`.
    pub disagree: IntCounter,
    /// `abgate_shadow_duration_seconds{shadow}`: time for the shadow's whole answer.
    pub duration: Histogram,
}

impl ShadowSeries {
    /// Counts one mirrored request's outcome.
    pub fn result(&self, result: ShadowResult) {
        self.requests[result as usize].inc();
    }

    /// Mirrored requests so far with `result`.
    pub fn count(&self, result: ShadowResult) -> u64 {
        self.requests[result as usize].get()
    }
}

impl ShadowMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let shadows = ShadowMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "abgate_shadow_requests_total",
                    "Requests mirrored to a shadow arm, by what became of them.",
                ),
                &["shadow", "result"],
            )?,
            difference: HistogramVec::new(
                HistogramOpts::new(
                    "abgate_shadow_absolute_difference",
                    "Absolute difference between a shadow's prediction and the served arm's, per prediction.",
                )
                .buckets(DIFFERENCE_BUCKETS.to_vec()),
                &["shadow"],
            )?,
            agreements: IntCounterVec::new(
                Opts::new(
                    "abgate_shadow_agreements_total",
                    "Shadow predictions within (true) or beyond (false) the shadow's tolerance.",
                ),
                &["shadow", "agree"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "abgate_shadow_duration_seconds",
                    "Time for a shadow arm to answer a mirrored request, in seconds.",
                )
                .buckets(abgate_common::metrics::LATENCY_BUCKETS.to_vec()),
                &["shadow"],
            )?,
        };
        registry.register(Box::new(shadows.requests.clone()))?;
        registry.register(Box::new(shadows.difference.clone()))?;
        registry.register(Box::new(shadows.agreements.clone()))?;
        registry.register(Box::new(shadows.duration.clone()))?;
        Ok(shadows)
    }

    /// Resolves (and creates at zero) one shadow's series.
    pub fn series(&self, shadow: &str) -> ShadowSeries {
        let f = self;
        ShadowSeries {
            requests: ShadowResult::ALL
                .map(|r| f.requests.with_label_values(&[shadow, r.as_str()])),
            difference: f.difference.with_label_values(&[shadow]),
            agree: f.agreements.with_label_values(&[shadow, "true"]),
            disagree: f.agreements.with_label_values(&[shadow, "false"]),
            duration: f.duration.with_label_values(&[shadow]),
        }
    }
}
