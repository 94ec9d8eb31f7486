//! Configuration loading shared by router and model server: a TOML file, then
//! environment variables with a documented prefix, extracted into a raw
//! `deny_unknown_fields` struct. Every error names the file, the key path and the
//! reason, in one line, so a typo fails fast and readably.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The file does not exist or cannot be read.
    #[error("{file}: cannot read: {reason}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The file (or an environment override) does not parse into the expected keys
    /// and types.
    #[error("{file}: {reason}")]
    Parse {
        /// The config file.
        file: PathBuf,
        /// One clause per problem, each naming its key.
        reason: String,
    },
    /// A key parsed but its value is not acceptable.
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Dotted key path, e.g. `arms[1].weight`.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
}

impl ConfigError {
    /// A validation error for `key` in `file`.
    pub fn invalid(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Reads `path` as TOML, applies environment variables starting with `env_prefix`
/// (nested keys separated by `__`, e.g. `ABGATE_ROUTER_OVERRIDE__ENABLED=true`), and
/// extracts `T`.
pub fn load<T: DeserializeOwned>(path: &Path, env_prefix: &str) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(path, &text, env_prefix)
}

/// Like [`load`] but from text already read (`path` is only used in messages).
pub fn parse<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    env_prefix: &str,
) -> Result<T, ConfigError> {
    Figment::new()
        .merge(Toml::string(text))
        .merge(Env::prefixed(env_prefix).split("__"))
        .extract()
        .map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            reason: describe(e),
        })
}

fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            let origin = if from_env {
                " (from an environment variable)"
            } else {
                ""
            };
            // TOML syntax errors come with a multi-line source excerpt; keep the
            // message to one line (the position is in its first line).
            let kind = without_values(&e.kind);
            let kind = kind
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l
                            .trim_start_matches(|c: char| c.is_ascii_digit())
                            .trim_start()
                            .starts_with('|')
                })
                .collect::<Vec<_>>()
                .join(": ");
            if e.path.is_empty() {
                format!("{kind}{origin}")
            } else {
                format!("key `{}`: {kind}{origin}", e.path.join("."),)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A figment error's kind, said without the offending value: a config error is shown
/// to whoever can read `/api/config` or the status page, and the value may be a
/// secret (an unquoted `token = 4815162342` is an integer where a string belongs).
fn without_values(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!(
                "invalid type: found {}, expected {expected}",
                type_of(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: {}, expected {expected}", type_of(actual))
        }
        Kind::UnknownVariant(_, expected) => {
            format!("unknown variant, expected one of {}", expected.join(", "))
        }
        Kind::Unsupported(actual) => format!("unsupported type {}", type_of(actual)),
        Kind::UnsupportedKey(actual, need) => {
            format!("unsupported key type {}, need {need}", type_of(actual))
        }
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "integer out of range".into(),
        other => other.to_string(),
    }
}

/// The kind of a value, never the value.
fn type_of(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "unit",
        Actual::Option => "an option",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        Actual::Other(_) => "a value",
        _ => "an enum",
    }
}

/// Resolves `relative` against the directory holding `config_file`, so a config file
/// can name sibling folders no matter where the process was started.
pub fn resolve_relative(config_file: &Path, relative: &Path) -> PathBuf {
    if relative.is_absolute() {
        return relative.to_path_buf();
    }
    config_file
        .parent()
        .map(|dir| dir.join(relative))
        .unwrap_or_else(|| relative.to_path_buf())
}

/// Arm names appear in metric labels, headers, prediction ids and URLs: 1-64 letters,
/// digits and `_`. The one rule for the router's arms and the model servers' variants.
pub fn is_valid_arm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        listen: String,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        limit: u32,
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = parse::<Raw>(
            Path::new("x.toml"),
            "listen = \"a\"\n[inner]\nlimt = 3\n",
            "ABGATE_TEST_NOPE_",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.toml: "), "{msg}");
        assert!(msg.contains("unknown field: found `limt`"), "{msg}");
        assert!(msg.contains("key `inner.limt`"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = parse::<Raw>(
            Path::new("x.toml"),
            "listen = \"a\"\n[inner]\nlimit = \"big\"\n",
            "ABGATE_TEST_NOPE_",
        )
        .unwrap_err();
        assert!(err.to_string().contains("key `inner.limit`"), "{err}");
    }

    #[test]
    fn a_toml_syntax_error_is_reported_on_one_line() {
        let err = parse::<Raw>(Path::new("x.toml"), "listen = \"a\"\n[inner\n", "X_NOPE_")
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.starts_with("x.toml: "), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read by serde only
    struct Secret {
        token: String,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        On,
    }

    #[test]
    fn an_error_never_echoes_the_value_it_rejects() {
        for (text, secret) in [
            ("token = 4815162342\n", "4815162342"),
            ("token = -4815162342\n", "4815162342"),
            ("token = 48151.62342\n", "48151.62342"),
            ("token = [\"hunter2\"]\n", "hunter2"),
            ("token = \"x\"\nmode = \"hunter2\"\n", "hunter2"),
            ("token = hunter2\n", "hunter2"),
            ("token = \"x\"\n[mode]\nhunter2 = 1\n", "hunter2 = 1"),
        ] {
            let err = parse::<Secret>(Path::new("x.toml"), text, "X_NOPE_")
                .unwrap_err()
                .to_string();
            assert!(!err.contains(secret), "{text:?} -> {err}");
            assert!(err.starts_with("x.toml: "), "{err}");
        }
        let err = parse::<Secret>(Path::new("x.toml"), "token = 4815162342\n", "X_NOPE_")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `token`") && err.contains("found an integer, expected a string"),
            "the key and the kinds are still named: {err}"
        );
    }

    #[test]
    fn missing_file_says_cannot_read() {
        let err = load::<Raw>(Path::new("/nonexistent/abgate.toml"), "X_").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/abgate.toml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        assert_eq!(
            resolve_relative(Path::new("config/a.toml"), Path::new("../models/x")),
            PathBuf::from("config/../models/x")
        );
        assert_eq!(
            resolve_relative(Path::new("config/a.toml"), Path::new("/abs")),
            PathBuf::from("/abs")
        );
    }
}
