//! The Open Inference Protocol v2 REST routes of a real model server, started
//! in-process on port 0 with a shipped model: every route, FP32 and FP64 inputs, JSON
//! and binary tensors in both directions, shapes, errors and metrics. Every prediction
//! is checked bit for bit against `/predict` answering the same rows in the same batch.
//!
//! The last tests drive the arm with the real Python clients (`tritonclient.http`, the
//! KServe SDK's REST client); they are `#[ignore]`d for plain `cargo test` and fail,
//! rather than skip, when the client is missing (`.ci/run` installs them).

mod support;
use abgate_common::client::Reply;
use http::Method;
use prometheus_parse::Value;
use serde_json::json;
use std::path::Path;
use support::{counter, repo, Server};

const MODEL: &str = "wine-quality";

impl Server {
    async fn post_json(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// An infer request with a JSON body (no content type, as tritonclient sends it).
    async fn infer(&self, body: &serde_json::Value) -> Reply {
        self.send(
            Method::POST,
            &format!("/v2/models/{MODEL}/infer"),
            &[],
            body.to_string(),
        )
        .await
    }

    /// An infer request with binary tensor data after `header`.
    async fn infer_binary(&self, header: &serde_json::Value, data: &[u8]) -> Reply {
        let json = header.to_string();
        let length = json.len().to_string();
        let mut body = json.into_bytes();
        body.extend_from_slice(data);
        self.send(
            Method::POST,
            &format!("/v2/models/{MODEL}/infer"),
            &[
                ("inference-header-content-length", &length),
                ("content-type", "application/octet-stream"),
            ],
            body,
        )
        .await
    }
}

/// The model's features, in the CSV's (and the model's) column order.
const FEATURES: [&str; 11] = [
    "fixed_acidity",
    "volatile_acidity",
    "citric_acid",
    "residual_sugar",
    "chlorides",
    "free_sulfur_dioxide",
    "total_sulfur_dioxide",
    "density",
    "ph",
    "sulphates",
    "alcohol",
];

/// The first `n` rows of the shipped UCI red-wine CSV (features only).
fn rows(n: usize) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(repo().join("data/winequality-red.csv"))
        .unwrap_or_else(|e| panic!("{e}"));
    text.lines()
        .skip(1)
        .take(n)
        .map(|line| {
            line.split(',')
                .take(11)
                .map(|x| {
                    x.trim()
                        .parse::<f64>()
                        .unwrap_or_else(|e| panic!("{x}: {e}"))
                })
                .collect()
        })
        .collect()
}

fn flat(rows: &[Vec<f64>]) -> Vec<f64> {
    rows.iter().flatten().copied().collect()
}

fn le_bytes(rows: &[Vec<f64>], datatype: &str) -> Vec<u8> {
    flat(rows)
        .iter()
        .flat_map(|x| match datatype {
            "FP32" => (*x as f32).to_le_bytes().to_vec(),
            _ => x.to_le_bytes().to_vec(),
        })
        .collect()
}

fn as_f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_f64)
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default()
}

