//! One experiment across N router replicas, through the store users already run:
//! every router exports its mergeable experiment state as Prometheus counters
//! ([`Export`], a collector read at scrape time, so the hot path pays nothing), and in
//! cluster mode every replica reads the cluster's sums for its phase back
//! ([`read`]), so all replicas reach the same verdict from the same data.
//!
//! The state is sums per arm, metric and user bucket (the bucket is a function of the
//! user key alone), so the replicas' states add up to the cluster's exactly; a user
//! whose requests reach several replicas stays in one bucket. SRM cannot be summed
//! that way (one user counted by two replicas is one user): each replica exports the
//! e-value of its own sequential SRM test, and the cluster's is their mean, an
//! e-value under any dependence between the replicas.

pub mod promql;
#[cfg(test)]
mod srm_sim;

use abgate_stats::{Metric, UserArmStats, BUCKETS};
use prometheus::proto::{Counter, Gauge, LabelPair, MetricFamily, MetricType};
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use self::promql::{QueryError, Sample};
use abgate_common::client::HttpClient;

/// Per arm, metric and bucket: the sum of the observations.
pub const SUM: &str = "abgate_experiment_sum_total";
/// Per arm, metric and bucket: the number of observations.
pub const COUNT: &str = "abgate_experiment_count_total";
/// Per arm and metric: the sum of squared observations (the variance floor).
pub const SUM_SQUARES: &str = "abgate_experiment_sum_squares_total";
/// Per replica: the e-value of its sequential SRM test.
pub const SRM_EVALUE: &str = "abgate_experiment_srm_evalue";
/// A guardrail that tripped in a phase (1), on the replica that tripped it.
pub const TRIPPED: &str = "abgate_guardrail_tripped";
/// Per arm of a phase: its configured weight, labelled with its position in the
/// config (`arm`, 0 = the control), so the cluster's view needs no router config.
pub const ARM_WEIGHT: &str = "abgate_experiment_arm_weight";
/// Per arm of a phase: the distinct users this replica's hash assigned to it,
/// estimated from its user sample. Distinct users cannot be summed over replicas (one
/// user reaches several): the cluster's figure is the largest replica's, a lower
/// bound.
pub const PHASE_USERS: &str = "abgate_experiment_phase_users";

/// What one phase exports.
#[derive(Debug, Clone, Default)]
pub struct PhaseExport {
    /// The phase's content id (the same on every replica).
    pub phase_id: String,
    /// Each arm's mergeable statistics, by arm name, in config order.
    pub arms: Vec<(String, UserArmStats)>,
    /// Each arm's configured weight, in the same order.
    pub weights: Vec<f64>,
    /// Each arm's distinct users on this replica (estimated), in the same order.
    pub users: Vec<f64>,
    /// This replica's SRM e-value, if it has one yet.
    pub srm_evalue: Option<f64>,
    /// Guardrails this replica tripped in the phase.
    pub tripped: Vec<String>,
}

/// The export collector: asks `phases` for the current and recent phases at every
/// scrape and writes them as counters.
pub struct Export<F> {
    phases: F,
    descs: Vec<prometheus::core::Desc>,
}

impl<F> Export<F>
where
    F: Fn() -> Vec<PhaseExport> + Send + Sync,
{
    /// A collector over `phases`.
    pub fn new(phases: F) -> Result<Self, prometheus::Error> {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            prometheus::core::Desc::new(
                name.to_string(),
                help.to_string(),
                labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
        };
        Ok(Export {
            phases,
            descs: vec![
                desc(
                    SUM,
                    "Sum of observations per arm, metric and user bucket, by phase.",
                    &["phase_id", "variant", "metric", "bucket"],
                )?,
                desc(
                    COUNT,
                    "Observations per arm, metric and user bucket, by phase.",
                    &["phase_id", "variant", "metric", "bucket"],
                )?,
                desc(
                    SUM_SQUARES,
                    "Sum of squared observations per arm and metric, by phase.",
                    &["phase_id", "variant", "metric"],
                )?,
                desc(
                    SRM_EVALUE,
                    "This replica's sequential SRM e-value, by phase.",
                    &["phase_id"],
                )?,
                desc(
                    TRIPPED,
                    "Guardrails tripped in a phase by this replica (1).",
                    &["phase_id", "guardrail"],
                )?,
                desc(
                    ARM_WEIGHT,
                    "Configured weight of each arm of a phase (arm: its position, 0 = control).",
                    &["phase_id", "variant", "arm"],
                )?,
                desc(
                    PHASE_USERS,
                    "Distinct users this replica assigned to each arm of a phase (estimated from its user sample).",
                    &["phase_id", "variant"],
                )?,
            ],
        })
    }
}

