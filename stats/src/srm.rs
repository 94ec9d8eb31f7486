//! Sample ratio mismatch (SRM): are users reaching the arms in the configured shares?
//!
//! # The sequential test
//! Lindon & Malek (2020, "Anytime-valid inference for multinomial count data", NeurIPS
//! 2022), as Optimizely ships it in `ssrm`: under the null the arm counts `x` of `n` users
//! are multinomial with the configured shares `p`; the alternative puts a Dirichlet(α)
//! prior on the shares. The Bayes factor of the two marginal likelihoods is
//!
//! ```text
//! BF(x) = Γ(Σα) / Γ(Σα + n) · Π_i Γ(α_i + x_i) / Γ(α_i)  /  Π_i p_i^{x_i},
//! ```
//!
//! a non-negative martingale under the null, so by Ville's inequality
//! `P(∃n: BF ≥ 1/a) ≤ a` and the running minimum of `1/BF` is an anytime-valid p-value:
//! it may be checked after every user. It is computed in log space with this crate's
//! [`ln_gamma`].
//!
//! The prior is centred on the null, `α_i = k · p_i`, with concentration
//! `k` = [`DEFAULT_CONCENTRATION`] = 10 000, the default of Optimizely's `ssrm`
//! (`dirichlet_concentration=10000`; Lindon's later `savvi` package defaults to 100). The
//! prior standard deviation of a 50% share is then `sqrt(0.25/k)` = 0.5 points, which
//! puts the test's power where SRMs matter — shares off by one to a few points, detected
//! within tens of thousands of users — while gross failures (an arm losing most of its
//! users) still alarm after a few hundred. The alarm threshold is
//! [`ALARM_THRESHOLD`] = 0.001.
//!
//! # Thinned samples
//! The router counts a consistent *sample* of users and halves the sampling fraction when
//! the sample grows too large, so counts may drop. The monitor then continues its Bayes
//! factor on the smaller sample multiplicatively: `BF ← BF_before · BF(after_t) /
//! BF(after_T)`. Under the null the users who arrive later are independent of the past,
//! so this product is still a martingale and the p-value stays anytime-valid (call
//! [`SrmMonitor::thin`] with the counts just before and just after thinning for the exact
//! version; [`SrmMonitor::observe`] applies it with the last observed counts when it sees
//! a count go down).
//!
//! # The fixed-horizon test
//! [`chi_square_p_value`] is Pearson's goodness-of-fit test against the expected counts
//! `n · p_i` (SciPy's `chisquare`), reported for reference: it is valid for one look only.
//!
//! Arms with a zero share take no part, unless they received users: then the mismatch is
//! certain and both p-values are 0.

use serde::Serialize;

use crate::special::{chi_square_sf, ln_gamma};

/// Dirichlet concentration `k` of the alternative's prior, `α_i = k · p_i` (`ssrm`'s
/// default).
pub const DEFAULT_CONCENTRATION: f64 = 10_000.0;

/// p-value below which a sample ratio mismatch is declared.
pub const ALARM_THRESHOLD: f64 = 0.001;

/// Invalid SRM input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SrmError {
    /// No arms were given.
    #[error("an SRM test needs at least one arm")]
    NoArms,
    /// A share is negative, NaN or infinite.
    #[error("share {share} of arm {index} is not a finite non-negative number")]
    BadShare {
        /// Position of the arm.
        index: usize,
        /// The share given.
        share: f64,
    },
    /// Every share is zero.
    #[error("the shares sum to zero")]
    ZeroTotal,
    /// The concentration is not positive and finite.
    #[error("the Dirichlet concentration {0} is not positive and finite")]
    BadConcentration(f64),
    /// Counts were given for a different number of arms than the shares.
    #[error("{got} counts for {expected} arms")]
    LengthMismatch {
        /// Number of arms (shares).
        expected: usize,
        /// Number of counts given.
        got: usize,
    },
}

