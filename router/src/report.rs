//! `abgate report`: the experiment at a glance, rendered from `GET /api/experiment`
//! as text (a table for a person), JSON (the API's answer) or Markdown (for a CI
//! comment). SRM verdict first, then per arm (by the arm the hash assigned: intention
//! to treat) users, requests, crossover, error rate, p95, MAE and rating, then every
//! comparison by user with its interval and verdicts. The exit status is 0, or
//! [`EXIT_ATTENTION`] when the SRM test alarms, some comparison is `worse` at the
//! family's level (one error budget: α over every metric × candidate arm), or an arm's
//! crossover exceeds [`CROSSOVER_ATTENTION`].

use abgate_stats::{Metric, Verdict};
use std::fmt::Write;

use crate::error::RouterError;
use crate::experiment::{ArmFigures, ComparisonView, ExperimentView};

/// Exit status when the SRM test alarms, a comparison is `worse` (family level) or
/// the crossover is high.
pub const EXIT_ATTENTION: u8 = 3;

/// Crossover share (an arm's assigned requests served by another arm) above which the
/// comparisons no longer measure the arm: the report asks for attention once the arm
/// has `min_samples` requests.
pub const CROSSOVER_ATTENTION: f64 = 0.05;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned plain-text tables.
    Text,
    /// The `/api/experiment` JSON, pretty-printed.
    Json,
    /// Markdown tables.
    Markdown,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            other => Err(format!(
                "unknown format {other:?}; expected text, json or markdown"
            )),
        }
    }
}

/// A rendered report and its exit status.
pub struct Report {
    /// What to print.
    pub output: String,
    /// 0, or [`EXIT_ATTENTION`].
    pub exit_code: u8,
}

/// Whether the experiment needs attention: SRM alarm, some comparison `worse` at the
/// family's level, or a crossover above [`CROSSOVER_ATTENTION`].
pub fn needs_attention(view: &ExperimentView) -> bool {
    view.srm.alarm || family_worse(view).next().is_some() || crossed(view).next().is_some()
}

/// The comparisons `worse` at the family's level.
fn family_worse(view: &ExperimentView) -> impl Iterator<Item = &ComparisonView> {
    view.comparisons
        .iter()
        .filter(|c| c.family_verdict == Verdict::Worse)
}

/// Arms (with `min_samples` requests) whose crossover is above [`CROSSOVER_ATTENTION`].
fn crossed(view: &ExperimentView) -> impl Iterator<Item = &ArmFigures> {
    view.arms.iter().filter(move |a| {
        a.requests.n >= view.min_samples
            && a.crossover.share.is_some_and(|s| s > CROSSOVER_ATTENTION)
    })
}

/// Fetches `{url}/api/experiment` and renders it.
pub async fn fetch(url: &str, format: Format) -> Result<Report, RouterError> {
    let client = abgate_common::client::HttpClient::new(std::time::Duration::from_secs(10));
    let target = format!("{}/api/experiment", url.trim_end_matches('/'));
    let reply = client
        .get(&target)
        .await
        .map_err(|e| RouterError::Io(format!("{target}: {e}")))?;
    if !reply.status.is_success() {
        return Err(RouterError::Io(format!(
            "{target} answered {}: {}",
            reply.status,
            reply.text()
        )));
    }
    let text = reply.text();
    let view: ExperimentView = serde_json::from_str(&text)
        .map_err(|e| RouterError::Io(format!("{target}: not an experiment view: {e}")))?;
    Ok(render(&view, format))
}

/// Renders `view` in `format`.
pub fn render(view: &ExperimentView, format: Format) -> Report {
    let output = match format {
        Format::Json => serde_json::to_string_pretty(view).unwrap_or_default() + "\n",
        Format::Text => table(view, false),
        Format::Markdown => table(view, true),
    };
    Report {
        output,
        exit_code: if needs_attention(view) {
            EXIT_ATTENTION
        } else {
            0
        },
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.filter(|x| x.is_finite()).map_or_else(|| "-".into(), f)
}

fn percent(v: Option<f64>) -> String {
    opt(v, |x| format!("{:.2}%", x * 100.0))
}

/// A figure of `metric` in its unit: points for rates, ms for latency.
fn in_unit(metric: Metric, v: Option<f64>, signed: bool) -> String {
    opt(v, |x| {
        let (x, unit, digits) = match metric {
            Metric::ErrorRate | Metric::AccurateShare => (x * 100.0, " pp", 2),
            Metric::LatencyMeanSeconds => (x * 1000.0, " ms", 3),
            Metric::AbsoluteError | Metric::Rating => (x, "", 4),
        };
        if signed {
            format!("{x:+.digits$}{unit}")
        } else {
            format!("{x:.digits$}{unit}")
        }
    })
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Better => "BETTER",
        Verdict::Worse => "WORSE",
        Verdict::NoDifferenceYet => "no difference yet",
        Verdict::NotEnoughData => "not enough data",
    }
}

