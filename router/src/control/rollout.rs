//! The progressive rollout carried out (`[rollout]`): one candidate ramped through its
//! `steps` (percent of users) on evidence, not on a clock.
//!
//! * [`decide`] is the pure rule: on a step, advance only when the hold has elapsed,
//!   the candidate has seen its users, SRM does not alarm, and every gate's confidence
//!   sequence (arm − control, at the guardrail's level) lies on the good side of the
//!   gate's `max_degradation` (non-inferiority, [`abgate_stats::noninferiority`]); roll
//!   back when a gate's sequence lies wholly beyond it (the guardrail trip rule,
//!   [`abgate_stats::guardrail`]); complete after the last step (or when the next step
//!   is 100%). Every other case is a hold, with what it waits for in words.
//! * [`evidence_from`] is the one adapter from the experiment's view
//!   (`crate::experiment::ExperimentView`) to the decision's inputs: a change of the
//!   experiment's types costs this function only. A step is a phase (the weights
//!   changed), and the evidence carries across steps, stratified by phase: each ended
//!   phase of the rollout still in the experiment's history and the current one are
//!   combined by [`combine`] (inverse-variance weights, the router's boundary at the
//!   summed effective size), so a step does not start from zero.
//! * [`tick`] runs every second from the control layer's tick: it starts, resumes,
//!   advances, completes or rolls back, and every transition is one audit line (the
//!   experiment's audit log), one log line, the gauges and the state file
//!   (`crate::rollout`). Weights are applied like a guardrail rollback
//!   ([`super::guardrails::set_weights`]): written to the config file (comments kept)
//!   and applied in memory, or in memory only when the file is a symlink.
//! * [`act`] is `POST /api/rollout/{pause,resume,abort}`; [`view`] is
//!   `GET /api/rollout`; [`verdict`] is `GET /api/experiment/verdict`.
//!
//! Users only move from the other arms to the candidate as steps rise: the candidate's
//! hash interval only grows when its share does (see `abgate check`'s plan); a
//! rollout that finds the candidate with users already starts (or resumes) at the
//! first step at or above its share.
//!
//! Cluster mode (`experiment.prometheus_url`) leaves [`decide`] and the transitions
//! alone and plugs in at two seams. The evidence is the cluster's (the experiment's
//! view reads the cluster's sums when they are fresh, the candidate's users are the
//! largest replica's count, and an ended step's figures are the cluster's). And the
//! step is the cluster's: every replica exports its record's
//! [`rollout::Position`] (`abgate_rollout_record`), and at every cluster tick
//! [`adopt`] takes the position that supersedes all others (a rollback above all,
//! then the highest revision; the same order on every replica) and applies its
//! step's weights, never moving a user back. Every replica decides on the same
//! figures with the same step start, so they move together; one that lags, or that
//! restarted (its ConfigMap's weights, no state file), takes the cluster's step at
//! its next read — before it serves, at start-up. An operator's command on one
//! replica is a new revision and reaches the others the same way. A replica that
//! has never read the cluster's records does not start a rollout on its own.

use abgate_stats::guardrail::beyond_degradation;
use abgate_stats::noninferiority::within_degradation;
use abgate_stats::special::{student_t_isf, student_t_matching_normal};
use abgate_stats::{Metric, Verdict};
use serde::Serialize;

use crate::clock::unix_now;
use crate::config::{step_weights, OnComplete, RolloutConfig, RouterConfig};
use crate::error::RouterError;
use crate::experiment::{ExperimentView, FileChange};
use crate::rollout::{self, Adoption, Record, RolloutState, Transition, MAX_HISTORY};
use crate::state::{Active, Router};
use abgate_common::{ApiError, ErrorKind};

/// One gate's evidence on the current step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    /// Guardrail name.
    pub name: String,
    /// Its metric.
    pub metric: Metric,
    /// Its allowance, in the metric's unit, counted in the worse direction.
    pub max_degradation: f64,
    /// Arm − control estimate.
    pub estimate: Option<f64>,
    /// Low end of the confidence sequence at the guardrail's level.
    pub ci_low: Option<f64>,
    /// High end.
    pub ci_high: Option<f64>,
    /// The comparison has a verdict (enough observations and buckets).
    pub enough_data: bool,
    /// The guardrail already tripped in this phase.
    #[serde(default)]
    pub tripped: bool,
    /// The per-phase estimates behind the interval, oldest first, when it combines
    /// several steps (empty: the current phase's own interval).
    #[serde(default)]
    pub strata: Vec<Stratum>,
    /// The current step's own estimate (a guardrail trips on it), when it has one.
    #[serde(default)]
    pub step: Option<Stratum>,
    /// The gate's level (α of its guardrail's family).
    #[serde(default)]
    pub alpha: Option<f64>,
}

/// One phase's (one step's) estimate of arm − control on a gate's metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stratum {
    /// The phase's content id.
    pub phase_id: String,
    /// Arm − control in the phase.
    pub estimate: f64,
    /// Its standard error (by user).
    pub std_error: f64,
    /// Effective pairs of independent observations in the phase.
    pub effective_n: f64,
    /// Degrees of freedom of the phase's t correction.
    pub degrees_of_freedom: f64,
    /// The phase's own anytime-valid interval, as the experiment showed it.
    pub ci_low: Option<f64>,
    /// Its high end.
    pub ci_high: Option<f64>,
}

/// Evidence carried across steps, stratified by phase: the inverse-variance weighted
/// mean of the per-phase estimates (each phase compares candidate and control over
/// the same time, so a trend between steps cancels), with the anytime-valid interval
/// of the router's boundary at level `alpha` and at the summed effective size (a
/// phase adds its information to one running sum). `None` without a stratum with a
/// positive, finite standard error.
pub fn combine(strata: &[Stratum], alpha: f64) -> Option<(f64, f64, f64)> {
    let usable: Vec<&Stratum> = strata
        .iter()
        .filter(|s| {
            s.std_error.is_finite()
                && s.std_error > 0.0
                && s.estimate.is_finite()
                && s.effective_n > 0.0
                && s.degrees_of_freedom > 0.0
        })
        .collect();
    if usable.is_empty() {
        return None;
    }
    let weight: f64 = usable
        .iter()
        .map(|s| 1.0 / (s.std_error * s.std_error))
        .sum();
    let estimate = usable
        .iter()
        .map(|s| s.estimate / (s.std_error * s.std_error))
        .sum::<f64>()
        / weight;
    let std_error = weight.sqrt().recip();
    let n: f64 = usable.iter().map(|s| s.effective_n).sum();
    let df: f64 = usable.iter().map(|s| s.degrees_of_freedom).sum();
    let boundary = abgate_stats::Boundary::default()
        .with_alpha(alpha)
        .unwrap_or_default();
    let multiplier = student_t_matching_normal(boundary.multiplier(n), df);
    let half = std_error * multiplier;
    half.is_finite()
        .then_some((estimate, estimate - half, estimate + half))
}

/// A phase's stratum from its comparison: the standard error from the fixed-horizon
/// interval at level `alpha` (`half = se · t(α/2, df)`).
fn stratum(c: &crate::experiment::ComparisonView, phase_id: &str, alpha: f64) -> Option<Stratum> {
    if c.verdict == Verdict::NotEnoughData {
        return None;
    }
    let (low, high) = (c.fixed_low?, c.fixed_high?);
    let df = c.degrees_of_freedom?;
    let t = student_t_isf(alpha / 2.0, df);
    let std_error = (high - low) / 2.0 / t;
    Some(Stratum {
        phase_id: phase_id.to_string(),
        estimate: c.estimate?,
        std_error,
        effective_n: c.effective_n?,
        degrees_of_freedom: df,
        ci_low: c.ci_low,
        ci_high: c.ci_high,
    })
}

/// Where a gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    /// The whole sequence lies on the good side of the allowance.
    NotWorse,
    /// The whole sequence lies beyond the allowance: the gate trips.
    Worse,
    /// The sequence still reaches the allowance.
    NotShownYet,
    /// No verdict yet.
    NotEnoughData,
}

impl Gate {
    /// The gate's status now.
    pub fn status(&self) -> GateStatus {
        if self.tripped {
            return GateStatus::Worse;
        }
        match (self.enough_data, self.ci_low, self.ci_high) {
            (true, Some(low), Some(high)) => {
                if beyond_degradation(self.metric, low, high, self.max_degradation) {
                    GateStatus::Worse
                } else if within_degradation(self.metric, low, high, self.max_degradation) {
                    GateStatus::NotWorse
                } else {
                    GateStatus::NotShownYet
                }
            }
            _ => GateStatus::NotEnoughData,
        }
    }

    /// Why this gate rolls a ramp back (and fails a verdict): beyond its allowance.
    fn worse_reason(&self) -> String {
        format!(
            "{}: {} worse than the allowed {} ({})",
            self.name,
            metric_name(self.metric),
            allowance(self.metric, self.max_degradation),
            self.interval()
        )
    }

    fn interval(&self) -> String {
        let over = if self.strata.len() > 1 {
            format!(" over {} steps", self.strata.len())
        } else {
            String::new()
        };
        match (self.ci_low, self.ci_high) {
            (Some(l), Some(h)) => format!(
                "interval [{}, {}]{over}",
                amount(self.metric, l),
                amount(self.metric, h)
            ),
            _ => "no interval yet".into(),
        }
    }
}

/// The evidence a decision is taken on (the current phase's).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evidence {
    /// The phase's content id.
    pub phase_id: String,
    /// Distinct users assigned to the candidate in the phase (estimated from the
    /// user sample).
    pub candidate_users: u64,
    /// The SRM test alarms.
    pub srm_alarm: bool,
    /// Its anytime-valid p-value.
    pub srm_p_value: f64,
    /// Each gate, in `gates` order.
    pub gates: Vec<Gate>,
    /// The latest trip of a guardrail on the arm (any phase): its Unix time and what
    /// it was, in words.
    #[serde(default)]
    pub last_trip: Option<(f64, String)>,
    /// Users assigned to the candidate in the phase before this one (the users a
    /// step exposed, once the step has ended).
    #[serde(default)]
    pub previous_phase_users: u64,
    /// In cluster mode, why the cluster's figures cannot be acted on now (stale or
    /// unreachable Prometheus): nothing advances, rolls back or passes on one
    /// replica's share of the evidence.
    #[serde(default)]
    pub stale: Option<String>,
    /// Seconds from a step's figures showing a degradation to the candidate's weight
    /// being 0 on every replica: the guardrails' tick, and in cluster mode the
    /// cluster's reads (two intervals: a scrape, then a read).
    #[serde(default)]
    pub detection_latency: f64,
}

/// What the controller does on a tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Move to step `to`.
    Advance {
        /// The next step's index.
        to: usize,
    },
    /// Stay; each string is one thing the next decision waits for.
    Hold(Vec<String>),
    /// A gate is worse than allowed: the candidate's weight goes to 0.
    RollBack(String),
    /// The last step is shown not worse: promote or hold (`on_complete`).
    Complete,
}

/// An anytime p-value for people: `= 4.0e-4`, or `< 1e-12` once it underflows.
fn p_value(p: f64) -> String {
    if p < 1e-12 {
        "< 1e-12".into()
    } else {
        format!("= {p:.1e}")
    }
}

/// A metric's short name for people.
fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::ErrorRate => "error rate",
        Metric::LatencyMeanSeconds => "latency",
        Metric::AbsoluteError => "absolute error",
        Metric::Rating => "rating",
        Metric::AccurateShare => "accurate share",
    }
}

