//! One phase of the experiment: per-arm sufficient statistics since the last change of
//! salt or weights, and its summary.
//!
//! The request path only adds: [`Phase::record_response`] and
//! [`Phase::record_feedback`] lock one small per-thread shard of the arm (so workers
//! on different cores never contend) and do a few additions; a sampled user costs one
//! more lock of a shard of the user sample. Figures, the SRM test and comparisons are
//! computed on read ([`Phase::summary`]) by merging the shards.

use abgate_common::metrics::{quantile, LATENCY_BUCKETS};
use abgate_common::FeedbackType;
use abgate_stats::{compare_arms, ArmStats, CompareConfig, Metric, Verdict};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::srm::{SrmState, SrmView};
use super::users::{Inserted, Padded, UserSample};

/// Shards of each arm's statistics (threads pick one round-robin).
const CELLS: usize = 16;

static NEXT_CELL: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static CELL: usize = NEXT_CELL.fetch_add(1, Ordering::Relaxed) % CELLS;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One shard of one arm's accumulators.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArmCell {
    /// The comparison accumulators.
    pub stats: ArmStats,
    /// Latency counts per bucket of [`LATENCY_BUCKETS`] (not cumulative), plus +Inf.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Feedback counts in [`FeedbackType::ALL`] order.
    pub feedback: [u64; FeedbackType::ALL.len()],
}

impl ArmCell {
    fn merge(&mut self, other: &ArmCell) {
        self.stats.merge(&other.stats);
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        for (a, b) in self.feedback.iter_mut().zip(&other.feedback) {
            *a += b;
        }
    }

    /// Latency quantile `q`, interpolated in its bucket as PromQL does.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(upper, n)| {
                cumulative += n;
                (*upper, cumulative)
            })
            .collect();
        quantile(q, &buckets, self.buckets.iter().sum())
    }
}

/// The phase's statistics of one arm.
struct ArmPhase {
    cells: Vec<Padded<Mutex<ArmCell>>>,
}

impl ArmPhase {
    fn new() -> Self {
        ArmPhase {
            cells: (0..CELLS).map(|_| Padded::default()).collect(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ArmCell) -> R) -> R {
        let i = CELL.with(|c| *c);
        f(&mut lock(&self.cells[i].0))
    }

    fn merged(&self) -> ArmCell {
        let mut all = ArmCell::default();
        for c in &self.cells {
            all.merge(&lock(&c.0));
        }
        all
    }
}

/// Users of one arm.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsersFigure {
    /// Distinct sticky users in the sample.
    pub n: u64,
    /// Estimated distinct users served: `n / sample_fraction`.
    pub estimate: f64,
    /// The sampling fraction (1, ½, ¼, …).
    pub sample_fraction: f64,
}

/// Client-visible requests of one arm.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestsFigure {
    /// Requests answered.
    pub n: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// `errors / n`.
    pub error_rate: Option<f64>,
}

/// Latency of one arm, in seconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyFigure {
    /// Requests timed.
    pub n: u64,
    /// Mean.
    pub mean: Option<f64>,
    /// Median, from the `prediction_duration_seconds` buckets.
    pub p50: Option<f64>,
    /// 95th percentile, from the same buckets.
    pub p95: Option<f64>,
}

/// Feedback counts of one arm.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeedbackFigure {
    /// All feedback the arm accepted.
    pub n: u64,
    /// `feedback_type = "rating"`.
    pub rating: u64,
    /// `accurate`.
    pub accurate: u64,
    /// `too_high`.
    pub too_high: u64,
    /// `too_low`.
    pub too_low: u64,
}

/// A mean with its count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeanFigure {
    /// Observations.
    pub n: u64,
    /// Their mean.
    pub mean: Option<f64>,
}

/// A share with its count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShareFigure {
    /// Trials (accurate + too_high + too_low).
    pub n: u64,
    /// accurate / n.
    pub value: Option<f64>,
}

/// Absolute error of predictions with ground truth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorFigure {
    /// Feedback whose arm answered an `absolute_error`.
    pub n: u64,
    /// Mean absolute error.
    pub mae: Option<f64>,
    /// Root mean squared error.
    pub rmse: Option<f64>,
}

/// One arm's figures for a phase, each with its own `n`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArmFigures {
    /// Arm name.
    pub variant: String,
    /// Configured weight in this phase.
    pub weight: f64,
    /// Configured share of users (normalised weight).
    pub share: f64,
    /// Distinct users served.
    pub users: UsersFigure,
    /// Requests and 5xx errors.
    pub requests: RequestsFigure,
    /// Latency.
    pub latency_seconds: LatencyFigure,
    /// Feedback counts by type.
    pub feedback: FeedbackFigure,
    /// Mean rating.
    pub rating: MeanFigure,
    /// Accurate share.
    pub accurate_share: ShareFigure,
    /// MAE and RMSE.
    pub absolute_error: ErrorFigure,
}

