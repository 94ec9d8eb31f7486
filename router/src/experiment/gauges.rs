//! The experiment's Prometheus families, refreshed from a phase summary (every second
//! by the background task, and on each `/metrics` scrape). Labels are bounded: arm
//! names and guardrail names come from the config, `metric` from the closed set.
//! `abgate_comparison_estimate` appears once both arms have an observation of the
//! metric; `abgate_comparison_ci_low` / `_ci_high` once the comparison has a verdict
//! (both arms at `experiment.min_samples`). `abgate_experiment_crossover_share{variant}`
//! is the share of an arm's assigned requests another arm served;
//! `abgate_experiment_phase_info{phase_id}` carries the phase's content id (one series,
//! the current phase); `abgate_comparison_family_worse{metric,variant}` is 1 when the
//! comparison is `worse` at the family's level (α split over every metric × candidate
//! arm: the one error budget of the `CandidateWorse` alert), else 0;
//! `abgate_experiment_feedback_outside_phase_total{reason}` counts accepted feedback
//! not counted in the current phase (`late`: its prediction predates the phase;
//! `undated`: the arm did not say when it predicted).

use abgate_stats::{Metric, Verdict};
use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::collections::BTreeSet;
use std::sync::Mutex;

use super::phase::PhaseSummary;

/// The families.
pub struct Gauges {
    srm_p_value: Gauge,
    phase: IntGauge,
    users: GaugeVec,
    estimate: GaugeVec,
    ci_low: GaugeVec,
    ci_high: GaugeVec,
    /// `abgate_guardrail_trips_total{guardrail}`.
    pub trips: IntCounterVec,
    crossover: GaugeVec,
    phase_info: IntGaugeVec,
    family_worse: GaugeVec,
    /// `abgate_experiment_feedback_outside_phase_total{reason="late"}`.
    pub feedback_late: IntCounter,
    /// `abgate_experiment_feedback_outside_phase_total{reason="undated"}`.
    pub feedback_undated: IntCounter,
    shown: Mutex<BTreeSet<String>>,
    shown_phase: Mutex<String>,
}

