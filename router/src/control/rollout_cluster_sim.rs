//! Simulated ramps of one rollout across three replicas in cluster mode: the
//! rollout's decision rule ([`super::rollout::decide`]) on each replica at its own
//! tick, on the cluster's figures as Prometheus last scraped them, and the adoption
//! rule ([`crate::rollout::adoption`]) at each replica's own cluster read, over the
//! records Prometheus keeps (the earliest start of each, as `min_over_time` does).
//! Users arrive at random replicas and get that replica's step; an operator pauses
//! on one replica and resumes on another at random times. Checked over many seeded
//! ramps: the replicas are never apart (on different steps or states) longer than a
//! scrape and a read, no replica ever lowers the candidate's share short of a
//! rollback, they end in one state, and the error rates are a single node's.
//!
//! Run `cargo test -p abgate-router --lib rollout_cluster_sim -- --nocapture`.

use abgate_stats::{bucket_of, compare_users, BucketSums, Metric, UserCompareConfig, Verdict};
use std::collections::HashMap;

use super::rollout::{combine, decide, Decision, Evidence, Gate, Stratum};
use super::rollout_sim::{config, quantile, Rng, ALPHA, MAX_DEGRADATION};
use crate::config::RolloutConfig;
use crate::rollout::{adoption, Adoption, Position, RolloutState};

/// The simulation's time step.
const DT: f64 = 0.05;
/// The rollout's tick on each replica.
const TICK: f64 = 1.0;

#[derive(Clone, Copy)]
struct World {
    /// Router replicas (1: a single node, for comparison).
    replicas: usize,
    users_per_second: u64,
    base_error: f64,
    extra_error: f64,
    max_seconds: f64,
    /// Prometheus's scrape interval.
    scrape: f64,
    /// `experiment.cluster_interval_ms`, in seconds.
    interval: f64,
    /// An operator pauses on one replica and resumes on another.
    operator: bool,
}

/// One replica: its record's position, whether it has read the cluster's records,
/// and the offsets of its tick and of its cluster reads.
struct Replica {
    pos: Position,
    seen: bool,
    /// The highest revision in this replica's last read.
    seen_revision: u64,
    tick_offset: f64,
    read_offset: f64,
    /// The weights in force: the step whose phase records its users (none before
    /// the first step, after a rollback or the promotion) and the candidate's percent.
    applied: (Option<usize>, f64),
}

/// One step's (phase's) statistics, summed over the replicas.
#[derive(Clone, Default)]
struct Phase {
    candidate: BucketSums,
    control: BucketSums,
    candidate_users: u64,
}

struct Outcome {
    state: RolloutState,
    seconds: f64,
    /// The longest time from a move on one replica (a record superseding every
    /// replica's) to every replica being on it.
    longest_apart: f64,
    /// A replica lowered the candidate's share without a rollback.
    moved_back: bool,
    /// The longest time the replicas' shares in force differed.
    shares_apart: f64,
}

fn start() -> Position {
    Position {
        revision: 0,
        state: RolloutState::Pending,
        step: 0,
        step_started_at: 0.0,
        started_at: 0.0,
        replicas: 1,
    }
}

/// The candidate's percent of users on a replica at `p`.
fn percent(config: &RolloutConfig, p: &Position) -> f64 {
    match p.state {
        RolloutState::Pending | RolloutState::RolledBack => 0.0,
        RolloutState::Completed => 100.0,
        RolloutState::Running | RolloutState::Paused => config.steps[p.step],
    }
}

