//! Per-connection statistics (HdrHistograms in µs, 3 significant digits; counters;
//! each user's arms), merged after the run, and percentile extraction.
//!
//! Each connection task owns one [`TaskStats`], so recording takes no lock.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::error::LoadgenError;

/// Arms beyond this many (per run) are still counted but not tracked for stickiness.
pub const MAX_STICKY_ARMS: usize = 64;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value recorded.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl LatencySummary {
    /// Percentiles of `h` (each the highest value equivalent, at 3 significant
    /// digits, to the recorded value at that quantile); all zero when empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// A new auto-resizing histogram with 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, LoadgenError> {
    Histogram::new(3).map_err(|e| LoadgenError::Histogram(format!("{e:?}")))
}

/// Records `d` in microseconds.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    record_us(h, u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
}

/// Records `us`, growing the histogram as needed (`saturating_record` alone would
/// clamp to the current highest value instead of growing); clamps only if it
/// cannot grow.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    if h.record(us).is_err() {
        h.saturating_record(us);
    }
}

/// One arm's successful predictions.
#[derive(Debug, Clone)]
pub struct ArmStats {
    /// Arm name from `X-Variant`.
    pub name: String,
    /// Latency of its 2xx predictions.
    pub latency: Histogram<u64>,
}

/// Everything one connection task (or, after [`TaskStats::merge`], the whole run)
/// observed.
#[derive(Debug, Clone)]
pub struct TaskStats {
    /// Arms in order of first sight; indices are used in `user_arms`.
    pub arms: Vec<ArmStats>,
    /// Latency of 2xx feedback answers.
    pub feedback: Histogram<u64>,
    /// Latency of every request that got an HTTP answer (any status, both routes).
    pub overall: Histogram<u64>,
    /// Lateness of actual sends behind intended send times (open loop only).
    pub send_lag: Histogram<u64>,
    /// Requests attempted (answered, failed or timed out).
    pub requests: u64,
    /// 2xx predictions without an `X-Variant` header.
    pub missing_variant: u64,
    /// Non-2xx answers by status.
    pub status_errors: BTreeMap<u16, u64>,
    /// Connect failures and connections broken mid-request.
    pub connection_errors: u64,
    /// Requests without a full answer within `--timeout`.
    pub timeouts: u64,
    /// Open loop: requests sent more than 1 ms after their intended time.
    pub late_sends: u64,
    /// Open loop: scheduled requests not sent before the drain deadline.
    pub unsent: u64,
    /// Each user's arms as a bit set over `arms` indices.
    pub user_arms: HashMap<u32, u64>,
}

impl TaskStats {
    /// Empty statistics.
    pub fn new() -> Result<Self, LoadgenError> {
        Ok(TaskStats {
            arms: Vec::new(),
            feedback: new_histogram()?,
            overall: new_histogram()?,
            send_lag: new_histogram()?,
            requests: 0,
            missing_variant: 0,
            status_errors: BTreeMap::new(),
            connection_errors: 0,
            timeouts: 0,
            late_sends: 0,
            unsent: 0,
            user_arms: HashMap::new(),
        })
    }

    /// Index of arm `name`, adding it on first sight.
    pub fn arm_index(&mut self, name: &str) -> Result<usize, LoadgenError> {
        if let Some(i) = self.arms.iter().position(|a| a.name == name) {
            return Ok(i);
        }
        self.arms.push(ArmStats {
            name: name.to_string(),
            latency: new_histogram()?,
        });
        Ok(self.arms.len() - 1)
    }

    /// Records a 2xx prediction served by `arm` for `user`.
    pub fn record_prediction(
        &mut self,
        arm: &str,
        user: u32,
        latency: Duration,
    ) -> Result<(), LoadgenError> {
        let i = self.arm_index(arm)?;
        record(&mut self.arms[i].latency, latency);
        if i < MAX_STICKY_ARMS {
            *self.user_arms.entry(user).or_insert(0) |= 1u64 << i;
        }
        Ok(())
    }

    /// Total non-2xx answers.
    pub fn status_error_count(&self) -> u64 {
        self.status_errors.values().sum()
    }

    /// All failed requests: non-2xx, connection errors and timeouts.
    pub fn errors(&self) -> u64 {
        self.status_error_count() + self.connection_errors + self.timeouts
    }

    /// 2xx predictions per arm.
    pub fn prediction_count(&self) -> u64 {
        self.arms.iter().map(|a| a.latency.len()).sum()
    }