/// Normalises weights (any non-negative numbers, e.g. 90 and 10) to shares summing to 1.
pub fn normalise_shares(weights: &[f64]) -> Result<Vec<f64>, SrmError> {
    if weights.is_empty() {
        return Err(SrmError::NoArms);
    }
    if let Some((index, &share)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !w.is_finite() || **w < 0.0)
    {
        return Err(SrmError::BadShare { index, share });
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Err(SrmError::ZeroTotal);
    }
    Ok(weights.iter().map(|w| w / total).collect())
}

/// `ln BF` of the Dirichlet–multinomial test for cumulative `counts` against `shares`
/// (normalised, as from [`normalise_shares`]) with concentration `k`: 0 without users,
/// `+∞` when an arm with a zero share has users. Lengths must match (extra entries of
/// the longer slice are ignored).
pub fn log_bayes_factor(counts: &[u64], shares: &[f64], concentration: f64) -> f64 {
    let mut log_bf = 0.0;
    let mut n = 0.0;
    let mut prior_total = 0.0;
    for (&x, &p) in counts.iter().zip(shares) {
        if p <= 0.0 {
            if x > 0 {
                return f64::INFINITY;
            }
            continue;
        }
        let (x, alpha) = (x as f64, concentration * p);
        n += x;
        prior_total += alpha;
        if x > 0.0 {
            log_bf += ln_gamma(alpha + x) - ln_gamma(alpha) - x * p.ln();
        }
    }
    if n == 0.0 {
        return 0.0;
    }
    log_bf + ln_gamma(prior_total) - ln_gamma(prior_total + n)
}

/// Pearson's chi-square goodness-of-fit p-value of `counts` against the expected counts
/// `n · shares` (`scipy.stats.chisquare(counts, n * shares)`), with one degree of freedom
/// fewer than the arms with a positive share. 1 without users or with a single arm; 0
/// when an arm with a zero share has users.
pub fn chi_square_p_value(counts: &[u64], shares: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 1.0;
    }
    let mut statistic = 0.0;
    let mut arms = 0u32;
    for (&x, &p) in counts.iter().zip(shares) {
        if p <= 0.0 {
            if x > 0 {
                return 0.0;
            }
            continue;
        }
        let expected = n as f64 * p;
        let d = x as f64 - expected;
        statistic += d * d / expected;
        arms += 1;
    }
    if arms < 2 {
        return 1.0;
    }
    chi_square_sf(statistic, f64::from(arms - 1))
}

/// One SRM check, as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SrmReport {
    /// Anytime-valid p-value: the running minimum of `1/BF` since the monitor started.
    pub p_value: f64,
    /// Fixed-horizon chi-square p-value of the current counts (reference only).
    pub chi2_p_value: f64,
    /// `p_value < ALARM_THRESHOLD`.
    pub alarm: bool,
    /// `ln BF` now (after any thinning adjustment).
    pub log_bayes_factor: f64,
    /// The counts checked.
    pub observed: Vec<u64>,
    /// Expected counts under the configured shares, `n · p_i`.
    pub expected: Vec<f64>,
}

/// The sequential SRM test as a pure state machine: feed it the cumulative counts per
/// arm whenever convenient, and it keeps the running minimum p-value. One monitor per
/// phase (a change of shares starts a new one).
#[derive(Clone, Debug, PartialEq)]
pub struct SrmMonitor {
    shares: Vec<f64>,
    concentration: f64,
    log_offset: f64,
    last: Vec<u64>,
    min_p: f64,
}

impl SrmMonitor {
    /// A monitor for arms with the given weights (normalised to shares) and the default
    /// concentration.
    pub fn new(weights: &[f64]) -> Result<Self, SrmError> {
        Self::with_concentration(weights, DEFAULT_CONCENTRATION)
    }