/// A signed difference in the metric's display unit.
fn amount(metric: Metric, x: f64) -> String {
    match metric {
        Metric::ErrorRate | Metric::AccurateShare => format!("{:+.2} points", x * 100.0),
        Metric::LatencyMeanSeconds => format!("{:+.1} ms", x * 1000.0),
        Metric::AbsoluteError | Metric::Rating => format!("{x:+.3}"),
    }
}

/// The allowance in words: `+5.0 ms` for a lower-is-better metric, `-0.300` for a
/// higher-is-better one.
fn allowance(metric: Metric, max_degradation: f64) -> String {
    if metric.higher_is_better() {
        amount(metric, -max_degradation)
    } else {
        amount(metric, max_degradation)
    }
}

/// The users a step at `next_percent` would expose to a candidate worse by
/// `allowance` before a guardrail could catch it, estimated from the current step (at
/// `now_percent`, on for `seconds`, `users` candidate users): its own estimate's
/// standard error, effective size and degrees of freedom (`step`), at level `alpha`.
///
/// A step is a new phase: its interval starts wide and narrows with information. With
/// variance σ² per user on both arms and `N` users split `p` : `1 − p`, the
/// information is `N·p(1 − p)/σ²`, so at the next share `q` it grows, per candidate
/// user, `(1 − p)/(1 − q)` times slower... faster at a small `q`. The half-width at `k`
/// times the current step's information is `t(M(k·n), k·df)·se/√k` (the router's
/// boundary `M`, as in [`combine`]); the least `k` that brings it to the allowance
/// takes `k·users·(1 − p)/(1 − q)` candidate users at the next step. From then on a
/// candidate worse by the allowance is no longer shown not worse (the ramp stops) and
/// one worse by twice the allowance trips its guardrail. Add the candidate users who
/// arrive at the next step's rate while a trip takes effect (`latency` seconds). No
/// control is left at 100%, and an allowance of 0 is never reached: infinite.
#[allow(clippy::too_many_arguments)]
pub fn exposure(
    step: &Stratum,
    alpha: f64,
    allowance: f64,
    users: u64,
    now_percent: f64,
    next_percent: f64,
    seconds: f64,
    latency: f64,
) -> f64 {
    let (p, q) = (now_percent / 100.0, next_percent / 100.0);
    let usable = step.std_error.is_finite()
        && step.std_error > 0.0
        && step.effective_n > 0.0
        && step.degrees_of_freedom > 0.0;
    if allowance <= 0.0 || q >= 1.0 || p <= 0.0 || !usable {
        return f64::INFINITY;
    }
    let Some(boundary) = abgate_stats::Boundary::default().with_alpha(alpha) else {
        return f64::INFINITY;
    };
    let half = |k: f64| {
        student_t_matching_normal(
            boundary.multiplier(k * step.effective_n),
            k * step.degrees_of_freedom,
        ) * step.std_error
            / k.sqrt()
    };
    // The half-width falls with k (1/√k beats the boundary's √log k): bisect on log k.
    let (mut lo, mut hi) = (1e-6_f64, 1e12_f64);
    if half(hi) > allowance {
        return f64::INFINITY;
    }
    if half(lo) <= allowance {
        hi = lo;
    }
    while hi / lo > 1.001 {
        let mid = (lo * hi).sqrt();
        if half(mid) <= allowance {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let users = users as f64;
    let information = hi * users * (1.0 - p) / (1.0 - q);
    let rate = users / seconds.max(1.0) * (q / p);
    information + rate * latency.max(0.0)
}

/// For the step after `step`: the largest exposure over the gates (see [`exposure`])
/// and the gate it comes from; `None` at the last step or without any gate's interval.
pub fn next_exposure(
    config: &RolloutConfig,
    step: usize,
    seconds_in_step: f64,
    evidence: &Evidence,
) -> Option<(f64, String)> {
    let now = *config.steps.get(step)?;
    let next = *config.steps.get(step + 1)?;
    evidence
        .gates
        .iter()
        .filter_map(|g| {
            let e = exposure(
                g.step.as_ref()?,
                g.alpha?,
                g.max_degradation,
                evidence.candidate_users,
                now,
                next,
                seconds_in_step,
                evidence.detection_latency,
            );
            Some((e, g.name.clone()))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The pure rule of one tick on step `step` of a `state` rollout that has been on the
/// step for `seconds_in_step`, given the step's `evidence`.
pub fn decide(
    config: &RolloutConfig,
    state: RolloutState,
    step: usize,
    seconds_in_step: f64,
    evidence: &Evidence,
) -> Decision {
    if state != RolloutState::Running {
        return Decision::Hold(vec![format!("the rollout is {}", state.as_str())]);
    }
    if let Some(why) = &evidence.stale {
        return Decision::Hold(vec![format!("the cluster's figures are not fresh: {why}")]);
    }
    // A gate beyond its allowance rolls back at once, whatever else.
    if let Some(g) = evidence
        .gates
        .iter()
        .find(|g| g.status() == GateStatus::Worse)
    {
        return Decision::RollBack(g.worse_reason());
    }
    let mut waiting = Vec::new();
    let hold = config.min_step.as_secs_f64() - seconds_in_step;
    if hold > 0.0 {
        waiting.push(format!("hold {:.0} s more", hold.ceil()));
    }
    if evidence.candidate_users < config.min_users_per_step {
        waiting.push(format!(
            "candidate users {}/{}",
            evidence.candidate_users, config.min_users_per_step
        ));
    }
    if evidence.srm_alarm {
        waiting.push(format!(
            "SRM alarm (p {}): users do not match the weights; holding (an operator can abort)",
            p_value(evidence.srm_p_value)
        ));
    }
    for g in &evidence.gates {
        match g.status() {
            GateStatus::NotWorse | GateStatus::Worse => {}
            GateStatus::NotEnoughData => waiting.push(format!(
                "{} not enough data yet ({})",
                metric_name(g.metric),
                g.name
            )),
            GateStatus::NotShownYet => waiting.push(format!(
                "{} not yet shown within {} ({}, {})",
                metric_name(g.metric),
                allowance(g.metric, g.max_degradation),
                g.name,
                g.interval()
            )),
        }
    }
    if !waiting.is_empty() {
        return Decision::Hold(waiting);
    }
    let next = step + 1;
    match config.steps.get(next) {
        Some(p) if *p < 100.0 => {
            if let Some(max) = config.max_exposed_users {
                match next_exposure(config, step, seconds_in_step, evidence) {
                    Some((e, gate)) if e > max as f64 => {
                        return Decision::Hold(vec![format!(
                            "exposure: at {p}% about {} users could see a candidate worse than {gate}'s allowance before it could catch it (max_exposed_users = {max})",
                            if e.is_finite() { format!("{e:.0}") } else { "all its".into() }
                        )]);
                    }
                    None if !evidence.gates.is_empty() => {
                        return Decision::Hold(vec![
                            "exposure at the next step cannot be estimated yet (max_exposed_users)"
                                .into(),
                        ]);
                    }
                    _ => {}
                }
            }
            Decision::Advance { to: next }
        }
        _ => Decision::Complete,
    }
}

/// The decision inputs from the experiment's view: the candidate's users, SRM, and
/// each of `gates` (guardrail names) with its comparison at the guardrail's level —
/// combined, stratified by phase, with the ended phases that started at or after
/// `since` (the rollout's start; `f64::INFINITY`: the current phase only). The one
/// place that reads the experiment's types.
pub fn evidence_from(view: &ExperimentView, arm: &str, gates: &[String], since: f64) -> Evidence {
    let users_of = |arms: &[crate::experiment::ArmFigures]| {
        arms.iter()
            .find(|a| a.variant == arm)
            .map_or(0, |a| a.users.estimate.max(0.0).round() as u64)
    };
    // In cluster mode, the replica that saw the most of the candidate's users (a
    // lower bound on the cluster's distinct users); this replica's own at least.
    let candidate_users = view
        .cluster_users
        .get(arm)
        .map_or(0, |u| u.max(0.0).round() as u64)
        .max(users_of(&view.arms));
    let previous_phase_users = view.history.first().map_or(0, |p| users_of(&p.arms));
    let gates = gates
        .iter()
        .map(|name| {
            let g = view.guardrails.iter().find(|g| &g.name == name);
            let c = g.and_then(|g| g.comparison.as_ref());
            let mut gate = Gate {
                name: name.clone(),
                metric: g.map_or(Metric::ErrorRate, |g| g.metric),
                max_degradation: g.map_or(0.0, |g| g.max_degradation),
                estimate: c.and_then(|c| c.estimate),
                ci_low: c.and_then(|c| c.ci_low),
                ci_high: c.and_then(|c| c.ci_high),
                enough_data: c.is_some_and(|c| c.verdict != Verdict::NotEnoughData),
                tripped: g.is_some_and(|g| g.state == "tripped"),
                strata: Vec::new(),
                step: None,
                alpha: None,
            };
            let Some(g) = g else {
                return gate;
            };
            let alpha = g
                .alpha
                .unwrap_or(abgate_stats::sequence::DEFAULT_ALPHA / g.family_size.max(1) as f64);
            gate.alpha = Some(alpha);
            gate.step = c.and_then(|c| stratum(c, &view.phase_id, alpha));
            // Oldest first: the ended phases of the rollout, then the current one.
            let mut strata: Vec<Stratum> = view
                .history
                .iter()
                .rev()
                .filter(|p| p.started_at >= since && p.ended_at.is_some())
                .filter_map(|p| {
                    let c = p
                        .comparisons
                        .iter()
                        .find(|c| c.metric == g.metric && c.variant == arm)?;
                    stratum(c, &p.phase_id, p.family.alpha)
                })
                .collect();
            if strata.is_empty() {
                return gate;
            }
            if let Some(now) = c.and_then(|c| stratum(c, &view.phase_id, alpha)) {
                // A degenerate current phase (no variance yet) decides alone.
                if now.std_error.is_nan() || now.std_error <= 0.0 {
                    return gate;
                }
                strata.push(now);
            }
            if let Some((estimate, low, high)) = combine(&strata, alpha) {
                gate.estimate = Some(estimate);
                gate.ci_low = Some(low);
                gate.ci_high = Some(high);
                gate.enough_data = true;
                gate.strata = strata;
            }
            gate
        })
        .collect();
    let last_trip = view
        .guardrails
        .iter()
        .filter(|g| g.arm == arm)
        .filter_map(|g| g.last_trip.as_ref().map(|t| (g, t)))
        .max_by(|a, b| a.1.time.total_cmp(&b.1.time))
        .map(|(g, t)| {
            let gate = Gate {
                name: g.name.clone(),
                metric: g.metric,
                max_degradation: g.max_degradation,
                estimate: t.estimate,
                ci_low: t.interval[0],
                ci_high: t.interval[1],
                enough_data: true,
                tripped: true,
                strata: Vec::new(),
                step: None,
                alpha: None,
            };
            let text = format!(
                "guardrail {} tripped ({} worse than the allowed {}, {})",
                g.name,
                metric_name(g.metric),
                allowance(g.metric, g.max_degradation),
                gate.interval()
            );
            (t.time, text)
        });
    Evidence {
        phase_id: view.phase_id.clone(),
        candidate_users,
        srm_alarm: view.srm.alarm,
        srm_p_value: view.srm.p_value,
        gates,
        last_trip,
        previous_phase_users,
        stale: (view.source == crate::experiment::SourceKind::Prometheus && !view.source_up).then(
            || {
                view.reason
                    .clone()
                    .unwrap_or_else(|| "no fresh data".to_string())
            },
        ),
        detection_latency: 0.0,
    }
}

/// The evidence for `arm` and `gates`: the current phase's, combined with the phases
/// since `since`.
fn evidence(router: &Router, active: &Active, arm: &str, gates: &[String], since: f64) -> Evidence {
    let view = router
        .experiment
        .view(&active.phase, &active.config, active.version);
    let mut e = evidence_from(&view, arm, gates, since);
    let reads = active
        .config
        .analysis
        .cluster
        .as_ref()
        .map_or(0.0, |c| 2.0 * c.interval.as_secs_f64());
    e.detection_latency = crate::experiment::TICK.as_secs_f64() + reads;
    e
}

/// The first of `steps` at or above `percent`: the step a rollout can take without
/// moving any user back from the candidate.
fn first_step_at_least(steps: &[f64], percent: f64) -> Option<usize> {
    steps.iter().position(|s| *s >= percent - 1e-6)
}

/// When the rollout in `record` started (its first step), or never.
fn started_at(record: &Record) -> f64 {
    if record.started_at > 0.0 {
        record.started_at
    } else {
        f64::INFINITY
    }
}

fn weights_of(config: &RouterConfig) -> Vec<(String, f64)> {
    config
        .arms
        .iter()
        .map(|a| (a.name.clone(), a.weight))
        .collect()
}

/// The candidate's percent of users in `active`.
fn candidate_percent(active: &Active, arm: &str) -> Option<f64> {
    let i = active.config.arm_index(arm)?;
    active.split.shares().get(i).map(|s| s * 100.0)
}

/// Sets the candidate's share to `percent` (others scaled), in the file and in memory.
fn apply_percent(router: &Router, arm: &str, percent: f64) -> (FileChange, Option<String>) {
    let active = router.active();
    let Some(i) = active.config.arm_index(arm) else {
        return (
            FileChange::None,
            Some(format!("arm {arm:?} is no longer in the config")),
        );
    };
    let weights = step_weights(&active.config.weights(), i, percent);
    let changes: Vec<(String, f64)> = active
        .config
        .arms
        .iter()
        .map(|a| a.name.clone())
        .zip(weights)
        .collect();
    match super::guardrails::set_weights(router, &changes) {
        Ok(outcome) => outcome,
        Err(e) => (FileChange::None, Some(e)),
    }
}

fn file_name(f: &FileChange) -> &'static str {
    match f {
        FileChange::Written => "written",
        FileChange::InMemoryOnly => "in_memory_only",
        FileChange::None => "none",
    }
}

/// Who made a transition.
#[derive(Debug, Clone, Copy)]
enum By {
    Controller,
    Operator,
    /// Another replica (cluster mode): its position was adopted.
    Cluster,
}

/// Records a transition of `record` to `to`: history, audit line, log line. The
/// caller saves the record and shows the gauges.
fn transition(
    router: &Router,
    record: &mut Record,
    to: RolloutState,
    reason: String,
    by: By,
    evidence: Option<&Evidence>,
    file: (FileChange, Option<String>),
) {
    let active = router.active();
    let from = record.state;
    record.state = to;
    // A new revision, above any a replica has reached (cluster mode), so every
    // replica takes this transition; an adoption sets the adopted one after.
    let seen = router.rollout.seen().map_or(0, |s| s.revision());
    record.revision = record.revision.max(seen) + 1;
    let promoted = active
        .config
        .rollout
        .as_ref()
        .is_some_and(|r| r.on_complete == OnComplete::Promote)
        || record.steps.last().is_some_and(|p| *p >= 100.0);
    let t = Transition {
        time: unix_now(),
        event: "rollout".into(),
        arm: record.arm.clone(),
        from,
        to,
        step: record.step,
        percent: record.percent(promoted),
        reason,
        by: match by {
            By::Controller => "controller".into(),
            By::Operator => "operator".into(),
            By::Cluster => "cluster".into(),
        },
        weights: weights_of(&active.config),
        phase_id: evidence.map_or_else(|| active.phase.id.clone(), |e| e.phase_id.clone()),
        candidate_users: evidence.map_or(0, |e| e.candidate_users),
        file: file_name(&file.0).into(),
        note: file.1,
    };
    let weights: Vec<String> = t.weights.iter().map(|(a, w)| format!("{a}={w}")).collect();
    if to == RolloutState::RolledBack {
        tracing::warn!(arm = %t.arm, from = from.as_str(), to = to.as_str(), step = t.step, percent = t.percent, candidate_users = t.candidate_users, weights = %weights.join(" "), file = %t.file, note = t.note.as_deref().unwrap_or(""), reason = %t.reason, "rollout rolled back");
    } else {
        tracing::info!(arm = %t.arm, from = from.as_str(), to = to.as_str(), step = t.step, percent = t.percent, candidate_users = t.candidate_users, weights = %weights.join(" "), file = %t.file, note = t.note.as_deref().unwrap_or(""), reason = %t.reason, "rollout transition");
    }
    let log = &active.config.analysis.audit_log;
    if let Err(e) = super::guardrails::append_json(log, &t) {
        tracing::error!(file = %log.display(), error = %e, "cannot append to the audit log");
    }
    record.history.push(t);
    if record.history.len() > MAX_HISTORY {
        let extra = record.history.len() - MAX_HISTORY;
        record.history.drain(..extra);
    }
}

/// The id of `config`'s rollout in the cluster (`None` without `[rollout]`).
pub fn id_of(config: &RouterConfig) -> Option<String> {
    config
        .rollout
        .as_ref()
        .map(|r| rollout::rollout_id(&config.experiment, &config.salt, r))
}

/// Shows `record` in the gauges.
fn show(router: &Router, config: &RouterConfig, record: &Record) {
    let promoted = config
        .rollout
        .as_ref()
        .is_some_and(|r| r.on_complete == OnComplete::Promote)
        || record.steps.last().is_some_and(|p| *p >= 100.0);
    let id = id_of(config).unwrap_or_default();
    router.rollout.gauges.show(&id, Some(record), promoted);
}

/// Saves `record` beside the config and shows it in the gauges.
fn persist(router: &Router, config: &RouterConfig, record: &Record) {
    show(router, config, record);
    let path = rollout::state_path(&config.path);
    if let Err(e) = rollout::save(&path, record) {
        if config.analysis.cluster.is_some() {
            // A ConfigMap directory is read-only; the cluster's records in Prometheus
            // carry the rollout across restarts.
            tracing::info!(file = %path.display(), error = %e, "rollout state file not written; in cluster mode Prometheus's records carry the rollout");
        } else {
            tracing::error!(file = %path.display(), error = %e, "cannot write the rollout state; it is kept in memory only");
        }
    }
}

/// The record for `config`'s rollout: the one in memory, else the state file's (a
/// restart resumes its step: the step's weights are applied again if the config in
/// force lacks them), else a new pending one.
fn current<'r>(
    router: &Router,
    config: &RolloutConfig,
    slot: &'r mut Option<Record>,
) -> &'r mut Record {
    if slot.as_ref().is_some_and(|r| r.is_for(config)) {
        return slot.get_or_insert_with(|| Record::pending(config));
    }
    let path = rollout::state_path(&router.active().config.path);
    let loaded = if slot.is_none() {
        match rollout::load(&path) {
            Ok(r) => r.filter(|r| r.is_for(config)),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the rollout state file");
                None
            }
        }
    } else {
        None
    };
    let record = match loaded {
        Some(mut r) => {
            tracing::info!(arm = %r.arm, state = r.state.as_str(), step = r.step, file = %path.display(), "rollout state resumed");
            if matches!(r.state, RolloutState::Running | RolloutState::Paused) {
                let now = candidate_percent(&router.active(), &r.arm).unwrap_or(0.0);
                // Raised by hand while the router was down: never back down.
                if now > r.steps.get(r.step).copied().unwrap_or(0.0) + 1e-6 {
                    if let Some(i) = first_step_at_least(&r.steps, now) {
                        r.step = i;
                    }
                }
                let want = r.steps.get(r.step).copied().unwrap_or(0.0);
                // In cluster mode the file may be behind the cluster (a rollback while
                // this replica was down): the step is applied once the cluster's
                // records were read (`align`, `adopt`), never from the file alone.
                let cluster = router.active().config.analysis.cluster.is_some();
                if now < want - 1e-6 && !cluster && may_raise(router, &r, now) {
                    let (file, note) = apply_percent(router, &r.arm, want);
                    tracing::info!(arm = %r.arm, percent = want, file = file_name(&file), note = note.as_deref().unwrap_or(""), "rollout step applied again after a restart");
                    r.step_started_at = unix_now();
                }
            }
            r
        }
        None => Record::pending(config),
    };
    slot.insert(record)
}

/// Whether a guardrail of this process tripped on the candidate since `record`'s
/// step started or was decided (a step scheduled ahead starts after its decision).
fn tripped_since_step(router: &Router, record: &Record) -> bool {
    router
        .experiment
        .last_trip_on(&record.arm)
        .is_some_and(|t| t >= step_since(record))
}

/// When `record`'s step began to matter: its start, or its decision when it was
/// scheduled ahead.
fn step_since(record: &Record) -> f64 {
    let decided = record
        .history
        .last()
        .map_or(record.step_started_at, |t| t.time);
    record.step_started_at.min(decided)
}

/// Whether the candidate's share `now`, below `record`'s step, may be raised to the
/// step again: not when a guardrail of this process took it away since the step
/// started (the rollout's tick turns that into a rollback); a share of 0 only when
/// the config in force cannot carry the step (a ConfigMap-style symlink, whose
/// weights are the mount's after a restart or a re-mount) or the step is the
/// cluster's, else 0 is an operator's edit.
fn may_raise(router: &Router, record: &Record, now: f64) -> bool {
    if tripped_since_step(router, record) {
        return false;
    }
    let active = router.active();
    now > 0.0
        || active.config.analysis.cluster.is_some()
        || std::fs::symlink_metadata(&active.config.path).is_ok_and(|m| m.file_type().is_symlink())
}

/// What of `record` the state file holds (a change is written; what the next
/// decision waits for is not).
fn persisted(record: &Record) -> (RolloutState, usize, u64, u64, usize) {
    (
        record.state,
        record.step,
        record.step_started_at.to_bits(),
        record.started_at.to_bits(),
        record.history.len(),
    )
}

/// One tick of the rollout (nothing without `[rollout]`).
pub fn tick(router: &Router) {
    let active = router.active();
    let Some(config) = active.config.rollout.clone() else {
        return;
    };
    let mut slot = router.rollout.lock();
    let record = current(router, &config, &mut slot);
    let before = persisted(record);
    if let Some(why) = unseen_cluster(router, &active.config) {
        // Cluster mode: the step is the cluster's; until its records have been read
        // once, nothing starts or moves here.
        record.waiting = vec![why];
        show(router, &active.config, record);
        return;
    }
    if active.config.analysis.cluster.is_some() {
        align(router, &config, record);
    }
    step(router, &config, record);
    if persisted(record) != before {
        persist(router, &router.active().config, record);
    } else {
        show(router, &router.active().config, record);
    }
}

/// In cluster mode, before the cluster's rollout records were read once: why the
/// rollout waits.
fn unseen_cluster(router: &Router, config: &RouterConfig) -> Option<String> {
    let cluster = config.analysis.cluster.as_ref()?;
    let id = id_of(config)?;
    if router.rollout.seen().is_some_and(|s| s.rollout == id) {
        return None;
    }
    Some(format!(
        "the cluster's rollout records (Prometheus at {}) not read yet: in cluster mode the step is the cluster's",
        cluster.prometheus_url
    ))
}

/// Cluster mode: takes the position that supersedes every other among the cluster's
/// records in `seen` (and this replica's own), and applies its step's weights —
/// raising the candidate's share only, never moving a user back; a rollback sets its
/// weight to 0. Called at every cluster tick (and at start-up, before serving). An
/// adoption is a transition (`by: cluster`) with its audit and log lines.
pub fn adopt(router: &Router, seen: rollout::Seen) {
    let active = router.active();
    let Some(config) = active.config.rollout.clone() else {
        return;
    };
    if id_of(&active.config).as_deref() != Some(seen.rollout.as_str()) {
        return;
    }
    let mut slot = router.rollout.lock();
    router.rollout.set_seen(Some(seen.clone()));
    let record = current(router, &config, &mut slot);
    let before = persisted(record);
    let own = record.position();
    let best = seen.best().cloned();
    let take = match best.as_ref().map(|b| rollout::adoption(&own, b)) {
        None | Some(Adoption::Keep) => {
            align(router, &config, record);
            if persisted(record) != before {
                persist(router, &router.active().config, record);
            }
            return;
        }
        Some(Adoption::Starts {
            step_started_at,
            started_at,
        }) => {
            // The same move made here and elsewhere on the same evidence: only the
            // earlier starts are taken, without a transition.
            record.step_started_at = step_started_at;
            record.started_at = started_at;
            persist(router, &router.active().config, record);
            return;
        }
        Some(Adoption::Take(take)) => take,
    };
    if tripped_since_step(router, record) && take.state != RolloutState::RolledBack {
        // A guardrail of this replica just took the candidate's users away: its own
        // rollback (next tick) supersedes whatever the others say.
        return;
    }
    record.step = take.step.min(record.steps.len().saturating_sub(1));
    record.step_started_at = take.step_started_at;
    record.started_at = take.started_at;
    let best = take;
    let file = if scheduled_in(record, unix_now()).is_some() {
        (
            FileChange::None,
            Some("scheduled: the weights change at the step's start, on every replica".into()),
        )
    } else {
        weights_for(router, &config, best.state, record)
    };
    let reason = format!(
        "adopted from the cluster: revision {} ({}, step {} of {}, on {} replica(s) now)",
        best.revision,
        best.state.as_str(),
        best.step + 1,
        record.steps.len(),
        best.replicas
    );
    transition(router, record, best.state, reason, By::Cluster, None, file);
    record.revision = best.revision;
    record.waiting.clear();
    persist(router, &router.active().config, record);
}

/// Applies the weights `state` on `record`'s step means: the step's share (raised
/// only), 100% when completed and promoted, 0 when rolled back.
fn weights_for(
    router: &Router,
    config: &RolloutConfig,
    state: RolloutState,
    record: &Record,
) -> (FileChange, Option<String>) {
    let now = candidate_percent(&router.active(), &config.arm).unwrap_or(0.0);
    let want = match state {
        RolloutState::Pending => return (FileChange::None, None),
        RolloutState::RolledBack => {
            return match super::guardrails::rollback(router, &config.arm) {
                Ok(outcome) => outcome,
                Err(e) => (FileChange::None, Some(e)),
            };
        }
        RolloutState::Completed
            if config.on_complete == OnComplete::Promote
                || record.steps.last().is_some_and(|p| *p >= 100.0) =>
        {
            100.0
        }
        _ => record.steps.get(record.step).copied().unwrap_or(0.0),
    };
    if now < want - 1e-6 {
        apply_percent(router, &config.arm, want)
    } else {
        (FileChange::None, None)
    }
}

/// How far ahead a step is scheduled: in cluster mode, long enough for every replica
/// to read the decision first (the staleness window, three cluster intervals, which
/// a scrape and a read fit in, plus a tick), so every replica changes its weights at
/// the same moment and no user gets the candidate from one replica and the control
/// from another; 0 on a single node (at once).
pub fn lead(config: &RouterConfig) -> f64 {
    config.analysis.cluster.as_ref().map_or(0.0, |c| {
        c.stale_after().as_secs_f64() + crate::experiment::TICK.as_secs_f64()
    })
}

/// Seconds until the record's step takes effect, when it is scheduled ahead.
fn scheduled_in(record: &Record, now: f64) -> Option<f64> {
    matches!(
        record.state,
        RolloutState::Running | RolloutState::Paused | RolloutState::Completed
    )
    .then(|| record.step_started_at - now)
    .filter(|s| *s > 0.0)
}

/// When the control layer should tick the rollout next, if sooner than its tick: the
/// moment a scheduled step takes effect (so every replica applies it then, not at
/// its next tick).
pub fn next_change_in(router: &Router) -> Option<std::time::Duration> {
    let slot = router.rollout.lock();
    let in_s = scheduled_in(slot.as_ref()?, unix_now())?;
    Some(std::time::Duration::from_secs_f64(in_s))
}

/// Cluster mode, between adoptions: the record's step applied again when the config
/// in force lacks it (a ConfigMap re-mount, a restart that kept the position).
fn align(router: &Router, config: &RolloutConfig, record: &Record) {
    if scheduled_in(record, unix_now()).is_some() {
        return; // not yet: every replica applies it at its scheduled moment
    }
    let now = candidate_percent(&router.active(), &config.arm).unwrap_or(0.0);
    let moving = matches!(
        record.state,
        RolloutState::Running | RolloutState::Paused | RolloutState::Completed
    );
    if moving && may_raise(router, record, now) {
        let (file, note) = weights_for(router, config, record.state, record);
        if file != FileChange::None {
            tracing::info!(arm = %record.arm, step = record.step, file = file_name(&file), note = note.as_deref().unwrap_or(""), "rollout step applied again (the config in force lacked it)");
        }
    }
}

/// Starts, checks or finishes the rollout in `record`.
fn step(router: &Router, config: &RolloutConfig, record: &mut Record) {
    let now = unix_now();
    match record.state {
        RolloutState::Pending => {
            // Users never move back: a candidate that already has users starts at the
            // first step that does not take any from it.
            let had = candidate_percent(&router.active(), &config.arm).unwrap_or(0.0);
            record.step_started_at = now;
            record.started_at = now;
            let Some(i) = first_step_at_least(&config.steps, had) else {
                record.step = config.steps.len().saturating_sub(1);
                let reason = format!(
                    "{} already has {had:.3}% of users, beyond the last step: nothing to ramp",
                    config.arm
                );
                transition(
                    router,
                    record,
                    RolloutState::Completed,
                    reason,
                    By::Controller,
                    None,
                    (FileChange::None, None),
                );
                return;
            };
            let percent = config.steps[i];
            // In cluster mode the first step is scheduled ahead too: every replica
            // starts it at the same moment.
            let ahead = lead(&router.active().config);
            let file = if ahead > 0.0 {
                record.step_started_at = now + ahead;
                record.started_at = now + ahead;
                (FileChange::None, Some("scheduled".into()))
            } else {
                apply_percent(router, &config.arm, percent)
            };
            record.step = i;
            let to = if percent >= 100.0 {
                RolloutState::Completed
            } else {
                RolloutState::Running
            };
            let mut reason = if i == 0 {
                format!("started: {} gets {percent}% of users", config.arm)
            } else {
                format!(
                    "started at step {}: {} gets {percent}% of users (it had {had:.3}% already, and users never move back)",
                    i + 1,
                    config.arm
                )
            };
            if ahead > 0.0 {
                reason.push_str(&format!(" in {ahead:.0} s, on every replica at once"));
            }
            transition(router, record, to, reason, By::Controller, None, file);
            record.waiting.clear();
        }
        RolloutState::Running => {
            let active = router.active();
            let want = record.steps.get(record.step).copied().unwrap_or(0.0);
            let Some(now_percent) = candidate_percent(&active, &config.arm) else {
                return;
            };
            // A weight of 0 is a rollback outside the rollout, unless the step is
            // still scheduled (a first step from 0 not yet in effect) and no guardrail
            // tripped since it was decided.
            let zero = active
                .config
                .arm_index(&config.arm)
                .is_some_and(|i| active.config.arms[i].weight == 0.0);
            if zero && (scheduled_in(record, now).is_none() || tripped_since_step(router, record)) {
                let mut evidence = evidence(
                    router,
                    &active,
                    &config.arm,
                    &config.gates,
                    started_at(record),
                );
                let why = evidence
                    .last_trip
                    .as_ref()
                    .filter(|(at, _)| *at >= step_since(record))
                    .map_or(
                        "a config edit (no guardrail tripped on the step)",
                        |(_, t)| t.as_str(),
                    );
                let exposed = record.last_users.max(evidence.previous_phase_users);
                let reason = format!(
                    "{}'s weight became 0 outside the rollout: {why}; rolled back at {want}% with about {exposed} candidate users exposed on the step",
                    config.arm,
                );
                evidence.candidate_users = exposed;
                transition(
                    router,
                    record,
                    RolloutState::RolledBack,
                    reason,
                    By::Controller,
                    Some(&evidence),
                    (FileChange::None, None),
                );
                return;
            }
            if let Some(in_s) = scheduled_in(record, now) {
                // Scheduled ahead (cluster mode): the previous step's weights stay
                // until every replica changes them together.
                record.waiting = vec![format!(
                    "step {want}% begins in {:.0} s, on every replica at once",
                    in_s.ceil()
                )];
                return;
            }
            if (now_percent - want).abs() > 1e-6 {
                let reason = format!(
                    "{} has {now_percent:.3}% of users but step {} is {want}%: the weights changed outside the rollout; resume applies the step again",
                    config.arm, record.step
                );
                transition(
                    router,
                    record,
                    RolloutState::Paused,
                    reason,
                    By::Controller,
                    None,
                    (FileChange::None, None),
                );
                return;
            }
            let evidence = evidence(
                router,
                &active,
                &config.arm,
                &config.gates,
                started_at(record),
            );
            record.last_users = evidence.candidate_users;
            let seconds = (now - record.step_started_at).max(0.0);
            match decide(config, record.state, record.step, seconds, &evidence) {
                Decision::Hold(waiting) => record.waiting = waiting,
                Decision::RollBack(reason) => {
                    let file = match super::guardrails::rollback(router, &config.arm) {
                        Ok(outcome) => outcome,
                        Err(e) => (FileChange::None, Some(e)),
                    };
                    transition(
                        router,
                        record,
                        RolloutState::RolledBack,
                        format!(
                            "{reason}; rolled back at {want}% with {} candidate users exposed on the step",
                            evidence.candidate_users
                        ),
                        By::Controller,
                        Some(&evidence),
                        file,
                    );
                    record.waiting.clear();
                }
                Decision::Advance { to } => {
                    let percent = record.steps.get(to).copied().unwrap_or(want);
                    let mut reason = advance_reason(config, record.step, seconds, &evidence);
                    let ahead = lead(&active.config);
                    let file = if ahead > 0.0 {
                        reason.push_str(&format!(
                            "; scheduled {ahead:.0} s ahead, so every replica moves at once"
                        ));
                        (FileChange::None, Some("scheduled".into()))
                    } else {
                        apply_percent(router, &config.arm, percent)
                    };
                    record.step = to;
                    record.step_started_at = unix_now() + ahead;
                    transition(
                        router,
                        record,
                        RolloutState::Running,
                        reason,
                        By::Controller,
                        Some(&evidence),
                        file,
                    );
                    record.waiting.clear();
                }
                Decision::Complete => {
                    let promote = config.on_complete == OnComplete::Promote
                        || record.steps.get(record.step + 1).is_some();
                    let ahead = lead(&active.config);
                    let (file, reason) = if promote {
                        (
                            if ahead > 0.0 {
                                record.step_started_at = unix_now() + ahead;
                                (FileChange::None, Some("scheduled".into()))
                            } else {
                                apply_percent(router, &config.arm, 100.0)
                            },
                            format!(
                                "step {want}% shown not worse on {} candidate users{}; promoted: {} takes every user{}",
                                evidence.candidate_users,
                                gates_summary(&evidence),
                                config.arm,
                                if ahead > 0.0 {
                                    format!(" ({ahead:.0} s ahead, on every replica at once)")
                                } else {
                                    String::new()
                                }
                            ),
                        )
                    } else {
                        (
                            (FileChange::None, None),
                            format!(
                                "last step {want}% shown not worse on {} candidate users{}; holding it (on_complete = \"hold\")",
                                evidence.candidate_users,
                                gates_summary(&evidence)
                            ),
                        )
                    };
                    if promote {
                        record.step = record.steps.len().saturating_sub(1);
                    }
                    transition(
                        router,
                        record,
                        RolloutState::Completed,
                        reason,
                        By::Controller,
                        Some(&evidence),
                        file,
                    );
                    record.waiting.clear();
                }
            }
        }
        RolloutState::Paused => {
            record.waiting = vec!["paused: POST /api/rollout/resume to continue".into()];
        }
        RolloutState::Completed | RolloutState::RolledBack => record.waiting.clear(),
    }
}

/// Why the ramp advances from `step`: the step shown not worse, and what the next
/// step could expose (the estimate `max_exposed_users` is compared with).
fn advance_reason(config: &RolloutConfig, step: usize, seconds: f64, e: &Evidence) -> String {
    let want = config.steps.get(step).copied().unwrap_or(0.0);
    let next = config.steps.get(step + 1).copied().unwrap_or(100.0);
    let exposure = next_exposure(config, step, seconds, e)
        .filter(|(x, _)| x.is_finite())
        .map_or(String::new(), |(x, gate)| {
            format!(" (a candidate worse than {gate}'s allowance would reach about {x:.0} users at {next}% before it could be caught)")
        });
    format!(
        "step {want}% shown not worse on {} candidate users{}; advancing to {next}%{exposure}",
        e.candidate_users,
        gates_summary(e)
    )
}

fn gates_summary(e: &Evidence) -> String {
    if e.gates.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = e
        .gates
        .iter()
        .map(|g| format!("{} {}", g.name, g.interval()))
        .collect();
    format!(" ({})", parts.join("; "))
}

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop advancing; the weights stay.
    Pause,
    /// Continue (the step's weights applied again if they changed).
    Resume,
    /// Roll the candidate back to weight 0 and end the rollout.
    Abort,
}

