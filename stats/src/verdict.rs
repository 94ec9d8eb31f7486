//! The verdict on one comparison, from its confidence sequence and the metric's direction.

use serde::{Deserialize, Serialize};

use crate::metric::Metric;

/// Default minimum number of observations per arm before a verdict is given.
pub const DEFAULT_MIN_SAMPLES: u64 = 100;

/// What a comparison of arm − control says. Serialized in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The whole confidence sequence lies on the metric's better side of zero.
    Better,
    /// The whole confidence sequence lies on the metric's worse side of zero.
    Worse,
    /// Enough data, but the confidence sequence still contains zero.
    NoDifferenceYet,
    /// An arm has fewer than `min_samples` observations (or fewer than two).
    NotEnoughData,
}

impl Verdict {
    /// The snake_case name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::NoDifferenceYet => "no_difference_yet",
            Verdict::NotEnoughData => "not_enough_data",
        }
    }

    /// Decides from the confidence sequence `interval = (low, high)` of arm − control
    /// (`None` when it could not be computed) and the per-arm counts. Below
    /// `min_samples` in either arm (at least 2 are always needed) the answer is
    /// [`Verdict::NotEnoughData`], whatever the interval says.
    pub fn decide(
        metric: Metric,
        interval: Option<(f64, f64)>,
        n_arm: u64,
        n_control: u64,
        min_samples: u64,
    ) -> Verdict {
        let needed = min_samples.max(2);
        let Some((low, high)) = interval else {
            return Verdict::NotEnoughData;
        };
        if n_arm < needed || n_control < needed || low.is_nan() || high.is_nan() {
            return Verdict::NotEnoughData;
        }
        let arm_higher = low > 0.0;
        let arm_lower = high < 0.0;
        match (arm_higher, arm_lower, metric.higher_is_better()) {
            (true, _, true) | (_, true, false) => Verdict::Better,
            (true, _, false) | (_, true, true) => Verdict::Worse,
            _ => Verdict::NoDifferenceYet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_follow_the_metric() {
        let up = Some((0.01, 0.03));
        let down = Some((-0.03, -0.01));
        let straddle = Some((-0.01, 0.01));
        let d = |m, i| Verdict::decide(m, i, 500, 500, 100);
        assert_eq!(d(Metric::ErrorRate, up), Verdict::Worse);
        assert_eq!(d(Metric::ErrorRate, down), Verdict::Better);
        assert_eq!(d(Metric::LatencyMeanSeconds, up), Verdict::Worse);
        assert_eq!(d(Metric::AbsoluteError, down), Verdict::Better);
        assert_eq!(d(Metric::Rating, up), Verdict::Better);
        assert_eq!(d(Metric::Rating, down), Verdict::Worse);
        assert_eq!(d(Metric::AccurateShare, up), Verdict::Better);
        for m in Metric::ALL {
            assert_eq!(d(m, straddle), Verdict::NoDifferenceYet);
            // An interval touching zero has not excluded it.
            assert_eq!(d(m, Some((0.0, 1.0))), Verdict::NoDifferenceYet);
        }
    }

    #[test]
    fn too_few_samples_is_not_enough_data() {
        let up = Some((0.01, 0.03));
        assert_eq!(
            Verdict::decide(Metric::Rating, up, 99, 500, 100),
            Verdict::NotEnoughData
        );
        assert_eq!(
            Verdict::decide(Metric::Rating, up, 500, 99, 100),
            Verdict::NotEnoughData
        );
        assert_eq!(
            Verdict::decide(Metric::Rating, up, 100, 100, 100),
            Verdict::Better
        );
        assert_eq!(
            Verdict::decide(Metric::Rating, None, 500, 500, 100),
            Verdict::NotEnoughData
        );
        assert_eq!(
            Verdict::decide(Metric::Rating, up, 1, 1, 0),
            Verdict::NotEnoughData
        );
    }

    #[test]
    fn serde_names_are_snake_case() {
        for v in [
            Verdict::Better,
            Verdict::Worse,
            Verdict::NoDifferenceYet,
            Verdict::NotEnoughData,
        ] {
            assert_eq!(
                serde_json::to_string(&v).unwrap_or_default(),
                format!("\"{}\"", v.as_str())
            );
        }
    }
}
