//! Who gets which arm: a pure function of the experiment salt, the user key and the
//! arms' weights.
//!
//! `position = XXH3_64(seed 0, "<salt>:<key>")`, scaled into [0, 1) by keeping its top
//! 53 bits (`(h >> 11) / 2^53`, the exactly representable form of `h / 2^64`). Arms
//! own consecutive intervals of [0, 1) in config order, sized by their normalized
//! weights. So raising one arm's weight only moves users across the boundaries that
//! shift, a restart or another replica gives the same answer, and a new salt
//! reshuffles everyone.

use xxhash_rust::xxh3::Xxh3Default;

/// Where `key` falls in [0, 1) under `salt`.
///
/// The key is hashed as the raw bytes the client sent (an `X-User-Id` such as `josé`,
/// in UTF-8 or not, is as sticky as an ASCII one).
pub fn position(salt: &str, key: impl AsRef<[u8]>) -> f64 {
    let mut hasher = Xxh3Default::new();
    hasher.update(salt.as_bytes());
    hasher.update(b":");
    hasher.update(key.as_ref());
    unit_interval(hasher.digest())
}

/// Maps a 64-bit hash (or random number) into [0, 1) using its top 53 bits.
pub fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Cumulative interval bounds of the arms, from their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    upper: Vec<f64>,
}

impl Split {
    /// Builds the split; `None` when no weight is positive (or any is negative or not
    /// finite), since then nobody can be assigned.
    pub fn new(weights: &[f64]) -> Option<Split> {
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return None;
        }
        let total: f64 = weights.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            return None;
        }
        let last_positive = weights.iter().rposition(|w| *w > 0.0)?;
        let mut running = 0.0;
        let upper = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                running += w;
                // The last arm with weight closes the interval exactly at 1, whatever
                // the rounding of the sum.
                if i >= last_positive {
                    1.0
                } else {
                    (running / total).min(1.0)
                }
            })
            .collect();
        Some(Split { upper })
    }

    /// Index of the arm owning `position` (in [0, 1)).
    pub fn pick(&self, position: f64) -> usize {
        self.upper
            .iter()
            .position(|u| position < *u)
            .unwrap_or(self.upper.len().saturating_sub(1))
    }

    /// Each arm's share of users (its normalized weight).
    pub fn shares(&self) -> Vec<f64> {
        let mut lower = 0.0;
        self.upper
            .iter()
            .map(|u| {
                let share = u - lower;
                lower = *u;
                share
            })
            .collect()
    }

    /// `[lower, upper)` interval of each arm.
    pub fn intervals(&self) -> Vec<(f64, f64)> {
        let mut lower = 0.0;
        self.upper
            .iter()
            .map(|u| {
                let iv = (lower, *u);
                lower = *u;
                iv
            })
            .collect()
    }
}