/// One comparison of an arm with the control.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComparisonView {
    /// The metric (closed set).
    pub metric: Metric,
    /// The arm compared.
    pub variant: String,
    /// The control (the first arm).
    pub control: String,
    /// `mean(arm) − mean(control)`.
    pub estimate: Option<f64>,
    /// Lower end of the 95% anytime-valid confidence sequence.
    pub ci_low: Option<f64>,
    /// Upper end.
    pub ci_high: Option<f64>,
    /// Lower end of the fixed-horizon 95% interval (reference only: one look).
    pub fixed_low: Option<f64>,
    /// Upper end of the fixed-horizon interval.
    pub fixed_high: Option<f64>,
    /// `better`, `worse`, `no_difference_yet` or `not_enough_data`.
    pub verdict: Verdict,
    /// The smaller arm's count (what `experiment.min_samples` gates on).
    pub n: u64,
    /// Observations in the arm.
    pub n_arm: u64,
    /// Observations in the control.
    pub n_control: u64,
}

/// Everything a phase says, at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseSummary {
    /// Phase number (1 at start-up, +1 per salt or weight change).
    pub phase: u64,
    /// Unix time it started.
    pub started_at: f64,
    /// Unix time it ended (`null` for the current phase).
    pub ended_at: Option<f64>,
    /// Per-arm figures, in config order.
    pub arms: Vec<ArmFigures>,
    /// The SRM test.
    pub srm: SrmView,
    /// Every arm after the first against the first, for every metric.
    pub comparisons: Vec<ComparisonView>,
}

/// The statistics of one phase (shared by every request of the config versions in it).
pub struct Phase {
    /// Phase number.
    pub number: u64,
    /// Unix time it started.
    pub started_at: f64,
    /// Salt of the phase.
    pub salt: String,
    /// Arm names, in config order.
    pub variants: Vec<String>,
    /// Weights, in config order.
    pub weights: Vec<f64>,
    arms: Vec<ArmPhase>,
    users: UserSample,
    srm: Mutex<SrmState>,
    tripped: Mutex<Vec<String>>,
}

impl Phase {
    /// A phase for arms `variants` with `weights`, sampling at most `user_sample_cap`
    /// users.
    pub fn new(
        number: u64,
        started_at: f64,
        salt: &str,
        variants: Vec<String>,
        weights: Vec<f64>,
        user_sample_cap: usize,
    ) -> Self {
        let arms = variants.len();
        Phase {
            number,
            started_at,
            salt: salt.to_string(),
            srm: Mutex::new(SrmState::new(&weights)),
            variants,
            weights,
            arms: (0..arms).map(|_| ArmPhase::new()).collect(),
            users: UserSample::new(arms, user_sample_cap),
            tripped: Mutex::new(Vec::new()),
        }
    }

    /// Whether a config with this salt, these arms and weights continues this phase.
    pub fn continues(&self, salt: &str, variants: &[&str], weights: &[f64]) -> bool {
        self.salt == salt
            && self.variants.len() == variants.len()
            && self.variants.iter().zip(variants).all(|(a, b)| a == b)
            && self.weights == weights
    }

    /// Records one client-visible answer of `arm`: its status, its latency and, for a
    /// sticky user, the user (by [`super::users::user_hash`]).
    pub fn record_response(&self, arm: usize, user: Option<u64>, status: u16, latency: f64) {
        let Some(stats) = self.arms.get(arm) else {
            return;
        };
        let bucket = LATENCY_BUCKETS.partition_point(|upper| *upper < latency);
        stats.with(|c| {
            c.stats.record_response(status, latency);
            c.buckets[bucket] += 1;
        });
        if let Some(hash) = user {
            if self.users.insert(arm, hash) == Inserted::OverCap {
                self.thin_users();
            }
        }
    }

    /// Records one accepted feedback for `arm`: its type, its rating, and the
    /// `absolute_error` the arm answered (feedback with `actual`).
    pub fn record_feedback(
        &self,
        arm: usize,
        kind: FeedbackType,
        rating: Option<f64>,
        absolute_error: Option<f64>,
    ) {
        let Some(stats) = self.arms.get(arm) else {
            return;
        };
        stats.with(|c| {
            c.feedback[kind as usize] += 1;
            match kind {
                FeedbackType::Rating => {
                    if let Some(r) = rating {
                        c.stats.record_rating(r);
                    }
                }
                FeedbackType::Accurate => c.stats.record_accuracy(true),
                FeedbackType::TooHigh | FeedbackType::TooLow => c.stats.record_accuracy(false),
            }
            if let Some(e) = absolute_error {
                c.stats.record_absolute_error(e);
            }
        });
    }

