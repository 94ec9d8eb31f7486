//! The run's report: built from the merged statistics, serialized as the JSON
//! report (`--json`), rendered as text for stdout, and judged for the exit code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::config::{Config, Mode};
use super::srm::goodness_of_fit;
use super::stats::{LatencySummary, TaskStats};

/// The JSON report written by `--json` (shape documented in `benches/README.md`,
/// section "loadgen JSON"). Latencies are microseconds; in open-loop mode they are
/// measured from each request's intended send time, in closed-loop mode from the
/// actual send. Non-finite numbers (an infinite chi2) serialize as `null`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `"closed"` or `"open"`.
    pub mode: &'static str,
    /// `--target` as given.
    pub target: String,
    /// Configured duration, seconds.
    pub duration_s: f64,
    /// Wall time of the load phase (open loop: includes draining the queue), seconds.
    pub elapsed_s: f64,
    /// Connections used.
    pub connections: usize,
    /// Runtime worker threads.
    pub threads: usize,
    /// Size of the user pool.
    pub users: u32,
    /// Configured share of feedback requests.
    pub feedback_ratio: f64,
    /// Open loop: the configured rate (req/s); `null` in closed loop.
    pub requested_rate: Option<f64>,
    /// Answered requests (any status) per second of `elapsed_s`.
    pub achieved_rate: f64,
    /// Request counts.
    pub totals: Totals,
    /// Failed requests by kind.
    pub errors: ErrorCounts,
    /// Successful predictions per arm (from `X-Variant`), keyed by arm name.
    pub arms: BTreeMap<String, ArmReport>,
    /// Successful feedback requests.
    pub feedback: CountLatency,
    /// Every answered request (both routes, any status).
    pub overall: CountLatency,
    /// Sample-ratio-mismatch test; `null` without `--weights` or without data.
    pub srm: Option<SrmReport>,
    /// Distinct users that got a successful prediction.
    pub users_seen: u64,
    /// Users seen on more than one arm (0 when assignment is sticky).
    pub sticky_violations: u64,
    /// Open loop: requests sent more than 1 ms after their intended time.
    pub late_sends: u64,
    /// Open loop: how far actual sends trailed intended times; `null` in closed loop.
    pub send_lag_us: Option<LatencySummary>,
}

/// Request counts.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Requests attempted (answered, failed or timed out).
    pub requests: u64,
    /// Requests that got an HTTP answer (any status).
    pub responses: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 2xx predictions.
    pub predictions: u64,
    /// 2xx feedback answers.
    pub feedback: u64,
    /// Failed requests: non-2xx + connection errors + timeouts.
    pub errors: u64,
    /// Open loop: scheduled requests never sent (queue not drained in time).
    pub unsent: u64,
    /// 2xx predictions without an `X-Variant` header.
    pub missing_variant: u64,
}

/// Failed requests by kind.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCounts {
    /// Non-2xx answers by status code (keys are the code as a string).
    pub by_status: BTreeMap<String, u64>,
    /// Connect failures and connections broken mid-request.
    pub connection: u64,
    /// No full answer within `--timeout`.
    pub timeouts: u64,
}

/// One arm's successful predictions.
#[derive(Debug, Clone, Serialize)]
pub struct ArmReport {
    /// 2xx predictions served by the arm.
    pub count: u64,
    /// `count` over all 2xx predictions.
    pub share: f64,
    /// Users seen on this arm only.
    pub users: u64,
    /// Latency percentiles, µs.
    pub latency_us: LatencySummary,
}

/// A count and its latency percentiles.
#[derive(Debug, Clone, Serialize)]
pub struct CountLatency {
    /// Requests.
    pub count: u64,
    /// Latency percentiles, µs.
    pub latency_us: LatencySummary,
}