fn conflict(message: String) -> RouterError {
    RouterError::Request(ApiError::new(ErrorKind::Conflict, message))
}

/// Carries out an operator's `action` and returns the rollout's view.
pub fn act(router: &Router, action: Action) -> Result<RolloutView, RouterError> {
    let active = router.active();
    let Some(config) = active.config.rollout.clone() else {
        return Err(conflict("no [rollout] in the config".into()));
    };
    {
        let mut slot = router.rollout.lock();
        let record = current(router, &config, &mut slot);
        let state = record.state;
        match (action, state) {
            (Action::Pause, RolloutState::Pending | RolloutState::Running) => {
                transition(
                    router,
                    record,
                    RolloutState::Paused,
                    "paused by an operator".into(),
                    By::Operator,
                    None,
                    (FileChange::None, None),
                );
            }
            (Action::Resume, RolloutState::Paused) => {
                let now = candidate_percent(&router.active(), &config.arm).unwrap_or(0.0);
                // Weights raised by hand meanwhile: resume at the first step that
                // takes no user from the candidate.
                if now > record.steps.get(record.step).copied().unwrap_or(0.0) + 1e-6 {
                    if let Some(i) = first_step_at_least(&record.steps, now) {
                        record.step = i;
                    }
                }
                let want = record.steps.get(record.step).copied().unwrap_or(0.0);
                let (to, file) = if record.started_at <= 0.0 {
                    (RolloutState::Pending, (FileChange::None, None))
                } else if now > want + 1e-6 {
                    return Err(conflict(format!(
                        "{} has {now:.3}% of users, beyond the last step: resuming would move users back; abort, or end the rollout by hand",
                        config.arm
                    )));
                } else if (now - want).abs() > 1e-6 {
                    record.step_started_at = unix_now();
                    (
                        RolloutState::Running,
                        apply_percent(router, &config.arm, want),
                    )
                } else {
                    (RolloutState::Running, (FileChange::None, None))
                };
                transition(
                    router,
                    record,
                    to,
                    "resumed by an operator".into(),
                    By::Operator,
                    None,
                    file,
                );
            }
            (
                Action::Abort,
                RolloutState::Pending | RolloutState::Running | RolloutState::Paused,
            ) => {
                let file = match super::guardrails::rollback(router, &config.arm) {
                    Ok(outcome) => outcome,
                    Err(e) => (FileChange::None, Some(e)),
                };
                transition(
                    router,
                    record,
                    RolloutState::RolledBack,
                    "aborted by an operator".into(),
                    By::Operator,
                    None,
                    file,
                );
            }
            (action, state) => {
                return Err(conflict(format!(
                    "cannot {} a rollout that is {}",
                    match action {
                        Action::Pause => "pause",
                        Action::Resume => "resume",
                        Action::Abort => "abort",
                    },
                    state.as_str()
                )));
            }
        }
        record.waiting.clear();
        persist(router, &router.active().config, record);
    }
    Ok(view(router))
}

