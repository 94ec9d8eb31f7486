//! Experiment statistics for abgate: is an arm better or worse than the control, and is
//! the split itself healthy?
//!
//! A pure library — no I/O, no clocks, no threads — so the router, `abgate report` and
//! the tests run the same code. Every figure is computed from sufficient statistics that
//! cost a few additions per observation.
//!
//! # Module tour
//! * [`moments`] — [`Moments`] (count, mean, centred sum of squares; Welford updates,
//!   exact merges) and [`Proportion`] (successes of trials).
//! * [`sequence`] — the 95% anytime-valid confidence sequence for a difference of means
//!   (Howard et al. 2021 normal-mixture boundary with estimated variances, i.e. the
//!   asymptotic confidence sequence of Waudby-Smith et al.), tuned for 1000 effective
//!   pairs, and the fixed-horizon z-interval for reference. The module docs derive the
//!   two-sample version and explain why a fixed interval must not be watched.
//! * [`srm`] — the sequential sample-ratio-mismatch test (Lindon & Malek's
//!   Dirichlet–multinomial Bayes factor, as in Optimizely's `ssrm`) as a state machine,
//!   [`SrmMonitor`], plus the chi-square p-value.
//! * [`metric`] — the closed set of compared metrics and their better direction.
//! * [`verdict`] — `better` / `worse` / `no_difference_yet` / `not_enough_data`.
//! * [`comparison`] — [`compare`]: two arms' moments → estimate, intervals, verdict.
//! * [`arm`] — [`ArmStats`], one arm's accumulators for every metric, and
//!   [`compare_arms`].
//! * [`guardrail`] — the trip rule: the whole sequence lies beyond `max_degradation`.
//! * [`special`] — log-gamma, incomplete gamma, normal tail and quantile.
//!
//! # Example: what the router does
//! ```
//! use abgate_stats::{compare_arms, ArmStats, CompareConfig, SrmMonitor, Verdict};
//!
//! let (mut control, mut candidate) = (ArmStats::new(), ArmStats::new());
//! for i in 0..5000 {
//!     control.record_response(if i % 100 == 0 { 500 } else { 200 }, 0.050); // 1% 5xx
//!     candidate.record_response(if i % 25 == 0 { 503 } else { 200 }, 0.048); // 4% 5xx
//! }
//! for c in compare_arms(&candidate, &control, &CompareConfig::default()) {
//!     // c.metric, c.estimate, c.ci_low, c.ci_high, c.n_arm, c.n_control, c.verdict
//!     if c.metric.as_str() == "error_rate" {
//!         assert_eq!(c.verdict, Verdict::Worse);
//!         assert!(abgate_stats::guardrail::trips(&c, 0.01)); // worse by more than 1 point
//!     }
//! }
//! // Sampled sticky users per served arm against the configured weights, every refresh:
//! let mut srm = SrmMonitor::new(&[50.0, 50.0]).unwrap();
//! let report = srm.observe(&[5030, 4970]).unwrap();
//! assert!(!report.alarm && report.p_value <= 1.0 && report.chi2_p_value > 0.5);
//! ```

#![deny(missing_docs)]

pub mod arm;
pub mod comparison;
pub mod guardrail;
pub mod metric;
pub mod moments;
pub mod sequence;
pub mod special;
pub mod srm;
pub mod verdict;

pub use arm::{compare_arms, ArmStats};
pub use comparison::{compare, CompareConfig, Comparison};
pub use metric::{Metric, UnknownMetric};
pub use moments::{Moments, Proportion};
pub use sequence::{difference, Boundary, DifferenceInterval};
pub use srm::{SrmError, SrmMonitor, SrmReport, ALARM_THRESHOLD};
pub use verdict::{Verdict, DEFAULT_MIN_SAMPLES};
