//! Sample ratio mismatch (SRM): a chi-square goodness-of-fit test of observed arm
//! counts against configured weights. The chi-square survival function is the one
//! `abgate-stats` computes (and tests against SciPy), not a copy.

/// P(χ²(df) ≥ x).
pub use abgate_stats::special::chi_square_sf as chi2_sf;

/// Result of a goodness-of-fit test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquare {
    /// Σ (observed − expected)² / expected; infinite if a zero-share arm was observed.
    pub chi2: f64,
    /// Degrees of freedom: arms with a positive expected share, minus one.
    pub df: u32,
    /// P(χ²(df) >= chi2).
    pub p_value: f64,
}

/// Chi-square goodness of fit of `observed` counts against `expected_shares`
/// (same order; shares sum to 1). An arm with a zero share that was observed makes
/// chi2 infinite and p 0. `None` with no observations or fewer than two arms with a
/// positive share (nothing to test).
pub fn goodness_of_fit(observed: &[u64], expected_shares: &[f64]) -> Option<ChiSquare> {
    let n: u64 = observed.iter().sum();
    let positive = expected_shares.iter().filter(|&&s| s > 0.0).count();
    if n == 0 || positive < 2 || observed.len() != expected_shares.len() {
        return None;
    }
    let mut chi2 = 0.0;
    for (&o, &share) in observed.iter().zip(expected_shares) {
        let e = share * n as f64;
        if e > 0.0 {
            chi2 += (o as f64 - e).powi(2) / e;
        } else if o > 0 {
            chi2 = f64::INFINITY;
        }
    }
    let df = (positive - 1) as u32;
    Some(ChiSquare {
        chi2,
        df,
        p_value: chi2_sf(chi2, f64::from(df)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn chi2_sf_known_critical_values() {
        assert!(close(chi2_sf(3.841_458_820_694_124, 1.0), 0.05, 1e-10));
        assert!(close(chi2_sf(5.991_464_547_107_979, 2.0), 0.05, 1e-10));
        assert!(close(chi2_sf(18.307_038_053_275_146, 10.0), 0.05, 1e-10));
        assert!(close(chi2_sf(10.827_566_170_662_733, 1.0), 0.001, 1e-9));
    }

    #[test]
    fn chi2_sf_at_zero_is_one() {
        for k in 1..=20 {
            assert_eq!(chi2_sf(0.0, f64::from(k)), 1.0);
        }
    }

    #[test]
    fn chi2_sf_matches_closed_forms() {
        // df = 1: erfc(sqrt(x / 2)) (values from Python's math.erfc).
        for (x, want) in [
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.317_310_507_862_914_04),
            (20.0, 7.744_216_431_044_074e-6),
        ] {
            assert!(close(chi2_sf(x, 1.0), want, 1e-9), "df 1, x {x}");
        }
        // Even df: exp(-x/2) Σ_{i < df/2} (x/2)^i / i!.
        for (df, x, want) in [
            (4.0, 50.0, 3.610_865_404_890_645e-10),
            (50.0, 60.0, 0.157_242_027_238_391_6),
            (6.0, 1.0, 0.985_612_322_033_029_3),
        ] {
            assert!(close(chi2_sf(x, df), want, 1e-9), "df {df}, x {x}");
        }
        for x in [0.1, 1.0, 2.0, 7.5, 30.0] {
            assert!(
                close(chi2_sf(x, 2.0), (-x / 2.0).exp(), 1e-12),
                "df 2, x {x}"
            );
        }
    }

    #[test]
    fn chi2_sf_is_monotone_and_bounded() {
        let mut last = 1.0;
        for i in 1..200 {
            let p = chi2_sf(f64::from(i) * 0.25, 3.0);
            assert!((0.0..=1.0).contains(&p));
            assert!(p <= last);
            last = p;
        }
        assert_eq!(chi2_sf(f64::INFINITY, 1.0), 0.0);
    }

    #[test]
    fn goodness_of_fit_on_exact_split_is_one() {
        let r = goodness_of_fit(&[900, 100], &[0.9, 0.1]).unwrap_or_else(|| panic!("none"));
        assert_eq!(r.df, 1);
        assert!(r.chi2.abs() < 1e-12);
        assert!(close(r.p_value, 1.0, 1e-12));
    }

    #[test]
    fn goodness_of_fit_detects_mismatch() {
        // 50/50 observed against 90/10 configured.
        let r = goodness_of_fit(&[500, 500], &[0.9, 0.1]).unwrap_or_else(|| panic!("none"));
        // (500-900)²/900 + (500-100)²/100 = 177.78 + 1600
        assert!(close(r.chi2, 1_777.777_777_777_778, 1e-9));
        assert!(r.p_value < 1e-100);
        // A zero-weight arm that was observed is an infinite mismatch.
        let r = goodness_of_fit(&[90, 10, 1], &[0.9, 0.1, 0.0]).unwrap_or_else(|| panic!("none"));
        assert!(r.chi2.is_infinite());
        assert_eq!(r.p_value, 0.0);
        assert!(goodness_of_fit(&[0, 0], &[0.5, 0.5]).is_none());
        assert!(goodness_of_fit(&[10], &[1.0]).is_none());
    }
}
