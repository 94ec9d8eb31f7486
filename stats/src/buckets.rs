//! Mergeable user-level statistics: per-bucket sums of one metric in one arm, and the
//! delta-method and jackknife variances of a ratio of means over those buckets.
//!
//! # Why buckets
//! The experiment randomises *users*, and one user's requests are correlated (a user with
//! a flaky network sees many 5xx, a user on a slow device many slow answers). Treating
//! requests as independent understates the variance by the design effect
//! `≈ 1 + (Σm²/Σm − 1)·ICC`, which grows with the horizon when heavy users return, so a
//! per-request confidence sequence ends in a false verdict more and more often (measured:
//! 8–90% of A/A experiments). The unit of analysis must be the user.
//!
//! Keeping one record per user is neither bounded nor mergeable across router replicas.
//! Instead every user is hashed into one of [`BUCKETS`] buckets by a function of the user
//! key alone (the router computes it; any hash independent of the assignment hash), and
//! each arm keeps, per bucket `b`, the sum `S_b` of the metric's values and the number
//! `M_b` of observations. A user lies in exactly one bucket, so buckets are independent
//! clusters of whole users; the state is a handful of sums that add across threads,
//! processes and replicas (`merge` is element-wise addition), and N replicas' states sum
//! to the cluster's (exactly for counts and for binary metrics' sums, which are integers
//! below 2⁵³; to the last bit of rounding for the sums of real values).
//!
//! # The estimator
//! An arm's figure is the ratio of means `R = ΣS_b / ΣM_b` (the per-request mean). Over
//! its `K` non-empty buckets, with `M̄ = ΣM_b / K` and sample (co)variances `s²` with
//! `K − 1` in the denominator, the delta method gives (Deng, Knoblich & Lu 2018,
//! "Applying the delta method in metric analytics", §3)
//!
//! ```text
//! Var(R) ≈ (s_S² − 2R·s_SM + R²·s_M²) / (K·M̄²)  =  K/(K − 1) · Σ(S_b − R·M_b)² / (ΣM_b)².
//! ```
//!
//! The right-hand form (the same quantity: `Σ(S_b − R·M_b) = 0`) is what is computed, in
//! two passes, so latency sums around 0.05 s lose no digits to cancellation. The
//! leave-one-bucket-out jackknife (`(K − 1)/K · Σ(R_(b) − R̄)²`) is computed beside it in
//! the same pass ([`RatioEstimate::jackknife_variance`]); it is the delta method with
//! each residual divided by `1 − M_b/ΣM_b`, and it is what the comparisons use
//! ([`crate::user_comparison`] explains why: one heavy user's bucket makes the delta
//! method understate the variance up to threefold).
//!
//! Memory: 16 bytes per bucket (an `f64` sum and a `u64` count) plus 8 for the arm's sum
//! of squares, so 2,056 bytes per arm and metric at 128 buckets; an update is three
//! additions and one multiplication, with no allocation and no lock.

/// Number of user buckets. Fixed (it is part of the exported state: `bucket` labels
/// `0..128`), a power of two, and at least 64 so that the variance estimate has enough
/// degrees of freedom (127 per arm when every bucket is used).
pub const BUCKETS: usize = 128;

/// The bucket of a user from a 64-bit hash of their key: `hash mod BUCKETS` (its low 7
/// bits). The hash must be a function of the key alone, the same on every replica, and
/// independent of the assignment hash (use another seed), so that each arm's users spread
/// evenly over the buckets.
pub const fn bucket_of(hash: u64) -> usize {
    (hash % BUCKETS as u64) as usize
}

/// Per-bucket sums of one metric in one arm: `S_b` (sum of values) and `M_b` (number of
/// observations) for every bucket, and the arm's sum of squared values (for the
/// per-observation variance, hence the effective sample size and the design effect).
///
/// Update with [`BucketSums::push`] (or [`BucketSums::push_bool`] for a binary metric),
/// combine with [`BucketSums::merge`], read with [`BucketSums::estimate`].
#[derive(Clone, Debug, PartialEq)]
pub struct BucketSums {
    sums: [f64; BUCKETS],
    counts: [u64; BUCKETS],
    sum_sq: f64,
}

