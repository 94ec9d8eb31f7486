//! The router's forwarding fast path at the byte level: a raw client connection in
//! front, scripted arms behind that answer with the framings and connection habits
//! real servers have (chunked bodies, close-delimited bodies, idle closes), and the
//! hand-off to hyper in the middle of a connection.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a scripted arm does with the n-th `/predict` it receives on a connection.
#[derive(Clone, Copy)]
enum Script {
    /// `Content-Length` JSON, connection kept.
    Length,
    /// The same JSON as two chunks, connection kept.
    Chunked,
    /// No length: the body ends when the arm closes the connection.
    UntilClose,
    /// Answers, then closes the connection while idle (a short keep-alive timeout).
    LengthThenIdleClose,
    /// A JSON 422 in the model server's error shape.
    InvalidInput,
}

/// A raw-TCP arm: answers `/api/health` with 200 and `/predict` per its script, and
/// records every `/predict` head it receives and how many connections it accepted.
struct ScriptedArm {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
    predict_connections: Arc<Mutex<usize>>,
    /// Connections it closed while idle (`LengthThenIdleClose`).
    idle_closes: Arc<Mutex<usize>>,
}

const ANSWER: &str = r#"{"variant":"scripted","quality":5.5}"#;

impl ScriptedArm {
    async fn start(script: Script) -> ScriptedArm {
        let (listener, url) = listen().await;
        let heads = Arc::new(Mutex::new(Vec::new()));
        let predict_connections = Arc::new(Mutex::new(0));
        let idle_closes = Arc::new(Mutex::new(0));
        let (h, n, closes) = (
            Arc::clone(&heads),
            Arc::clone(&predict_connections),
            Arc::clone(&idle_closes),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_scripted(
                    stream,
                    script,
                    Arc::clone(&h),
                    Arc::clone(&n),
                    Arc::clone(&closes),
                ));
            }
        });
        ScriptedArm {
            url,
            heads,
            predict_connections,
            idle_closes,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }

    fn connections(&self) -> usize {
        self.predict_connections.lock().map(|n| *n).unwrap_or(0)
    }

    fn idle_closes(&self) -> usize {
        self.idle_closes.lock().map(|n| *n).unwrap_or(0)
    }
}

async fn serve_scripted(
    mut stream: TcpStream,
    script: Script,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
    idle_closes: Arc<Mutex<usize>>,
) {
    let mut buf = Vec::new();
    let mut counted = false;
    loop {
        let Some((head, body_len)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        buf.drain(..head.len() + body_len);
        if head.starts_with("GET /api/health") {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
            if stream.write_all(ok).await.is_err() {
                return;
            }
            continue;
        }
        if !counted {
            counted = true;
            if let Ok(mut n) = connections.lock() {
                *n += 1;
            }
        }
        if let Ok(mut h) = heads.lock() {
            h.push(head);
        }
        let (half, rest) = ANSWER.split_at(10);
        let (response, close) = match script {
            Script::Length | Script::LengthThenIdleClose => (
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                    ANSWER.len()
                ),
                false,
            ),
            Script::Chunked => (
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{half}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
                    half.len(),
                    rest.len()
                ),
                false,
            ),
            Script::UntilClose => (
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{ANSWER}"),
                true,
            ),
            Script::InvalidInput => {
                let body = r#"{"error":{"type":"invalid_input","message":"alcohol is missing"}}"#;
                (
                    format!(
                        "HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    ),
                    false,
                )
            }
        };
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
        if matches!(script, Script::LengthThenIdleClose) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(stream);
            if let Ok(mut n) = idle_closes.lock() {
                *n += 1;
            }
            return;
        }
    }
}

/// Reads one request (head text and body length) into `buf`; `None` on close.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let body_len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            if buf.len() >= n + body_len {
                return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), body_len));
            }
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// A response as the client received it: status, headers (lower-case names), body.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads more of the response; 0 on close.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = vec![0u8; 8192];
    let k = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
        .await
        .unwrap_or_else(|_| panic!("no response within 10 s"))
        .unwrap_or(0);
    buf.extend_from_slice(&chunk[..k]);
    k
}

