//! Per-arm accumulators for every metric of the closed set, and the comparison of an arm
//! with the control on all of them.

use serde::Serialize;

use crate::comparison::{compare, CompareConfig, Comparison};
use crate::metric::Metric;
use crate::moments::{Moments, Proportion};

/// Sufficient statistics of one arm for one phase: a few additions per request or
/// feedback. Merge shards with [`ArmStats::merge`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ArmStats {
    /// Client-visible requests; a success is a 5xx answer (`error_rate`; 4xx are the
    /// client's and count only as requests).
    pub requests: Proportion,
    /// Request latency in seconds (`latency_mean_seconds`).
    pub latency_seconds: Moments,
    /// `absolute_error` of feedback carrying ground truth (`absolute_error`; the RMSE is
    /// its [`Moments::root_mean_square`]).
    pub absolute_error: Moments,
    /// Feedback ratings (`rating`).
    pub rating: Moments,
    /// Accuracy feedback; a success is `accurate`, a trial is `accurate`, `too_high` or
    /// `too_low` (`accurate_share`).
    pub accuracy: Proportion,
}

impl ArmStats {
    /// No observations.
    pub const fn new() -> Self {
        ArmStats {
            requests: Proportion::new(),
            latency_seconds: Moments::new(),
            absolute_error: Moments::new(),
            rating: Moments::new(),
            accuracy: Proportion::new(),
        }
    }

    /// Records one client-visible answer: its HTTP status (5xx counts as an error) and
    /// its latency in seconds.
    pub fn record_response(&mut self, status: u16, latency_seconds: f64) {
        self.requests.push(status >= 500);
        self.latency_seconds.push(latency_seconds);
    }

    /// Records a feedback rating.
    pub fn record_rating(&mut self, rating: f64) {
        self.rating.push(rating);
    }

    /// Records the `absolute_error` an arm returned for feedback with `actual`.
    pub fn record_absolute_error(&mut self, absolute_error: f64) {
        self.absolute_error.push(absolute_error);
    }

    /// Records accuracy feedback: `true` for `accurate`, `false` for `too_high` or
    /// `too_low`.
    pub fn record_accuracy(&mut self, accurate: bool) {
        self.accuracy.push(accurate);
    }

    /// Adds every observation of `other`.
    pub fn merge(&mut self, other: &ArmStats) {
        self.requests.merge(&other.requests);
        self.latency_seconds.merge(&other.latency_seconds);
        self.absolute_error.merge(&other.absolute_error);
        self.rating.merge(&other.rating);
        self.accuracy.merge(&other.accuracy);
    }

    /// The observations of `metric` as moments.
    pub fn moments(&self, metric: Metric) -> Moments {
        match metric {
            Metric::ErrorRate => self.requests.moments(),
            Metric::LatencyMeanSeconds => self.latency_seconds,
            Metric::AbsoluteError => self.absolute_error,
            Metric::Rating => self.rating,
            Metric::AccurateShare => self.accuracy.moments(),
        }
    }

    /// The arm's figure for `metric` (a rate or a mean); `None` without observations.
    pub fn value(&self, metric: Metric) -> Option<f64> {
        self.moments(metric).mean()
    }
}

/// Compares `arm` with `control` on every metric, in [`Metric::ALL`] order.
pub fn compare_arms(arm: &ArmStats, control: &ArmStats, config: &CompareConfig) -> [Comparison; 5] {
    Metric::ALL.map(|metric| {
        compare(
            metric,
            &arm.moments(metric),
            &control.moments(metric),
            config,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Verdict;

    #[test]
    fn records_route_to_their_metric() {
        let mut a = ArmStats::new();
        a.record_response(200, 0.010);
        a.record_response(404, 0.020);
        a.record_response(503, 0.030);
        a.record_rating(4.0);
        a.record_absolute_error(0.5);
        a.record_accuracy(true);
        a.record_accuracy(false);
        assert_eq!(a.requests, Proportion { successes: 1, n: 3 });
        assert!((a.value(Metric::LatencyMeanSeconds).unwrap_or(0.0) - 0.02).abs() < 1e-15);
        assert_eq!(a.value(Metric::AccurateShare), Some(0.5));
        assert_eq!(a.value(Metric::Rating), Some(4.0));
        let mut b = ArmStats::new();
        b.merge(&a);
        b.merge(&a);
        assert_eq!(b.moments(Metric::ErrorRate).n(), 6);
        assert_eq!(b.absolute_error.n(), 2);
    }

    #[test]
    fn compares_every_metric() {
        let mut control = ArmStats::new();
        let mut candidate = ArmStats::new();
        for i in 0..2000u32 {
            control.record_response(
                if i % 100 == 0 { 500 } else { 200 },
                0.05 + f64::from(i % 10) * 1e-3,
            );
            candidate.record_response(
                if i % 20 == 0 { 500 } else { 200 },
                0.05 + f64::from(i % 10) * 1e-3,
            );
        }
        let comparisons = compare_arms(&candidate, &control, &CompareConfig::default());
        let metrics: Vec<Metric> = comparisons.iter().map(|c| c.metric).collect();
        assert_eq!(metrics, Metric::ALL);
        assert_eq!(comparisons[0].verdict, Verdict::Worse);
        assert_eq!(comparisons[1].verdict, Verdict::NoDifferenceYet);
        assert_eq!(comparisons[3].verdict, Verdict::NotEnoughData);
    }
}