impl Default for BucketSums {
    fn default() -> Self {
        BucketSums::new()
    }
}

impl BucketSums {
    /// No observations.
    pub const fn new() -> Self {
        BucketSums {
            sums: [0.0; BUCKETS],
            counts: [0; BUCKETS],
            sum_sq: 0.0,
        }
    }

    /// Adds observation `x` of a user in `bucket` (taken modulo [`BUCKETS`]). Non-finite
    /// values are ignored, since one of them would poison every later figure.
    #[inline]
    pub fn push(&mut self, bucket: usize, x: f64) {
        if !x.is_finite() {
            return;
        }
        let b = bucket % BUCKETS;
        self.sums[b] += x;
        self.counts[b] += 1;
        self.sum_sq += x * x;
    }

    /// Adds a binary observation (1 for `success`, 0 otherwise) of a user in `bucket`.
    #[inline]
    pub fn push_bool(&mut self, bucket: usize, success: bool) {
        self.push(bucket, f64::from(u8::from(success)));
    }

    /// Adds `count` observations summing to `sum` to `bucket` (taken modulo
    /// [`BUCKETS`]): how a reader rebuilds the state from exported per-bucket counters.
    /// Non-finite sums are ignored.
    pub fn add_bucket(&mut self, bucket: usize, sum: f64, count: u64) {
        if sum.is_finite() {
            let b = bucket % BUCKETS;
            self.sums[b] += sum;
            self.counts[b] += count;
        }
    }

    /// Adds `sum_sq` to the arm's sum of squared values (the counterpart of
    /// [`BucketSums::add_bucket`]). For a binary metric it equals the sum of values.
    pub fn add_sum_sq(&mut self, sum_sq: f64) {
        if sum_sq.is_finite() {
            self.sum_sq += sum_sq;
        }
    }

    /// Adds every observation of `other` (element-wise addition).
    pub fn merge(&mut self, other: &BucketSums) {
        for (s, o) in self.sums.iter_mut().zip(&other.sums) {
            *s += o;
        }
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.sum_sq += other.sum_sq;
    }

    /// `(S_b, M_b)` of bucket `bucket` (taken modulo [`BUCKETS`]).
    pub fn bucket(&self, bucket: usize) -> (f64, u64) {
        let b = bucket % BUCKETS;
        (self.sums[b], self.counts[b])
    }

    /// Every bucket's `(S_b, M_b)`, in bucket order (for export).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + Clone + '_ {
        self.sums.iter().copied().zip(self.counts.iter().copied())
    }

    /// Number of observations, `ΣM_b`.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the values, `ΣS_b`.
    pub fn sum(&self) -> f64 {
        self.sums.iter().sum()
    }

    /// Sum of the squared values.
    pub fn sum_sq(&self) -> f64 {
        self.sum_sq
    }

    /// Number of buckets with at least one observation, `K`.
    pub fn nonempty_buckets(&self) -> usize {
        self.counts.iter().filter(|&&m| m > 0).count()
    }

    /// The ratio of means and its variances; `None` without observations.
    pub fn estimate(&self) -> Option<RatioEstimate> {
        RatioEstimate::from_buckets(self.buckets(), self.sum_sq)
    }

    /// The estimate for the union of `self`'s and `other`'s buckets, each non-empty bucket
    /// of either a unit of its own (buckets of different arms hold different users): the
    /// figure both arms share under the null hypothesis.
    pub fn pooled_estimate(&self, other: &BucketSums) -> Option<RatioEstimate> {
        RatioEstimate::from_buckets(
            self.buckets().chain(other.buckets()),
            self.sum_sq + other.sum_sq,
        )
    }
}