/// What `/predict` answers for `rows` (as one `instances` batch, or `features` for one
/// row), and its model version.
async fn predict(server: &Server, rows: &[Vec<f64>]) -> (Vec<f32>, String) {
    let object = |row: &Vec<f64>| {
        serde_json::Value::Object(
            FEATURES
                .iter()
                .zip(row)
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        )
    };
    let body = if rows.len() == 1 {
        json!({"features": object(&rows[0])})
    } else {
        json!({"instances": rows.iter().map(object).collect::<Vec<_>>()})
    };
    let reply = server.post_json("/predict", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    let predictions = if rows.len() == 1 {
        vec![v["prediction"].as_f64().unwrap_or(f64::NAN) as f32]
    } else {
        as_f32s(&v["predictions"])
    };
    (
        predictions,
        v["model_version"].as_str().unwrap_or("").to_string(),
    )
}

/// The `quality` output of an infer reply (JSON `data` or binary), with the JSON header.
fn quality(reply: &Reply) -> (Vec<f32>, serde_json::Value) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    match reply.header("inference-header-content-length") {
        None => {
            assert_eq!(reply.header("content-type"), Some("application/json"));
            let v = reply.json();
            let out = &v["outputs"][0];
            assert!(out["parameters"]["binary_data_size"].is_null(), "{v}");
            (as_f32s(&out["data"]), v)
        }
        Some(n) => {
            assert_eq!(
                reply.header("content-type"),
                Some("application/octet-stream")
            );
            let n: usize = n.parse().unwrap_or_else(|e| panic!("{n}: {e}"));
            let v: serde_json::Value =
                serde_json::from_slice(&reply.body[..n]).unwrap_or_else(|e| panic!("{e}"));
            let out = &v["outputs"][0];
            let size = out["parameters"]["binary_data_size"].as_u64().unwrap_or(0) as usize;
            assert_eq!(reply.body.len() - n, size, "{v}");
            assert!(out.get("data").is_none(), "{v}");
            let values = reply.body[n..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (values, v)
        }
    }
}

fn tensor(rows: &[Vec<f64>], datatype: &str, nested: bool) -> serde_json::Value {
    let data = if nested {
        json!(rows)
    } else {
        json!(flat(rows))
    };
    json!({"name": "features", "shape": [rows.len(), 11], "datatype": datatype, "data": data})
}

fn binary_tensor(rows: &[Vec<f64>], datatype: &str) -> serde_json::Value {
    let size = rows.len() * 11 * if datatype == "FP32" { 4 } else { 8 };
    json!({"name": "features", "shape": [rows.len(), 11], "datatype": datatype, "parameters": {"binary_data_size": size}})
}

fn assert_bits(got: &[f32], expected: &[f32], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(g.to_bits(), e.to_bits(), "{what}: row {i}: {g} vs {e}");
    }
}

#[tokio::test]
async fn server_health_and_readiness_routes_answer_with_the_arm_header() {
    let server = Server::start("best_model", "").await;
    let meta = server.get("/v2").await;
    assert_eq!(meta.status, 200);
    let v = meta.json();
    assert_eq!(v["name"], "abgate");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["extensions"], json!(["binary_tensor_data"]));
    let cases = [
        ("/v2/health/live", json!({"live": true})),
        ("/v2/health/ready", json!({"ready": true})),
        (
            "/v2/models/wine-quality/ready",
            json!({"name": MODEL, "ready": true}),
        ),
        (
            "/v2/models/wine-quality/versions/1.0.0/ready",
            json!({"name": MODEL, "ready": true}),
        ),
    ];
    for (path, expected) in cases {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.json(), expected, "{path}");
        assert_eq!(reply.header("x-variant"), Some("best_model"), "{path}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    let head = server
        .send(Method::HEAD, "/v2/health/ready", &[], bytes::Bytes::new())
        .await;
    assert_eq!(head.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn model_metadata_lists_tensors_feature_order_and_the_arm_version() {
    let server = Server::start("candidate_model", "").await;
    let expected = json!({
        "name": MODEL,
        "versions": ["1.0.0"],
        "platform": "candle",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 11], "parameters": {"features": FEATURES}}],
        "outputs": [{"name": "quality", "datatype": "FP32", "shape": [-1]}],
        "parameters": {"features": FEATURES},
    });
    for path in [
        "/v2/models/wine-quality",
        "/v2/models/wine-quality/versions/1.0.0",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.json(), expected, "{path}");
        assert_eq!(reply.header("x-variant"), Some("candidate_model"));
    }
    server.stop().await;
}

#[tokio::test]
async fn the_model_name_comes_from_the_config() {
    let server = Server::start("best_model", "model_name = \"red-wine.v2\"\n").await;
    assert_eq!(server.get("/v2/models/red-wine.v2/ready").await.status, 200);
    assert_eq!(
        server.get("/v2/models/wine-quality/ready").await.status,
        404
    );
    let reply = server
        .infer(&json!({"inputs": [tensor(&rows(1), "FP32", false)]}))
        .await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = server
        .send(
            Method::POST,
            "/v2/models/red-wine.v2/infer",
            &[],
            json!({"inputs": [tensor(&rows(1), "FP32", false)]}).to_string(),
        )
        .await;
    assert_eq!(quality(&reply).1["model_name"], "red-wine.v2");
    server.stop().await;
}

