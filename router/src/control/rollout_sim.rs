//! Simulated ramps through the rollout's decision rule ([`super::rollout::decide`])
//! and the router's statistics by user (`abgate_stats::compare_users` at the
//! guardrail's level): seeded, one simulated second per tick, a fresh phase (fresh
//! statistics) at every step, as in the router, and the evidence of the ended steps
//! carried over by [`super::rollout::combine`] (stratified by phase), as the router
//! does; `carry: false` decides on the current step alone, for comparison.
//!
//! Run `cargo test -p abgate-router --lib rollout_sim -- --nocapture` for the table.

use abgate_stats::{bucket_of, compare_users, BucketSums, Metric, UserCompareConfig, Verdict};
use std::time::Duration;

use super::rollout::{combine, decide, next_exposure, Decision, Evidence, Gate, Stratum};
use crate::config::{OnComplete, RolloutConfig};
use crate::rollout::RolloutState;
use abgate_stats::guardrail::beyond_degradation;

/// splitmix64: small, seeded, good enough for Bernoulli draws.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How one simulated ramp ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Promoted after `seconds`.
    Promoted { seconds: u64 },
    /// Rolled back on step `step` with `exposed` candidate users over the ramp.
    RolledBack { step: usize, exposed: u64 },
    /// Still on step `step` when the simulation's time ran out.
    TimedOut { step: usize },
}

/// The simulated world: users per second, the control's error rate and the
/// candidate's extra error rate.
#[derive(Clone, Copy)]
struct World {
    users_per_second: u64,
    base_error: f64,
    extra_error: f64,
    max_seconds: u64,
    max_degradation: f64,
    carry: bool,
    /// The candidate's extra error rate applies from this step on (`0`: from the
    /// start): a candidate that degrades at scale.
    bad_from: usize,
    /// The router's guardrail too: a step whose own interval lies beyond the
    /// allowance rolls back (the gate's interval is combined across steps).
    guardrail: bool,
}

/// The exposure estimate made when a ramp advanced to the step where the candidate
/// turns bad, and the candidate users that step actually reached before the
/// rollback (`None`: not rolled back on that step).
#[derive(Debug, Clone, Copy)]
struct Exposure {
    estimate: f64,
    actual: Option<u64>,
}

pub(super) const MAX_DEGRADATION: f64 = 0.01;

pub(super) fn config() -> RolloutConfig {
    RolloutConfig {
        arm: "candidate".into(),
        steps: vec![1.0, 5.0, 25.0, 50.0, 100.0],
        min_step: Duration::from_secs(60),
        min_users_per_step: 100,
        gates: vec!["errors".into()],
        on_complete: OnComplete::Promote,
        max_exposed_users: None,
    }
}

