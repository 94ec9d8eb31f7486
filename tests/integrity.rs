//! The hostile findings of the safety issue, one test each, against the router in
//! process (or as a process, where memory is measured) and real model servers: a
//! feedback replay cannot move a guardrail, a UTF-8 user id stays sticky, a dribbled
//! body is not the arm's latency, idle keep-alive connections hold no large buffers,
//! control routes answer while every data-plane slot is held, a large answer for a
//! shadowed user reaches the client whole, and a head the router accepts is accepted
//! by the arm.

mod support;

use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `request` on a new connection and reads the whole answer (the request says
/// `Connection: close`): status and raw text.
async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// A `/predict` request head (and body) with raw header bytes.
fn predict_request(extra_headers: &[u8], body: &str) -> Vec<u8> {
    let mut r = b"POST /predict HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\nconnection: close\r\n".to_vec();
    r.extend_from_slice(extra_headers);
    r.extend_from_slice(format!("content-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    r
}

fn header_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_utf8_user_id_is_sticky_on_both_transports() {
    let (a, b) = (
        StubArm::start(Duration::ZERO, http::StatusCode::OK).await,
        StubArm::start(Duration::ZERO, http::StatusCode::OK).await,
    );
    let router = RouterHandle::start(&router_toml(
        &[
            ("best_model", &a.url, 1.0),
            ("candidate_model", &b.url, 1.0),
        ],
        "",
        "",
    ))
    .await;
    let at = addr(&router.url);
    for key in ["josé", "Željko", "用户-7", "zoë-42"] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            // Fast path: the key in the header, raw UTF-8 bytes.
            let header = [b"x-user-id: ", key.as_bytes(), b"\r\n"].concat();
            let (status, text) = raw(&at, &predict_request(&header, "{}")).await;
            assert_eq!(status, 200, "{text}");
            seen.insert(header_value(&text, "x-variant").unwrap_or("").to_string());
            // Hyper path (a chunked body is hyper's), same key.
            let request = [
                &b"POST /predict HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\nconnection: close\r\nx-user-id: "[..],
                key.as_bytes(),
                b"\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            ]
            .concat();
            let (status, text) = raw(&at, &request).await;
            assert_eq!(status, 200, "{text}");
            seen.insert(header_value(&text, "x-variant").unwrap_or("").to_string());
        }
        assert_eq!(seen.len(), 1, "{key}: one arm every time, got {seen:?}");
    }
    let metrics = router.metrics(&client()).await;
    let anonymous: f64 = ["best_model", "candidate_model"]
        .iter()
        .map(|v| {
            metric(
                &metrics,
                "abgate_assignments_total",
                &[("variant", v), ("source", "anonymous")],
            )
        })
        .sum();
    assert_eq!(anonymous, 0.0, "a UTF-8 key is a key, not an absent one");
    router.stop().await;
}

/// The router's recorded latency for `variant`: (count, sum of seconds).
fn latency(metrics: &str, variant: &str) -> (f64, f64) {
    (
        metric(
            metrics,
            "prediction_duration_seconds_count",
            &[("variant", variant)],
        ),
        metric(
            metrics,
            "prediction_duration_seconds_sum",
            &[("variant", variant)],
        ),
    )
}

#[tokio::test]
async fn a_body_dribbled_over_a_second_is_not_the_arms_latency() {
    let arm = StubArm::start(Duration::ZERO, http::StatusCode::OK).await;
    let router = RouterHandle::start(&router_toml(&[("best_model", &arm.url, 1.0)], "", "")).await;
    let at = addr(&router.url);
    let body = "{\"user_id\": \"slow\", \"features\": {}}";
    // Fast path (X-User-Id), then hyper (the user only in the body).
    for header in [&b"x-user-id: slow\r\n"[..], &b""[..]] {
        let request = predict_request(header, body);
        let split = request.len() - body.len();
        let mut stream = TcpStream::connect(&at)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        stream
            .write_all(&request[..split])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for piece in request[split..].chunks(body.len() / 4 + 1) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stream
                .write_all(piece)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(started.elapsed() >= Duration::from_millis(1100));
    }
    let (count, sum) = latency(&router.metrics(&client()).await, "best_model");
    assert_eq!(count, 2.0);
    assert!(
        sum < 0.6,
        "two requests whose bodies took 1.2 s each were recorded as {sum:.3} s of arm latency"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_replayed_feedback_cannot_trip_a_guardrail_and_only_its_user_may_give_it() {
    let best = ArmProcess::start("best_model").await;
    let candidate = ArmProcess::start("candidate_model").await;
    let guardrails = "[[guardrails]]\nname = \"candidate_accuracy\"\nmetric = \"absolute_error\"\narm = \"candidate_model\"\nmax_degradation = 0.1\naction = \"rollback\"\n";
    let router = RouterHandle::start(&router_toml(
        &[
            ("best_model", &best.url, 50.0),
            ("candidate_model", &candidate.url, 50.0),
        ],
        "[override]\nenabled = true\n",
        guardrails,
    ))
    .await;
    let c = client();
    let before = std::fs::read_to_string(&router.file).unwrap_or_default();
    let mut ids = Vec::new();
    for (user, arm) in [("mallory", "best_model"), ("mallory", "candidate_model")] {
        let r = c
            .post_json(
                &format!("{}/predict", router.url),
                &[("x-user-id", user), ("x-variant", arm)],
                format!("{{\"features\": {}}}", features_json()),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.json()["prediction_id"].as_str().unwrap_or("").to_string();
        assert!(id.len() >= arm.len() + 25, "an unguessable id: {id}");
        let prediction = r.json()["prediction"].as_f64().unwrap_or(f64::NAN);
        ids.push((id, prediction));
    }
    let feedback = |id: &str, actual: f64| {
        format!(
            "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"too_low\", \"actual\": {actual}}}"
        )
    };
    let url = format!("{}/feedback", router.url);
    // Anonymous and other users: refused.
    for headers in [&[][..], &[("x-user-id", "alice")][..]] {
        let r = c
            .post_json(&url, headers, feedback(&ids[1].0, 9.0))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["error"]["type"], "feedback_forbidden");
    }
    // Out of the label range: refused.
    let r = c
        .post_json(&url, &[("x-user-id", "mallory")], feedback(&ids[1].0, 1e30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 400, "{}", r.text());
    // The owner: once, then every replay is a 409.
    let (mut accepted, mut duplicate) = (0, 0);
    for _ in 0..30 {
        for (id, prediction) in &ids {
            let actual = if id.starts_with("candidate") {
                9.0
            } else {
                *prediction
            };
            let r = c
                .post_json(&url, &[("x-user-id", "mallory")], feedback(id, actual))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            match r.status.as_u16() {
                200 => accepted += 1,
                409 => {
                    assert_eq!(r.json()["error"]["type"], "duplicate_feedback");
                    duplicate += 1;
                }
                s => panic!("{s}: {}", r.text()),
            }
        }
    }
    assert_eq!((accepted, duplicate), (2, 58));
    let view = router.get_json(&c, "/api/experiment").await;
    let tripped = view["guardrails"]
        .as_array()
        .map(|g| g.iter().any(|g| g["tripped"].as_bool() == Some(true)))
        .unwrap_or(false);
    assert!(!tripped, "{}", view["guardrails"]);
    assert_eq!(
        std::fs::read_to_string(&router.file).unwrap_or_default(),
        before,
        "the config file is not rewritten"
    );
    let metrics = router.metrics(&c).await;
    assert_eq!(
        metric(
            &metrics,
            "feedback_total",
            &[("variant", "candidate_model"), ("feedback_type", "too_low")]
        ),
        1.0,
        "the router counts only feedback the arm accepted"
    );
    router.stop().await;
}

fn features_json() -> String {
    serde_json::from_str::<serde_json::Value>(&predict_body())
        .map(|v| v["features"].to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn control_routes_answer_while_every_data_plane_slot_is_held() {
    let arm = StubArm::start(Duration::ZERO, http::StatusCode::OK).await;
    let router = RouterHandle::start(&router_toml(
        &[("best_model", &arm.url, 1.0)],
        "max_concurrent_requests = 4",
        "",
    ))
    .await;
    let at = addr(&router.url);
    // Four clients send a head and no body, on both transports: every slot is held.
    let mut holders = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(&at)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let user = if i % 2 == 0 { "x-user-id: h\r\n" } else { "" };
        let head = format!(
            "POST /predict HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\n{user}content-length: 100\r\n\r\n"
        );
        s.write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        holders.push(s);
    }
    let c = client();
    eventually("every slot is held", Duration::from_secs(10), || {
        let (c, u) = (c.clone(), router.url.clone());
        async move {
            c.post_json(&format!("{u}/predict"), &[("x-user-id", "u")], "{}")
                .await
                .is_ok_and(|r| r.status == 503)
        }
    })
    .await;
    for path in [
        "/api/config",
        "/api/health",
        "/metrics",
        "/v2/health/live",
        "/api/metrics",
    ] {
        let r = c
            .get(&format!("{}{path}", router.url))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{path} while saturated: {}", r.text());
    }
    drop(holders);
    router.stop().await;
}

/// A raw arm whose `/predict` answer is `size` bytes of JSON.
async fn large_answer_arm(size: usize) -> String {
    let (listener, url) = listen().await;
    let padding = "x".repeat(size.saturating_sub(40));
    let body = format!("{{\"prediction\": 5.0, \"pad\": \"{padding}\"}}");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if seen.len() < end + 4 + len {
                        continue;
                    }
                    seen.drain(..end + 4 + len);
                    let answer = if head.starts_with("get /api/health") {
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_string()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn an_answer_over_the_shadow_limit_reaches_a_shadowed_user_whole() {
    let size = 5 * 1024 * 1024;
    let arm = large_answer_arm(size).await;
    let shadow = StubArm::start(Duration::ZERO, http::StatusCode::OK).await;
    let router = RouterHandle::start(&router_toml(
        &[("best_model", &arm, 1.0)],
        "",
        &format!(
            "[[shadows]]\nname = \"s\"\nurl = \"{}\"\nof = \"best_model\"\nsample = 1.0\n",
            shadow.url
        ),
    ))
    .await;
    let at = addr(&router.url);
    let (status, text) = raw(&at, &predict_request(b"x-user-id: big\r\n", "{}")).await;
    assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(body.len(), size - 10, "the whole answer");
    let c = client();
    let metrics = router.metrics(&c).await;
    assert_eq!(
        metric(
            &metrics,
            "abgate_shadow_requests_total",
            &[("shadow", "s"), ("result", "dropped")]
        ),
        1.0,
        "the copy is skipped and counted"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_head_the_router_accepts_is_accepted_by_the_arm() {
    let arm = ArmProcess::start("best_model").await;
    let router = RouterHandle::start(&router_toml(&[("best_model", &arm.url, 1.0)], "", "")).await;
    let at = addr(&router.url);
    let body = format!("{{\"features\": {}}}", features_json());
    // 95 extra lines: with the request's own, the router's limit of 100.
    let many: Vec<u8> = (0..95)
        .flat_map(|i| format!("x-extra-{i}: v\r\n").into_bytes())
        .collect();
    let (status, text) = raw(
        &at,
        &predict_request(&[b"x-user-id: u\r\n", &many[..]].concat(), &body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // One header as large as the router takes (its head limit is 32 KiB).
    let big = format!("x-user-id: u\r\nx-big: {}\r\n", "a".repeat(32_000));
    let (status, text) = raw(&at, &predict_request(big.as_bytes(), &body)).await;
    assert_eq!(status, 200, "{}", &text[..text.len().min(400)]);
    router.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_the_bodies_they_carried() {
    let arm = StubArm::start(Duration::ZERO, http::StatusCode::OK).await;
    let router = RouterProcess::start(&router_toml(&[("best_model", &arm.url, 1.0)], "", "")).await;
    let at = addr(&router.url);
    let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(1_000_000));
    // Warm up: one large request, so the allocator has seen one.
    let (status, _) = raw(&at, &predict_request(b"x-user-id: w\r\n", &body)).await;
    assert_eq!(status, 200);
    let baseline = rss_kib(router.pid());
    let mut open = Vec::new();
    for i in 0..60 {
        let mut s = TcpStream::connect(&at)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let head = format!(
            "POST /predict HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\nx-user-id: k{i}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s.write_all(body.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Read the answer, keep the connection open.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\"stub\"}") {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => panic!("no answer: {}", String::from_utf8_lossy(&got)),
            }
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
        open.push(s);
    }
    let grown = rss_kib(router.pid()).saturating_sub(baseline);
    eprintln!("router RSS grew by {grown} KiB holding 60 idle connections that carried 1 MB each");
    assert!(
        grown < 30 * 1024,
        "60 idle keep-alive connections that each carried 1 MB grew the router by {} MiB",
        grown / 1024
    );
    drop(open);
}