#[tokio::test]
async fn unknown_models_versions_routes_and_methods_are_protocol_errors() {
    let server = Server::start("best_model", "").await;
    let body = json!({"inputs": [tensor(&rows(1), "FP32", false)]}).to_string();
    let cases: Vec<(Method, &str, u16, &str)> = vec![
        (
            Method::GET,
            "/v2/models/iris",
            404,
            "unknown model \"iris\"",
        ),
        (Method::GET, "/v2/models/iris/ready", 404, "unknown model"),
        (Method::POST, "/v2/models/iris/infer", 404, "unknown model"),
        (
            Method::GET,
            "/v2/models/wine-quality/versions/2",
            404,
            "has no version \"2\"; this server serves version \"1.0.0\"",
        ),
        (
            Method::GET,
            "/v2/models/wine-quality/versions/2/ready",
            404,
            "no version",
        ),
        (
            Method::POST,
            "/v2/models/wine-quality/versions/2/infer",
            404,
            "no version",
        ),
        (
            Method::GET,
            "/v2/models/wine-quality/config",
            404,
            "no route",
        ),
        (Method::GET, "/v2/repository/index", 404, "no route"),
        (Method::GET, "/v2/", 404, "no route"),
        (
            Method::GET,
            "/v2/models/wine-quality/infer",
            405,
            "accepts POST only",
        ),
        (Method::POST, "/v2/health/live", 405, "accepts GET only"),
        (
            Method::DELETE,
            "/v2/models/wine-quality",
            405,
            "accepts GET only",
        ),
    ];
    for (method, path, status, needle) in &cases {
        let reply = server.send(method.clone(), path, &[], body.clone()).await;
        assert_eq!(reply.status, *status, "{method} {path}: {}", reply.text());
        let v = reply.json();
        let message = v["error"].as_str().unwrap_or_else(|| panic!("{path}: {v}"));
        assert!(message.contains(needle), "{path}: {message}");
        assert_eq!(reply.header("x-variant"), Some("best_model"));
        if *status == 405 {
            let allow = if path.ends_with("/infer") {
                "POST"
            } else {
                "GET, HEAD"
            };
            assert_eq!(reply.header("allow"), Some(allow), "{path}");
        }
    }
    let scrape = server.scrape().await;
    let errors = |t: &str| {
        counter(
            &scrape,
            "prediction_errors_total",
            &[("variant", "best_model"), ("error_type", t)],
        )
    };
    assert_eq!(errors("not_found"), 9.0);
    assert_eq!(errors("method_not_allowed"), 3.0);
    server.stop().await;
}

