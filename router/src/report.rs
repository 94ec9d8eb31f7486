//! `abgate report`: the experiment at a glance, rendered from `GET /api/experiment`
//! as text (a table for a person), JSON (the API's answer) or Markdown (for a CI
//! comment). SRM verdict first, then per arm (by the arm the hash assigned: intention
//! to treat) users, requests, crossover, error rate, p95, MAE and rating, then every
//! comparison by user with its interval and verdicts. The exit status is 0, or
//! [`EXIT_ATTENTION`] when the SRM test alarms, some comparison is `worse` at the
//! family's level (one error budget: α over every metric × candidate arm), or an arm's
//! crossover exceeds [`CROSSOVER_ATTENTION`], or the router's progressive rollout was
//! rolled back.
//!
//! `abgate report --prometheus URL` ([`from_prometheus`]) renders the cluster's view
//! without any router: the current phase's sums over every replica, read from the
//! Prometheus that scrapes them, through the same comparison code the routers use.

use abgate_stats::{Metric, Verdict};
use std::fmt::Write;

use crate::cluster;
use crate::error::RouterError;
use crate::experiment::phase::Phase;
use crate::experiment::source::ClusterFigures;
use crate::experiment::{ArmFigures, ComparisonView, ExperimentView, SourceKind};

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
    let mut report = render(&view, format);
    add_rollout(&client, url, format, &mut report).await;
    Ok(report)
}

/// The cluster's view of phase `phase_id` (default: the current one, the phase with
/// the freshest samples) from the Prometheus at `url`, with `min_samples` per arm
/// before a verdict (the routers' `experiment.min_samples`), and the guardrails any
/// replica tripped in it.
pub async fn cluster_view(
    url: &str,
    phase_id: Option<&str>,
    min_samples: u64,
) -> Result<(ExperimentView, Vec<String>), RouterError> {
    let client = abgate_common::client::HttpClient::new(std::time::Duration::from_secs(10));
    let io = |e: String| RouterError::Io(format!("{url}: {e}"));
    let phases = cluster::phases(&client, url)
        .await
        .map_err(|e| io(e.to_string()))?;
    let seen = match phase_id {
        Some(id) => phases.iter().find(|p| p.phase_id == id),
        None => phases.first(),
    };
    let Some(seen) = seen else {
        return Err(io(match phase_id {
            Some(id) => format!("no router exports phase {id:?} now"),
            None => "no router exports an experiment phase: is Prometheus scraping the routers?"
                .to_string(),
        }));
    };
    let read = cluster::read(&client, url, &seen.phase_id)
        .await
        .map_err(|e| io(e.to_string()))?;
    let (variants, weights): (Vec<String>, Vec<f64>) = read.weights.iter().cloned().unzip();
    let phase = Phase::new(seen.number, 0.0, "", variants, weights, 1);
    let figures = ClusterFigures {
        phase_id: seen.phase_id.clone(),
        arms: read.arms.clone(),
        srm_evalue: read.srm_evalue,
        srm_evalue_max: read.srm_evalue.unwrap_or(1.0),
        users: read.users.clone(),
    };
    let cells = figures.cells(&phase.variants, &[]);
    let mut summary = phase.summary_of(&cells, min_samples, None);
    summary.srm = figures.srm(summary.srm);
    let view = ExperimentView {
        experiment: String::new(),
        phase: seen.number,
        phase_id: seen.phase_id.clone(),
        unit: "user".into(),
        buckets: abgate_stats::BUCKETS,
        memory_per_arm_bytes: 0,
        started_at: 0.0,
        config_version: 0,
        min_samples,
        arms: summary.arms,
        srm: summary.srm,
        comparisons: summary.comparisons,
        family: summary.family,
        feedback_outside_phase: summary.feedback_outside_phase,
        guardrails: Vec::new(),
        history: Vec::new(),
        source: SourceKind::Prometheus,
        replicas: read.replicas,
        source_up: true,
        reason: None,
        source_freshest: read.freshest,
        cluster_users: read.users.clone(),
    };
    Ok((view, read.tripped.into_iter().collect()))
}

