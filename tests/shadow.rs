//! Shadow arms over real model servers and misbehaving stubs: who is mirrored (the
//! seed-2 hash of the key), what is compared (element-wise, the same sums as asking
//! both arms directly), and that nothing a shadow does reaches the client.

mod support;

use abgate_common::client::HttpClient;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The contract's sampling rule, computed independently of the router.
fn sampled(key: &str, sample: f64) -> bool {
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), 2);
    (hash as f64) < sample * 18_446_744_073_709_551_616.0
}

/// A `/predict` body whose features vary with `i`, so predictions differ by user.
fn body_for(i: usize) -> String {
    let alcohol = 8.5 + (i % 60) as f64 * 0.1;
    let sulphates = 0.4 + (i % 17) as f64 * 0.05;
    let features = FEATURES
        .replace("\"alcohol\": 9.4", &format!("\"alcohol\": {alcohol:.2}"))
        .replace(
            "\"sulphates\": 0.56",
            &format!("\"sulphates\": {sulphates:.2}"),
        );
    format!("{{\"features\": {features}}}")
}

fn shadow_table(name: &str, url: &str, extra: &str) -> String {
    format!("[[shadows]]\nname = \"{name}\"\nurl = \"{url}\"\nof = \"best_model\"\n{extra}\n")
}

