//! Property-based fuzzing of `RouterConfig::parse`: arbitrary text, TOML-token soup,
//! generated arm tables and mutations of a valid router file. Parsing must never
//! panic, every error must name the file first, and every accepted config must be one
//! the router can serve: at least one arm, unique valid names, finite non-negative
//! weights with a positive finite sum, positive timeouts.
//!
//! This uses proptest rather than cargo-fuzz: cargo-fuzz needs a nightly toolchain,
//! which the build machine does not have, and proptest runs in every `cargo test`.

use abgate_router::config::is_valid_name;
use abgate_router::RouterConfig;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const VALID: &str = r#"listen = "127.0.0.1:8080"
failover = true
body_limit_bytes = 1048576
max_concurrent_requests = 4096

[experiment]
name = "wine"
salt = "wine-2026-11"

[[arms]]
name = "best_model"
url = "http://127.0.0.1:6001"
weight = 90

[[arms]]
name = "candidate_model"
url = "http://127.0.0.1:6002/"
weight = 10

[upstream]
connect_timeout_ms = 250
request_timeout_ms = 5000

[health]
interval_ms = 1000
unhealthy_threshold = 2

[override]
enabled = true
token = "s3cret"

[client]
header_timeout_ms = 10000
body_timeout_ms = 10000

[reload]
poll_interval_ms = 250
"#;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Parses `text` and checks the outcome; returns whether it was accepted.
fn check(text: &str) -> Result<bool, TestCaseError> {
    let parsed = RouterConfig::parse(Path::new("r.toml"), text);
    let c = match parsed {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("r.toml"), "error without the file: {msg}");
            return Ok(false);
        }
        Ok(c) => c,
    };
    prop_assert!(!c.arms.is_empty(), "accepted with no arm:\n{text}");
    let mut names = HashSet::new();
    for arm in &c.arms {
        prop_assert!(names.insert(arm.name.as_str()), "duplicate {}", arm.name);
        prop_assert!(is_valid_name(&arm.name), "bad name {:?}", arm.name);
        prop_assert!(
            arm.weight.is_finite() && arm.weight >= 0.0,
            "weight {}",
            arm.weight
        );
        prop_assert!(arm.url.starts_with("http://"), "url {:?} accepted", arm.url);
    }
    let sum: f64 = c.weights().iter().sum();
    prop_assert!(sum > 0.0 && sum.is_finite(), "weight sum {sum}:\n{text}");
    let shares = c.split().shares();
    prop_assert_eq!(shares.len(), c.arms.len());
    prop_assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)));
    prop_assert!(
        (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{shares:?}"
    );
    prop_assert!(!c.salt.is_empty());
    prop_assert!(c.body_limit_bytes > 0 && c.max_concurrent_requests > 0);
    for d in [
        c.upstream.connect_timeout,
        c.upstream.request_timeout,
        c.health.interval,
        c.health.timeout,
        c.client.header_timeout,
        c.client.body_timeout,
        c.reload.poll_interval,
    ] {
        prop_assert!(d > Duration::ZERO);
    }
    prop_assert!(c.arm_index(&c.arms[0].name) == Some(0));
    Ok(true)
}

/// Pieces of router TOML, valid and not, to glue together.
fn token() -> impl Strategy<Value = &'static str> {
    select(vec![
        "listen",
        "=",
        "\"127.0.0.1:8080\"",
        "\"[::1]:0\"",
        "[experiment]",
        "[[arms]]",
        "[arms]",
        "name",
        "url",
        "weight",
        "salt",
        "\"s\"",
        "\"\"",
        "\"best_model\"",
        "\"a\"",
        "\"http://127.0.0.1:1\"",
        "\"http://[::1]:2/\"",
        "\"http://h/p\"",
        "1",
        "0",
        "-1",
        "-0.0",
        "nan",
        "inf",
        "-inf",
        "1e308",
        "1.7976931348623157e308",
        "1e309",
        "0.0000001",
        "true",
        "false",
        "[upstream]",
        "[health]",
        "[override]",
        "[client]",
        "[reload]",
        "interval_ms",
        "token",
        "enabled",
        "failover",
        "{",
        "}",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "#",
        "\n",
        "\n",
        " ",
        "\\u0000",
        "arms = []",
        "workers",
        "body_limit_bytes",
        "18446744073709551616",
        "9223372036854775807",
        "'''",
        "\"\"\"",
        "=\n",
        ".",
        "arms.name",
    ])
}