fn pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut p = LabelPair::default();
            p.set_name(k.to_string());
            p.set_value(v.to_string());
            p
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f
}

fn counter(labels: &[(&str, &str)], value: f64) -> prometheus::proto::Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = prometheus::proto::Metric::default();
    m.set_label(pairs(labels));
    m.set_counter(c);
    m
}

fn gauge(labels: &[(&str, &str)], value: f64) -> prometheus::proto::Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = prometheus::proto::Metric::default();
    m.set_label(pairs(labels));
    m.set_gauge(g);
    m
}

/// The families for `phases`. Every bucket of every arm and metric of a phase is
/// exported, zeros included: the series are fixed by the config (arms) from the
/// phase's start, so no request — bad input included — ever adds one.
pub fn families(phases: &[PhaseExport]) -> Vec<MetricFamily> {
    let mut sum = family(
        SUM,
        "Sum of observations per arm, metric and user bucket, by phase.",
        MetricType::COUNTER,
    );
    let mut count = family(
        COUNT,
        "Observations per arm, metric and user bucket, by phase.",
        MetricType::COUNTER,
    );
    let mut squares = family(
        SUM_SQUARES,
        "Sum of squared observations per arm and metric, by phase.",
        MetricType::COUNTER,
    );
    let mut srm = family(
        SRM_EVALUE,
        "This replica's sequential SRM e-value, by phase.",
        MetricType::GAUGE,
    );
    let mut tripped = family(
        TRIPPED,
        "Guardrails tripped in a phase by this replica (1).",
        MetricType::GAUGE,
    );
    let mut weights = family(
        ARM_WEIGHT,
        "Configured weight of each arm of a phase (arm: its position, 0 = control).",
        MetricType::GAUGE,
    );
    let mut users = family(
        PHASE_USERS,
        "Distinct users this replica assigned to each arm of a phase (estimated from its user sample).",
        MetricType::GAUGE,
    );
    let mut buckets: Vec<String> = Vec::new();
    for b in 0..BUCKETS {
        buckets.push(b.to_string());
    }
    for phase in phases {
        let id = phase.phase_id.as_str();
        for (variant, stats) in &phase.arms {
            for metric in Metric::ALL {
                let sums = stats.sums(metric);
                for (b, (s, n)) in sums.buckets().enumerate() {
                    let labels = [
                        ("phase_id", id),
                        ("variant", variant.as_str()),
                        ("metric", metric.as_str()),
                        ("bucket", buckets[b].as_str()),
                    ];
                    sum.mut_metric().push(counter(&labels, s));
                    count.mut_metric().push(counter(&labels, n as f64));
                }
                squares.mut_metric().push(counter(
                    &[
                        ("phase_id", id),
                        ("variant", variant.as_str()),
                        ("metric", metric.as_str()),
                    ],
                    sums.sum_sq(),
                ));
            }
        }
        for (i, ((variant, _), w)) in phase.arms.iter().zip(&phase.weights).enumerate() {
            let arm = i.to_string();
            weights.mut_metric().push(gauge(
                &[("phase_id", id), ("variant", variant), ("arm", &arm)],
                *w,
            ));
        }
        for ((variant, _), n) in phase.arms.iter().zip(&phase.users) {
            users
                .mut_metric()
                .push(gauge(&[("phase_id", id), ("variant", variant)], *n));
        }
        if let Some(e) = phase.srm_evalue {
            srm.mut_metric().push(gauge(&[("phase_id", id)], e));
        }
        for g in &phase.tripped {
            tripped
                .mut_metric()
                .push(gauge(&[("phase_id", id), ("guardrail", g.as_str())], 1.0));
        }
    }
    vec![sum, count, squares, srm, tripped, weights, users]
}

impl<F> prometheus::core::Collector for Export<F>
where
    F: Fn() -> Vec<PhaseExport> + Send + Sync,
{
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&(self.phases)())
    }
}