#[tokio::test]
async fn json_infer_in_fp32_and_fp64_flat_and_nested_equals_predict_bit_for_bit() {
    let server = Server::start("best_model", "").await;
    let rows = rows(16);
    let (expected, version) = predict(&server, &rows).await;
    for datatype in ["FP32", "FP64"] {
        for nested in [false, true] {
            let reply = server
                .infer(&json!({"id": "q-1", "inputs": [tensor(&rows, datatype, nested)]}))
                .await;
            let what = format!("{datatype} nested={nested}");
            let (got, v) = quality(&reply);
            assert_bits(&got, &expected, &what);
            assert_eq!(v["model_name"], MODEL);
            assert_eq!(v["model_version"], version.as_str());
            assert_eq!(v["id"], "q-1");
            assert_eq!(v["outputs"][0]["name"], "quality");
            assert_eq!(v["outputs"][0]["datatype"], "FP32");
            assert_eq!(v["outputs"][0]["shape"], json!([16]));
            assert_eq!(
                v["parameters"]["prediction_ids"].as_array().map(Vec::len),
                Some(16)
            );
            assert_eq!(reply.header("x-variant"), Some("best_model"));
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn binary_tensors_in_both_directions_equal_predict_bit_for_bit() {
    let server = Server::start("candidate_model", "").await;
    let rows = rows(9);
    let (expected, _) = predict(&server, &rows).await;
    // (request parameters, requested outputs, binary answer expected)
    let shapes: [(serde_json::Value, Option<serde_json::Value>, bool); 5] = [
        // tritonclient's default: no outputs listed, binary_data_output = true.
        (json!({"binary_data_output": true}), None, true),
        (
            json!({}),
            Some(json!([{"name": "quality", "parameters": {"binary_data": true}}])),
            true,
        ),
        (
            json!({}),
            Some(json!([{"name": "quality", "parameters": {"binary_data": false}}])),
            false,
        ),
        (json!({}), Some(json!([{"name": "quality"}])), false),
        (json!({}), None, false),
    ];
    for datatype in ["FP32", "FP64"] {
        for (parameters, outputs, binary_out) in &shapes {
            let mut header = json!({"id": "b", "parameters": parameters, "inputs": [binary_tensor(&rows, datatype)]});
            if let Some(outputs) = outputs {
                header["outputs"] = outputs.clone();
            }
            let reply = server
                .infer_binary(&header, &le_bytes(&rows, datatype))
                .await;
            let what = format!("{datatype} in binary, {header}");
            assert_eq!(
                reply.header("inference-header-content-length").is_some(),
                *binary_out,
                "{what}"
            );
            let (got, v) = quality(&reply);
            assert_bits(&got, &expected, &what);
            assert_eq!(v["id"], "b");
            // And JSON in, binary out.
            let mut json_in =
                json!({"parameters": parameters, "inputs": [tensor(&rows, datatype, false)]});
            if let Some(outputs) = outputs {
                json_in["outputs"] = outputs.clone();
            }
            let reply = server.infer(&json_in).await;
            assert_eq!(
                reply.header("inference-header-content-length").is_some(),
                *binary_out,
                "{json_in}"
            );
            assert_bits(
                &quality(&reply).0,
                &expected,
                &format!("JSON in, {json_in}"),
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn versioned_infer_and_one_row_requests_equal_one_row_predict() {
    let server = Server::start("best_model", "").await;
    for row in rows(5) {
        let one = vec![row];
        let (expected, _) = predict(&server, &one).await;
        let reply = server
            .send(
                Method::POST,
                "/v2/models/wine-quality/versions/1.0.0/infer",
                &[("content-type", "application/json")],
                json!({"inputs": [tensor(&one, "FP64", true)]}).to_string(),
            )
            .await;
        let (got, v) = quality(&reply);
        assert_bits(&got, &expected, "one row");
        assert!(v.get("id").is_none(), "{v}");
    }
    server.stop().await;
}

#[tokio::test]
async fn requested_outputs_are_honoured_and_unknown_ones_refused() {
    let server = Server::start("best_model", "").await;
    let input = tensor(&rows(2), "FP32", false);
    let reply = server
        .infer(&json!({"inputs": [input], "outputs": [{"name": "quality"}]}))
        .await;
    assert_eq!(quality(&reply).0.len(), 2);
    let reply = server
        .infer(&json!({"inputs": [input], "outputs": [{"name": "score"}]}))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json(),
        json!({"error": "unknown output `score`; the model's only output is `quality`"})
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_infer_requests_get_protocol_errors_counted_by_type() {
    let server = Server::start("best_model", "").await;
    let one = rows(1);
    let mut nan_row = one.clone();
    nan_row[0][7] = f64::NAN;
    let too_many = rows(65);
    // (header, binary section or None for a JSON-only body, error_type, message part)
    let cases: Vec<(String, Option<Vec<u8>>, &str, &str)> = vec![
        ("{\"inputs\": [".into(), None, "invalid_json", "not valid JSON"),
        (String::new(), None, "invalid_json", "empty"),
        (
            json!({"inputs": [{"name": "features", "shape": [11], "datatype": "FP32", "data": flat(&one)}]}).to_string(),
            None,
            "invalid_input",
            "has shape [11]; the model takes [N, 11]",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", "data": flat(&one)[..10]}]}).to_string(),
            None,
            "invalid_input",
            "has shape [1, 10]",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [2, 11], "datatype": "FP32", "data": flat(&one)}]}).to_string(),
            None,
            "invalid_input",
            "has 11 values in `data`; shape [2, 11] needs 22",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, 11], "datatype": "INT32", "data": flat(&one)}]}).to_string(),
            None,
            "invalid_input",
            "send FP32 or FP64",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 11], "datatype": "FP32", "data": flat(&one)}]}).to_string(),
            None,
            "invalid_input",
            "unknown input `x`",
        ),
        (
            json!({"inputs": [tensor(&too_many, "FP32", false)]}).to_string(),
            None,
            "invalid_batch",
            "65 rows; the limit is 64",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [0, 11], "datatype": "FP32", "data": []}]}).to_string(),
            None,
            "invalid_batch",
            "0 rows",
        ),
        (
            json!({"inputs": [binary_tensor(&nan_row, "FP64")]}).to_string(),
            Some(le_bytes(&nan_row, "FP64")),
            "invalid_input",
            "`features[0][7]` (`density`) is NaN",
        ),
        (
            json!({"inputs": [binary_tensor(&nan_row, "FP32")]}).to_string(),
            Some(le_bytes(&nan_row, "FP32")),
            "invalid_input",
            "is NaN",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, 11], "datatype": "FP64", "parameters": {"binary_data_size": 4_294_967_296u64}}]}).to_string(),
            Some(le_bytes(&one, "FP64")),
            "invalid_input",
            "declares `binary_data_size` 4294967296, but 1×11 FP64 values take 88 bytes",
        ),
        (
            json!({"inputs": [binary_tensor(&one, "FP32")]}).to_string(),
            Some(le_bytes(&one, "FP32")[..40].to_vec()),
            "invalid_input",
            "declares 44 bytes of binary data but 40 follow",
        ),
        (
            json!({"inputs": [binary_tensor(&one, "FP32")]}).to_string(),
            None,
            "invalid_input",
            "has none after its JSON",
        ),
    ];
    let mut expected: std::collections::HashMap<&str, f64> = Default::default();
    for (header, data, error_type, needle) in &cases {
        let reply = match data {
            None => {
                server
                    .send(
                        Method::POST,
                        "/v2/models/wine-quality/infer",
                        &[],
                        header.clone(),
                    )
                    .await
            }
            Some(data) => {
                let v: serde_json::Value =
                    serde_json::from_str(header).unwrap_or_else(|e| panic!("{e}"));
                server.infer_binary(&v, data).await
            }
        };
        assert_eq!(reply.status, 400, "{header}: {}", reply.text());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let v = reply.json();
        let message = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(message.contains(needle), "{header}: {message}");
        *expected.entry(error_type).or_default() += 1.0;
    }
    // An Inference-Header-Content-Length beyond the body.
    let reply = server
        .send(
            Method::POST,
            "/v2/models/wine-quality/infer",
            &[("inference-header-content-length", "4294967296")],
            json!({"inputs": [tensor(&one, "FP32", false)]}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.text().contains("but the body has only"),
        "{}",
        reply.text()
    );
    *expected.entry("invalid_input").or_default() += 1.0;
    let scrape = server.scrape().await;
    for (error_type, n) in expected {
        assert_eq!(
            counter(
                &scrape,
                "prediction_errors_total",
                &[("variant", "best_model"), ("error_type", error_type)]
            ),
            n,
            "{error_type}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn body_limit_media_types_and_encodings_are_enforced() {
    let server = Server::start("best_model", "").await;
    let body = json!({"inputs": [tensor(&rows(1), "FP32", false)]}).to_string();
    let path = "/v2/models/wine-quality/infer";
    /// (request headers, body, status, message part)
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![],
            "x".repeat(70_000),
            413,
            "exceeds the limit of 65536 bytes",
        ),
        (
            vec![("content-type", "text/plain")],
            body.clone(),
            415,
            "content type \"text/plain\" is not supported",
        ),
        (
            vec![("content-encoding", "gzip")],
            body.clone(),
            415,
            "Content-Encoding \"gzip\" is not supported",
        ),
    ];
    for (headers, body, status, needle) in cases {
        let reply = server.send(Method::POST, path, &headers, body).await;
        assert_eq!(reply.status, status, "{headers:?}: {}", reply.text());
        let v = reply.json();
        assert!(
            v["error"].as_str().unwrap_or("").contains(needle),
            "{headers:?}: {v}"
        );
    }
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "application/octet-stream",
    ] {
        let reply = server
            .send(Method::POST, path, &[("content-type", ct)], body.clone())
            .await;
        assert_eq!(reply.status, 200, "{ct}: {}", reply.text());
    }
    server.stop().await;
}

