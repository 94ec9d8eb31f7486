//! `[rollout]` and `[admin]`, validated: which candidate is ramped, through which
//! steps (percent of users), how long and on how many users each step holds, which
//! `[[guardrails]]` gate the next step and what happens at the end; and the Bearer
//! token of the control routes (`POST /api/rollout/{pause,resume,abort}`).
//!
//! Errors name the key path and never echo a value (a token may be mistyped into
//! any key).

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::{ArmConfig, GuardrailConfig};

/// `[rollout]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    arm: String,
    steps: Vec<f64>,
    #[serde(default = "default_min_step_seconds")]
    min_step_seconds: u64,
    #[serde(default)]
    min_users_per_step: Option<u64>,
    #[serde(default)]
    gates: Option<Vec<String>>,
    #[serde(default = "default_on_complete")]
    on_complete: String,
    #[serde(default)]
    max_exposed_users: Option<u64>,
}

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    token: String,
}

fn default_min_step_seconds() -> u64 {
    300
}

fn default_on_complete() -> String {
    "promote".into()
}

/// Most steps a rollout may have.
pub const MAX_STEPS: usize = 20;

/// What a rollout does once its last step is shown not worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnComplete {
    /// The candidate takes every user (every other arm's weight becomes 0).
    Promote,
    /// Stay on the last step's weights.
    Hold,
}

/// A validated `[rollout]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutConfig {
    /// The candidate arm ramped (never the control).
    pub arm: String,
    /// The candidate's percent of users at each step, increasing, each in (0, 100].
    pub steps: Vec<f64>,
    /// Least time on a step before the next decision.
    #[serde(rename = "min_step_seconds", serialize_with = "as_secs")]
    pub min_step: Duration,
    /// Distinct users the candidate must have seen on a step (default
    /// `experiment.min_samples`).
    pub min_users_per_step: u64,
    /// Names of the `[[guardrails]]` that gate each step (default: every guardrail on
    /// the candidate arm).
    pub gates: Vec<String>,
    /// `promote` or `hold`.
    pub on_complete: OnComplete,
    /// Never move to a step at which more than this many users would see a
    /// candidate worse by a gate's allowance before the gate could catch it (an
    /// estimate from the step's interval width and traffic; `None`: no limit).
    pub max_exposed_users: Option<u64>,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl RolloutConfig {
    /// The guardrails that gate the steps, in `gates` order.
    pub fn gate_configs<'g>(&self, guardrails: &'g [GuardrailConfig]) -> Vec<&'g GuardrailConfig> {
        self.gates
            .iter()
            .filter_map(|name| guardrails.iter().find(|g| &g.name == name))
            .collect()
    }
}

/// `[admin]`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdminConfig {
    /// Bearer token of the control routes; `None`: those routes answer 403.
    pub token: Option<String>,
}

/// Validates `[admin]`; errors are (key path, reason).
pub(super) fn validate_admin(raw: RawAdmin) -> Result<AdminConfig, (String, String)> {
    if raw.token.is_empty() {
        return Ok(AdminConfig { token: None });
    }
    if raw.token.len() < 8
        || raw
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err((
            "admin.token".into(),
            "must be at least 8 characters without spaces (the value is not shown)".into(),
        ));
    }
    Ok(AdminConfig {
        token: Some(raw.token),
    })
}

