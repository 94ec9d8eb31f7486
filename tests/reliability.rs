//! Reliability under faults, over real processes: an arm killed under load, a reload
//! storm under traffic, graceful shutdown, overload, and memory after 100k requests.
//! Each test prints the figures it measured.

mod support;

use abgate_common::client::Reply;
use http::StatusCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// One request's outcome as the client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    served: String,
    error_type: String,
}

/// Steady traffic from `workers` clients (each paced by `pause`) until stopped.
struct Load {
    running: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, workers: usize, users: usize, pause: Duration) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let tasks = (0..workers)
            .map(|w| {
                let (running, outcomes, url) =
                    (running.clone(), outcomes.clone(), format!("{url}/predict"));
                tokio::spawn(async move {
                    let c = client();
                    let mut i = w;
                    while running.load(Ordering::Relaxed) {
                        let user = format!("user-{}", i % users);
                        i += workers;
                        let outcome = match c
                            .post_json(&url, &[("x-user-id", &user)], predict_body())
                            .await
                        {
                            Ok(r) => Outcome {
                                status: r.status.as_u16(),
                                served: r.header("x-variant").unwrap_or("").to_string(),
                                error_type: r.json()["error"]["type"]
                                    .as_str()
                                    .unwrap_or("")
                                    .to_string(),
                            },
                            Err(e) => Outcome {
                                status: 0,
                                served: String::new(),
                                error_type: e,
                            },
                        };
                        if let Ok(mut o) = outcomes.lock() {
                            o.push(outcome);
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            running,
            outcomes,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().map(|o| o.len()).unwrap_or(0)
    }

    async fn stop(self) -> Vec<Outcome> {
        self.running.store(false, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn metrics_text(url: &str) -> String {
    client()
        .get(&format!("{url}/metrics"))
        .await
        .map(|r| r.text())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_an_arm_under_load_fails_at_most_the_requests_in_flight_and_its_users_return_after_a_restart(
) {
    let best = ArmProcess::start("best_model").await;
    let mut candidate = ArmProcess::start("candidate_model").await;
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "failover = true", "")).await;
    let workers = 8;
    let load = Load::start(&router.url, workers, 200, Duration::from_millis(2));
    // Each phase lasts at least as long as it did on an idle machine, and until it has
    // seen traffic however slowly a busy one serves it.
    let traffic = |at_least: usize| {
        let load = &load;
        eventually("traffic flows", Duration::from_secs(60), move || {
            let n = load.count();
            async move { n >= at_least }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    traffic(100).await;
    let before_kill = load.count();
    candidate.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    traffic(before_kill + 200).await;
    candidate.restart().await;
    let ready = Instant::now();
    let c = client();
    // Until user-5 is back on the candidate, noting how late this machine runs: the
    // longest round trip, and the most a 50 ms sleep overslept (the router's health
    // checks run on this same runtime, so their timer is as late).
    let (mut slowest_trip, mut late) = (Duration::ZERO, Duration::ZERO);
    loop {
        let asked = Instant::now();
        let back = c
            .post_json(
                &format!("{}/predict", router.url),
                &[("x-user-id", "user-5")],
                predict_body(),
            )
            .await
            .map(|r| {
                r.header("x-variant") == Some("candidate_model")
                    && r.header("x-assigned-variant").is_none()
            })
            .unwrap_or(false);
        slowest_trip = slowest_trip.max(asked.elapsed());
        if back {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "the candidate's users did not come back within 30 s"
        );
        let slept = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        late = late.max(slept.elapsed().saturating_sub(Duration::from_millis(50)));
    }
    let returned_after = ready.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    traffic(501).await;
    let outcomes = load.stop().await;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    eprintln!(
        "kill with failover: {} requests ({} before the kill), {} failed, users back {:?} after the arm was ready (slowest round trip {slowest_trip:?}, timers up to {late:?} late)",
        outcomes.len(),
        before_kill,
        failed.len(),
        returned_after
    );
    assert!(
        outcomes.len() > 500,
        "too little traffic: {}",
        outcomes.len()
    );
    assert!(
        failed.len() <= workers,
        "more failures than requests in flight: {failed:?}"
    );
    // Two health-check intervals (200 ms each in the test config) plus a round trip, as
    // late as this machine's timers and round trips ran meanwhile (on an idle one,
    // about nothing: the bound is then the plain 1 s).
    let bound = 2 * (Duration::from_millis(200) + late) + Duration::from_millis(600) + slowest_trip;
    assert!(
        returned_after < bound,
        "{returned_after:?}, more than {bound:?} (timers up to {late:?} late, round trips up to {slowest_trip:?})"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_an_arm_with_failover_off_turns_every_failure_into_a_counted_json_502_or_503() {
    let best = ArmProcess::start("best_model").await;
    let mut candidate = ArmProcess::start("candidate_model").await;
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "failover = false", "")).await;
    let load = Load::start(&router.url, 8, 200, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    candidate.kill();
    // A second of the arm down, and enough requests in it however slow the machine.
    let at_kill = load.count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    eventually("traffic flows", Duration::from_secs(60), || {
        let n = load.count();
        async move { n >= at_kill + 100 }
    })
    .await;
    let outcomes = load.stop().await;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        !failed.is_empty(),
        "no request failed although an arm was down without failover"
    );
    for o in &failed {
        assert!(
            (o.status == 502 && o.error_type == "upstream_error")
                || (o.status == 503 && o.error_type == "no_healthy_arm"),
            "{o:?}"
        );
    }
    let text = metrics_text(&router.url).await;
    let counted: f64 = ["upstream_error", "no_healthy_arm"]
        .iter()
        .map(|t| {
            metric(
                &text,
                "prediction_errors_total",
                &[("variant", "candidate_model"), ("error_type", t)],
            )
        })
        .sum();
    assert_eq!(
        counted as usize,
        failed.len(),
        "every client-visible failure is counted"
    );
    assert!(outcomes
        .iter()
        .filter(|o| o.served == "best_model")
        .all(|o| o.status == 200));
    eprintln!(
        "kill without failover: {} requests, {} failed, all counted",
        outcomes.len(),
        failed.len()
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_100_valid_and_invalid_rewrites_under_traffic_fails_no_request_and_ends_on_the_last_valid_file(
) {
    let best = ArmProcess::start("best_model").await;
    let candidate = ArmProcess::start("candidate_model").await;
    let text = |w: u32| {
        router_toml(
            &[
                ("best_model", &best.url, f64::from(100 - w)),
                ("candidate_model", &candidate.url, f64::from(w)),
            ],
            "",
            "",
        )
    };
    let router = RouterHandle::start(&text(10)).await;
    let load = Load::start(&router.url, 6, 500, Duration::ZERO);
    let c = client();
    let (mut applied, mut rejected) = (0, 0);
    let mut last_valid = 10;
    for i in 0..100u32 {
        let in_place = i % 3 == 0;
        let valid = i % 2 == 0;
        let weight = 1 + (i * 7) % 98;
        let body = if valid {
            text(weight)
        } else if i % 4 == 1 {
            text(weight).replace("weight = ", "weight = -")
        } else {
            format!("{}\nunknown_key = 1\n", text(weight))
        };
        if in_place {
            std::fs::write(&router.file, &body).unwrap_or_else(|e| panic!("{e}"));
        } else {
            router.rewrite(&body);
        }
        let hash = abgate_router::state::config_hash(&body);
        if valid {
            last_valid = weight;
            applied += 1;
            eventually(
                "a valid rewrite is applied",
                Duration::from_secs(15),
                || {
                    let (c, url, hash) = (
                        c.clone(),
                        format!("{}/api/config", router.url),
                        hash.clone(),
                    );
                    async move {
                        c.get(&url)
                            .await
                            .map(|r| r.json()["hash"] == hash.as_str())
                            .unwrap_or(false)
                    }
                },
            )
            .await;
        } else {
            rejected += 1;
            let expected = f64::from(rejected);
            eventually(
                "an invalid rewrite is rejected and counted",
                Duration::from_secs(15),
                || {
                    let (c, url) = (c.clone(), format!("{}/metrics", router.url));
                    async move {
                        let t = c.get(&url).await.map(|r| r.text()).unwrap_or_default();
                        metric(&t, "abgate_config_reloads_total", &[("result", "failure")])
                            == expected
                    }
                },
            )
            .await;
        }
    }
    let outcomes = load.stop().await;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "requests failed during the storm: {:?}",
        &failed[..failed.len().min(5)]
    );
    let text_now = metrics_text(&router.url).await;
    assert_eq!(
        metric(
            &text_now,
            "abgate_config_reloads_total",
            &[("result", "success")]
        ),
        f64::from(applied)
    );
    assert_eq!(
        metric(
            &text_now,
            "abgate_config_reloads_total",
            &[("result", "failure")]
        ),
        f64::from(rejected)
    );
    let config = router.get_json(&c, "/api/config").await;
    assert_eq!(config["arms"][1]["weight"], f64::from(last_valid));
    assert_eq!(config["version"], applied + 1);
    eprintln!(
        "reload storm: {applied} applied, {rejected} rejected, {} requests, 0 failed",
        outcomes.len()
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_the_router_lets_in_flight_requests_finish_refuses_new_ones_and_exits_0() {
    // Answers take 3 s: the 5 requests are surely still in flight at the SIGTERM, and
    // done well within the 5 s drain.
    let slow = StubArm::start(Duration::from_secs(3), StatusCode::OK).await;
    let mut router = RouterProcess::start(&router_toml(
        &[("best_model", &slow.url, 1.0)],
        "shutdown_grace_ms = 5000",
        "",
    ))
    .await;
    let c = client();
    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{}/predict", router.url));
            tokio::spawn(async move {
                c.post_json(&url, &[("x-user-id", &format!("u{i}"))], predict_body())
                    .await
            })
        })
        .collect();
    // All 5 have reached the arm (through the router) before the SIGTERM.
    eventually(
        "the 5 requests reach the arm",
        Duration::from_secs(30),
        || {
            let n = slow.received();
            async move { n == 5 }
        },
    )
    .await;
    let sent_term = Instant::now();
    kill(
        Pid::from_raw(i32::try_from(router.pid()).unwrap_or_default()),
        Signal::SIGTERM,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The listener closes at once, while the in-flight requests are still draining (how
    // soon the process gets to handle the signal depends on the machine's load).
    let addr = router.url.trim_start_matches("http://").to_string();
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(
            in_flight.iter().any(|r| !r.is_finished()),
            "new connections were still accepted after SIGTERM once the in-flight requests had finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "new connections refused {:?} after the SIGTERM",
        sent_term.elapsed()
    );
    for r in in_flight {
        let reply: Reply = r
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("in-flight request failed: {e}"));
        assert_eq!(reply.status, 200);
    }
    let child = router.child_mut().unwrap_or_else(|| panic!("no child"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break s;
        }
        assert!(
            sent_term.elapsed() < Duration::from_secs(10),
            "router did not exit within the drain limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "router exited with {status}");
    eprintln!(
        "router drained 5 in-flight requests and exited 0 after {:?}",
        sent_term.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_an_arm_exits_0_and_the_router_keeps_answering_through_the_other_arm() {
    let best = ArmProcess::start("best_model").await;
    let mut candidate = ArmProcess::start("candidate_model").await;
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "failover = true", "")).await;
    let load = Load::start(&router.url, 4, 100, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = candidate.pid().unwrap_or_default();
    kill(
        Pid::from_raw(i32::try_from(pid).unwrap_or_default()),
        Signal::SIGTERM,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let child = candidate.child_mut().unwrap_or_else(|| panic!("no child"));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "arm did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "arm exited with {status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outcomes = load.stop().await;
    let failed = outcomes.iter().filter(|o| o.status != 200).count();
    assert!(failed <= 4, "{failed} failed of {}", outcomes.len());
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_concurrent_clients_are_shed_with_503_overloaded_within_a_memory_ceiling_and_the_router_recovers(
) {
    let slow = StubArm::start(Duration::from_millis(300), StatusCode::OK).await;
    let router = RouterProcess::start(&router_toml(
        &[("best_model", &slow.url, 1.0)],
        "max_concurrent_requests = 64",
        "",
    ))
    .await;
    let pid = router.pid();
    let rss_before = rss_kib(pid);
    let clients = 2000;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let url = format!("{}/predict", router.url);
            tokio::spawn(async move {
                // One connection per client.
                let c = abgate_common::client::HttpClient::new(Duration::from_secs(30));
                c.post_json(&url, &[("x-user-id", &format!("u{i}"))], predict_body())
                    .await
            })
        })
        .collect();
    let mut peak_rss = 0;
    let mut results = Vec::new();
    for t in tasks {
        peak_rss = peak_rss.max(rss_kib(pid));
        results.push(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let ok = results
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.status == 200))
        .count();
    let shed = results
        .iter()
        .filter(
            |r| matches!(r, Ok(r) if r.status == 503 && r.json()["error"]["type"] == "overloaded"),
        )
        .count();
    let other: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok(r) if r.status == 200 || r.status == 503))
        .collect();
    eprintln!("overload: {clients} clients, {ok} served, {shed} shed, RSS {rss_before} KiB -> peak {peak_rss} KiB");
    assert!(
        other.is_empty(),
        "unexpected outcomes: {:?}",
        &other[..other.len().min(3)]
    );
    assert!(shed > 0, "nothing was shed");
    assert!(
        ok >= 64,
        "the limit should still let requests through: {ok}"
    );
    assert!(peak_rss < 100 * 1024, "router RSS peaked at {peak_rss} KiB");
    let text = metrics_text(&router.url).await;
    assert_eq!(
        metric(
            &text,
            "prediction_errors_total",
            &[("variant", "unassigned"), ("error_type", "overloaded")]
        ) as usize,
        shed
    );
    // Recovers as soon as load drops.
    let r = client()
        .post_json(
            &format!("{}/predict", router.url),
            &[("x-user-id", "after")],
            predict_body(),
        )
        .await;
    assert_eq!(r.map(|r| r.status.as_u16()).unwrap_or(0), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_arm_does_not_grow_the_routers_connections_or_memory() {
    let best = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let slow = StubArm::start(Duration::from_secs(10), StatusCode::OK).await;
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", slow.url.as_str(), 50.0),
    ];
    let router = RouterProcess::start(&router_toml(
        &arms,
        "",
        "[upstream]\nrequest_timeout_ms = 200\n",
    ))
    .await;
    let pid = router.pid();
    let run = |n: usize| {
        let url = router.url.clone();
        async move {
            let c = client();
            let mut statuses = Vec::new();
            for i in 0..n {
                let r = c
                    .post_json(
                        &format!("{url}/predict"),
                        &[("x-user-id", &format!("user-{i}"))],
                        predict_body(),
                    )
                    .await;
                statuses.push(r.map(|r| r.status.as_u16()).unwrap_or(0));
            }
            statuses
        }
    };
    let warm = run(100).await;
    let (fds_warm, rss_warm) = (open_fds(pid), rss_kib(pid));
    let later = run(300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds_later, rss_later) = (open_fds(pid), rss_kib(pid));
    eprintln!("stalled arm: fds {fds_warm} -> {fds_later}, RSS {rss_warm} -> {rss_later} KiB");
    for s in warm.iter().chain(&later) {
        assert!(*s == 200 || *s == 504, "{s}");
    }
    assert!(later.contains(&504) && later.contains(&200));
    // Timed-out upstream connections are closed, not piled up.
    assert!(
        fds_later <= fds_warm + 20,
        "fds grew from {fds_warm} to {fds_later}"
    );
    assert!(
        rss_later <= rss_warm + 8 * 1024,
        "RSS grew from {rss_warm} to {rss_later} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_requests_leave_router_and_arm_memory_flat() {
    let best = ArmProcess::start("best_model").await;
    let candidate = ArmProcess::start("candidate_model").await;
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterProcess::start(&router_toml(&arms, "", "")).await;
    let drive = |n: usize| {
        let url = router.url.clone();
        async move {
            let workers = 16;
            let tasks: Vec<_> = (0..workers)
                .map(|w| {
                    let url = url.clone();
                    tokio::spawn(async move {
                        let c = client();
                        let mut failed = 0;
                        for i in (w..n).step_by(workers) {
                            let user = format!("user-{}", i % 5000);
                            let ok = c
                                .post_json(
                                    &format!("{url}/predict"),
                                    &[("x-user-id", &user)],
                                    predict_body(),
                                )
                                .await
                                .map(|r| r.status == 200)
                                .unwrap_or(false);
                            failed += usize::from(!ok);
                        }
                        failed
                    })
                })
                .collect();
            let mut failed = 0;
            for t in tasks {
                failed += t.await.unwrap_or(1);
            }
            failed
        }
    };
    assert_eq!(drive(10_000).await, 0);
    let pids = [
        ("router", router.pid()),
        ("best_model", best.pid().unwrap_or(0)),
        ("candidate_model", candidate.pid().unwrap_or(0)),
    ];
    let warm: Vec<u64> = pids.iter().map(|(_, p)| rss_kib(*p)).collect();
    assert_eq!(drive(100_000).await, 0);
    let after: Vec<u64> = pids.iter().map(|(_, p)| rss_kib(*p)).collect();
    for (((name, _), w), a) in pids.iter().zip(&warm).zip(&after) {
        eprintln!("{name}: RSS {w} KiB after 10k warm-up, {a} KiB after 100k more");
        // A leak of even 100 bytes per request would add ~10 MB.
        assert!(*a <= w + 4 * 1024, "{name} grew from {w} to {a} KiB");
    }
}