/// One ramp: every simulated second, new users (one request each) split by the
/// step's share, then one decision on the step's statistics.
fn ramp(world: &World, seed: u64) -> (Outcome, Option<Exposure>) {
    let config = config();
    let compare = UserCompareConfig {
        min_samples: 100,
        ..UserCompareConfig::default()
    };
    let mut rng = Rng(seed);
    let mut step = 0usize;
    let (mut control, mut candidate) = (BucketSums::new(), BucketSums::new());
    let (mut candidate_users, mut exposed, mut step_start) = (0u64, 0u64, 0u64);
    let mut ended: Vec<Stratum> = Vec::new();
    let mut estimate: Option<f64> = None;
    for second in 1..=world.max_seconds {
        let share = config.steps[step] / 100.0;
        let extra = if step >= world.bad_from {
            world.extra_error
        } else {
            0.0
        };
        for _ in 0..world.users_per_second {
            let user = rng.next();
            let bucket = bucket_of(user);
            if rng.unit() < share {
                let error = rng.unit() < world.base_error + extra;
                candidate.push_bool(bucket, error);
                candidate_users += 1;
                exposed += 1;
            } else {
                control.push_bool(bucket, rng.unit() < world.base_error);
            }
        }
        let u = compare_users(Metric::ErrorRate, &candidate, &control, &compare);
        let c = u.comparison;
        let now = u.interval.map(|i| Stratum {
            phase_id: String::new(),
            estimate: i.estimate,
            std_error: i.std_error,
            effective_n: i.effective_n,
            degrees_of_freedom: i.degrees_of_freedom,
            ci_low: Some(i.ci_low),
            ci_high: Some(i.ci_high),
        });
        let enough = c.verdict != Verdict::NotEnoughData;
        // Caught on the step that turned bad, or not there.
        let exposed_here = |estimate: Option<f64>| {
            estimate.map(|estimate| Exposure {
                estimate,
                actual: (step == world.bad_from).then_some(candidate_users),
            })
        };
        if world.guardrail
            && enough
            && matches!((c.ci_low, c.ci_high), (Some(l), Some(h)) if beyond_degradation(Metric::ErrorRate, l, h, world.max_degradation))
        {
            return (
                Outcome::RolledBack { step, exposed },
                exposed_here(estimate),
            );
        }
        let (mut ci_low, mut ci_high) = (c.ci_low, c.ci_high);
        let mut strata = Vec::new();
        if world.carry && !ended.is_empty() {
            strata = ended.clone();
            strata.extend(now.clone().filter(|_| enough));
            if let Some((_, low, high)) = combine(&strata, ALPHA) {
                (ci_low, ci_high) = (Some(low), Some(high));
            }
        }
        let evidence = Evidence {
            stale: None,
            phase_id: String::new(),
            candidate_users,
            srm_alarm: false,
            srm_p_value: 1.0,
            gates: vec![Gate {
                name: "errors".into(),
                metric: Metric::ErrorRate,
                max_degradation: world.max_degradation,
                estimate: c.estimate,
                ci_low,
                ci_high,
                enough_data: enough || (world.carry && !ended.is_empty()),
                tripped: false,
                strata,
                step: now.clone().filter(|_| enough),
                alpha: Some(ALPHA),
            }],
            last_trip: None,
            previous_phase_users: 0,
            detection_latency: 1.0,
        };
        let in_step = (second - step_start) as f64;
        match decide(&config, RolloutState::Running, step, in_step, &evidence) {
            Decision::Hold(_) => {}
            Decision::RollBack(_) => {
                return (
                    Outcome::RolledBack { step, exposed },
                    exposed_here(estimate),
                )
            }
            Decision::Complete => {
                return (
                    Outcome::Promoted { seconds: second },
                    exposed_here(estimate).map(|e| Exposure { actual: None, ..e }),
                )
            }
            Decision::Advance { to } => {
                assert_eq!(to, step + 1, "steps only go up, one at a time");
                if to == world.bad_from {
                    estimate = next_exposure(&config, step, in_step, &evidence).map(|e| e.0);
                }
                if let Some(now) = now.filter(|_| enough) {
                    ended.push(now);
                }
                step = to;
                step_start = second;
                // A new step is a new phase: the statistics start again.
                control = BucketSums::new();
                candidate = BucketSums::new();
                candidate_users = 0;
            }
        }
    }
    let missed = estimate.map(|estimate| Exposure {
        estimate,
        actual: None,
    });
    (Outcome::TimedOut { step }, missed)
}

pub(super) fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Tally {
    promoted: Vec<u64>,
    rolled_back: Vec<(usize, u64)>,
    timed_out: usize,
}

fn run(world: &World, ramps: u64, seed: u64) -> Tally {
    let mut t = Tally {
        promoted: Vec::new(),
        rolled_back: Vec::new(),
        timed_out: 0,
    };
    for i in 0..ramps {
        match ramp(world, seed.wrapping_mul(1_000_003).wrapping_add(i)).0 {
            Outcome::Promoted { seconds } => t.promoted.push(seconds),
            Outcome::RolledBack { step, exposed } => t.rolled_back.push((step, exposed)),
            Outcome::TimedOut { .. } => t.timed_out += 1,
        }
    }
    t.promoted.sort_unstable();
    t
}