impl Gauges {
    /// Creates and registers the families in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let srm_p_value = Gauge::new(
            "abgate_srm_p_value",
            "Anytime-valid sample-ratio-mismatch p-value of the current phase (sampled sticky users per assigned arm vs configured shares); below 0.001 is an alarm.",
        )?;
        let phase = IntGauge::new(
            "abgate_experiment_phase",
            "Current experiment phase (1 at start, +1 per salt or weight change).",
        )?;
        let users = GaugeVec::new(
            Opts::new(
                "abgate_experiment_users",
                "Estimated distinct sticky users assigned per arm in the current phase (sampled / sample fraction).",
            ),
            &["variant"],
        )?;
        let comparison =
            |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["metric", "variant"]);
        let estimate = comparison(
            "abgate_comparison_estimate",
            "Arm minus control (the first arm) on a metric, in the metric's unit, current phase.",
        )?;
        let ci_low = comparison(
            "abgate_comparison_ci_low",
            "Lower end of the 95% anytime-valid confidence sequence of arm minus control.",
        )?;
        let ci_high = comparison(
            "abgate_comparison_ci_high",
            "Upper end of the 95% anytime-valid confidence sequence of arm minus control.",
        )?;
        let trips = IntCounterVec::new(
            Opts::new(
                "abgate_guardrail_trips_total",
                "Guardrail trips (at most one per guardrail and phase).",
            ),
            &["guardrail"],
        )?;
        let crossover = GaugeVec::new(
            Opts::new(
                "abgate_experiment_crossover_share",
                "Share of the requests of an arm's assigned sticky users that another arm served (failover or a retry), current phase; NaN before any.",
            ),
            &["variant"],
        )?;
        let phase_info = IntGaugeVec::new(
            Opts::new(
                "abgate_experiment_phase_info",
                "The current phase's number, labelled with its content id (hex of a hash of salt, arm names and weights; the same on every replica).",
            ),
            &["phase_id"],
        )?;
        let family_worse = GaugeVec::new(
            Opts::new(
                "abgate_comparison_family_worse",
                "1 when arm minus control is worse at the family level (alpha 0.05 split over every metric x candidate arm: one error budget for 'some comparison is worse'), else 0; current phase.",
            ),
            &["metric", "variant"],
        )?;
        let outside = IntCounterVec::new(
            Opts::new(
                "abgate_experiment_feedback_outside_phase_total",
                "Accepted feedback not counted in the current phase: late (its prediction predates the phase) or undated (the arm did not say when it predicted).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(crossover.clone()))?;
        registry.register(Box::new(phase_info.clone()))?;
        registry.register(Box::new(family_worse.clone()))?;
        registry.register(Box::new(outside.clone()))?;
        registry.register(Box::new(srm_p_value.clone()))?;
        registry.register(Box::new(phase.clone()))?;
        registry.register(Box::new(users.clone()))?;
        registry.register(Box::new(estimate.clone()))?;
        registry.register(Box::new(ci_low.clone()))?;
        registry.register(Box::new(ci_high.clone()))?;
        registry.register(Box::new(trips.clone()))?;
        srm_p_value.set(1.0);
        Ok(Gauges {
            srm_p_value,
            phase,
            users,
            estimate,
            ci_low,
            ci_high,
            trips,
            crossover,
            phase_info,
            family_worse,
            feedback_late: outside.with_label_values(&["late"]),
            feedback_undated: outside.with_label_values(&["undated"]),
            shown: Mutex::new(BTreeSet::new()),
            shown_phase: Mutex::new(String::new()),
        })
    }

    /// Sets every gauge from `summary`; series of arms no longer present are removed,
    /// and a comparison figure that cannot be computed yet is NaN.
    pub fn refresh(&self, summary: &PhaseSummary, guardrails: &[&str]) {
        self.srm_p_value.set(summary.srm.p_value);
        self.phase
            .set(i64::try_from(summary.phase).unwrap_or(i64::MAX));
        for g in guardrails {
            self.trips.with_label_values(&[g]);
        }
        {
            let mut shown_phase = self
                .shown_phase
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *shown_phase != summary.phase_id {
                let _ = self.phase_info.remove_label_values(&[shown_phase.as_str()]);
                shown_phase.clone_from(&summary.phase_id);
            }
            self.phase_info
                .with_label_values(&[summary.phase_id.as_str()])
                .set(i64::try_from(summary.phase).unwrap_or(i64::MAX));
        }
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now: BTreeSet<String> = summary.arms.iter().map(|a| a.variant.clone()).collect();
        for gone in shown.difference(&now) {
            let _ = self.users.remove_label_values(&[gone]);
            let _ = self.crossover.remove_label_values(&[gone]);
            for m in Metric::ALL {
                for g in [
                    &self.estimate,
                    &self.ci_low,
                    &self.ci_high,
                    &self.family_worse,
                ] {
                    let _ = g.remove_label_values(&[m.as_str(), gone]);
                }
            }
        }
        for arm in &summary.arms {
            self.users
                .with_label_values(&[&arm.variant])
                .set(arm.users.estimate);
            self.crossover
                .with_label_values(&[&arm.variant])
                .set(arm.crossover.share.unwrap_or(f64::NAN));
        }
        for c in &summary.comparisons {
            let labels = [c.metric.as_str(), c.variant.as_str()];
            // The interval is exported once it decides (both arms at min_samples), so
            // `ci_low > 0` in an alert means exactly what the verdict `worse` means.
            let decided = c.verdict != Verdict::NotEnoughData;
            for (gauge, value) in [
                (&self.estimate, c.estimate),
                (&self.ci_low, c.ci_low.filter(|_| decided)),
                (&self.ci_high, c.ci_high.filter(|_| decided)),
            ] {
                // NaN until it can be computed: the series exist from the start
                // (no series appears later), and NaN never satisfies an alert.
                let shown = value.filter(|v| v.is_finite()).unwrap_or(f64::NAN);
                gauge.with_label_values(&labels).set(shown);
            }
            self.family_worse
                .with_label_values(&labels)
                .set(f64::from(u8::from(c.family_verdict == Verdict::Worse)));
        }
        // The control has no comparison series.
        if let Some(control) = summary.arms.first() {
            for m in Metric::ALL {
                for g in [
                    &self.estimate,
                    &self.ci_low,
                    &self.ci_high,
                    &self.family_worse,
                ] {
                    let _ = g.remove_label_values(&[m.as_str(), &control.variant]);
                }
            }
        }
        *shown = now;
    }
}