/// Reads one response from `buf`/`stream`, decoding any framing the router may use.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Raw {
    loop {
        let parsed = {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut slots);
            match res.parse(buf) {
                Ok(httparse::Status::Complete(n)) => Some((
                    n,
                    res.code.unwrap_or(0),
                    res.headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>(),
                )),
                Ok(httparse::Status::Partial) => None,
                Err(e) => panic!(
                    "not an HTTP response: {e}: {:?}",
                    String::from_utf8_lossy(buf)
                ),
            }
        };
        let Some((n, status, headers)) = parsed else {
            assert!(read_more(stream, buf).await > 0, "closed before a response");
            continue;
        };
        let raw = |body: Vec<u8>| Raw {
            status,
            headers: headers.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < n + len {
                assert!(read_more(stream, buf).await > 0, "closed mid-body");
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return raw(body);
        }
        if get("transfer-encoding").as_deref() == Some("chunked") {
            let mut body = Vec::new();
            let mut at = n;
            loop {
                match httparse::parse_chunk_size(&buf[at..]) {
                    Ok(httparse::Status::Complete((line, 0))) => {
                        while buf.len() < at + line + 2 {
                            assert!(read_more(stream, buf).await > 0, "closed mid-body");
                        }
                        buf.drain(..at + line + 2);
                        return raw(body);
                    }
                    Ok(httparse::Status::Complete((line, size))) => {
                        let end = at + line + size as usize;
                        if buf.len() < end + 2 {
                            assert!(read_more(stream, buf).await > 0, "closed mid-body");
                            continue;
                        }
                        body.extend_from_slice(&buf[at + line..end]);
                        at = end + 2;
                    }
                    _ => {
                        assert!(read_more(stream, buf).await > 0, "closed mid-body");
                    }
                }
            }
        }
        while read_more(stream, buf).await > 0 {}
        let body = buf[n..].to_vec();
        buf.clear();
        return raw(body);
    }
}

fn predict_request(user: &str, extra: &str) -> String {
    let body = predict_body();
    format!(
        "POST /predict HTTP/1.1\r\nhost: front.example\r\ncontent-type: application/json\r\nx-user-id: {user}\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn router_to(arm: &ScriptedArm) -> RouterHandle {
    RouterHandle::start(&router_toml(&[("best_model", &arm.url, 1.0)], "", "")).await
}

/// A raw client connection and the bytes read from it but not yet parsed.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Writes `request` (ignoring a close by the peer mid-write) and reads one answer.
    async fn send(&mut self, request: &str) -> Raw {
        self.write(request).await;
        self.read().await
    }

    async fn write(&mut self, request: &str) {
        let _ = self.stream.write_all(request.as_bytes()).await;
    }

    async fn read(&mut self) -> Raw {
        read_response(&mut self.stream, &mut self.buf).await
    }
}

