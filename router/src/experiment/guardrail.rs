//! Guardrails (`[[guardrails]]`): a metric, an arm and an allowance; when the whole
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

use abgate_stats::Metric;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::phase::ComparisonView;
use crate::config::RouterConfig;
use crate::error::RouterError;
use crate::state::{config_hash, unix_now, Router};

/// What a tripped guardrail does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailAction {
    /// Set the arm's weight to 0 (in memory and in the file).
    Rollback,
    /// Only log, audit and count.
    Alert,
}

/// One validated `[[guardrails]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailConfig {
    /// Name (the `guardrail` label).
    pub name: String,
    /// The metric watched (closed set).
    pub metric: Metric,
    /// The arm watched (never the control).
    pub arm: String,
    /// Allowed degradation, absolute, in the metric's unit.
    pub max_degradation: f64,
    /// What a trip does.
    pub action: GuardrailAction,
}

/// How a rollback reached the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChange {
    /// The file was rewritten with the arm's weight at 0.
    Written,
    /// The file was left alone (symlink, write error, or nothing to change); the
    /// change is in memory only.
    InMemoryOnly,
    /// Nothing was changed (an alert, or the weight was already 0).
    None,
}

/// One trip, as audited and shown by `/api/experiment`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Trip {
    /// Unix time of the trip.
    pub time: f64,
    /// Guardrail name.
    pub guardrail: String,
    /// The metric.
    pub metric: Metric,
    /// The arm.
    pub arm: String,
    /// `rollback` or `alert`.
    pub action: GuardrailAction,
    /// The phase it tripped in.
    pub phase: u64,
    /// Arm − control estimate.
    pub estimate: Option<f64>,
    /// The confidence sequence `[low, high]`.
    pub interval: [Option<f64>; 2],
    /// The allowance it went beyond.
    pub max_degradation: f64,
    /// Observations (the smaller arm's).
    pub n: u64,
    /// Weights before, by arm.
    pub old_weights: Vec<(String, f64)>,
    /// Weights after, by arm.
    pub new_weights: Vec<(String, f64)>,
    /// Config version in force after the trip.
    pub config_version: u64,
    /// How the config file was changed.
    pub file: FileChange,
    /// Why the file was not written, if it was not.
    pub note: Option<String>,
}

fn weights_of(config: &RouterConfig) -> Vec<(String, f64)> {
    config
        .arms
        .iter()
        .map(|a| (a.name.clone(), a.weight))
        .collect()
}

/// Records a trip of `guardrail` on `comparison`: rolls back if asked, audits, logs
/// and returns what happened.
pub fn trip(
    router: &Router,
    guardrail: &GuardrailConfig,
    comparison: &ComparisonView,
    phase: u64,
) -> Trip {
    let before = router.active();
    let old_weights = weights_of(&before.config);
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
        estimate: comparison.estimate,
        interval: [comparison.ci_low, comparison.ci_high],
        max_degradation: guardrail.max_degradation,
        n: comparison.n,
        old_weights,
        new_weights: weights_of(&after.config),
        config_version: after.version,
        file,
        note,
    };
    tracing::warn!(
        guardrail = %record.guardrail,
        metric = %record.metric,
        arm = %record.arm,
        action = ?record.action,
        estimate = ?record.estimate,
        ci_low = ?comparison.ci_low,
        ci_high = ?comparison.ci_high,
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
    let io = |e: std::io::Error| RouterError::Io(format!("{}: {e}", path.display()));
    let mut line = serde_json::to_vec(trip).map_err(|e| RouterError::Io(e.to_string()))?;
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
    let path = active.config.path.clone();
    let written: Result<(), String> = match edit_file(&path, arm) {
        Ok(text) => match RouterConfig::parse(&path, &text) {
            Ok(config) if config.arm_index(arm).map(|i| config.arms[i].weight) == Some(0.0) => {
                router.apply(config, config_hash(&text));
                return Ok((FileChange::Written, None));
            }
            Ok(_) => Err("the rewritten file does not set the weight to 0".to_string()),
            Err(e) => Err(format!("the rewritten file does not load: {e}")),
        },
        Err(e) => Err(e),
    };
    let note = written.err();
    // In memory only; the active hash stays the file's, so the watcher leaves it be.
    let mut config = active.config.clone();
    config.arms[index].weight = 0.0;
    router.apply(config, active.hash.clone());
    Ok((FileChange::InMemoryOnly, note))
}

/// Rewrites the config file at `path` with `arm`'s weight set to 0, keeping comments
/// and layout, by a temp file and a rename. Returns the new text.
pub fn edit_file(path: &Path, arm: &str) -> Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{} is a symlink (a ConfigMap-style mount); the file is not edited, the rollback is in memory only",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let new = set_weight_zero(&text, arm)?;
    write_atomically(path, &new, &meta)?;
    Ok(new)
}

/// `text` with `arm`'s `weight` set to 0 (comments, order and layout kept).
pub fn set_weight_zero(text: &str, arm: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| format!("cannot parse the config file: {e}"))?;
    let arms = doc
        .get_mut("arms")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or("the config file has no [[arms]] tables")?;
    let table = arms
        .iter_mut()
        .find(|t| t.get("name").and_then(toml_edit::Item::as_str) == Some(arm))
        .ok_or_else(|| format!("the config file has no arm named {arm:?}"))?;
    let weight = table
        .get_mut("weight")
        .ok_or_else(|| format!("arm {arm:?} has no weight in the file"))?;
    let decor = weight.as_value().map(|v| v.decor().clone());
    let mut zero = toml_edit::Value::from(0i64);
    if let Some(decor) = decor {
        *zero.decor_mut() = decor;
    }
    *weight = toml_edit::Item::Value(zero);
    Ok(doc.to_string())
}

