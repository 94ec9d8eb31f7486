//! Non-inferiority, the rule a progressive rollout advances on: the candidate is shown
//! **not worse** than the control by more than `max_degradation` when the whole
//! confidence sequence of arm − control lies on the better side of that margin:
//!
//! * lower-is-better metrics (`error_rate`, `latency_mean_seconds`, `absolute_error`):
//!   `ci_high < max_degradation`;
//! * higher-is-better metrics (`rating`, `accurate_share`): `ci_low > −max_degradation`.
//!
//! It is the mirror image of the guardrail trip rule ([`crate::guardrail`]): both ask on
//! which side of the margin the sequence lies. Because the sequence is anytime-valid, a
//! candidate whose true degradation is `max_degradation` or more is declared not worse,
//! at any of however many checks, with probability at most α. A comparison without a
//! verdict (`not_enough_data`) is never declared not worse.

use serde::{Deserialize, Serialize};

use crate::comparison::Comparison;
use crate::metric::Metric;
use crate::verdict::Verdict;

/// The answer of a non-inferiority check. Serialized in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonInferiority {
    /// The whole confidence sequence lies better than the margin.
    NotWorse,
    /// Enough data, but the sequence still reaches the margin or beyond.
    NotShownYet,
    /// The comparison has no verdict yet (too few observations or buckets).
    NotEnoughData,
}

impl NonInferiority {
    /// The snake_case name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            NonInferiority::NotWorse => "not_worse",
            NonInferiority::NotShownYet => "not_shown_yet",
            NonInferiority::NotEnoughData => "not_enough_data",
        }
    }
}

/// Whether the confidence sequence `(ci_low, ci_high)` of arm − control on `metric` lies
/// entirely on the better side of `max_degradation` (absolute, in the metric's unit,
/// counted in its worse direction). NaN bounds never qualify.
pub fn within_degradation(metric: Metric, ci_low: f64, ci_high: f64, max_degradation: f64) -> bool {
    if metric.higher_is_better() {
        ci_low > -max_degradation
    } else {
        ci_high < max_degradation
    }
}

/// The non-inferiority answer for `comparison` with margin `max_degradation`.
pub fn non_inferiority(comparison: &Comparison, max_degradation: f64) -> NonInferiority {
    if comparison.verdict == Verdict::NotEnoughData {
        return NonInferiority::NotEnoughData;
    }
    match (comparison.ci_low, comparison.ci_high) {
        (Some(low), Some(high))
            if within_degradation(comparison.metric, low, high, max_degradation) =>
        {
            NonInferiority::NotWorse
        }
        (Some(_), Some(_)) => NonInferiority::NotShownYet,
        _ => NonInferiority::NotEnoughData,
    }
}

/// Whether `comparison` shows the arm not worse than the control by `max_degradation`
/// or more ([`non_inferiority`] is [`NonInferiority::NotWorse`]).
pub fn not_worse(comparison: &Comparison, max_degradation: f64) -> bool {
    non_inferiority(comparison, max_degradation) == NonInferiority::NotWorse
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::comparison::tests_support::interval as comparison;

    #[test]
    fn lower_is_better_needs_the_high_end_below_the_margin() {
        let m = Metric::ErrorRate;
        let nd = Verdict::NoDifferenceYet;
        assert!(not_worse(&comparison(m, -0.01, 0.009, nd), 0.01));
        assert!(!not_worse(&comparison(m, -0.01, 0.01, nd), 0.01));
        assert!(!not_worse(&comparison(m, -0.01, 0.02, nd), 0.01));
        // Better outright is also not worse.
        assert!(not_worse(
            &comparison(m, -0.03, -0.01, Verdict::Better),
            0.0
        ));
        // Worse, but by less than the margin: still not worse than the margin.
        assert!(not_worse(
            &comparison(m, 0.001, 0.004, Verdict::Worse),
            0.005
        ));
        assert_eq!(
            non_inferiority(&comparison(m, -0.01, 0.02, nd), 0.01),
            NonInferiority::NotShownYet
        );
    }

    #[test]
    fn higher_is_better_needs_the_low_end_above_minus_the_margin() {
        let m = Metric::Rating;
        let nd = Verdict::NoDifferenceYet;
        assert!(not_worse(&comparison(m, -0.29, 0.2, nd), 0.3));
        assert!(!not_worse(&comparison(m, -0.31, 0.2, nd), 0.3));
        assert!(not_worse(
            &comparison(Metric::AccurateShare, 0.01, 0.05, Verdict::Better),
            0.0
        ));
    }

    #[test]
    fn never_without_enough_data_and_names_are_snake_case() {
        let c = comparison(Metric::ErrorRate, -0.5, -0.4, Verdict::NotEnoughData);
        assert_eq!(non_inferiority(&c, 0.1), NonInferiority::NotEnoughData);
        let mut c = comparison(Metric::ErrorRate, -0.5, -0.4, Verdict::Better);
        c.ci_high = None;
        assert_eq!(non_inferiority(&c, 0.1), NonInferiority::NotEnoughData);
        assert!(!within_degradation(
            Metric::ErrorRate,
            f64::NAN,
            f64::NAN,
            1.0
        ));
        assert!(!within_degradation(Metric::Rating, f64::NAN, f64::NAN, 1.0));
        for v in [
            NonInferiority::NotWorse,
            NonInferiority::NotShownYet,
            NonInferiority::NotEnoughData,
        ] {
            assert_eq!(
                serde_json::to_string(&v).unwrap_or_default(),
                format!("\"{}\"", v.as_str())
            );
        }
    }
}