pub(super) const ALPHA: f64 = 0.05;

#[test]
fn simulated_ramps_keep_their_error_rates_and_report_time_to_promote() {
    let started = std::time::Instant::now();
    // A/A: the candidate is the control. Rolled back in at most α of ramps; the time
    // to promote is the healthy candidate's.
    let aa = World {
        users_per_second: 2000,
        base_error: 0.02,
        extra_error: 0.0,
        max_seconds: 3600,
        max_degradation: MAX_DEGRADATION,
        carry: true,
        bad_from: 0,
        guardrail: false,
    };
    let ramps: u64 = 200;
    let t = run(&aa, ramps, 1);
    let rolled = t.rolled_back.len() as f64 / ramps as f64;
    println!(
        "A/A (2% errors, gate +1 point, 2000 users/s, steps 1-5-25-50-100, hold 60 s): {} of {ramps} promoted, {} rolled back ({:.1}%), {} timed out",
        t.promoted.len(),
        t.rolled_back.len(),
        rolled * 100.0,
        t.timed_out
    );
    println!(
        "  time to promote: p10 {} s, median {} s, p90 {} s, max {} s",
        quantile(&t.promoted, 0.1),
        quantile(&t.promoted, 0.5),
        quantile(&t.promoted, 0.9),
        quantile(&t.promoted, 1.0)
    );
    assert!(rolled <= ALPHA, "A/A rolled back in {rolled} of ramps");
    assert!(
        t.promoted.len() as f64 >= 0.9 * ramps as f64,
        "a healthy candidate is promoted"
    );

    // Evidence carried across steps against each step starting from zero, at lower
    // traffic, where the evidence (not the holds) paces the ramp.
    let slow = World {
        users_per_second: 300,
        ..aa
    };
    let ramps = 60;
    for carry in [true, false] {
        let t = run(&World { carry, ..slow }, ramps, 5);
        println!(
            "A/A at 300 users/s, evidence {}: {} of {ramps} promoted, {} rolled back; time to promote p10 {} s, median {} s, p90 {} s",
            if carry { "carried across steps" } else { "of the current step only" },
            t.promoted.len(),
            t.rolled_back.len(),
            quantile(&t.promoted, 0.1),
            quantile(&t.promoted, 0.5),
            quantile(&t.promoted, 0.9)
        );
        assert!(t.rolled_back.len() as f64 <= ALPHA * ramps as f64);
    }

    // A/A against no allowance at all (the strictest gate: any significant
    // degradation trips): it never advances, and trips in at most α of ramps.
    let strict = World {
        max_seconds: 300,
        max_degradation: 0.0,
        ..aa
    };
    let ramps: u64 = 150;
    let t = run(&strict, ramps, 4);
    let rolled = t.rolled_back.len() as f64 / ramps as f64;
    println!(
        "A/A with a gate of +0 points (300 s on the 1% step): {} of {ramps} rolled back ({:.1}%), {} promoted",
        t.rolled_back.len(),
        rolled * 100.0,
        t.promoted.len()
    );
    assert!(rolled <= ALPHA, "A/A rolled back in {rolled} of ramps");

    // Exactly at the allowance: never shown not worse, so promoted in at most α.
    let edge = World {
        extra_error: MAX_DEGRADATION,
        max_seconds: 600,
        ..aa
    };
    let t = run(&edge, ramps, 2);
    let promoted = t.promoted.len() as f64 / ramps as f64;
    println!(
        "at the allowance (+1 point): {} of {ramps} promoted ({:.1}%), {} rolled back, {} still holding after 600 s",
        t.promoted.len(),
        promoted * 100.0,
        t.rolled_back.len(),
        t.timed_out
    );
    assert!(promoted <= ALPHA, "promoted at the margin in {promoted}");

    // Worse by 2 points: rolled back early, with few users exposed.
    let worse = World {
        extra_error: 0.02,
        max_seconds: 600,
        ..aa
    };
    let ramps = 100;
    let t = run(&worse, ramps, 3);
    let mut exposed: Vec<u64> = t.rolled_back.iter().map(|(_, e)| *e).collect();
    exposed.sort_unstable();
    let at_first = t.rolled_back.iter().filter(|(s, _)| *s == 0).count();
    println!(
        "worse by 2 points: {} of {ramps} rolled back ({} at the 1% step), {} promoted; candidate users exposed: median {}, p90 {}, max {}",
        t.rolled_back.len(),
        at_first,
        t.promoted.len(),
        quantile(&exposed, 0.5),
        quantile(&exposed, 0.9),
        quantile(&exposed, 1.0)
    );
    assert!(t.promoted.is_empty(), "a worse candidate is never promoted");
    assert!(
        t.rolled_back.len() >= 90,
        "a 2-point-worse candidate is rolled back"
    );
    println!("simulated in {:?}", started.elapsed());
}

