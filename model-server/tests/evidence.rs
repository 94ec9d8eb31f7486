//! Evidence integrity on the arm (issue 18): prediction ids are the arm and 128 random
//! bits; a prediction takes one rating, one accuracy judgement and one `actual`, only
//! from the user it was made for; `actual` lies in the model's label range; a
//! prediction that is not finite is a 500, never `null`; `X-Request-Id` is echoed on
//! every answer; and request heads as large as the router forwards are served, larger
//! ones refused with a JSON 431.

mod support;
use abgate_common::client::Reply;
use http::Method;
use prometheus_parse::Scrape;
use std::time::Duration;
use support::{counter, repo, Server, FEATURES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl Server {
    /// A prediction for `FEATURES` (with `headers`); returns its id.
    async fn predict_id(&self, headers: &[(&str, &str)], extra: &str) -> String {
        let r = self
            .post_with(
                "/predict",
                headers,
                &format!("{{\"features\": {FEATURES}{extra}}}"),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["prediction_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn feedback(&self, headers: &[(&str, &str)], body: &str) -> Reply {
        self.post_with("/feedback", headers, body).await
    }
}

/// One row in model order (for the Open Inference Protocol).
const ROW: [f32; 11] = [
    7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4,
];
/// A density the model accepts (finite in f32) but whose standardization overflows.
const OVERFLOWING_DENSITY: f32 = 1e38;

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    counter(after, name, labels) - counter(before, name, labels)
}

fn error_type(r: &Reply) -> String {
    r.json()["error"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn message(r: &Reply) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The 128 random bits of `id` when it is `<arm>-<32 lowercase hex digits>`.
fn random_part(id: &str, arm: &str) -> Option<u128> {
    let hex = id.strip_prefix(arm)?.strip_prefix('-')?;
    (hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u128::from_str_radix(hex, 16).ok())
        .flatten()
}

/// A raw answer: status, lower-cased header lines, body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Writes `request` on a new connection (while reading, so a server that answers
/// early is heard) and reads the one answer up to the server's close.
async fn raw(addr: &str, request: Vec<u8>) -> Raw {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The server may stop reading once it has refused the head.
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 10 s");
    drop(writer.await);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body_start = answer.len() - body.len();
    Raw {
        status,
        headers,
        body: answer[body_start..].to_vec(),
    }
}

/// A `POST /predict` of `FEATURES` with `extra` header lines (raw bytes) and
/// `Connection: close`.
fn predict_request(extra: &[u8]) -> Vec<u8> {
    let body = format!("{{\"features\": {FEATURES}}}");
    let mut out = Vec::new();
    out.extend_from_slice(b"POST /predict HTTP/1.1\r\nhost: arm\r\ncontent-type: application/json\r\nconnection: close\r\n");
    out.extend_from_slice(extra);
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

#[tokio::test]
async fn prediction_ids_are_the_arm_and_128_random_bits() {
    let server = Server::start("best_model", "").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(server.predict_id(&[], "").await);
    }
    let batch = server
        .post_with(
            "/predict",
            &[],
            &format!("{{\"instances\": [{FEATURES}, {FEATURES}, {FEATURES}]}}"),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    for id in batch.json()["prediction_ids"]
        .as_array()
        .into_iter()
        .flatten()
    {
        ids.push(id.as_str().unwrap_or_default().to_string());
    }
    let infer = server
        .send(
            Method::POST,
            "/v2/models/wine-quality/infer",
            &[],
            &serde_json::json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 11], "data": ROW}]})
                .to_string(),
        )
        .await;
    assert_eq!(infer.status, 200, "{}", infer.text());
    ids.push(
        infer.json()["parameters"]["prediction_ids"][0]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    assert_eq!(ids.len(), 7);
    let bits: Vec<u128> = ids
        .iter()
        .map(|id| {
            random_part(id, "best_model")
                .unwrap_or_else(|| panic!("{id:?} is not best_model-<32 hex digits>"))
        })
        .collect();
    for (i, a) in bits.iter().enumerate() {
        for b in &bits[i + 1..] {
            // Random 128-bit values: neighbours by sequence (or by a counter in any
            // part of the id) would differ in far fewer bits.
            assert!((a ^ b).count_ones() > 20, "{ids:?} look sequential");
            assert_ne!(a >> 64, b >> 64, "{ids:?} share their high bits");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn each_kind_of_feedback_is_taken_once_per_prediction() {
    let server = Server::start("best_model", "").await;
    let first = server.predict_id(&[], "").await;
    let second = server.predict_id(&[], "").await;
    let before = server.scrape().await;
    let fb = |id: &str, rest: &str| format!("{{\"prediction_id\": \"{id}\", {rest}}}");
    let steps: [(&str, &str, u16, &str); 9] = [
        (
            &first,
            "\"feedback_type\": \"rating\", \"rating\": 4",
            200,
            "",
        ),
        (
            &first,
            "\"feedback_type\": \"rating\", \"rating\": 5",
            409,
            "rating",
        ),
        (&first, "\"feedback_type\": \"accurate\"", 200, ""),
        (&first, "\"feedback_type\": \"too_high\"", 409, "accuracy"),
        (&first, "\"feedback_type\": \"too_low\"", 409, "accuracy"),
        (
            &second,
            "\"feedback_type\": \"too_low\", \"actual\": 6",
            200,
            "",
        ),
        // The rating is new but the actual is not: refused as a whole.
        (
            &second,
            "\"feedback_type\": \"rating\", \"rating\": 3, \"actual\": 6",
            409,
            "actual",
        ),
        (
            &second,
            "\"feedback_type\": \"rating\", \"rating\": 2",
            200,
            "",
        ),
        (&second, "\"feedback_type\": \"accurate\"", 409, "accuracy"),
    ];
    for (id, rest, status, needle) in steps {
        let r = server.feedback(&[], &fb(id, rest)).await;
        assert_eq!(r.status.as_u16(), status, "{rest}: {}", r.text());
        if status == 409 {
            assert_eq!(error_type(&r), "duplicate_feedback", "{}", r.text());
            assert!(message(&r).contains(needle), "{rest}: {}", r.text());
        }
    }
    let after = server.scrape().await;
    let v = ("variant", "best_model");
    let fb_delta = |t: &str| {
        delta(
            &before,
            &after,
            "feedback_total",
            &[v, ("feedback_type", t)],
        )
    };
    assert_eq!(fb_delta("rating"), 2.0);
    assert_eq!(fb_delta("accurate"), 1.0);
    assert_eq!(fb_delta("too_high"), 0.0);
    assert_eq!(fb_delta("too_low"), 1.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "prediction_errors_total",
            &[v, ("error_type", "duplicate_feedback")]
        ),
        5.0
    );
    assert_eq!(
        delta(&before, &after, "prediction_absolute_error_count", &[v]),
        1.0
    );
    let summary = server
        .send(Method::GET, "/api/metrics", &[], "")
        .await
        .json();
    assert_eq!(summary["arms"][0]["mean_rating"], 3.0, "{summary}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_feedback_sent_at_once_is_taken_exactly_once() {
    let server = Server::start("best_model", "").await;
    for _ in 0..5 {
        let id = server.predict_id(&[], "").await;
        let body = format!(
            "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"accurate\", \"actual\": 5}}"
        );
        let sends: Vec<_> = (0..16)
            .map(|_| {
                let (client, url, body) = (
                    server.client.clone(),
                    format!("{}/feedback", server.url),
                    body.clone(),
                );
                tokio::spawn(async move { client.post_json(&url, &[], body).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for s in sends {
            let reply = s.await.unwrap_or_else(|e| panic!("{e}"));
            statuses.push(reply.map(|r| r.status.as_u16()).unwrap_or(0));
        }
        statuses.sort_unstable();
        assert_eq!(statuses[0], 200, "{statuses:?}");
        assert!(statuses[1..].iter().all(|s| *s == 409), "{statuses:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn feedback_on_a_users_prediction_is_taken_only_from_that_user() {
    let server = Server::start("best_model", "").await;
    let alice = server.predict_id(&[("x-user-id", "alice")], "").await;
    let by_number = server.predict_id(&[], ", \"user_id\": 42").await;
    let anonymous = server.predict_id(&[], "").await;
    let before = server.scrape().await;
    let fb = |id: &str, rest: &str| {
        format!(
            "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"rating\", \"rating\": 4{rest}}}"
        )
    };
    let with_actual = ", \"actual\": 5";
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "another user",
            vec![("x-user-id", "bob")],
            fb(&alice, with_actual),
            403,
            "feedback_forbidden",
        ),
        (
            "anonymous",
            vec![],
            fb(&alice, with_actual),
            403,
            "feedback_forbidden",
        ),
        (
            "another user in the body",
            vec![],
            fb(&alice, ", \"user_id\": \"bob\""),
            403,
            "feedback_forbidden",
        ),
        (
            "the user",
            vec![("x-user-id", "alice")],
            fb(&alice, with_actual),
            200,
            "",
        ),
        // Ownership is checked before duplicates: bob learns nothing.
        (
            "another user, again",
            vec![("x-user-id", "bob")],
            fb(&alice, ""),
            403,
            "feedback_forbidden",
        ),
        (
            "the user, again",
            vec![("x-user-id", "alice")],
            fb(&alice, ""),
            409,
            "duplicate_feedback",
        ),
        (
            "the user in the body",
            vec![],
            fb(&by_number, ", \"user_id\": 43"),
            403,
            "feedback_forbidden",
        ),
        (
            "the number as a header",
            vec![("x-user-id", "42")],
            fb(&by_number, ""),
            200,
            "",
        ),
        (
            "anyone on an anonymous prediction",
            vec![("x-user-id", "carol")],
            fb(&anonymous, ""),
            200,
            "",
        ),
    ];
    for (what, headers, body, status, kind) in &cases {
        let r = server.feedback(headers, body).await;
        assert_eq!(r.status.as_u16(), *status, "{what}: {}", r.text());
        if *status != 200 {
            assert_eq!(error_type(&r), *kind, "{what}: {}", r.text());
        }
    }
    let after = server.scrape().await;
    let v = ("variant", "best_model");
    assert_eq!(
        delta(
            &before,
            &after,
            "feedback_total",
            &[v, ("feedback_type", "rating")]
        ),
        3.0,
        "refused feedback is not counted"
    );
    assert_eq!(
        delta(&before, &after, "prediction_absolute_error_count", &[v]),
        1.0,
        "refused feedback does not reach the error histogram"
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "prediction_errors_total",
            &[v, ("error_type", "feedback_forbidden")]
        ),
        5.0
    );

    // A user key that is not UTF-8 is compared as the bytes the router forwards.
    let answer = raw(
        server.addr(),
        predict_request(b"x-user-id: \xff\xfeuser\r\n"),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    let id = answer.json()["prediction_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let feedback = |user: &[u8], kind: &str| {
        let body = format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"{kind}\"}}");
        let mut out =
            b"POST /feedback HTTP/1.1\r\nhost: arm\r\nconnection: close\r\nx-user-id: ".to_vec();
        out.extend_from_slice(user);
        out.extend_from_slice(
            format!("\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes(),
        );
        out
    };
    let other = raw(server.addr(), feedback(b"\xff\xfduser", "accurate")).await;
    assert_eq!(other.status, 403);
    let same = raw(server.addr(), feedback(b"\xff\xfeuser", "accurate")).await;
    assert_eq!(
        same.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&same.body)
    );
    server.stop().await;
}

#[tokio::test]
async fn an_actual_outside_the_models_label_range_is_refused() {
    let server = Server::start("candidate_model", "").await;
    let id = server.predict_id(&[], "").await;
    let before = server.scrape().await;
    for actual in ["10", "1e30", "-1", "1.99", "9.01", "-1e300"] {
        let r = server
            .feedback(
                &[],
                &format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"accurate\", \"actual\": {actual}}}"),
            )
            .await;
        assert_eq!(r.status, 400, "{actual}: {}", r.text());
        assert_eq!(error_type(&r), "invalid_input");
        assert!(message(&r).contains("[2, 9]"), "{actual}: {}", r.text());
    }
    let after = server.scrape().await;
    let v = ("variant", "candidate_model");
    assert_eq!(
        delta(
            &before,
            &after,
            "feedback_total",
            &[v, ("feedback_type", "accurate")]
        ),
        0.0
    );
    assert_eq!(
        delta(&before, &after, "prediction_absolute_error_count", &[v]),
        0.0
    );
    // The range's ends are in it.
    for rest in [
        "\"feedback_type\": \"accurate\", \"actual\": 2",
        "\"feedback_type\": \"rating\", \"rating\": 3, \"actual\": 9",
    ] {
        let id = server.predict_id(&[], "").await;
        let body = format!("{{\"prediction_id\": \"{id}\", {rest}}}");
        let r = server.feedback(&[], &body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text());
    }
    server.stop().await;
}

#[tokio::test]
async fn a_prediction_that_is_not_finite_is_an_internal_error_never_null() {
    // Precondition: the shipped model really overflows on this row.
    let model = abgate_model_server::Model::load(&repo().join("models/best_model"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut row = ROW.to_vec();
    row[7] = OVERFLOWING_DENSITY;
    let out = model.predict(row.clone(), 1).unwrap_or_default();
    assert!(out.iter().all(|p| !p.is_finite()), "{out:?}");

    let server = Server::start("best_model", "").await;
    let bad = FEATURES.replace(
        "\"density\": 0.9978",
        &format!("\"density\": {OVERFLOWING_DENSITY:e}"),
    );
    let before = server.scrape().await;
    let single = server
        .post_with("/predict", &[], &format!("{{\"features\": {bad}}}"))
        .await;
    let batch = server
        .post_with(
            "/predict",
            &[],
            &format!("{{\"instances\": [{FEATURES}, {bad}]}}"),
        )
        .await;
    for r in [&single, &batch] {
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(error_type(r), "internal", "{}", r.text());
        assert!(!r.text().contains("null"), "{}", r.text());
    }
    let infer = server
        .send(
            Method::POST,
            "/v2/models/wine-quality/infer",
            &[],
            &serde_json::json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 11], "data": [ROW.to_vec(), row]}]})
                .to_string(),
        )
        .await;
    assert_eq!(infer.status, 500, "{}", infer.text());
    assert!(!infer.text().contains("null"), "{}", infer.text());
    let after = server.scrape().await;
    assert_eq!(
        delta(
            &before,
            &after,
            "prediction_errors_total",
            &[("variant", "best_model"), ("error_type", "internal")]
        ),
        3.0
    );
    let text = server.send(Method::GET, "/metrics", &[], "").await.text();
    assert!(
        !text.lines().any(|l| !l.starts_with('#')
            && matches!(l.rsplit(' ').next(), Some("NaN" | "+Inf" | "-Inf"))),
        "a metric took a non-finite value:\n{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn x_request_id_is_echoed_on_every_answer() {
    let server = Server::start("best_model", "").await;
    let id = "req-0123_abc.XYZ:42";
    let oversized = format!(
        "{{\"features\": {FEATURES}, \"user_id\": \"{}\"}}",
        "x".repeat(70_000)
    );
    let dup = server.predict_id(&[], "").await;
    let dup_body = format!("{{\"prediction_id\": \"{dup}\", \"feedback_type\": \"accurate\"}}");
    assert_eq!(server.feedback(&[], &dup_body).await.status, 200);
    let json = ("content-type", "application/json");
    type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, String, u16);
    let cases: Vec<Case> = vec![
        (Method::POST, "/predict", vec![json], format!("{{\"features\": {FEATURES}}}"), 200),
        (Method::POST, "/predict", vec![json], "{".into(), 400),
        (Method::GET, "/nope", vec![], String::new(), 404),
        (Method::GET, "/predict", vec![], String::new(), 405),
        (Method::POST, "/predict", vec![json], oversized, 413),
        (Method::POST, "/predict", vec![("content-type", "text/plain")], "{}".into(), 415),
        (Method::POST, "/feedback", vec![json], dup_body, 409),
        (Method::GET, "/metrics", vec![], String::new(), 200),
        (Method::GET, "/api/health", vec![], String::new(), 200),
        (Method::GET, "/api/metrics", vec![], String::new(), 200),
        (Method::GET, "/v2/health/ready", vec![], String::new(), 200),
        (Method::GET, "/v2/models/nope", vec![], String::new(), 404),
        (Method::DELETE, "/v2/models/wine-quality", vec![], String::new(), 405),
        (
            Method::POST,
            "/v2/models/wine-quality/infer",
            vec![],
            serde_json::json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 11], "data": ROW}]}).to_string(),
            200,
        ),
    ];
    for (method, path, headers, body, status) in cases {
        let mut headers = headers;
        headers.push(("x-request-id", id));
        let r = server.send(method.clone(), path, &headers, &body).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.text());
        assert_eq!(
            r.header("x-request-id"),
            Some(id),
            "{method} {path} ({status})"
        );
    }
    // Only a sane id is echoed.
    let long = "a".repeat(129);
    for bad in ["has space", long.as_str(), ""] {
        let r = server
            .send(Method::GET, "/api/health", &[("x-request-id", bad)], "")
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-request-id"), None, "{bad:?}");
    }
    // A refused head echoes it too when it was read.
    let mut extra = format!("x-request-id: {id}\r\n").into_bytes();
    extra.extend_from_slice(format!("x-pad: {}\r\n", "p".repeat(50_000)).as_bytes());
    let refused = raw(server.addr(), predict_request(&extra)).await;
    assert_eq!(refused.status, 431);
    assert_eq!(refused.header("x-request-id"), Some(id));
    server.stop().await;
}

