//! Validity and power of the sequential procedures, by seeded simulation.
//!
//! Every experiment is *monitored*: the confidence sequence (or SRM p-value) is checked
//! after every batch of observations, and the experiment counts as a false positive if
//! any check ever rejects — exactly what a dashboard refreshed every few seconds does.
//! Thresholds allow the nominal rate plus three binomial standard deviations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use abgate_stats::{compare, CompareConfig, Metric, Moments, Proportion, SrmMonitor, Verdict};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const EXPERIMENTS: usize = 1000;
const BATCH: usize = 100;
const PER_ARM: usize = 20_000;

/// Nominal rate plus three binomial standard deviations for `runs` runs.
fn allowance(rate: f64, runs: usize) -> f64 {
    rate + 3.0 * (rate * (1.0 - rate) / runs as f64).sqrt()
}

/// Standard normal draw (Marsaglia's polar method, one of each pair).
fn normal(rng: &mut SmallRng) -> f64 {
    loop {
        let u: f64 = rng.random::<f64>() * 2.0 - 1.0;
        let v: f64 = rng.random::<f64>() * 2.0 - 1.0;
        let s = u * u + v * v;
        if s > 0.0 && s < 1.0 {
            return u * (-2.0 * s.ln() / s).sqrt();
        }
    }
}

/// A latency-like draw: lognormal with median 50 ms and σ = 0.6 (mean 60 ms, long tail).
fn latency(rng: &mut SmallRng) -> f64 {
    (0.05f64.ln() + 0.6 * normal(rng)).exp()
}

/// Runs `EXPERIMENTS` A/A experiments of `PER_ARM` observations per arm drawn by `draw`,
/// checking the confidence sequence after every `BATCH` per arm; returns the share of
/// experiments in which it ever excluded 0 and the share in which the fixed-horizon
/// interval ever did (for contrast).
fn aa_rates(seed: u64, metric: Metric, mut draw: impl FnMut(&mut SmallRng) -> f64) -> (f64, f64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let config = CompareConfig {
        min_samples: BATCH as u64,
        ..CompareConfig::default()
    };
    let (mut sequence_rejections, mut fixed_rejections) = (0usize, 0usize);
    for _ in 0..EXPERIMENTS {
        let (mut a, mut b) = (Moments::new(), Moments::new());
        let (mut sequence_rejected, mut fixed_rejected) = (false, false);
        for _ in 0..PER_ARM / BATCH {
            for _ in 0..BATCH {
                a.push(draw(&mut rng));
                b.push(draw(&mut rng));
            }
            let c = compare(metric, &a, &b, &config);
            if matches!(c.verdict, Verdict::Better | Verdict::Worse) {
                sequence_rejected = true;
                // The sequence is the first to reject only if the fixed one has too.
                assert!(c.fixed_low.unwrap() > 0.0 || c.fixed_high.unwrap() < 0.0);
            }
            if let (Some(low), Some(high)) = (c.fixed_low, c.fixed_high) {
                fixed_rejected |= low > 0.0 || high < 0.0;
            }
        }
        sequence_rejections += usize::from(sequence_rejected);
        fixed_rejections += usize::from(fixed_rejected);
    }
    (
        sequence_rejections as f64 / EXPERIMENTS as f64,
        fixed_rejections as f64 / EXPERIMENTS as f64,
    )
}

#[test]
fn aa_error_rate_sequence_keeps_false_positives_below_five_percent() {
    let (rate, fixed) = aa_rates(0xA11A, Metric::ErrorRate, |rng| {
        f64::from(u8::from(rng.random::<f64>() < 0.01))
    });
    println!(
        "A/A error_rate (1%, {EXPERIMENTS} experiments, checked every {BATCH} up to {PER_ARM}/arm): \
         confidence sequence ever excluded 0 in {:.1}%; a fixed 95% interval watched the same way in {:.1}%",
        100.0 * rate,
        100.0 * fixed
    );
    assert!(
        rate <= allowance(0.05, EXPERIMENTS),
        "false-positive rate {rate}"
    );
    // Peeking at the fixed interval is what the sequence exists to prevent.
    assert!(fixed > 0.15, "fixed-interval peeking rate {fixed}");
}

