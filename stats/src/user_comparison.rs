//! Comparisons by user: arm − control from user-bucket sums ([`crate::buckets`]), with a
//! 95% anytime-valid confidence sequence whose variance accounts for the correlation of
//! one user's observations, never treats an arm as variance-free, and is corrected for
//! few or unequal buckets. [`UserArmStats`] is the by-user counterpart of
//! [`ArmStats`](crate::ArmStats), [`compare_user_arms`] of [`compare_arms`](crate::compare_arms).
//!
//! # The interval
//! For each arm, from its non-empty buckets ([`RatioEstimate`]):
//!
//! 1. **Estimate** `R = ΣS_b/ΣM_b`; the difference is `D = R_arm − R_control`.
//! 2. **Variance of R: the leave-one-bucket-out jackknife** `V_J`. It equals the delta
//!    method (Deng, Knoblich & Lu 2018) with each bucket's residual divided by `1 − h_b`,
//!    `h_b = M_b/ΣM`: the delta method shrinks the residual of a bucket that dominates its
//!    arm (one heavy user can carry 20% of an arm's requests) and then understates the
//!    variance. Measured on the heavy scenario (Zipf activity, 200k requests), Var(D) over
//!    E(SE²) across A/A runs was 1.2–3.0 with the delta method and 0.7–1.1 with the
//!    jackknife; with moderate or no clustering the two agree within a few percent. (The
//!    jackknife is the "CV3" that MacKinnon, Nielsen & Webb 2023 recommend for few or
//!    unequal clusters.) The delta-method variance is still computed and reported.
//! 3. **Variance floor.** Each arm's per-observation variance `σ²` (observations treated
//!    as independent) is floored at the pooled one of both arms, the two-sample t-test's
//!    `σ²_pool = ((n_a − 1)·σ²_a + (n_c − 1)·σ²_c) / (n_a + n_c − 2)` (within arms, so a
//!    real difference between the arms does not inflate it), and the arm's bucket
//!    variance is raised by the same factor `σ²_pool/σ²`: the arm keeps its own design
//!    effect `V_J·n/σ²`, and an arm without any variance yet (no 5xx seen) gets
//!    `σ²_pool/n`. This removes the zero-variance arm (a 10% arm that has not seen a 1%
//!    event yet: 31–38% false positives without the floor at 90/10 and 99/1, at most 1.5%
//!    with it). Flooring the *clustered* variance at the pooled clustered one instead was
//!    measured and rejected: the pooled design effect is driven by the heaviest users
//!    (Σm²/Σm ≈ 3,400 at 200k requests), which a 1% arm rarely holds, so it overstated
//!    the small arm's variance about tenfold (Var(D)/E(SE²) = 0.07).
//! 4. **Effective sample size** `n_eff = (σ̃²_a + σ̃²_c) / W`, with `σ̃²` the floored
//!    per-observation variances and `W = V_a + V_c` the floored variance of `D`: the
//!    number of (arm, control) pairs of independent observations that would give the same
//!    precision (Kish's `n / deff`). It reduces to [`sequence`](crate::sequence)'s
//!    `n_eff` when observations are independent, and it grows with information, not with
//!    requests, when heavy users return.
//! 5. **Multiplier.** The normal-mixture boundary's `M(n_eff)` ([`Boundary::multiplier`])
//!    is converted to a Student t multiplier with the same tail probability,
//!    `t_ν⁻¹(Φ̄(M))` (the significance-level approach of group-sequential t-tests), with
//!    Welch–Satterthwaite degrees of freedom `ν` from each arm's **Kish effective number of
//!    buckets** `(ΣM_b)²/ΣM_b²` minus one (the pooled one for an arm without variance of
//!    its own). Equal buckets give `ν ≈ K − 1` and a negligible correction; one bucket
//!    dominating gives few degrees of freedom and a wide sequence. Measured: with heavy
//!    users at 99/1 the worst metric's A/A false-positive rate fell from 9.0% (normal
//!    multiplier) and 8.5% (t with `K − 1`) to 2.5% (t with the Kish count) in tuning runs
//!    of 200 experiments to 200k requests.
//! 6. `C = D ± √W · M_t`; the fixed-horizon interval (reference only) uses `t_ν⁻¹(α/2)`.
//!
//! # Verdict gates
//! `not_enough_data` until each arm has `min_samples` observations *and* `min_buckets`
//! non-empty buckets (default 10: below that a jackknife over buckets means little). The
//! t correction handles the small-sample end above it; both were tuned on populations of
//! 60–400 users (`aa_small_populations` in `tests/user_simulation.rs`).