    /// A monitor with Dirichlet concentration `k` (`α_i = k · p_i`).
    pub fn with_concentration(weights: &[f64], concentration: f64) -> Result<Self, SrmError> {
        if !(concentration.is_finite() && concentration > 0.0) {
            return Err(SrmError::BadConcentration(concentration));
        }
        let shares = normalise_shares(weights)?;
        let arms = shares.len();
        Ok(SrmMonitor {
            shares,
            concentration,
            log_offset: 0.0,
            last: vec![0; arms],
            min_p: 1.0,
        })
    }

    /// The configured shares, summing to 1.
    pub fn shares(&self) -> &[f64] {
        &self.shares
    }

    /// The Dirichlet concentration `k`.
    pub fn concentration(&self) -> f64 {
        self.concentration
    }

    /// The anytime-valid p-value so far (1 before any observation).
    pub fn p_value(&self) -> f64 {
        self.min_p
    }

    /// Whether the p-value so far is below [`ALARM_THRESHOLD`].
    pub fn alarm(&self) -> bool {
        self.min_p < ALARM_THRESHOLD
    }

    fn check_len(&self, counts: &[u64]) -> Result<(), SrmError> {
        if counts.len() == self.shares.len() {
            Ok(())
        } else {
            Err(SrmError::LengthMismatch {
                expected: self.shares.len(),
                got: counts.len(),
            })
        }
    }

    fn log_bf(&self, counts: &[u64]) -> f64 {
        log_bayes_factor(counts, &self.shares, self.concentration)
    }

    /// Records that the sample was thinned from `before` to `after` counts (both
    /// cumulative, taken at the same moment), continuing the Bayes factor on the thinned
    /// sample.
    pub fn thin(&mut self, before: &[u64], after: &[u64]) -> Result<(), SrmError> {
        self.check_len(before)?;
        self.check_len(after)?;
        let shift = self.log_bf(before) - self.log_bf(after);
        // An infinite Bayes factor (users on a zero-share arm) has already set p = 0.
        if shift.is_finite() {
            self.log_offset += shift;
        }
        self.last = after.to_vec();
        Ok(())
    }

