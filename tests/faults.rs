//! Faults behind the router: an arm that refuses connections, one that stalls, and a
//! real arm process killed and restarted.

mod support;

use http::StatusCode;
use std::time::{Duration, Instant};
use support::*;

fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn a_refused_connection_fails_over_to_the_healthy_arm_when_failover_is_on() {
    let best = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let dead = closed_port_url();
    // user-5 is a candidate user at 90/10.
    let text = router_toml(&[("best_model", &best.url, 90.0), ("candidate_model", &dead, 10.0)], "failover = true", "[health]\ninterval_ms = 60000\ntimeout_ms = 300\nunhealthy_threshold = 1\nhealthy_threshold = 1\n");
    let router = RouterHandle::start(&text).await;
    let c = client();
    let r = router.predict(&c, "user-5").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-variant"), Some("best_model"));
    assert_eq!(r.header("x-assigned-variant"), Some("candidate_model"));
    let metrics = router.metrics(&c).await;
    assert_eq!(
        metric(
            &metrics,
            "abgate_failovers_total",
            &[("variant", "candidate_model")]
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "abgate_arm_up", &[("variant", "candidate_model")]),
        0.0
    );
    let health = c
        .get(&format!("{}/api/health", router.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "degraded");
    assert_eq!(health.json()["arms"]["candidate_model"]["status"], "down");
    router.stop().await;
}

#[tokio::test]
async fn a_refused_connection_is_a_json_502_or_503_when_failover_is_off() {
    let best = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let dead = closed_port_url();
    let text = router_toml(
        &[
            ("best_model", &best.url, 90.0),
            ("candidate_model", &dead, 10.0),
        ],
        "failover = false",
        "",
    );
    let router = RouterHandle::start(&text).await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = router.predict(&c, "user-5").await;
        let kind = r.json()["error"]["type"].as_str().unwrap_or("").to_string();
        assert!(
            (r.status == 502 && kind == "upstream_error")
                || (r.status == 503 && kind == "no_healthy_arm"),
            "{} {}",
            r.status,
            r.text()
        );
        statuses.push(r.status.as_u16());
        assert_eq!(r.header("x-assigned-variant"), Some("candidate_model"));
    }
    // Best users are unaffected.
    assert_eq!(router.predict(&c, "user-1").await.status, 200);
    let metrics = router.metrics(&c).await;
    let counted = metric(
        &metrics,
        "prediction_errors_total",
        &[
            ("variant", "candidate_model"),
            ("error_type", "upstream_error"),
        ],
    ) + metric(
        &metrics,
        "prediction_errors_total",
        &[
            ("variant", "candidate_model"),
            ("error_type", "no_healthy_arm"),
        ],
    );
    assert_eq!(counted, 3.0, "{statuses:?}");
    router.stop().await;
}

#[tokio::test]
async fn a_stalled_arm_gives_a_504_within_the_timeout_and_the_other_arm_is_unaffected() {
    let best = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let slow = StubArm::start(Duration::from_secs(10), StatusCode::OK).await;
    let text = router_toml(
        &[
            ("best_model", &best.url, 90.0),
            ("candidate_model", &slow.url, 10.0),
        ],
        "",
        "[upstream]\nrequest_timeout_ms = 300\n",
    );
    let router = RouterHandle::start(&text).await;
    let c = client();
    let started = Instant::now();
    let r = router.predict(&c, "user-5").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "upstream_timeout");
    assert_eq!(r.header("x-variant"), Some("candidate_model"));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let fast = router.predict(&c, "user-1").await;
    assert_eq!(fast.status, 200);
    let metrics = router.metrics(&c).await;
    assert_eq!(
        metric(
            &metrics,
            "prediction_errors_total",
            &[
                ("variant", "candidate_model"),
                ("error_type", "upstream_timeout")
            ]
        ),
        1.0
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_arm_is_marked_down_its_users_fail_over_and_come_back_after_a_restart() {
    let best = ArmProcess::start("best_model").await;
    let mut candidate = ArmProcess::start("candidate_model").await;
    let text = router_toml(
        &[
            ("best_model", &best.url, 90.0),
            ("candidate_model", &candidate.url, 10.0),
        ],
        "",
        "",
    );
    let router = RouterHandle::start(&text).await;
    let c = client();
    assert_eq!(
        router.predict(&c, "user-5").await.header("x-variant"),
        Some("candidate_model")
    );

    candidate.kill();
    eventually(
        "the candidate is marked down",
        Duration::from_secs(15),
        || {
            let (c, url) = (c.clone(), format!("{}/api/health", router.url));
            async move {
                c.get(&url)
                    .await
                    .map(|r| r.json()["arms"]["candidate_model"]["status"] == "down")
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let r = router.predict(&c, "user-5").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-variant"), Some("best_model"));
    assert_eq!(r.header("x-assigned-variant"), Some("candidate_model"));
    let metrics = router.metrics(&c).await;
    assert!(
        metric(
            &metrics,
            "abgate_failovers_total",
            &[("variant", "candidate_model")]
        ) >= 1.0
    );
    assert_eq!(
        metric(&metrics, "abgate_arm_up", &[("variant", "candidate_model")]),
        0.0
    );

    candidate.restart().await;
    let restarted = Instant::now();
    eventually(
        "the candidate's users come back",
        Duration::from_secs(15),
        || {
            let (c, router_url) = (c.clone(), router.url.clone());
            async move {
                c.post_json(
                    &format!("{router_url}/predict"),
                    &[("x-user-id", "user-5")],
                    predict_body(),
                )
                .await
                .map(|r| {
                    r.header("x-variant") == Some("candidate_model")
                        && r.header("x-assigned-variant").is_none()
                })
                .unwrap_or(false)
            }
        },
    )
    .await;
    eprintln!("users returned {:?} after the restart", restarted.elapsed());
    router.stop().await;
}