/// Writes `text` to a new temporary file beside `path`, then renames it over `path`.
///
/// The temporary file's name carries 128 random bits and it is created exclusively
/// (`O_CREAT | O_EXCL`, which never follows a symlink): a file or link planted under a
/// predictable name can neither be written through nor be renamed over the config.
fn write_atomically(path: &Path, text: &str, meta: &std::fs::Metadata) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "router.toml".into());
    let (tmp, mut file) = create_exclusive(&dir, &name)?;
    let fail = |e: std::io::Error| {
        // Only ever removes the file this call created.
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", tmp.display())
    };
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.set_permissions(meta.permissions()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!(
            "cannot rename {} over {}: {e}",
            tmp.display(),
            path.display()
        )
    })
}

/// A new, empty file in `dir` under an unpredictable name, created by this call.
fn create_exclusive(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File), String> {
    let mut last = String::new();
    for _ in 0..8 {
        let tmp = dir.join(format!(
            ".{name}.abgate-{:032x}.tmp",
            rand::random::<u128>()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                last = format!("{} exists", tmp.display());
            }
            Err(e) => return Err(format!("cannot create {}: {e}", tmp.display())),
        }
    }
    Err(format!("cannot create a temporary file: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# The router.
listen = "127.0.0.1:8080"

[experiment]
salt = "s" # keep

# Control first.
[[arms]]
name = "best_model"
url = "http://127.0.0.1:6001"
weight = 90

[[arms]]
name = "candidate_model"   # the challenger
url = "http://127.0.0.1:6002"
weight = 10 # ten percent
"#;

    #[test]
    fn the_weight_becomes_zero_and_everything_else_is_kept() {
        let new = set_weight_zero(FILE, "candidate_model").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            new,
            FILE.replace("weight = 10 # ten percent", "weight = 0 # ten percent")
        );
        assert!(set_weight_zero(FILE, "nobody").is_err());
        assert!(set_weight_zero("arms = 1", "x").is_err());
    }

    #[test]
    fn the_file_is_replaced_by_a_rename_and_a_symlink_is_left_alone() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("router.toml");
        std::fs::write(&path, FILE).unwrap_or_else(|e| panic!("{e}"));
        let text = edit_file(&path, "candidate_model").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), text);
        assert!(text.contains("weight = 0 # ten percent"));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(left.len(), 1, "{left:?}");
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap_or_else(|e| panic!("{e}"));
        let err = edit_file(&link, "best_model").unwrap_err();
        assert!(err.contains("symlink"), "{err}");
    }

    #[test]
    fn a_planted_temp_file_link_is_never_followed_nor_renamed_over_the_config() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("router.toml");
        std::fs::write(&path, FILE).unwrap_or_else(|e| panic!("{e}"));
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap_or_else(|e| panic!("{e}"));
        // Links under the names a writer could predict (the process id, a counter).
        for name in [
            format!(".router.toml.abgate-{}.tmp", std::process::id()),
            ".router.toml.tmp".to_string(),
            "router.toml.tmp".to_string(),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let text = edit_file(&path, "candidate_model").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap_or_default(),
            "precious"
        );
        let meta = std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(meta.file_type().is_file(), "router.toml is a regular file");
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), text);
    }

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
        // The kubelet's layout: router.toml -> ..data/router.toml.
        let data = dir.path().join("..data");
        std::fs::create_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(data.join("router.toml"), FILE).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("router.toml");
        std::os::unix::fs::symlink("..data/router.toml", &path).unwrap_or_else(|e| panic!("{e}"));
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

    fn repo_file(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
    }

    #[test]
    fn the_shipped_example_and_the_commented_one_load() {
        let example = repo_file("config/examples/guardrail/router.toml");
        let c = RouterConfig::load(&example).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.guardrails.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "candidate_errors",
                "candidate_accuracy",
                "candidate_latency"
            ]
        );
        assert_eq!(c.guardrails[2].action, GuardrailAction::Alert);
        assert_eq!(c.analysis.min_samples, 200);
        assert!(c
            .analysis
            .audit_log
            .ends_with("guardrail/abgate-audit.jsonl"));
        // The commented-out example in config/router.toml, uncommented.
        let main = std::fs::read_to_string(repo_file("config/router.toml")).unwrap_or_default();
        let uncommented: String = main
            .lines()
            .map(|l| {
                let rest = l.strip_prefix("# ").unwrap_or(l);
                let key = rest.split(['=', ' ']).next().unwrap_or("");
                let known = [
                    "[[guardrails]]",
                    "name",
                    "metric",
                    "arm",
                    "max_degradation",
                    "action",
                    "min_samples",
                    "user_sample_cap",
                    "audit_log",
                ];
                if l.starts_with("# ") && known.contains(&key) {
                    format!("{rest}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let c = RouterConfig::parse(Path::new("router.toml"), &uncommented)
            .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(c.guardrails.len(), 1);
        assert_eq!(c.analysis.user_sample_cap, 200_000);
        // And rolling it back keeps every comment.
        let rolled = set_weight_zero(&main, "candidate_model").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rolled.lines().count(), main.lines().count());
        assert_eq!(
            rolled.lines().filter(|l| l.starts_with('#')).count(),
            main.lines().filter(|l| l.starts_with('#')).count()
        );
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
            estimate: Some(0.04),
            interval: [Some(0.03), Some(0.05)],
            max_degradation: 0.01,
            n: 1000,
            old_weights: vec![("a".into(), 90.0)],
            new_weights: vec![("a".into(), 0.0)],
            config_version: 2,
            file: FileChange::Written,
            note: None,
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