use serde::Serialize;

use crate::buckets::{BucketSums, RatioEstimate, BUCKETS};
use crate::comparison::Comparison;
use crate::metric::Metric;
use crate::sequence::Boundary;
use crate::special::{student_t_isf, student_t_matching_normal};
use crate::verdict::{Verdict, DEFAULT_MIN_SAMPLES};

/// Default minimum number of non-empty buckets per arm before a verdict.
pub const DEFAULT_MIN_BUCKETS: usize = 10;

/// How comparisons by user are made.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UserCompareConfig {
    /// The normal-mixture boundary (α and tuning), as for request-level comparisons.
    pub boundary: Boundary,
    /// Observations needed in each arm before a verdict other than `not_enough_data`
    /// (`experiment.min_samples`).
    pub min_samples: u64,
    /// Non-empty buckets needed in each arm before a verdict (at least 2 are always
    /// needed, at most [`BUCKETS`] can be asked for).
    pub min_buckets: usize,
}

impl Default for UserCompareConfig {
    /// 95%, tuned for 1000 effective pairs, 100 observations and 10 buckets per arm.
    fn default() -> Self {
        UserCompareConfig {
            boundary: Boundary::default(),
            min_samples: DEFAULT_MIN_SAMPLES,
            min_buckets: DEFAULT_MIN_BUCKETS,
        }
    }
}

/// Estimate and intervals for `mean(arm) − mean(control)` by user (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UserInterval {
    /// `R_arm − R_control`.
    pub estimate: f64,
    /// Standard error of the estimate: `√W`, from the floored jackknife variances.
    pub std_error: f64,
    /// The delta method's standard error without the floor, for reference.
    pub delta_std_error: f64,
    /// Effective number of (arm, control) pairs of independent observations.
    pub effective_n: f64,
    /// Welch–Satterthwaite degrees of freedom from the Kish effective bucket counts.
    pub degrees_of_freedom: f64,
    /// Standard errors either side of the estimate in the confidence sequence.
    pub multiplier: f64,
    /// Lower end of the anytime-valid confidence sequence.
    pub ci_low: f64,
    /// Upper end of the anytime-valid confidence sequence.
    pub ci_high: f64,
    /// Lower end of the fixed-horizon t-interval (valid for one pre-planned look only).
    pub fixed_low: f64,
    /// Upper end of the fixed-horizon t-interval.
    pub fixed_high: f64,
    /// Whether the arm's variance was raised to the pooled per-observation variance.
    pub floored_arm: bool,
    /// Whether the control's variance was raised to the pooled per-observation variance.
    pub floored_control: bool,
}

impl UserInterval {
    /// Whether the confidence sequence excludes zero (a difference is established).
    pub fn excludes_zero(&self) -> bool {
        self.ci_low > 0.0 || self.ci_high < 0.0
    }
}