/// A phase's stratum and comparison for the gate.
fn gate_of(phase: &Phase, compare: &UserCompareConfig) -> (Option<Stratum>, Gate) {
    let u = compare_users(Metric::ErrorRate, &phase.candidate, &phase.control, compare);
    let c = u.comparison;
    let enough = c.verdict != Verdict::NotEnoughData;
    let stratum = u.interval.filter(|_| enough).map(|i| Stratum {
        phase_id: String::new(),
        estimate: i.estimate,
        std_error: i.std_error,
        effective_n: i.effective_n,
        degrees_of_freedom: i.degrees_of_freedom,
        ci_low: Some(i.ci_low),
        ci_high: Some(i.ci_high),
    });
    let gate = Gate {
        name: "errors".into(),
        metric: Metric::ErrorRate,
        max_degradation: MAX_DEGRADATION,
        estimate: c.estimate,
        ci_low: c.ci_low,
        ci_high: c.ci_high,
        enough_data: enough,
        tripped: false,
        strata: Vec::new(),
        step: stratum.clone(),
        alpha: Some(ALPHA),
    };
    (stratum, gate)
}

/// The evidence on step `step` from the scraped figures: the step's own, combined
/// with the earlier steps' (stratified by phase).
fn evidence(scraped: &HashMap<usize, Phase>, step: usize, compare: &UserCompareConfig) -> Evidence {
    let empty = Phase::default();
    let now = scraped.get(&step).unwrap_or(&empty);
    let (current, mut gate) = gate_of(now, compare);
    let mut strata: Vec<Stratum> = (0..step)
        .filter_map(|k| scraped.get(&k).and_then(|p| gate_of(p, compare).0))
        .collect();
    if !strata.is_empty() {
        strata.extend(current);
        if let Some((estimate, low, high)) = combine(&strata, ALPHA) {
            gate.estimate = Some(estimate);
            gate.ci_low = Some(low);
            gate.ci_high = Some(high);
            gate.enough_data = true;
            gate.strata = strata;
        }
    }
    Evidence {
        phase_id: String::new(),
        candidate_users: now.candidate_users,
        srm_alarm: false,
        srm_p_value: 1.0,
        gates: vec![gate],
        last_trip: None,
        previous_phase_users: 0,
        stale: None,
        detection_latency: TICK,
    }
}

/// Whether `t` (a multiple of DT) is a tick of a clock with `period` and `offset`.
fn due(t: f64, period: f64, offset: f64) -> bool {
    let phase = (t - offset).rem_euclid(period);
    phase < DT / 2.0 || period - phase < DT / 2.0
}

