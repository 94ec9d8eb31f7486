//! Guardrails carried out (`[[guardrails]]`): a metric, an arm and an allowance; when the whole
//! confidence sequence of arm − control lies beyond `max_degradation` in the worse
//! direction ([`abgate_stats::guardrail::trips`]), the guardrail trips — once per
//! phase — and either rolls the arm back or only alerts.
//!
//! A rollback sets the arm's weight to 0 at once (a new config version in memory, so a
//! new phase) and writes the same change to the config file with `toml_edit`
//! (comments and layout kept; a temp file in the same directory, then a rename). Both
//! happen under the router's edit lock, which the reload watcher also takes, and the
//! version applied carries the new file's hash, so the watcher sees nothing new and
//! never applies twice or restores the old weight. When the config path is a symlink
//! (a Kubernetes ConfigMap mount: the file belongs to the kubelet and is read-only),
//! the file is not edited: the rollback is applied in memory only, and the audit line
//! and log say so; the next ConfigMap change then wins. Every trip appends one JSON
//! line to `experiment.audit_log`, logs a warning and counts
//! `abgate_guardrail_trips_total{guardrail}`.

use std::io::Write;
use std::path::Path;

use crate::clock::unix_now;
use crate::config::edit::{edit_file, edit_weights};
use crate::config::{config_hash, GuardrailAction, GuardrailConfig, RouterConfig};
use crate::error::RouterError;
use crate::experiment::{ComparisonView, FileChange, Trip, TripOrigin};
use crate::state::Router;

/// One tick: refresh the gauges, then carry out every guardrail beyond its allowance
/// (once per phase). In cluster mode only the gauges: guardrails act on the cluster's
/// figures (`control::cluster`), never on one replica's share.
pub fn tick(router: &Router) {
    let active = router.active();
    if active.config.analysis.cluster.is_some() {
        router.experiment.refresh(&active.phase, &active.config);
        return;
    }
    let (phase, tripped) = router.experiment.tripped(&active.phase, &active.config);
    for (guardrail, comparison) in tripped {
        let record = trip(
            router,
            guardrail,
            Some(&comparison),
            phase,
            TripOrigin::Local,
        );
        router.experiment.remember(record);
    }
}

fn weights_of(config: &RouterConfig) -> Vec<(String, f64)> {
    config
        .arms
        .iter()
        .map(|a| (a.name.clone(), a.weight))
        .collect()
}

/// Records a trip of `guardrail` on `comparison` (none for a trip another replica
/// recorded and this one applies without fresh figures): rolls back if asked, audits,
/// logs and returns what happened.
pub fn trip(
    router: &Router,
    guardrail: &GuardrailConfig,
    comparison: Option<&ComparisonView>,
    phase: u64,
    origin: TripOrigin,
) -> Trip {
    let before = router.active();
    let old_weights = weights_of(&before.config);
    let phase_id = if before.phase.number == phase {
        before.phase.id.clone()
    } else {
        String::new()
    };
    let family = crate::experiment::guardrail_family(&before.config, guardrail);
    let alpha =
        abgate_stats::family::bonferroni_alpha(abgate_stats::Boundary::default().alpha(), family);
    let (file, note) = match guardrail.action {
        GuardrailAction::Alert => (FileChange::None, None),
        GuardrailAction::Rollback => match rollback(router, &guardrail.arm) {
            Ok(outcome) => outcome,
            Err(e) => (FileChange::None, Some(e)),
        },
    };
    let after = router.active();
    let record = Trip {
        time: unix_now(),
        guardrail: guardrail.name.clone(),
        metric: guardrail.metric,
        arm: guardrail.arm.clone(),
        action: guardrail.action,
        phase,
        phase_id,
        alpha: Some(alpha),
        estimate: comparison.and_then(|c| c.estimate),
        interval: [
            comparison.and_then(|c| c.ci_low),
            comparison.and_then(|c| c.ci_high),
        ],
        max_degradation: guardrail.max_degradation,
        n: comparison.map_or(0, |c| c.n),
        old_weights,
        new_weights: weights_of(&after.config),
        config_version: after.version,
        file,
        note,
        origin,
    };
    tracing::warn!(
        guardrail = %record.guardrail,
        metric = %record.metric,
        arm = %record.arm,
        action = ?record.action,
        phase_id = %record.phase_id,
        estimate = ?record.estimate,
        ci_low = ?record.interval[0],
        ci_high = ?record.interval[1],
        origin = ?record.origin,
        n = record.n,
        config_version = record.config_version,
        file = ?record.file,
        note = record.note.as_deref().unwrap_or(""),
        "guardrail tripped"
    );
    let log = &after.config.analysis.audit_log;
    if let Err(e) = append_audit(log, &record) {
        tracing::error!(file = %log.display(), error = %e, "cannot append to the audit log");
    }
    record
}

/// Appends one JSON line to `path`.
pub fn append_audit(path: &Path, trip: &Trip) -> Result<(), RouterError> {
    append_json(path, trip)
}

/// Appends `record` to `path` as one JSON line (the audit log's writer, for trips
/// and rollout transitions alike).
pub fn append_json<T: serde::Serialize>(path: &Path, record: &T) -> Result<(), RouterError> {
    let io = |e: std::io::Error| RouterError::Io(format!("{}: {e}", path.display()));
    let mut line = serde_json::to_vec(record).map_err(|e| RouterError::Io(e.to_string()))?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    file.write_all(&line).map_err(io)?;
    Ok(())
}