/// Picks an arm for `position` among the arms marked `eligible` (e.g. healthy),
/// re-splitting [0, 1) over their weights so the choice stays sticky. When every
/// eligible arm has weight 0, the first eligible arm is used. `None` if none is
/// eligible.
pub fn pick_among(weights: &[f64], eligible: &[bool], position: f64) -> Option<usize> {
    let masked: Vec<f64> = weights
        .iter()
        .zip(eligible)
        .map(|(w, ok)| if *ok { *w } else { 0.0 })
        .collect();
    match Split::new(&masked) {
        Some(split) => Some(split.pick(position)),
        None => eligible.iter().position(|ok| *ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Published in the README so analysts can recompute assignments; the positions
    /// were cross-checked with Python's `xxhash` package (`xxh3_64_intdigest`).
    const VECTORS: [(&str, &str, f64, &str); 7] = [
        ("user-1", "wine-2026-11", 0.4990624218605194, "best_model"),
        ("user-2", "wine-2026-11", 0.0916939719815274, "best_model"),
        (
            "user-5",
            "wine-2026-11",
            0.9832860653476126,
            "candidate_model",
        ),
        (
            "user-6",
            "wine-2026-11",
            0.9292143415922973,
            "candidate_model",
        ),
        ("alice", "wine-2026-11", 0.2691642935515094, "best_model"),
        ("bob", "wine-2026-11", 0.7557461218856997, "best_model"),
        ("alice", "another-salt", 0.4403150342509975, "best_model"),
    ];

    #[test]
    fn pinned_vectors_give_the_published_positions_and_arms_at_90_10() {
        let split = Split::new(&[90.0, 10.0]).unwrap_or_else(|| panic!());
        for (key, salt, expected, arm) in VECTORS {
            let p = position(salt, key);
            assert_eq!(p, expected, "{key} under {salt}");
            assert_eq!(
                ["best_model", "candidate_model"][split.pick(p)],
                arm,
                "{key}"
            );
        }
    }

    #[test]
    fn unit_interval_stays_below_one() {
        assert_eq!(unit_interval(0), 0.0);
        assert!(unit_interval(u64::MAX) < 1.0);
        assert_eq!(unit_interval(1 << 63), 0.5);
    }

    #[test]
    fn picks_follow_the_intervals_in_config_order() {
        let cases: [(&[f64], f64, usize); 9] = [
            (&[90.0, 10.0], 0.0, 0),
            (&[90.0, 10.0], 0.8999, 0),
            (&[90.0, 10.0], 0.9, 1),
            (&[90.0, 10.0], 0.999_999, 1),
            (&[0.0, 1.0], 0.0, 1),
            (&[1.0, 0.0], 0.999_999, 0),
            (&[1.0, 1.0, 2.0], 0.26, 1),
            (&[1.0, 1.0, 2.0], 0.5, 2),
            (&[1.0, 0.0, 1.0], 0.5, 2),
        ];
        for (weights, p, arm) in cases {
            let split = Split::new(weights).unwrap_or_else(|| panic!("{weights:?}"));
            assert_eq!(split.pick(p), arm, "{weights:?} at {p}");
        }
    }

    #[test]
    fn impossible_weights_give_no_split() {
        assert_eq!(Split::new(&[]), None);
        assert_eq!(Split::new(&[0.0, 0.0]), None);
        assert_eq!(Split::new(&[1.0, -1.0]), None);
        assert_eq!(Split::new(&[1.0, f64::NAN]), None);
        assert_eq!(Split::new(&[f64::INFINITY]), None);
    }

    #[test]
    fn the_same_user_gets_the_same_arm_on_every_call() {
        let split = Split::new(&[50.0, 50.0]).unwrap_or_else(|| panic!());
        for i in 0..1000 {
            let key = format!("user-{i}");
            let first = split.pick(position("s", &key));
            for _ in 0..3 {
                assert_eq!(split.pick(position("s", &key)), first);
            }
        }
    }

    #[test]
    fn ramping_the_candidate_from_10_to_20_percent_moves_only_best_users() {
        let before = Split::new(&[90.0, 10.0]).unwrap_or_else(|| panic!());
        let after = Split::new(&[80.0, 20.0]).unwrap_or_else(|| panic!());
        let n = 100_000;
        let mut moved = 0;
        for i in 0..n {
            let p = position("wine-2026-11", format!("user-{i}"));
            match (before.pick(p), after.pick(p)) {
                (0, 1) => moved += 1,
                (1, 0) => panic!("user-{i} moved from candidate back to best"),
                _ => {}
            }
        }
        // Expected 10% of users; 4 sigma of a binomial(100k, 0.1) is ~380.
        let expected = n as f64 * 0.1;
        let sigma = (n as f64 * 0.1 * 0.9).sqrt();
        assert!(
            (moved as f64 - expected).abs() < 4.0 * sigma,
            "moved {moved}, expected about {expected}"
        );
    }

    #[test]
    fn a_new_salt_reshuffles_users() {
        let split = Split::new(&[50.0, 50.0]).unwrap_or_else(|| panic!());
        let n = 10_000;
        let same = (0..n)
            .filter(|i| {
                let key = format!("user-{i}");
                split.pick(position("salt-a", &key)) == split.pick(position("salt-b", &key))
            })
            .count();
        // Independent positions agree half the time.
        assert!((4_600..5_400).contains(&same), "{same}");
    }

    #[test]
    fn observed_shares_are_within_4_sigma_of_the_weights() {
        let weight_sets: [&[f64]; 5] = [
            &[90.0, 10.0],
            &[50.0, 50.0],
            &[99.0, 1.0],
            &[1.0, 1.0, 2.0],
            &[70.0, 0.0, 30.0],
        ];
        let n = 100_000usize;
        for weights in weight_sets {
            let split = Split::new(weights).unwrap_or_else(|| panic!());
            let mut counts = vec![0usize; weights.len()];
            for i in 0..n {
                counts[split.pick(position("wine-2026-11", format!("user-{i}")))] += 1;
            }
            for (share, count) in split.shares().iter().zip(&counts) {
                let expected = n as f64 * share;
                let sigma = (n as f64 * share * (1.0 - share)).sqrt();
                assert!(
                    (*count as f64 - expected).abs() <= 4.0 * sigma,
                    "{weights:?}: {count} vs {expected} (sigma {sigma})"
                );
            }
        }
    }

    #[test]
    fn failover_re_splits_over_healthy_arms() {
        let w = [90.0, 10.0];
        assert_eq!(pick_among(&w, &[false, true], 0.1), Some(1));
        assert_eq!(pick_among(&w, &[true, false], 0.95), Some(0));
        assert_eq!(pick_among(&w, &[false, false], 0.5), None);
        // The only healthy arm has weight 0: it still serves.
        assert_eq!(pick_among(&[1.0, 0.0], &[false, true], 0.5), Some(1));
    }

    proptest! {
        #[test]
        fn every_position_maps_to_an_arm_with_weight(
            weights in proptest::collection::vec(
                prop_oneof![Just(0.0), 1e-12f64..1e-6, 0.0f64..1000.0, 1e200f64..1e300],
                1..6,
            ),
            p in 0.0f64..1.0,
        ) {
            if let Some(split) = Split::new(&weights) {
                let arm = split.pick(p);
                prop_assert!(arm < weights.len());
                prop_assert!(weights[arm] > 0.0, "arm {} has weight 0: {:?}", arm, weights);
                let upper = split.intervals();
                prop_assert_eq!(upper.last().map(|iv| iv.1), Some(1.0));
                prop_assert!(upper.windows(2).all(|w| w[0].1 <= w[1].1));
            } else {
                prop_assert!(weights.iter().all(|w| *w == 0.0) || weights.iter().sum::<f64>().is_infinite());
            }
        }

        #[test]
        fn raising_the_last_arm_never_moves_users_away_from_it(
            base in 1.0f64..100.0, cand in 0.0f64..100.0, extra in 0.0f64..100.0, p in 0.0f64..1.0,
        ) {
            let before = Split::new(&[base, cand]);
            let after = Split::new(&[base, cand + extra]);
            if let (Some(b), Some(a)) = (before, after) {
                if b.pick(p) == 1 {
                    prop_assert_eq!(a.pick(p), 1);
                }
            }
        }
    }
}