    /// Checks the cumulative `counts` per arm (in the order of the weights) and returns
    /// the report. If a count went down since the last call, the sample is taken to have
    /// been thinned (see the module docs).
    pub fn observe(&mut self, counts: &[u64]) -> Result<SrmReport, SrmError> {
        self.check_len(counts)?;
        if counts
            .iter()
            .zip(&self.last)
            .any(|(now, before)| now < before)
        {
            let before = std::mem::take(&mut self.last);
            self.thin(&before, counts)?;
        }
        let log_bf = self.log_offset + self.log_bf(counts);
        let p_now = if log_bf.is_nan() {
            1.0
        } else {
            (-log_bf).exp().min(1.0)
        };
        self.min_p = self.min_p.min(p_now);
        self.last = counts.to_vec();
        let n: u64 = counts.iter().sum();
        Ok(SrmReport {
            p_value: self.min_p,
            chi2_p_value: chi_square_p_value(counts, &self.shares),
            alarm: self.alarm(),
            log_bayes_factor: log_bf,
            observed: counts.to_vec(),
            expected: self.shares.iter().map(|p| p * n as f64).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_normalised_and_checked() {
        assert_eq!(normalise_shares(&[90.0, 10.0]), Ok(vec![0.9, 0.1]));
        assert_eq!(normalise_shares(&[]), Err(SrmError::NoArms));
        assert_eq!(normalise_shares(&[0.0, 0.0]), Err(SrmError::ZeroTotal));
        assert!(matches!(
            normalise_shares(&[1.0, -1.0]),
            Err(SrmError::BadShare { index: 1, .. })
        ));
        assert!(matches!(
            normalise_shares(&[1.0, f64::NAN]),
            Err(SrmError::BadShare { .. })
        ));
        assert!(SrmMonitor::with_concentration(&[1.0, 1.0], 0.0).is_err());
    }

    #[test]
    fn bayes_factor_matches_a_direct_evaluation() {
        // Two arms, k = 2, p = (1/2, 1/2), x = (3, 1): the Beta(1,1) marginal is
        // 3!·1!/5! = 1/20 per sequence, the null's 1/16, so BF = 16/20.
        let lbf = log_bayes_factor(&[3, 1], &[0.5, 0.5], 2.0);
        assert!((lbf - (0.8f64).ln()).abs() < 1e-13, "{lbf}");
        assert_eq!(log_bayes_factor(&[0, 0], &[0.5, 0.5], 2.0), 0.0);
        assert_eq!(log_bayes_factor(&[1, 2], &[0.0, 1.0], 2.0), f64::INFINITY);
    }

    #[test]
    fn chi_square_matches_scipy() {
        // scipy.stats.chisquare([5100, 4900], [5000, 5000]).pvalue
        let p = chi_square_p_value(&[5100, 4900], &[0.5, 0.5]);
        assert!((p - 0.045_500_263_896_358_57).abs() < 1e-13, "{p}");
        assert_eq!(chi_square_p_value(&[0, 0], &[0.5, 0.5]), 1.0);
        assert_eq!(chi_square_p_value(&[7], &[1.0]), 1.0);
        assert_eq!(chi_square_p_value(&[7, 1], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn monitor_keeps_the_running_minimum() {
        let mut m = SrmMonitor::new(&[1.0, 1.0]).unwrap_or_else(|_| unreachable!());
        assert_eq!(m.p_value(), 1.0);
        let balanced = m.observe(&[1000, 1000]).unwrap_or_else(|_| unreachable!());
        assert_eq!(balanced.p_value, 1.0);
        assert!(!balanced.alarm);
        assert_eq!(balanced.expected, vec![1000.0, 1000.0]);
        let skewed = m.observe(&[6000, 4000]).unwrap_or_else(|_| unreachable!());
        assert!(skewed.alarm, "{skewed:?}");
        assert!(skewed.chi2_p_value < 1e-50);
        // Balance restored later: the anytime p-value never goes back up.
        let later = m
            .observe(&[50_000, 50_000])
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(later.p_value, skewed.p_value);
        assert!(later.alarm);
        assert!(later.chi2_p_value > 0.5);
        assert!(m.observe(&[1, 2, 3]).is_err());
    }

    #[test]
    fn thinning_continues_the_bayes_factor() {
        let mut explicit = SrmMonitor::new(&[1.0, 1.0]).unwrap_or_else(|_| unreachable!());
        let before = explicit
            .observe(&[5200, 4800])
            .unwrap_or_else(|_| unreachable!());
        explicit
            .thin(&[5200, 4800], &[2610, 2390])
            .unwrap_or_else(|_| unreachable!());
        let after = explicit
            .observe(&[2610, 2390])
            .unwrap_or_else(|_| unreachable!());
        assert!((after.log_bayes_factor - before.log_bayes_factor).abs() < 1e-9);
        // observe() alone infers the thinning from the drop.
        let mut implicit = SrmMonitor::new(&[1.0, 1.0]).unwrap_or_else(|_| unreachable!());
        implicit
            .observe(&[5200, 4800])
            .unwrap_or_else(|_| unreachable!());
        let inferred = implicit
            .observe(&[2610, 2390])
            .unwrap_or_else(|_| unreachable!());
        assert!((inferred.log_bayes_factor - after.log_bayes_factor).abs() < 1e-12);
    }

    #[test]
    fn users_on_a_zero_share_arm_are_a_certain_mismatch() {
        let mut m = SrmMonitor::new(&[1.0, 0.0]).unwrap_or_else(|_| unreachable!());
        assert!(
            !m.observe(&[100, 0])
                .unwrap_or_else(|_| unreachable!())
                .alarm
        );
        let r = m.observe(&[100, 1]).unwrap_or_else(|_| unreachable!());
        assert_eq!((r.p_value, r.chi2_p_value, r.alarm), (0.0, 0.0, true));
    }
}
