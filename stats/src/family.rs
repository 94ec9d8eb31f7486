//! Family-wise error: one action ("some comparison is `worse`", the report's exit 3) fed
//! by many comparisons must hold α over all of them, not α per comparison.
//!
//! With `k` comparisons each run at level α, the chance that *some* A/A comparison ends
//! `worse` grows towards `k·α` (measured before this module: 4.7–7.9% for five metrics
//! at α = 5% each, even when each comparison was right). Bonferroni's split — every
//! comparison that can trigger the action at `α/k` — bounds the family's error by α under
//! any dependence between the comparisons (the union bound), which matters here: the five
//! metrics come from the same users. It costs some width: at α = 5% and `k = 5`, the
//! default boundary's multiplier at 1000 effective pairs rises from 3.04 to 3.57.
//!
//! Choose `k` before the experiment starts, as every metric × candidate arm that can
//! trigger the action (not only those with data yet): `5 · (arms − 1)` for "any metric of
//! any candidate worse". The per-comparison verdicts shown to people stay at level α;
//! only the family decision uses [`family_config`].

use crate::comparison::Comparison;
use crate::sequence::Boundary;
use crate::user_comparison::UserCompareConfig;
use crate::verdict::Verdict;

/// The per-comparison level for `comparisons` comparisons sharing α (Bonferroni): `α/k`
/// (α itself for `k ≤ 1`).
pub fn bonferroni_alpha(alpha: f64, comparisons: usize) -> f64 {
    alpha / comparisons.max(1) as f64
}

/// `boundary` at level `α/k`, tightest at the same effective sample size.
pub fn family_boundary(boundary: &Boundary, comparisons: usize) -> Boundary {
    boundary
        .with_alpha(bonferroni_alpha(boundary.alpha(), comparisons))
        .unwrap_or(*boundary)
}

/// `config` with its boundary at level `α/k`: the configuration of every comparison
/// that feeds a family-wise decision over `comparisons` comparisons.
pub fn family_config(config: &UserCompareConfig, comparisons: usize) -> UserCompareConfig {
    UserCompareConfig {
        boundary: family_boundary(&config.boundary, comparisons),
        ..*config
    }
}

/// Whether any of `comparisons` (made with [`family_config`]) is `worse`: the family-wise
/// decision, wrong with probability at most α when no arm is worse on any metric.
pub fn any_worse<'a>(comparisons: impl IntoIterator<Item = &'a Comparison>) -> bool {
    comparisons.into_iter().any(|c| c.verdict == Verdict::Worse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Metric;

    #[test]
    fn splits_alpha_and_keeps_the_tuning() {
        assert_eq!(bonferroni_alpha(0.05, 5), 0.01);
        assert_eq!(bonferroni_alpha(0.05, 0), 0.05);
        let b = Boundary::default();
        let f = family_boundary(&b, 5);
        assert!((f.alpha() - 0.01).abs() < 1e-15);
        assert!((f.tuning_n() - b.tuning_n()).abs() < 1e-9);
        let (m, mf) = (b.multiplier(1000.0), f.multiplier(1000.0));
        assert!(
            (m - 3.04).abs() < 0.01 && (mf - 3.57).abs() < 0.01,
            "{m} {mf}"
        );
        let config = family_config(&UserCompareConfig::default(), 10);
        assert!((config.boundary.alpha() - 0.005).abs() < 1e-15);
        assert_eq!(config.min_samples, UserCompareConfig::default().min_samples);
    }

    #[test]
    fn any_worse_looks_at_verdicts_only() {
        let c = |verdict| Comparison {
            metric: Metric::Rating,
            estimate: Some(0.0),
            ci_low: Some(-1.0),
            ci_high: Some(1.0),
            fixed_low: None,
            fixed_high: None,
            n_arm: 500,
            n_control: 500,
            verdict,
        };
        let calm = [
            c(Verdict::Better),
            c(Verdict::NoDifferenceYet),
            c(Verdict::NotEnoughData),
        ];
        assert!(!any_worse(&calm));
        assert!(any_worse(&[c(Verdict::NoDifferenceYet), c(Verdict::Worse)]));
        assert!(!any_worse(&[]));
    }
}