/// An arm's weight and share, for the view.
#[derive(Debug, Clone, Serialize)]
pub struct WeightView {
    /// Arm name.
    pub arm: String,
    /// Configured weight.
    pub weight: f64,
    /// Share of users, percent.
    pub percent: f64,
}

/// `GET /api/rollout`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    /// Whether `[rollout]` is configured.
    pub configured: bool,
    /// The candidate arm.
    pub arm: Option<String>,
    /// `pending`, `running`, `paused`, `completed` or `rolled_back`.
    pub state: Option<RolloutState>,
    /// Current step index.
    pub step: Option<usize>,
    /// The steps (percent of users).
    pub steps: Vec<f64>,
    /// The candidate's percent of users now.
    pub percent: Option<f64>,
    /// Unix time the step started.
    pub step_started_at: Option<f64>,
    /// Seconds on the step.
    pub seconds_in_step: Option<f64>,
    /// The rollout's settings.
    pub config: Option<RolloutConfig>,
    /// Weights in force.
    pub weights: Vec<WeightView>,
    /// What the next decision waits for (empty: nothing, or the rollout is over).
    pub waiting_for: Vec<String>,
    /// The current step's evidence (running or paused).
    pub evidence: Option<Evidence>,
    /// The state file.
    pub state_file: String,
    /// Transitions, oldest first.
    pub history: Vec<Transition>,
    /// Cluster mode: the rollout's id and the last read of every replica's record,
    /// the one that supersedes the others first (`null` on a single node).
    pub cluster: Option<rollout::Seen>,
    /// The users the next step could expose to a candidate worse than a gate's
    /// allowance before the gate could catch it (running or paused, before the last
    /// step; see `max_exposed_users`).
    pub next_exposure: Option<ExposureView>,
}

