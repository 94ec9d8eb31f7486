//! The guardrail trip rule.
//!
//! A guardrail names a metric, an arm and `max_degradation` — an absolute amount in the
//! metric's unit, counted in the metric's worse direction. It trips when the **whole**
//! confidence sequence of arm − control lies beyond that amount:
//!
//! * lower-is-better metrics (`error_rate`, `latency_mean_seconds`, `absolute_error`):
//!   `ci_low > max_degradation`;
//! * higher-is-better metrics (`rating`, `accurate_share`): `ci_high < −max_degradation`.
//!
//! Because the sequence is anytime-valid, checking this after every update trips a
//! guardrail whose true degradation is at most `max_degradation` with probability at most
//! α (5%) over the whole phase. A comparison without a verdict (`not_enough_data`) never
//! trips. What a trip does (rollback, alert, once per phase) is the caller's business.

use crate::comparison::Comparison;
use crate::metric::Metric;
use crate::verdict::Verdict;

/// Whether the confidence sequence `(ci_low, ci_high)` of arm − control on `metric` lies
/// entirely beyond `max_degradation` in the worse direction. NaN bounds never trip.
pub fn beyond_degradation(metric: Metric, ci_low: f64, ci_high: f64, max_degradation: f64) -> bool {
    if metric.higher_is_better() {
        ci_high < -max_degradation
    } else {
        ci_low > max_degradation
    }
}

/// Whether `comparison` trips a guardrail with `max_degradation`: it has enough data
/// (its verdict is not `not_enough_data`) and [`beyond_degradation`] holds.
pub fn trips(comparison: &Comparison, max_degradation: f64) -> bool {
    if comparison.verdict == Verdict::NotEnoughData {
        return false;
    }
    match (comparison.ci_low, comparison.ci_high) {
        (Some(low), Some(high)) => {
            beyond_degradation(comparison.metric, low, high, max_degradation)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::comparison::tests_support::interval as comparison;

    #[test]
    fn lower_is_better_trips_when_the_low_end_passes_the_limit() {
        let m = Metric::ErrorRate;
        assert!(trips(&comparison(m, 0.021, 0.05, Verdict::Worse), 0.02));
        assert!(!trips(&comparison(m, 0.019, 0.05, Verdict::Worse), 0.02));
        assert!(!trips(&comparison(m, 0.02, 0.05, Verdict::Worse), 0.02));
        // Worse, but not by more than the allowance.
        assert!(!trips(&comparison(m, 0.001, 0.01, Verdict::Worse), 0.02));
        assert!(trips(
            &comparison(Metric::LatencyMeanSeconds, 0.06, 0.09, Verdict::Worse),
            0.05
        ));
        assert!(!trips(
            &comparison(Metric::AbsoluteError, -0.3, -0.1, Verdict::Better),
            0.0
        ));
        assert!(trips(
            &comparison(Metric::AbsoluteError, 0.01, 0.1, Verdict::Worse),
            0.0
        ));
    }

    #[test]
    fn higher_is_better_trips_when_the_high_end_passes_minus_the_limit() {
        let m = Metric::Rating;
        assert!(trips(&comparison(m, -0.9, -0.31, Verdict::Worse), 0.3));
        assert!(!trips(&comparison(m, -0.9, -0.29, Verdict::Worse), 0.3));
        assert!(!trips(&comparison(m, 0.1, 0.9, Verdict::Better), 0.3));
        assert!(trips(
            &comparison(Metric::AccurateShare, -0.2, -0.06, Verdict::Worse),
            0.05
        ));
    }

    #[test]
    fn never_without_enough_data() {
        assert!(!trips(
            &comparison(Metric::ErrorRate, 0.5, 0.9, Verdict::NotEnoughData),
            0.0
        ));
        let mut c = comparison(Metric::ErrorRate, 0.5, 0.9, Verdict::Worse);
        c.ci_low = None;
        assert!(!trips(&c, 0.0));
        assert!(!beyond_degradation(
            Metric::ErrorRate,
            f64::NAN,
            f64::NAN,
            0.0
        ));
        assert!(!beyond_degradation(Metric::Rating, f64::NAN, f64::NAN, 0.0));
    }
}
