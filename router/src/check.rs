//! `abgate check`: validates a router config like `nginx -t` and, given the file in
//! force, says which share of users would move between which arms.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::RouterConfig;
use crate::error::RouterError;

/// Share of all users moving from one arm to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// Arm they leave (`None`: an arm that no longer exists... never: every old user
    /// had an arm).
    pub from: String,
    /// Arm they join.
    pub to: String,
    /// Share of all users, 0-1.
    pub share: f64,
}

/// Who moves when `new` replaces `old`. With the same salt, positions stay and only
/// interval boundaries move; with a new salt, positions are independent and users
/// move in proportion to both splits.
pub fn moves(old: &RouterConfig, new: &RouterConfig) -> Vec<Move> {
    let old_iv = old.split().intervals();
    let new_iv = new.split().intervals();
    let mut out = Vec::new();
    for (a, (a0, a1)) in old.arms.iter().zip(&old_iv) {
        for (b, (b0, b1)) in new.arms.iter().zip(&new_iv) {
            if a.name == b.name {
                continue;
            }
            let share = if old.salt == new.salt {
                (a1.min(*b1) - a0.max(*b0)).max(0.0)
            } else {
                (a1 - a0) * (b1 - b0)
            };
            if share > 0.0 {
                out.push(Move {
                    from: a.name.clone(),
                    to: b.name.clone(),
                    share,
                });
            }
        }
    }
    out
}

/// Validates `path` and renders the report; with `active`, adds who would move.
pub fn run(path: &Path, active: Option<&Path>) -> Result<String, RouterError> {
    let config = RouterConfig::load(path)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: syntax is ok, configuration is valid",
        path.display()
    );
    let _ = writeln!(
        out,
        "experiment {:?}, salt {:?}, failover {}",
        config.experiment,
        config.salt,
        if config.failover { "on" } else { "off" }
    );
    if let Some(cluster) = &config.analysis.cluster {
        let _ = writeln!(
            out,
            "cluster mode: verdicts and guardrails on every replica's sums, read from {} every {} ms",
            cluster.prometheus_url,
            cluster.interval.as_millis()
        );
    }
    for (arm, share) in config.arms.iter().zip(config.split().shares()) {
        let _ = writeln!(
            out,
            "  {:<20} weight {:<8} share {:>7.3}%  {}",
            arm.name,
            arm.weight,
            share * 100.0,
            arm.urls.join(" ")
        );
        let addrs = crate::endpoint::resolve_now(&arm.authorities);
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  {:<20} endpoints now: {}",
            "",
            if shown.is_empty() {
                "none resolved".to_string()
            } else {
                shown.join(", ")
            }
        );
    }
    let shares = config.split().shares();
    for shadow in &config.shadows {
        let arm_share = config.arm_index(&shadow.of).map_or(0.0, |i| shares[i]);
        let _ = writeln!(
            out,
            "  shadow {:<13} mirrors {:.3}% of {}'s users ({:.3}% of all users), tolerance {}, at most {} in flight  {}",
            shadow.name,
            shadow.sample * 100.0,
            shadow.of,
            shadow.sample * arm_share * 100.0,
            shadow.tolerance,
            shadow.max_in_flight,
            shadow.url
        );
    }
    if let Some(plan) = rollout_plan(&config) {
        out.push_str(&plan);
    }
    if let Some(active_path) = active {
        let old = RouterConfig::load(active_path)?;
        let moves = moves(&old, &config);
        let total: f64 = moves.iter().map(|m| m.share).sum();
        let _ = writeln!(
            out,
            "compared with {}{}:",
            active_path.display(),
            if old.salt == config.salt {
                " (same salt: only users at moved boundaries change arm)"
            } else {
                " (salt changes: every user is reshuffled)"
            }
        );
        for m in &moves {
            let _ = writeln!(
                out,
                "  {:>7.3}% of users move {} -> {}",
                m.share * 100.0,
                m.from,
                m.to
            );
        }
        let _ = writeln!(
            out,
            "  {:>7.3}% of users keep their arm",
            (1.0 - total) * 100.0
        );
    }
    Ok(out)
}

