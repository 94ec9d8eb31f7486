//! The real model server, started in-process on port 0 with a shipped model, exercised
//! over HTTP on every route and every class of bad input.

mod support;
use http::Method;
use prometheus_parse::{Scrape, Value};
use std::time::Duration;
use support::{counter, Server, FEATURES};

const FEATURES_2: &str = r#"{"fixed_acidity": 11.2, "volatile_acidity": 0.28, "citric_acid": 0.56, "residual_sugar": 1.9, "chlorides": 0.075, "free_sulfur_dioxide": 17, "total_sulfur_dioxide": 60, "density": 0.998, "ph": 3.16, "sulphates": 0.58, "alcohol": 12.8}"#;

#[tokio::test]
async fn a_single_prediction_returns_a_quality_score_with_its_arm_and_id() {
    let server = Server::start("best_model", "").await;
    let reply = server
        .post("/predict", &format!("{{\"features\": {FEATURES}}}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    let q = v["prediction"].as_f64().unwrap_or(f64::NAN);
    assert!((3.0..=8.0).contains(&q), "quality {q}");
    assert_eq!(v["variant"], "best_model");
    assert_eq!(v["model_version"], "1.0.0");
    assert!(
        v["prediction_id"]
            .as_str()
            .unwrap_or("")
            .starts_with("best_model-"),
        "{v}"
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    server.stop().await;
}

#[tokio::test]
async fn a_batch_is_predicted_row_for_row_like_single_requests() {
    let server = Server::start("candidate_model", "").await;
    let batch = server
        .post(
            "/predict",
            &format!("{{\"instances\": [{FEATURES}, {FEATURES_2}, {FEATURES}]}}"),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    let v = batch.json();
    let preds: Vec<f64> = v["predictions"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    assert_eq!(preds.len(), 3);
    assert_eq!(v["prediction_ids"].as_array().map(Vec::len), Some(3));
    let one = server
        .post("/predict", &format!("{{\"features\": {FEATURES}}}"))
        .await
        .json();
    let two = server
        .post("/predict", &format!("{{\"features\": {FEATURES_2}}}"))
        .await
        .json();
    let close = |a: f64, b: &serde_json::Value| (a - b.as_f64().unwrap_or(f64::NAN)).abs() < 1e-4;
    assert!(
        close(preds[0], &one["prediction"]) && close(preds[2], &one["prediction"]),
        "{v} {one}"
    );
    assert!(close(preds[1], &two["prediction"]), "{v} {two}");
    assert!(
        (preds[0] - preds[1]).abs() > 1e-3,
        "different wines should score differently"
    );
    server.stop().await;
}

#[tokio::test]
async fn every_bad_input_gets_a_json_error_with_the_right_status_and_is_counted() {
    let server = Server::start("best_model", "").await;
    let missing_alcohol = FEATURES.replace(", \"alcohol\": 9.4", "");
    let with_colour = FEATURES.replace("}", ", \"colour\": 1}");
    let nan = FEATURES.replace("9.4", "NaN");
    let string = FEATURES.replace("9.4", "\"9.4\"");
    let huge = FEATURES.replace("9.4", "1e300");
    let batch_65 = format!("{{\"instances\": [{}]}}", vec![FEATURES; 65].join(","));
    let oversized = format!(
        "{{\"features\": {FEATURES}, \"user_id\": \"{}\"}}",
        "x".repeat(70_000)
    );
    let json = [("content-type", "application/json")];
    type Case<'a> = (
        Method,
        &'a str,
        &'a [(&'a str, &'a str)],
        String,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/predict",
            &json,
            "{\"features\": {".into(),
            400,
            "invalid_json",
            "not valid JSON",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            String::new(),
            400,
            "invalid_json",
            "empty",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            format!("{{\"features\": {nan}}}"),
            400,
            "invalid_json",
            "not valid JSON",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            format!("{{\"features\": {string}}}"),
            400,
            "invalid_input",
            "`features.alcohol` must be a number",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            format!("{{\"features\": {huge}}}"),
            400,
            "invalid_input",
            "outside the range",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            format!("{{\"features\": {missing_alcohol}}}"),
            400,
            "missing_feature",
            "`alcohol`",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            format!("{{\"features\": {with_colour}}}"),
            400,
            "unknown_feature",
            "`colour`",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            "{\"instances\": []}".into(),
            400,
            "invalid_batch",
            "empty",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            batch_65,
            400,
            "invalid_batch",
            "65 rows; the limit is 64",
        ),
        (
            Method::POST,
            "/predict",
            &json,
            oversized,
            413,
            "payload_too_large",
            "65536 bytes",
        ),
        (
            Method::POST,
            "/predict",
            &[("content-type", "text/plain")],
            format!("{{\"features\": {FEATURES}}}"),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        (
            Method::POST,
            "/nope",
            &json,
            "{}".into(),
            404,
            "not_found",
            "/nope",
        ),
        (
            Method::GET,
            "/predict",
            &[],
            String::new(),
            405,
            "method_not_allowed",
            "POST",
        ),
        (
            Method::POST,
            "/feedback",
            &json,
            "{\"feedback_type\": \"accurate\"}".into(),
            400,
            "invalid_input",
            "missing `prediction_id`",
        ),
    ];
    let before = server.scrape().await;
    let mut expected_by_type: std::collections::HashMap<&str, f64> = Default::default();
    for (method, path, headers, body, status, error_type, needle) in &cases {
        let reply = server.send(method.clone(), path, headers, body).await;
        assert_eq!(
            reply.status.as_u16(),
            *status,
            "{path} {body:.80}: {}",
            reply.text()
        );
        let v = reply.json();
        assert_eq!(v["error"]["type"], *error_type, "{body:.80}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(needle), "{body:.80}: {message}");
        *expected_by_type.entry(error_type).or_default() += 1.0;
    }
    let wrong_method = server.send(Method::DELETE, "/metrics", &[], "").await;
    assert_eq!(wrong_method.header("allow"), Some("GET"));
    *expected_by_type.entry("method_not_allowed").or_default() += 1.0;
    let after = server.scrape().await;
    for (error_type, n) in expected_by_type {
        let labels = [("variant", "best_model"), ("error_type", error_type)];
        let delta = counter(&after, "prediction_errors_total", &labels)
            - counter(&before, "prediction_errors_total", &labels);
        assert_eq!(
            delta, n,
            "prediction_errors_total{{error_type={error_type}}}"
        );
    }
    // Still alive and answering.
    assert_eq!(
        server
            .post("/predict", &format!("{{\"features\": {FEATURES}}}"))
            .await
            .status,
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn feedback_counts_by_type_and_measures_the_error_against_the_actual_quality() {
    let server = Server::start("best_model", "").await;
    let p = server
        .post("/predict", &format!("{{\"features\": {FEATURES}}}"))
        .await
        .json();
    let id = p["prediction_id"].as_str().unwrap_or_default().to_string();
    let predicted = p["prediction"].as_f64().unwrap_or(f64::NAN);
    let before = server.scrape().await;

    let r = server
        .post(
            "/feedback",
            &format!(
                "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"too_high\", \"actual\": 5}}"
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ack = r.json();
    assert_eq!(ack["matched"], true);
    let abs = ack["absolute_error"].as_f64().unwrap_or(f64::NAN);
    assert!((abs - (predicted - 5.0).abs()).abs() < 1e-4, "{ack}");
    let r = server
        .post(
            "/feedback",
            &format!(
                "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"rating\", \"rating\": 4}}"
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let hex = "0123456789abcdef0123456789abcdef";
    let foreign = server
        .post(
            "/feedback",
            &format!(
                "{{\"prediction_id\": \"candidate_model-{hex}\", \"feedback_type\": \"accurate\"}}"
            ),
        )
        .await;
    assert_eq!(foreign.status, 400);
    assert!(foreign.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("candidate_model"));
    // An id of this arm's shape that it does not remember (never issued, or
    // forgotten) takes no feedback: anyone could make one up.
    for unknown in [
        format!("best_model-{hex}"),
        "best_model-00000000-1".to_string(),
    ] {
        let r = server
            .post(
                "/feedback",
                &format!("{{\"prediction_id\": \"{unknown}\", \"feedback_type\": \"accurate\"}}"),
            )
            .await;
        let want = if unknown.len() == "best_model-".len() + 32 {
            (404, "unknown_prediction")
        } else {
            (400, "invalid_input")
        };
        assert_eq!(
            (
                r.status.as_u16(),
                r.json()["error"]["type"].as_str().unwrap_or("")
            ),
            want,
            "{unknown}: {}",
            r.text()
        );
    }

    let after = server.scrape().await;
    let fb = |s: &Scrape, t: &str| {
        counter(
            s,
            "feedback_total",
            &[("variant", "best_model"), ("feedback_type", t)],
        )
    };
    assert_eq!(fb(&after, "too_high") - fb(&before, "too_high"), 1.0);
    assert_eq!(fb(&after, "rating") - fb(&before, "rating"), 1.0);
    assert_eq!(
        fb(&after, "accurate") - fb(&before, "accurate"),
        0.0,
        "refused feedback is not counted"
    );
    let abs_count = counter(
        &after,
        "prediction_absolute_error_count",
        &[("variant", "best_model")],
    );
    assert_eq!(abs_count, 1.0);
    let summary = server.get("/api/metrics").await.json();
    let arm = &summary["arms"][0];
    assert_eq!(arm["mean_rating"], 4.0);
    assert!((arm["mean_absolute_error"].as_f64().unwrap_or(f64::NAN) - abs).abs() < 1e-6);
    server.stop().await;
}

#[tokio::test]
async fn metrics_have_the_contract_names_labels_and_buckets_and_move_by_the_right_amounts() {
    let server = Server::start("candidate_model", "").await;
    let before = server.scrape().await;
    for _ in 0..3 {
        assert_eq!(
            server
                .post("/predict", &format!("{{\"features\": {FEATURES}}}"))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        server.post("/predict", "{\"features\": {}}").await.status,
        400
    );
    let health = server.get("/api/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "healthy");
    let after = server.scrape().await;

    let v = [("variant", "candidate_model")];
    let pred = [("variant", "candidate_model"), ("endpoint", "predict")];
    assert_eq!(
        counter(&after, "predictions_total", &pred) - counter(&before, "predictions_total", &pred),
        4.0
    );
    assert_eq!(
        counter(&after, "prediction_duration_seconds_count", &v)
            - counter(&before, "prediction_duration_seconds_count", &v),
        4.0
    );
    assert_eq!(
        counter(&after, "prediction_rows_total", &v)
            - counter(&before, "prediction_rows_total", &v),
        3.0
    );

    let families = [
        ("predictions_total", "counter", vec!["endpoint", "variant"]),
        (
            "prediction_errors_total",
            "counter",
            vec!["error_type", "variant"],
        ),
        (
            "feedback_total",
            "counter",
            vec!["feedback_type", "variant"],
        ),
        ("system_cpu_percent", "gauge", vec!["variant"]),
        ("system_memory_percent", "gauge", vec!["variant"]),
        (
            "abgate_build_info",
            "gauge",
            vec!["model_version", "variant", "version"],
        ),
    ];
    for (name, _kind, labels) in &families {
        let samples: Vec<_> = after.samples.iter().filter(|s| s.metric == *name).collect();
        assert!(!samples.is_empty(), "{name} missing");
        for s in samples {
            let mut keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(&keys, labels, "{name}");
            assert_eq!(s.labels.get("variant"), Some("candidate_model"));
        }
    }
    let text = server.get("/metrics").await.text();
    for (name, kind, _) in &families {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} is not a {kind}"
        );
    }
    assert!(text.contains("# TYPE prediction_duration_seconds histogram"));
    let hist = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "prediction_duration_seconds"
                && s.labels.get("variant") == Some("candidate_model")
        })
        .unwrap_or_else(|| panic!("no histogram"));
    let Value::Histogram(buckets) = &hist.value else {
        panic!("not a histogram")
    };
    let bounds: Vec<f64> = buckets
        .iter()
        .map(|b| b.less_than)
        .filter(|b| b.is_finite())
        .collect();
    assert_eq!(bounds, abgate_common::metrics::LATENCY_BUCKETS.to_vec());
    assert!(bounds.contains(&0.005) && bounds.contains(&10.0) && bounds[0] == 0.0001);
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_virtual_memory_bytes",
    ] {
        assert!(
            after.samples.iter().any(|s| s.metric == process),
            "{process} missing"
        );
    }
    assert!(counter(&after, "system_memory_percent", &v) > 0.0);
    assert_eq!(
        counter(&after, "abgate_build_info", &[("model_version", "1.0.0")]),
        1.0
    );
    let summary = server.get("/api/metrics").await.json();
    assert_eq!(summary["arms"][0]["variant"], "candidate_model");
    assert!(
        summary["arms"][0]["latency_seconds"]["p95"]
            .as_f64()
            .is_some(),
        "{summary}"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start("best_model", "").await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let body = format!("{{\"features\": {FEATURES}}}");
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let head = format!("POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    stream
        .write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(&body.as_bytes()[..10])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (url, done) = server.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once shutdown began.
    assert!(
        tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .is_err()
    );
    stream
        .write_all(&body.as_bytes()[10..])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .is_ok(),
        "server did not stop"
    );
}