/// One arm's floored variance of its mean, its floored per-observation variance, its
/// degrees of freedom and whether the floor applied. The floor is the pooled
/// per-observation variance, or the arm's own `minimum` when that is larger.
fn floored(
    e: &RatioEstimate,
    jackknife: f64,
    pooled_unit: f64,
    minimum: f64,
    pooled_df: f64,
) -> (f64, f64, f64, bool) {
    let pooled_unit = pooled_unit.max(minimum);
    let n = e.n as f64;
    let v = jackknife * n; // per-observation, design effect included
    let s = e.unit_variance.unwrap_or(0.0);
    let own_df = (e.effective_buckets - 1.0).max(1.0);
    if s >= pooled_unit {
        (v / n, s, own_df, false)
    } else if s > 0.0 && v > 0.0 {
        (v * (pooled_unit / s) / n, pooled_unit, own_df, true)
    } else {
        (v.max(pooled_unit) / n, pooled_unit, pooled_df, true)
    }
}

/// The interval for `arm − control` by user; `None` unless each arm has two non-empty
/// buckets.
pub fn user_difference(
    arm: &BucketSums,
    control: &BucketSums,
    boundary: &Boundary,
) -> Option<UserInterval> {
    user_interval(&arm.estimate()?, &control.estimate()?, boundary)
}

/// [`user_difference`] from the two arms' estimates.
pub fn user_interval(
    a: &RatioEstimate,
    c: &RatioEstimate,
    boundary: &Boundary,
) -> Option<UserInterval> {
    user_interval_with_minimum(a, c, boundary, [0.0, 0.0])
}

/// The per-observation variance below which a proportion's arm that has seen no event
/// (or only events) is never taken to be: `p̃(1 − p̃)` with `p̃ = (x + ½)/(n + 1)`
/// (Jeffreys' pseudo-counts); 0 for an arm that has seen both outcomes (its own
/// variance is then not degenerate). An arm with 0 errors in 200 requests keeps the
/// uncertainty of its own count — about ±1 point, not `[0, 0]` — whatever the other
/// arm saw, so "not worse" needs evidence from the arm itself.
pub fn proportion_minimum(e: &RatioEstimate) -> f64 {
    let n = e.n as f64;
    let x = (e.mean * n).round();
    if x > 0.0 && x < n {
        return 0.0;
    }
    let p = (x + 0.5) / (n + 1.0);
    p * (1.0 - p)
}

/// [`user_interval`] with each arm's per-observation variance floored at least at
/// `minimum` (arm, control), e.g. [`proportion_minimum`] for a proportion.
pub fn user_interval_with_minimum(
    a: &RatioEstimate,
    c: &RatioEstimate,
    boundary: &Boundary,
    minimum: [f64; 2],
) -> Option<UserInterval> {
    let (jk_a, jk_c) = (a.jackknife_variance?, c.jackknife_variance?);
    let (n_a, n_c) = (a.n as f64, c.n as f64);
    // The pooled per-observation variance (the two-sample t-test's, within arms) and the
    // pooled Kish bucket count.
    let (s_a, s_c) = (a.unit_variance?, c.unit_variance?);
    let pooled_unit = ((n_a - 1.0) * s_a + (n_c - 1.0) * s_c) / (n_a + n_c - 2.0);
    let m_sq = n_a * n_a / a.effective_buckets + n_c * n_c / c.effective_buckets;
    let pooled_df = ((n_a + n_c).powi(2) / m_sq - 1.0).max(1.0);
    let (w_a, u_a, df_a, floored_arm) = floored(a, jk_a, pooled_unit, minimum[0], pooled_df);
    let (w_c, u_c, df_c, floored_control) = floored(c, jk_c, pooled_unit, minimum[1], pooled_df);
    let w = w_a + w_c;
    let std_error = w.sqrt();
    let delta_std_error =
        (a.delta_variance.unwrap_or(0.0) + c.delta_variance.unwrap_or(0.0)).sqrt();
    let effective_n = if w > 0.0 && u_a + u_c > 0.0 {
        (u_a + u_c) / w
    } else {
        n_a.min(n_c)
    };
    let degrees_of_freedom = if w > 0.0 {
        w * w / (w_a * w_a / df_a + w_c * w_c / df_c)
    } else {
        df_a.min(df_c)
    };
    let multiplier =
        student_t_matching_normal(boundary.multiplier(effective_n), degrees_of_freedom);
    let fixed_multiplier = student_t_isf(boundary.alpha() / 2.0, degrees_of_freedom);
    let estimate = a.mean - c.mean;
    let (half, fixed_half) = (std_error * multiplier, std_error * fixed_multiplier);
    Some(UserInterval {
        estimate,
        std_error,
        delta_std_error,
        effective_n,
        degrees_of_freedom,
        multiplier,
        ci_low: estimate - half,
        ci_high: estimate + half,
        fixed_low: estimate - fixed_half,
        fixed_high: estimate + fixed_half,
        floored_arm,
        floored_control,
    })
}

