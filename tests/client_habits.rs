//! Clients with habits a server must survive: one that sends its whole oversized body
//! before reading (Python's `urllib`/`http.client`), which must still read the 413,
//! from the router and from an arm; and clients that never read their answer, which
//! must not hold the router's concurrency slots past the send timeout.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Like `urllib.request.urlopen` with a 4 MiB body: writes the head and the whole
/// body, and only then reads. Returns the status and the body of the answer.
fn send_all_then_read(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let body = vec![b' '; 4 * 1024 * 1024];
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-user-id: u1\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .unwrap_or_else(|e| panic!("writing the head: {e}"));
    stream
        .write_all(&body)
        .unwrap_or_else(|e| panic!("the server cut the client off mid-body: {e}"));
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or_default())
}

async fn reads_the_413(url: &str, path: &'static str) {
    let addr = url.trim_start_matches("http://").to_string();
    let (status, body) = tokio::task::spawn_blocking(move || send_all_then_read(&addr, path))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 413, "{url}{path}: {body}");
    assert_eq!(body["error"]["type"], "payload_too_large", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_whole_body_before_reading_reads_the_413_from_the_router() {
    let arm = StubArm::start(Duration::ZERO, http::StatusCode::OK).await;
    let router = RouterHandle::start(&router_toml(&[("best_model", &arm.url, 1.0)], "", "")).await;
    reads_the_413(&router.url, "/predict").await;
    reads_the_413(&router.url, "/feedback").await;
    let c = client();
    let metrics = router.metrics(&c).await;
    assert!(
        metric(
            &metrics,
            "prediction_errors_total",
            &[
                ("variant", "unassigned"),
                ("error_type", "payload_too_large")
            ]
        ) >= 2.0,
        "the 413s are counted"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_whole_body_before_reading_reads_the_413_from_an_arm() {
    let arm = ArmProcess::start("best_model").await;
    reads_the_413(&arm.url, "/predict").await;
}

/// An arm that answers every `/predict` with a body of `size` bytes.
async fn big_answer_arm(size: usize) -> String {
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let mut seen = Vec::new();
                    // One request per read is enough for these small requests.
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    let body = if seen.starts_with(b"GET /api/health") {
                        b"{}".to_vec()
                    } else if String::from_utf8_lossy(&seen).contains("x-user-id: hog") {
                        let mut b = vec![b' '; size];
                        b[0] = b'{';
                        b[size - 1] = b'}';
                        b
                    } else {
                        b"{\"prediction\":1.0}".to_vec()
                    };
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_cut_after_the_send_timeout_and_free_their_slots() {
    let arm = big_answer_arm(64 * 1024 * 1024).await;
    let router = RouterHandle::start(&router_toml(
        &[("best_model", &arm, 1.0)],
        "max_concurrent_requests = 2",
        "[client]\nsend_timeout_ms = 300\n[upstream]\nrequest_timeout_ms = 60000\n",
    ))
    .await;
    let addr = router.url.trim_start_matches("http://").to_string();
    // Two clients take both slots and never read their 64 MiB answers.
    let mut hogs = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let req = format!(
            "POST /predict HTTP/1.1\r\nhost: x\r\nx-user-id: hog-{i}\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        s.write_all(req.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        hogs.push(s);
    }
    let c = client();
    let started = std::time::Instant::now();
    let mut shed = 0;
    let served = loop {
        let r = c
            .post_json(
                &format!("{}/predict", router.url),
                &[("x-user-id", "patient")],
                "{}".to_string(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if r.status == 200 {
            break started.elapsed();
        }
        assert_eq!(r.status, 503, "{}", r.text());
        shed += 1;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slots were still held after 10 s ({shed} requests shed)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("served after {served:?}, {shed} shed while the non-readers held the slots");
    drop(hogs);
    router.stop().await;
}