/// The ratio-of-means estimate of one arm (or of a pool of arms) from bucket sums.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RatioEstimate {
    /// Observations, `ΣM_b`.
    pub n: u64,
    /// Non-empty buckets (units), `K`.
    pub buckets: usize,
    /// `R = ΣS_b / ΣM_b`, the mean per observation.
    pub mean: f64,
    /// The delta-method variance of `R` over buckets, `K/(K − 1) · Σ(S_b − R·M_b)² /
    /// (ΣM_b)²`; `None` below two non-empty buckets.
    pub delta_variance: Option<f64>,
    /// The leave-one-bucket-out jackknife variance of `R`, `(K − 1)/K · Σ(R_(b) − R̄)²`
    /// with `R_(b)` the ratio without bucket `b` and `R̄` their mean; `None` below two
    /// non-empty buckets. Since `R_(b) − R = −(S_b − R·M_b) / (ΣM − M_b)`, it is the delta
    /// method with each residual divided by `1 − h_b`, `h_b = M_b/ΣM` (the HC3 analogue of
    /// the delta method's HC1): larger when one bucket carries much of the weight.
    pub jackknife_variance: Option<f64>,
    /// The per-observation variance, treating observations as independent
    /// (`(Σx² − n·R²)/(n − 1)`, clamped at 0); `None` below two observations.
    pub unit_variance: Option<f64>,
    /// The Kish effective number of buckets, `(ΣM_b)² / ΣM_b²` (equals `K` when the
    /// buckets are of equal size, approaches 1 when one bucket holds nearly everything).
    pub effective_buckets: f64,
}

impl RatioEstimate {
    /// The estimate from `(S_b, M_b)` pairs (empty ones are skipped) and the sum of squared
    /// values; `None` without observations. Two passes: totals, then the residuals
    /// `e_b = S_b − R·M_b` and the jackknife deviations `R_(b) − R = −e_b/(ΣM − M_b)`, so
    /// no digits are lost to cancellation.
    pub fn from_buckets(
        buckets: impl Iterator<Item = (f64, u64)> + Clone,
        sum_sq: f64,
    ) -> Option<RatioEstimate> {
        let (mut k, mut n, mut sum, mut m_sq) = (0usize, 0u64, 0.0f64, 0.0f64);
        for (s_b, m_b) in buckets.clone().filter(|&(_, m)| m > 0) {
            k += 1;
            n += m_b;
            sum += s_b;
            m_sq += (m_b as f64) * (m_b as f64);
        }
        if n == 0 {
            return None;
        }
        let total = n as f64;
        let mean = sum / total;
        let (mut residual_sq, mut loo_sum, mut loo_sq) = (0.0f64, 0.0f64, 0.0f64);
        if k >= 2 {
            for (s_b, m_b) in buckets.filter(|&(_, m)| m > 0) {
                let m = m_b as f64;
                let e = s_b - mean * m;
                residual_sq += e * e;
                let d = -e / (total - m);
                loo_sum += d;
                loo_sq += d * d;
            }
        }
        let kf = k as f64;
        let two = k >= 2;
        Some(RatioEstimate {
            n,
            buckets: k,
            mean,
            delta_variance: two.then(|| kf / (kf - 1.0) * residual_sq / (total * total)),
            jackknife_variance: two
                .then(|| ((kf - 1.0) / kf * (loo_sq - loo_sum * loo_sum / kf)).max(0.0)),
            unit_variance: (n >= 2)
                .then(|| ((sum_sq - total * mean * mean) / (total - 1.0)).max(0.0)),
            effective_buckets: total * total / m_sq,
        })
    }