/// A numeric (or not) TOML value for a weight.
fn weight_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|w| format!("{w:?}")),
        (0u32..1000).prop_map(|w| w.to_string()),
        select(vec![
            "0",
            "-0.0",
            "nan",
            "+nan",
            "-nan",
            "inf",
            "-inf",
            "1e308",
            "1.7976931348623157e308",
            "1e-320",
            "5e-324",
            "-1",
            "\"10\"",
            "true",
            "[]",
            "{}",
            "1_000",
            "0x10",
            "9223372036854775808",
        ])
        .prop_map(str::to_string),
    ]
}

fn arm_table() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            4 => select(vec!["best_model", "candidate_model", "a", "b_2"]).prop_map(str::to_string),
            1 => "\\PC{0,70}",
        ],
        prop_oneof![
            4 => select(vec!["http://127.0.0.1:6001", "http://localhost:1/", "http://[::1]:7"])
                .prop_map(str::to_string),
            1 => "\\PC{0,40}",
        ],
        weight_text(),
    )
        .prop_map(|(name, url, weight)| {
            format!(
                "[[arms]]\nname = {}\nurl = {}\nweight = {weight}\n",
                toml_string(&name),
                toml_string(&url)
            )
        })
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A line-level edit of `VALID`.
#[derive(Debug, Clone)]
enum Edit {
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    Replace(Index, String),
    Insert(Index, String),
    /// Bytes (chars) cut out of the middle.
    Cut(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let line = prop_oneof![
        vec(token(), 0..6).prop_map(|t| t.join(" ")),
        "\\PC{0,30}",
        weight_text().prop_map(|w| format!("weight = {w}")),
    ];
    prop_oneof![
        any::<Index>().prop_map(Edit::Delete),
        any::<Index>().prop_map(Edit::Duplicate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (any::<Index>(), line.clone()).prop_map(|(i, l)| Edit::Replace(i, l)),
        (any::<Index>(), line).prop_map(|(i, l)| Edit::Insert(i, l)),
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Edit::Cut(i, n)),
    ]
}

fn apply(edits: &[Edit]) -> String {
    let mut lines: Vec<String> = VALID.lines().map(str::to_string).collect();
    for e in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match e {
            Edit::Delete(i) => {
                lines.remove(i.index(n));
            }
            Edit::Duplicate(i) => {
                let l = lines[i.index(n)].clone();
                lines.insert(i.index(n), l);
            }
            Edit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            Edit::Replace(i, l) => lines[i.index(n)] = l.clone(),
            Edit::Insert(i, l) => lines.insert(i.index(n + 1), l.clone()),
            Edit::Cut(i, len) => {
                let text = lines.join("\n");
                let chars: Vec<char> = text.chars().collect();
                let start = i.index(chars.len().max(1)).min(chars.len());
                let end = (start + len).min(chars.len());
                let cut: String = chars[..start].iter().chain(&chars[end..]).collect();
                lines = cut.lines().map(str::to_string).collect();
            }
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

#[test]
fn the_unmutated_file_is_accepted() {
    let accepted = check(VALID).unwrap_or_else(|e| panic!("{e}"));
    assert!(accepted, "the valid fixture was refused");
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn arbitrary_text_never_panics_and_errors_name_the_file(text in "\\PC{0,300}") {
        check(&text)?;
    }

    #[test]
    fn toml_token_soup_never_panics_and_errors_name_the_file(
        tokens in vec(token(), 0..80)
    ) {
        check(&tokens.join(" "))?;
    }

}

proptest! {
    #![proptest_config(config(8192))]

    #[test]
    fn mutations_of_a_valid_file_are_refused_with_the_file_named_or_accepted_sound(
        edits in vec(edit(), 1..5)
    ) {
        check(&apply(&edits))?;
    }

    #[test]
    fn generated_arm_tables_are_accepted_only_when_servable(
        arms in vec(arm_table(), 0..5),
        arms_first in any::<bool>(),
    ) {
        let head = "listen = \"127.0.0.1:0\"\n[experiment]\nsalt = \"s\"\n";
        let text = if arms_first {
            // Top-level keys after a table header would land in the table: keep the
            // head first, but put the arms before another table.
            format!("{head}{}[client]\nheader_timeout_ms = 5\n", arms.concat())
        } else {
            format!("{head}{}", arms.concat())
        };
        let accepted = check(&text)?;
        if arms.is_empty() {
            prop_assert!(!accepted, "accepted with no arms:\n{text}");
        }
    }
}
