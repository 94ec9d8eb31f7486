//! The experiment's Prometheus families, refreshed from a phase summary (every second
//! by the background task, and on each `/metrics` scrape). Labels are bounded: arm
//! names and guardrail names come from the config, `metric` from the closed set.
//! `abgate_comparison_estimate` appears once both arms have an observation of the
//! metric; `abgate_comparison_ci_low` / `_ci_high` once the comparison has a verdict
//! (both arms at `experiment.min_samples`).

use abgate_stats::{Metric, Verdict};
use prometheus::{Gauge, GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
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
    shown: Mutex<BTreeSet<String>>,
}

impl Gauges {
    /// Creates and registers the families in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let srm_p_value = Gauge::new(
            "abgate_srm_p_value",
            "Anytime-valid sample-ratio-mismatch p-value of the current phase (sampled sticky users per served arm vs configured shares); below 0.001 is an alarm.",
        )?;
        let phase = IntGauge::new(
            "abgate_experiment_phase",
            "Current experiment phase (1 at start, +1 per salt or weight change).",
        )?;
        let users = GaugeVec::new(
            Opts::new(
                "abgate_experiment_users",
                "Estimated distinct sticky users served per arm in the current phase (sampled / sample fraction).",
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
            shown: Mutex::new(BTreeSet::new()),
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
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now: BTreeSet<String> = summary.arms.iter().map(|a| a.variant.clone()).collect();
        for gone in shown.difference(&now) {
            let _ = self.users.remove_label_values(&[gone]);
            for m in Metric::ALL {
                for g in [&self.estimate, &self.ci_low, &self.ci_high] {
                    let _ = g.remove_label_values(&[m.as_str(), gone]);
                }
            }
        }
        for arm in &summary.arms {
            self.users
                .with_label_values(&[&arm.variant])
                .set(arm.users.estimate);
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
        }
        // The control has no comparison series.
        if let Some(control) = summary.arms.first() {
            for m in Metric::ALL {
                for g in [&self.estimate, &self.ci_low, &self.ci_high] {
                    let _ = g.remove_label_values(&[m.as_str(), &control.variant]);
                }
            }
        }
        *shown = now;
    }
}
