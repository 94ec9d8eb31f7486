//! The one writer of the config file: an edit keeps the operator's comments and layout
//! (`toml_edit`) and lands by an exclusive temporary file and a rename, never through a
//! link. A file that is a symlink (a Kubernetes ConfigMap mount) is never edited.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Rewrites the config file at `path` with `arm`'s weight set to 0, keeping comments
/// and layout, by a temp file and a rename. Returns the new text.
pub fn edit_file(path: &Path, arm: &str) -> Result<String, String> {
    edit_with(path, |text| set_weight_zero(text, arm))
}

/// Rewrites the config file at `path` with each named arm's weight set, keeping
/// comments and layout, by a temp file and a rename. Returns the new text.
pub fn edit_weights(path: &Path, weights: &[(String, f64)]) -> Result<String, String> {
    edit_with(path, |text| set_weights(text, weights))
}

/// Reads the config file, rewrites its text with `change` and replaces it (never
/// through a symlink).
fn edit_with(
    path: &Path,
    change: impl FnOnce(&str) -> Result<String, String>,
) -> Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{} is a symlink (a ConfigMap-style mount); the file is not edited, the change is in memory only",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let new = change(&text)?;
    write_atomically(path, &new, &meta)?;
    Ok(new)
}

/// Writes `text` to `path` (a file the router owns, such as the rollout state beside
/// the config) by an exclusive temporary file and a rename; a symlink at `path` is
/// replaced, never written through.
pub fn write_file(path: &Path, text: &str) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).ok();
    write_atomically_with(path, text, meta.map(|m| m.permissions()))
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

/// `text` with each named arm's `weight` set (comments, order and layout kept). A
/// whole number is written as an integer.
pub fn set_weights(text: &str, weights: &[(String, f64)]) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| format!("cannot parse the config file: {e}"))?;
    let arms = doc
        .get_mut("arms")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or("the config file has no [[arms]] tables")?;
    for (arm, w) in weights {
        if !(w.is_finite() && *w >= 0.0) {
            return Err(format!("arm {arm:?}: a weight must be a number >= 0"));
        }
        let table = arms
            .iter_mut()
            .find(|t| t.get("name").and_then(toml_edit::Item::as_str) == Some(arm.as_str()))
            .ok_or_else(|| format!("the config file has no arm named {arm:?}"))?;
        let weight = table
            .get_mut("weight")
            .ok_or_else(|| format!("arm {arm:?} has no weight in the file"))?;
        let decor = weight.as_value().map(|v| v.decor().clone());
        let mut value = if w.fract() == 0.0 && *w < 1e15 {
            toml_edit::Value::from(*w as i64)
        } else {
            toml_edit::Value::from(*w)
        };
        if let Some(decor) = decor {
            *value.decor_mut() = decor;
        }
        *weight = toml_edit::Item::Value(value);
    }
    Ok(doc.to_string())
}

/// Writes `text` to a new temporary file beside `path`, then renames it over `path`.
///
/// The temporary file's name carries 128 random bits and it is created exclusively
/// (`O_CREAT | O_EXCL`, which never follows a symlink): a file or link planted under a
/// predictable name can neither be written through nor be renamed over the config.
fn write_atomically(path: &Path, text: &str, meta: &std::fs::Metadata) -> Result<(), String> {
    write_atomically_with(path, text, Some(meta.permissions()))
}

/// [`write_atomically`] with the permissions to give the new file (`None`: the
/// default for a new file).
fn write_atomically_with(
    path: &Path,
    text: &str,
    permissions: Option<std::fs::Permissions>,
) -> Result<(), String> {
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
    if let Some(permissions) = permissions {
        file.set_permissions(permissions).map_err(fail)?;
    }
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
pub(crate) mod tests_support {
    use std::path::{Path, PathBuf};

    /// `text` mounted as the kubelet mounts a ConfigMap in `dir`: `router.toml` is a
    /// symlink to `..data/router.toml`. Returns the symlink's path.
    pub fn kubelet_layout(dir: &Path, text: &str) -> PathBuf {
        let data = dir.join("..data");
        std::fs::create_dir(&data).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(data.join("router.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("router.toml");
        std::os::unix::fs::symlink("..data/router.toml", &path).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// A small config file with comments, for the tests of the edits and of what uses them.
    pub const EXAMPLE: &str = r#"# The router.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GuardrailAction, RouterConfig};

    use super::tests_support::EXAMPLE as FILE;

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
    fn weights_are_set_and_everything_else_is_kept() {
        let w = |a: &str, v: f64| (a.to_string(), v);
        let new = set_weights(FILE, &[w("best_model", 95.0), w("candidate_model", 5.0)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            new,
            FILE.replace("weight = 10 # ten percent", "weight = 5 # ten percent")
                .replace("weight = 90", "weight = 95")
        );
        let new = set_weights(FILE, &[w("best_model", 97.5)]).unwrap_or_else(|e| panic!("{e}"));
        assert!(new.contains("weight = 97.5\n"), "{new}");
        assert!(set_weights(FILE, &[w("nobody", 1.0)]).is_err());
        assert!(set_weights(FILE, &[w("best_model", f64::NAN)]).is_err());
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
}