/// `abgate report --prometheus URL`: [`cluster_view`] rendered in `format`.
pub async fn from_prometheus(
    url: &str,
    phase_id: Option<&str>,
    min_samples: u64,
    format: Format,
) -> Result<Report, RouterError> {
    let (view, tripped) = cluster_view(url, phase_id, min_samples).await?;
    let mut report = render(&view, format);
    if format != Format::Json {
        let _ = writeln!(
            report.output,
            "\nGuardrails tripped in this phase by any replica: {}",
            if tripped.is_empty() {
                "none".to_string()
            } else {
                tripped.join(", ")
            }
        );
    }
    Ok(report)
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
    let source = match view.source {
        SourceKind::Local => "this router's own data".to_string(),
        SourceKind::Prometheus if view.source_up => {
            format!(
                "the cluster's, {} replica(s) through Prometheus",
                view.replicas
            )
        }
        SourceKind::Prometheus => format!(
            "this router's own data: the cluster's is not available ({})",
            view.reason.as_deref().unwrap_or("no reason given")
        ),
    };
    let title = format!(
        "Experiment {:?}, phase {} (id {}, config version {}), min_samples {}; figures: {source}",
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

/// `GET /api/rollout` as the report reads it: the fields of
/// `control::rollout::RolloutView` it shows (unknown ones are ignored, missing ones
/// default, so an older or newer router still reads).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct RolloutSummary {
    /// Whether `[rollout]` is configured.
    pub configured: bool,
    /// The candidate arm.
    pub arm: Option<String>,
    /// Where the rollout stands (`None`: the config changed under the request).
    pub state: Option<crate::rollout::RolloutState>,
    /// Current step index into `steps`.
    pub step: Option<usize>,
    /// The steps, percent of users.
    pub steps: Vec<f64>,
    /// The candidate's percent of users now.
    pub percent: Option<f64>,
    /// Seconds on the current step.
    pub seconds_in_step: Option<f64>,
    /// The rollout's settings.
    pub config: Option<RolloutSettings>,
    /// Weights in force.
    pub weights: Vec<RolloutWeight>,
    /// What the next decision waits for, one reason each.
    pub waiting_for: Vec<String>,
    /// The current step's evidence (running or paused).
    pub evidence: Option<RolloutEvidence>,
    /// Transitions, oldest first.
    pub history: Vec<crate::rollout::Transition>,
    /// The next step's exposure estimate.
    pub next_exposure: Option<RolloutExposure>,
    /// Cluster mode: the records read from Prometheus.
    pub cluster: Option<RolloutCluster>,
}

/// `next_exposure` of `/api/rollout`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct RolloutExposure {
    /// The next step's percent.
    pub percent: f64,
    /// Estimated users (`None`: no gate could catch it there).
    pub users: Option<f64>,
    /// The gate the estimate comes from.
    pub gate: String,
    /// `max_exposed_users`.
    pub max: Option<u64>,
}

/// `cluster` of `/api/rollout`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct RolloutCluster {
    /// Every replica's record, the superseding one first.
    pub positions: Vec<RolloutPosition>,
}

/// One record of `cluster.positions`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct RolloutPosition {
    /// Revision.
    pub revision: u64,
    /// State, snake_case.
    pub state: String,
    /// Step index.
    pub step: usize,
    /// Replicas exporting it now.
    pub replicas: usize,
}

/// The settings of `[rollout]` the report shows.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct RolloutSettings {
    /// Least seconds on a step.
    pub min_step_seconds: u64,
    /// Candidate users a step needs.
    pub min_users_per_step: u64,
    /// `promote` or `hold`.
    pub on_complete: String,
}

/// One arm's weight in force.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct RolloutWeight {
    /// Arm name.
    pub arm: String,
    /// Configured weight.
    pub weight: f64,
    /// Share of users, percent.
    pub percent: f64,
}

/// The step's evidence the report shows.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct RolloutEvidence {
    /// Candidate users on the step.
    pub candidate_users: u64,
    /// The SRM test alarms.
    pub srm_alarm: bool,
}

/// Transitions the report lists (the latest).
const ROLLOUT_HISTORY_SHOWN: usize = 5;