/// A comparison by user: the common [`Comparison`] (serialized flat, so a view of it has
/// the same fields as the request-level one) plus the figures behind it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UserComparison {
    /// Estimate, intervals, observation counts and verdict, as for request-level
    /// comparisons, so guardrails ([`crate::guardrail::trips`]), non-inferiority and
    /// views work unchanged.
    #[serde(flatten)]
    pub comparison: Comparison,
    /// The interval's details; `None` until each arm has two non-empty buckets.
    pub interval: Option<UserInterval>,
    /// The arm's estimate (mean, variances, buckets, design effect); `None` while empty.
    pub arm: Option<RatioEstimate>,
    /// The control's estimate; `None` while empty.
    pub control: Option<RatioEstimate>,
}

/// Compares `arm` with `control` on `metric` by user.
pub fn compare_users(
    metric: Metric,
    arm: &BucketSums,
    control: &BucketSums,
    config: &UserCompareConfig,
) -> UserComparison {
    let (a, c) = (arm.estimate(), control.estimate());
    let proportion = matches!(metric, Metric::ErrorRate | Metric::AccurateShare);
    let interval = a.zip(c).and_then(|(a, c)| {
        let minimum = if proportion {
            [proportion_minimum(&a), proportion_minimum(&c)]
        } else {
            [0.0, 0.0]
        };
        user_interval_with_minimum(&a, &c, &config.boundary, minimum)
    });
    let count = |e: &Option<RatioEstimate>| e.map_or(0, |e| e.n);
    let buckets = |e: &Option<RatioEstimate>| e.map_or(0, |e| e.buckets);
    let (n_arm, n_control) = (count(&a), count(&c));
    let needed = config.min_buckets.clamp(2, BUCKETS);
    let verdict = if buckets(&a) < needed || buckets(&c) < needed {
        Verdict::NotEnoughData
    } else {
        Verdict::decide(
            metric,
            interval.map(|i| (i.ci_low, i.ci_high)),
            n_arm,
            n_control,
            config.min_samples,
        )
    };
    UserComparison {
        comparison: Comparison {
            metric,
            estimate: a.zip(c).map(|(a, c)| a.mean - c.mean),
            ci_low: interval.map(|i| i.ci_low),
            ci_high: interval.map(|i| i.ci_high),
            fixed_low: interval.map(|i| i.fixed_low),
            fixed_high: interval.map(|i| i.fixed_high),
            n_arm,
            n_control,
            verdict,
        },
        interval,
        arm: a,
        control: c,
    }
}

/// Bucket sums of one arm for every metric of the closed set: the by-user counterpart of
/// [`ArmStats`](crate::ArmStats). 10,280 bytes (5 × 2,056); a few additions per request
/// or feedback, no allocation. Keep one per worker thread and [`UserArmStats::merge`]
/// them to read; export each bucket's sums as counters and rebuild with
/// [`BucketSums::add_bucket`] to merge replicas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserArmStats {
    /// 5xx answers (1) and other answers (0) per client-visible request (`error_rate`).
    pub errors: BucketSums,
    /// Request latency in seconds (`latency_mean_seconds`).
    pub latency_seconds: BucketSums,
    /// `absolute_error` of feedback carrying ground truth (`absolute_error`).
    pub absolute_error: BucketSums,
    /// Feedback ratings (`rating`).
    pub rating: BucketSums,
    /// Accuracy feedback: 1 for `accurate`, 0 for `too_high` or `too_low`
    /// (`accurate_share`).
    pub accuracy: BucketSums,
}