/// The planned steps of `[rollout]`, with who moves at each (the hash rule: the
/// candidate's interval only grows, so its users never leave it).
fn rollout_plan(config: &RouterConfig) -> Option<String> {
    let r = config.rollout.as_ref()?;
    let index = config.arm_index(&r.arm)?;
    let mut out = String::new();
    let steps: Vec<String> = r.steps.iter().map(|p| format!("{p}%")).collect();
    let _ = writeln!(
        out,
        "rollout of {}: steps {}; each step holds at least {} s and {} candidate users; then {}",
        r.arm,
        steps.join(" -> "),
        r.min_step.as_secs(),
        r.min_users_per_step,
        match r.on_complete {
            crate::config::OnComplete::Promote => "promote (the candidate takes every user)",
            crate::config::OnComplete::Hold => "hold the last step",
        }
    );
    let gates = r.gate_configs(&config.guardrails);
    if gates.is_empty() {
        let _ = writeln!(
            out,
            "  warning: no gates: the ramp advances on time, users and SRM alone"
        );
    }
    for g in gates {
        let _ = writeln!(
            out,
            "  gate {:<16} {} shown not worse than {}{} (non-inferiority); worse beyond it rolls back",
            g.name,
            g.metric,
            if g.metric.higher_is_better() { "-" } else { "+" },
            g.max_degradation
        );
    }
    if let Some(max) = r.max_exposed_users {
        let _ = writeln!(
            out,
            "  exposure: no step is taken at which more than {max} users could see a candidate worse than a gate's allowance before the gate could catch it"
        );
    }
    if config.analysis.cluster.is_some() {
        let _ = writeln!(
            out,
            "  cluster mode: every replica takes the step the cluster's records in Prometheus say, each step scheduled {:.0} s ahead so all change their weights together (a rollout run again needs a new experiment.name)",
            crate::control::rollout::lead(config)
        );
    }
    if !config.analysis.statistics {
        let _ = writeln!(
            out,
            "  warning: experiment.statistics is off: no step can be shown not worse"
        );
    }
    let mut previous = config.clone();
    let mut plan: Vec<f64> = r.steps.clone();
    if r.on_complete == crate::config::OnComplete::Promote && plan.last() != Some(&100.0) {
        plan.push(100.0);
    }
    for (i, percent) in plan.iter().enumerate() {
        let mut next = previous.clone();
        let weights = crate::config::step_weights(&previous.weights(), index, *percent);
        for (arm, w) in next.arms.iter_mut().zip(weights) {
            arm.weight = w;
        }
        let moved = moves(&previous, &next);
        let label = if i < r.steps.len() {
            format!("step {}", i + 1)
        } else {
            "promote".to_string()
        };
        let who: Vec<String> = moved
            .iter()
            .map(|m| format!("{:.3}% {} -> {}", m.share * 100.0, m.from, m.to))
            .collect();
        let _ = writeln!(
            out,
            "  {label:<8} {:>7.3}% of users on {}; moving: {}",
            percent,
            r.arm,
            if who.is_empty() {
                "nobody".to_string()
            } else {
                who.join(", ")
            }
        );
        previous = next;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(salt: &str, weights: &[(&str, f64)]) -> RouterConfig {
        let mut text = format!("listen = \"127.0.0.1:8080\"\n[experiment]\nsalt = \"{salt}\"\n");
        for (i, (name, w)) in weights.iter().enumerate() {
            text.push_str(&format!(
                "[[arms]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{}\"\nweight = {w}\n",
                6001 + i
            ));
        }
        RouterConfig::parse(Path::new("r.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_rollout_plan_lists_each_step_and_only_moves_users_to_the_candidate() {
        let mut text = "listen = \"127.0.0.1:8080\"\n[experiment]\nsalt = \"s\"\n[[arms]]\nname = \"best_model\"\nurl = \"http://127.0.0.1:6001\"\nweight = 100\n[[arms]]\nname = \"candidate_model\"\nurl = \"http://127.0.0.1:6002\"\nweight = 0\n".to_string();
        text.push_str("[[guardrails]]\nname = \"errors\"\nmetric = \"error_rate\"\narm = \"candidate_model\"\nmax_degradation = 0.01\naction = \"rollback\"\n[rollout]\narm = \"candidate_model\"\nsteps = [1, 5, 25, 50, 100]\nmin_step_seconds = 60\nmax_exposed_users = 2500\n");
        let c = RouterConfig::parse(Path::new("r.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let plan = rollout_plan(&c).unwrap_or_default();
        assert!(
            plan.contains("steps 1% -> 5% -> 25% -> 50% -> 100%"),
            "{plan}"
        );
        assert!(plan.contains("gate errors"), "{plan}");
        assert!(plan.contains("more than 2500 users could see"), "{plan}");
        let zero = text.replace("max_exposed_users = 2500", "max_exposed_users = 0");
        let e = RouterConfig::parse(Path::new("r.toml"), &zero)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("rollout.max_exposed_users"), "{e}");
        assert!(plan.contains("step 1     1.000% of users on candidate_model; moving: 1.000% best_model -> candidate_model"), "{plan}");
        assert!(plan.contains("step 3    25.000% of users on candidate_model; moving: 20.000% best_model -> candidate_model"), "{plan}");
        assert!(plan.contains("step 5   100.000% of users on candidate_model; moving: 50.000% best_model -> candidate_model"), "{plan}");
        assert!(!plan.contains("candidate_model -> "), "{plan}");
        assert!(!plan.contains("promote  "), "{plan}");
    }

    #[test]
    fn ramping_the_candidate_moves_only_best_users() {
        let old = config("s", &[("best_model", 90.0), ("candidate_model", 10.0)]);
        let new = config("s", &[("best_model", 50.0), ("candidate_model", 50.0)]);
        let m = moves(&old, &new);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].from.as_str(), m[0].to.as_str()),
            ("best_model", "candidate_model")
        );
        assert!((m[0].share - 0.4).abs() < 1e-12);
    }

    #[test]
    fn a_new_salt_reshuffles_in_proportion_to_both_splits() {
        let old = config("a", &[("best_model", 50.0), ("candidate_model", 50.0)]);
        let new = config("b", &[("best_model", 50.0), ("candidate_model", 50.0)]);
        let total: f64 = moves(&old, &new).iter().map(|m| m.share).sum();
        assert!((total - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_report_previews_which_arm_a_shadow_mirrors_and_how_many_users() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("r.toml");
        let text = "listen = \"127.0.0.1:8080\"\n[experiment]\nsalt = \"s\"\n[[arms]]\nname = \"best_model\"\nurl = \"http://127.0.0.1:6001\"\nweight = 80\n[[arms]]\nname = \"candidate_model\"\nurl = \"http://127.0.0.1:6002\"\nweight = 20\n[[shadows]]\nname = \"shadow_model\"\nurl = \"http://127.0.0.1:6003\"\nof = \"best_model\"\nsample = 0.25\n";
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        let report = run(&p, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.contains(
                "shadow shadow_model  mirrors 25.000% of best_model's users (20.000% of all users)"
            ),
            "{report}"
        );
    }

    #[test]
    fn the_report_names_the_file_and_the_moves() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, w: f64| {
            let p = dir.path().join(name);
            let text = format!("listen = \"127.0.0.1:8080\"\n[experiment]\nsalt = \"s\"\n[[arms]]\nname = \"best_model\"\nurl = \"http://127.0.0.1:6001\"\nweight = {}\n[[arms]]\nname = \"candidate_model\"\nurl = \"http://127.0.0.1:6002\"\nweight = {w}\n", 100.0 - w);
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
            p
        };
        let active = write("active.toml", 10.0);
        let new = write("new.toml", 20.0);
        let report = run(&new, Some(&active)).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.contains("configuration is valid"), "{report}");
        assert!(
            report.contains("10.000% of users move best_model -> candidate_model"),
            "{report}"
        );
        assert!(
            report.contains("90.000% of users keep their arm"),
            "{report}"
        );
    }
}