    /// Users seen on more than one arm.
    pub fn sticky_violations(&self) -> u64 {
        self.user_arms
            .values()
            .filter(|m| m.count_ones() > 1)
            .count() as u64
    }

    /// Users seen on exactly one arm, per arm index (the unit of assignment, for the
    /// per-user SRM test).
    pub fn users_per_arm(&self) -> Vec<u64> {
        let mut out = vec![0u64; self.arms.len()];
        for m in self.user_arms.values() {
            if m.count_ones() == 1 {
                let i = m.trailing_zeros() as usize;
                if let Some(slot) = out.get_mut(i) {
                    *slot += 1;
                }
            }
        }
        out
    }

    /// Adds `other` into `self` (arms matched by name).
    pub fn merge(&mut self, other: TaskStats) -> Result<(), LoadgenError> {
        let mut remap = Vec::with_capacity(other.arms.len());
        for arm in other.arms {
            let i = self.arm_index(&arm.name)?;
            add(&mut self.arms[i].latency, &arm.latency)?;
            remap.push(i);
        }
        add(&mut self.feedback, &other.feedback)?;
        add(&mut self.overall, &other.overall)?;
        add(&mut self.send_lag, &other.send_lag)?;
        self.requests += other.requests;
        self.missing_variant += other.missing_variant;
        for (status, n) in other.status_errors {
            *self.status_errors.entry(status).or_insert(0) += n;
        }
        self.connection_errors += other.connection_errors;
        self.timeouts += other.timeouts;
        self.late_sends += other.late_sends;
        self.unsent += other.unsent;
        for (user, mask) in other.user_arms {
            let mut mapped = 0u64;
            for (local, &global) in remap.iter().enumerate() {
                if local < MAX_STICKY_ARMS
                    && mask & (1u64 << local) != 0
                    && global < MAX_STICKY_ARMS
                {
                    mapped |= 1u64 << global;
                }
            }
            *self.user_arms.entry(user).or_insert(0) |= mapped;
        }
        Ok(())
    }
}

fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<(), LoadgenError> {
    into.add(from)
        .map_err(|e| LoadgenError::Histogram(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_1_to_1000() {
        let mut h = new_histogram().unwrap_or_else(|e| panic!("{e}"));
        for v in 1..=1000u64 {
            record_us(&mut h, v);
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p90, 900);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p999, 999);
        assert_eq!(s.max, 1000);
        assert!((s.mean - 500.5).abs() < 0.01);
    }

    #[test]
    fn percentiles_keep_three_significant_digits() {
        let mut h = new_histogram().unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..99 {
            record(&mut h, Duration::from_micros(100));
        }
        record(&mut h, Duration::from_millis(2500));
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.p50, 100);
        assert_eq!(s.p90, 100);
        assert_eq!(s.p99, 100);
        // 2,500,000 µs within 0.1%.
        assert!(s.p999.abs_diff(2_500_000) <= 2_500, "{s:?}");
        assert!(s.max.abs_diff(2_500_000) <= 2_500);
        assert_eq!(
            LatencySummary::from_histogram(&new_histogram().unwrap_or_else(|e| panic!("{e}"))),
            LatencySummary::default()
        );
    }

    #[test]
    fn merge_remaps_arms_and_finds_sticky_violations() {
        let mut a = TaskStats::new().unwrap_or_else(|e| panic!("{e}"));
        let mut b = TaskStats::new().unwrap_or_else(|e| panic!("{e}"));
        let ms = Duration::from_millis(1);
        a.record_prediction("best_model", 1, ms)
            .unwrap_or_else(|e| panic!("{e}"));
        a.record_prediction("candidate_model", 2, ms)
            .unwrap_or_else(|e| panic!("{e}"));
        // b sees the arms in the other order; user 2 consistent, user 1 flips.
        b.record_prediction("candidate_model", 2, ms)
            .unwrap_or_else(|e| panic!("{e}"));
        b.record_prediction("candidate_model", 1, ms)
            .unwrap_or_else(|e| panic!("{e}"));
        b.record_prediction("best_model", 3, ms)
            .unwrap_or_else(|e| panic!("{e}"));
        a.merge(b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.prediction_count(), 5);
        assert_eq!(a.arms[0].name, "best_model");
        assert_eq!(a.arms[0].latency.len(), 2);
        assert_eq!(a.arms[1].latency.len(), 3);
        assert_eq!(a.sticky_violations(), 1);
        assert_eq!(a.users_per_arm(), vec![1, 1]);
    }
}