#[tokio::test]
async fn infer_requests_count_under_endpoint_infer_and_their_ids_take_feedback() {
    let server = Server::start("best_model", "").await;
    let rows = rows(3);
    for _ in 0..2 {
        let reply = server
            .infer(&json!({"inputs": [tensor(&rows, "FP64", true)]}))
            .await;
        assert_eq!(reply.status, 200);
    }
    let reply = server
        .infer_binary(
            &json!({"inputs": [binary_tensor(&rows, "FP32")]}),
            &le_bytes(&rows, "FP32"),
        )
        .await;
    let (predictions, v) = quality(&reply);
    let bad = server.infer(&json!({"inputs": []})).await;
    assert_eq!(bad.status, 400);
    let scrape = server.scrape().await;
    let predictions_total = |endpoint: &str| {
        counter(
            &scrape,
            "predictions_total",
            &[("variant", "best_model"), ("endpoint", endpoint)],
        )
    };
    assert_eq!(predictions_total("infer"), 4.0, "answered and rejected");
    assert_eq!(predictions_total("predict"), 0.0);
    assert_eq!(
        counter(
            &scrape,
            "prediction_rows_total",
            &[("variant", "best_model")]
        ),
        9.0
    );
    let observed = scrape
        .samples
        .iter()
        .find(|s| s.metric == "prediction_duration_seconds")
        .and_then(|s| match &s.value {
            Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            _ => None,
        });
    assert_eq!(observed, Some(4.0), "every infer request is timed");
    let summary = server.get("/api/metrics").await.json();
    assert_eq!(summary["arms"][0]["infer_requests"], 4, "{summary}");
    assert_eq!(summary["arms"][0]["predictions"], 0, "{summary}");
    let id = v["parameters"]["prediction_ids"][2]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(id.starts_with("best_model-"), "{v}");
    let actual = 6.0;
    let feedback = server
        .post_json(
            "/feedback",
            &json!({"prediction_id": id, "feedback_type": "accurate", "actual": actual}),
        )
        .await;
    assert_eq!(feedback.status, 200, "{}", feedback.text());
    let f = feedback.json();
    assert_eq!(f["matched"], true);
    let error = f["absolute_error"].as_f64().unwrap_or(f64::NAN);
    assert!((error - (f64::from(predictions[2]) - actual).abs()).abs() < 1e-9);
    server.stop().await;
}

