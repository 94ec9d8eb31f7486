//! Hostile HTTP clients, spoken byte by byte over raw TCP, against the router
//! (in-process), a model server in-process with short client timeouts, and a real
//! model-server process: slowloris, oversized headers and bodies, bodies that never
//! end, request smuggling through conflicting framing, and absolute-form URIs or odd
//! `Host` headers. Each test pins what hyper and our handlers actually answer, so a
//! dependency upgrade or a refactor that weakens a defence fails here.

mod support;

use abgate_model_server::ServerConfig;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Client time limits given to the router and the in-process arm.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);
/// Body limit given to the router and the in-process arm.
const SMALL_BODY_LIMIT: usize = 64 * 1024;
/// How long a test waits for the server to act before calling it a failure.
const GENEROUS: Duration = Duration::from_secs(5);

fn client_tables() -> String {
    format!(
        "[client]\nheader_timeout_ms = {0}\nbody_timeout_ms = {0}\n",
        CLIENT_TIMEOUT.as_millis()
    )
}

/// The router in-process in front of `arm`, with short client timeouts and a small
/// body limit.
async fn hostile_router(arm: &ArmProcess) -> RouterHandle {
    RouterHandle::start(&router_toml(
        &[("best_model", &arm.url, 1.0)],
        &format!("body_limit_bytes = {SMALL_BODY_LIMIT}"),
        &client_tables(),
    ))
    .await
}

/// A model server running in this process with short client timeouts.
struct InProcessArm {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
}

impl InProcessArm {
    async fn start() -> InProcessArm {
        let text = format!(
            "variant = \"best_model\"\nlisten = \"127.0.0.1:0\"\nmodel_dir = \"{}\"\n\
             header_timeout_ms = {1}\nbody_timeout_ms = {1}\nbody_limit_bytes = {SMALL_BODY_LIMIT}\n\
             workers = 1\ninference_threads = 1\nshutdown_grace_ms = 500\n",
            repo().join("models").join("best_model").display(),
            CLIENT_TIMEOUT.as_millis()
        );
        let config = ServerConfig::parse(&repo().join("hostile-arm.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(e) = abgate_model_server::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            {
                panic!("in-process arm: {e}");
            }
        });
        wait_ok(
            &format!("http://{addr}/api/health"),
            Duration::from_secs(30),
        )
        .await;
        InProcessArm {
            addr,
            stop: Some(stop),
        }
    }
}

impl Drop for InProcessArm {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn addr_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// What a raw connection saw.
#[derive(Debug)]
struct Exchange {
    /// Every byte the server sent.
    bytes: Vec<u8>,
    /// When the server closed (EOF or reset), if it did within the read window.
    closed_after: Option<Duration>,
    /// When the first byte arrived, if any.
    first_byte_after: Option<Duration>,
}

impl Exchange {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Status codes of every response on the wire, in order.
    fn statuses(&self) -> Vec<u16> {
        let text = self.text();
        let mut out = Vec::new();
        for (i, _) in text.match_indices("HTTP/1.1 ") {
            if i == 0 || text[..i].ends_with("\r\n") {
                if let Some(code) = text.get(i + 9..i + 12).and_then(|c| c.parse().ok()) {
                    out.push(code);
                }
            }
        }
        out
    }

    /// The single response's status; fails the test if there is not exactly one.
    fn status(&self) -> u16 {
        match self.statuses().as_slice() {
            [one] => *one,
            other => panic!("expected one response, got {other:?}: {:.400}", self.text()),
        }
    }