async fn post(c: &HttpClient, url: &str, user: &str, body: String) -> abgate_common::client::Reply {
    c.post_json(&format!("{url}/predict"), &[("x-user-id", user)], body)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn predictions(reply: &abgate_common::client::Reply) -> Vec<f64> {
    let v = reply.json();
    match v.get("prediction").and_then(serde_json::Value::as_f64) {
        Some(p) => vec![p],
        None => v["predictions"]
            .as_array()
            .unwrap_or_else(|| panic!("no predictions: {}", reply.text()))
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect(),
    }
}

fn histogram_sum(text: &str, name: &str, shadow: &str) -> f64 {
    metric(text, &format!("{name}_sum"), &[("shadow", shadow)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_of_best_compares_half_its_users_with_the_sums_of_asking_both_arms_directly() {
    let best = ArmProcess::start("best_model").await;
    let candidate = ArmProcess::start("candidate_model").await;
    // Room for every copy at once, and all the time they need: how many copies pile up
    // depends on how fast the candidate answers, which on a busy machine is anything.
    // Drops and timeouts have tests of their own (below); here every sampled copy must
    // be compared, so the sums can be checked against asking both arms directly.
    let n = 1_000;
    let text = router_toml(
        &[("best_model", &best.url, 100.0)],
        "",
        &shadow_table(
            "candidate_model",
            &candidate.url,
            &format!("sample = 0.5\ntolerance = 0.25\nmax_in_flight = {n}\ntimeout_ms = 120000"),
        ),
    );
    let router = RouterHandle::start(&text).await;
    let c = client();
    let users: Vec<String> = (0..n).map(|i| format!("shadow-user-{i}")).collect();
    // Eight clients at a time; every answer must come from best_model.
    let mut tasks = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n / 8) {
        let (c, url, chunk) = (c.clone(), router.url.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                let r = post(&c, &url, &format!("shadow-user-{i}"), body_for(i)).await;
                assert_eq!(r.status, 200, "{}", r.text());
                assert_eq!(r.header("x-variant"), Some("best_model"));
                assert_eq!(r.json()["variant"], "best_model", "{}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let expected: Vec<usize> = (0..n).filter(|i| sampled(&users[*i], 0.5)).collect();
    let sigma = (n as f64 * 0.5 * 0.5).sqrt();
    let want = expected.len() as f64;
    // Every copy has an outcome once the candidate has caught up (bounded by the copies'
    // own timeout).
    eventually(
        "every copy has an outcome",
        Duration::from_secs(150),
        || {
            let (c, r) = (c.clone(), &router);
            async move {
                let m = r.metrics(&c).await;
                metric(
                    &m,
                    "abgate_shadow_requests_total",
                    &[("shadow", "candidate_model")],
                ) >= want
            }
        },
    )
    .await;
    let m = router.metrics(&c).await;
    let count = |result: &str| {
        metric(
            &m,
            "abgate_shadow_requests_total",
            &[("shadow", "candidate_model"), ("result", result)],
        )
    };
    let compared = count("compared");
    println!(
        "compared {compared} of {n} (expected {want} by the hash, {} by the share, sigma {sigma:.1})",
        n as f64 * 0.5
    );
    let (dropped, failed) = (
        count("dropped"),
        count("shadow_error") + count("unparseable"),
    );
    assert_eq!(
        compared + dropped + failed,
        want,
        "the hash rule decides exactly who is mirrored"
    );
    assert_eq!(
        (dropped, failed),
        (0.0, 0.0),
        "with room and time for every copy, each one is compared"
    );
    assert!(
        (compared - n as f64 * 0.5).abs() <= 4.0 * sigma,
        "{compared}"
    );
    // Ask both arms directly with the same bodies.
    let mut direct = 0.0;
    for &i in &expected {
        let a = predictions(&post(&c, &best.url, &users[i], body_for(i)).await);
        let b = predictions(&post(&c, &candidate.url, &users[i], body_for(i)).await);
        direct += (a[0] - b[0]).abs();
    }
    let summed = histogram_sum(&m, "abgate_shadow_absolute_difference", "candidate_model");
    println!(
        "sum of |difference|: router {summed:.6}, direct {direct:.6}, mean {:.4}",
        direct / want
    );
    assert!((summed - direct).abs() < 1e-4, "{summed} vs {direct}");
    let agreements = metric(
        &m,
        "abgate_shadow_agreements_total",
        &[("shadow", "candidate_model")],
    );
    assert_eq!(agreements, want);
    let view = router.get_json(&c, "/api/shadows").await;
    let s = &view["shadows"][0];
    assert_eq!(s["name"], "candidate_model");
    assert_eq!(s["of"], "best_model");
    assert_eq!(s["compared"].as_f64(), Some(compared));
    let share = s["agreement_share"].as_f64().unwrap_or(-1.0);
    let p50 = s["absolute_difference"]["p50"].as_f64().unwrap_or(-1.0);
    let p90 = s["absolute_difference"]["p90"].as_f64().unwrap_or(-1.0);
    println!(
        "agreement share {share:.3} (tolerance 0.25), |difference| p50 {p50:.4} p90 {p90:.4}, shadow latency {} s, primary {} s",
        s["shadow_latency_seconds"], s["primary_latency_seconds"]
    );
    assert!((0.0..=1.0).contains(&share), "{view}");
    assert!(0.0 <= p50 && p50 <= p90, "{view}");
    assert!(s["shadow_latency_seconds"].as_f64().is_some(), "{view}");
    assert!(s["primary_latency_seconds"].as_f64().is_some(), "{view}");
    let config = router.get_json(&c, "/api/config").await;
    assert_eq!(config["shadows"][0]["sample"], 0.5, "{config}");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_requests_compare_element_wise() {
    let best = ArmProcess::start("best_model").await;
    let candidate = ArmProcess::start("candidate_model").await;
    let text = router_toml(
        &[("best_model", &best.url, 100.0)],
        "",
        &shadow_table(
            "candidate_model",
            &candidate.url,
            "sample = 1.0\ntolerance = 0.0",
        ),
    );
    let router = RouterHandle::start(&text).await;
    let c = client();
    let rows: Vec<String> = (0..5)
        .map(|i| {
            let b = body_for(i * 7);
            b["{\"features\": ".len()..b.len() - 1].to_string()
        })
        .collect();
    let batch = format!("{{\"instances\": [{}]}}", rows.join(", "));
    let r = post(&c, &router.url, "batch-user", batch.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let a = predictions(&r);
    let b = predictions(&post(&c, &candidate.url, "batch-user", batch).await);
    assert_eq!((a.len(), b.len()), (5, 5));
    let direct: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
    eventually("the batch is compared", Duration::from_secs(10), || {
        let (c, r) = (c.clone(), &router);
        async move {
            let m = r.metrics(&c).await;
            metric(
                &m,
                "abgate_shadow_requests_total",
                &[("result", "compared")],
            ) == 1.0
        }
    })
    .await;
    let m = router.metrics(&c).await;
    assert_eq!(
        metric(
            &m,
            "abgate_shadow_absolute_difference_count",
            &[("shadow", "candidate_model")]
        ),
        5.0,
        "one difference per row"
    );
    let summed = histogram_sum(&m, "abgate_shadow_absolute_difference", "candidate_model");
    assert!((summed - direct).abs() < 1e-4, "{summed} vs {direct}");
    let agreed = metric(&m, "abgate_shadow_agreements_total", &[("agree", "true")]);
    let disagreed = metric(&m, "abgate_shadow_agreements_total", &[("agree", "false")]);
    assert_eq!(agreed + disagreed, 5.0);
    router.stop().await;
}

/// A raw TCP shadow that misbehaves in one way, counting connections and keeping the
/// first request head it reads.
struct BadShadow {
    url: String,
    first_head: Arc<Mutex<Option<String>>>,
}

#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Accepts, reads, answers nothing for longer than any test runs, then closes.
    Stall,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// Answers a valid 200 whose JSON has no numeric prediction.
    Nonsense,
}

impl BadShadow {
    async fn start(how: Misbehaviour) -> BadShadow {
        let (listener, url) = listen().await;
        let first_head = Arc::new(Mutex::new(None));
        let seen = Arc::clone(&first_head);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if let Ok(mut s) = seen.lock() {
                            s.get_or_insert_with(|| {
                                String::from_utf8_lossy(&buf[..n]).into_owned()
                            });
                        }
                        match how {
                            Misbehaviour::Stall => {
                                tokio::time::sleep(STALL).await;
                                return;
                            }
                            Misbehaviour::Garbage => {
                                let _ = stream.write_all(b"\x00\xffnot http at all\r\n\r\n").await;
                                return;
                            }
                            Misbehaviour::Nonsense => {
                                // One write: a split answer would wait on delayed ACKs.
                                let body = r#"{"prediction": "five", "variant": "nonsense"}"#;
                                let answer = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                );
                                if stream.write_all(answer.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        BadShadow { url, first_head }
    }
}

/// How long a stalled shadow holds a copy: far beyond any test, so its copies are
/// still in flight at the end however slowly the machine runs the test.
const STALL: Duration = Duration::from_secs(600);

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// One `/predict` of user `i` with request id `{prefix}-{i}`: how long the client
/// waited for its answer (which must come from best_model).
async fn timed_request(c: &HttpClient, url: &str, prefix: &str, i: usize) -> Duration {
    let id = format!("{prefix}-{i}");
    let started = Instant::now();
    let r = c
        .post_json(
            &format!("{url}/predict"),
            &[("x-user-id", &format!("user-{i}")), ("x-request-id", &id)],
            body_for(i),
        )
        .await
        .unwrap_or_else(|e| panic!("request {i}: {e}"));
    let took = started.elapsed();
    assert_eq!(r.status, 200, "request {i}: {}", r.text());
    assert_eq!(r.header("x-variant"), Some("best_model"));
    assert_eq!(r.json()["variant"], "best_model");
    took
}

async fn timed_requests(c: &HttpClient, url: &str, from: usize, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for i in from..from + n {
        latencies.push(timed_request(c, url, "shadow-req", i).await);
    }
    latencies.sort();
    latencies
}

/// `n` requests to each of `a` and `b`, in turn (which goes first alternates), so both
/// sets of latencies are measured on the same machine at the same time: a busy
/// machine's speed drifts more between one phase and the next than any shadow moves it.
async fn timed_in_turn(
    c: &HttpClient,
    a: &str,
    b: &str,
    from: usize,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut on_a, mut on_b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in from..from + n {
        if i % 2 == 0 {
            on_a.push(timed_request(c, a, "shadow-req", i).await);
            on_b.push(timed_request(c, b, "twin-req", i).await);
        } else {
            on_b.push(timed_request(c, b, "twin-req", i).await);
            on_a.push(timed_request(c, a, "shadow-req", i).await);
        }
    }
    on_a.sort();
    on_b.sort();
    (on_a, on_b)
}

/// The router's metrics once the dead, garbage and nonsense shadows have an outcome for
/// `copies` copies each (or after a minute: the caller's assertions then say what is
/// missing). Copies finish after their clients' answers; on a busy machine, a while after.
async fn settled(c: &HttpClient, url: &str, copies: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = c
            .get(&format!("{url}/metrics"))
            .await
            .map(|r| r.text())
            .unwrap_or_default();
        let done = ["dead", "garbage", "nonsense"]
            .iter()
            .all(|s| metric(&m, "abgate_shadow_requests_total", &[("shadow", s)]) >= copies);
        if done || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_a_stalled_and_a_garbage_shadow_never_reach_the_client() {
    let best = ArmProcess::start("best_model").await;
    let stalled = BadShadow::start(Misbehaviour::Stall).await;
    let garbage = BadShadow::start(Misbehaviour::Garbage).await;
    let nonsense = BadShadow::start(Misbehaviour::Nonsense).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let plain = router_toml(&[("best_model", &best.url, 100.0)], "", "");
    let mut router = RouterProcess::start(&plain).await;
    // A twin that never gets shadows: the latency baseline, asked in turn with the
    // shadowed router.
    let twin = RouterProcess::start(&plain).await;
    let c = client();
    let before_reload = timed_requests(&c, &router.url, 0, 200).await;
    // Live reload adds the shadows: every user of best is mirrored to all four.
    let shadows = [
        shadow_table("dead", &dead, "sample = 1.0"),
        shadow_table(
            "stalled",
            &stalled.url,
            // Longer than the stall: its 4 copies hold their slots for the whole test.
            "sample = 1.0\nmax_in_flight = 4\ntimeout_ms = 1200000",
        ),
        shadow_table("garbage", &garbage.url, "sample = 1.0"),
        shadow_table("nonsense", &nonsense.url, "sample = 1.0"),
    ]
    .concat();
    let on_disk = std::fs::read_to_string(&router.file).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&router.file, format!("{on_disk}{shadows}")).unwrap_or_else(|e| panic!("{e}"));
    let url = router.url.clone();
    eventually("the shadows are applied", Duration::from_secs(10), || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.get(&format!("{url}/api/shadows"))
                .await
                .map(|r| r.json()["shadows"].as_array().map_or(0, Vec::len) == 4)
                .unwrap_or(false)
        }
    })
    .await;
    let warm = timed_requests(&c, &url, 1_000, 100).await;
    // Descriptors and memory are compared between two settled moments (every copy
    // answered or failed), so copies still in flight are not taken for a leak.
    settled(&c, &url, 100.0).await;
    let pid = router.pid();
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));
    let (shadowed, baseline) = timed_in_turn(&c, &url, &twin.url, 2_000, 400).await;
    let sent = 500.0;
    let last = settled(&c, &url, sent).await;
    let (fds_after, rss_after) = (open_fds(pid), rss_kib(pid));
    let worst = *shadowed.last().unwrap_or(&Duration::ZERO);
    println!(
        "client latency with a dead, a stalled, a garbage and a nonsense shadow p50 {:?} p99 {:?} max {worst:?}; \
         meanwhile without shadows (the twin) p50 {:?} p99 {:?} (before the reload p50 {:?}, warm-up p50 {:?})",
        percentile(&shadowed, 0.5),
        percentile(&shadowed, 0.99),
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.99),
        percentile(&before_reload, 0.5),
        percentile(&warm, 0.5),
    );
    println!("router fds {fds_before} -> {fds_after}, rss {rss_before} -> {rss_after} KiB");
    // A client that waited on the stalled shadow would wait STALL (or time out at 15 s).
    assert!(
        worst < Duration::from_secs(10),
        "a client waited on the stalled shadow: {worst:?}"
    );
    assert!(
        percentile(&shadowed, 0.5) < percentile(&baseline, 0.5) * 3 + Duration::from_millis(5),
        "median latency moved: {:?} with the shadows vs {:?} without",
        percentile(&shadowed, 0.5),
        percentile(&baseline, 0.5)
    );
    assert!(
        fds_after <= fds_before + 8,
        "fds grew {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "rss grew {rss_before} -> {rss_after} KiB"
    );
    let count = |shadow: &str, result: &str| {
        metric(
            &last,
            "abgate_shadow_requests_total",
            &[("shadow", shadow), ("result", result)],
        )
    };
    println!(
        "dead: {} errors; garbage: {} errors; nonsense: {} unparseable; stalled: {} dropped, {} in flight",
        count("dead", "shadow_error"),
        count("garbage", "shadow_error"),
        count("nonsense", "unparseable"),
        count("stalled", "dropped"),
        4
    );
    assert_eq!(count("dead", "shadow_error"), sent);
    assert_eq!(count("garbage", "shadow_error"), sent);
    assert_eq!(count("nonsense", "unparseable"), sent);
    assert!(
        count("stalled", "dropped") >= sent - 4.0 - 4.0,
        "{}",
        count("stalled", "dropped")
    );
    assert_eq!(
        metric(
            &last,
            "prediction_errors_total",
            &[("variant", "best_model")]
        ),
        0.0,
        "no client-visible error"
    );
    let view = c
        .get(&format!("{url}/api/shadows"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json();
    let stalled_view = view["shadows"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "stalled"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(stalled_view["in_flight"], 4, "{view}");
    assert!(
        stalled_view["dropped"].as_f64() >= Some(sent - 8.0),
        "{view}"
    );
    // The copy carries X-Shadow and the client's request id (of whichever copy came
    // first: copies run concurrently).
    let head = nonsense
        .first_head
        .lock()
        .map(|h| h.clone().unwrap_or_default())
        .unwrap_or_default();
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("post /predict http/1.1\r\n"), "{head}");
    assert!(lower.contains("\r\nx-shadow: 1\r\n"), "{head}");
    let user = lower
        .split("\r\nx-user-id: user-")
        .nth(1)
        .and_then(|rest| rest.split("\r\n").next())
        .unwrap_or_else(|| panic!("no x-user-id in {head}"));
    assert!(
        lower.contains(&format!("\r\nx-request-id: shadow-req-{user}\r\n")),
        "{head}"
    );
    if let Some(child) = router.child_mut() {
        let _ = child.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_keyed_by_the_body_is_mirrored_through_the_hyper_transport_too() {
    let best = ArmProcess::start("best_model").await;
    let candidate = ArmProcess::start("candidate_model").await;
    let text = router_toml(
        &[("best_model", &best.url, 100.0)],
        "",
        &shadow_table("candidate_model", &candidate.url, "sample = 1.0"),
    );
    let router = RouterHandle::start(&text).await;
    let c = client();
    // No X-User-Id: the fast path hands the request to hyper, which keys the body's
    // user_id. An anonymous request is never mirrored.
    let keyed = format!("{{\"features\": {FEATURES}, \"user_id\": \"body-user\"}}");
    let r = c
        .post_json(&format!("{}/predict", router.url), &[], keyed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let anonymous = c
        .post_json(&format!("{}/predict", router.url), &[], predict_body())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(anonymous.status, 200, "{}", anonymous.text());
    eventually(
        "the keyed request is compared",
        Duration::from_secs(10),
        || {
            let (c, r) = (c.clone(), &router);
            async move {
                let m = r.metrics(&c).await;
                metric(
                    &m,
                    "abgate_shadow_requests_total",
                    &[("result", "compared")],
                ) == 1.0
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = router.metrics(&c).await;
    assert_eq!(
        metric(&m, "abgate_shadow_requests_total", &[]),
        1.0,
        "only the keyed one"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_the_shadow_model_server_the_router_config_names() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (router_port, best_port, shadow_port) = (free_port(), free_port(), free_port());
    for (name, model, port) in [
        ("best_model", "best_model", best_port),
        ("shadow_model", "shadow_model", shadow_port),
    ] {
        std::fs::write(
            dir.path().join(format!("{name}.toml")),
            format!(
                "variant = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nmodel_dir = \"{}\"\nshutdown_grace_ms = 3000\n",
                repo().join("models").join(model).display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let shadow_url = format!("http://127.0.0.1:{shadow_port}");
    let text = router_toml(
        &[(
            "best_model",
            &format!("http://127.0.0.1:{best_port}"),
            100.0,
        )],
        "",
        &shadow_table("shadow_model", &shadow_url, "sample = 1.0"),
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{router_port}"));
    std::fs::write(dir.path().join("router.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let mut up = std::process::Command::new(abgate())
        .args(["up", "--config-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let router_url = format!("http://127.0.0.1:{router_port}");
    wait_ok(&format!("{router_url}/api/health"), Duration::from_secs(60)).await;
    let c = client();
    for i in 0..20 {
        let r = post(&c, &router_url, &format!("up-user-{i}"), body_for(i)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-variant"), Some("best_model"));
    }
    eventually(
        "the shadow compares all 20",
        Duration::from_secs(10),
        || {
            let (c, url) = (c.clone(), format!("{router_url}/api/shadows"));
            async move {
                c.get(&url)
                    .await
                    .map(|r| r.json()["shadows"][0]["compared"] == 20)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    // The shadow is an ordinary model server with its own series under its variant.
    let text = c
        .get(&format!("{shadow_url}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text();
    assert_eq!(
        metric(
            &text,
            "predictions_total",
            &[("variant", "shadow_model"), ("endpoint", "predict")]
        ),
        20.0
    );
    let up_pid = i32::try_from(up.id()).unwrap_or_default();
    kill(Pid::from_raw(up_pid), Signal::SIGTERM).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        assert!(Instant::now() < deadline, "up did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "up exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shadow_does_not_hold_up_a_graceful_stop() {
    let best = ArmProcess::start("best_model").await;
    let stalled = BadShadow::start(Misbehaviour::Stall).await;
    let text = router_toml(
        &[("best_model", &best.url, 100.0)],
        "shutdown_grace_ms = 8000",
        &shadow_table("stalled", &stalled.url, "sample = 1.0\ntimeout_ms = 20000"),
    );
    let router = RouterHandle::start(&text).await;
    let c = client();
    for i in 0..5 {
        let r = post(&c, &router.url, &format!("stop-user-{i}"), body_for(i)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A copy takes its slot just after its client's answer is written: wait for the
    // last one rather than race it.
    eventually(
        "all 5 copies are in flight",
        Duration::from_secs(10),
        || {
            let (c, r) = (c.clone(), &router);
            async move { r.get_json(&c, "/api/shadows").await["shadows"][0]["in_flight"] == 5 }
        },
    )
    .await;
    let started = Instant::now();
    router.stop().await;
    let took = started.elapsed();
    println!("graceful stop with 5 copies stalled in flight took {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "the stop waited on the shadow: {took:?}"
    );
}
