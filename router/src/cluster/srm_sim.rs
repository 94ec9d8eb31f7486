//! A seeded simulation of the cluster's SRM test: users spread over N replicas by a
//! round-robin balancer (one user's requests reach several replicas, so a replica
//! counts a user the others count too), each replica running its own sequential SRM
//! test on the distinct users it saw, and the cluster alarming when the **mean** of
//! the replicas' e-values (Bayes factors) reaches `1 / 0.001`, checked at every look.
//!
//! * A/A (the split is right): the false-alarm rate over many runs stays within
//!   α + 3σ (σ the binomial standard error of a rate α over the runs).
//! * A broken split (5% of the candidate's users lost before any replica records
//!   them): the cluster alarms.

use abgate_stats::srm::log_bayes_factor;
use abgate_stats::srm::DEFAULT_CONCENTRATION;
use abgate_stats::ALARM_THRESHOLD;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One run: `users` users of a 50/50 split arriving one after another, each sending
/// 1 + Geometric requests (mean 3) to uniformly chosen replicas; a candidate user is
/// lost (recorded nowhere) with probability `loss`. Returns the users seen at the first
/// look (every `look` users) at which the mean e-value reached `1 / alpha`, if any.
fn run(
    seed: u64,
    replicas: usize,
    users: usize,
    look: usize,
    loss: f64,
    alpha: f64,
) -> Option<usize> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let shares = [0.5, 0.5];
    let mut counts = vec![[0u64; 2]; replicas];
    let alarm_at = (1.0 / alpha).ln();
    for u in 0..users {
        let arm = usize::from(rng.next() & 1 == 1);
        if !(arm == 1 && rng.unit() < loss) {
            let mut seen = 0u32;
            loop {
                seen |= 1 << (rng.next() % replicas as u64);
                // Another request with probability 2/3: 3 requests on average.
                if rng.unit() >= 2.0 / 3.0 {
                    break;
                }
            }
            for (r, c) in counts.iter_mut().enumerate() {
                if seen & (1 << r) != 0 {
                    c[arm] += 1;
                }
            }
        }
        if (u + 1) % look == 0 {
            // log of the mean of the e-values, computed stably.
            let logs: Vec<f64> = counts
                .iter()
                .map(|c| log_bayes_factor(c, &shares, DEFAULT_CONCENTRATION))
                .collect();
            let top = logs.iter().copied().fold(f64::MIN, f64::max);
            let mean =
                top + (logs.iter().map(|l| (l - top).exp()).sum::<f64>() / replicas as f64).ln();
            if mean >= alarm_at {
                return Some(u + 1);
            }
        }
    }
    None
}

#[test]
fn the_mean_e_value_keeps_its_false_alarm_rate_across_replicas() {
    // The router's level (0.001), and looser ones where a violation of validity
    // would show in a few hundred runs.
    let runs = 600;
    for alpha in [ALARM_THRESHOLD, 0.01, 0.05] {
        let sigma = (alpha * (1.0 - alpha) / runs as f64).sqrt();
        for replicas in [3, 12] {
            let alarms = (0..runs)
                .filter(|i| run(*i as u64 + 1, replicas, 12_000, 400, 0.0, alpha).is_some())
                .count();
            let rate = alarms as f64 / runs as f64;
            eprintln!(
                "A/A, {replicas} replicas, alpha {alpha}: {alarms} false alarms in {runs} runs (rate {rate:.4}, bound {:.4})",
                alpha + 3.0 * sigma
            );
            assert!(rate <= alpha + 3.0 * sigma, "{replicas} replicas: {rate}");
        }
    }
}

#[test]
fn losing_five_percent_of_the_candidates_users_alarms() {
    for replicas in [3, 12] {
        let runs = 10;
        let detected: Vec<Option<usize>> = (0..runs)
            .map(|i| run(1000 + i, replicas, 300_000, 10_000, 0.05, ALARM_THRESHOLD))
            .collect();
        eprintln!("5% loss, {replicas} replicas: alarms at users {detected:?}");
        assert!(
            detected.iter().all(Option::is_some),
            "{replicas} replicas: {detected:?}"
        );
    }
}