    /// The JSON body of the (first) response.
    fn json(&self) -> Value {
        let text = self.text();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        match (body.find('{'), body.rfind('}')) {
            (Some(start), Some(end)) if start < end => {
                serde_json::from_str(&body[start..=end]).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        }
    }

    fn error_type(&self) -> String {
        self.json()
            .pointer("/error/type")
            .and_then(Value::as_str)
            .unwrap_or("<no JSON error>")
            .to_string()
    }

    fn assert_closed_within(&self, bound: Duration, what: &str) {
        match self.closed_after {
            Some(t) => assert!(t < bound, "{what}: closed only after {t:?}"),
            None => panic!(
                "{what}: connection still open after the read window: {:.400}",
                self.text()
            ),
        }
    }
}

/// Connects to `addr`, writes each `(pause, bytes)` step in order (stopping at the
/// first write error, as a real client would when the server hangs up) and, at the
/// same time, reads everything the server sends until it closes or `read_for` passes.
/// The write side stays open the whole time: the server sees a client that is still
/// there.
async fn exchange(addr: &str, steps: Vec<(Duration, Vec<u8>)>, read_for: Duration) -> Exchange {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let write = async move {
        for (pause, bytes) in steps {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        // Keep the write half (and so the connection) open until the reader is done.
        std::future::pending::<()>().await;
    };
    let read = async move {
        let deadline = tokio::time::Instant::now() + read_for;
        let mut out = Exchange {
            bytes: Vec::new(),
            closed_after: None,
            first_byte_after: None,
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    out.closed_after = Some(started.elapsed());
                    break;
                }
                Ok(Ok(n)) => {
                    out.first_byte_after.get_or_insert(started.elapsed());
                    out.bytes.extend_from_slice(&buf[..n]);
                }
            }
        }
        out
    };
    tokio::select! {
        out = read => out,
        () = write => unreachable!("the writer never finishes"),
    }
}

/// One request written at once.
async fn one_shot(addr: &str, request: impl Into<Vec<u8>>) -> Exchange {
    exchange(addr, vec![(Duration::ZERO, request.into())], GENEROUS * 2).await
}

async fn arm_predictions(arm: &ArmProcess) -> f64 {
    let text = client()
        .get(&format!("{}/metrics", arm.url))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text();
    metric(&text, "predictions_total", &[("variant", "best_model")])
}

/// Trickles a request head one byte every 100 ms, never finishing it.
fn slowloris_steps() -> Vec<(Duration, Vec<u8>)> {
    b"POST /predict HTTP/1.1\r\nHost: localhost\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .map(|b| (Duration::from_millis(100), vec![*b]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected_by_the_header_timeout_while_others_are_served() {
    let arm = ArmProcess::start("best_model").await;
    let router = hostile_router(&arm).await;
    let in_process = InProcessArm::start().await;
    let c = client();
    for (name, addr) in [
        ("router", addr_of(&router.url)),
        ("model server", in_process.addr.clone()),
    ] {
        let attackers: Vec<_> = (0..8)
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move { exchange(&addr, slowloris_steps(), GENEROUS * 2).await })
            })
            .collect();
        // Meanwhile, an honest client is answered promptly, again and again.
        for _ in 0..5 {
            let started = Instant::now();
            let reply = c
                .get(&format!("http://{addr}/api/health"))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(reply.status, 200, "{name}: {}", reply.text());
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{name}: health took {:?} under slowloris",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for attacker in attackers {
            let seen = attacker.await.unwrap_or_else(|e| panic!("{e}"));
            seen.assert_closed_within(GENEROUS, name);
            let closed = seen.closed_after.unwrap_or_default();
            assert!(
                closed >= CLIENT_TIMEOUT - Duration::from_millis(50),
                "{name}: closed after {closed:?}, before the header timeout"
            );
            // hyper answers nothing on a header timeout: it just closes.
            assert!(
                seen.bytes.is_empty(),
                "{name}: unexpected reply {:.200}",
                seen.text()
            );
        }
    }
    router.stop().await;
}