async fn connect(router: &RouterHandle) -> Client {
    let stream = TcpStream::connect(router.url.trim_start_matches("http://"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Client {
        stream,
        buf: Vec::new(),
    }
}

#[tokio::test]
async fn a_chunked_arm_response_reaches_the_client_whole_and_the_arm_connection_is_reused() {
    let arm = ScriptedArm::start(Script::Chunked).await;
    let router = router_to(&arm).await;
    let mut client = connect(&router).await;
    for _ in 0..3 {
        let r = client.send(&predict_request("user-1", "")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, ANSWER);
        assert_eq!(r.header("x-variant"), Some("best_model"));
    }
    assert_eq!(arm.heads().len(), 3);
    assert_eq!(
        arm.connections(),
        1,
        "one upstream connection for one client connection"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_close_delimited_arm_response_is_relayed_and_the_client_told_to_close() {
    let arm = ScriptedArm::start(Script::UntilClose).await;
    let router = router_to(&arm).await;
    let mut client = connect(&router).await;
    let r = client.send(&predict_request("user-1", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, ANSWER);
    assert_eq!(r.header("connection"), Some("close"));
    router.stop().await;
}

#[tokio::test]
async fn an_arm_that_closed_an_idle_connection_costs_the_user_neither_an_error_nor_a_failover() {
    let arm = ScriptedArm::start(Script::LengthThenIdleClose).await;
    let other = ScriptedArm::start(Script::Length).await;
    let text = router_toml(
        &[
            ("best_model", &arm.url, 90.0),
            ("candidate_model", &other.url, 10.0),
        ],
        "failover = true",
        "",
    );
    let router = RouterHandle::start(&text).await;
    let mut client = connect(&router).await;
    for sent in 1..=3 {
        let r = client.send(&predict_request("user-1", "")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-variant"), Some("best_model"));
        assert_eq!(r.header("x-assigned-variant"), None);
        // The arm has closed the idle connection (its FIN is on the router's socket)
        // before the next request: however late a busy machine runs the arm's task.
        eventually(
            "the arm closes the idle connection",
            Duration::from_secs(10),
            || {
                let closed = arm.idle_closes();
                async move { closed == sent }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        arm.connections(),
        3,
        "each request needed a fresh connection"
    );
    assert!(other.heads().is_empty(), "no request failed over");
    let text = router.metrics(&client_http()).await;
    let errors = metric(
        &text,
        "prediction_errors_total",
        &[("variant", "best_model"), ("error_type", "upstream_error")],
    );
    assert_eq!(errors, 0.0);
    router.stop().await;
}

fn client_http() -> abgate_common::client::HttpClient {
    client()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let arm = ScriptedArm::start(Script::Length).await;
    let router = router_to(&arm).await;
    let mut client = connect(&router).await;
    let both = format!(
        "{}{}",
        predict_request("user-1", "x-request-id: first\r\n"),
        predict_request("user-2", "x-request-id: second\r\n")
    );
    let a = client.send(&both).await;
    let b = client.read().await;
    assert_eq!(
        (a.header("x-request-id"), b.header("x-request-id")),
        (Some("first"), Some("second"))
    );
    assert_eq!((a.status, b.status), (200, 200));
    router.stop().await;
}

#[tokio::test]
async fn the_arm_sees_the_clients_end_to_end_headers_but_not_the_hop_by_hop_ones_or_the_override_token(
) {
    let arm = ScriptedArm::start(Script::Length).await;
    let router = router_to(&arm).await;
    let mut client = connect(&router).await;
    let extra = "x-trace: abc\r\nx-override-token: secret\r\nkeep-alive: timeout=5\r\nconnection: keep-alive\r\nx-request-id: req-42\r\n";
    let r = client.send(&predict_request("user-7", extra)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    let heads = arm.heads();
    let head = heads
        .first()
        .map(String::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let arm_host = arm.url.trim_start_matches("http://");
    assert!(head.starts_with("post /predict http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: {arm_host}\r\n")), "{head}");
    for kept in ["x-trace: abc", "x-user-id: user-7", "x-request-id: req-42"] {
        assert!(head.contains(kept), "{kept} missing from {head}");
    }
    for dropped in [
        "x-override-token",
        "keep-alive",
        "connection:",
        "front.example",
    ] {
        assert!(!head.contains(dropped), "{dropped} forwarded in {head}");
    }
    router.stop().await;
}

#[tokio::test]
async fn a_client_that_asks_to_close_gets_its_answer_and_then_the_close() {
    let arm = ScriptedArm::start(Script::Length).await;
    let router = router_to(&arm).await;
    let mut client = connect(&router).await;
    let r = client
        .send(&predict_request("user-1", "connection: close\r\n"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), client.stream.read(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("the router kept the connection open"))
        .unwrap_or(0);
    assert_eq!(n, 0);
    router.stop().await;
}

#[tokio::test]
async fn a_connection_can_move_from_the_fast_path_to_hyper_between_requests() {
    let arm = ScriptedArm::start(Script::Length).await;
    let router = router_to(&arm).await;
    let mut client = connect(&router).await;
    assert_eq!(
        client.send(&predict_request("user-1", "")).await.status,
        200
    );
    let config = client
        .send("GET /api/config HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert_eq!(config.status, 200);
    assert!(config.body.contains("\"experiment\""), "{}", config.body);
    // A /predict without X-User-Id is hyper's (the user id is in the body).
    let body = r#"{"user_id":"user-1","features":{}}"#;
    let request = format!(
        "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = client.send(&request).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-variant"), Some("best_model"));
    assert_eq!(arm.heads().len(), 2);
    router.stop().await;
}

#[tokio::test]
async fn a_body_that_never_completes_is_answered_408_and_counted() {
    let arm = ScriptedArm::start(Script::Length).await;
    let text = router_toml(
        &[("best_model", &arm.url, 1.0)],
        "",
        "[client]\nbody_timeout_ms = 300\n",
    );
    let router = RouterHandle::start(&text).await;
    let mut client = connect(&router).await;
    let head =
        "POST /predict HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\ncontent-length: 100\r\n\r\n{\"feat";
    let r = client.send(head).await;
    assert_eq!(r.status, 408);
    assert!(r.body.contains("\"request_timeout\""), "{}", r.body);
    let text = router.metrics(&client_http()).await;
    assert_eq!(
        metric(
            &text,
            "prediction_errors_total",
            &[("variant", "unassigned"), ("error_type", "request_timeout")]
        ),
        1.0
    );
    assert!(arm.heads().is_empty());
    router.stop().await;
}

#[tokio::test]
async fn an_arms_json_error_passes_through_and_is_counted_by_its_type() {
    let arm = ScriptedArm::start(Script::InvalidInput).await;
    let router = router_to(&arm).await;
    let mut client = connect(&router).await;
    let r = client.send(&predict_request("user-1", "")).await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("alcohol is missing"), "{}", r.body);
    assert_eq!(r.header("x-variant"), Some("best_model"));
    // Counted once the router has recorded it: the client may read its answer a moment
    // before that.
    let c = client_http();
    eventually(
        "the arm's error is counted by its type",
        Duration::from_secs(10),
        || {
            let (c, r) = (c.clone(), &router);
            async move {
                let text = r.metrics(&c).await;
                metric(
                    &text,
                    "prediction_errors_total",
                    &[("variant", "best_model"), ("error_type", "invalid_input")],
                ) == 1.0
            }
        },
    )
    .await;
    router.stop().await;
}

#[tokio::test]
async fn arm_connections_follow_concurrency_not_the_number_of_clients() {
    let arm = ScriptedArm::start(Script::Length).await;
    let text = router_toml(&[("best_model", &arm.url, 1.0)], "workers = 1", "");
    let router = RouterHandle::start(&text).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut client = connect(&router).await;
        assert_eq!(
            client
                .send(&predict_request(&format!("user-{i}"), ""))
                .await
                .status,
            200
        );
        clients.push(client); // still open: its connection is not what holds the arm's
    }
    assert_eq!(arm.heads().len(), 20);
    assert_eq!(
        arm.connections(),
        1,
        "20 clients one after another share one warm arm connection"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_malformed_or_oversized_head_gets_a_counted_json_error_and_the_connection_closes() {
    let arm = ScriptedArm::start(Script::Length).await;
    let router = router_to(&arm).await;
    let big = format!(
        "POST /predict HTTP/1.1\r\nx-user-id: u\r\nx-pad: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let cases = [
        (
            "POST /predict HTTP/1.1\r\nx-user-id : u\r\ncontent-length: 2\r\n\r\n{}".to_string(),
            400,
            "malformed_request",
        ),
        (
            "POST /predict HTTP/1.1\r\nx-user-id: u\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\n{}".to_string(),
            400,
            "malformed_request",
        ),
        (big, 431, "headers_too_large"),
    ];
    for (request, status, kind) in &cases {
        let mut client = connect(&router).await;
        // The peer may close while a large head is still being written.
        let r = client.send(request).await;
        assert_eq!(r.status, *status, "{}", r.body);
        assert!(r.body.contains(&format!("\"{kind}\"")), "{}", r.body);
        assert_eq!(r.header("connection"), Some("close"));
    }
    let text = router.metrics(&client_http()).await;
    for (kind, n) in [("malformed_request", 2.0), ("headers_too_large", 1.0)] {
        assert_eq!(
            metric(
                &text,
                "prediction_errors_total",
                &[("variant", "unassigned"), ("error_type", kind)]
            ),
            n,
            "{kind}"
        );
    }
    assert!(arm.heads().is_empty());
    router.stop().await;
}