/// The cluster's view of one phase, summed over the replicas.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Each arm's statistics, summed over the replicas, by arm name.
    pub arms: BTreeMap<String, UserArmStats>,
    /// Replicas that exported the phase.
    pub replicas: usize,
    /// Unix time of the newest sample (how fresh the data is).
    pub freshest: Option<f64>,
    /// The mean of the replicas' SRM e-values.
    pub srm_evalue: Option<f64>,
    /// Guardrails any replica tripped in the phase.
    pub tripped: BTreeSet<String>,
    /// The phase's arms and weights in config order (the control first), as the
    /// replicas export them.
    pub weights: Vec<(String, f64)>,
    /// Each arm's distinct users as the replica that saw the most counts them (a
    /// lower bound on the cluster's: one user's requests reach several replicas).
    pub users: BTreeMap<String, f64>,
}

/// Why the cluster's state could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// Prometheus did not answer usefully.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A phase id that is not a content id (never put into a query).
    #[error("phase id {0:?} is not hexadecimal")]
    BadPhase(String),
    /// A rollout id that is not hexadecimal (never put into a query).
    #[error("rollout id {0:?} is not hexadecimal")]
    BadRollout(String),
}

/// Reads the cluster's sums for `phase_id` from the Prometheus at `base`.
pub async fn read(
    client: &HttpClient,
    base: &str,
    phase_id: &str,
) -> Result<ClusterState, SourceError> {
    if phase_id.is_empty() || !phase_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SourceError::BadPhase(phase_id.chars().take(32).collect()));
    }
    let [sums, counts, squares, replicas, freshest, srm, tripped, weights, users] =
        queries(phase_id).map(|q| async move { promql::query(client, base, &q).await });
    let (sums, counts, squares, replicas, freshest, srm, tripped, weights, users) =
        tokio::join!(sums, counts, squares, replicas, freshest, srm, tripped, weights, users);
    let (sums, counts, squares, replicas, freshest, srm, tripped, weights, users) = (
        sums?, counts?, squares?, replicas?, freshest?, srm?, tripped?, weights?, users?,
    );
    let mut weights: Vec<(usize, String, f64)> = weights
        .iter()
        .filter_map(|s| {
            let arm = s.labels.get("arm")?.parse::<usize>().ok()?;
            Some((arm, s.labels.get("variant")?.clone(), s.value))
        })
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    weights.dedup_by(|a, b| a.0 == b.0);
    Ok(ClusterState {
        arms: assemble(&sums, &counts, &squares),
        replicas: replicas.first().map_or(0, |s| s.value as usize),
        freshest: freshest.first().map(|s| s.value),
        srm_evalue: srm.first().map(|s| s.value).filter(|v| v.is_finite()),
        tripped: tripped
            .iter()
            .filter(|s| s.value > 0.0)
            .filter_map(|s| s.labels.get("guardrail").cloned())
            .collect(),
        weights: weights.into_iter().map(|(_, v, w)| (v, w)).collect(),
        users: users
            .iter()
            .filter(|s| s.value.is_finite() && s.value >= 0.0)
            .filter_map(|s| Some((s.labels.get("variant")?.clone(), s.value)))
            .collect(),
    })
}

/// Every record of the rollout `rollout` (its id, [`crate::rollout::rollout_id`])
/// that any replica exported in the last [`TRIP_MEMORY`], the one that supersedes
/// the others first, each with the replicas exporting it now. A restarted replica
/// finds the cluster's step here although every replica restarted since.
pub async fn read_rollout(
    client: &HttpClient,
    base: &str,
    rollout: &str,
) -> Result<Vec<crate::rollout::Position>, SourceError> {
    if rollout.is_empty() || !rollout.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SourceError::BadRollout(rollout.chars().take(32).collect()));
    }
    let [ever, now] = rollout_queries(rollout);
    let (ever, now) = tokio::join!(
        promql::query(client, base, &ever),
        promql::query(client, base, &now)
    );
    let (ever, now) = (ever?, now?);
    let key = |s: &Sample| -> Option<(u64, crate::rollout::RolloutState, usize, f64)> {
        let state =
            serde_json::from_value(serde_json::Value::String(s.labels.get("state")?.clone()))
                .ok()?;
        Some((
            s.labels.get("revision")?.parse().ok()?,
            state,
            s.labels.get("step")?.parse().ok()?,
            s.labels.get("started_at")?.parse().ok()?,
        ))
    };
    let mut positions: Vec<crate::rollout::Position> = ever
        .iter()
        .filter(|s| s.value.is_finite())
        .filter_map(|s| {
            let (revision, state, step, started_at) = key(s)?;
            let replicas = now
                .iter()
                .filter(|n| key(n) == Some((revision, state, step, started_at)))
                .map(|n| n.value.max(0.0) as usize)
                .sum();
            Some(crate::rollout::Position {
                revision,
                state,
                step,
                step_started_at: s.value,
                started_at,
                replicas,
            })
        })
        .collect();
    positions.sort_by(|a, b| b.order(a));
    Ok(positions)
}

