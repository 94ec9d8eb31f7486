//! Sufficient statistics: [`Moments`] of a real-valued metric and [`Proportion`] of a
//! binary one. Both cost a few arithmetic operations per observation and merge exactly,
//! so a caller may keep one per thread or shard and add them up when it reports.

use serde::{Deserialize, Serialize};

/// Count, mean and centred sum of squares of a stream of real values.
///
/// Updated with Welford's algorithm and merged with Chan et al.'s pairwise formula, so
/// the variance stays accurate when the mean is large compared with the spread (latency
/// in seconds around 0.05 ± 0.001, say), where the textbook `Σx² − (Σx)²/n` loses every
/// significant digit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// No observations.
    pub const fn new() -> Self {
        Moments {
            n: 0,
            mean: 0.0,
            m2: 0.0,
        }
    }

    /// Rebuilds moments from plain sums (`n`, `Σx`, `Σx²`), for callers that keep
    /// counters. Less accurate than [`Moments::push`] when the mean dwarfs the spread; the
    /// centred sum of squares is clamped at zero.
    pub fn from_sums(n: u64, sum: f64, sum_sq: f64) -> Self {
        if n == 0 {
            return Moments::new();
        }
        let mean = sum / n as f64;
        let m2 = (sum_sq - sum * mean).max(0.0);
        Moments { n, mean, m2 }
    }

    /// Adds one observation. Non-finite values (NaN, ±∞) are ignored, since one of them
    /// would poison every later figure.
    pub fn push(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Adds every observation summarised by `other`.
    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        self.mean += delta * nb / n as f64;
        self.m2 += other.m2 + delta * delta * na * nb / n as f64;
        self.n = n;
    }

    /// Number of observations.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Arithmetic mean; `None` without observations.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then_some(self.mean)
    }

    /// Sum of the observations (`n · mean`).
    pub fn sum(&self) -> f64 {
        self.mean * self.n as f64
    }

    /// Sum of the squared observations, `Σx²`.
    pub fn sum_sq(&self) -> f64 {
        self.m2 + self.n as f64 * self.mean * self.mean
    }

    /// Centred sum of squares, `Σ(x − mean)²`.
    pub fn centred_sum_sq(&self) -> f64 {
        self.m2
    }

    /// Sample variance with Bessel's correction (`Σ(x − mean)² / (n − 1)`, NumPy's
    /// `ddof=1`); `None` below two observations.
    pub fn variance(&self) -> Option<f64> {
        (self.n > 1).then(|| self.m2 / (self.n - 1) as f64)
    }

    /// Sample standard deviation, the square root of [`Moments::variance`].
    pub fn std_dev(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }

    /// Root mean square, `sqrt(Σx² / n)`: the RMSE when the observations are errors.
    pub fn root_mean_square(&self) -> Option<f64> {
        (self.n > 0).then(|| (self.sum_sq() / self.n as f64).sqrt())
    }
}

impl FromIterator<f64> for Moments {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        let mut moments = Moments::new();
        for x in iter {
            moments.push(x);
        }
        moments
    }
}

/// Successes out of trials, for a binary metric (a 5xx answer, an `accurate` feedback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proportion {
    /// Trials that were successes (in the metric's sense: a 5xx counts as one for
    /// `error_rate`).
    pub successes: u64,
    /// All trials.
    pub n: u64,
}

impl Proportion {
    /// No trials.
    pub const fn new() -> Self {
        Proportion { successes: 0, n: 0 }
    }

    /// Adds one trial.
    pub fn push(&mut self, success: bool) {
        self.n += 1;
        self.successes += u64::from(success);
    }

    /// Adds every trial of `other`.
    pub fn merge(&mut self, other: &Proportion) {
        self.n += other.n;
        self.successes += other.successes;
    }

    /// Share of successes; `None` without trials.
    pub fn rate(&self) -> Option<f64> {
        (self.n > 0).then(|| self.successes as f64 / self.n as f64)
    }

    /// The same data as 0/1 observations: mean `s/n`, centred sum of squares
    /// `s(n − s)/n`, exactly.
    pub fn moments(&self) -> Moments {
        if self.n == 0 {
            return Moments::new();
        }
        let successes = self.successes.min(self.n);
        let (s, n) = (successes as f64, self.n as f64);
        Moments {
            n: self.n,
            mean: s / n,
            m2: s * (self.n - successes) as f64 / n,
        }
    }
}