    fn thin_users(&self) {
        let mut srm = lock(&self.srm);
        let before = self.users.counts();
        if self.users.thin() {
            srm.thin(&before, &self.users.counts());
        }
    }

    /// The merged accumulators of `arm`.
    pub fn arm(&self, arm: usize) -> ArmCell {
        self.arms.get(arm).map(ArmPhase::merged).unwrap_or_default()
    }

    /// Marks guardrail `name` as tripped in this phase; `false` if it already was.
    pub fn trip_once(&self, name: &str) -> bool {
        let mut tripped = lock(&self.tripped);
        if tripped.iter().any(|n| n == name) {
            return false;
        }
        tripped.push(name.to_string());
        true
    }

    /// Whether guardrail `name` tripped in this phase.
    pub fn has_tripped(&self, name: &str) -> bool {
        lock(&self.tripped).iter().any(|n| n == name)
    }

    /// Updates the SRM test with the current sample and reports it.
    pub fn srm(&self) -> SrmView {
        let mut srm = lock(&self.srm);
        let counts = self.users.counts();
        srm.observe(&counts, &self.variants)
    }

    /// Compares arm `arm` with the control (arm 0) on `metric`.
    pub fn compare(&self, arm: usize, metric: Metric, min_samples: u64) -> ComparisonView {
        let cells: Vec<ArmCell> = [0, arm].iter().map(|&i| self.arm(i)).collect();
        let config = CompareConfig {
            min_samples,
            ..CompareConfig::default()
        };
        let all = compare_arms(&cells[1].stats, &cells[0].stats, &config);
        let index = Metric::ALL.iter().position(|m| *m == metric).unwrap_or(0);
        self.comparison_view(arm, &all[index])
    }

    fn comparison_view(&self, arm: usize, c: &abgate_stats::Comparison) -> ComparisonView {
        ComparisonView {
            metric: c.metric,
            variant: self.variants.get(arm).cloned().unwrap_or_default(),
            control: self.variants.first().cloned().unwrap_or_default(),
            estimate: c.estimate,
            ci_low: c.ci_low,
            ci_high: c.ci_high,
            fixed_low: c.fixed_low,
            fixed_high: c.fixed_high,
            verdict: c.verdict,
            n: c.n(),
            n_arm: c.n_arm,
            n_control: c.n_control,
        }
    }

    /// Everything the phase says now (runs the SRM test on the current sample).
    pub fn summary(&self, min_samples: u64, ended_at: Option<f64>) -> PhaseSummary {
        let cells: Vec<ArmCell> = (0..self.arms.len()).map(|i| self.arm(i)).collect();
        let total: f64 = self.weights.iter().sum();
        let fraction = self.users.fraction();
        let users = self.users.counts();
        let arms = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let weight = self.weights.get(i).copied().unwrap_or(0.0);
                figures(
                    self.variants.get(i).cloned().unwrap_or_default(),
                    weight,
                    if total > 0.0 { weight / total } else { 0.0 },
                    users.get(i).copied().unwrap_or(0),
                    fraction,
                    c,
                )
            })
            .collect();
        let config = CompareConfig {
            min_samples,
            ..CompareConfig::default()
        };
        let mut comparisons = Vec::new();
        if let Some(control) = cells.first() {
            for (i, arm) in cells.iter().enumerate().skip(1) {
                for c in compare_arms(&arm.stats, &control.stats, &config) {
                    comparisons.push(self.comparison_view(i, &c));
                }
            }
        }
        PhaseSummary {
            phase: self.number,
            started_at: self.started_at,
            ended_at,
            arms,
            srm: self.srm(),
            comparisons,
        }
    }
}

