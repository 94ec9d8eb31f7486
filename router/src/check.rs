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
