//! The Open Inference Protocol through the router, over real model servers: `infer`
//! gets the same sticky arm as `/predict` (fast path and hyper path), health is
//! answered by the router, metadata is forwarded to a healthy arm, router-side errors
//! take the protocol's shape, and the real `tritonclient` works through it.

mod support;

use std::time::Duration;
use support::*;

const MODEL: &str = "wine-quality";

fn infer_body() -> String {
    r#"{"id":"r1","inputs":[{"name":"features","shape":[1,11],"datatype":"FP32","data":[7.4,0.7,0,1.9,0.076,11,34,0.9978,3.51,0.56,9.4]}]}"#.to_string()
}

async fn stack() -> (ArmProcess, ArmProcess, RouterHandle) {
    let best = ArmProcess::start("best_model").await;
    let candidate = ArmProcess::start("candidate_model").await;
    let router = RouterHandle::start(&router_toml(
        &[
            ("best_model", &best.url, 50.0),
            ("candidate_model", &candidate.url, 50.0),
        ],
        "",
        "",
    ))
    .await;
    (best, candidate, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_through_the_router_gets_the_users_sticky_arm_on_both_transports() {
    let (_best, _candidate, router) = stack().await;
    let c = client();
    let mut arms = std::collections::HashSet::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        let predicted = router.predict(&c, &user).await;
        assert_eq!(predicted.status, 200);
        let arm = predicted.header("x-variant").unwrap_or("").to_string();
        arms.insert(arm.clone());
        // X-User-Id and a length: the fast path.
        let fast = c
            .post_json(
                &format!("{}/v2/models/{MODEL}/infer", router.url),
                &[("x-user-id", &user)],
                infer_body(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fast.status, 200, "{}", fast.text());
        assert_eq!(fast.header("x-variant"), Some(arm.as_str()), "{user}");
        assert_eq!(fast.json()["id"], "r1");
        assert_eq!(fast.json()["outputs"][0]["name"], "quality");
        // The versioned path with an X-Variant override of the same arm: hyper's path.
        let versioned = c
            .post_json(
                &format!("{}/v2/models/{MODEL}/versions/1.0.0/infer", router.url),
                &[("x-user-id", &user), ("x-variant", &arm)],
                infer_body(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(versioned.status, 200, "{}", versioned.text());
        assert_eq!(versioned.header("x-variant"), Some(arm.as_str()));
        assert_eq!(
            versioned.json()["outputs"][0]["data"],
            fast.json()["outputs"][0]["data"]
        );
    }
    assert_eq!(arms.len(), 2, "30 users at 50/50 reach both arms");
    let metrics = router.metrics(&c).await;
    let infers: f64 = ["best_model", "candidate_model"]
        .iter()
        .map(|v| {
            metric(
                &metrics,
                "predictions_total",
                &[("endpoint", "infer"), ("variant", v)],
            )
        })
        .sum();
    assert_eq!(
        infers, 60.0,
        "every infer is counted under endpoint=\"infer\""
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_answers_health_forwards_metadata_and_speaks_the_protocols_errors() {
    let (_best, mut candidate, router) = stack().await;
    let c = client();
    let live = router.get_json(&c, "/v2/health/live").await;
    assert_eq!(live["live"], true);
    let ready = router.get_json(&c, "/v2/health/ready").await;
    assert_eq!(ready["ready"], true);
    let meta = router.get_json(&c, &format!("/v2/models/{MODEL}")).await;
    assert_eq!(meta["name"], MODEL);
    assert_eq!(meta["inputs"][0]["name"], "features");
    let server = router.get_json(&c, "/v2").await;
    assert_eq!(server["name"], "abgate");
    // Unknown protocol route, wrong method, unknown model: the protocol's error shape.
    let missing = c
        .get(&format!("{}/v2/nothing", router.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string(), "{}", missing.text());
    let wrong = c
        .get(&format!("{}/v2/models/{MODEL}/infer", router.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert!(wrong.json()["error"].is_string());
    let unknown = c
        .post_json(
            &format!("{}/v2/models/other/infer", router.url),
            &[("x-user-id", "u1")],
            infer_body(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unknown.status, 404, "the arm refuses another model");
    assert!(unknown.json()["error"].is_string());
    // With the candidate gone, metadata still comes from a healthy arm.
    candidate.kill();
    eventually("the candidate is down", Duration::from_secs(10), || {
        let (c, url) = (c.clone(), format!("{}/api/health", router.url));
        async move {
            let v = c.get(&url).await.map(|r| r.json()).unwrap_or_default();
            v["arms"]["candidate_model"]["status"] == "down"
        }
    })
    .await;
    for i in 0..10 {
        let meta = c
            .send(
                http::Method::GET,
                &format!("{}/v2/models/{MODEL}", router.url),
                &[("x-user-id", &format!("user-{i}"))],
                bytes::Bytes::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta.status, 200);
        assert_eq!(meta.header("x-variant"), Some("best_model"));
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with tritonclient[http] and numpy (installed by .ci/run)"]
async fn tritonclient_works_through_the_router_with_the_sticky_assignment() {
    let check = std::process::Command::new("python3")
        .args(["-c", "import tritonclient.http, numpy"])
        .status()
        .unwrap_or_else(|e| panic!("python3 is missing: {e}"));
    assert!(
        check.success(),
        "tritonclient is missing: python3 -m pip install 'tritonclient[http]' numpy"
    );
    let (_best, _candidate, router) = stack().await;
    let script = repo().join("tests/python/tritonclient_router.py");
    let url = router.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args([url.as_str(), MODEL])
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "tritonclient through the router failed:\n{stdout}\n{stderr}"
    );
    router.stop().await;
}