/// The exposure estimate of the next step, for the view.
#[derive(Debug, Clone, Serialize)]
pub struct ExposureView {
    /// The next step's percent of users.
    pub percent: f64,
    /// Estimated users (`null`: no gate could catch it there).
    pub users: Option<f64>,
    /// The gate the estimate comes from (the largest).
    pub gate: String,
    /// `max_exposed_users`, if set.
    pub max: Option<u64>,
}

/// A percent of users for people: shares are normalised weights, so 5% reads
/// `5.000000000000004` in floating point; nine decimals are more than a share means.
fn tidy(percent: f64) -> f64 {
    (percent * 1e9).round() / 1e9
}

/// The rollout's view now (the evidence and what it waits for computed fresh).
pub fn view(router: &Router) -> RolloutView {
    // The record first: a tick that holds it may be applying its weights, and the
    // weights shown must be the ones in force after it.
    let record = router.active().config.rollout.clone().map(|config| {
        let slot = router.rollout.lock();
        match slot.as_ref().filter(|r| r.is_for(&config)) {
            Some(r) => r.clone(),
            // Before the first tick: what the state file says, changing nothing.
            None => rollout::load(&rollout::state_path(&router.active().config.path))
                .ok()
                .flatten()
                .filter(|r| r.is_for(&config))
                .unwrap_or_else(|| Record::pending(&config)),
        }
    });
    let active = router.active();
    let weights = active
        .arms
        .iter()
        .map(|a| WeightView {
            arm: a.config.name.clone(),
            weight: a.config.weight,
            percent: tidy(a.share * 100.0),
        })
        .collect();
    let state_file = rollout::state_path(&active.config.path)
        .display()
        .to_string();
    let Some(config) = active.config.rollout.clone() else {
        return RolloutView {
            configured: false,
            arm: None,
            state: None,
            step: None,
            steps: Vec::new(),
            percent: None,
            step_started_at: None,
            seconds_in_step: None,
            config: None,
            weights,
            waiting_for: Vec::new(),
            evidence: None,
            state_file,
            history: Vec::new(),
            cluster: None,
            next_exposure: None,
        };
    };
    let Some(record) = record.filter(|r| r.is_for(&config)) else {
        return RolloutView {
            configured: true,
            arm: Some(config.arm.clone()),
            state: None,
            step: None,
            steps: config.steps.clone(),
            percent: candidate_percent(&active, &config.arm).map(tidy),
            step_started_at: None,
            seconds_in_step: None,
            config: Some(config),
            weights,
            waiting_for: vec!["the config changed under this request; ask again".into()],
            evidence: None,
            state_file,
            history: Vec::new(),
            cluster: None,
            next_exposure: None,
        };
    };
    let seconds =
        (record.step_started_at > 0.0).then(|| (unix_now() - record.step_started_at).max(0.0));
    let (evidence, waiting_for) = match record.state {
        RolloutState::Running | RolloutState::Paused => {
            let e = evidence(
                router,
                &active,
                &config.arm,
                &config.gates,
                started_at(&record),
            );
            let waiting = match decide(
                &config,
                RolloutState::Running,
                record.step,
                seconds.unwrap_or(0.0),
                &e,
            ) {
                Decision::Hold(w) if record.state == RolloutState::Running => w,
                Decision::Hold(mut w) => {
                    w.insert(0, "paused: POST /api/rollout/resume to continue".into());
                    w
                }
                _ if record.state == RolloutState::Paused => {
                    vec!["paused: POST /api/rollout/resume to continue".into()]
                }
                Decision::RollBack(r) => vec![format!("the next tick rolls back: {r}")],
                Decision::Advance { to } => vec![format!(
                    "nothing: the next tick advances to {}%",
                    config.steps.get(to).copied().unwrap_or(0.0)
                )],
                Decision::Complete => vec!["nothing: the next tick completes the rollout".into()],
            };
            (Some(e), waiting)
        }
        RolloutState::Pending => (None, vec!["the first tick starts the rollout".into()]),
        _ => (None, Vec::new()),
    };
    // Cluster mode before the cluster's records were read: nothing moves here; a
    // step scheduled ahead waits for its moment.
    let waiting_for = match (
        unseen_cluster(router, &active.config),
        scheduled_in(&record, unix_now()),
    ) {
        (Some(why), _) if !record.state.is_final() => vec![why],
        (_, Some(in_s)) => vec![format!(
            "{} begins in {:.0} s, on every replica at once",
            if record.state == RolloutState::Completed {
                "the promotion".to_string()
            } else {
                format!(
                    "step {}%",
                    config.steps.get(record.step).copied().unwrap_or(0.0)
                )
            },
            in_s.ceil()
        )],
        _ => waiting_for,
    };
    let next_exposure = evidence.as_ref().and_then(|e| {
        let (users, gate) = next_exposure(&config, record.step, seconds.unwrap_or(0.0), e)?;
        Some(ExposureView {
            percent: config.steps.get(record.step + 1).copied().unwrap_or(100.0),
            users: users.is_finite().then_some(users.round()),
            gate,
            max: config.max_exposed_users,
        })
    });
    RolloutView {
        configured: true,
        arm: Some(config.arm.clone()),
        state: Some(record.state),
        step: Some(record.step),
        steps: config.steps.clone(),
        percent: candidate_percent(&active, &config.arm).map(tidy),
        step_started_at: (record.step_started_at > 0.0).then_some(record.step_started_at),
        seconds_in_step: seconds,
        config: Some(config),
        weights,
        waiting_for,
        evidence,
        state_file,
        history: record.history,
        next_exposure,
        cluster: active
            .config
            .analysis
            .cluster
            .as_ref()
            .and_then(|_| router.rollout.seen()),
    }
}