/// Sample ratio mismatch: chi-square goodness of fit of the observed split against
/// `--weights`. The headline test counts **users** (each user once, on the arm it
/// was seen on), because the user is the unit of assignment; `requests` repeats the
/// test on per-request prediction counts, for reference only (see README).
#[derive(Debug, Clone, Serialize)]
pub struct SrmReport {
    /// `"users"`: the unit of the headline test.
    pub unit: &'static str,
    /// Normalized `--weights`, keyed by arm.
    pub expected_shares: BTreeMap<String, f64>,
    /// Users per arm (users seen on one arm only).
    pub observed: BTreeMap<String, u64>,
    /// Chi-square statistic (`null` if infinite: an unconfigured arm served users).
    pub chi2: f64,
    /// Degrees of freedom.
    pub df: u32,
    /// P-value of `chi2`.
    pub p_value: f64,
    /// `--srm-alpha`.
    pub alpha: f64,
    /// `p_value < alpha`.
    pub mismatch: bool,
    /// The same test on per-request prediction counts.
    pub requests: SrmTest,
}

/// One chi-square test.
#[derive(Debug, Clone, Serialize)]
pub struct SrmTest {
    /// Counts per arm.
    pub observed: BTreeMap<String, u64>,
    /// Chi-square statistic.
    pub chi2: f64,
    /// Degrees of freedom.
    pub df: u32,
    /// P-value.
    pub p_value: f64,
}