/// Appends the "Rollout" section to a text or Markdown `report` when the router at
/// `url` has a `[rollout]` (`GET /api/rollout`). A router without the API (404) or
/// without a rollout adds nothing; one that cannot be read adds a line saying so.
/// The JSON format stays `/api/experiment`'s answer alone. A rollout that was
/// rolled back needs attention: the exit status becomes [`EXIT_ATTENTION`] (in every
/// format).
async fn add_rollout(
    client: &abgate_common::client::HttpClient,
    url: &str,
    format: Format,
    report: &mut Report,
) {
    let target = format!("{}/api/rollout", url.trim_end_matches('/'));
    let read = match client.get(&target).await {
        Ok(reply) if reply.status == http::StatusCode::NOT_FOUND => return,
        Ok(reply) if reply.status.is_success() => {
            serde_json::from_str::<RolloutSummary>(&reply.text())
                .map_err(|e| format!("not a rollout view: {e}"))
        }
        Ok(reply) => Err(format!("answered {}", reply.status)),
        Err(e) => Err(e.to_string()),
    };
    match read {
        Ok(view) => {
            let rolled_back = view.state == Some(crate::rollout::RolloutState::RolledBack);
            if rolled_back {
                report.exit_code = EXIT_ATTENTION;
            }
            if format == Format::Json {
                return;
            }
            report
                .output
                .push_str(&rollout_section(&view, format == Format::Markdown));
            if rolled_back {
                let _ = writeln!(
                    report.output,
                    "\nATTENTION: the rollout of {} was rolled back (exit status {EXIT_ATTENTION})",
                    view.arm.as_deref().unwrap_or("the candidate")
                );
            }
        }
        Err(_) if format == Format::Json => {}
        Err(e) => {
            let _ = write!(report.output, "\nRollout: {target}: {e}\n");
        }
    }
}

/// Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(unix: f64) -> String {
    if !unix.is_finite() || unix < 0.0 {
        return "-".into();
    }
    let secs = unix as u64;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A percent of users, as short as exact: `1%`, `12.5%`.
fn users_percent(p: f64) -> String {
    let rounded = (p * 100.0).round() / 100.0;
    format!("{rounded}%")
}