fn figures(
    variant: String,
    weight: f64,
    share: f64,
    users: u64,
    fraction: f64,
    c: &ArmCell,
) -> ArmFigures {
    let s = &c.stats;
    let fb = |t: FeedbackType| c.feedback[t as usize];
    ArmFigures {
        variant,
        weight,
        share,
        users: UsersFigure {
            n: users,
            estimate: users as f64 / fraction,
            sample_fraction: fraction,
        },
        requests: RequestsFigure {
            n: s.requests.n,
            errors: s.requests.successes,
            error_rate: s.requests.rate(),
        },
        latency_seconds: LatencyFigure {
            n: s.latency_seconds.n(),
            mean: s.latency_seconds.mean(),
            p50: c.latency_quantile(0.5),
            p95: c.latency_quantile(0.95),
        },
        feedback: FeedbackFigure {
            n: c.feedback.iter().sum(),
            rating: fb(FeedbackType::Rating),
            accurate: fb(FeedbackType::Accurate),
            too_high: fb(FeedbackType::TooHigh),
            too_low: fb(FeedbackType::TooLow),
        },
        rating: MeanFigure {
            n: s.rating.n(),
            mean: s.rating.mean(),
        },
        accurate_share: ShareFigure {
            n: s.accuracy.n,
            value: s.accuracy.rate(),
        },
        absolute_error: ErrorFigure {
            n: s.absolute_error.n(),
            mae: s.absolute_error.mean(),
            rmse: s.absolute_error.root_mean_square(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::users::user_hash;

    fn phase() -> Phase {
        Phase::new(
            1,
            0.0,
            "s",
            vec!["best_model".into(), "candidate_model".into()],
            vec![50.0, 50.0],
            1000,
        )
    }

    #[test]
    fn responses_and_feedback_land_in_their_figures() {
        let p = phase();
        p.record_response(0, Some(user_hash("a")), 200, 0.002);
        p.record_response(0, Some(user_hash("a")), 503, 0.004);
        p.record_response(1, None, 404, 0.02);
        p.record_feedback(0, FeedbackType::Rating, Some(4.0), None);
        p.record_feedback(0, FeedbackType::Accurate, None, Some(0.5));
        p.record_feedback(0, FeedbackType::TooLow, None, Some(1.5));
        let s = p.summary(100, None);
        let a = &s.arms[0];
        assert_eq!(a.users.n, 1);
        assert_eq!((a.requests.n, a.requests.errors), (2, 1));
        assert_eq!(a.requests.error_rate, Some(0.5));
        assert_eq!(a.latency_seconds.n, 2);
        assert!((a.latency_seconds.mean.unwrap_or(0.0) - 0.003).abs() < 1e-12);
        let p50 = a.latency_seconds.p50.unwrap_or(0.0);
        assert!((0.0025..=0.005).contains(&p50), "{p50}");
        assert_eq!(a.feedback.n, 3);
        assert_eq!(
            (a.feedback.rating, a.feedback.accurate, a.feedback.too_low),
            (1, 1, 1)
        );
        assert_eq!(a.rating.mean, Some(4.0));
        assert_eq!(a.accurate_share.value, Some(0.5));
        assert_eq!(a.absolute_error.mae, Some(1.0));
        let rmse = a.absolute_error.rmse.unwrap_or(0.0);
        assert!((rmse - (1.25f64).sqrt()).abs() < 1e-12);
        // 4xx are the client's: counted as requests, not errors.
        assert_eq!(s.arms[1].requests.error_rate, Some(0.0));
        assert_eq!(s.arms[1].users.n, 0);
        assert_eq!(s.comparisons.len(), Metric::ALL.len());
        assert!(s
            .comparisons
            .iter()
            .all(|c| c.verdict == Verdict::NotEnoughData && c.variant == "candidate_model"));
    }

    #[test]
    fn shards_written_from_several_threads_add_up() {
        let p = std::sync::Arc::new(Phase::new(
            1,
            0.0,
            "s",
            vec!["best_model".into(), "candidate_model".into()],
            vec![50.0, 50.0],
            100_000,
        ));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let p = std::sync::Arc::clone(&p);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        p.record_response(1, Some(user_hash(format!("{t}-{i}"))), 200, 0.001);
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let s = p.summary(100, None);
        assert_eq!(s.arms[1].requests.n, 4000);
        assert_eq!(s.arms[1].users.n, 4000);
    }

    #[test]
    fn a_phase_continues_only_with_the_same_salt_arms_and_weights() {
        let p = phase();
        let arms = ["best_model", "candidate_model"];
        assert!(p.continues("s", &arms, &[50.0, 50.0]));
        assert!(!p.continues("t", &arms, &[50.0, 50.0]));
        assert!(!p.continues("s", &arms, &[50.0, 0.0]));
        assert!(!p.continues("s", &["best_model", "other"], &[50.0, 50.0]));
    }

    #[test]
    fn a_clear_error_rise_is_worse_and_trips_once() {
        let p = phase();
        for i in 0..5000 {
            p.record_response(0, None, if i % 100 == 0 { 500 } else { 200 }, 0.001);
            p.record_response(1, None, if i % 10 == 0 { 500 } else { 200 }, 0.001);
        }
        let c = p.compare(1, Metric::ErrorRate, 100);
        assert_eq!(c.verdict, Verdict::Worse);
        assert!(c.ci_low.unwrap_or(0.0) > 0.0);
        assert!(p.trip_once("g") && !p.trip_once("g") && p.has_tripped("g"));
    }
}