#[test]
fn aa_latency_sequence_keeps_false_positives_below_five_percent() {
    let (rate, fixed) = aa_rates(0x1A7E, Metric::LatencyMeanSeconds, latency);
    println!(
        "A/A latency_mean_seconds (lognormal, {EXPERIMENTS} experiments, checked every {BATCH} up to {PER_ARM}/arm): \
         confidence sequence ever excluded 0 in {:.1}%; a fixed 95% interval watched the same way in {:.1}%",
        100.0 * rate,
        100.0 * fixed
    );
    assert!(
        rate <= allowance(0.05, EXPERIMENTS),
        "false-positive rate {rate}"
    );
    assert!(fixed > 0.15, "fixed-interval peeking rate {fixed}");
}

/// Runs SRM experiments with users reaching arm 0 with probability `share0` against a
/// 50/50 null, checking after every `BATCH` users up to `users`; returns, per run, the
/// number of users at the first check whose p-value was below `level` (None if never).
fn srm_first_rejection(
    seed: u64,
    runs: usize,
    users: usize,
    share0: f64,
    level: f64,
) -> Vec<Option<usize>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let threshold = (share0 * 2f64.powi(64)) as u64;
    (0..runs)
        .map(|_| {
            let mut monitor = SrmMonitor::new(&[50.0, 50.0]).unwrap();
            let mut counts = [0u64; 2];
            for seen in (BATCH..=users).step_by(BATCH) {
                for _ in 0..BATCH {
                    let arm = usize::from(rng.random::<u64>() >= threshold);
                    counts[arm] += 1;
                }
                if monitor.observe(&counts).unwrap().p_value < level {
                    return Some(seen);
                }
            }
            None
        })
        .collect()
}

#[test]
fn aa_srm_keeps_false_positives_below_alpha() {
    let users = 2 * PER_ARM;
    let rejected = |level| {
        srm_first_rejection(0x5A5A, EXPERIMENTS, users, 0.5, level)
            .iter()
            .filter(|r| r.is_some())
            .count() as f64
            / EXPERIMENTS as f64
    };
    let at_05 = rejected(0.05);
    let at_alarm = rejected(abgate_stats::ALARM_THRESHOLD);
    println!(
        "A/A SRM (50/50, {EXPERIMENTS} experiments, checked every {BATCH} users up to {users}): \
         anytime p < 0.05 ever in {:.1}%, p < 0.001 (the alarm) ever in {:.1}%",
        100.0 * at_05,
        100.0 * at_alarm
    );
    assert!(
        at_05 <= allowance(0.05, EXPERIMENTS),
        "rate at 0.05: {at_05}"
    );
    assert!(
        at_alarm <= allowance(0.001, EXPERIMENTS),
        "rate at 0.001: {at_alarm}"
    );
}

#[test]
fn power_error_rate_rise_from_1_to_3_percent_is_worse_before_10000() {
    const RUNS: usize = 500;
    const LIMIT: usize = 10_000;
    let mut rng = SmallRng::seed_from_u64(0x0E44);
    let config = CompareConfig::default();
    let mut detected_at = Vec::new();
    for _ in 0..RUNS {
        let (mut control, mut candidate) = (Proportion::new(), Proportion::new());
        for seen in (BATCH..=LIMIT).step_by(BATCH) {
            for _ in 0..BATCH {
                control.push(rng.random::<f64>() < 0.01);
                candidate.push(rng.random::<f64>() < 0.03);
            }
            let c = compare(
                Metric::ErrorRate,
                &candidate.into(),
                &control.into(),
                &config,
            );
            assert_ne!(c.verdict, Verdict::Better);
            if c.verdict == Verdict::Worse {
                detected_at.push(seen);
                break;
            }
        }
    }
    let power = detected_at.len() as f64 / RUNS as f64;
    detected_at.sort_unstable();
    let median = detected_at.get(detected_at.len() / 2).copied().unwrap_or(0);
    println!(
        "power, error_rate 1% -> 3%: worse before {LIMIT} requests/arm in {:.1}% of {RUNS} runs (median {median} requests/arm)",
        100.0 * power
    );
    assert!(power >= 0.95, "power {power}");
}