fn ramp(world: &World, seed: u64) -> Outcome {
    let config = config();
    let compare = UserCompareConfig {
        min_samples: 100,
        ..UserCompareConfig::default()
    };
    let mut rng = Rng(seed);
    let mut replicas: Vec<Replica> = (0..world.replicas)
        .map(|_| Replica {
            pos: start(),
            seen: false,
            seen_revision: 0,
            tick_offset: rng.unit() * TICK,
            read_offset: rng.unit() * world.interval,
            applied: (None, 0.0),
        })
        .collect();
    let scrape_offset = rng.unit() * world.scrape;
    // The operator's pause and resume, on two replicas.
    let pause_at = 20.0 + rng.unit() * 200.0;
    let resume_at = pause_at + 3.0 + rng.unit() * 10.0;
    let (pauser, resumer) = (
        (rng.next() % world.replicas as u64) as usize,
        (rng.next() % world.replicas as u64) as usize,
    );
    let mut resumed = false;
    let mut live: HashMap<usize, Phase> = HashMap::new();
    let mut scraped: HashMap<usize, Phase> = HashMap::new();
    // Every record Prometheus has scraped, with its earliest step start.
    let mut store: Vec<Position> = Vec::new();
    let (mut longest_apart, mut moved_back) = (0.0f64, false);
    let (mut shares_apart, mut shares_since) = (0.0f64, None::<f64>);
    // Cluster mode schedules a step ahead (three intervals and a tick).
    let lead = if world.replicas > 1 {
        3.0 * world.interval + TICK
    } else {
        0.0
    };
    // The latest move: its (revision, state, step), when it appeared, whether every
    // replica is on it.
    let mut current: (Option<(u64, RolloutState, usize)>, f64, bool) = (None, 0.0, true);
    let per_dt = (world.users_per_second as f64 * DT).round() as u64;
    let mut t = 0.0;
    while t < world.max_seconds {
        t += DT;
        let before: Vec<f64> = replicas.iter().map(|r| r.applied.1).collect();
        // Users, each to a random replica, on the weights in force there.
        for _ in 0..per_dt {
            let r = &replicas[(rng.next() % world.replicas as u64) as usize];
            let user = rng.next();
            let bucket = bucket_of(user);
            let on_candidate = rng.unit() * 100.0 < r.applied.1;
            let Some(step) = r.applied.0 else {
                continue;
            };
            let phase = live.entry(step).or_default();
            if on_candidate {
                let error = rng.unit() < world.base_error + world.extra_error;
                phase.candidate.push_bool(bucket, error);
                phase.candidate_users += 1;
            } else {
                phase
                    .control
                    .push_bool(bucket, rng.unit() < world.base_error);
            }
        }
        // Prometheus scrapes every replica.
        if due(t, world.scrape, scrape_offset) {
            scraped.clone_from(&live);
            for r in &replicas {
                if r.pos.state == RolloutState::Pending {
                    continue;
                }
                let key = |p: &Position| (p.revision, p.state, p.step, p.started_at.to_bits());
                match store.iter_mut().find(|p| key(p) == key(&r.pos)) {
                    Some(p) => p.step_started_at = p.step_started_at.min(r.pos.step_started_at),
                    None => store.push(r.pos.clone()),
                }
            }
            store.sort_by(|a, b| b.order(a));
        }
        for (i, r) in replicas.iter_mut().enumerate() {
            // The cluster read: the superseding record adopted.
            if due(t, world.interval, r.read_offset) {
                r.seen = true;
                r.seen_revision = store.iter().map(|p| p.revision).max().unwrap_or(0);
                if let Some(best) = store.first() {
                    match adoption(&r.pos, best) {
                        Adoption::Keep => {}
                        Adoption::Starts {
                            step_started_at,
                            started_at,
                        } => {
                            r.pos.step_started_at = step_started_at;
                            r.pos.started_at = started_at;
                        }
                        Adoption::Take(p) => r.pos = p,
                    }
                }
            }
            let revision = r.pos.revision.max(r.seen_revision) + 1;
            // The operator.
            if world.operator && i == pauser && (t - pause_at).abs() < DT / 2.0 {
                if r.pos.state == RolloutState::Running {
                    (r.pos.revision, r.pos.state) = (revision, RolloutState::Paused);
                }
                continue;
            }
            // Resumed on another replica once it shows the pause (before, it answers
            // 409 and the operator asks again).
            if world.operator
                && i == resumer
                && !resumed
                && t >= resume_at
                && r.pos.state == RolloutState::Paused
            {
                (r.pos.revision, r.pos.state) = (revision, RolloutState::Running);
                resumed = true;
                continue;
            }
            // The rollout's tick.
            if !r.seen || !due(t, TICK, r.tick_offset) {
                continue;
            }
            match r.pos.state {
                RolloutState::Pending => {
                    r.pos = Position {
                        revision,
                        state: RolloutState::Running,
                        step: 0,
                        step_started_at: t + lead,
                        started_at: t + lead,
                        replicas: 1,
                    };
                }
                RolloutState::Running => {
                    let e = evidence(&scraped, r.pos.step, &compare);
                    let seconds = t - r.pos.step_started_at;
                    match decide(&config, RolloutState::Running, r.pos.step, seconds, &e) {
                        Decision::Hold(_) => {}
                        Decision::Advance { to } => {
                            (r.pos.revision, r.pos.step, r.pos.step_started_at) =
                                (revision, to, t + lead);
                        }
                        Decision::RollBack(_) => {
                            (r.pos.revision, r.pos.state) = (revision, RolloutState::RolledBack);
                        }
                        Decision::Complete => {
                            (r.pos.revision, r.pos.state, r.pos.step) =
                                (revision, RolloutState::Completed, config.steps.len() - 1);
                            r.pos.step_started_at = t + lead;
                        }
                    }
                }
                _ => {}
            }
        }
        // The weights in force: a rollback at once, a step at its scheduled moment.
        for r in &mut replicas {
            match r.pos.state {
                RolloutState::RolledBack => r.applied = (None, 0.0),
                RolloutState::Pending => {}
                s if t >= r.pos.step_started_at => {
                    let step = (s != RolloutState::Completed).then_some(r.pos.step);
                    r.applied = (step, percent(&config, &r.pos));
                }
                _ => {}
            }
        }
        // Invariants: never a lower share short of a rollback; how long the shares in
        // force differ between replicas.
        for (r, was) in replicas.iter().zip(&before) {
            moved_back |= r.applied.1 < *was - 1e-9 && r.pos.state != RolloutState::RolledBack;
        }
        let same_share = replicas
            .iter()
            .all(|r| (r.applied.1 - replicas[0].applied.1).abs() < 1e-9);
        match (same_share, shares_since) {
            (false, None) => shares_since = Some(t),
            (true, Some(since)) => {
                shares_apart = shares_apart.max(t - since);
                shares_since = None;
            }
            _ => {}
        }
        // A move: a record that supersedes every replica's appears on one of them;
        // how long until every replica is on it (unless a newer move replaces it).
        let key = |p: &Position| (p.revision, p.state, p.step);
        let top = replicas
            .iter()
            .map(|r| &r.pos)
            .max_by(|a, b| a.order(b))
            .map(key);
        if top != current.0 {
            current = (top, t, false);
        }
        if !current.2 && replicas.iter().all(|r| Some(key(&r.pos)) == current.0) {
            longest_apart = longest_apart.max(t - current.1);
            current.2 = true;
        }
        let together = replicas
            .iter()
            .all(|r| key(&r.pos) == key(&replicas[0].pos));
        if together && replicas[0].pos.state.is_final() {
            return Outcome {
                state: replicas[0].pos.state,
                seconds: t,
                longest_apart,
                moved_back,
                shares_apart,
            };
        }
    }
    let together = replicas.iter().all(|r| {
        (r.pos.revision, r.pos.state, r.pos.step)
            == (
                replicas[0].pos.revision,
                replicas[0].pos.state,
                replicas[0].pos.step,
            )
    });
    Outcome {
        state: if together {
            replicas[0].pos.state
        } else {
            RolloutState::Pending // never together at the end: counted as a failure
        },
        seconds: t,
        longest_apart: if current.2 {
            longest_apart
        } else {
            longest_apart.max(t - current.1)
        },
        moved_back,
        shares_apart: shares_apart.max(shares_since.map_or(0.0, |s| t - s)),
    }
}