/// [`read_rollout`]'s queries: each record ever exported in the last
/// [`TRIP_MEMORY`] with its earliest step start, and the replicas on each now.
pub fn rollout_queries(rollout: &str) -> [String; 2] {
    let selector = format!("{}{{rollout=\"{rollout}\"}}", crate::rollout::RECORD);
    let by = "revision, state, step, started_at";
    [
        format!("min by ({by}) (min_over_time({selector}[{TRIP_MEMORY}]))"),
        format!("count by ({by}) ({selector})"),
    ]
}

/// One phase Prometheus has samples of: its id, the newest sample's Unix time, and
/// the replicas exporting it.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSeen {
    /// The phase's content id.
    pub phase_id: String,
    /// Unix time of its newest sample.
    pub freshest: f64,
    /// Replicas exporting it now.
    pub replicas: usize,
    /// The largest phase number a replica gives it.
    pub number: u64,
}

/// The phases the replicas export now, the current one first: the freshest samples,
/// then the most replicas (during a change both phases are fresh for up to a tick).
pub async fn phases(client: &HttpClient, base: &str) -> Result<Vec<PhaseSeen>, QueryError> {
    let fresh = format!("max by (phase_id) (timestamp({SRM_EVALUE}))");
    let counts = format!("count by (phase_id) ({SRM_EVALUE})");
    let numbers = "max by (phase_id) (abgate_experiment_phase_info)";
    let (fresh, counts, numbers) = tokio::join!(
        promql::query(client, base, &fresh),
        promql::query(client, base, &counts),
        promql::query(client, base, numbers)
    );
    let (fresh, counts, numbers) = (fresh?, counts?, numbers?);
    let of = |samples: &[Sample], id: &str| {
        samples
            .iter()
            .find(|s| s.labels.get("phase_id").map(String::as_str) == Some(id))
            .map_or(0.0, |s| s.value)
    };
    let mut seen: Vec<PhaseSeen> = fresh
        .iter()
        .filter_map(|s| {
            let id = s.labels.get("phase_id")?;
            id.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| PhaseSeen {
                    phase_id: id.clone(),
                    freshest: s.value,
                    replicas: of(&counts, id) as usize,
                    number: of(&numbers, id) as u64,
                })
        })
        .collect();
    // Samples a few scrapes apart are equally fresh: then the most replicas decide.
    let newest = seen.iter().map(|p| p.freshest).fold(f64::MIN, f64::max);
    let recent = |p: &PhaseSeen| p.freshest >= newest - 3.0;
    seen.sort_by(|a, b| {
        recent(b)
            .cmp(&recent(a))
            .then(b.replicas.cmp(&a.replicas))
            .then(b.freshest.total_cmp(&a.freshest))
    });
    Ok(seen)
}

/// How far back a trip is looked for: a trip stays in force for its phase although
/// every replica that knew of it has restarted since (30 days of Prometheus
/// retention; beyond, the operator has made the rollback permanent in the config, or
/// the phase is long over).
pub const TRIP_MEMORY: &str = "30d";