#[test]
fn power_srm_five_percent_candidate_user_loss_alarms_before_100000() {
    const RUNS: usize = 200;
    const USERS: usize = 100_000;
    // 50/50 split; the candidate loses 5% of its users: it sees 0.95/1.95 of the rest.
    let share_control = 1.0 / 1.95;
    let firsts = srm_first_rejection(
        0x5105,
        RUNS,
        USERS,
        share_control,
        abgate_stats::ALARM_THRESHOLD,
    );
    let mut detected: Vec<usize> = firsts.iter().flatten().copied().collect();
    let power = detected.len() as f64 / RUNS as f64;
    detected.sort_unstable();
    let median = detected.get(detected.len() / 2).copied().unwrap_or(0);
    println!(
        "power, SRM with 5% candidate user loss: alarm (p < 0.001) before {USERS} users in {:.1}% of {RUNS} runs (median {median} users)",
        100.0 * power
    );
    assert!(power >= 0.95, "power {power}");
}

#[test]
fn aa_srm_with_sample_thinning_keeps_false_positives_below_alpha() {
    // The router counts a consistent sample of users (hash < fraction) and halves the
    // fraction when the sample exceeds its cap; the monitor continues across each thinning.
    // A small concentration (k = 100) makes the Bayes factor move within a 2000-user
    // sample, so an invalid continuation would show.
    const CAP: usize = 2_000;
    const USERS: usize = 40_000;
    let mut rng = SmallRng::seed_from_u64(0x7417);
    let mut rejected = 0usize;
    let mut thinnings = 0usize;
    for _ in 0..EXPERIMENTS {
        let mut monitor = SrmMonitor::with_concentration(&[50.0, 50.0], 100.0).unwrap();
        let mut fraction = 1.0f64;
        let mut sample: Vec<(f64, usize)> = Vec::with_capacity(CAP + 1);
        let counts = |sample: &[(f64, usize)]| {
            let ones = sample.iter().filter(|(_, arm)| *arm == 1).count() as u64;
            [sample.len() as u64 - ones, ones]
        };
        let mut ever = false;
        for seen in 1..=USERS {
            let hash: f64 = rng.random();
            let arm = usize::from(rng.random::<bool>());
            if hash < fraction {
                sample.push((hash, arm));
                if sample.len() > CAP {
                    let before = counts(&sample);
                    ever |= monitor.observe(&before).unwrap().p_value < 0.05;
                    fraction /= 2.0;
                    sample.retain(|(h, _)| *h < fraction);
                    monitor.thin(&before, &counts(&sample)).unwrap();
                    thinnings += 1;
                }
            }
            if seen % BATCH == 0 {
                ever |= monitor.observe(&counts(&sample)).unwrap().p_value < 0.05;
            }
        }
        rejected += usize::from(ever);
    }
    let rate = rejected as f64 / EXPERIMENTS as f64;
    println!(
        "A/A SRM with thinning (k = 100, cap {CAP}, {USERS} users, {:.1} thinnings per experiment): anytime p < 0.05 ever in {:.1}%",
        thinnings as f64 / EXPERIMENTS as f64,
        100.0 * rate
    );
    assert!(thinnings >= 4 * EXPERIMENTS);
    assert!(rate <= allowance(0.05, EXPERIMENTS), "rate {rate}");
}

#[test]
fn guardrail_at_exactly_the_allowed_degradation_rarely_trips() {
    // True degradation equal to max_degradation (1% -> 2% errors, allowance 1 point):
    // the rule must trip in at most α of runs, however often it is checked.
    const RUNS: usize = 500;
    let mut rng = SmallRng::seed_from_u64(0x6A4D);
    let config = CompareConfig::default();
    let mut tripped = 0usize;
    for _ in 0..RUNS {
        let (mut control, mut candidate) = (Proportion::new(), Proportion::new());
        for _ in 0..PER_ARM / BATCH {
            for _ in 0..BATCH {
                control.push(rng.random::<f64>() < 0.01);
                candidate.push(rng.random::<f64>() < 0.02);
            }
            let c = compare(
                Metric::ErrorRate,
                &candidate.into(),
                &control.into(),
                &config,
            );
            if abgate_stats::guardrail::trips(&c, 0.01) {
                tripped += 1;
                break;
            }
        }
    }
    let rate = tripped as f64 / RUNS as f64;
    println!("guardrail at exactly its allowance (error_rate +1 point, {RUNS} runs to {PER_ARM}/arm): tripped in {:.1}%", 100.0 * rate);
    assert!(rate <= allowance(0.05, RUNS), "rate {rate}");
}