struct Tally {
    promoted: Vec<u64>,
    rolled_back: usize,
    other: usize,
    longest_apart: f64,
    moved_back: usize,
    shares_apart: f64,
}

fn run(world: &World, ramps: u64, seed: u64) -> Tally {
    let mut t = Tally {
        promoted: Vec::new(),
        rolled_back: 0,
        other: 0,
        longest_apart: 0.0,
        moved_back: 0,
        shares_apart: 0.0,
    };
    for i in 0..ramps {
        let o = ramp(world, seed.wrapping_mul(1_000_003).wrapping_add(i));
        match o.state {
            RolloutState::Completed => t.promoted.push(o.seconds.round() as u64),
            RolloutState::RolledBack => t.rolled_back += 1,
            _ => t.other += 1,
        }
        t.longest_apart = t.longest_apart.max(o.longest_apart);
        t.moved_back += usize::from(o.moved_back);
        t.shares_apart = t.shares_apart.max(o.shares_apart);
    }
    t.promoted.sort_unstable();
    t
}

#[test]
fn three_replicas_move_together_and_keep_a_single_nodes_error_rates() {
    let started = std::time::Instant::now();
    let base = World {
        replicas: 3,
        users_per_second: 1000,
        base_error: 0.02,
        extra_error: 0.0,
        max_seconds: 3600.0,
        scrape: 1.0,
        interval: 1.0,
        operator: true,
    };
    let ramps: u64 = 40;
    // The same world on one node (no scrape lag, no operator), for comparison.
    let single = run(
        &World {
            replicas: 1,
            scrape: DT,
            interval: DT,
            operator: false,
            ..base
        },
        ramps,
        10,
    );
    println!(
        "1 node, A/A (1000 users/s, 2% errors, gate +1 point, steps 1-5-25-50-100, holds 60 s): {} of {ramps} promoted, {} rolled back; time to promote p10 {} s, median {} s, p90 {} s",
        single.promoted.len(),
        single.rolled_back,
        quantile(&single.promoted, 0.1),
        quantile(&single.promoted, 0.5),
        quantile(&single.promoted, 0.9)
    );
    for (scrape, interval, label) in [
        (1.0, 1.0, "scrape 1 s, read 1 s"),
        (5.0, 5.0, "scrape 5 s, read 5 s (shipped)"),
    ] {
        let aa = World {
            scrape,
            interval,
            ..base
        };
        let t = run(&aa, ramps, 11);
        let bound = scrape + interval + TICK;
        println!(
            "3 replicas, {label}, A/A with an operator's pause and resume: {} of {ramps} promoted, {} rolled back, {} not together; time to promote p10 {} s, median {} s, p90 {} s; every move on every replica within {:.2} s (bound {bound:.0} s); shares in force apart at most {:.2} s; {} ramps with a replica lowering its share",
            t.promoted.len(),
            t.rolled_back,
            t.other,
            quantile(&t.promoted, 0.1),
            quantile(&t.promoted, 0.5),
            quantile(&t.promoted, 0.9),
            t.longest_apart,
            t.shares_apart,
            t.moved_back
        );
        assert_eq!(t.moved_back, 0, "a replica lowered the candidate's share");
        // Scheduled ahead of any propagation, every replica changes its weights at
        // the same moment.
        assert!(
            t.shares_apart <= DT + 1e-9,
            "shares apart {:.2} s",
            t.shares_apart
        );
        assert_eq!(t.other, 0, "every ramp ends with the replicas together");
        assert!(
            t.longest_apart <= bound + 2.0 * DT,
            "apart {:.2} s",
            t.longest_apart
        );
        assert!(
            t.rolled_back as f64 <= ALPHA * ramps as f64,
            "A/A rolled back in {}",
            t.rolled_back
        );
        // At the allowance: promoted in at most α.
        let edge = World {
            extra_error: MAX_DEGRADATION,
            max_seconds: 600.0,
            operator: false,
            ..aa
        };
        let t = run(&edge, ramps, 12);
        println!(
            "  at the allowance (+1 point): {} of {ramps} promoted, {} rolled back, {} still holding after 600 s; every move on every replica within {:.2} s",
            t.promoted.len(),
            t.rolled_back,
            t.other,
            t.longest_apart
        );
        assert!(t.promoted.len() as f64 <= ALPHA * ramps as f64);
        assert_eq!(t.moved_back, 0);
        // Worse by 2 points: rolled back on every replica.
        let worse = World {
            extra_error: 2.0 * MAX_DEGRADATION,
            max_seconds: 3600.0,
            ..edge
        };
        let t = run(&worse, ramps, 13);
        println!(
            "  2 points worse: {} of {ramps} rolled back on every replica, {} promoted, {} neither after an hour",
            t.rolled_back,
            t.promoted.len(),
            t.other
        );
        assert!(t.promoted.is_empty());
        assert!(t.rolled_back as f64 >= 0.9 * ramps as f64);
    }
    println!("simulated in {:?}", started.elapsed());
}