/// The instant queries of [`read`] for `phase_id` (already checked to be hex): the
/// sums, counts and sums of squares by arm, metric and bucket over the replicas; the
/// replicas exporting the phase (each exports its SRM e-value from its first scrape,
/// before any request); the newest sample's time; the mean SRM e-value; and every
/// guardrail tripped in the phase by any replica in the last [`TRIP_MEMORY`]; the
/// arms' weights; each arm's users on the replica that saw the most.
pub fn queries(phase_id: &str) -> [String; 9] {
    let selector = format!("{{phase_id=\"{phase_id}\"}}");
    let by = "variant, metric, bucket";
    [
        format!("sum by ({by}) ({SUM}{selector})"),
        format!("sum by ({by}) ({COUNT}{selector})"),
        format!("sum by (variant, metric) ({SUM_SQUARES}{selector})"),
        format!("count(count by (instance) ({SRM_EVALUE}{selector}))"),
        format!("max(timestamp({SRM_EVALUE}{selector}))"),
        format!("avg({SRM_EVALUE}{selector})"),
        format!("max by (guardrail) (max_over_time({TRIPPED}{selector}[{TRIP_MEMORY}]))"),
        format!("max by (variant, arm) ({ARM_WEIGHT}{selector})"),
        format!("max by (variant) ({PHASE_USERS}{selector})"),
    ]
}