/// A request head with `count` extra headers of `size` bytes each.
fn head_with_headers(count: usize, size: usize) -> Vec<u8> {
    let mut head = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..count {
        head.extend_from_slice(format!("X-Fill-{i}: {}\r\n", "a".repeat(size)).as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_32_kib_or_over_100_fields_get_a_431_and_the_connection_is_closed() {
    let arm = ArmProcess::start("best_model").await;
    let router = hostile_router(&arm).await;
    let in_process = InProcessArm::start().await;
    for (name, addr) in [
        ("router", addr_of(&router.url)),
        ("in-process arm", in_process.addr.clone()),
        ("arm process", addr_of(&arm.url)),
    ] {
        // Under the limit: answered normally.
        let fine = one_shot(&addr, head_with_headers(16, 1024)).await;
        assert_eq!(
            fine.statuses().first(),
            Some(&200),
            "{name}: {:.300}",
            fine.text()
        );
        for (what, head) in [
            ("64 KiB of headers", head_with_headers(64, 1024)),
            ("one 40 KiB header", head_with_headers(1, 40 * 1024)),
            ("150 small headers", head_with_headers(150, 4)),
        ] {
            let seen = one_shot(&addr, head).await;
            assert_eq!(seen.status(), 431, "{name}, {what}: {:.300}", seen.text());
            seen.assert_closed_within(GENEROUS, &format!("{name}, {what}"));
        }
    }
    router.stop().await;
}

fn post_head(path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_100_mb_body_gets_a_json_413_at_once_without_the_body_being_read() {
    let arm = ArmProcess::start("best_model").await;
    let router = hostile_router(&arm).await;
    let in_process = InProcessArm::start().await;
    for (name, addr) in [
        ("router", addr_of(&router.url)),
        ("in-process arm", in_process.addr.clone()),
        ("arm process", addr_of(&arm.url)),
    ] {
        for path in ["/predict", "/feedback"] {
            let mut request = post_head(path, "Content-Length: 100000000\r\n").into_bytes();
            request.extend_from_slice(b"{\"features\"");
            let seen = one_shot(&addr, request).await;
            assert_eq!(seen.status(), 413, "{name} {path}: {:.300}", seen.text());
            assert_eq!(seen.error_type(), "payload_too_large", "{name} {path}");
            // A 413 rather than a 408 from the router and the in-process arm (500 ms
            // body timeout), and well inside the arm process's 10 s body timeout: the
            // declared length alone decided, no body byte was waited for.
            let answered = seen.first_byte_after.unwrap_or(GENEROUS);
            assert!(
                answered < Duration::from_secs(2),
                "{name} {path}: 413 after {answered:?}"
            );
            // hyper cannot drain 100 MB, so it closes the connection after the 413.
            seen.assert_closed_within(GENEROUS, &format!("{name} {path}"));
        }
    }
    router.stop().await;
}

/// A chunked body of `total` bytes in 8 KiB chunks, never terminated.
fn chunked_steps(head: &str, total: usize) -> Vec<(Duration, Vec<u8>)> {
    let mut steps = vec![(Duration::ZERO, head.as_bytes().to_vec())];
    let chunk = vec![b' '; 8 * 1024];
    for _ in 0..total / chunk.len() {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        steps.push((Duration::ZERO, framed));
    }
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_gets_a_json_413() {
    let arm = ArmProcess::start("best_model").await;
    let router = hostile_router(&arm).await;
    let in_process = InProcessArm::start().await;
    for (name, addr, limit) in [
        ("router", addr_of(&router.url), SMALL_BODY_LIMIT),
        ("in-process arm", in_process.addr.clone(), SMALL_BODY_LIMIT),
        ("arm process", addr_of(&arm.url), 1024 * 1024),
    ] {
        let head = post_head("/predict", "Transfer-Encoding: chunked\r\n");
        let seen = exchange(&addr, chunked_steps(&head, 2 * limit), GENEROUS * 2).await;
        assert_eq!(seen.status(), 413, "{name}: {:.300}", seen.text());
        assert_eq!(seen.error_type(), "payload_too_large", "{name}");
        seen.assert_closed_within(GENEROUS, name);
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_gets_a_json_408_from_the_body_timeout() {
    let arm = ArmProcess::start("best_model").await;
    let router = hostile_router(&arm).await;
    let in_process = InProcessArm::start().await;
    for (name, addr) in [
        ("router", addr_of(&router.url)),
        ("in-process arm", in_process.addr.clone()),
    ] {
        for (framing, steps) in [
            (
                "chunked",
                vec![
                    (
                        Duration::ZERO,
                        post_head("/predict", "Transfer-Encoding: chunked\r\n").into_bytes(),
                    ),
                    (Duration::ZERO, b"c\r\n{\"features\":\r\n".to_vec()),
                    (Duration::from_millis(100), b"2\r\n {\r\n".to_vec()),
                ],
            ),
            (
                "content-length",
                vec![(
                    Duration::ZERO,
                    (post_head("/feedback", "Content-Length: 100\r\n") + "{\"predic").into_bytes(),
                )],
            ),
        ] {
            let seen = exchange(&addr, steps, GENEROUS * 2).await;
            assert_eq!(seen.status(), 408, "{name} {framing}: {:.300}", seen.text());
            assert_eq!(seen.error_type(), "request_timeout", "{name} {framing}");
            let answered = seen.first_byte_after.unwrap_or(GENEROUS);
            assert!(
                answered >= CLIENT_TIMEOUT - Duration::from_millis(50) && answered < GENEROUS,
                "{name} {framing}: 408 after {answered:?}"
            );
            seen.assert_closed_within(GENEROUS, &format!("{name} {framing}"));
        }
    }
    router.stop().await;
}

/// A `/predict` request carrying `headers`, whose body is `body` as given.
fn framed(headers: &str, body: &str) -> String {
    format!("POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-User-Id: smuggler\r\n{headers}\r\n{body}")
}

/// A complete second `/predict` request, to be hidden in a first request's body.
fn smuggled() -> String {
    let body = predict_body();
    framed(&format!("Content-Length: {}\r\n", body.len()), &body)
}

/// `body` as one chunk plus the terminating chunk.
fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

/// What must happen to a request with hostile framing.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    /// hyper frames it by `Transfer-Encoding` alone and, as RFC 9112 §6.3 asks, closes
    /// the connection after answering: the first request is served, nothing after it.
    ServedOnceThenClosed,
    /// A 400 that never reaches an arm through the router; `bool`: the connection
    /// must be closed afterwards (hyper's own parse errors always close).
    Refused(bool),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_framing_is_refused_or_closed_and_a_smuggled_request_never_reaches_the_arm() {
    use Framing::*;
    let arm = ArmProcess::start("best_model").await;
    let router = hostile_router(&arm).await;
    let valid = predict_body();
    let hidden = smuggled();
    let cases: Vec<(&str, String, Framing)> = vec![
        (
            "content-length then chunked, a request hidden after the last chunk",
            framed(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    chunked(&valid).len() + hidden.len()
                ),
                &(chunked(&valid) + &hidden),
            ),
            ServedOnceThenClosed,
        ),
        (
            "chunked then a short content-length, a request hidden after the last chunk",
            framed(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &(chunked(&valid) + &hidden),
            ),
            ServedOnceThenClosed,
        ),
        (
            "two different content-lengths",
            framed(
                &format!("Content-Length: {}\r\nContent-Length: 5\r\n", valid.len()),
                &(valid.clone() + &hidden),
            ),
            Refused(true),
        ),
        (
            "a content-length list with two values",
            framed(
                &format!("Content-Length: {}, 5\r\n", valid.len()),
                &(valid.clone() + &hidden),
            ),
            Refused(true),
        ),
        (
            "transfer-encoding chunked, gzip",
            framed("Transfer-Encoding: chunked, gzip\r\n", &chunked(&valid)),
            Refused(true),
        ),
        (
            "transfer-encoding gzip alone",
            framed("Transfer-Encoding: gzip\r\n", &chunked(&valid)),
            Refused(true),
        ),
        (
            "transfer-encoding with a space before the colon",
            framed(
                &format!(
                    "Transfer-Encoding : chunked\r\nContent-Length: {}\r\n",
                    valid.len()
                ),
                &valid,
            ),
            Refused(true),
        ),
        (
            "transfer-encoding folded onto a continuation line",
            framed("Transfer-Encoding:\r\n chunked\r\n", &chunked(&valid)),
            Refused(true),
        ),
        (
            "chunked on HTTP/1.0",
            framed("Transfer-Encoding: chunked\r\n", &chunked(&valid))
                .replacen("HTTP/1.1", "HTTP/1.0", 1),
            Refused(true),
        ),
        (
            "a chunk size with a sign",
            framed(
                "Transfer-Encoding: chunked\r\n",
                &format!("+{:x}\r\n{valid}\r\n0\r\n\r\n", valid.len()),
            ),
            Refused(true),
        ),
        (
            "transfer-encoding gzip, chunked (a coding nobody decodes)",
            framed("Transfer-Encoding: gzip, chunked\r\n", &chunked(&valid)),
            Refused(false),
        ),
        (
            "two transfer-encoding lines, chunked twice",
            framed(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                &chunked(&chunked(&valid)),
            ),
            Refused(false),
        ),
    ];
    let mut failures = Vec::new();
    for (name, addr) in [
        ("router", addr_of(&router.url)),
        ("arm process", addr_of(&arm.url)),
    ] {
        for (case, request, expect) in &cases {
            let before = arm_predictions(&arm).await;
            let read_for = match expect {
                Refused(false) => Duration::from_secs(2),
                _ => GENEROUS * 2,
            };
            let seen = exchange(
                &addr,
                vec![(Duration::ZERO, request.clone().into_bytes())],
                read_for,
            )
            .await;
            let moved = arm_predictions(&arm).await - before;
            let statuses = seen.statuses();
            let what = format!(
                "{name}, {case}: statuses {statuses:?}, closed {:?}, arm moved by {moved}",
                seen.closed_after
            );
            let (status, may_move, must_close) = match expect {
                ServedOnceThenClosed => (200, 1.0, true),
                // Through the router a refused request never reaches the arm; sent to
                // the arm directly it may at most be counted once, as rejected.
                Refused(close) => (400, if name == "router" { 0.0 } else { 1.0 }, *close),
            };
            if statuses != [status] {
                failures.push(format!(
                    "{what}: expected exactly one {status}: {:.300}",
                    seen.text()
                ));
            }
            if moved > may_move {
                failures.push(format!("{what}: reached the arm too often"));
            }
            if must_close && seen.closed_after.is_none() {
                failures.push(format!("{what}: the connection stayed open"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    router.stop().await;
}

/// A TCP listener that only counts the connections it receives.
async fn decoy() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_uris_and_odd_host_headers_reach_only_the_configured_arm() {
    let arm = ArmProcess::start("best_model").await;
    let router = hostile_router(&arm).await;
    let addr = addr_of(&router.url);
    let (decoy_addr, decoy_hits) = decoy().await;
    let body = predict_body();
    let predict = |target: &str, host_lines: &str| {
        format!(
            "POST {target} HTTP/1.1\r\n{host_lines}Content-Type: application/json\r\nX-User-Id: u\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let before = arm_predictions(&arm).await;
    let predictions = [
        predict(
            &format!("http://{decoy_addr}/predict"),
            &format!("Host: {decoy_addr}\r\n"),
        ),
        predict("/predict", "Host: 127.0.0.1:1\r\n"),
        predict("/predict", &format!("Host: {decoy_addr}\r\n")),
        predict(
            "http://127.0.0.1:1/predict",
            &format!("Host: {decoy_addr}\r\nHost: 127.0.0.1:1\r\n"),
        ),
        predict("/predict", "Host: \r\n"),
        predict("/predict", ""),
        predict(
            "/predict",
            &format!("Host: {decoy_addr}\r\nX-Forwarded-Host: {decoy_addr}\r\nForwarded: host={decoy_addr}\r\n"),
        ),
    ];
    for request in &predictions {
        let seen = one_shot(&addr, request.clone()).await;
        let first_line = request.lines().next().unwrap_or_default();
        assert_eq!(seen.status(), 200, "{first_line}: {:.300}", seen.text());
        assert!(
            seen.text().contains("x-variant: best_model"),
            "{first_line}: {:.300}",
            seen.text()
        );
    }
    let moved = arm_predictions(&arm).await - before;
    assert_eq!(
        moved,
        predictions.len() as f64,
        "the configured arm served each"
    );

    // The router's own routes answer for any authority; nothing is proxied.
    let own = [
        ("GET http://other/metrics HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n", 200, "abgate_arm_weight"),
        (
            &*format!("GET http://{decoy_addr}/api/health HTTP/1.1\r\nHost: {decoy_addr}\r\nConnection: close\r\n\r\n"),
            200,
            "\"arms\"",
        ),
        (
            &*format!("CONNECT {decoy_addr} HTTP/1.1\r\nHost: {decoy_addr}\r\nConnection: close\r\n\r\n"),
            404,
            "not_found",
        ),
        ("OPTIONS * HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n", 404, "not_found"),
    ];
    for (request, status, needle) in own {
        let seen = one_shot(&addr, request).await;
        let first_line = request.lines().next().unwrap_or_default();
        assert_eq!(
            seen.statuses().first(),
            Some(&status),
            "{first_line}: {:.300}",
            seen.text()
        );
        assert!(
            seen.text().contains(needle),
            "{first_line}: {:.300}",
            seen.text()
        );
    }
    assert_eq!(
        decoy_hits.load(Ordering::SeqCst),
        0,
        "the router connected to a host named by the client"
    );
    router.stop().await;
}