#[tokio::test]
async fn heads_as_large_as_the_router_forwards_are_served() {
    let server = Server::start("best_model", "").await;
    // 100 client header lines, plus the router's host, x-request-id and length.
    let mut many = Vec::new();
    for i in 0..100 {
        many.extend_from_slice(format!("x-h-{i}: value {i}\r\n").as_bytes());
    }
    let r = raw(server.addr(), predict_request(&many)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    // A head of 32 KiB (the router's limit) plus what the router adds to it.
    let pad = format!("x-pad: {}\r\n", "p".repeat(33_000));
    let r = raw(server.addr(), predict_request(pad.as_bytes())).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    server.stop().await;
}

#[tokio::test]
async fn a_head_over_the_limits_gets_a_json_431_and_is_counted() {
    let server = Server::start("best_model", "").await;
    let before = server.scrape().await;
    let lines = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("x-h-{i}: v\r\n").into_bytes())
            .collect()
    };
    let heads: [(&str, Vec<u8>); 4] = [
        (
            "40 KB",
            format!("x-pad: {}\r\n", "p".repeat(40_000)).into_bytes(),
        ),
        (
            "300 KB",
            format!("x-pad: {}\r\n", "p".repeat(300_000)).into_bytes(),
        ),
        ("150 lines", lines(150)),
        ("1000 lines", lines(1000)),
    ];
    for (what, extra) in heads {
        let r = raw(server.addr(), predict_request(&extra)).await;
        assert_eq!(r.status, 431, "{what}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        let v = r.json();
        assert_eq!(v["error"]["type"], "headers_too_large", "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("bytes"),
            "{what}: {v}"
        );
    }
    let garbage = raw(server.addr(), b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.json()["error"]["type"], "malformed_request");
    let after = server.scrape().await;
    let v = ("variant", "best_model");
    assert_eq!(
        delta(
            &before,
            &after,
            "prediction_errors_total",
            &[v, ("error_type", "headers_too_large")]
        ),
        4.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "prediction_errors_total",
            &[v, ("error_type", "malformed_request")]
        ),
        1.0
    );
    // Still serving.
    assert_eq!(
        server.predict_id(&[], "").await.len(),
        "best_model-".len() + 32
    );
    server.stop().await;
}