impl From<Proportion> for Moments {
    fn from(proportion: Proportion) -> Self {
        proportion.moments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn push_gives_mean_and_unbiased_variance() {
        let m: Moments = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
            .into_iter()
            .collect();
        assert_eq!(m.n(), 8);
        assert!(close(m.mean().unwrap_or(f64::NAN), 5.0));
        assert!(close(m.variance().unwrap_or(f64::NAN), 32.0 / 7.0));
        assert!(close(m.sum(), 40.0));
        assert!(close(m.sum_sq(), 232.0));
        assert!(close(
            m.root_mean_square().unwrap_or(f64::NAN),
            29.0f64.sqrt()
        ));
        assert_eq!(Moments::new().mean(), None);
        let one: Moments = [3.0].into_iter().collect();
        assert_eq!(one.variance(), None);
    }

    #[test]
    fn merge_equals_pushing_everything() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| 1e6 + ((i * 37) % 101) as f64 * 0.01)
            .collect();
        let whole: Moments = xs.iter().copied().collect();
        let mut left: Moments = xs[..313].iter().copied().collect();
        let right: Moments = xs[313..].iter().copied().collect();
        left.merge(&right);
        assert_eq!(left.n(), whole.n());
        assert!(close(
            left.mean().unwrap_or(f64::NAN),
            whole.mean().unwrap_or(0.0)
        ));
        // Both orders round differently at an offset of 1e6; agreement to 1e-9 is
        // what double precision allows here.
        let (merged, pushed) = (
            left.variance().unwrap_or(f64::NAN),
            whole.variance().unwrap_or(0.0),
        );
        assert!(
            (merged - pushed).abs() < 1e-9 * pushed,
            "{merged} vs {pushed}"
        );
        let mut empty = Moments::new();
        empty.merge(&whole);
        assert_eq!(empty, whole);
        let mut same = whole;
        same.merge(&Moments::new());
        assert_eq!(same, whole);
    }

    #[test]
    fn variance_survives_a_large_offset() {
        // Σx² − (Σx)²/n would return garbage here; Welford keeps ~10 digits.
        let m: Moments = (0..10_000).map(|i| 1e9 + (i % 2) as f64).collect();
        assert!((m.variance().unwrap_or(f64::NAN) - 0.250_025).abs() < 1e-6);
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let m: Moments = [1.0, f64::NAN, 3.0, f64::INFINITY].into_iter().collect();
        assert_eq!(m.n(), 2);
        assert!(close(m.mean().unwrap_or(f64::NAN), 2.0));
    }

    #[test]
    fn from_sums_matches_push() {
        let xs = [0.5, 1.5, 2.0, 8.0];
        let pushed: Moments = xs.into_iter().collect();
        let sums = Moments::from_sums(4, xs.iter().sum(), xs.iter().map(|x| x * x).sum());
        assert!(close(
            sums.variance().unwrap_or(f64::NAN),
            pushed.variance().unwrap_or(0.0)
        ));
        assert_eq!(Moments::from_sums(0, 1.0, 1.0), Moments::new());
    }

    #[test]
    fn proportion_is_exact_bernoulli_moments() {
        let mut p = Proportion::new();
        for i in 0..50 {
            p.push(i % 5 == 0);
        }
        let mut q = Proportion::new();
        q.push(true);
        p.merge(&q);
        assert_eq!(
            p,
            Proportion {
                successes: 11,
                n: 51
            }
        );
        assert!(close(p.rate().unwrap_or(f64::NAN), 11.0 / 51.0));
        let pushed: Moments = (0..51).map(|i| f64::from(u8::from(i < 11))).collect();
        let m = Moments::from(p);
        assert_eq!(m.n(), 51);
        assert!(close(
            m.mean().unwrap_or(f64::NAN),
            pushed.mean().unwrap_or(0.0)
        ));
        assert!(close(
            m.variance().unwrap_or(f64::NAN),
            pushed.variance().unwrap_or(0.0)
        ));
        assert_eq!(Proportion::new().rate(), None);
    }
}