/// Rows rendered as an aligned text table or a Markdown table.
fn grid(out: &mut String, header: &[&str], rows: &[Vec<String>], markdown: bool) {
    if markdown {
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(
            out,
            "|{}|",
            header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for r in rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn table(view: &ExperimentView, markdown: bool) -> String {
    let mut out = String::new();
    let heading = |out: &mut String, text: &str| {
        if markdown {
            let _ = writeln!(out, "\n### {text}\n");
        } else {
            let _ = writeln!(out, "\n{text}");
        }
    };
    let title = format!(
        "Experiment {:?}, phase {} (id {}, config version {}), min_samples {}",
        view.experiment, view.phase, view.phase_id, view.config_version, view.min_samples
    );
    if markdown {
        let _ = writeln!(out, "## {title}");
    } else {
        let _ = writeln!(out, "{title}");
    }
    let srm = &view.srm;
    let observed: Vec<String> = srm
        .variants
        .iter()
        .zip(&srm.observed)
        .zip(&srm.expected)
        .map(|((v, o), e)| format!("{v} {o} (expected {e:.0})"))
        .collect();
    let _ = writeln!(
        out,
        "\n{}SRM: {} — p = {:.3e} (anytime), chi-square p = {:.3e}; sampled users by assigned arm: {}",
        if markdown { "**" } else { "" },
        if srm.alarm {
            "ALARM, the split is broken (p < 0.001): do not trust the comparisons"
        } else {
            "ok"
        },
        srm.p_value,
        srm.chi2_p_value,
        if observed.is_empty() {
            "none".to_string()
        } else {
            observed.join(", ")
        }
    );
    if markdown {
        // Close the bold text opened above.
        out.insert_str(out.len() - 1, "**");
    }
    heading(
        &mut out,
        &format!(
            "Arms (unit of analysis: the {}, {} user-hash buckets; by assigned arm: intention to treat)",
            if view.unit.is_empty() { "user" } else { view.unit.as_str() },
            view.buckets
        ),
    );
    let rows: Vec<Vec<String>> = view
        .arms
        .iter()
        .enumerate()
        .map(|(i, a)| {
            vec![
                if i == 0 {
                    format!("{} (control)", a.variant)
                } else {
                    a.variant.clone()
                },
                format!("{:.1}%", a.share * 100.0),
                format!("{:.0}", a.users.estimate),
                a.requests.n.to_string(),
                percent(a.crossover.share),
                percent(a.requests.error_rate),
                opt(a.latency_seconds.p95, |x| format!("{:.3} ms", x * 1000.0)),
                opt(a.absolute_error.mae, |x| format!("{x:.4}")),
                a.absolute_error.n.to_string(),
                opt(a.rating.mean, |x| format!("{x:.2}")),
                a.rating.n.to_string(),
            ]
        })
        .collect();
    grid(
        &mut out,
        &[
            "arm",
            "share",
            "users",
            "requests",
            "crossover",
            "errors",
            "p95",
            "MAE",
            "n",
            "rating",
            "n",
        ],
        &rows,
        markdown,
    );
    heading(
        &mut out,
        &format!(
            "Comparisons by user (arm − control, 95% anytime-valid confidence sequence; `family`: the verdict at α = {} / {} = {:.4}, what the exit status uses)",
            view.family.alpha, view.family.comparisons, view.family.per_comparison_alpha
        ),
    );
    let rows: Vec<Vec<String>> = view
        .comparisons
        .iter()
        .map(|c| {
            vec![
                c.metric.as_str().to_string(),
                format!("{} vs {}", c.variant, c.control),
                in_unit(c.metric, c.estimate, true),
                format!(
                    "[{}, {}]",
                    in_unit(c.metric, c.ci_low, true),
                    in_unit(c.metric, c.ci_high, true)
                ),
                c.n.to_string(),
                format!("{}/{}", c.buckets_arm, c.buckets_control),
                verdict_word(c.verdict).to_string(),
                verdict_word(c.family_verdict).to_string(),
            ]
        })
        .collect();
    grid(
        &mut out,
        &[
            "metric", "arms", "estimate", "interval", "n", "buckets", "verdict", "family",
        ],
        &rows,
        markdown,
    );
    if !view.guardrails.is_empty() {
        heading(&mut out, "Guardrails");
        let rows: Vec<Vec<String>> = view
            .guardrails
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    format!("{} of {}", g.metric, g.arm),
                    in_unit(g.metric, Some(g.max_degradation), false),
                    format!("{:?}", g.action).to_lowercase(),
                    g.state.clone(),
                    g.trips_total.to_string(),
                ]
            })
            .collect();
        grid(
            &mut out,
            &[
                "guardrail",
                "watches",
                "allowance",
                "action",
                "state",
                "trips",
            ],
            &rows,
            markdown,
        );
    }
    if let Some(last) = view.history.first() {
        let _ = writeln!(
            out,
            "\n{} earlier phase(s) in `history`; the last ended with {} requests.",
            view.history.len(),
            last.arms.iter().map(|a| a.requests.n).sum::<u64>()
        );
    }
    let mut reasons: Vec<String> = Vec::new();
    if view.srm.alarm {
        reasons.push("the SRM test alarms".into());
    }
    for c in family_worse(view) {
        reasons.push(format!("{} is worse on {}", c.variant, c.metric));
    }
    for a in crossed(view) {
        reasons.push(format!(
            "{} of {}'s requests were served by another arm (crossover)",
            percent(a.crossover.share),
            a.variant
        ));
    }
    let late = view.feedback_outside_phase.late;
    if late > 0 {
        let _ = writeln!(
            out,
            "\n{late} feedback(s) on predictions of an earlier phase were not counted."
        );
    }
    if reasons.is_empty() {
        let _ = writeln!(
            out,
            "\nOK: no SRM alarm, no worse comparison, no high crossover (exit status 0)"
        );
    } else {
        let _ = writeln!(
            out,
            "\nATTENTION: {} (exit status {EXIT_ATTENTION})",
            reasons.join("; ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::phase::Phase;

    fn view(candidate_errors: u32) -> ExperimentView {
        let p = Phase::new(
            1,
            0.0,
            "s",
            vec!["best_model".into(), "candidate_model".into()],
            vec![90.0, 10.0],
            100_000,
        );
        for i in 0..2000u32 {
            let latency = 0.001 + f64::from(i % 7) * 1e-4;
            let user = Some(crate::experiment::users::user_hash(i.to_string()));
            let status = if i % 100 == 0 { 500 } else { 200 };
            p.record_response(0, Some(0), user, status, latency);
            // The candidate's users: 20 of them, 100 requests each (an SRM mismatch
            // against 90/10), each failing `candidate_errors` in 100.
            let user = Some(crate::experiment::users::user_hash(format!("c{}", i / 100)));
            let status = if i % 100 < candidate_errors { 500 } else { 200 };
            p.record_response(1, Some(1), user, status, latency);
        }
        let s = p.summary(100, None);
        ExperimentView {
            experiment: "wine".into(),
            phase: s.phase,
            phase_id: s.phase_id,
            unit: "user".into(),
            buckets: abgate_stats::BUCKETS,
            memory_per_arm_bytes: 0,
            started_at: s.started_at,
            config_version: 1,
            min_samples: 100,
            arms: s.arms,
            srm: s.srm,
            comparisons: s.comparisons,
            family: s.family,
            feedback_outside_phase: s.feedback_outside_phase,
            guardrails: Vec::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn the_text_report_names_both_arms_and_every_verdict() {
        let r = render(&view(1), Format::Text);
        assert!(r.output.contains("best_model (control)"), "{}", r.output);
        assert!(r.output.contains("candidate_model vs best_model"));
        assert!(r.output.contains("error_rate") && r.output.contains("not enough data"));
        assert!(r.output.find("SRM").unwrap_or(usize::MAX) < r.output.find("Arms").unwrap_or(0));
    }

    #[test]
    fn a_worse_comparison_or_an_srm_alarm_exits_3() {
        assert_eq!(
            render(&view(10), Format::Markdown).exit_code,
            EXIT_ATTENTION
        );
        // All users on the control while the candidate has 10% of the weight: SRM.
        let r = render(&view(1), Format::Json);
        assert_eq!(r.exit_code, EXIT_ATTENTION, "{}", r.output);
        let mut healthy = view(1);
        healthy.srm.alarm = false;
        let r = render(&healthy, Format::Text);
        assert_eq!(r.exit_code, 0, "{}", r.output);
        let md = render(&healthy, Format::Markdown).output;
        assert!(
            md.contains("| metric |") && md.contains("**SRM: ok"),
            "{md}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&healthy, Format::Json).output).unwrap_or_default();
        assert_eq!(json["arms"][1]["variant"], "candidate_model");
    }

    #[test]
    fn formats_parse() {
        assert_eq!("text".parse::<Format>(), Ok(Format::Text));
        assert_eq!("markdown".parse::<Format>(), Ok(Format::Markdown));
        assert!("html".parse::<Format>().is_err());
    }
}
