//! Differential fuzzing of the fast path's request-head reader against hyper's: random
//! heads, valid and subtly invalid, go to both. A head the fast path refuses as
//! malformed must be one hyper refuses too, a head the fast path serves must be one
//! hyper serves, and both must forward the same end-to-end header set to the arm.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// Failing cases are printed (and pinned below when found), not saved to a file.

use abgate_common::ErrorKind;
use abgate_router::fastpath::request::{inspect, Inspection};
use abgate_router::upstream::h1::write_request_head;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Header names and values as hyper parsed them.
type Seen = Vec<(String, Vec<u8>)>;

/// What hyper made of a head.
#[derive(Debug)]
enum HyperSaw {
    /// It called the service with these headers.
    Served(Seen),
    /// It answered with this status without calling the service.
    Refused(u16),
}

fn hyper_parse(raw: Vec<u8>) -> HyperSaw {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
        let recorded = Arc::clone(&seen);
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let recorded = Arc::clone(&recorded);
            async move {
                let headers = req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect();
                *recorded.lock().unwrap() = Some(headers);
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
            }
        });
        let conn = http1::Builder::new()
            .half_close(true)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(server), service);
        let serving = tokio::spawn(conn);
        client.write_all(&raw).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut answer),
        )
        .await;
        serving.abort();
        if let Some(headers) = seen.lock().unwrap().take() {
            return HyperSaw::Served(headers);
        }
        let status = String::from_utf8_lossy(&answer)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        HyperSaw::Refused(status)
    })
}

/// The end-to-end headers a request forwards to an arm, lowercased and sorted.
fn forwarded<'a>(headers: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<String> {
    let mut out = Vec::new();
    write_request_head(&mut out, "POST", b"/", "arm", headers, b"id", 0);
    let text = String::from_utf8_lossy(&out).into_owned();
    let mut lines: Vec<String> = text
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, v)) => format!("{}:{}", n.to_ascii_lowercase(), v.trim()),
            None => l.to_string(),
        })
        .collect();
    lines.sort();
    lines
}

fn header_line() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("X-Trace".to_string()),
        Just("content-type".to_string()),
        Just("Connection".to_string()),
        Just("keep-alive".to_string()),
        Just("TE".to_string()),
        Just("x-request-id".to_string()),
        Just("x-override-token".to_string()),
        Just("Proxy-Authorization".to_string()),
        "[a-zA-Z][a-zA-Z0-9-]{0,8}",
        // Names with characters a token may not hold.
        "[a-z]{1,3}[ \"(),/:;<=>?@\\[\\]{}][a-z]{0,3}",
    ];
    let value = prop_oneof![
        Just("close".to_string()),
        Just("keep-alive, x-trace".to_string()),
        Just("application/json".to_string()),
        "[ -~]{0,12}",
        "[ -~\t]{0,6}[\u{0}\u{7f}\u{1}][ -~]{0,3}",
    ];
    let ending = prop_oneof![8 => Just("\r\n"), 1 => Just("\n")];
    (name, value, ending).prop_map(|(n, v, e)| format!("{n}: {v}{e}"))
}

fn head() -> impl Strategy<Value = String> {
    let method = prop_oneof![8 => Just("POST"), 1 => Just("GET"), 1 => Just("PO ST")];
    let target =
        prop_oneof![8 => Just("/predict"), 1 => Just("/predict?x=1"), 1 => Just("/pre dict")];
    let version = prop_oneof![8 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0"), 1 => Just("HTTP/1.1x")];
    let length = prop_oneof![
        6 => Just("content-length: 2\r\n".to_string()),
        1 => Just("content-length: +2\r\n".to_string()),
        1 => Just("content-length: 2\r\ncontent-length: 3\r\n".to_string()),
        1 => Just("content-length: 2 \r\n".to_string()),
        1 => Just(String::new()),
    ];
    let user = prop_oneof![8 => Just("x-user-id: u1\r\n"), 1 => Just("")];
    (
        method,
        target,
        version,
        user,
        proptest::collection::vec(header_line(), 0..6),
        length,
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(m, t, v, u, lines, l, fold)| {
            let mut head = format!("{m} {t} {v}\r\nhost: front\r\n{u}");
            for line in lines {
                head.push_str(&line);
            }
            if fold {
                head.push_str(" folded continuation\r\n");
            }
            head.push_str(&l);
            head.push_str("\r\n{}");
            head
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_fast_path_and_hyper_accept_refuse_and_forward_request_heads_alike(raw in head()) {
        let bytes = raw.as_bytes();
        let decision = inspect(bytes, 32 * 1024, 1024 * 1024);
        match decision {
            Inspection::Partial | Inspection::Hyper => {}
            Inspection::Reject(kind) => {
                prop_assert_eq!(kind, ErrorKind::MalformedRequest);
                match hyper_parse(bytes.to_vec()) {
                    HyperSaw::Refused(status) => prop_assert!(
                        status == 400 || status == 0,
                        "hyper answered {} to {:?}", status, raw
                    ),
                    HyperSaw::Served(h) => prop_assert!(
                        false,
                        "the fast path refused a head hyper served: {:?} ({:?})", raw, h
                    ),
                }
            }
            Inspection::Fast(plan) => match hyper_parse(bytes.to_vec()) {
                HyperSaw::Served(headers) => {
                    let fast = forwarded(
                        plan.headers
                            .iter()
                            .map(|(n, v)| (&bytes[n.clone()], &bytes[v.clone()])),
                    );
                    let via_hyper = forwarded(
                        headers.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())),
                    );
                    prop_assert_eq!(fast, via_hyper, "{:?}", raw);
                }
                HyperSaw::Refused(status) => prop_assert!(
                    false,
                    "the fast path served a head hyper refused with {}: {:?}", status, raw
                ),
            },
        }
    }
}