/// `GET /api/experiment/verdict?arm=…`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerdictView {
    /// `pass`, `fail` or `inconclusive`.
    pub verdict: &'static str,
    /// Why, one line each.
    pub reasons: Vec<String>,
    /// The arm judged.
    pub arm: String,
    /// The gates judged.
    pub gates: Vec<Gate>,
}

/// The verdict on `evidence`: `pass` when every gate is shown not worse (and SRM is
/// fine), `fail` when a gate is worse than allowed or SRM alarms, else
/// `inconclusive`. Without any gate there is no pass.
pub fn judge(arm: &str, evidence: &Evidence, rolled_back: bool) -> VerdictView {
    let mut fail = Vec::new();
    let mut open = Vec::new();
    if rolled_back {
        fail.push(format!("the rollout of {arm} was rolled back"));
    }
    if evidence.srm_alarm {
        fail.push(format!(
            "SRM alarm (p {}): users do not match the weights",
            p_value(evidence.srm_p_value)
        ));
    }
    if evidence.gates.is_empty() {
        open.push(format!("no guardrail watches {arm}: nothing can pass"));
    }
    if let Some(why) = &evidence.stale {
        return VerdictView {
            verdict: "inconclusive",
            reasons: vec![format!("the cluster's figures are not fresh: {why}")],
            arm: arm.to_string(),
            gates: evidence.gates.clone(),
        };
    }
    let mut passed = Vec::new();
    for g in &evidence.gates {
        match g.status() {
            GateStatus::Worse => fail.push(g.worse_reason()),
            GateStatus::NotWorse => passed.push(format!(
                "{}: {} shown within {} ({})",
                g.name,
                metric_name(g.metric),
                allowance(g.metric, g.max_degradation),
                g.interval()
            )),
            GateStatus::NotShownYet => open.push(format!(
                "{}: {} not yet shown within {} ({})",
                g.name,
                metric_name(g.metric),
                allowance(g.metric, g.max_degradation),
                g.interval()
            )),
            GateStatus::NotEnoughData => open.push(format!(
                "{}: {} not enough data yet",
                g.name,
                metric_name(g.metric)
            )),
        }
    }
    let (verdict, reasons) = if !fail.is_empty() {
        ("fail", fail)
    } else if !open.is_empty() {
        ("inconclusive", open)
    } else {
        ("pass", passed)
    };
    VerdictView {
        verdict,
        reasons,
        arm: arm.to_string(),
        gates: evidence.gates.clone(),
    }
}

