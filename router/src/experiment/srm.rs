//! The sample-ratio-mismatch test of a phase: sampled sticky users per *assigned* arm
//! against the configured shares, with the anytime-valid Dirichlet–multinomial test of
//! [`abgate_stats::SrmMonitor`] (alarm below [`ALARM_THRESHOLD`]) and the fixed-horizon
//! chi-square p-value for reference.
//!
//! Only users whose arm came from the hash are counted (overrides and anonymous users
//! are left out), by the arm the hash assigned them (intention to treat): a mismatch
//! means the assignment or the recording is broken. Traffic moved off the split by
//! failover is the arms' crossover figure, not a mismatch.

use abgate_stats::{SrmMonitor, ALARM_THRESHOLD};
use serde::{Deserialize, Serialize};

/// The SRM figures at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SrmView {
    /// Anytime-valid p-value (running minimum of 1/BF over the phase); 1 before any user.
    pub p_value: f64,
    /// Pearson chi-square p-value of the current counts (valid for one look only).
    pub chi2_p_value: f64,
    /// `p_value < threshold`.
    pub alarm: bool,
    /// The Bayes factor now: an e-value (its mean over replicas is one too, whatever
    /// their dependence; see [`crate::cluster`]). 1 before any user.
    pub e_value: f64,
    /// The alarm threshold (0.001).
    pub threshold: f64,
    /// Arm names, the order of `expected` and `observed`.
    pub variants: Vec<String>,
    /// Expected sampled users per arm under the configured shares.
    pub expected: Vec<f64>,
    /// Sampled users per assigned arm.
    pub observed: Vec<u64>,
}

/// The phase's monitor (absent when the weights cannot make one, which a validated
/// config never produces).
pub struct SrmState {
    monitor: Option<SrmMonitor>,
}

impl SrmState {
    /// A monitor for `weights`.
    pub fn new(weights: &[f64]) -> Self {
        SrmState {
            monitor: SrmMonitor::new(weights).ok(),
        }
    }

    /// Continues the Bayes factor across a thinning of the sample.
    pub fn thin(&mut self, before: &[u64], after: &[u64]) {
        if let Some(m) = self.monitor.as_mut() {
            if let Err(e) = m.thin(before, after) {
                tracing::debug!(error = %e, "srm thinning");
            }
        }
    }

    /// Checks the current counts.
    pub fn observe(&mut self, counts: &[u64], variants: &[String]) -> SrmView {
        let report = self.monitor.as_mut().and_then(|m| m.observe(counts).ok());
        match report {
            Some(r) => SrmView {
                p_value: r.p_value,
                chi2_p_value: r.chi2_p_value,
                alarm: r.alarm,
                e_value: r.log_bayes_factor.exp().min(f64::MAX),
                threshold: ALARM_THRESHOLD,
                variants: variants.to_vec(),
                expected: r.expected,
                observed: r.observed,
            },
            None => SrmView {
                p_value: 1.0,
                chi2_p_value: 1.0,
                alarm: false,
                e_value: 1.0,
                threshold: ALARM_THRESHOLD,
                variants: variants.to_vec(),
                expected: vec![0.0; counts.len()],
                observed: counts.to_vec(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_balanced_split_does_not_alarm_and_a_lost_arm_does() {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut s = SrmState::new(&[50.0, 50.0]);
        let v = s.observe(&[1010, 990], &names);
        assert!(!v.alarm && v.p_value > 0.001);
        assert_eq!(v.expected, vec![1000.0, 1000.0]);
        let v = s.observe(&[3010, 990], &names);
        assert!(v.alarm && v.p_value < 0.001 && v.chi2_p_value < 0.001);
        // The running minimum never comes back up.
        let v = s.observe(&[3010, 3000], &names);
        assert!(v.alarm);
    }

    #[test]
    fn users_on_a_zero_weight_arm_alarm_at_once() {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut s = SrmState::new(&[1.0, 0.0]);
        assert!(!s.observe(&[10, 0], &names).alarm);
        assert!(s.observe(&[10, 1], &names).alarm);
    }
}