    /// The design effect: the bucket (delta-method) variance of the mean over the
    /// variance it would have if observations were independent, `Var(R)·n / σ²`; `None`
    /// when either is missing or `σ² = 0`.
    pub fn design_effect(&self) -> Option<f64> {
        let (var, unit) = (self.delta_variance?, self.unit_variance?);
        (unit > 0.0).then(|| var * self.n as f64 / unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
    }

    #[test]
    fn push_and_merge_add_exactly() {
        let mut a = BucketSums::new();
        let mut b = BucketSums::new();
        let mut whole = BucketSums::new();
        for i in 0..1000usize {
            let x = (i % 7) as f64 * 0.5;
            let bucket = (i * 31) % 200; // wraps modulo BUCKETS
            if i % 3 == 0 {
                a.push(bucket, x);
            } else {
                b.push(bucket, x);
            }
            whole.push(bucket, x);
        }
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(a.count(), 1000);
        assert_eq!(a.bucket(BUCKETS + 3), a.bucket(3));
        a.push(0, f64::NAN);
        assert_eq!(a.count(), 1000);
    }

    #[test]
    fn rebuilding_from_exported_sums_is_the_same_state() {
        let mut a = BucketSums::new();
        for i in 0..500usize {
            a.push_bool(i * 7, i % 11 == 0);
        }
        let mut rebuilt = BucketSums::new();
        for (b, (s, m)) in a.buckets().enumerate() {
            rebuilt.add_bucket(b, s, m);
        }
        rebuilt.add_sum_sq(a.sum_sq());
        assert_eq!(rebuilt, a);
        assert_eq!(a.sum(), a.sum_sq());
    }

    #[test]
    fn delta_and_jackknife_match_direct_formulas() {
        // Three buckets: (S, M) = (3, 2), (1, 4), (6, 3).
        let mut a = BucketSums::new();
        for (b, xs) in [
            (5usize, &[1.0, 2.0][..]),
            (9, &[0.0, 1.0, 0.0, 0.0]),
            (17, &[2.0, 2.0, 2.0]),
        ] {
            for &x in xs {
                a.push(b, x);
            }
        }
        let e = a.estimate().unwrap_or_else(|| unreachable!());
        assert_eq!((e.n, e.buckets), (9, 3));
        let r = 10.0 / 9.0;
        assert!(close(e.mean, r));
        // The covariance form of Deng et al.
        let (s, m) = ([3.0, 1.0, 6.0], [2.0, 4.0, 3.0]);
        let mean = |v: &[f64; 3]| v.iter().sum::<f64>() / 3.0;
        let cov = |x: &[f64; 3], y: &[f64; 3]| {
            let (mx, my) = (mean(x), mean(y));
            x.iter()
                .zip(y)
                .map(|(a, b)| (a - mx) * (b - my))
                .sum::<f64>()
                / 2.0
        };
        let mbar = mean(&m);
        let delta =
            (cov(&s, &s) - 2.0 * r * cov(&s, &m) + r * r * cov(&m, &m)) / (3.0 * mbar * mbar);
        assert!(
            close(e.delta_variance.unwrap_or(f64::NAN), delta),
            "{:?} vs {delta}",
            e.delta_variance
        );
        let loo = [7.0 / 7.0, 9.0 / 5.0, 4.0 / 6.0];
        let loo_mean = mean(&loo);
        let jk = 2.0 / 3.0 * loo.iter().map(|x| (x - loo_mean).powi(2)).sum::<f64>();
        assert!(close(e.jackknife_variance.unwrap_or(f64::NAN), jk));
        let xs = [1.0, 2.0, 0.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0];
        let unit = xs.iter().map(|x| (x - r).powi(2)).sum::<f64>() / 8.0;
        assert!(close(e.unit_variance.unwrap_or(f64::NAN), unit));
        assert!(close(e.effective_buckets, 81.0 / 29.0));
    }

    #[test]
    fn one_bucket_has_no_variance_and_empty_has_no_estimate() {
        assert!(BucketSums::new().estimate().is_none());
        let mut a = BucketSums::new();
        a.push(3, 1.0);
        a.push(3, 2.0);
        let e = a.estimate().unwrap_or_else(|| unreachable!());
        assert_eq!(
            (e.delta_variance, e.jackknife_variance, e.buckets),
            (None, None, 1)
        );
        assert!(e.unit_variance.is_some());
    }

    #[test]
    fn one_observation_per_bucket_is_the_independent_variance() {
        // With every observation in a bucket of its own, the delta method is s²/n.
        let mut a = BucketSums::new();
        let xs: Vec<f64> = (0..100).map(|i| ((i * 13) % 17) as f64).collect();
        for (i, &x) in xs.iter().enumerate() {
            a.push(i, x);
        }
        let e = a.estimate().unwrap_or_else(|| unreachable!());
        let unit = e.unit_variance.unwrap_or(f64::NAN);
        assert!(close(e.delta_variance.unwrap_or(f64::NAN), unit / 100.0));
        assert!(close(e.design_effect().unwrap_or(f64::NAN), 1.0));
    }
}
