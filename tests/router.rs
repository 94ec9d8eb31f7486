//! The router in front of two real model-server processes: the split, stickiness,
//! live weight changes, broken edits, feedback routing, overrides and router-level
//! errors.

mod support;

use abgate_router::assignment::{position, Split};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

async fn two_arms() -> (ArmProcess, ArmProcess) {
    let (best, candidate) = tokio::join!(
        ArmProcess::start("best_model"),
        ArmProcess::start("candidate_model")
    );
    (best, candidate)
}

fn split_toml(
    best: &ArmProcess,
    candidate: &ArmProcess,
    wb: f64,
    wc: f64,
    extra_tables: &str,
) -> String {
    router_toml(
        &[
            ("best_model", &best.url, wb),
            ("candidate_model", &candidate.url, wc),
        ],
        "",
        extra_tables,
    )
}

/// Sends one prediction per user, `concurrency` at a time; returns (user, status, arm).
async fn predict_all(
    router: &RouterHandle,
    users: Vec<String>,
    concurrency: usize,
) -> Vec<(String, u16, String)> {
    let c = client();
    let users = Arc::new(Mutex::new(
        users.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, users, results, url) = (
            c.clone(),
            Arc::clone(&users),
            Arc::clone(&results),
            router.url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let next = users.lock().ok().and_then(|mut u| u.pop());
                let Some((i, user)) = next else { break };
                let r = c
                    .post_json(
                        &format!("{url}/predict"),
                        &[("x-user-id", &user)],
                        predict_body(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let arm = r.header("x-variant").unwrap_or("").to_string();
                if let Ok(mut res) = results.lock() {
                    res.push((i, (user, r.status.as_u16(), arm)));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut out = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_users_at_90_10_land_within_tolerance_and_each_always_sees_the_same_arm() {
    let (best, candidate) = two_arms().await;
    let router = RouterHandle::start(&split_toml(&best, &candidate, 90.0, 10.0, "")).await;
    let n = 10_000;
    let users: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
    let first = predict_all(&router, users.clone(), 32).await;
    assert!(
        first.iter().all(|(_, s, _)| *s == 200),
        "some requests failed"
    );
    let candidates = first
        .iter()
        .filter(|(_, _, a)| a == "candidate_model")
        .count();
    let sigma = (n as f64 * 0.1 * 0.9).sqrt();
    assert!(
        (candidates as f64 - n as f64 * 0.1).abs() < 4.0 * sigma,
        "{candidates} of {n} on the candidate"
    );
    // Every user got exactly the arm the published rule gives.
    let split = Split::new(&[90.0, 10.0]).unwrap_or_else(|| panic!());
    for (user, _, arm) in &first {
        let expected =
            ["best_model", "candidate_model"][split.pick(position("wine-2026-11", user))];
        assert_eq!(arm, expected, "{user}");
    }
    // And the same arm again.
    let again = predict_all(&router, users[..2000].to_vec(), 16).await;
    for ((user, _, a1), (_, _, a2)) in first.iter().zip(&again) {
        assert_eq!(a1, a2, "{user} changed arm");
    }
    let text = router.metrics(&client()).await;
    let served = metric(
        &text,
        "predictions_total",
        &[("variant", "candidate_model")],
    );
    assert_eq!(
        served as usize,
        candidates
            + again
                .iter()
                .filter(|(_, _, a)| a == "candidate_model")
                .count()
    );
    assert!(
        (metric(
            &text,
            "abgate_arm_weight",
            &[("variant", "candidate_model")]
        ) - 0.1)
            .abs()
            < 1e-9
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewriting_the_file_to_50_50_under_traffic_fails_nothing_and_moves_only_best_users_to_the_candidate(
) {
    let (best, candidate) = two_arms().await;
    let router = RouterHandle::start(&split_toml(&best, &candidate, 90.0, 10.0, "")).await;
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let history: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    // Users whose request was sent once the new split was visibly active.
    let applied = Arc::new(AtomicBool::new(false));
    let after: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (running, failures, sent, history) = (
            running.clone(),
            failures.clone(),
            sent.clone(),
            history.clone(),
        );
        let (applied, after) = (applied.clone(), after.clone());
        let url = router.url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut i = worker;
            while running.load(Ordering::Relaxed) {
                let user = format!("user-{}", i % 2000);
                i += 8;
                let sent_after = applied.load(Ordering::Relaxed);
                match c
                    .post_json(
                        &format!("{url}/predict"),
                        &[("x-user-id", &user)],
                        predict_body(),
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        let arm = r.header("x-variant").unwrap_or("").to_string();
                        if sent_after {
                            if let Ok(mut a) = after.lock() {
                                a.insert(user.clone(), arm.clone());
                            }
                        }
                        if let Ok(mut h) = history.lock() {
                            h.entry(user).or_default().push(arm);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Traffic before the edit: at least half a second of it, and every one of the 2000
    // users seen once however slowly a busy machine serves them, so that users seen
    // after the edit have an arm to move from.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually(
        "every user is seen before the edit",
        Duration::from_secs(120),
        || {
            let seen = history.lock().map(|h| h.len()).unwrap_or(0);
            async move { seen == 2000 }
        },
    )
    .await;
    router.rewrite(&split_toml(&best, &candidate, 50.0, 50.0, ""));
    let c = client();
    let started = std::time::Instant::now();
    eventually("the new split is active", Duration::from_secs(10), || {
        let (c, url) = (c.clone(), format!("{}/api/config", router.url));
        async move {
            let v = c.get(&url).await.map(|r| r.json()).unwrap_or_default();
            v["version"] == 2 && v["arms"][1]["weight"] == 50.0
        }
    })
    .await;
    let applied_after = started.elapsed();
    applied.store(true, Ordering::Relaxed);
    // Traffic after the edit: at least 700 ms, and enough users to judge the new split
    // (at 90/10 -> 50/50, 4 in 10 users move: among 200, some surely do).
    tokio::time::sleep(Duration::from_millis(700)).await;
    eventually(
        "enough users are seen after the edit",
        Duration::from_secs(120),
        || {
            let seen = after.lock().map(|a| a.len()).unwrap_or(0);
            async move { seen >= 200 }
        },
    )
    .await;
    running.store(false, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    assert!(
        sent.load(Ordering::Relaxed) > 200,
        "too little traffic to prove anything"
    );
    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|e| e.into_inner()));
    let mut moved = 0;
    for (user, arms) in history.iter() {
        for pair in arms.windows(2) {
            assert!(
                !(pair[0] == "candidate_model" && pair[1] == "best_model"),
                "{user} moved from the candidate back to best: {arms:?}"
            );
            moved += usize::from(pair[0] == "best_model" && pair[1] == "candidate_model");
        }
    }
    assert!(moved > 0, "nobody moved to the candidate");
    // Requests sent after the change follow the 50/50 rule.
    let split = Split::new(&[50.0, 50.0]).unwrap_or_else(|| panic!());
    let after = std::mem::take(&mut *after.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(after.len() >= 50, "too few users seen after the reload");
    for (user, arm) in &after {
        let expected =
            ["best_model", "candidate_model"][split.pick(position("wine-2026-11", user))];
        assert_eq!(arm, expected, "{user} after the reload");
    }
    let config = router.get_json(&c, "/api/config").await;
    assert_eq!(config["last_reload"]["result"], "success");
    eprintln!(
        "new split applied after {applied_after:?}, sent {}",
        sent.load(Ordering::Relaxed)
    );
    router.stop().await;
}

#[tokio::test]
async fn a_broken_edit_keeps_the_old_split_and_raises_the_failure_counter() {
    let (best, candidate) = two_arms().await;
    let good = split_toml(&best, &candidate, 90.0, 10.0, "");
    let router = RouterHandle::start(&good).await;
    let c = client();
    router.rewrite(&good.replace("weight = 10", "weight = -10"));
    eventually("the failure is counted", Duration::from_secs(10), || {
        let (c, url) = (c.clone(), format!("{}/metrics", router.url));
        async move {
            let text = c.get(&url).await.map(|r| r.text()).unwrap_or_default();
            metric(
                &text,
                "abgate_config_reloads_total",
                &[("result", "failure")],
            ) == 1.0
        }
    })
    .await;
    let config = router.get_json(&c, "/api/config").await;
    assert_eq!(config["version"], 1);
    assert_eq!(config["arms"][1]["weight"], 10.0);
    assert_eq!(config["last_reload"]["result"], "failure");
    let reason = config["last_reload"]["error"].as_str().unwrap_or("");
    assert!(
        reason.contains("router.toml: key `arms[1].weight`: must be a number >= 0, got -10"),
        "{reason}"
    );
    // Traffic still follows 90/10: user-5 is a candidate user, user-1 a best user.
    assert_eq!(
        router.predict(&c, "user-5").await.header("x-variant"),
        Some("candidate_model")
    );
    assert_eq!(
        router.predict(&c, "user-1").await.header("x-variant"),
        Some("best_model")
    );
    // The same broken file is not re-counted at every poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = router.metrics(&c).await;
    assert_eq!(
        metric(
            &text,
            "abgate_config_reloads_total",
            &[("result", "failure")]
        ),
        1.0
    );
    // Fixing the file applies it.
    router.rewrite(&split_toml(&best, &candidate, 80.0, 20.0, ""));
    router.wait_for_version(2, "the fixed file applies").await;
    router.stop().await;
}

#[tokio::test]
async fn feedback_reaches_the_arm_that_served_the_prediction_even_after_a_weight_change() {
    let (best, candidate) = two_arms().await;
    let router = RouterHandle::start(&split_toml(&best, &candidate, 90.0, 10.0, "")).await;
    let c = client();
    // user-5 is on the candidate at 90/10.
    let p = router.predict(&c, "user-5").await;
    assert_eq!(p.header("x-variant"), Some("candidate_model"));
    let id = p.json()["prediction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Move everyone to best: the sticky assignment of user-5 is now best.
    router.rewrite(&split_toml(&best, &candidate, 100.0, 0.0, ""));
    router.wait_for_version(2, "weights applied").await;
    assert_eq!(
        router.predict(&c, "user-5").await.header("x-variant"),
        Some("best_model")
    );
    let arm_metrics = |url: String| {
        let c = c.clone();
        async move {
            c.get(&format!("{url}/metrics"))
                .await
                .map(|r| r.text())
                .unwrap_or_default()
        }
    };
    let before = arm_metrics(candidate.url.clone()).await;
    let body =
        format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"too_low\", \"actual\": 7}}");
    let r = c
        .post_json(
            &format!("{}/feedback", router.url),
            &[("x-user-id", "user-5")],
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-variant"), Some("candidate_model"));
    assert_eq!(r.json()["matched"], true);
    let after = arm_metrics(candidate.url.clone()).await;
    let labels = [("variant", "candidate_model"), ("feedback_type", "too_low")];
    assert_eq!(
        metric(&after, "feedback_total", &labels) - metric(&before, "feedback_total", &labels),
        1.0
    );
    let router_text = arm_metrics(router.url.clone()).await;
    assert_eq!(metric(&router_text, "feedback_total", &labels), 1.0);
    // An explicit variant wins; an unknown one is refused.
    let r = c
        .post_json(
            &format!("{}/feedback", router.url),
            &[("x-variant", "nope")],
            "{\"prediction_id\": \"x-1\", \"feedback_type\": \"accurate\"}",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "unknown_variant");
    router.stop().await;
}

#[tokio::test]
async fn an_override_needs_the_token_and_a_known_arm() {
    let (best, candidate) = two_arms().await;
    let router = RouterHandle::start(&split_toml(
        &best,
        &candidate,
        100.0,
        0.0,
        "[override]\nenabled = true\ntoken = \"s3cret\"\n",
    ))
    .await;
    let c = client();
    let url = format!("{}/predict", router.url);
    let send = |headers: Vec<(&'static str, &'static str)>| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.post_json(&url, &headers, predict_body())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let r = send(vec![("x-variant", "candidate_model")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["type"], "override_forbidden");
    let r = send(vec![
        ("x-variant", "candidate_model"),
        ("x-override-token", "wrong"),
    ])
    .await;
    assert_eq!(r.status, 403);
    let r = send(vec![
        ("x-variant", "candidate_model"),
        ("x-override-token", "s3cret"),
        ("x-user-id", "u"),
    ])
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-variant"),
        Some("candidate_model"),
        "a weight-0 arm still serves overrides"
    );
    let r = send(vec![("x-variant", "gpt9"), ("x-override-token", "s3cret")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "unknown_variant");
    let text = router.metrics(&c).await;
    assert_eq!(
        metric(
            &text,
            "abgate_assignments_total",
            &[("variant", "candidate_model"), ("source", "override")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "prediction_errors_total",
            &[
                ("variant", "unassigned"),
                ("error_type", "override_forbidden")
            ]
        ),
        2.0
    );
    router.stop().await;
}

#[tokio::test]
async fn the_key_comes_from_the_header_then_the_body_and_anonymous_users_are_counted() {
    let (best, candidate) = two_arms().await;
    let router = RouterHandle::start(&split_toml(&best, &candidate, 90.0, 10.0, "")).await;
    let c = client();
    let url = format!("{}/predict", router.url);
    // user-5 is a candidate user; in the body as a string and as a number key.
    let body = format!("{{\"user_id\": \"user-5\", \"features\": {FEATURES}}}");
    let r = c
        .post_json(&url, &[], body)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-variant"), Some("candidate_model"));
    // The header wins over the body.
    let body = format!("{{\"user_id\": \"user-5\", \"features\": {FEATURES}}}");
    let r = c
        .post_json(&url, &[("x-user-id", "user-1")], body)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.header("x-variant"), Some("best_model"));
    for _ in 0..5 {
        let r = c
            .post_json(&url, &[], predict_body())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200);
        assert!(r.header("x-request-id").is_some_and(|id| id.len() == 32));
    }
    let r = c
        .post_json(
            &url,
            &[("x-request-id", "trace-123"), ("x-user-id", "u")],
            predict_body(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.header("x-request-id"), Some("trace-123"));
    let text = router.metrics(&c).await;
    let anon = metric(
        &text,
        "abgate_assignments_total",
        &[("source", "anonymous")],
    );
    assert_eq!(anon, 5.0);
    assert_eq!(
        metric(&text, "abgate_assignments_total", &[("source", "sticky")]),
        3.0
    );
    router.stop().await;
}

#[tokio::test]
async fn router_level_errors_are_json_and_counted_as_unassigned() {
    let (best, candidate) = two_arms().await;
    let arms = [
        ("best_model", best.url.as_str(), 90.0),
        ("candidate_model", candidate.url.as_str(), 10.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "body_limit_bytes = 4096", "")).await;
    let c = client();
    let r = c
        .get(&format!("{}/nope", router.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.status.as_u16(), r.json()["error"]["type"].clone()),
        (404, "not_found".into())
    );
    let r = c
        .get(&format!("{}/predict", router.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let big = format!(
        "{{\"features\": {FEATURES}, \"pad\": \"{}\"}}",
        "x".repeat(5000)
    );
    let r = c
        .post_json(
            &format!("{}/predict", router.url),
            &[("x-user-id", "u")],
            big,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "payload_too_large");
    // The arm's own rejection is passed through and counted under the arm's label.
    let r = c
        .post_json(
            &format!("{}/predict", router.url),
            &[("x-user-id", "user-1")],
            "{\"features\": {}}",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "missing_feature");
    let text = router.metrics(&c).await;
    for t in ["not_found", "method_not_allowed", "payload_too_large"] {
        assert_eq!(
            metric(
                &text,
                "prediction_errors_total",
                &[("variant", "unassigned"), ("error_type", t)]
            ),
            1.0,
            "{t}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "prediction_errors_total",
            &[("variant", "best_model"), ("error_type", "missing_feature")]
        ),
        1.0
    );
    router.stop().await;
}

#[tokio::test]
async fn an_absolute_form_uri_or_odd_host_still_reaches_only_a_configured_arm() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (best, candidate) = two_arms().await;
    let router = RouterHandle::start(&split_toml(&best, &candidate, 100.0, 0.0, "")).await;
    let addr = router.url.trim_start_matches("http://").to_string();
    let body = predict_body();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let req = format!(
        "POST http://169.254.169.254/predict HTTP/1.1\r\nHost: 169.254.169.254\r\ncontent-type: application/json\r\nx-user-id: u\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-variant: best_model"), "{out}");
    assert!(out.contains("\"variant\":\"best_model\""), "{out}");
    router.stop().await;
}
