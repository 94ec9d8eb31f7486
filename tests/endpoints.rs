//! Arms with many endpoints: requests spread over an arm's endpoints by the power of
//! two choices, an endpoint that dies is dropped from the rotation while its arm stays
//! up (no user changes arm), and a host name is resolved to its addresses.

mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A stub endpoint that counts the predictions it answers.
struct Counting {
    url: String,
    port: u16,
    hits: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Counting {
    async fn start() -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(abgate_common::http::serve(
            listener,
            move |req: Request<Incoming>| {
                let counted = Arc::clone(&counted);
                async move {
                    if req.uri().path() != "/api/health" {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Response::new(Full::new(Bytes::from_static(b"{\"prediction\": 1.0}")))
                }
            },
            async {
                let _ = stopped.await;
            },
            abgate_common::http::ServeOptions {
                shutdown_grace: Duration::from_millis(50),
                linger: Duration::ZERO,
                ..Default::default()
            },
        ));
        Counting {
            url: format!("http://127.0.0.1:{port}"),
            port,
            hits,
            stop: Some(stop),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn arm_with_urls(name: &str, urls: &[&str], weight: f64) -> String {
    let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[[arms]]\nname = \"{name}\"\nurls = [{}]\nweight = {weight}\n",
        list.join(", ")
    )
}

fn config(arms: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nfailover = true\n[experiment]\nname = \"t\"\nsalt = \"s\"\n{arms}\
         [health]\ninterval_ms = 100\ntimeout_ms = 5000\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\
         [upstream]\nresolve_interval_ms = 100\nconnect_timeout_ms = 5000\n[reload]\npoll_interval_ms = 50\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arms_requests_spread_over_its_endpoints_and_a_dead_one_leaves_the_rotation() {
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        endpoints.push(Counting::start().await);
    }
    let other = Counting::start().await;
    let urls: Vec<&str> = endpoints.iter().map(|e| e.url.as_str()).collect();
    let arms = format!(
        "{}{}",
        arm_with_urls("best_model", &urls, 1.0),
        arm_with_urls("candidate_model", &[other.url.as_str()], 1.0)
    );
    let router = RouterHandle::start(&config(&arms)).await;
    let c = client();
    // Users of best_model only, so every request lands on its endpoints.
    let split = abgate_router::assignment::Split::new(&[1.0, 1.0]).unwrap_or_else(|| panic!());
    let users: Vec<String> = (0..2000)
        .map(|i| format!("user-{i}"))
        .filter(|u| split.pick(abgate_router::assignment::position("s", u)) == 0)
        .take(300)
        .collect();
    for user in &users {
        let r = router.predict(&c, user).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-variant"), Some("best_model"));
    }
    let hits: Vec<usize> = endpoints.iter().map(Counting::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), 300, "{hits:?}");
    assert!(
        hits.iter().all(|&h| h >= 30),
        "every endpoint takes a share: {hits:?}"
    );
    let health = router.get_json(&c, "/api/health").await;
    assert_eq!(
        health["arms"]["best_model"]["endpoints"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "{health}"
    );
    // One endpoint dies: its arm stays up, nobody moves to the candidate, nothing fails.
    endpoints[1].kill();
    // It has stopped listening, and its drain (50 ms of grace for open connections)
    // ends, before counting.
    let dead_addr = format!("127.0.0.1:{}", endpoints[1].port);
    eventually(
        "the killed endpoint stops listening",
        Duration::from_secs(10),
        || {
            let addr = dead_addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_err() }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead_before = endpoints[1].hits();
    for user in &users {
        let r = router.predict(&c, user).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-variant"),
            Some("best_model"),
            "{user} moved arm"
        );
        assert!(r.header("x-assigned-variant").is_none());
    }
    assert_eq!(
        endpoints[1].hits(),
        dead_before,
        "the dead endpoint got requests"
    );
    assert_eq!(other.hits(), 0, "no failover to the other arm");
    eventually(
        "the endpoint is reported down",
        Duration::from_secs(15),
        || {
            let (c, url) = (c.clone(), router.url.clone());
            async move {
                let text = c
                    .get(&format!("{url}/metrics"))
                    .await
                    .map(|r| r.text())
                    .unwrap_or_default();
                metric(
                    &text,
                    "abgate_arm_endpoints",
                    &[("variant", "best_model"), ("state", "down")],
                ) == 1.0
                    && metric(
                        &text,
                        "abgate_arm_endpoints",
                        &[("variant", "best_model"), ("state", "up")],
                    ) == 2.0
            }
        },
    )
    .await;
    let health = router.get_json(&c, "/api/health").await;
    assert_eq!(health["arms"]["best_model"]["status"], "up");
    let down: Vec<&serde_json::Value> = health["arms"]["best_model"]["endpoints"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["status"] == "down").collect())
        .unwrap_or_default();
    assert_eq!(down.len(), 1, "{health}");
    assert_eq!(
        down[0]["address"],
        format!("127.0.0.1:{}", endpoints[1].port)
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_resolved_to_its_addresses_and_unreachable_ones_are_skipped() {
    let endpoint = Counting::start().await;
    // `localhost` may resolve to ::1 as well, where nothing listens: that address must
    // be marked down and skipped, never failing a request.
    let url = format!("http://localhost:{}", endpoint.port);
    let router =
        RouterHandle::start(&config(&arm_with_urls("best_model", &[url.as_str()], 1.0))).await;
    let c = client();
    for i in 0..100 {
        let r = router.predict(&c, &format!("u{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(endpoint.hits(), 100);
    let health = router.get_json(&c, "/api/health").await;
    let addresses: Vec<String> = health["arms"]["best_model"]["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        addresses.contains(&format!("127.0.0.1:{}", endpoint.port)),
        "{addresses:?}"
    );
    router.stop().await;
}