/// Checks that `python` can import `modules`, panicking with how to install them when
/// not: a missing client must fail the test, not skip it.
fn require_python(python: &str, modules: &str, install: &str) {
    let probe = std::process::Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{python} cannot import {modules} ({}); install with: {install}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("cannot run {python} ({e}); install Python 3 and then: {install}"),
    }
}

/// Runs `script` (in `tests/python/`) with `python` against a fresh arm; it exits
/// non-zero on any failed check.
async fn run_client_script(python: &str, script: &str) {
    let server = Server::start("candidate_model", "").await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let url = server.url.clone();
    let python_owned = python.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python_owned)
            .arg(&path)
            .arg(&url)
            .arg(MODEL)
            .arg("candidate_model")
            .output()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .unwrap_or_else(|e| panic!("{python} {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with tritonclient[http] and numpy (installed by .ci/run)"]
async fn tritonclient_http_works_against_an_arm_with_its_defaults() {
    require_python(
        "python3",
        "tritonclient.http, numpy",
        "python3 -m pip install 'tritonclient[http]' numpy",
    );
    run_client_script("python3", "tritonclient_arm.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the KServe SDK: ABGATE_KSERVE_PYTHON names a python with `kserve` (installed by .ci/run)"]
async fn the_kserve_sdk_rest_client_works_against_an_arm() {
    let python = std::env::var("ABGATE_KSERVE_PYTHON").unwrap_or_else(|_| "python3".into());
    require_python(
        &python,
        "kserve, numpy",
        "python3 -m venv /tmp/abgate-kserve && /tmp/abgate-kserve/bin/pip install kserve, then ABGATE_KSERVE_PYTHON=/tmp/abgate-kserve/bin/python",
    );
    run_client_script(&python, "kserve_arm.py").await;
}
