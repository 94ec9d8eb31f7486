//! End-to-end tests of `loadgen` against a tiny in-process hyper server (port 0)
//! that answers like an abgate router: JSON with a `prediction_id` and an
//! `X-Variant` header chosen by a hash of `X-User-Id`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use abgate_bench::loadgen::{run, Config, RunOutput};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const ARMS: [&str; 2] = ["best_model", "candidate_model"];

fn arm_of(user: &[u8]) -> &'static str {
    // FNV-1a: stable, so a user always gets the same arm.
    let h = user.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    ARMS[(h % 2) as usize]
}

async fn handle(
    req: Request<Incoming>,
    seq: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let user = req
        .headers()
        .get("x-user-id")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let arm = arm_of(&user);
    let (status, out) = match path.as_str() {
        "/predict" if json["features"].as_object().is_some_and(|f| f.len() == 11) => {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::OK,
                serde_json::json!({"prediction": 5.5, "variant": arm, "model_version": "t",
                                   "prediction_id": format!("{arm}-1-{n}")}),
            )
        }
        "/feedback"
            if json["prediction_id"]
                .as_str()
                .is_some_and(|p| p.starts_with(arm))
                && json["feedback_type"].is_string() =>
        {
            (StatusCode::OK, serde_json::json!({"status": "recorded"}))
        }
        _ => (
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": {"type": "invalid_input", "message": "bad"}}),
        ),
    };
    let resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-variant", arm)
        .body(Full::new(Bytes::from(out.to_string())))
        .unwrap_or_else(|e| panic!("{e}"));
    Ok(resp)
}

async fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let seq = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seq = Arc::clone(&seq);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, Arc::clone(&seq)));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(args: &[&str]) -> Config {
    let mut all = vec!["loadgen", "--no-progress"];
    all.extend_from_slice(args);
    let cfg = Config::try_parse_from(all).unwrap_or_else(|e| panic!("{e}"));
    cfg.validate().unwrap_or_else(|e| panic!("{e}"));
    cfg
}

fn assert_healthy(out: &RunOutput) {
    let r = &out.report;
    assert!(r.totals.predictions > 0, "no predictions: {r:?}");
    assert_eq!(r.totals.errors, 0, "errors: {:?}", r.errors);
    assert_eq!(r.totals.missing_variant, 0);
    assert_eq!(r.sticky_violations, 0);
    assert!(r.feedback.count > 0, "no feedback");
    assert_eq!(r.arms.len(), 2, "arms: {:?}", r.arms.keys());
    assert!(r.arms.values().all(|a| a.count > 0));
    assert!(r.users_seen > 0);
    let srm = r.srm.as_ref().unwrap_or_else(|| panic!("no SRM section"));
    assert!((0.0..=1.0).contains(&srm.p_value));
    assert_eq!(
        r.failures(true),
        Vec::<String>::new(),
        "{}",
        r.render_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_against_in_process_server() {
    let addr = start_server().await;
    let target = format!("http://{addr}");
    let cfg = config(&[
        "--target",
        &target,
        "--mode",
        "closed",
        "--connections",
        "8",
        "--duration",
        "1s",
        "--users",
        "200",
        "--feedback-ratio",
        "0.2",
        "--weights",
        "best_model=50,candidate_model=50",
        // Only the SRM p-value's range is asserted, not its size: the toy hash
        // split of 200 users is not tuned to pass any alpha.
        "--srm-alpha",
        "1e-12",
    ]);
    let out = run(&cfg).await.unwrap_or_else(|e| panic!("{e}"));
    assert_healthy(&out);
    let r = &out.report;
    assert_eq!(r.mode, "closed");
    assert!(r.requested_rate.is_none());
    assert_eq!(r.late_sends, 0);
    // feedback ≈ 20% of the requests
    let share = r.feedback.count as f64 / r.totals.requests as f64;
    assert!((0.15..=0.25).contains(&share), "feedback share {share}");
    assert_eq!(r.users_seen, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_against_in_process_server() {
    let addr = start_server().await;
    let target = format!("http://{addr}");
    let cfg = config(&[
        "--target",
        &target,
        "--mode",
        "open",
        "--rate",
        "2000",
        "--connections",
        "8",
        "--duration",
        "1s",
        "--users",
        "100",
        "--feedback-ratio",
        "0.1",
        "--weights",
        "best_model=1,candidate_model=1",
        "--srm-alpha",
        "1e-12",
    ]);
    let out = run(&cfg).await.unwrap_or_else(|e| panic!("{e}"));
    assert_healthy(&out);
    let r = &out.report;
    assert_eq!(r.mode, "open");
    assert_eq!(r.requested_rate, Some(2000.0));
    // Exactly the scheduled requests were sent.
    assert_eq!(r.totals.requests + r.totals.unsent, 2000);
    assert_eq!(r.totals.unsent, 0);
    assert!(r.send_lag_us.is_some());
    let json = serde_json::to_value(r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["totals"]["requests"], 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_and_fail_the_run() {
    // Bind, learn the port, close: nothing listens there any more.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    };
    let target = format!("http://{addr}");
    let cfg = config(&[
        "--target",
        &target,
        "--connections",
        "2",
        "--duration",
        "300ms",
    ]);
    let out = run(&cfg).await.unwrap_or_else(|e| panic!("{e}"));
    let r = &out.report;
    assert!(r.errors.connection > 0);
    assert_eq!(r.totals.responses, 0);
    assert!(!r.failures(true).is_empty());
    assert!(r.failures(false).is_empty());
}