impl UserArmStats {
    /// No observations.
    pub const fn new() -> Self {
        UserArmStats {
            errors: BucketSums::new(),
            latency_seconds: BucketSums::new(),
            absolute_error: BucketSums::new(),
            rating: BucketSums::new(),
            accuracy: BucketSums::new(),
        }
    }

    /// Records one client-visible answer of a user in `bucket`: its HTTP status (5xx
    /// counts as an error) and its latency in seconds.
    #[inline]
    pub fn record_response(&mut self, bucket: usize, status: u16, latency_seconds: f64) {
        self.errors.push_bool(bucket, status >= 500);
        self.latency_seconds.push(bucket, latency_seconds);
    }

    /// Records a feedback rating of a user in `bucket`.
    #[inline]
    pub fn record_rating(&mut self, bucket: usize, rating: f64) {
        self.rating.push(bucket, rating);
    }

    /// Records the `absolute_error` of feedback with `actual` from a user in `bucket`.
    #[inline]
    pub fn record_absolute_error(&mut self, bucket: usize, absolute_error: f64) {
        self.absolute_error.push(bucket, absolute_error);
    }

    /// Records accuracy feedback of a user in `bucket`: `true` for `accurate`, `false`
    /// for `too_high` or `too_low`.
    #[inline]
    pub fn record_accuracy(&mut self, bucket: usize, accurate: bool) {
        self.accuracy.push_bool(bucket, accurate);
    }

    /// Adds every observation of `other` (element-wise addition).
    pub fn merge(&mut self, other: &UserArmStats) {
        for metric in Metric::ALL {
            self.sums_mut(metric).merge(other.sums(metric));
        }
    }

    /// The bucket sums of `metric`.
    pub fn sums(&self, metric: Metric) -> &BucketSums {
        match metric {
            Metric::ErrorRate => &self.errors,
            Metric::LatencyMeanSeconds => &self.latency_seconds,
            Metric::AbsoluteError => &self.absolute_error,
            Metric::Rating => &self.rating,
            Metric::AccurateShare => &self.accuracy,
        }
    }

    /// The bucket sums of `metric`, mutably (to rebuild from exported counters).
    pub fn sums_mut(&mut self, metric: Metric) -> &mut BucketSums {
        match metric {
            Metric::ErrorRate => &mut self.errors,
            Metric::LatencyMeanSeconds => &mut self.latency_seconds,
            Metric::AbsoluteError => &mut self.absolute_error,
            Metric::Rating => &mut self.rating,
            Metric::AccurateShare => &mut self.accuracy,
        }
    }

    /// The arm's figure for `metric` (a rate or a mean per observation); `None` without
    /// observations.
    pub fn value(&self, metric: Metric) -> Option<f64> {
        let sums = self.sums(metric);
        let n = sums.count();
        (n > 0).then(|| sums.sum() / n as f64)
    }
}