impl Report {
    /// Builds the report of a run configured by `cfg` that produced `stats` in
    /// `elapsed`.
    pub fn build(cfg: &Config, stats: &TaskStats, elapsed: Duration) -> Report {
        let predictions = stats.prediction_count();
        let feedback = stats.feedback.len();
        let status_errors = stats.status_error_count();
        let responses = stats.overall.len();
        let users_per_arm = stats.users_per_arm();
        let arms = stats
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let count = a.latency.len();
                (
                    a.name.clone(),
                    ArmReport {
                        count,
                        share: ratio(count, predictions),
                        users: users_per_arm.get(i).copied().unwrap_or(0),
                        latency_us: LatencySummary::from_histogram(&a.latency),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        let srm = cfg
            .weights
            .as_ref()
            .and_then(|w| srm_report(&w.shares(), &arms, cfg.srm_alpha));
        let secs = elapsed.as_secs_f64();
        Report {
            mode: cfg.mode.as_str(),
            target: cfg.target.clone(),
            duration_s: cfg.duration.as_secs_f64(),
            elapsed_s: secs,
            connections: cfg.connections,
            threads: cfg.worker_threads(),
            users: cfg.users,
            feedback_ratio: cfg.feedback_ratio,
            requested_rate: cfg.rate.filter(|_| cfg.mode == Mode::Open),
            achieved_rate: if secs > 0.0 {
                responses as f64 / secs
            } else {
                0.0
            },
            totals: Totals {
                requests: stats.requests,
                responses,
                ok: responses - status_errors,
                predictions,
                feedback,
                errors: stats.errors(),
                unsent: stats.unsent,
                missing_variant: stats.missing_variant,
            },
            errors: ErrorCounts {
                by_status: stats
                    .status_errors
                    .iter()
                    .map(|(s, n)| (s.to_string(), *n))
                    .collect(),
                connection: stats.connection_errors,
                timeouts: stats.timeouts,
            },
            arms,
            feedback: CountLatency {
                count: feedback,
                latency_us: LatencySummary::from_histogram(&stats.feedback),
            },
            overall: CountLatency {
                count: responses,
                latency_us: LatencySummary::from_histogram(&stats.overall),
            },
            srm,
            users_seen: stats.user_arms.len() as u64,
            sticky_violations: stats.sticky_violations(),
            late_sends: stats.late_sends,
            send_lag_us: (cfg.mode == Mode::Open)
                .then(|| LatencySummary::from_histogram(&stats.send_lag)),
        }
    }

    /// Reasons the run failed: with `fail_on_errors`, any failed request or
    /// stickiness violation; always, an SRM p-value below alpha.
    pub fn failures(&self, fail_on_errors: bool) -> Vec<String> {
        let mut out = Vec::new();
        if fail_on_errors && self.totals.errors > 0 {
            out.push(format!("{} requests failed", self.totals.errors));
        }
        if fail_on_errors && self.sticky_violations > 0 {
            out.push(format!(
                "{} users were served by more than one arm",
                self.sticky_violations
            ));
        }
        if let Some(srm) = self.srm.as_ref().filter(|s| s.mismatch) {
            out.push(format!(
                "sample ratio mismatch: p = {:.3e} < {}",
                srm.p_value, srm.alpha
            ));
        }
        out
    }

    /// The human-readable report printed on stdout.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let rate = self
            .requested_rate
            .map(|r| format!(" at {r:.0} req/s"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "loadgen: {} loop{rate}, {} connections, {} users, {:.1} s against {}",
            self.mode, self.connections, self.users, self.duration_s, self.target
        );
        let t = &self.totals;
        let _ = writeln!(
            s,
            "requests  {} in {:.2} s = {:.0} req/s answered ({} predictions, {} feedback ok)",
            t.requests, self.elapsed_s, self.achieved_rate, t.predictions, t.feedback
        );
        let by_status = if self.errors.by_status.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .by_status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "errors    {} (by status: {by_status}; connection {}; timeouts {})",
            t.errors, self.errors.connection, self.errors.timeouts
        );
        if self.mode == "open" {
            let lag = self.send_lag_us.unwrap_or_default();
            let _ = writeln!(
                s,
                "pacing    {} sent > 1 ms late, {} unsent; send lag p50 {} µs, p99 {} µs, max {} µs",
                self.late_sends, t.unsent, lag.p50, lag.p99, lag.max
            );
        }
        if t.missing_variant > 0 {
            let _ = writeln!(
                s,
                "warning   {} predictions had no X-Variant",
                t.missing_variant
            );
        }
        let _ = writeln!(
            s,
            "\nlatency (µs{})",
            if self.mode == "open" {
                ", from intended send time"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "{:<18} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "", "count", "share", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let mut row = |name: &str, count: u64, share: Option<f64>, l: &LatencySummary| {
            let share = share
                .map(|x| format!("{:.2}%", x * 100.0))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{name:<18} {count:>9} {share:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9.1}",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            );
        };
        for (name, a) in &self.arms {
            row(name, a.count, Some(a.share), &a.latency_us);
        }
        if self.feedback.count > 0 {
            row(
                "(feedback)",
                self.feedback.count,
                None,
                &self.feedback.latency_us,
            );
        }
        row(
            "(all answers)",
            self.overall.count,
            None,
            &self.overall.latency_us,
        );
        let _ = writeln!(
            s,
            "\nstickiness: {} users seen, {} on more than one arm",
            self.users_seen, self.sticky_violations
        );
        if let Some(srm) = &self.srm {
            let shares = srm
                .expected_shares
                .iter()
                .map(|(k, v)| format!("{k} {:.2}%", v * 100.0))
                .collect::<Vec<_>>()
                .join(", ");
            let users = srm
                .observed
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "SRM vs {shares}\n  users:    {users}; chi2 {:.3}, df {}, p = {:.4}{}",
                srm.chi2,
                srm.df,
                srm.p_value,
                if srm.mismatch { "  MISMATCH" } else { "" }
            );
            let _ = writeln!(
                s,
                "  requests: chi2 {:.3}, df {}, p = {:.4} (reference only: requests of one user are not independent)",
                srm.requests.chi2, srm.requests.df, srm.requests.p_value
            );
        }
        s
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Builds the SRM section: configured arms in order, then any arm that served but
/// was not configured (expected share 0).
fn srm_report(
    shares: &[(String, f64)],
    arms: &BTreeMap<String, ArmReport>,
    alpha: f64,
) -> Option<SrmReport> {
    let mut names: Vec<String> = shares.iter().map(|(n, _)| n.clone()).collect();
    let mut expected: Vec<f64> = shares.iter().map(|(_, s)| *s).collect();
    for name in arms.keys() {
        if !names.contains(name) {
            names.push(name.clone());
            expected.push(0.0);
        }
    }
    let users: Vec<u64> = names
        .iter()
        .map(|n| arms.get(n).map_or(0, |a| a.users))
        .collect();
    let requests: Vec<u64> = names
        .iter()
        .map(|n| arms.get(n).map_or(0, |a| a.count))
        .collect();
    let by_user = goodness_of_fit(&users, &expected)?;
    let by_request = goodness_of_fit(&requests, &expected)?;
    let keyed = |v: &[u64]| names.iter().cloned().zip(v.iter().copied()).collect();
    Some(SrmReport {
        unit: "users",
        expected_shares: names
            .iter()
            .cloned()
            .zip(expected.iter().copied())
            .collect(),
        observed: keyed(&users),
        chi2: by_user.chi2,
        df: by_user.df,
        p_value: by_user.p_value,
        alpha,
        mismatch: by_user.p_value < alpha,
        requests: SrmTest {
            observed: keyed(&requests),
            chi2: by_request.chi2,
            df: by_request.df,
            p_value: by_request.p_value,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn stats() -> TaskStats {
        let mut s = TaskStats::new().unwrap_or_else(|e| panic!("{e}"));
        for u in 0..1000u32 {
            let arm = if u % 10 == 0 {
                "candidate_model"
            } else {
                "best_model"
            };
            let d = Duration::from_micros(100 + u64::from(u));
            s.record_prediction(arm, u, d)
                .unwrap_or_else(|e| panic!("{e}"));
            crate::loadgen::stats::record(&mut s.overall, d);
            s.requests += 1;
        }
        s.requests += 3;
        s.status_errors.insert(503, 2);
        crate::loadgen::stats::record(&mut s.overall, Duration::from_micros(50));
        crate::loadgen::stats::record(&mut s.overall, Duration::from_micros(50));
        s.timeouts = 1;
        s
    }

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["loadgen"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn report_json_shape() {
        let cfg = config(&[
            "--mode",
            "open",
            "--rate",
            "500",
            "--weights",
            "best_model=90,candidate_model=10",
            "--threads",
            "2",
        ]);
        let r = Report::build(&cfg, &stats(), Duration::from_secs(2));
        let v = serde_json::to_value(&r).unwrap_or_else(|e| panic!("{e}"));
        for key in [
            "mode",
            "target",
            "duration_s",
            "elapsed_s",
            "connections",
            "threads",
            "users",
            "feedback_ratio",
            "requested_rate",
            "achieved_rate",
            "totals",
            "errors",
            "arms",
            "feedback",
            "overall",
            "srm",
            "users_seen",
            "sticky_violations",
            "late_sends",
            "send_lag_us",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["mode"], "open");
        assert_eq!(v["requested_rate"], 500.0);
        assert_eq!(v["achieved_rate"], 501.0);
        assert_eq!(v["totals"]["requests"], 1003);
        assert_eq!(v["totals"]["responses"], 1002);
        assert_eq!(v["totals"]["ok"], 1000);
        assert_eq!(v["totals"]["predictions"], 1000);
        assert_eq!(v["totals"]["errors"], 3);
        assert_eq!(v["errors"]["by_status"]["503"], 2);
        assert_eq!(v["errors"]["timeouts"], 1);
        let best = &v["arms"]["best_model"];
        assert_eq!(best["count"], 900);
        assert_eq!(best["share"], 0.9);
        assert_eq!(best["users"], 900);
        for p in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(best["latency_us"][p].is_number(), "arm latency {p}");
            assert!(v["overall"]["latency_us"][p].is_number(), "overall {p}");
        }
        let srm = &v["srm"];
        assert_eq!(srm["unit"], "users");
        assert_eq!(srm["expected_shares"]["candidate_model"], 0.1);
        assert_eq!(srm["observed"]["candidate_model"], 100);
        assert_eq!(srm["chi2"], 0.0);
        assert_eq!(srm["p_value"], 1.0);
        assert_eq!(srm["mismatch"], false);
        assert!(srm["requests"]["p_value"].is_number());
        assert_eq!(v["sticky_violations"], 0);
        assert_eq!(v["users_seen"], 1000);
        assert!(v["send_lag_us"]["p99"].is_number());

        assert_eq!(r.failures(false), Vec::<String>::new());
        assert_eq!(r.failures(true).len(), 1);
        let text = r.render_text();
        assert!(text.contains("best_model"));
        assert!(text.contains("SRM"));
    }

    #[test]
    fn closed_loop_report_has_nulls_and_srm_failure() {
        let cfg = config(&["--weights", "best_model=50,candidate_model=50"]);
        let r = Report::build(&cfg, &stats(), Duration::from_secs(1));
        let v = serde_json::to_value(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["mode"], "closed");
        assert!(v["requested_rate"].is_null());
        assert!(v["send_lag_us"].is_null());
        assert_eq!(v["srm"]["mismatch"], true);
        assert_eq!(r.failures(false).len(), 1);
        let no_weights = Report::build(&config(&[]), &stats(), Duration::from_secs(1));
        assert!(no_weights.srm.is_none());
    }
}