/// Seconds in words: `45 s`, `4 min 5 s`, `2.5 h`.
fn seconds(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 if s % 60 == 0 => format!("{} min", s / 60),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// The "Rollout" section of the text (or Markdown) report: state and step, the
/// ladder of steps, weights, what the next decision waits for and the latest
/// transitions. Empty when no rollout is configured.
pub fn rollout_section(view: &RolloutSummary, markdown: bool) -> String {
    use crate::rollout::RolloutState;
    let mut out = String::new();
    if !view.configured {
        return out;
    }
    let arm = view.arm.as_deref().unwrap_or("the candidate");
    let state = view.state;
    let step = view.step.unwrap_or(0);
    let n = view.steps.len();
    let at = |i: usize| view.steps.get(i).map_or("-".into(), |p| users_percent(*p));
    let now = view.percent.map_or("-".into(), users_percent);
    let settings = view.config.clone().unwrap_or_default();
    let (bold, item) = if markdown { ("**", "- ") } else { ("", "  ") };
    if markdown {
        let _ = writeln!(out, "\n### Rollout\n");
    } else {
        let _ = writeln!(out, "\nRollout");
    }
    let headline = match state {
        None => format!("{arm}: the config changed under the request; ask again"),
        Some(RolloutState::Pending) => {
            format!(
                "{arm}: PENDING, not started (the first tick puts it on {})",
                at(0)
            )
        }
        Some(RolloutState::RolledBack) => format!(
            "{arm}: ROLLED BACK at step {} of {n} ({}); now {now} of users",
            step + 1,
            at(step)
        ),
        Some(RolloutState::Completed) => format!(
            "{arm}: COMPLETED, step {} of {n}; now {now} of users ({})",
            step + 1,
            if settings.on_complete == "hold" {
                "held on the last step"
            } else {
                "promoted"
            }
        ),
        Some(s) => format!(
            "{arm}: {}, step {} of {n}, {now} of users",
            s.as_str().to_uppercase(),
            step + 1
        ),
    };
    let _ = writeln!(out, "{bold}{headline}{bold}");
    let ladder: Vec<String> = view
        .steps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = users_percent(*p);
            match state {
                Some(RolloutState::Pending) | None => p,
                _ if i < step || state == Some(RolloutState::Completed) => format!("{p} done"),
                Some(RolloutState::RolledBack) if i == step => format!("[{p} rolled back]"),
                _ if i == step => format!("[{p}]"),
                _ => p,
            }
        })
        .collect();
    let _ = writeln!(out, "\nSteps: {}", ladder.join(" -> "));
    if let Some(s) = view.seconds_in_step {
        let _ = write!(
            out,
            "{}On this step {} (holds at least {})",
            if markdown { "\n" } else { "" },
            seconds(s),
            seconds(settings.min_step_seconds as f64)
        );
        if let Some(e) = &view.evidence {
            let _ = write!(
                out,
                ", {} candidate users ({} needed){}",
                e.candidate_users,
                settings.min_users_per_step,
                if e.srm_alarm { ", SRM ALARM" } else { "" }
            );
        }
        let _ = writeln!(out);
    }
    let weights: Vec<String> = view
        .weights
        .iter()
        .map(|w| format!("{} {} ({})", w.arm, w.weight, users_percent(w.percent)))
        .collect();
    let _ = writeln!(
        out,
        "{}Weights: {}",
        if markdown { "\n" } else { "" },
        weights.join(", ")
    );
    if let Some(x) = &view.next_exposure {
        let _ = writeln!(
            out,
            "{}Exposure at {}: {} could see a candidate worse than {}'s allowance before it is caught{}",
            if markdown { "\n" } else { "" },
            users_percent(x.percent),
            x.users
                .map_or("every user".into(), |u| format!("about {u:.0} users")),
            x.gate,
            x.max.map_or(String::new(), |m| format!(" (max_exposed_users {m})"))
        );
    }
    if let Some(best) = view.cluster.as_ref().and_then(|c| c.positions.first()) {
        let _ = writeln!(
            out,
            "{}Cluster: revision {} ({}, step {}) on {} replica(s) now",
            if markdown { "\n" } else { "" },
            best.revision,
            best.state,
            best.step + 1,
            best.replicas
        );
    }
    let _ = write!(out, "\nNext decision waits for:");
    if view.waiting_for.is_empty() {
        let _ = writeln!(
            out,
            " {}",
            if state.is_some_and(RolloutState::is_final) {
                "nothing, the rollout is over"
            } else {
                "nothing"
            }
        );
    } else {
        let _ = writeln!(out, "{}", if markdown { "\n" } else { "" });
        for w in &view.waiting_for {
            let _ = writeln!(out, "{item}{w}");
        }
    }
    if !view.history.is_empty() {
        let shown = view.history.len().min(ROLLOUT_HISTORY_SHOWN);
        let _ = writeln!(
            out,
            "\nHistory (the last {shown} of {}, oldest first):{}",
            view.history.len(),
            if markdown { "\n" } else { "" }
        );
        for t in &view.history[view.history.len() - shown..] {
            let users = if t.candidate_users > 0 {
                format!(" ({} candidate users)", t.candidate_users)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{item}{}  {} -> {} at {}{users}: {} [{}]",
                utc(t.time),
                t.from.as_str(),
                t.to.as_str(),
                users_percent(t.percent),
                t.reason,
                t.by
            );
        }
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
            source: crate::experiment::SourceKind::Local,
            replicas: 1,
            source_up: true,
            reason: None,
            source_freshest: None,
            cluster_users: Default::default(),
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

#[cfg(test)]
mod rollout_tests {
    use super::*;
    use crate::rollout::{RolloutState, Transition};

    fn transition(
        time: f64,
        from: RolloutState,
        to: RolloutState,
        step: usize,
        percent: f64,
        users: u64,
        reason: &str,
    ) -> Transition {
        Transition {
            time,
            event: "rollout".into(),
            arm: "candidate_model".into(),
            from,
            to,
            step,
            percent,
            reason: reason.into(),
            by: "controller".into(),
            weights: Vec::new(),
            phase_id: String::new(),
            candidate_users: users,
            file: "written".into(),
            note: None,
        }
    }

    /// What `/api/rollout` answers on step 2 of 5 (field names from
    /// `control::rollout::RolloutView`; extra ones are ignored).
    fn running() -> RolloutSummary {
        let json = serde_json::json!({
            "configured": true, "arm": "candidate_model", "state": "running", "step": 1,
            "steps": [1.0, 5.0, 25.0, 50.0, 100.0], "percent": 5.000000000000001,
            "step_started_at": 1_764_930_000.0, "seconds_in_step": 160.4,
            "config": {"arm": "candidate_model", "steps": [1.0, 5.0, 25.0, 50.0, 100.0],
                       "min_step_seconds": 300, "min_users_per_step": 500, "gates": ["candidate_errors"],
                       "on_complete": "promote"},
            "weights": [{"arm": "best_model", "weight": 95.0, "percent": 95.0},
                        {"arm": "candidate_model", "weight": 5.0, "percent": 5.000000000000001}],
            "waiting_for": ["hold 140 s more", "candidate users 312/500",
                            "latency not yet shown within +5.0 ms (candidate_latency, interval [-0.4 ms, +6.1 ms])"],
            "evidence": {"phase_id": "ab12", "candidate_users": 312, "srm_alarm": false, "srm_p_value": 1.0, "gates": []},
            "state_file": "/tmp/router.toml.rollout.json",
            "next_exposure": {"percent": 25.0, "users": 2140.0, "gate": "candidate_errors", "max": 5000},
            "cluster": {"rollout": "ab", "read_at": 1.0, "positions": [
                {"revision": 2, "state": "running", "step": 1, "step_started_at": 1.0, "started_at": 1.0, "replicas": 3}]},
            "history": [
                serde_json::to_value(transition(1_764_929_000.0, RolloutState::Pending, RolloutState::Running, 0, 1.0, 0, "started: candidate_model gets 1% of users")).unwrap_or_default(),
                serde_json::to_value(transition(1_764_930_000.0, RolloutState::Running, RolloutState::Running, 1, 5.0, 540, "step 1% shown not worse; advancing to 5%")).unwrap_or_default(),
            ]
        });
        serde_json::from_value(json).unwrap_or_default()
    }

    #[test]
    fn the_rollout_section_shows_state_step_weights_next_decision_and_history() {
        let text = rollout_section(&running(), false);
        for needle in [
            "\nRollout\n",
            "candidate_model: RUNNING, step 2 of 5, 5% of users",
            "Steps: 1% done -> [5%] -> 25% -> 50% -> 100%",
            "On this step 2 min 40 s (holds at least 5 min), 312 candidate users (500 needed)",
            "Weights: best_model 95 (95%), candidate_model 5 (5%)",
            "Exposure at 25%: about 2140 users could see a candidate worse than candidate_errors's allowance before it is caught (max_exposed_users 5000)",
            "Cluster: revision 2 (running, step 2) on 3 replica(s) now",
            "Next decision waits for:\n  hold 140 s more\n  candidate users 312/500\n  latency not yet shown within +5.0 ms",
            "History (the last 2 of 2, oldest first):",
            "2025-12-05 10:03:20 UTC  pending -> running at 1%: started: candidate_model gets 1% of users [controller]",
            "running -> running at 5% (540 candidate users): step 1% shown not worse",
        ] {
            assert!(text.contains(needle), "lacks {needle:?}:\n{text}");
        }
        let md = rollout_section(&running(), true);
        assert!(
            md.contains("### Rollout")
                && md.contains("**candidate_model: RUNNING")
                && md.contains("\n- candidate users 312/500\n"),
            "{md}"
        );
    }

    #[test]
    fn a_finished_or_absent_rollout_says_so() {
        let mut done = running();
        done.state = Some(RolloutState::RolledBack);
        done.step = Some(0);
        done.percent = Some(0.0);
        done.waiting_for.clear();
        let text = rollout_section(&done, false);
        assert!(
            text.contains("candidate_model: ROLLED BACK at step 1 of 5 (1%); now 0% of users"),
            "{text}"
        );
        assert!(
            text.contains("Steps: [1% rolled back] -> 5% -> 25%"),
            "{text}"
        );
        assert!(
            text.contains("Next decision waits for: nothing, the rollout is over"),
            "{text}"
        );
        done.state = Some(RolloutState::Completed);
        done.step = Some(4);
        done.percent = Some(100.0);
        let text = rollout_section(&done, false);
        assert!(
            text.contains("COMPLETED, step 5 of 5; now 100% of users (promoted)"),
            "{text}"
        );
        assert!(text.contains("100% done"), "{text}");
        // Ten transitions: the last five are listed.
        done.history = (0..10)
            .map(|i| {
                transition(
                    f64::from(i),
                    RolloutState::Running,
                    RolloutState::Running,
                    0,
                    1.0,
                    0,
                    &format!("t{i}"),
                )
            })
            .collect();
        let text = rollout_section(&done, false);
        assert!(
            text.contains("the last 5 of 10")
                && text.contains(": t9 [")
                && !text.contains(": t4 ["),
            "{text}"
        );
        assert!(text.contains("1970-01-01 00:00:09 UTC"), "{text}");
        // No [rollout]: nothing at all.
        let none: RolloutSummary =
            serde_json::from_str(r#"{"configured": false, "weights": []}"#).unwrap_or_default();
        assert_eq!(rollout_section(&none, false), "");
    }

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_468_645.0), "2026-12-05 11:04:05 UTC");
        assert_eq!(utc(f64::NAN), "-");
    }
}