/// Compares `arm` with `control` by user on every metric, in [`Metric::ALL`] order.
pub fn compare_user_arms(
    arm: &UserArmStats,
    control: &UserArmStats,
    config: &UserCompareConfig,
) -> [UserComparison; 5] {
    Metric::ALL.map(|metric| compare_users(metric, arm.sums(metric), control.sums(metric), config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comparison::{compare, CompareConfig};
    use crate::moments::Moments;

    /// `n` observations drawn (by a fixed pseudo-random sequence) from `values`, user `i`
    /// in bucket `i % buckets`.
    fn arm(values: &[f64], n: usize, buckets: usize) -> (BucketSums, Moments) {
        let mut sums = BucketSums::new();
        let mut moments = Moments::new();
        let mut state = 0x2545_F491_4F6C_DD1Du64 ^ values.len() as u64;
        for i in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = values[(state >> 33) as usize % values.len()];
            sums.push(i % buckets, x);
            moments.push(x);
        }
        (sums, moments)
    }

    #[test]
    fn a_proportion_without_events_in_either_arm_keeps_its_own_uncertainty() {
        // 0 errors in 200 candidate requests and in 20,000 control requests: the pooled
        // variance is 0, yet 0 of 200 still allows about a 1.5% error rate. The interval
        // must say so, not collapse to [0, 0] (which would show "not worse than +1
        // point" on no evidence).
        let (a, _) = arm(&[0.0], 200, 100);
        let (c, _) = arm(&[0.0], 20_000, 128);
        let u = compare_users(Metric::ErrorRate, &a, &c, &UserCompareConfig::default());
        let i = u.interval.unwrap_or_else(|| unreachable!());
        assert!(i.floored_arm, "{i:?}");
        assert!(
            i.ci_high > 0.005,
            "0 of 200 is not evidence of < 0.5 points: {i:?}"
        );
        // With 20,000 clean requests on each side the interval is narrow again.
        let (big, _) = arm(&[0.0], 20_000, 128);
        let u = compare_users(Metric::ErrorRate, &big, &c, &UserCompareConfig::default());
        let i = u.interval.unwrap_or_else(|| unreachable!());
        assert!(i.ci_high < 0.001, "{i:?}");
        // A mean is not a proportion: no such floor.
        let u = compare_users(Metric::Rating, &a, &c, &UserCompareConfig::default());
        assert_eq!(u.interval.map(|i| i.std_error), Some(0.0));
    }

    #[test]
    fn independent_users_match_the_request_level_sequence() {
        // One observation per bucket-slot, values unrelated to buckets: the by-user
        // interval is close to the request-level one (t with ~127 df, jackknife ≈ s²/n).
        let (a, ma) = arm(&[0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0], 12_800, 128);
        let (c, mc) = arm(&[0.0, 1.0, 0.0, 1.0, 0.0], 12_800, 128);
        let u = compare_users(Metric::AccurateShare, &a, &c, &UserCompareConfig::default());
        let r = compare(Metric::AccurateShare, &ma, &mc, &CompareConfig::default());
        let (ui, rl) = (
            u.interval.unwrap_or_else(|| unreachable!()),
            r.ci_low.unwrap_or(0.0),
        );
        assert!((ui.estimate - r.estimate.unwrap_or(0.0)).abs() < 1e-12);
        let (uw, rw) = (ui.ci_high - ui.ci_low, r.ci_high.unwrap_or(0.0) - rl);
        assert!((uw / rw - 1.0).abs() < 0.1, "by user {uw}, by request {rw}");
        assert!(ui.degrees_of_freedom > 100.0, "{}", ui.degrees_of_freedom);
        assert_eq!(u.comparison.verdict, r.verdict);
        assert_eq!(u.comparison.n_arm, 12_800);
    }

    #[test]
    fn an_arm_without_events_gets_the_pooled_variance() {
        // 0 errors in 300 vs 27 in 2700, spread over buckets: without the floor the
        // candidate would have zero variance and read `better`.
        let mut a = BucketSums::new();
        for i in 0..300 {
            a.push_bool(i, false);
        }
        let mut c = BucketSums::new();
        for i in 0..2700 {
            c.push_bool(i * 7, i % 100 == 0);
        }
        let u = compare_users(Metric::ErrorRate, &a, &c, &UserCompareConfig::default());
        let i = u.interval.unwrap_or_else(|| unreachable!());
        assert!(i.floored_arm && !i.floored_control);
        assert_eq!(u.comparison.verdict, Verdict::NoDifferenceYet);
        // Pooled within arms: (299·0 + 2699·s²_c) / 2998, s²_c = (27 − 2700·0.01²)/2699.
        let pooled = (27.0 - 0.27) / 2998.0;
        let jk_c = u.control.and_then(|e| e.jackknife_variance).unwrap_or(0.0);
        assert!((i.std_error.powi(2) - (pooled / 300.0 + jk_c)).abs() < 1e-15);
    }

    #[test]
    fn one_heavy_bucket_means_few_degrees_of_freedom() {
        let mut even = BucketSums::new();
        let mut skewed = BucketSums::new();
        for i in 0..6400 {
            let x = f64::from(u8::from(i % 3 == 0));
            even.push(i % 128, x);
            // Half of the observations in bucket 0.
            skewed.push(if i % 2 == 0 { 0 } else { i % 128 }, x);
        }
        let cfg = UserCompareConfig::default();
        let e = compare_users(Metric::AccurateShare, &even, &even, &cfg);
        let s = compare_users(Metric::AccurateShare, &skewed, &skewed, &cfg);
        let (ei, si) = (
            e.interval.unwrap_or_else(|| unreachable!()),
            s.interval.unwrap_or_else(|| unreachable!()),
        );
        assert!(ei.degrees_of_freedom > 2.0 * si.degrees_of_freedom);
        assert!(si.degrees_of_freedom < 8.0, "{}", si.degrees_of_freedom);
        assert!(si.multiplier > ei.multiplier);
    }

    #[test]
    fn gates_on_samples_and_buckets() {
        let (a, _) = arm(&[1.0, 2.0, 3.0], 1000, 9);
        let (c, _) = arm(&[5.0, 6.0, 7.0], 1000, 9);
        let cfg = UserCompareConfig::default();
        let u = compare_users(Metric::Rating, &a, &c, &cfg);
        assert_eq!(u.comparison.verdict, Verdict::NotEnoughData);
        assert!(u.interval.is_some());
        let loose = UserCompareConfig {
            min_buckets: 9,
            ..cfg
        };
        assert_eq!(
            compare_users(Metric::Rating, &a, &c, &loose)
                .comparison
                .verdict,
            Verdict::Worse
        );
        let empty = compare_users(Metric::Rating, &BucketSums::new(), &c, &cfg);
        assert_eq!(
            (
                empty.comparison.estimate,
                empty.interval,
                empty.comparison.verdict
            ),
            (None, None, Verdict::NotEnoughData)
        );
        let json = serde_json::to_value(u).unwrap_or_default();
        assert_eq!(json["metric"], "rating");
        assert_eq!(json["verdict"], "not_enough_data");
        assert!(json["interval"]["degrees_of_freedom"].is_number());
    }

    #[test]
    fn arm_stats_route_and_merge() {
        let mut a = UserArmStats::new();
        a.record_response(3, 200, 0.010);
        a.record_response(4, 503, 0.030);
        a.record_rating(3, 4.0);
        a.record_absolute_error(3, 0.5);
        a.record_accuracy(4, true);
        a.record_accuracy(5, false);
        let mut b = UserArmStats::new();
        b.merge(&a);
        b.merge(&a);
        assert_eq!(b.sums(Metric::ErrorRate).count(), 4);
        assert_eq!(b.value(Metric::ErrorRate), Some(0.5));
        assert!((b.value(Metric::LatencyMeanSeconds).unwrap_or(0.0) - 0.02).abs() < 1e-15);
        assert_eq!(b.value(Metric::AccurateShare), Some(0.5));
        assert_eq!(b.sums(Metric::Rating).bucket(3), (8.0, 2));
        assert_eq!(b.value(Metric::AbsoluteError), Some(0.5));
        let comparisons = compare_user_arms(&b, &a, &UserCompareConfig::default());
        let metrics: Vec<Metric> = comparisons.iter().map(|c| c.comparison.metric).collect();
        assert_eq!(metrics, Metric::ALL);
        assert_eq!(std::mem::size_of::<UserArmStats>(), 5 * (16 * BUCKETS + 8));
    }
}