/// Sets `arm`'s weight to 0: in the file when it can, and in memory in any case.
/// Returns how the file was changed and why not, if it was not.
pub fn rollback(router: &Router, arm: &str) -> Result<(FileChange, Option<String>), String> {
    let _edit = router.edit_lock();
    let active = router.active();
    let index = active
        .config
        .arm_index(arm)
        .ok_or_else(|| format!("arm {arm:?} is no longer in the config"))?;
    if active.config.arms[index].weight == 0.0 {
        return Ok((
            FileChange::None,
            Some(format!("arm {arm:?} already has weight 0")),
        ));
    }
    let mut weights = active.config.weights();
    weights[index] = 0.0;
    if crate::assignment::Split::new(&weights).is_none() {
        return Err(format!(
            "cannot roll back {arm:?}: every other arm has weight 0"
        ));
    }
    apply_weights(router, &active, &[(arm.to_string(), 0.0)], |path| {
        edit_file(path, arm)
    })
}

/// Sets the named arms' weights (a rollout's step): in the file when it can, and in
/// memory in any case, like a rollback. Returns how the file was changed and why
/// not, if it was not.
pub fn set_weights(
    router: &Router,
    changes: &[(String, f64)],
) -> Result<(FileChange, Option<String>), String> {
    let _edit = router.edit_lock();
    let active = router.active();
    let mut weights = active.config.weights();
    for (arm, w) in changes {
        let index = active
            .config
            .arm_index(arm)
            .ok_or_else(|| format!("arm {arm:?} is no longer in the config"))?;
        weights[index] = *w;
    }
    if weights == active.config.weights() {
        return Ok((
            FileChange::None,
            Some("the weights are already these".into()),
        ));
    }
    if crate::assignment::Split::new(&weights).is_none() {
        return Err("cannot set these weights: none is positive".into());
    }
    apply_weights(router, &active, changes, |path| edit_weights(path, changes))
}

/// Under the edit lock: rewrites the file with `edit` and applies it if it loads
/// with `changes` in force; otherwise (a symlink, a write error) applies `changes`
/// in memory only, keeping the file's hash so the watcher leaves it be.
fn apply_weights(
    router: &Router,
    active: &crate::state::Active,
    changes: &[(String, f64)],
    edit: impl FnOnce(&Path) -> Result<String, String>,
) -> Result<(FileChange, Option<String>), String> {
    let path = active.config.path.clone();
    let holds = |config: &RouterConfig| {
        changes.iter().all(|(arm, w)| {
            config
                .arm_index(arm)
                .is_some_and(|i| (config.arms[i].weight - w).abs() <= 1e-9)
        })
    };
    let written: Result<(), String> = match edit(&path) {
        Ok(text) => match RouterConfig::parse(&path, &text) {
            Ok(config) if holds(&config) => {
                router.apply(config, config_hash(&text));
                return Ok((FileChange::Written, None));
            }
            Ok(_) => Err("the rewritten file does not set the weights".to_string()),
            Err(e) => Err(format!("the rewritten file does not load: {e}")),
        },
        Err(e) => Err(e),
    };
    let note = written.err();
    let mut config = active.config.clone();
    for (arm, w) in changes {
        if let Some(i) = config.arm_index(arm) {
            config.arms[i].weight = *w;
        }
    }
    router.apply(config, active.hash.clone());
    Ok((FileChange::InMemoryOnly, note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use abgate_stats::Metric;

    use crate::config::edit::tests_support::EXAMPLE as FILE;

    fn router_at(path: &Path) -> std::sync::Arc<Router> {
        let config = RouterConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Router::new(config, config_hash(&text)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_rollback_writes_the_file_and_starts_a_phase_the_watcher_already_has() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("router.toml");
        std::fs::write(&path, FILE).unwrap_or_else(|e| panic!("{e}"));
        let router = router_at(&path);
        assert_eq!(router.active().phase.number, 1);
        let (file, note) = rollback(&router, "candidate_model").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((file, note), (FileChange::Written, None));
        let active = router.active();
        assert_eq!(active.config.weights(), vec![90.0, 0.0]);
        assert_eq!(active.phase.number, 2);
        // The version in force carries the new file's hash: a reload sees no change.
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(active.hash, config_hash(&text));
        // Nothing left to roll back.
        let (file, _) = rollback(&router, "candidate_model").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file, FileChange::None);
        assert_eq!(router.active().version, active.version);
    }

    #[test]
    fn a_rollback_through_a_symlinked_config_is_in_memory_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = crate::config::edit::tests_support::kubelet_layout(dir.path(), FILE);
        let router = router_at(&path);
        let before = router.active().hash.clone();
        let (file, note) = rollback(&router, "candidate_model").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file, FileChange::InMemoryOnly);
        assert!(note.unwrap_or_default().contains("symlink"));
        assert_eq!(router.active().config.weights(), vec![90.0, 0.0]);
        assert_eq!(router.active().hash, before);
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), FILE);
        // The control cannot be the last arm standing at 0.
        assert!(rollback(&router, "best_model").is_err());
    }

    #[test]
    fn audit_lines_are_appended() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit.jsonl");
        let trip = Trip {
            time: 1.0,
            guardrail: "g".into(),
            metric: Metric::ErrorRate,
            arm: "candidate_model".into(),
            action: GuardrailAction::Rollback,
            phase: 1,
            phase_id: "0123456789abcdef".into(),
            alpha: Some(0.05),
            estimate: Some(0.04),
            interval: [Some(0.03), Some(0.05)],
            max_degradation: 0.01,
            n: 1000,
            old_weights: vec![("a".into(), 90.0)],
            new_weights: vec![("a".into(), 0.0)],
            config_version: 2,
            file: FileChange::Written,
            note: None,
            origin: TripOrigin::Local,
        };
        append_audit(&path, &trip).unwrap_or_else(|e| panic!("{e}"));
        append_audit(&path, &trip).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["guardrail"], "g");
        assert_eq!(lines[0]["interval"][1], 0.05);
        assert_eq!(lines[0]["file"], "written");
    }
}
