//! One comparison, arm − control, for one metric: estimate, confidence sequence,
//! fixed-horizon interval, counts and verdict.

use serde::Serialize;

use crate::metric::Metric;
use crate::moments::Moments;
use crate::sequence::{difference, Boundary};
use crate::verdict::{Verdict, DEFAULT_MIN_SAMPLES};

/// How comparisons are made: the confidence-sequence boundary and the minimum number of
/// observations per arm before a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CompareConfig {
    /// The normal-mixture boundary (α and tuning).
    pub boundary: Boundary,
    /// Observations needed in each arm before a verdict other than `not_enough_data`
    /// (`experiment.min_samples`).
    pub min_samples: u64,
}

impl Default for CompareConfig {
    /// 95%, tuned for 1000 effective pairs, 100 observations per arm.
    fn default() -> Self {
        CompareConfig {
            boundary: Boundary::default(),
            min_samples: DEFAULT_MIN_SAMPLES,
        }
    }
}

/// The result of comparing one arm with the control on one metric. Figures are in the
/// metric's unit (a share for rates, seconds for latency); `None` when they cannot be
/// computed yet (serialized as JSON `null`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The metric compared.
    pub metric: Metric,
    /// `mean(arm) − mean(control)`; `None` while either arm is empty.
    pub estimate: Option<f64>,
    /// Lower end of the 95% anytime-valid confidence sequence; `None` below 2 per arm.
    pub ci_low: Option<f64>,
    /// Upper end of the confidence sequence.
    pub ci_high: Option<f64>,
    /// Lower end of the fixed-horizon z-interval (for reference: valid for one
    /// pre-planned look only).
    pub fixed_low: Option<f64>,
    /// Upper end of the fixed-horizon z-interval.
    pub fixed_high: Option<f64>,
    /// Observations in the arm.
    pub n_arm: u64,
    /// Observations in the control.
    pub n_control: u64,
    /// The verdict.
    pub verdict: Verdict,
}

impl Comparison {
    /// The smaller of the two arms' counts, the one `min_samples` gates on.
    pub fn n(&self) -> u64 {
        self.n_arm.min(self.n_control)
    }
}

/// Compares `arm` with `control` on `metric`. Pass [`Proportion`](crate::Proportion)s
/// through `Moments::from` for `error_rate` and `accurate_share`.
pub fn compare(
    metric: Metric,
    arm: &Moments,
    control: &Moments,
    config: &CompareConfig,
) -> Comparison {
    let estimate = arm.mean().zip(control.mean()).map(|(a, c)| a - c);
    let interval = difference(arm, control, &config.boundary);
    let verdict = Verdict::decide(
        metric,
        interval.map(|i| (i.ci_low, i.ci_high)),
        arm.n(),
        control.n(),
        config.min_samples,
    );
    Comparison {
        metric,
        estimate,
        ci_low: interval.map(|i| i.ci_low),
        ci_high: interval.map(|i| i.ci_high),
        fixed_low: interval.map(|i| i.fixed_low),
        fixed_high: interval.map(|i| i.fixed_high),
        n_arm: arm.n(),
        n_control: control.n(),
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moments::Proportion;

    #[test]
    fn a_clear_rise_in_errors_is_worse() {
        let arm = Proportion {
            successes: 300,
            n: 10_000,
        };
        let control = Proportion {
            successes: 100,
            n: 10_000,
        };
        let c = compare(
            Metric::ErrorRate,
            &arm.into(),
            &control.into(),
            &CompareConfig::default(),
        );
        assert_eq!(c.verdict, Verdict::Worse);
        assert!((c.estimate.unwrap_or(0.0) - 0.02).abs() < 1e-15);
        let (low, high) = (c.ci_low.unwrap_or(f64::NAN), c.ci_high.unwrap_or(f64::NAN));
        assert!(low > 0.0 && high < 0.04);
        assert!(low < c.fixed_low.unwrap_or(f64::NAN));
        assert_eq!(c.n(), 10_000);
        let json = serde_json::to_value(c).unwrap_or_default();
        assert_eq!(json["metric"], "error_rate");
        assert_eq!(json["verdict"], "worse");
    }

    #[test]
    fn empty_and_tiny_arms() {
        let empty = Moments::new();
        let one: Moments = [1.0].into_iter().collect();
        let c = compare(Metric::Rating, &empty, &one, &CompareConfig::default());
        assert_eq!(
            (c.estimate, c.ci_low, c.verdict),
            (None, None, Verdict::NotEnoughData)
        );
        let c = compare(Metric::Rating, &one, &one, &CompareConfig::default());
        assert_eq!(
            (c.estimate, c.ci_low, c.verdict),
            (Some(0.0), None, Verdict::NotEnoughData)
        );
        let json = serde_json::to_value(c).unwrap_or_default();
        assert!(json["ci_low"].is_null());
    }

    #[test]
    fn same_data_is_no_difference() {
        let m: Moments = (0..1000).map(|i| f64::from(i % 5 + 1)).collect();
        let c = compare(Metric::Rating, &m, &m, &CompareConfig::default());
        assert_eq!(c.verdict, Verdict::NoDifferenceYet);
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::Comparison;
    use crate::{Metric, Verdict};

    /// A comparison whose intervals are `[low, high]` (1,000 observations each side),
    /// for the tests of the rules that read intervals.
    pub fn interval(metric: Metric, low: f64, high: f64, verdict: Verdict) -> Comparison {
        Comparison {
            metric,
            estimate: Some((low + high) / 2.0),
            ci_low: Some(low),
            ci_high: Some(high),
            fixed_low: Some(low),
            fixed_high: Some(high),
            n_arm: 1000,
            n_control: 1000,
            verdict,
        }
    }
}