/// Validates `[rollout]` against the arms and guardrails; errors are (key path,
/// reason), never with the offending value.
pub(super) fn validate_rollout(
    raw: RawRollout,
    arms: &[ArmConfig],
    guardrails: &[GuardrailConfig],
    min_samples: u64,
) -> Result<RolloutConfig, (String, String)> {
    let err = |key: &str, reason: &str| Err((format!("rollout.{key}"), reason.to_string()));
    let names: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
    match arms.iter().position(|a| a.name == raw.arm) {
        None => {
            return Err((
                "rollout.arm".into(),
                format!("is not an arm; arms are {}", names.join(", ")),
            ))
        }
        Some(0) => {
            return err(
                "arm",
                "is the control (the first arm); a rollout ramps another arm against it",
            )
        }
        Some(_) => {}
    }
    if raw.steps.is_empty() {
        return err("steps", "give at least one step, e.g. [1, 5, 25, 50, 100]");
    }
    if raw.steps.len() > MAX_STEPS {
        return err("steps", &format!("at most {MAX_STEPS} steps"));
    }
    for (i, s) in raw.steps.iter().enumerate() {
        if !(s.is_finite() && *s > 0.0 && *s <= 100.0) {
            return Err((
                format!("rollout.steps[{i}]"),
                "must be a percent of users above 0 and at most 100".into(),
            ));
        }
        if i > 0 && *s <= raw.steps[i - 1] {
            return Err((
                format!("rollout.steps[{i}]"),
                format!("must be greater than steps[{}]: steps only increase", i - 1),
            ));
        }
    }
    let min_users_per_step = raw.min_users_per_step.unwrap_or(min_samples);
    if min_users_per_step == 0 {
        return err("min_users_per_step", "must be at least 1");
    }
    let gates = match raw.gates {
        None => guardrails
            .iter()
            .filter(|g| g.arm == raw.arm)
            .map(|g| g.name.clone())
            .collect(),
        Some(gates) => {
            for (i, name) in gates.iter().enumerate() {
                let key = format!("rollout.gates[{i}]");
                let Some(g) = guardrails.iter().find(|g| &g.name == name) else {
                    let known: Vec<&str> = guardrails.iter().map(|g| g.name.as_str()).collect();
                    return Err((
                        key,
                        if known.is_empty() {
                            "is not a guardrail; there are no [[guardrails]]".to_string()
                        } else {
                            format!("is not a guardrail; guardrails are {}", known.join(", "))
                        },
                    ));
                };
                if g.arm != raw.arm {
                    return Err((
                        key,
                        format!(
                            "guardrail {:?} watches another arm than rollout.arm",
                            g.name
                        ),
                    ));
                }
                if gates[..i].contains(name) {
                    return Err((key, "is listed twice".into()));
                }
            }
            gates
        }
    };
    let on_complete = match raw.on_complete.as_str() {
        "promote" => OnComplete::Promote,
        "hold" => OnComplete::Hold,
        _ => return err("on_complete", "must be \"promote\" or \"hold\""),
    };
    if raw.max_exposed_users == Some(0) {
        return err(
            "max_exposed_users",
            "must be at least 1 (leave it out for no limit)",
        );
    }
    Ok(RolloutConfig {
        arm: raw.arm,
        steps: raw.steps,
        min_step: Duration::from_secs(raw.min_step_seconds),
        min_users_per_step,
        gates,
        on_complete,
        max_exposed_users: raw.max_exposed_users,
    })
}

/// The weights that give arm `candidate` `percent`% of users: the other arms share the
/// rest in proportion to their `weights` now (all equally if they are all 0), and the
/// weights add up to 100. At 100% every other arm gets 0.
pub fn step_weights(weights: &[f64], candidate: usize, percent: f64) -> Vec<f64> {
    let others: f64 = weights
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != candidate)
        .map(|(_, w)| *w)
        .sum();
    let n_others = weights.len().saturating_sub(1).max(1) as f64;
    let rest = (100.0 - percent).max(0.0);
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == candidate {
                percent
            } else if others > 0.0 {
                round(w / others * rest)
            } else {
                round(rest / n_others)
            }
        })
        .collect()
}

