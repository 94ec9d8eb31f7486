//! Experiment analysis end to end over real processes: the router's per-arm MAE
//! equals the MAE of the arms' own answers on wine rows, a candidate failing 5% of
//! requests is `worse` and rolled back by its guardrail (file, audit line, new phase,
//! traffic moved, no failures after the trip), killing the candidate with failover
//! on shows as the candidate's crossover (its users are still assigned to it: no SRM
//! alarm) while a healthy run has neither, and `abgate report` prints both arms and
//! exits by the rule.

mod support;

/// When a request was sent and answered (seconds), its status and the arm that served.
type Sent = (f64, f64, u16, String);

use abgate_common::client::HttpClient;
use http::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// Wine rows: features as the predict body's JSON object, and the true quality.
fn wine_rows(n: usize) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(repo().join("data/winequality-red.csv"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim_matches('"').to_lowercase().replace(' ', "_"))
        .collect();
    lines
        .take(n)
        .map(|line| {
            let values: Vec<&str> = line.split(',').collect();
            let quality: f64 = values[header.len() - 1].parse().unwrap_or(f64::NAN);
            let features: Vec<String> = header[..header.len() - 1]
                .iter()
                .zip(&values)
                .map(|(h, v)| format!("\"{h}\": {v}"))
                .collect();
            (format!("{{{}}}", features.join(", ")), quality)
        })
        .collect()
}

async fn experiment(c: &HttpClient, url: &str) -> Value {
    c.get(&format!("{url}/api/experiment"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
}

fn arm<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["arms"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["variant"] == name))
        .unwrap_or_else(|| panic!("no arm {name} in {view}"))
}

fn comparison<'a>(view: &'a Value, metric: &str) -> &'a Value {
    view["comparisons"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["metric"] == metric))
        .unwrap_or_else(|| panic!("no comparison {metric} in {view}"))
}