/// The verdict on `arm` now: its gates are the rollout's when it is the rollout's
/// arm, else every guardrail watching it.
pub fn verdict(router: &Router, arm: &str) -> Result<VerdictView, RouterError> {
    let active = router.active();
    match active.config.arm_index(arm) {
        None => {
            let known: Vec<&str> = active.config.arms.iter().map(|a| a.name.as_str()).collect();
            return Err(RouterError::Request(ApiError::new(
                ErrorKind::UnknownVariant,
                format!("`arm` names no arm; arms are {}", known.join(", ")),
            )));
        }
        Some(0) => {
            return Err(RouterError::Request(ApiError::new(
                ErrorKind::InvalidInput,
                "`arm` is the control; name an arm compared with it",
            )))
        }
        Some(_) => {}
    }
    let rollout = active.config.rollout.as_ref().filter(|r| r.arm == arm);
    let gates: Vec<String> = match rollout {
        Some(r) => r.gates.clone(),
        None => active
            .config
            .guardrails
            .iter()
            .filter(|g| g.arm == arm)
            .map(|g| g.name.clone())
            .collect(),
    };
    let (rolled_back, since) = match rollout {
        None => (false, f64::INFINITY),
        Some(_) => router
            .rollout
            .lock()
            .as_ref()
            .filter(|r| r.arm == arm)
            .map_or((false, f64::INFINITY), |r| {
                (r.state == RolloutState::RolledBack, started_at(r))
            }),
    };
    let e = evidence(router, &active, arm, &gates, since);
    Ok(judge(arm, &e, rolled_back))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> RolloutConfig {
        RolloutConfig {
            arm: "candidate_model".into(),
            steps: vec![1.0, 5.0, 25.0, 50.0, 100.0],
            min_step: Duration::from_secs(300),
            min_users_per_step: 500,
            gates: vec!["errors".into(), "latency".into()],
            on_complete: OnComplete::Promote,
            max_exposed_users: None,
        }
    }

    fn gate(name: &str, metric: Metric, max: f64, low: f64, high: f64) -> Gate {
        Gate {
            name: name.into(),
            metric,
            max_degradation: max,
            estimate: Some((low + high) / 2.0),
            ci_low: Some(low),
            ci_high: Some(high),
            enough_data: true,
            tripped: false,
            strata: Vec::new(),
            step: None,
            alpha: None,
        }
    }

    fn healthy() -> Evidence {
        Evidence {
            phase_id: "p".into(),
            candidate_users: 600,
            srm_alarm: false,
            srm_p_value: 0.5,
            gates: vec![
                gate("errors", Metric::ErrorRate, 0.01, -0.004, 0.006),
                gate("latency", Metric::LatencyMeanSeconds, 0.005, -0.002, 0.004),
            ],
            last_trip: None,
            previous_phase_users: 0,
            stale: None,
            detection_latency: 1.0,
        }
    }

    #[test]
    fn stale_cluster_figures_hold_the_ramp_and_judge_nothing() {
        let config = RolloutConfig {
            min_step: Duration::ZERO,
            min_users_per_step: 0,
            ..config()
        };
        let healthy = healthy();
        assert!(matches!(
            decide(&config, RolloutState::Running, 0, 1e9, &healthy),
            Decision::Advance { .. }
        ));
        assert_eq!(judge("c", &healthy, false).verdict, "pass");
        let mut stale = healthy;
        stale.gates[0] = gate("errors", Metric::ErrorRate, 0.01, 0.02, 0.03);
        stale.stale = Some("Prometheus at http://p:9090 is unreachable".into());
        let waiting = hold(decide(&config, RolloutState::Running, 0, 1e9, &stale));
        assert!(waiting[0].contains("not fresh"), "{waiting:?}");
        assert_eq!(judge("c", &stale, false).verdict, "inconclusive");
    }

    fn hold(d: Decision) -> Vec<String> {
        match d {
            Decision::Hold(w) => w,
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    #[test]
    fn a_healthy_step_advances_one_step_at_a_time_and_completes_before_100() {
        let c = config();
        let e = healthy();
        for step in 0..3 {
            assert_eq!(
                decide(&c, RolloutState::Running, step, 301.0, &e),
                Decision::Advance { to: step + 1 }
            );
        }
        // The next step is 100%: that is the promotion.
        assert_eq!(
            decide(&c, RolloutState::Running, 3, 301.0, &e),
            Decision::Complete
        );
        let mut held = c.clone();
        held.steps = vec![1.0, 5.0, 25.0];
        held.on_complete = OnComplete::Hold;
        assert_eq!(
            decide(&held, RolloutState::Running, 2, 301.0, &e),
            Decision::Complete
        );
    }

    #[test]
    fn every_hold_reason_is_said_in_words() {
        let c = config();
        let mut e = healthy();
        assert_eq!(
            hold(decide(&c, RolloutState::Running, 0, 160.0, &e)),
            ["hold 140 s more"]
        );
        e.candidate_users = 312;
        assert_eq!(
            hold(decide(&c, RolloutState::Running, 0, 400.0, &e)),
            ["candidate users 312/500"]
        );
        e.candidate_users = 600;
        e.gates[1] = gate("latency", Metric::LatencyMeanSeconds, 0.005, -0.002, 0.007);
        let w = hold(decide(&c, RolloutState::Running, 0, 400.0, &e));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with(
                "latency not yet shown within +5.0 ms (latency, interval [-2.0 ms, +7.0 ms])"
            ),
            "{w:?}"
        );
        e.gates[1].enough_data = false;
        assert_eq!(
            hold(decide(&c, RolloutState::Running, 0, 400.0, &e)),
            ["latency not enough data yet (latency)"]
        );
        let mut e = healthy();
        e.srm_alarm = true;
        e.srm_p_value = 0.0004;
        let w = hold(decide(&c, RolloutState::Running, 0, 400.0, &e));
        assert!(w[0].starts_with("SRM alarm (p = 4.0e-4)"), "{w:?}");
        // Everything at once, in a stable order.
        let mut e = healthy();
        e.candidate_users = 1;
        e.srm_alarm = true;
        e.gates[0].enough_data = false;
        let w = hold(decide(&c, RolloutState::Running, 0, 0.0, &e));
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].starts_with("hold 300 s") && w[1].starts_with("candidate users 1/500"));
        // Not running: nothing moves.
        for s in [
            RolloutState::Pending,
            RolloutState::Paused,
            RolloutState::Completed,
            RolloutState::RolledBack,
        ] {
            assert_eq!(
                hold(decide(&c, s, 0, 1e9, &healthy())),
                [format!("the rollout is {}", s.as_str())]
            );
        }
    }

    #[test]
    fn a_gate_beyond_its_allowance_rolls_back_even_during_the_hold() {
        let c = config();
        let mut e = healthy();
        e.candidate_users = 3;
        e.gates[0] = gate("errors", Metric::ErrorRate, 0.01, 0.012, 0.03);
        match decide(&c, RolloutState::Running, 1, 2.0, &e) {
            Decision::RollBack(r) => assert_eq!(
                r,
                "errors: error rate worse than the allowed +1.00 points (interval [+1.20 points, +3.00 points])"
            ),
            other => panic!("{other:?}"),
        }
        // Higher is better: the allowance is below zero.
        let mut e = healthy();
        e.gates[1] = gate("rating", Metric::Rating, 0.3, -0.9, -0.31);
        assert!(matches!(
            decide(&c, RolloutState::Running, 0, 400.0, &e),
            Decision::RollBack(r) if r.contains("rating worse than the allowed -0.300")
        ));
        // A guardrail that already tripped in the phase counts as worse.
        let mut e = healthy();
        e.gates[0].tripped = true;
        assert!(matches!(
            decide(&c, RolloutState::Running, 0, 400.0, &e),
            Decision::RollBack(_)
        ));
        // Worse, but within the allowance, is not a rollback (nor, yet, a pass).
        let mut e = healthy();
        e.gates[0] = gate("errors", Metric::ErrorRate, 0.01, 0.001, 0.011);
        assert!(matches!(
            decide(&c, RolloutState::Running, 0, 400.0, &e),
            Decision::Hold(_)
        ));
    }

    #[test]
    fn higher_is_better_gates_need_the_low_end_above_minus_the_allowance() {
        let mut c = config();
        c.gates = vec!["rating".into()];
        let mut e = healthy();
        e.gates = vec![gate("rating", Metric::Rating, 0.3, -0.29, 0.4)];
        assert_eq!(
            decide(&c, RolloutState::Running, 0, 400.0, &e),
            Decision::Advance { to: 1 }
        );
        e.gates = vec![gate("rating", Metric::Rating, 0.3, -0.31, 0.4)];
        assert!(matches!(
            decide(&c, RolloutState::Running, 0, 400.0, &e),
            Decision::Hold(_)
        ));
    }

    const FILE: &str = "# The router.\nlisten = \"127.0.0.1:8080\"\n[experiment]\nsalt = \"s\"\n[[arms]]\nname = \"best_model\"\nurl = \"http://127.0.0.1:6001\"\nweight = 100 # all of them\n[[arms]]\nname = \"candidate_model\"\nurl = \"http://127.0.0.1:6002\"\nweight = 0\n[rollout]\narm = \"candidate_model\"\nsteps = [1, 5, 100]\nmin_step_seconds = 0\nmin_users_per_step = 10\n";

    fn router_at(path: &std::path::Path) -> std::sync::Arc<Router> {
        let config = RouterConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Router::new(config, crate::config::config_hash(&text)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn state_of(router: &Router) -> (RolloutState, usize, f64) {
        let v = view(router);
        (
            v.state.unwrap_or(RolloutState::Pending),
            v.step.unwrap_or(99),
            v.percent.unwrap_or(-1.0),
        )
    }

    #[test]
    fn the_first_tick_starts_the_ramp_in_the_file_and_a_restart_resumes_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("router.toml");
        std::fs::write(&path, FILE).unwrap_or_else(|e| panic!("{e}"));
        let router = router_at(&path);
        assert_eq!(state_of(&router).0, RolloutState::Pending);
        tick(&router);
        let (state, step, percent) = state_of(&router);
        assert_eq!((state, step), (RolloutState::Running, 0));
        assert!((percent - 1.0).abs() < 1e-9);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(text.contains("weight = 99 # all of them"), "{text}");
        assert!(text.contains("weight = 1\n"), "{text}");
        // The file carries the step: the watcher sees nothing new.
        assert_eq!(router.active().hash, crate::config::config_hash(&text));
        // The next tick waits for users, in words.
        tick(&router);
        assert_eq!(view(&router).waiting_for, ["candidate users 0/10"]);
        // The state file and the audit line.
        let saved = rollout::load(&rollout::state_path(&path))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no state file"));
        assert_eq!(
            (saved.state, saved.step, saved.history.len()),
            (RolloutState::Running, 0, 1)
        );
        let audit =
            std::fs::read_to_string(dir.path().join("abgate-audit.jsonl")).unwrap_or_default();
        let line: serde_json::Value =
            serde_json::from_str(audit.lines().next().unwrap_or("")).unwrap_or_default();
        assert_eq!(line["event"], "rollout");
        assert_eq!(
            (line["from"].as_str(), line["to"].as_str()),
            (Some("pending"), Some("running"))
        );
        assert_eq!(line["file"], "written");
        // A restart resumes the same step, without a new transition.
        drop(router);
        let again = router_at(&path);
        tick(&again);
        let (state, step, percent) = state_of(&again);
        assert_eq!((state, step), (RolloutState::Running, 0));
        assert!((percent - 1.0).abs() < 1e-9);
        assert_eq!(view(&again).history.len(), 1);
        let metrics = String::from_utf8_lossy(&again.metrics.common.encode()).into_owned();
        assert!(
            metrics.contains("abgate_rollout_state{state=\"running\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("abgate_rollout_step 1"), "{metrics}");
    }

    #[test]
    fn a_symlinked_config_is_never_edited_and_the_step_is_in_memory_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = crate::config::edit::tests_support::kubelet_layout(dir.path(), FILE);
        let router = router_at(&path);
        tick(&router);
        let v = view(&router);
        assert_eq!(v.state, Some(RolloutState::Running));
        assert!((v.percent.unwrap_or(0.0) - 1.0).abs() < 1e-9);
        let t = &v.history[0];
        assert_eq!(t.file, "in_memory_only");
        assert!(t.note.as_deref().unwrap_or("").contains("symlink"), "{t:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), FILE);
        // The state file is the router's own, beside the link.
        assert!(rollout::state_path(&path).is_file());
    }

    #[test]
    fn pause_resume_and_abort_are_transitions_and_a_finished_rollout_refuses_them() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("router.toml");
        std::fs::write(&path, FILE).unwrap_or_else(|e| panic!("{e}"));
        let router = router_at(&path);
        tick(&router);
        let v = act(&router, Action::Pause).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.state, Some(RolloutState::Paused));
        assert!(act(&router, Action::Pause).is_err());
        tick(&router);
        assert_eq!(state_of(&router).0, RolloutState::Paused);
        let v = act(&router, Action::Resume).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.state, Some(RolloutState::Running));
        let v = act(&router, Action::Abort).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.state, Some(RolloutState::RolledBack));
        assert_eq!(router.active().config.weights(), vec![99.0, 0.0]);
        let e = act(&router, Action::Resume).err().map(|e| e.to_api());
        assert_eq!(e.map(|e| e.kind), Some(ErrorKind::Conflict));
        let by: Vec<String> = view(&router).history.iter().map(|t| t.by.clone()).collect();
        assert_eq!(by, ["controller", "operator", "operator", "operator"]);
        // Over: a tick changes nothing, and the verdict says it failed.
        tick(&router);
        assert_eq!(state_of(&router).0, RolloutState::RolledBack);
        let v = verdict(&router, "candidate_model").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.verdict, "fail");
        assert!(verdict(&router, "best_model").is_err());
        assert!(verdict(&router, "nobody").is_err());
    }

    #[test]
    fn a_candidate_that_already_has_users_starts_where_none_moves_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("router.toml");
        let text = FILE
            .replace("weight = 100 # all of them", "weight = 97")
            .replace("weight = 0\n[rollout]", "weight = 3\n[rollout]");
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let router = router_at(&path);
        tick(&router);
        let (state, step, percent) = state_of(&router);
        assert_eq!((state, step), (RolloutState::Running, 1));
        assert!((percent - 5.0).abs() < 1e-9);
        assert!(view(&router).history[0]
            .reason
            .contains("started at step 2"));
        // Raised by hand beyond the step while paused: resume goes on from there.
        act(&router, Action::Pause).unwrap_or_else(|e| panic!("{e}"));
        let mut config = router.active().config.clone();
        config.arms[0].weight = 40.0;
        config.arms[1].weight = 60.0;
        router.apply(config, "edited".into());
        let v = act(&router, Action::Resume).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((v.state, v.step), (Some(RolloutState::Running), Some(2)));
        assert!((v.percent.unwrap_or(0.0) - 100.0).abs() < 1e-9);
        assert_eq!(first_step_at_least(&[1.0, 5.0], 7.0), None);
        assert_eq!(first_step_at_least(&[1.0, 5.0], 5.0), Some(1));
    }

    #[test]
    fn weights_changed_outside_the_rollout_pause_it_and_resume_applies_the_step() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("router.toml");
        std::fs::write(&path, FILE).unwrap_or_else(|e| panic!("{e}"));
        let router = router_at(&path);
        tick(&router);
        // An operator's edit down to 0.5%: resume applies the step (users only move on).
        let mut config = router.active().config.clone();
        config.arms[0].weight = 99.5;
        config.arms[1].weight = 0.5;
        router.apply(config, "edited".into());
        tick(&router);
        let v = view(&router);
        assert_eq!(v.state, Some(RolloutState::Paused));
        assert!(
            v.history[1].reason.contains("changed outside the rollout"),
            "{:?}",
            v.history
        );
        act(&router, Action::Resume).unwrap_or_else(|e| panic!("{e}"));
        assert!((state_of(&router).2 - 1.0).abs() < 1e-9);
        // A weight of 0 set elsewhere (a guardrail) ends the rollout as rolled back.
        let mut config = router.active().config.clone();
        config.arms[1].weight = 0.0;
        router.apply(config, "rolled".into());
        tick(&router);
        assert_eq!(state_of(&router).0, RolloutState::RolledBack);
    }

    fn position(revision: u64, state: RolloutState, step: usize, at: f64) -> rollout::Position {
        rollout::Position {
            revision,
            state,
            step,
            step_started_at: at,
            started_at: at,
            replicas: 2,
        }
    }

    /// [`FILE`] in cluster mode (a Prometheus nobody answers at), written in `dir`.
    fn write_cluster_config(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("router.toml");
        let text = FILE.replace(
            "salt = \"s\"\n",
            "salt = \"s\"\nprometheus_url = \"http://127.0.0.1:9\"\n",
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn assert_at(router: &Router, state: RolloutState, step: usize, percent: f64) {
        let (s, k, p) = state_of(router);
        assert_eq!((s, k), (state, step));
        assert!((p - percent).abs() < 1e-9, "{p} != {percent}");
    }

    fn seen(router: &Router, positions: Vec<rollout::Position>) -> rollout::Seen {
        let mut positions = positions;
        positions.sort_by(|a, b| b.order(a));
        rollout::Seen {
            rollout: id_of(&router.active().config).unwrap_or_default(),
            read_at: unix_now(),
            positions,
        }
    }

    #[test]
    fn the_exposure_grows_with_the_next_share_and_falls_with_the_allowance() {
        let step = Stratum {
            phase_id: "p".into(),
            estimate: 0.0,
            std_error: 0.002,
            effective_n: 5000.0,
            degrees_of_freedom: 120.0,
            ci_low: None,
            ci_high: None,
        };
        let at = |allowance: f64, next: f64| {
            exposure(&step, 0.05, allowance, 500, 1.0, next, 300.0, 0.0)
        };
        // More users at a larger next share; fewer with a wider allowance.
        assert!(at(0.01, 5.0) < at(0.01, 25.0) && at(0.01, 25.0) < at(0.01, 50.0));
        assert!(at(0.02, 25.0) < at(0.01, 25.0) / 3.0);
        // Nothing can be caught without a control, nor within an allowance of 0.
        assert!(at(0.01, 100.0).is_infinite() && at(0.0, 25.0).is_infinite());
        // About (half-width / allowance)² × users × (1 − p)/(1 − q): the router's
        // half-width now is ~2.6 standard errors wider than the allowance allows.
        let half = student_t_matching_normal(
            abgate_stats::Boundary::default()
                .with_alpha(0.05)
                .map_or(f64::NAN, |b| b.multiplier(5000.0)),
            120.0,
        ) * 0.002;
        let rough = (half / 0.01).powi(2) * 500.0 * 0.99 / 0.95;
        let e = at(0.01, 5.0);
        assert!(e > 0.5 * rough && e < 2.0 * rough, "{e} vs {rough}");
        // Users arriving during the detection latency at the next share add on.
        let late = exposure(&step, 0.05, 0.01, 500, 1.0, 5.0, 300.0, 6.0);
        assert!((late - e - 500.0 / 300.0 * 5.0 * 6.0).abs() < 1e-6);
    }

    #[test]
    fn max_exposed_users_holds_a_step_that_would_expose_too_many() {
        let mut c = config();
        let mut e = healthy();
        for g in &mut e.gates {
            g.alpha = Some(0.025);
            g.step = Some(Stratum {
                phase_id: "p".into(),
                estimate: 0.0,
                std_error: g.max_degradation / 8.0,
                effective_n: 600.0,
                degrees_of_freedom: 100.0,
                ci_low: None,
                ci_high: None,
            });
        }
        let (estimate, gate) = next_exposure(&c, 0, 400.0, &e).unwrap_or((f64::NAN, String::new()));
        assert!(estimate.is_finite() && estimate > 0.0, "{estimate}");
        c.max_exposed_users = Some(estimate.ceil() as u64 + 1);
        assert_eq!(
            decide(&c, RolloutState::Running, 0, 400.0, &e),
            Decision::Advance { to: 1 }
        );
        c.max_exposed_users = Some((estimate / 2.0) as u64);
        match decide(&c, RolloutState::Running, 0, 400.0, &e) {
            Decision::Hold(w) => {
                assert_eq!(w.len(), 1);
                assert!(w[0].starts_with("exposure: at 5% about"), "{w:?}");
                assert!(w[0].contains(&gate), "{w:?}");
            }
            other => panic!("{other:?}"),
        }
        // The advance says what the next step (5%) could expose: the estimate made
        // on this step's evidence.
        let reason = advance_reason(&c, 0, 400.0, &e);
        assert!(
            reason.ends_with(&format!(
                "advancing to 5% (a candidate worse than {gate}'s allowance would reach about {estimate:.0} users at 5% before it could be caught)"
            )),
            "{reason}"
        );
        // Without a step's own estimate the exposure is not known: hold.
        e.gates[0].step = None;
        e.gates[1].step = None;
        assert!(matches!(
            decide(&c, RolloutState::Running, 0, 400.0, &e),
            Decision::Hold(w) if w[0].contains("cannot be estimated")
        ));
        // The last step before 100% completes whatever the limit (there is no next
        // step with a control to catch anything).
        assert_eq!(
            decide(&c, RolloutState::Running, 3, 400.0, &healthy()),
            Decision::Complete
        );
    }

    #[test]
    fn in_cluster_mode_a_step_scheduled_ahead_changes_the_weights_only_at_its_moment() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let router = router_at(&write_cluster_config(dir.path()));
        adopt(&router, seen(&router, vec![]));
        tick(&router);
        // Even the first step is scheduled (three 5 s intervals and a tick ahead).
        assert_at(&router, RolloutState::Running, 0, 0.0);
        let v = view(&router);
        assert!(
            v.waiting_for[0].starts_with("step 1% begins in 16 s"),
            "{:?}",
            v.waiting_for
        );
        assert!(v.history[0]
            .reason
            .ends_with("in 16 s, on every replica at once"));
        // Another replica decided step 2 to begin in an hour: the record takes it,
        // the weights stay until then, and the view says when.
        let later = unix_now() + 3600.0;
        adopt(
            &router,
            seen(&router, vec![position(2, RolloutState::Running, 1, later)]),
        );
        tick(&router);
        let v = view(&router);
        assert_eq!((v.state, v.step), (Some(RolloutState::Running), Some(1)));
        assert_eq!(router.active().config.weights(), vec![100.0, 0.0]);
        assert!(
            v.waiting_for[0].starts_with("step 5% begins in 3600 s"),
            "{:?}",
            v.waiting_for
        );
        let due = next_change_in(&router).map_or(0.0, |d| d.as_secs_f64());
        assert!(due > 3590.0 && due <= 3600.0, "{due}");
        // Its moment (here: a record whose start has passed) applies the weights.
        adopt(
            &router,
            seen(
                &router,
                vec![position(3, RolloutState::Running, 1, unix_now() - 1.0)],
            ),
        );
        tick(&router);
        assert_at(&router, RolloutState::Running, 1, 5.0);
        assert_eq!(next_change_in(&router), None);
    }

    #[test]
    fn in_cluster_mode_a_restart_takes_its_step_from_the_cluster_not_from_the_state_file() {
        let saved = |dir: &std::path::Path| {
            let path = write_cluster_config(dir);
            let config = RouterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let rollout = config
                .rollout
                .clone()
                .unwrap_or_else(|| panic!("[rollout]"));
            let mut r = Record::pending(&rollout);
            (r.state, r.step, r.revision) = (RolloutState::Running, 1, 2);
            (r.step_started_at, r.started_at) = (100.0, 50.0);
            rollout::save(&rollout::state_path(&path), &r).unwrap_or_else(|e| panic!("{e}"));
            router_at(&path)
        };
        // The file says step 2 (5%); the config in force has the candidate at 0.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let router = saved(dir.path());
        tick(&router);
        assert_eq!(router.active().config.weights(), vec![100.0, 0.0]);
        assert!(view(&router).waiting_for[0].contains("not read yet"));
        // The cluster agrees: the step is applied.
        adopt(
            &router,
            seen(&router, vec![position(2, RolloutState::Running, 1, 100.0)]),
        );
        assert_eq!(router.active().config.weights(), vec![95.0, 5.0]);
        tick(&router);
        assert_eq!(state_of(&router).0, RolloutState::Running);
        // Rolled back while this replica was down: the candidate never comes back.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let router = saved(dir.path());
        tick(&router);
        adopt(
            &router,
            seen(
                &router,
                vec![
                    position(2, RolloutState::Running, 1, 100.0),
                    position(3, RolloutState::RolledBack, 1, 100.0),
                ],
            ),
        );
        tick(&router);
        assert_eq!(state_of(&router).0, RolloutState::RolledBack);
        assert_eq!(router.active().config.weights(), vec![100.0, 0.0]);
    }

    #[test]
    fn in_cluster_mode_the_position_that_supersedes_is_adopted_and_users_never_move_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let router = router_at(&write_cluster_config(dir.path()));
        // Before the cluster's records were read once, nothing starts here.
        tick(&router);
        assert_eq!(state_of(&router).0, RolloutState::Pending);
        assert!(view(&router).waiting_for[0].contains("not read yet"));
        // An empty cluster: this replica starts the rollout (revision 1).
        adopt(&router, seen(&router, vec![]));
        tick(&router);
        assert_eq!(state_of(&router).0, RolloutState::Running);
        let own = router.rollout.lock().as_ref().map(Record::position);
        assert_eq!(own.as_ref().map(|p| p.revision), Some(1));
        // Another replica is two transitions further: its step is taken, raising the
        // candidate's share, as one transition by the cluster.
        adopt(
            &router,
            seen(&router, vec![position(3, RolloutState::Running, 1, 50.0)]),
        );
        assert_at(&router, RolloutState::Running, 1, 5.0);
        let v = view(&router);
        assert_eq!(v.history.len(), 2);
        assert_eq!(v.history[1].by, "cluster");
        assert!(
            v.history[1].reason.contains("revision 3"),
            "{:?}",
            v.history
        );
        assert_eq!(v.cluster.map(|c| c.positions.len()), Some(1));
        // An older revision is ignored; the same position with an earlier start only
        // moves the start, without a transition.
        adopt(
            &router,
            seen(&router, vec![position(2, RolloutState::Running, 2, 10.0)]),
        );
        assert_eq!(state_of(&router).1, 1);
        adopt(
            &router,
            seen(&router, vec![position(3, RolloutState::Running, 1, 40.0)]),
        );
        assert_eq!(view(&router).history.len(), 2);
        assert_eq!(view(&router).step_started_at, Some(40.0));
        // An operator's pause elsewhere at the same revision as a step here: the
        // higher step stands (no user moves back), paused.
        adopt(
            &router,
            seen(&router, vec![position(3, RolloutState::Paused, 0, 30.0)]),
        );
        assert_at(&router, RolloutState::Paused, 1, 5.0);
        // A command here takes a revision above any seen.
        let v = act(&router, Action::Resume).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.state, Some(RolloutState::Running));
        let own = router.rollout.lock().as_ref().map(Record::position);
        assert_eq!(own.map(|p| p.revision), Some(4));
        // A rollback anywhere supersedes every revision, and stays.
        adopt(
            &router,
            seen(
                &router,
                vec![position(1, RolloutState::RolledBack, 0, 60.0)],
            ),
        );
        assert_eq!(state_of(&router).0, RolloutState::RolledBack);
        assert_eq!(router.active().config.weights(), vec![95.0, 0.0]);
        adopt(
            &router,
            seen(
                &router,
                vec![
                    position(9, RolloutState::Running, 2, 70.0),
                    position(1, RolloutState::RolledBack, 0, 60.0),
                ],
            ),
        );
        assert_eq!(state_of(&router).0, RolloutState::RolledBack);
        assert_eq!(router.active().config.weights(), vec![95.0, 0.0]);
        // Another rollout's records are not this one's.
        let mut other = seen(&router, vec![position(20, RolloutState::Running, 2, 1.0)]);
        other.rollout = "00".into();
        adopt(&router, other);
        assert_eq!(state_of(&router).0, RolloutState::RolledBack);
    }

    fn stratum_of(estimate: f64, std_error: f64, n: f64) -> Stratum {
        Stratum {
            phase_id: "p".into(),
            estimate,
            std_error,
            effective_n: n,
            degrees_of_freedom: n,
            ci_low: None,
            ci_high: None,
        }
    }

    #[test]
    fn strata_combine_by_inverse_variance_into_a_narrower_interval() {
        let one = stratum_of(0.01, 0.004, 1000.0);
        let (e1, l1, h1) = combine(std::slice::from_ref(&one), 0.05).unwrap_or_default();
        assert!((e1 - 0.01).abs() < 1e-12 && l1 < 0.01 && h1 > 0.01);
        // The router's own interval for one phase.
        let b = abgate_stats::Boundary::default();
        let m = student_t_matching_normal(b.multiplier(1000.0), 1000.0);
        assert!((h1 - (0.01 + 0.004 * m)).abs() < 1e-12);
        // Two equal phases: the same estimate, a narrower interval.
        let (e2, l2, h2) = combine(&[one.clone(), one.clone()], 0.05).unwrap_or_default();
        assert!((e2 - 0.01).abs() < 1e-12);
        assert!(h2 - l2 < (h1 - l1) / 1.3, "{l2} {h2} vs {l1} {h1}");
        // The more precise phase weighs more.
        let (e3, _, _) = combine(
            &[stratum_of(0.0, 0.001, 4000.0), stratum_of(0.1, 0.01, 100.0)],
            0.05,
        )
        .unwrap_or_default();
        assert!(e3 < 0.002, "{e3}");
        // A smaller alpha widens it; degenerate phases are left out.
        let (_, l4, h4) = combine(std::slice::from_ref(&one), 0.01).unwrap_or_default();
        assert!(h4 - l4 > h1 - l1);
        assert_eq!(combine(&[stratum_of(0.0, 0.0, 10.0)], 0.05), None);
        assert_eq!(combine(&[], 0.05), None);
    }

    #[test]
    fn the_verdict_passes_fails_or_waits() {
        let v = judge("candidate_model", &healthy(), false);
        assert_eq!(v.verdict, "pass");
        assert_eq!(v.reasons.len(), 2);
        let mut e = healthy();
        e.gates[1] = gate("latency", Metric::LatencyMeanSeconds, 0.005, -0.002, 0.007);
        assert_eq!(judge("c", &e, false).verdict, "inconclusive");
        e.gates[0] = gate("errors", Metric::ErrorRate, 0.01, 0.02, 0.03);
        let v = judge("c", &e, false);
        assert_eq!((v.verdict, v.reasons.len()), ("fail", 1));
        let mut e = healthy();
        e.srm_alarm = true;
        assert_eq!(judge("c", &e, false).verdict, "fail");
        assert_eq!(judge("c", &healthy(), true).verdict, "fail");
        let mut e = healthy();
        e.gates.clear();
        assert_eq!(judge("c", &e, false).verdict, "inconclusive");
    }
}
