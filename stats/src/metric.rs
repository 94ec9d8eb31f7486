//! The closed set of compared metrics and the direction in which each is better.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A metric compared between arms. Serialized in snake_case (`error_rate`, …), the same
/// string as [`Metric::as_str`], which is also the `metric` label of the comparison gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// 5xx answers / client-visible requests (4xx are the client's). Lower is better.
    ErrorRate,
    /// Mean request latency in seconds. Lower is better.
    LatencyMeanSeconds,
    /// Mean `absolute_error` of feedback carrying ground truth. Lower is better.
    AbsoluteError,
    /// Mean feedback rating. Higher is better.
    Rating,
    /// accurate / (accurate + too_high + too_low) feedback. Higher is better.
    AccurateShare,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 5] = [
        Metric::ErrorRate,
        Metric::LatencyMeanSeconds,
        Metric::AbsoluteError,
        Metric::Rating,
        Metric::AccurateShare,
    ];

    /// The snake_case name (config value, JSON value and metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::LatencyMeanSeconds => "latency_mean_seconds",
            Metric::AbsoluteError => "absolute_error",
            Metric::Rating => "rating",
            Metric::AccurateShare => "accurate_share",
        }
    }

    /// Whether a larger value is an improvement (`rating`, `accurate_share`) rather than
    /// a degradation (`error_rate`, `latency_mean_seconds`, `absolute_error`).
    pub const fn higher_is_better(self) -> bool {
        matches!(self, Metric::Rating | Metric::AccurateShare)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given to [`Metric::from_str`] is not in the closed set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?} (expected one of error_rate, latency_mean_seconds, absolute_error, rating, accurate_share)")]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for metric in Metric::ALL {
            let json = serde_json::to_string(&metric).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", metric.as_str()));
            let back: Metric = serde_json::from_str(&json).unwrap_or(Metric::ErrorRate);
            assert_eq!(back, metric);
            assert_eq!(metric.as_str().parse::<Metric>(), Ok(metric));
            assert_eq!(metric.to_string(), metric.as_str());
        }
        assert!("p95".parse::<Metric>().is_err());
    }

    #[test]
    fn directions() {
        let higher: Vec<_> = Metric::ALL
            .into_iter()
            .filter(|m| m.higher_is_better())
            .collect();
        assert_eq!(higher, [Metric::Rating, Metric::AccurateShare]);
    }
}