/// Rounds to 1e-9 so weights written to the file stay short.
fn round(w: f64) -> f64 {
    (w * 1e9).round() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouterConfig;
    use std::path::Path;

    const BASE: &str = "listen = \"127.0.0.1:8080\"\n[experiment]\nsalt = \"s\"\nmin_samples = 50\n[[arms]]\nname = \"best_model\"\nurl = \"http://127.0.0.1:6001\"\nweight = 100\n[[arms]]\nname = \"candidate_model\"\nurl = \"http://127.0.0.1:6002\"\nweight = 0\n[[guardrails]]\nname = \"errors\"\nmetric = \"error_rate\"\narm = \"candidate_model\"\nmax_degradation = 0.01\naction = \"rollback\"\n[[guardrails]]\nname = \"latency\"\nmetric = \"latency_mean_seconds\"\narm = \"candidate_model\"\nmax_degradation = 0.005\naction = \"alert\"\n";
    const ROLLOUT: &str = "[rollout]\narm = \"candidate_model\"\nsteps = [1, 5, 25, 50, 100]\n";

    fn parse(text: &str) -> Result<RouterConfig, String> {
        RouterConfig::parse(Path::new("router.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_rollout_loads_with_its_defaults() {
        let c = parse(&format!("{BASE}{ROLLOUT}")).unwrap_or_else(|e| panic!("{e}"));
        let r = c.rollout.unwrap_or_else(|| panic!("no rollout"));
        assert_eq!(r.steps, vec![1.0, 5.0, 25.0, 50.0, 100.0]);
        assert_eq!(r.min_step, Duration::from_secs(300));
        assert_eq!(r.min_users_per_step, 50);
        assert_eq!(r.gates, ["errors", "latency"]);
        assert_eq!(r.on_complete, OnComplete::Promote);
        assert_eq!(c.admin.token, None);
        let c = parse(&format!(
            "{BASE}{ROLLOUT}min_step_seconds = 1\nmin_users_per_step = 7\ngates = [\"latency\"]\non_complete = \"hold\"\n[admin]\ntoken = \"0123456789abcdef\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let r = c.rollout.unwrap_or_else(|| panic!("no rollout"));
        assert_eq!(
            (r.min_step.as_secs(), r.min_users_per_step, r.gates.len()),
            (1, 7, 1)
        );
        assert_eq!(r.on_complete, OnComplete::Hold);
        assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef"));
        assert!(parse(BASE)
            .unwrap_or_else(|e| panic!("{e}"))
            .rollout
            .is_none());
    }

    #[test]
    fn bad_rollouts_are_rejected_with_key_paths_and_no_values() {
        for (extra, key, needle) in [
            ("arm = \"nobody\"\n", "rollout.arm", "not an arm"),
            ("arm = \"best_model\"\n", "rollout.arm", "control"),
            ("steps = []\n", "rollout.steps", "at least one"),
            (
                "steps = [5, 5]\n",
                "rollout.steps[1]",
                "greater than steps[0]",
            ),
            ("steps = [50, 10]\n", "rollout.steps[1]", "only increase"),
            ("steps = [0, 10]\n", "rollout.steps[0]", "above 0"),
            ("steps = [10, 101]\n", "rollout.steps[1]", "at most 100"),
            (
                "min_users_per_step = 0\n",
                "rollout.min_users_per_step",
                "at least 1",
            ),
            (
                "gates = [\"nope\"]\n",
                "rollout.gates[0]",
                "not a guardrail",
            ),
            (
                "gates = [\"errors\", \"errors\"]\n",
                "rollout.gates[1]",
                "twice",
            ),
            (
                "on_complete = \"party\"\n",
                "rollout.on_complete",
                "promote",
            ),
        ] {
            let key_of = |line: &str| line.split(" = ").next().unwrap_or("").to_string();
            let mut lines: Vec<String> = ROLLOUT.lines().map(str::to_string).collect();
            match lines.iter().position(|l| key_of(l) == key_of(extra)) {
                Some(i) => lines[i] = extra.trim_end().to_string(),
                None => lines.push(extra.trim_end().to_string()),
            }
            let text = format!("{BASE}{}\n", lines.join("\n"));
            let err = parse(&text).unwrap_err();
            assert!(
                err.starts_with(&format!("router.toml: key `{key}`")),
                "{extra}: {err}"
            );
            assert!(err.contains(needle), "{extra}: {err}");
            assert!(!err.contains("party") && !err.contains("nope"), "{err}");
        }
        let err = parse(&format!("{BASE}{ROLLOUT}stesp = 1\n")).unwrap_err();
        assert!(err.contains("stesp"), "{err}");
        // A token is never echoed, however it is wrong.
        for token in ["short", "has space in it", "4815162342"] {
            let quoted = if token.chars().all(|c| c.is_ascii_digit()) {
                token.to_string()
            } else {
                format!("\"{token}\"")
            };
            let err = parse(&format!("{BASE}[admin]\ntoken = {quoted}\n")).unwrap_err();
            assert!(err.contains("admin.token"), "{err}");
            assert!(!err.contains(token), "{err}");
        }
    }

    #[test]
    fn the_shipped_rollout_example_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/rollout/router.toml");
        let c = RouterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let r = c.rollout.unwrap_or_else(|| panic!("no rollout"));
        assert_eq!(r.steps, vec![1.0, 5.0, 25.0, 50.0, 100.0]);
        assert_eq!(r.gates, ["candidate_errors", "candidate_latency"]);
        assert_eq!((r.min_step.as_secs(), r.min_users_per_step), (300, 500));
    }

    #[test]
    fn a_gate_must_watch_the_rollout_arm() {
        let text = format!("{BASE}{ROLLOUT}").replace(
            "[[arms]]\nname = \"candidate_model\"",
            "[[arms]]\nname = \"other\"\nurl = \"http://127.0.0.1:6003\"\nweight = 0\n[[arms]]\nname = \"candidate_model\"",
        );
        let text = text.replacen(
            "[[guardrails]]\nname = \"errors\"\nmetric = \"error_rate\"\narm = \"candidate_model\"",
            "[[guardrails]]\nname = \"errors\"\nmetric = \"error_rate\"\narm = \"other\"",
            1,
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.rollout.map(|r| r.gates),
            Some(vec!["latency".to_string()])
        );
        let err = parse(&format!("{text}gates = [\"errors\"]\n")).unwrap_err();
        assert!(
            err.contains("rollout.gates[0]") && err.contains("another arm"),
            "{err}"
        );
    }

    #[test]
    fn step_weights_scale_the_others_and_add_up_to_100() {
        assert_eq!(step_weights(&[90.0, 10.0], 1, 5.0), vec![95.0, 5.0]);
        assert_eq!(step_weights(&[95.0, 5.0], 1, 100.0), vec![0.0, 100.0]);
        assert_eq!(
            step_weights(&[60.0, 20.0, 0.0], 2, 20.0),
            vec![60.0, 20.0, 20.0]
        );
        assert_eq!(step_weights(&[0.0, 10.0], 1, 50.0), vec![50.0, 50.0]);
    }
}