/// `abgate report` against `url`: (exit status, stdout).
fn report(url: &str, format: &str) -> (i32, String) {
    let out = Command::new(abgate())
        .args(["report", "--url", url, "--format", format])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Sends `/predict` for users `from..to` (one request each) over `workers` tasks.
async fn users(url: &str, from: u64, to: u64, workers: u64) -> Vec<(u16, String)> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (url, results) = (url.to_string(), Arc::clone(&results));
            tokio::spawn(async move {
                let c = client();
                let mut i = from + w;
                while i < to {
                    let user = format!("user-{i}");
                    if let Ok(r) = c
                        .post_json(
                            &format!("{url}/predict"),
                            &[("x-user-id", &user)],
                            predict_body(),
                        )
                        .await
                    {
                        let variant = r.header("x-variant").unwrap_or("").to_string();
                        if let Ok(mut v) = results.lock() {
                            v.push((r.status.as_u16(), variant));
                        }
                    }
                    i += workers;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let out = results.lock().map(|v| v.clone()).unwrap_or_default();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mae_per_arm_equals_the_offline_mae_of_both_arms_answers_on_wine_rows() {
    let (best, candidate) = tokio::join!(
        ArmProcess::start("best_model"),
        ArmProcess::start("candidate_model")
    );
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "", "")).await;
    let c = client();
    let rows = wine_rows(400);
    // variant -> |prediction - actual| of the arm's own answers.
    let mut offline: HashMap<String, Vec<f64>> = HashMap::new();
    for (i, (features, quality)) in rows.iter().enumerate() {
        let user = format!("wine-{i}");
        let r = c
            .post_json(
                &format!("{}/predict", router.url),
                &[("x-user-id", &user)],
                format!("{{\"features\": {features}}}"),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let answer = r.json();
        let variant = r.header("x-variant").unwrap_or("").to_string();
        // The arm predicts in f32; its JSON is the shortest f32 text.
        let prediction = f64::from(answer["prediction"].as_f64().unwrap_or(f64::NAN) as f32);
        let id = answer["prediction_id"].as_str().unwrap_or("").to_string();
        let kind = ["accurate", "too_high", "too_low"][i % 3];
        let fb = c
            .post_json(
                &format!("{}/feedback", router.url),
                &[("x-user-id", &user)],
                format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"{kind}\", \"actual\": {quality}}}"),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fb.status, StatusCode::OK, "{}", fb.text());
        assert!(fb.json()["absolute_error"].is_number(), "{}", fb.text());
        offline
            .entry(variant)
            .or_default()
            .push((prediction - quality).abs());
    }
    let view = experiment(&c, &router.url).await;
    for name in ["best_model", "candidate_model"] {
        let errors = &offline[name];
        assert!(errors.len() > 100, "{name}: only {} rows", errors.len());
        let mae = errors.iter().sum::<f64>() / errors.len() as f64;
        let rmse = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        let figures = &arm(&view, name)["absolute_error"];
        assert_eq!(figures["n"], errors.len() as u64, "{name}");
        let got = figures["mae"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (got - mae).abs() <= 1e-9 * mae,
            "{name}: router MAE {got} vs offline {mae}"
        );
        let got_rmse = figures["rmse"].as_f64().unwrap_or(f64::NAN);
        assert!((got_rmse - rmse).abs() <= 1e-9 * rmse, "{name}: RMSE");
        let a = arm(&view, name);
        assert_eq!(a["requests"]["n"], errors.len() as u64);
        assert_eq!(a["feedback"]["n"], errors.len() as u64);
        assert_eq!(a["accurate_share"]["n"], errors.len() as u64);
        eprintln!(
            "{name}: {} rows, MAE {mae:.6} (router {got:.6}), RMSE {rmse:.6}",
            errors.len()
        );
    }
    let ae = comparison(&view, "absolute_error");
    assert_eq!(ae["variant"], "candidate_model");
    assert_eq!(ae["control"], "best_model");
    let (_, text) = report(&router.url, "text");
    eprintln!("{text}");
    assert!(text.contains("best_model") && text.contains("candidate_model"));
    router.stop().await;
}

const GUARDED: &str = r#"# The experiment under test.
listen = "127.0.0.1:0"

[experiment]
name = "guardrail-test"
salt = "wine-2026-11"
min_samples = 100
audit_log = "audit.jsonl" # next to this file

# The control: every arm is compared with it.
[[arms]]
name = "best_model"
url = "BEST"
weight = 50

# The challenger.
[[arms]]
name = "candidate_model"
url = "CANDIDATE"
weight = 50 # half the users

# Generous waits (see tests/support): a busy machine must not mark a healthy arm down.
[health]
interval_ms = 200
timeout_ms = 5000
unhealthy_threshold = 1
healthy_threshold = 1

[upstream]
connect_timeout_ms = 5000

[reload]
poll_interval_ms = 50

# Roll the candidate back once its 5xx rate is surely higher than the control's.
[[guardrails]]
name = "candidate_errors"
metric = "error_rate"
arm = "candidate_model"
max_degradation = 0.0
action = "rollback"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_failing_5_percent_is_worse_and_rolled_back_by_its_guardrail() {
    let best = FlakyArm::start("best_model", 0).await;
    let candidate = FlakyArm::start("candidate_model", 20).await;
    let text = GUARDED
        .replace("BEST", &best.url)
        .replace("CANDIDATE", &candidate.url);
    let router = RouterHandle::start(&text).await;
    let c = client();
    assert_eq!(experiment(&c, &router.url).await["phase"], 1);

    // Traffic from distinct users until the guardrail trips.
    let running = Arc::new(AtomicBool::new(true));
    // (sent at, answered at, status, arm) per request.
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let traffic: Vec<_> = (0..4)
        .map(|w| {
            let (running, log, url) = (Arc::clone(&running), Arc::clone(&log), router.url.clone());
            tokio::spawn(async move {
                let c = client();
                let mut i = w;
                while running.load(Ordering::Relaxed) {
                    let user = format!("user-{i}");
                    let sent = abgate_router::state::unix_now();
                    let r = c
                        .post_json(
                            &format!("{url}/predict"),
                            &[("x-user-id", &user)],
                            predict_body(),
                        )
                        .await;
                    let done = abgate_router::state::unix_now();
                    let (status, variant) = match r {
                        Ok(r) => (
                            r.status.as_u16(),
                            r.header("x-variant").unwrap_or("").to_string(),
                        ),
                        Err(_) => (0, String::new()),
                    };
                    if let Ok(mut l) = log.lock() {
                        l.push((sent, done, status, variant));
                    }
                    i += 4;
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let tripped = loop {
        let v = experiment(&c, &router.url).await;
        if !v["guardrails"][0]["last_trip"].is_null() {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guardrail did not trip: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let trip = tripped["guardrails"][0]["last_trip"].clone();
    let trip_time = trip["time"].as_f64().unwrap_or(f64::MAX);
    // Keep the traffic going after the trip, then stop.
    let after_trip =
        |l: &Vec<(f64, f64, u16, String)>| l.iter().filter(|x| x.0 > trip_time).count();
    eventually(
        "1000 requests after the trip",
        Duration::from_secs(60),
        || {
            let n = log.lock().map(|l| after_trip(&l)).unwrap_or(0);
            async move { n >= 1000 }
        },
    )
    .await;
    running.store(false, Ordering::Relaxed);
    for t in traffic {
        let _ = t.await;
    }
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let before: Vec<_> = log.iter().filter(|x| x.1 < trip_time).collect();
    let after: Vec<_> = log.iter().filter(|x| x.0 > trip_time).collect();
    let failed_before = before.iter().filter(|x| x.2 != 200).count();
    let failed_after = after.iter().filter(|x| x.2 != 200).count();
    let candidate_after = after.iter().filter(|x| x.3 != "best_model").count();
    eprintln!(
        "trip after {} requests ({} failed, all on the candidate: {}); after the trip {} requests, {} failed, {} not on best_model; trip: {trip}",
        before.len(),
        failed_before,
        before.iter().filter(|x| x.2 != 200).all(|x| x.3 == "candidate_model"),
        after.len(),
        failed_after,
        candidate_after
    );
    assert_eq!(failed_after, 0, "failed requests after the rollback");
    assert_eq!(candidate_after, 0, "requests still served by the candidate");
    assert!(failed_before > 0);

    // The trip: the comparison was worse beyond the allowance, and the audit line.
    assert_eq!(trip["guardrail"], "candidate_errors");
    assert_eq!(trip["action"], "rollback");
    assert_eq!(trip["file"], "written", "{trip}");
    assert_eq!(trip["phase"], 1);
    assert!(trip["interval"][0].as_f64().unwrap_or(0.0) > 0.0, "{trip}");
    assert!(trip["n"].as_u64().unwrap_or(0) >= 100);
    let audit_path = router.file.with_file_name("audit.jsonl");
    let audit = std::fs::read_to_string(&audit_path).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_default())
        .collect();
    assert_eq!(lines.len(), 1, "{audit}");
    assert_eq!(lines[0], trip);
    assert_eq!(
        lines[0]["old_weights"][1],
        serde_json::json!(["candidate_model", 50.0])
    );
    assert_eq!(
        lines[0]["new_weights"][1],
        serde_json::json!(["candidate_model", 0.0])
    );

    // The file: weight 0, everything else (comments, layout) kept.
    let on_disk = std::fs::read_to_string(&router.file).unwrap_or_default();
    assert_eq!(
        on_disk,
        text.replace(
            "weight = 50 # half the users",
            "weight = 0 # half the users"
        )
    );

    // A new phase; the watcher saw the file as already applied (no second version).
    let view = experiment(&c, &router.url).await;
    assert_eq!(view["phase"], 2);
    assert_eq!(view["config_version"], trip["config_version"]);
    assert_eq!(view["history"][0]["phase"], 1);
    let old = &view["history"][0];
    let worse = old["comparisons"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["metric"] == "error_rate"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(worse["verdict"], "worse", "{worse}");
    assert_eq!(view["guardrails"][0]["trips_total"], 1);
    assert_eq!(arm(&view, "candidate_model")["requests"]["n"], 0);
    let metrics = router.metrics(&c).await;
    assert_eq!(
        metric(
            &metrics,
            "abgate_guardrail_trips_total",
            &[("guardrail", "candidate_errors")]
        ),
        1.0
    );
    assert_eq!(metric(&metrics, "abgate_experiment_phase", &[]), 2.0);

    // Restoring the weight by hand starts a new phase, as any weight change does.
    router.rewrite(&text);
    let version = trip["config_version"].as_u64().unwrap_or(0) + 1;
    router
        .wait_for_version(version, "the restored weight is applied")
        .await;
    assert_eq!(experiment(&c, &router.url).await["phase"], 3);
    drop(candidate);
    drop(best);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_split_has_no_srm_alarm() {
    let best = FlakyArm::start("best_model", 0).await;
    let candidate = FlakyArm::start("candidate_model", 0).await;
    let arms = [
        ("best_model", best.url.as_str(), 70.0),
        ("candidate_model", candidate.url.as_str(), 30.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "", "")).await;
    let results = users(&router.url, 0, 4000, 4).await;
    assert!(results.iter().all(|r| r.0 == 200));
    let c = client();
    let view = experiment(&c, &router.url).await;
    let srm = &view["srm"];
    eprintln!("healthy: {srm}");
    assert_eq!(srm["alarm"], false, "{srm}");
    assert!(srm["p_value"].as_f64().unwrap_or(0.0) > 0.001, "{srm}");
    let observed: u64 = srm["observed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(observed, 4000);
    assert_eq!(
        arm(&view, "best_model")["users"]["n"].as_u64().unwrap_or(0)
            + arm(&view, "candidate_model")["users"]["n"]
                .as_u64()
                .unwrap_or(0),
        4000
    );
    // Repeat users are not counted again.
    let _ = users(&router.url, 0, 1000, 4).await;
    let view = experiment(&c, &router.url).await;
    assert_eq!(
        view["srm"]["observed"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).sum::<u64>())
            .unwrap_or(0),
        4000
    );
    let metrics = router.metrics(&c).await;
    assert!(metric(&metrics, "abgate_srm_p_value", &[]) > 0.001);
    let estimate = metric(
        &metrics,
        "abgate_experiment_users",
        &[("variant", "candidate_model")],
    );
    assert!((900.0..1500.0).contains(&estimate), "{estimate}");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_candidate_with_failover_on_shows_as_crossover_not_as_srm() {
    let (best, mut candidate) = tokio::join!(
        ArmProcess::start("best_model"),
        ArmProcess::start("candidate_model")
    );
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "failover = true", "")).await;
    let c = client();
    let results = users(&router.url, 0, 1000, 4).await;
    assert!(results.iter().all(|r| r.0 == 200));
    let view = experiment(&c, &router.url).await;
    assert_eq!(view["srm"]["alarm"], false);
    assert_eq!(arm(&view, "candidate_model")["crossover"]["n"], 0);
    candidate.kill();
    let results = users(&router.url, 1000, 3000, 4).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(ok, results.len(), "failover should serve every request");
    let served_by_best = results.iter().filter(|r| r.1 == "best_model").count();
    assert_eq!(served_by_best, results.len());
    let view = experiment(&c, &router.url).await;
    let srm = &view["srm"];
    eprintln!("after the kill: {srm}");
    // By assigned users the split is intact: the hash still gives the candidate half
    // of the users; that another arm served them is the candidate's crossover.
    assert_eq!(srm["alarm"], false, "{srm}");
    let observed: Vec<u64> = srm["observed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert_eq!(observed.iter().sum::<u64>(), 3000, "{srm}");
    let candidate_view = arm(&view, "candidate_model");
    let requests = candidate_view["requests"]["n"].as_u64().unwrap_or(0);
    let crossed = candidate_view["crossover"]["n"].as_u64().unwrap_or(0);
    // Half of 3000 users are the candidate's; the ~1000 of them after the kill were
    // all served by best_model.
    assert!((1300..1700).contains(&requests), "{candidate_view}");
    assert!((800..1200).contains(&crossed), "{candidate_view}");
    let share = candidate_view["crossover"]["share"].as_f64().unwrap_or(0.0);
    eprintln!(
        "candidate: {requests} requests of its users, {crossed} served by best_model ({share:.3})"
    );
    assert!(share > 0.5, "{candidate_view}");
    assert_eq!(arm(&view, "best_model")["crossover"]["n"], 0);
    // The phase is unchanged: failover is not a config change.
    assert_eq!(view["phase"], 1);
    let metrics = router.metrics(&c).await;
    assert!(metric(&metrics, "abgate_srm_p_value", &[]) > 0.001);
    let gauge = metric(
        &metrics,
        "abgate_experiment_crossover_share",
        &[("variant", "candidate_model")],
    );
    assert!((gauge - share).abs() < 1e-9, "{gauge}");
    // `abgate report` exits 3 on a high crossover.
    let (code, text) = report(&router.url, "text");
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("SRM: ok") && text.contains("crossover"),
        "{text}"
    );
    drop(best);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abgate_report_prints_both_arms_and_exits_3_only_when_a_comparison_is_worse() {
    let best = FlakyArm::start("best_model", 0).await;
    let candidate = FlakyArm::start("candidate_model", 0).await;
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "", "")).await;
    let _ = users(&router.url, 0, 1000, 4).await;
    let (code, text) = report(&router.url, "text");
    eprintln!("{text}");
    assert_eq!(code, 0, "{text}");
    for needle in [
        "best_model (control)",
        "candidate_model",
        "error_rate",
        "latency_mean_seconds",
        "no difference yet",
        "not enough data",
        "SRM: ok",
    ] {
        assert!(text.contains(needle), "report lacks {needle:?}:\n{text}");
    }
    let (code, md) = report(&router.url, "markdown");
    assert_eq!(code, 0);
    assert!(
        md.contains("| metric |") && md.contains("candidate_model"),
        "{md}"
    );
    let (code, json) = report(&router.url, "json");
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json).unwrap_or_default();
    assert_eq!(v["arms"][1]["variant"], "candidate_model");
    router.stop().await;

    // A candidate failing 1 request in 5: worse, exit status 3.
    let flaky = FlakyArm::start("candidate_model", 5).await;
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", flaky.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "", "")).await;
    let _ = users(&router.url, 0, 2000, 4).await;
    let (code, text) = report(&router.url, "text");
    eprintln!("{text}");
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("WORSE"), "{text}");
    assert!(flaky.served.load(Ordering::Relaxed) > 500);
    // The router is unreachable: an error, not a verdict.
    router.stop().await;
    let (code, _) = report("http://127.0.0.1:1", "text");
    assert_eq!(code, 1);
}