#[test]
fn the_exposure_estimate_is_close_to_the_users_a_candidate_turning_bad_at_the_next_step_reaches() {
    // The candidate is fine on the early steps and turns worse by twice the gate's
    // allowance (+2 points) on step k: the estimate made when the ramp advanced to k
    // (`next_exposure`, what `max_exposed_users` compares) against the candidate
    // users step k really reached before the rollback.
    let ramps: u64 = 60;
    for bad_from in [1usize, 2, 3] {
        let world = World {
            users_per_second: 2000,
            base_error: 0.02,
            extra_error: 2.0 * MAX_DEGRADATION,
            max_seconds: 1800,
            max_degradation: MAX_DEGRADATION,
            carry: true,
            bad_from,
            guardrail: true,
        };
        let mut ratios: Vec<f64> = Vec::new();
        let (mut reached, mut missed, mut within) = (0usize, 0usize, 0usize);
        let mut estimates: Vec<u64> = Vec::new();
        for i in 0..ramps {
            let (outcome, exposure) = ramp(&world, 77_000 + 1000 * bad_from as u64 + i);
            assert!(
                !matches!(outcome, Outcome::Promoted { .. }),
                "a candidate worse by twice the allowance is never promoted"
            );
            let Some(e) = exposure else { continue };
            reached += 1;
            estimates.push(e.estimate.round() as u64);
            match e.actual {
                Some(actual) => {
                    ratios.push(actual as f64 / e.estimate);
                    within += usize::from(actual as f64 <= e.estimate);
                }
                None => missed += 1,
            }
        }
        ratios.sort_by(f64::total_cmp);
        estimates.sort_unstable();
        let q = |x: &[f64], p: f64| {
            x.get(((x.len().max(1) - 1) as f64 * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "turns +2 points worse at {}%: {reached} of {ramps} ramps got there; estimate median {} users; caught on that step in {} ({missed} not); actual/estimate p10 {:.2}, median {:.2}, p90 {:.2}; actual within the estimate in {within}",
            config().steps[bad_from],
            quantile(&estimates, 0.5),
            ratios.len(),
            q(&ratios, 0.1),
            q(&ratios, 0.5),
            q(&ratios, 0.9)
        );
        assert!(
            reached >= (ramps as usize * 9) / 10,
            "most ramps reach step {bad_from}"
        );
        assert_eq!(
            missed, 0,
            "every ramp is rolled back on the step that turned bad"
        );
        // An estimate, not a bound: about right on the median, and within it for at
        // least a third of the ramps.
        let median = q(&ratios, 0.5);
        assert!(
            (0.5..=2.0).contains(&median),
            "median actual/estimate {median}"
        );
        assert!(3 * within >= ratios.len(), "{within} of {}", ratios.len());
    }
}
