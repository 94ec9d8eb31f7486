//! The proof that monitoring works: a real Prometheus (Debian's package) scrapes the
//! router and both arms with the project's own `prometheus.yml` and rules (only the
//! target addresses rewritten), traffic and feedback flow to both arms, and every
//! expression of the dashboard and the rule files is run through Prometheus's API.

mod support;

use abgate_common::client::HttpClient;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const ARMS: [&str; 2] = ["best_model", "candidate_model"];

/// A foreground Prometheus, stopped when dropped (pass or fail).
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: `apt-get install prometheus` (the .ci/run script does)"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(from)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(c: &HttpClient, prometheus: &str, expr: &str) -> Result<Vec<Value>, String> {
    let reply = c
        .get(&format!("{prometheus}/api/v1/query?query={}", encode(expr)))
        .await?;
    let v = reply.json();
    if v["status"] != "success" {
        return Err(format!("{expr}: {}", reply.text()));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Every `expr` string anywhere in the dashboard JSON.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// Why `result` is not acceptable for a data query, if it is not.
fn lacks_data(expr: &str, result: &[Value]) -> Option<String> {
    if result.is_empty() {
        return Some("no series".into());
    }
    let variants: BTreeSet<&str> = result
        .iter()
        .filter_map(|s| s["metric"]["variant"].as_str())
        .collect();
    let per_arm = variants.iter().any(|v| ARMS.contains(v));
    let names_one_arm = ARMS.iter().any(|a| expr.contains(&format!("\"{a}\"")));
    if per_arm && !names_one_arm {
        let missing: Vec<&&str> = ARMS.iter().filter(|a| !variants.contains(**a)).collect();
        if !missing.is_empty() {
            return Some(format!("no series for {missing:?} (has {variants:?})"));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's prometheus package (prometheus, promtool); .ci/run installs it"]
async fn every_dashboard_and_rule_expression_returns_data_from_a_real_prometheus() {
    require("prometheus");
    require("promtool");
    let started = Instant::now();
    let (best, candidate) = tokio::join!(
        ArmProcess::start("best_model"),
        ArmProcess::start("candidate_model")
    );
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    // A shadow of best_model (the candidate's server answering as `candidate_shadow`)
    // so the dashboard's shadow panels have data too.
    let shadow = format!(
        "[[shadows]]\nname = \"candidate_shadow\"\nurl = \"{}\"\nof = \"best_model\"\nsample = 1.0\n",
        candidate.url
    );
    let router = RouterHandle::start(&router_toml(
        &arms,
        "",
        &format!("[override]\nenabled = true\n{shadow}"),
    ))
    .await;

    // The project's Prometheus directory, with only the target addresses rewritten.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let prom_dir = dir.path().join("prometheus");
    copy_dir(&repo().join("monitoring/prometheus"), &prom_dir);
    let config_path = prom_dir.join("prometheus.yml");
    let original = std::fs::read_to_string(&config_path).unwrap_or_default();
    let rewritten = original
        .replace(
            "host.docker.internal:8080",
            router.url.trim_start_matches("http://"),
        )
        .replace(
            "host.docker.internal:6001",
            best.url.trim_start_matches("http://"),
        )
        .replace(
            "host.docker.internal:6002",
            candidate.url.trim_start_matches("http://"),
        );
    assert_ne!(
        original, rewritten,
        "prometheus.yml targets were not found to rewrite"
    );
    std::fs::write(&config_path, rewritten).unwrap_or_else(|e| panic!("{e}"));

    for args in [vec!["check", "config"], vec!["check", "rules"]] {
        let mut cmd = Command::new("promtool");
        cmd.args(&args);
        if args[1] == "config" {
            cmd.arg(&config_path);
        } else {
            for f in std::fs::read_dir(prom_dir.join("rules"))
                .unwrap_or_else(|e| panic!("{e}"))
                .flatten()
            {
                cmd.arg(f.path());
            }
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_ok(
        &format!("{}/-/ready", prometheus.url),
        Duration::from_secs(30),
    )
    .await;

    // Mixed traffic to both arms: predictions, feedback with ratings and ground truth,
    // overrides, and some bad requests, until the test ends.
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let (running, url) = (Arc::clone(&running), router.url.clone());
        tokio::spawn(async move {
            let c = client();
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                i += 1;
                let user = format!("user-{}", i % 500);
                let Ok(r) = c
                    .post_json(
                        &format!("{url}/predict"),
                        &[("x-user-id", &user)],
                        predict_body(),
                    )
                    .await
                else {
                    continue;
                };
                let id = r.json()["prediction_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let feedback = match i % 4 {
                    0 => format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"rating\", \"rating\": {}}}", 1 + i % 5),
                    1 => format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"accurate\", \"actual\": 5}}"),
                    2 => format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"too_high\", \"actual\": 4}}"),
                    _ => format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"too_low\", \"actual\": 7}}"),
                };
                let _ = c
                    .post_json(
                        &format!("{url}/feedback"),
                        &[("x-user-id", &user)],
                        feedback,
                    )
                    .await;
                if i % 10 == 0 {
                    let _ = c
                        .post_json(
                            &format!("{url}/predict"),
                            &[("x-user-id", &user)],
                            "{\"features\": {}}",
                        )
                        .await;
                    let arm = ARMS[(i / 10 % 2) as usize];
                    let _ = c
                        .post_json(
                            &format!("{url}/predict"),
                            &[("x-variant", arm)],
                            predict_body(),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let c = HttpClient::new(Duration::from_secs(10));
    eventually("all three targets are up", Duration::from_secs(30), || {
        let (c, url) = (c.clone(), prometheus.url.clone());
        async move {
            let up = query(&c, &url, "up").await.unwrap_or_default();
            up.len() == 3 && up.iter().all(|s| s["value"][1] == "1")
        }
    })
    .await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("monitoring/grafana/dashboards/ab-testing.json"))
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    assert_eq!(dashboard["title"], "A/B Testing Performance");
    let mut data_exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut data_exprs);
    let data_exprs: Vec<String> = data_exprs
        .into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("${variant}", ".*")
                .replace("$variant", ".*")
        })
        .collect();
    assert!(
        data_exprs.len() >= 10,
        "only {} dashboard queries",
        data_exprs.len()
    );

    let rules = c
        .get(&format!("{}/api/v1/rules", prometheus.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json();
    let mut recording = Vec::new();
    let mut alerting = Vec::new();
    for group in rules["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for rule in group["rules"].as_array().cloned().unwrap_or_default() {
            let q = rule["query"].as_str().unwrap_or_default().to_string();
            match rule["type"].as_str() {
                Some("recording") => recording.push(q),
                _ => alerting.push(q),
            }
        }
    }
    assert!(
        !recording.is_empty() && !alerting.is_empty(),
        "rules not loaded: {rules}"
    );

    // Rates need a few scrapes: retry until every query has data, or report the rest.
    let mut pending: Vec<String> = data_exprs.iter().chain(&recording).cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut problems = Vec::new();
    while !pending.is_empty() {
        problems.clear();
        let mut still = Vec::new();
        for expr in pending {
            match query(&c, &prometheus.url, &expr).await {
                Err(e) => panic!("query rejected: {e}"),
                Ok(result) => {
                    if let Some(why) = lacks_data(&expr, &result) {
                        problems.push(format!("{why}: {expr}"));
                        still.push(expr);
                    }
                }
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        problems.is_empty(),
        "expressions without data:\n{}",
        problems.join("\n")
    );
    // Alert expressions are quiet on a healthy stack; they must still be valid queries.
    for expr in &alerting {
        if let Err(e) = query(&c, &prometheus.url, expr).await {
            panic!("alert expression rejected: {e}");
        }
    }

    // promtool check metrics on what each process exports.
    for url in [&router.url, &best.url, &candidate.url] {
        let text = c
            .get(&format!("{url}/metrics"))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .text();
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(mut stdin) = check.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(text.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let out = check.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "promtool check metrics {url}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    running.store(false, Ordering::Relaxed);
    let _ = traffic.await;
    drop(prometheus);
    router.stop().await;
    eprintln!(
        "{} dashboard queries, {} recording rules, {} alerts checked in {:?}",
        data_exprs.len(),
        recording.len(),
        alerting.len(),
        started.elapsed()
    );
}