/// Each arm's statistics from the summed series (samples with an unknown metric or a
/// bucket out of range are skipped: they are not ours).
pub fn assemble(
    sums: &[Sample],
    counts: &[Sample],
    squares: &[Sample],
) -> BTreeMap<String, UserArmStats> {
    let key = |s: &Sample| -> Option<(String, Metric, usize)> {
        let variant = s.labels.get("variant")?.clone();
        let metric = Metric::from_str(s.labels.get("metric")?).ok()?;
        let bucket = s
            .labels
            .get("bucket")?
            .parse::<usize>()
            .ok()
            .filter(|b| *b < BUCKETS)?;
        Some((variant, metric, bucket))
    };
    let mut totals: BTreeMap<(String, Metric, usize), (f64, u64)> = BTreeMap::new();
    for s in sums {
        if let Some(k) = key(s) {
            totals.entry(k).or_default().0 = s.value;
        }
    }
    for s in counts {
        if let Some(k) = key(s) {
            totals.entry(k).or_default().1 = s.value.max(0.0).round() as u64;
        }
    }
    let mut arms: BTreeMap<String, UserArmStats> = BTreeMap::new();
    for ((variant, metric, bucket), (sum, n)) in totals {
        arms.entry(variant)
            .or_default()
            .sums_mut(metric)
            .add_bucket(bucket, sum, n);
    }
    for s in squares {
        let (Some(variant), Some(metric)) = (
            s.labels.get("variant"),
            s.labels
                .get("metric")
                .and_then(|m| Metric::from_str(m).ok()),
        ) else {
            continue;
        };
        arms.entry(variant.clone())
            .or_default()
            .sums_mut(metric)
            .add_sum_sq(s.value);
    }
    arms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(seed: u64, n: usize) -> UserArmStats {
        let mut s = UserArmStats::new();
        for i in 0..n as u64 {
            let h = (i + seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let bucket = abgate_stats::bucket_of(h);
            s.record_response(
                bucket,
                if i % 17 == 0 { 503 } else { 200 },
                0.001 * (i % 7) as f64,
            );
            s.record_rating(bucket, (i % 5 + 1) as f64);
        }
        s
    }

    /// The samples Prometheus would answer for `phases` exported by several replicas:
    /// the families' series summed by (variant, metric, bucket).
    fn summed(replicas: &[Vec<PhaseExport>]) -> (Vec<Sample>, Vec<Sample>, Vec<Sample>) {
        let mut by: [BTreeMap<Vec<(String, String)>, f64>; 3] = Default::default();
        for r in replicas {
            for f in families(r) {
                let slot = match f.name() {
                    SUM => 0,
                    COUNT => 1,
                    SUM_SQUARES => 2,
                    _ => continue,
                };
                for m in f.get_metric() {
                    let labels: Vec<(String, String)> = m
                        .get_label()
                        .iter()
                        .filter(|l| l.name() != "phase_id")
                        .map(|l| (l.name().to_string(), l.value().to_string()))
                        .collect();
                    *by[slot].entry(labels).or_default() += m.get_counter().get_value();
                }
            }
        }
        let samples = |m: &BTreeMap<Vec<(String, String)>, f64>| {
            m.iter()
                .map(|(labels, v)| Sample {
                    labels: labels.iter().cloned().collect(),
                    value: *v,
                    at: 0.0,
                })
                .collect::<Vec<_>>()
        };
        (samples(&by[0]), samples(&by[1]), samples(&by[2]))
    }

    #[test]
    fn the_replicas_exports_sum_to_the_merged_state_exactly() {
        let parts: Vec<(UserArmStats, UserArmStats)> = (0..3)
            .map(|r| {
                (
                    stats(r * 1000, 400 + 50 * r as usize),
                    stats(r * 77 + 5, 90),
                )
            })
            .collect();
        let replicas: Vec<Vec<PhaseExport>> = parts
            .iter()
            .map(|(a, b)| {
                vec![PhaseExport {
                    phase_id: "ab12".into(),
                    arms: vec![
                        ("best_model".into(), a.clone()),
                        ("candidate_model".into(), b.clone()),
                    ],
                    weights: vec![90.0, 10.0],
                    users: vec![40.0, 9.0],
                    srm_evalue: Some(1.0),
                    tripped: vec![],
                }]
            })
            .collect();
        let (sums, counts, squares) = summed(&replicas);
        let cluster = assemble(&sums, &counts, &squares);
        let mut best = UserArmStats::new();
        let mut candidate = UserArmStats::new();
        for (a, b) in &parts {
            best.merge(a);
            candidate.merge(b);
        }
        for (name, merged) in [("best_model", &best), ("candidate_model", &candidate)] {
            let got = &cluster[name];
            for metric in Metric::ALL {
                let (g, m) = (got.sums(metric), merged.sums(metric));
                assert_eq!(g.count(), m.count(), "{name} {metric}");
                let got_buckets: Vec<(f64, u64)> = g.buckets().collect();
                let want: Vec<(f64, u64)> = m.buckets().collect();
                for (x, y) in got_buckets.iter().zip(&want) {
                    assert_eq!(x.1, y.1);
                    assert!(
                        (x.0 - y.0).abs() <= 1e-9 * y.0.abs().max(1.0),
                        "{x:?} {y:?}"
                    );
                }
                assert!((g.sum_sq() - m.sum_sq()).abs() <= 1e-9 * m.sum_sq().abs().max(1.0));
            }
        }
    }

    #[test]
    fn every_query_is_about_the_phase_and_trips_are_remembered_for_30_days() {
        let q = queries("00ff12ab");
        assert!(
            q.iter().all(|q| q.contains(r#"{phase_id="00ff12ab"}"#)),
            "{q:?}"
        );
        assert!(
            q[6].contains("max_over_time(abgate_guardrail_tripped{") && q[6].ends_with("[30d]))")
        );
        // Replicas and freshness from the series every replica exports from its first
        // scrape, before any request.
        assert!(q[3].contains(SRM_EVALUE) && q[4].contains(SRM_EVALUE));
    }

    #[test]
    fn rollout_records_are_read_for_the_rollout_over_30_days_with_their_earliest_start() {
        let [ever, now] = rollout_queries("ab12");
        assert_eq!(
            ever,
            "min by (revision, state, step, started_at) (min_over_time(abgate_rollout_record{rollout=\"ab12\"}[30d]))"
        );
        assert_eq!(
            now,
            "count by (revision, state, step, started_at) (abgate_rollout_record{rollout=\"ab12\"})"
        );
    }

    #[tokio::test]
    async fn a_phase_or_rollout_id_that_is_not_hex_never_reaches_a_query() {
        let client = HttpClient::new(std::time::Duration::from_millis(100));
        for bad in ["", "ab\"}) or vector(1", "zz"] {
            let r = read(&client, "http://127.0.0.1:9", bad).await;
            assert!(matches!(r, Err(SourceError::BadPhase(_))), "{bad}: {r:?}");
            let r = read_rollout(&client, "http://127.0.0.1:9", bad).await;
            assert!(matches!(r, Err(SourceError::BadRollout(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn foreign_series_are_ignored() {
        let sample = |metric: &str, bucket: &str| Sample {
            labels: [("variant", "a"), ("metric", metric), ("bucket", bucket)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: 3.0,
            at: 0.0,
        };
        let arms = assemble(
            &[
                sample("nonsense", "1"),
                sample("rating", "999"),
                sample("rating", "2"),
            ],
            &[sample("rating", "2")],
            &[],
        );
        assert_eq!(arms["a"].sums(Metric::Rating).count(), 3);
        assert_eq!(arms["a"].sums(Metric::Rating).nonempty_buckets(), 1);
    }
}
